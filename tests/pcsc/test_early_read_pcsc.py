"""The early card read of ``provision run --unattended`` (provision/early.py) through a real pcscd:
the identity APDUs (SELECT, GET SERIAL, the CHUID) are read while the program starts and handed to
the runner, never sent twice; a card swapped in between is read again and matched on its own
identity; and the run's card traffic, records and result are those of the normal path."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.app import run_jobfile
from provision.early import EarlyRead, start_early_read
from provision.jobfile import load_jobfile
from tests.helpers.pcsc_harness import Cards, PrivatePcscd, card_present, wait_for

NOW = datetime.now(UTC)
SERIAL = 24681357
OTHER_SERIAL = 13572468
WRITE_INS = {"DB", "FE", "FF", "24", "2C", "FA", "47"}
IDENTITY = [("A4", "04", "00"), ("F8", "00", "00"), ("CB", "3F", "FF")]  # SELECT, GET SERIAL, GET DATA (CHUID)
# What differs from one run to the next whatever the path: times, ids, hashes, the logs directory.
VOLATILE = {"time", "ts", "hash", "prev", "prev_hash", "seq", "run_id", "mac", "seconds", "started", "finished",
            "seal", "pid", "host", "jobfile", "logs", "path", "archived_to", "not_before", "not_after"}  # fmt: skip


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("early")
    ca = fixtures.make_ca("Early Read CA")
    data = fixtures.holder_p12(ca, "CHAN Tai Man", "early-p12-password", key_type="p256",
                               not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=365))  # fmt: skip
    (directory / "chan.p12").write_bytes(data)
    for name, value in (("p12.pass", "early-p12-password"), ("card.pin", "123456")):
        (directory / name).write_text(value + "\n")
        (directory / name).chmod(0o600)
    (directory / "job.yaml").write_text(
        "version: 1\nbatch: early-batch\ntimezone: Asia/Hong_Kong\ncards:\n"
        f"  - id: HK-1\n    holder: CHAN Tai Man\n    card: {{serial: {SERIAL}}}\n"
        "    pkcs12: {path: chan.p12, password: {file: p12.pass}}\n"
        '    slot: 9c\n    slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n    pin: {file: card.pin}\n'
    )
    return directory / "job.yaml"


def apdus(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def traffic(path: Path) -> list[tuple[Any, ...]]:
    """What the card saw, command by command (header, lengths, extended or not, its answer's SW)."""
    return [(e["cla"], e["ins"], e["p1"], e["p2"], e["lc"], e["le"], e["ext"], e["sw"]) for e in apdus(path)]


def run(job: Path, logs: Path, reader: str, early: EarlyRead | None) -> Any:
    return run_jobfile(load_jobfile(str(job), unattended=True), logs=logs, unattended=True, wait=0.0,
                       readers=[reader], progress=False, say=lambda _text: None, early=early)  # fmt: skip


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def audit_events(logs: Path) -> list[Any]:
    return [stable(json.loads(line)) for line in (logs / "audit.jsonl").read_text().splitlines() if line.strip()]


def read_early(job: Path, reader: str) -> EarlyRead:
    early = start_early_read(str(job), [reader])
    assert early is not None
    assert early.wait(10) == reader, "the early read holds the card"
    return early


def test_identity_is_read_once_and_the_run_is_the_normal_one(pcscd: PrivatePcscd, cards: Cards, material: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    # The normal path, on a fresh card, for comparison.
    plain_log = tmp_path / "plain.jsonl"
    server = cards.insert(0, kind="sim", options={"serial": SERIAL, "apdu_log": str(plain_log)})
    plain = run(material, tmp_path / "logs-plain", server.reader, None)
    assert plain.exit_code == 0 and plain.document["jobs"][0]["status"] == "loaded"
    cards.pull_all()
    wait_for(lambda: not card_present(server.reader), 10, "the card to leave")

    early_log = tmp_path / "early.jsonl"
    server = cards.insert(0, kind="sim", options={"serial": SERIAL, "apdu_log": str(early_log)})
    early = read_early(material, server.reader)
    # Before the runner: the identity APDUs only, nothing else.
    assert [(e["ins"], e["p1"], e["p2"]) for e in apdus(early_log)] == IDENTITY
    outcome = run(material, tmp_path / "logs-early", server.reader, early)
    assert outcome.exit_code == 0 and outcome.document["jobs"][0]["status"] == "loaded"

    # Not sent again: the card saw exactly what the normal path sends, in the same order.
    assert traffic(early_log) == traffic(plain_log)
    seen = [(e["ins"], e["p1"], e["p2"]) for e in apdus(early_log)]
    assert seen[:3] == IDENTITY and seen.count(("A4", "04", "00")) == 1 and seen.count(("F8", "00", "00")) == 1
    # The same records and the same result (the APDU count included), but for times and ids.
    assert stable(outcome.document) == stable(plain.document)
    assert outcome.document["jobs"][0]["apdus"] == len(apdus(early_log))
    assert audit_events(tmp_path / "logs-early") == audit_events(tmp_path / "logs-plain")
    assert early.take(server.reader) is None  # taken once


def _swapped_after_early_read(cards: Cards, material: Path, tmp_path: Path, index: int, first: int, second: int
                              ) -> tuple[str, Any, Path, Path]:  # fmt: skip
    """A card with serial ``first`` is read early in reader ``index``, then taken out, and one with
    serial ``second`` put in its place: (the reader, the early read, each card's APDU log)."""
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    server = cards.insert(index, kind="sim", options={"serial": first, "apdu_log": str(first_log)})
    early = read_early(material, server.reader)
    server.remove()
    wait_for(lambda: not card_present(server.reader), 10, "the first card to leave")
    cards.insert(index, kind="sim", options={"serial": second, "apdu_log": str(second_log)})
    return server.reader, early, first_log, second_log


def test_a_card_swapped_after_the_early_read_is_identified_again(pcscd: PrivatePcscd, cards: Cards, material: Path,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    """The job's own card was read early, then another card took its place: the runner must read
    the new card and refuse it (no job names it), with not one write to either card."""
    reader, early, first_log, second_log = _swapped_after_early_read(cards, material, tmp_path, 1, SERIAL, OTHER_SERIAL)
    outcome = run(material, tmp_path / "logs", reader, early)
    doc = outcome.document
    assert doc["jobs"][0]["status"] == "pending"
    assert [c["card_serial"] for c in doc["refused_cards"]] == [OTHER_SERIAL]
    assert [(e["ins"], e["p1"], e["p2"]) for e in apdus(first_log)] == IDENTITY  # the early read, no more
    second = [(e["ins"], e["p1"], e["p2"]) for e in apdus(second_log)]
    assert second[:3] == IDENTITY  # the new card was identified itself
    assert not [e for e in apdus(first_log) + apdus(second_log) if e["ins"] in WRITE_INS]
    inserted = [e for e in audit_events(tmp_path / "logs") if e.get("event") == "card_inserted"]
    assert [e["card_serial"] for e in inserted] == [OTHER_SERIAL]


def test_the_right_card_swapped_in_after_the_early_read_is_loaded(pcscd: PrivatePcscd, cards: Cards, material: Path,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """A wrong card was read early and the holder's card replaced it: loaded, identified anew."""
    reader, early, first_log, second_log = _swapped_after_early_read(cards, material, tmp_path, 2, OTHER_SERIAL, SERIAL)
    outcome = run(material, tmp_path / "logs", reader, early)
    assert outcome.exit_code == 0 and outcome.document["jobs"][0]["status"] == "loaded"
    assert outcome.document["jobs"][0]["card_serial"] == SERIAL
    assert [(e["ins"], e["p1"], e["p2"]) for e in apdus(first_log)] == IDENTITY
    assert [(e["ins"], e["p1"], e["p2"]) for e in apdus(second_log)][:3] == IDENTITY
    assert outcome.document["jobs"][0]["apdus"] == len(apdus(second_log))  # the old card's APDUs are not this load's


def test_no_early_read_with_two_cards_in_the_readers(pcscd: PrivatePcscd, cards: Cards, material: Path,
                                                     tmp_path: Path) -> None:  # fmt: skip
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    cards.insert(0, kind="sim", options={"serial": SERIAL, "apdu_log": str(logs[0])})
    cards.insert(1, kind="sim", options={"serial": OTHER_SERIAL, "apdu_log": str(logs[1])})
    early = start_early_read(str(material), None)
    assert early is not None and early.wait(10) is None
    assert apdus(logs[0]) == [] and apdus(logs[1]) == []  # not one APDU: the runner reads them as before
    early.close()


def test_the_cli_reads_early_and_sends_each_identity_apdu_once(pcscd: PrivatePcscd, cards: Cards, material: Path,
                                                               tmp_path: Path) -> None:  # fmt: skip
    """The real command line, both ways: the card's traffic and the run's JSON agree."""
    import subprocess

    from tests.helpers.product import provision_cmd

    results = {}
    for setting in ("0", "1"):
        log = tmp_path / f"apdu-{setting}.jsonl"
        server = cards.insert(3, kind="sim", options={"serial": SERIAL, "apdu_log": str(log)})
        done = subprocess.run(
            [*provision_cmd(), "run", str(material), "--unattended", "--json", "--no-progress",
             "--logs", str(tmp_path / f"logs-{setting}"), "--reader", server.reader],
            env={**pcscd.env, "PROVISION_EARLY_READ": setting}, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL, cwd=material.parent,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        results[setting] = (stable(json.loads(done.stdout)), traffic(log))
        cards.pull_all()
        wait_for(lambda: not card_present(server.reader), 10, "the card to leave")  # noqa: B023
    assert results["1"] == results["0"]
    assert [t[1] for t in results["1"][1]].count("A4") == 1
