"""Proof by peers for the PIN service (issue 16): `provision card unblock-pin` through the private
pcscd sets a new PIN on a blocked card, and yubico-piv-tool then verifies that new PIN; the old one
is refused. `card change-pin` likewise. Secrets come from variables, never from argv."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.helpers.interop_peers import DEFAULT_PIN, InsertCard
from tests.helpers.product import product_env, provision_cmd


def provision_card(peers: Any, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*provision_cmd(), "card", *args, "--reader", peers.reader, "--json",
                           "--logs", str(peers.workdir / "logs"), "--operator", "Clerk Chan"],
                          env=product_env({**peers.env, **env}), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def test_unblock_pin_then_yubico_piv_tool_verifies_the_new_pin(insert_card: InsertCard, canaries: Any) -> None:
    server, peers = insert_card(serial=31000001)
    for attempt in range(3):  # block the PIN as a citizen would
        peers.piv_tool(f"verify-pin (wrong {attempt})", "-a", "verify-pin", "-P", "000000")
    blocked = peers.piv_tool("verify-pin (blocked)", "-a", "verify-pin", "-P", DEFAULT_PIN)
    assert blocked.returncode != 0
    new_pin = canaries.pin
    done = provision_card(peers, "unblock-pin", "--puk-env", "CARD_PUK", "--new-pin-env", "NEW_PIN",
                          env={"CARD_PUK": "12345678", "NEW_PIN": new_pin})  # fmt: skip
    assert done.returncode == 0, done.stderr
    canaries.outputs += [done.stdout, done.stderr]
    result = json.loads(done.stdout)
    assert result["action"] == "unblock-pin" and result["pin_tries_left"] == 3 and result["puk_tries_left"] == 3
    assert "PUK tries left: 3" in done.stderr  # shown before the attempt
    peers.piv_tool("verify-pin (new)", "-a", "verify-pin", "-P", new_pin).check()
    old = peers.piv_tool("verify-pin (old)", "-a", "verify-pin", "-P", DEFAULT_PIN)
    assert old.returncode != 0
    records = [json.loads(line) for line in (peers.workdir / "logs" / "audit.jsonl").read_text().splitlines()]
    unblock = [r for r in records if r["event"] == "pin_unblock"]
    assert unblock and unblock[-1]["outcome"] == "ok" and unblock[-1]["operator"] == "Clerk Chan"
    assert unblock[-1]["card_serial"] == 31000001


def test_change_pin_then_yubico_piv_tool_verifies_it(insert_card: InsertCard, canaries: Any) -> None:
    _, peers = insert_card(serial=31000002)
    done = provision_card(peers, "change-pin", "--pin-env", "OLD_PIN", "--new-pin-env", "NEW_PIN",
                          env={"OLD_PIN": DEFAULT_PIN, "NEW_PIN": canaries.pin})  # fmt: skip
    assert done.returncode == 0, done.stderr
    canaries.outputs += [done.stdout, done.stderr]
    assert json.loads(done.stdout)["pin_tries_left"] == 3
    peers.piv_tool("verify-pin (changed)", "-a", "verify-pin", "-P", canaries.pin).check()


def test_without_a_terminal_a_missing_secret_is_exit_2(insert_card: InsertCard, canaries: Any) -> None:
    _, peers = insert_card(serial=31000003)
    done = provision_card(peers, "unblock-pin", "--new-pin-env", "NEW_PIN", env={"NEW_PIN": canaries.pin})
    assert done.returncode == 2, done.stderr
    assert "no terminal" in done.stderr
    canaries.outputs += [done.stdout, done.stderr]


def test_the_last_puk_try_is_never_spent_from_options_alone(insert_card: InsertCard, canaries: Any) -> None:
    _, peers = insert_card(serial=31000004, puk_tries=1)
    done = provision_card(peers, "unblock-pin", "--puk-env", "CARD_PUK", "--new-pin-env", "NEW_PIN",
                          env={"CARD_PUK": "12345678", "NEW_PIN": canaries.pin})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "PUK tries left: 1" in done.stderr and "yes, this is the last try" in done.stderr
    refusal = json.loads(done.stdout)
    assert refusal["ok"] is False and refusal["puk_tries_left"] == 1 and refusal["error_class"] == "PukError"
    canaries.outputs += [done.stdout, done.stderr]
    # Nothing was sent: the default PIN still works.
    peers.piv_tool("verify-pin (unchanged)", "-a", "verify-pin", "-P", DEFAULT_PIN).check()
    records = [json.loads(line) for line in (peers.workdir / "logs" / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in records if r["event"] == "pin_unblock"]
    assert refused[-1]["outcome"] == "refused" and refused[-1]["reason"] == "last_puk_try_not_confirmed"
