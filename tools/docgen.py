"""`make docs`: the pictures of the guides, recorded from the real program, and the job-file reference.

Everything here is deterministic, so a picture changes only when the program does:

* the counter screens: the real ``CounterScreen`` driving the real ``Runner`` (``provision.app``'s
  ``run_jobfile``), on in-process simulated cards with fixed serials, certificates with fixed keys
  (seeded EC keys, deterministic ECDSA) and fixed dates, answered by a script instead of a person,
  on a rich console of fixed width recorded and exported as SVG (one picture per screen);
* the HTML report of that day, rendered by the real report code; its run id and times are the only
  things that vary with the clock, and they are fixed here (``normalize_document``);
* ``plan`` with a card in the reader (a simulated card holding last term's e-Cert);
* ``docs/jobfile.md`` from ``schemas/job.schema.json``.

``python tools/docgen.py`` writes them into ``docs/``; ``--check`` writes them into a temporary
directory and lists what differs (the test ``tests/unit/test_docs.py`` does the same). The PNG of
the report is rendered from the committed HTML in headless Chromium (``--png``, part of
``make docs``); the test compares the HTML, not the pixels (fonts and anti-aliasing differ between
machines; the HTML is what the code decides).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PICTURES = DOCS / "pictures"
SCHEMA = ROOT / "schemas" / "job.schema.json"
WIDTH = 100  # columns of the recorded terminal

# The day at the counter: fixed dates (certificates valid until 2036, so the pictures stay true
# for years; the old e-Cert on the first card has already expired, as when a citizen renews).
NOT_BEFORE = datetime(2026, 7, 29, 1, 0, tzinfo=UTC)
NOT_AFTER = datetime(2036, 7, 28, 15, 59, 59, tzinfo=UTC)
OLD_NOT_BEFORE = datetime(2023, 7, 29, 1, 0, tzinfo=UTC)
OLD_NOT_AFTER = datetime(2026, 7, 28, 15, 59, 59, tzinfo=UTC)
ENVELOPE = "4921730856120394"  # the demo PIN envelope's 16 digits (a simulated card's material)
PIN, NEW_PIN, PUK = "123456", "246810", "12345678"  # the simulated card's factory PIN and PUK
HOLDERS = (  # job id, holder, card serial
    ("HK-A1234567", "CHAN Tai Man", 12345678),
    ("HK-B2345678", "LEE Siu Ming", 12345679),
    ("HK-C3456789", "WONG Mei Ling", 12345680),
    ("HK-D4567890", "CHEUNG Ka Yan", 12345681),
    ("HK-E5678901", "HO Wing Sze", 12345682),
)


def material(directory: Path) -> Path:
    """The day's PKCS#12 files and job file (fixed keys, serials and dates)."""
    from provision import fixtures

    ca = fixtures.make_ca("Provision Demo e-Cert CA")
    (directory / "certs").mkdir(parents=True, exist_ok=True)
    cards = []
    for index, (job_id, holder, serial) in enumerate(HOLDERS):
        name = holder.lower().replace(" ", "-")
        data = fixtures.holder_p12(ca, holder, ENVELOPE, key_type="p256", serial=0x2601 + index,
                                   not_before=NOT_BEFORE, not_after=NOT_AFTER)  # fmt: skip
        (directory / "certs" / f"{name}.p12").write_bytes(data)
        cards.append(f"  - id: {job_id}\n    holder: {holder}\n    card: {{serial: {serial}}}\n    pkcs12: {{path: certs/{name}.p12, password: "
                     '{prompt: "16-digit number on the PIN envelope"}}\n')  # fmt: skip
    job = directory / "counter.yaml"
    job.write_text(
        "version: 1\nbatch: counter-2026-11-30\ntimezone: Asia/Hong_Kong\ndefaults:\n"
        '  slot: 9c\n  slot_name: "e-Cert{cert.not_before:%Y%m%d}"\n  pin: {prompt: "Card PIN"}\ncards:\n'
        + "".join(cards),
        encoding="utf-8",
    )
    return job


def old_ecert(card: Any, holder: str, slot: int) -> None:
    """Last term's e-Cert on the first holder's card (it goes On Disk when the new one is loaded)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from provision import fixtures
    from provision.backend import preload_sim_card

    ca = fixtures.make_ca("Provision Demo e-Cert CA (2023)")
    key, old = fixtures.make_leaf(ca, holder, key_type="p256", seed=b"old e-Cert", serial=0x0777,
                                  not_before=OLD_NOT_BEFORE, not_after=OLD_NOT_AFTER)  # fmt: skip
    preload_sim_card(card, slot, key, old.public_bytes(Encoding.DER), f"e-Cert{OLD_NOT_BEFORE:%Y%m%d}")


def block_pin(card: Any) -> None:
    """The holder typed a wrong PIN at home until the card blocked (3 wrong VERIFYs)."""
    card.process(bytes.fromhex("00A4040009A00000030800001000"))
    for _ in range(3):
        card.process(bytes.fromhex("0020008008") + b"000000" + b"\xff\xff")
    card.power_on()


class CounterCards:
    """The cards the clerk is handed, in a fixed order, in one reader: a simulated source whose
    refused card goes back to its holder and whose pulled card comes back (as the same card, now
    staying in the reader)."""

    def __init__(self, cards: list[Any]) -> None:
        from provision.sim.source import SimSource

        class Handed(SimSource):
            def requeue(self, reader: str) -> None:
                # The card in the reader is not the called holder's: it stays for when they are.
                return None

        self.inner = Handed([cards])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


PULLED_AFTER_APDUS = 13  # after the key is imported: the load rolls forward from there


def svg_format() -> str:
    """rich's SVG template without its web-font URLs: a picture in the guides loads nothing from the
    network (the viewer's Fira Code if installed, else its monospace font)."""
    import inspect
    import re

    from rich.console import Console

    default = str(inspect.signature(Console.export_svg).parameters["code_format"].default)
    return re.sub(r',\s*url\("https?://[^"]*"\) format\("woff2?"\)', "", default)


class PutBack:
    """A pulled card put back into the reader: the same card (its state as the pull left it)."""

    def __init__(self, pulled: Any) -> None:
        self.pulled = pulled
        self.card: Any = None

    def __getattr__(self, name: str) -> Any:
        if self.card is None:
            from provision.sim.card import SimCard

            # The same card: what the pull left on it (its state file), now staying in the reader.
            self.card = SimCard(replace(self.pulled.options, vanish_after=None), self.pulled.state_path)
        return getattr(self.card, name)


class Script:
    """The person at the counter: answers in order; before each answer the screen so far becomes
    one picture (its name given with the answer)."""

    def __init__(self, console: Any, steps: list[tuple[str | None, str, bool]]) -> None:
        self.console = console
        self.steps = list(steps)  # (picture to cut before answering, answer, echoed)
        self.pictures: dict[str, str] = {}
        self.title = ""

    def cut(self, name: str) -> None:
        self.pictures[name] = self.console.export_svg(title=self.title, clear=True, code_format=svg_format(),
                                                      unique_id=f"provision-{name}")  # fmt: skip

    def answer(self, *, secret: bool) -> str:
        """The next answer, echoed as a terminal would (a secret prompt echoes nothing)."""
        if not self.steps:
            raise AssertionError("the counter asked more than the script answers")
        _name, typed, echoed = self.steps.pop(0)
        self.console.print(typed if echoed and not secret else "", markup=False, highlight=False)
        return typed

    def pending(self) -> bool:
        return bool(self.steps)


def counter_day(language: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Record the counter day in ``language``: the pictures (name → SVG) and the run document."""
    from provision import i18n

    before = i18n.current_language()
    i18n.set_language(language)
    try:
        return _counter_day(language)
    finally:
        i18n.set_language(before)


def _counter_day(language: str) -> tuple[dict[str, str], dict[str, Any]]:
    from rich.console import Console

    from provision import counter, i18n
    from provision.app import run_jobfile
    from provision.counter import CounterScreen
    from provision.jobfile import load_jobfile
    from provision.sim.card import SimCard, SimOptions

    _ = i18n.gettext
    console = Console(record=True, width=WIDTH, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      highlight=False, legacy_windows=False, _environ={})  # fmt: skip
    # Pictures are cut just before the answer that ends them: (picture, answer, echoed).
    steps: list[tuple[str | None, str, bool]] = [
        ("counter-1-start", "Clerk WONG", True),  # the operator's name
        ("counter-2-holder", ENVELOPE, False),  # CHAN Tai Man's envelope
        (None, "y", True),  # load it (the confirmation is in the next picture)
        ("counter-3-confirm", PIN, False),
        ("counter-4-done", ENVELOPE, False),  # LEE Siu Ming's envelope; a wrong card comes first
        (None, "y", True),
        ("counter-5-wrong-card", "111111", False),  # the refused PIN
        ("counter-6-wrong-pin", PIN, False),
        (None, ENVELOPE, False),  # WONG Mei Ling: her card is blocked
        ("counter-7-blocked", "u", True),
        (None, PUK, False),
        (None, NEW_PIN, False),
        (None, NEW_PIN, False),
        ("counter-8-unblocked", "y", True),
        (None, NEW_PIN, False),
        (None, ENVELOPE, False),  # CHEUNG Ka Yan: the card is pulled mid-load
        (None, "y", True),
        (None, PIN, False),
        ("counter-9-pulled", "y", True),  # the same card back: the load rolls forward
        (None, PIN, False),
        ("counter-10-back", "", False),  # HO Wing Sze has no envelope today: Enter skips her
    ]
    script = Script(console, steps)
    script.title = "provision run counter.yaml" + (" --lang zh_Hant" if language != "en" else "")
    def prompted(prompt: str, *, secret: bool) -> str:
        name = script.steps[0][0] if script.steps else None
        if prompt:
            console.print(prompt, end="", markup=False, highlight=False)
        if name:  # the screen up to this prompt is one picture
            script.cut(name)
        return script.answer(secret=secret)

    def fake_getpass(prompt: str = "", stream: Any = None) -> str:
        return prompted(prompt, secret=True)

    with tempfile.TemporaryDirectory(prefix="provision-docs-") as tmp, _chdir(Path(tmp)), \
            _patched(getpass, "getpass", fake_getpass), _patched(counter, "input_ready", lambda _t: script.pending()):  # fmt: skip
        job_path = material(Path(tmp))
        jobfile = load_jobfile(job_path.name)
        slot = jobfile.jobs[0].slot.key_ref
        chan, lee, wong, cheung, ho = (SimCard(SimOptions(serial=s)) for _id, _h, s in HOLDERS)
        old_ecert(chan, HOLDERS[0][1], slot)
        block_pin(wong)
        pulled = SimCard(replace(cheung.options, vanish_after=PULLED_AFTER_APDUS), Path("card-12345681.json"))
        # The cards as they are handed over: LEE Siu Ming gives HO Wing Sze's card first; CHEUNG Ka
        # Yan's card is pulled mid-load and put back.
        source = CounterCards([chan, ho, lee, wong, pulled, PutBack(pulled)])
        screen = CounterScreen(console=console, read_line=lambda: prompted("", secret=False) + "\n")
        # The start: the command, and the operator's name asked once per session (cli.py).
        console.print(f"$ {script.title}", style="bold", markup=False)
        operator = prompted(_("Operator (your name, recorded in every audit record; q: leave): "), secret=False)
        with _patched(counter, "CounterScreen", lambda: screen):
            outcome = run_jobfile(jobfile, logs=Path("logs"), unattended=False, wait=None, source=source,
                                  progress=False, operator=operator, counter_screen=True)  # fmt: skip
        script.cut("counter-11-end-of-day")
    if script.steps:
        raise AssertionError(f"the counter day ended with answers left over: {script.steps}")
    return script.pictures, outcome.document


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any, create: bool = False) -> Iterator[None]:
    missing = object()
    old = getattr(owner, name, missing)
    if old is missing and not create:
        raise AttributeError(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if old is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, old)


def normalize_document(document: dict[str, Any]) -> dict[str, Any]:
    """The run document with what the clock and chance decide fixed: the run id, the times, the
    seconds, the seal (it hashes the times); everything the code decides is kept."""
    doc: dict[str, Any] = json.loads(json.dumps(document, default=str))
    doc["run_id"] = "20261130T013000Z-d0c5d0"
    doc["started"], doc["finished"] = "2026-11-30T01:30:00Z", "2026-11-30T02:10:00Z"
    doc["seal"] = "5ea1" * 16
    for job in doc.get("jobs", []):
        if job.get("seconds") is not None:
            job["seconds"] = 1.2
    for card in doc.get("refused_cards", []):
        if "time" in card:
            card["time"] = "2026-11-30T01:41:00Z"
    return doc


def report_html(document: dict[str, Any]) -> str:
    from provision.report import render_html

    return str(render_html(normalize_document(document)))


def plan_text() -> str:
    """``provision plan`` with a card in the reader: CHAN Tai Man's card, last term's e-Cert on it."""
    from provision.i18n import set_language

    set_language("en")
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="provision-docs-") as tmp, _chdir(Path(tmp)):
        job_path = material(Path(tmp))
        text = job_path.read_text(encoding="utf-8").split("  - id: HK-C3456789")[0]
        text = text.replace('{prompt: "16-digit number on the PIN envelope"}', "{file: certs/envelope.txt}")
        text = text.replace('pin: {prompt: "Card PIN"}', "pin: {file: certs/card.pin}")
        for name, value in (("envelope.txt", ENVELOPE), ("card.pin", PIN)):
            path = Path(tmp) / "certs" / name
            path.write_text(value + "\n", encoding="utf-8")
            path.chmod(0o600)
        job_path.write_text(text, encoding="utf-8")
        lines = plan_with_card(job_path)
    return "$ provision plan counter.yaml\n" + "\n".join(lines) + "\n"


def plan_with_card(job_path: Path) -> list[str]:
    from provision.jobfile import load_jobfile
    from provision.plan import match_cards, plan_jobfile, print_plan
    from provision.plancards import read_transports
    from provision.sim.card import SimCard, SimOptions
    from provision.sim.inprocess import SimTransport

    jobfile = load_jobfile(job_path.name, unattended=True)
    card = SimCard(SimOptions(serial=HOLDERS[0][2]))
    old_ecert(card, HOLDERS[0][1], jobfile.jobs[0].slot.key_ref)
    reader = "Provision Sim 00"
    plan = match_cards(plan_jobfile(jobfile, unattended=True), read_transports([(reader, SimTransport(card, reader))]))
    lines: list[str] = []
    print_plan(plan, lines.append)
    return lines


def schema_fields(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every field of the schema, by its path in a job file (``cards[].slot``), in schema order."""
    defs = schema.get("$defs", {}) if defs is None else defs

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return {**resolve(defs[ref.split("/")[-1]]), **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def branches(node: dict[str, Any]) -> list[dict[str, Any]]:
        node = resolve(node)
        found = [node] if "properties" in node else []
        for key in ("oneOf", "anyOf"):
            for branch in node.get(key, []):
                found.extend(branches(branch))
        return found

    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()

    def walk(node: dict[str, Any], prefix: str, depth: int) -> None:
        for holder in branches(node):
            for name, sub in holder.get("properties", {}).items():
                path = f"{prefix}{name}"
                if path in seen:
                    continue
                seen.add(path)
                out.append((path, sub))
                if depth < 6:
                    walk(sub, f"{path}.", depth + 1)
        items = resolve(node).get("items")
        if isinstance(items, dict):
            walk(items, f"{prefix.rstrip('.')}[].", depth + 1)

    walk(schema, "", 0)
    return out


def type_of(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.split("/")[-1]
        return {"nonEmptyString": "text", "template": "template", "secret": "secret",
                "pkcs12Password": "secret or {empty: true}", "managementKey": "secret or {derive: …}",
                "managementKeyRotate": "{derive: …} or {pin_protected: true}",
                "cardFields": "card fields"}.get(name, name)  # fmt: skip
    kind = node.get("type")
    if kind == "array":
        return "list"
    if kind == "object" or "properties" in node or "oneOf" in node:
        return "mapping"
    return {"string": "text", "integer": "integer", "boolean": "boolean"}.get(str(kind), str(kind or "any"))


def jobfile_reference(schema_text: str) -> str:
    """docs/jobfile.md: every field of the job file with its type, default, example and meaning."""
    schema = json.loads(schema_text)
    defs = schema.get("$defs", {})
    lines = [
        "# Job-file reference",
        "",
        "<!-- GENERATED by `make docs` (tools/docgen.py) from schemas/job.schema.json: edit the schema's",
        "     descriptions, not this file. tests/unit/test_docs.py fails when it is stale. -->",
        "",
        str(schema.get("description", "")),
        "",
        "A job file is YAML (1.2 core schema, see [batch.md](batch.md#yaml-read-deliberately)). Every card field may",
        "also be given once under `defaults:`; a card's own field replaces the default's whole.",
        "`cards[].…` below are the card fields; `defaults.…` takes the same ones.",
        "",
        "| field | type | default | example | meaning |",
        "|---|---|---|---|---|",
    ]
    for path, node in schema_fields(schema):
        if path.startswith("defaults."):
            continue  # the same fields as cards[]
        default = json.dumps(node["default"]) if "default" in node else ""
        example = ", ".join(f"`{json.dumps(v, ensure_ascii=False)}`" for v in node.get("examples", []))
        meaning = str(node.get("description", "")).replace("|", "\\|")
        lines.append(f"| `{path}` | {type_of(node, defs)} | {f'`{default}`' if default else ''} | {example} | {meaning} |")
    lines += ["", "A secret is always one of `{env: NAME}`, `{file: PATH}`, `{prompt: \"text\"}`,",
              "`{command: [argv…]}` or `{value: \"…\"}` (see [batch.md](batch.md#secrets)).", ""]
    return "\n".join(lines)


def undocumented_fields(schema_text: str) -> list[str]:
    """Fields of the schema without a description (a test keeps this empty)."""
    schema = json.loads(schema_text)
    missing = [path for path, node in schema_fields(schema) if not node.get("description")]
    for name, node in schema.get("$defs", {}).items():  # fields only reachable through $defs
        for path, sub in schema_fields(node, schema["$defs"]):
            if not sub.get("description"):
                missing.append(f"$defs.{name}.{path}")
    return sorted(set(missing))


def generate(*, pictures: bool = True) -> dict[str, str]:
    """Every generated file of docs/, by path relative to docs/."""
    out: dict[str, str] = {"jobfile.md": jobfile_reference(SCHEMA.read_text(encoding="utf-8"))}
    if not pictures:
        return out
    for language, suffix in (("en", ""), ("zh_Hant", ".zh_Hant")):
        shots, document = counter_day(language)
        for name, svg in shots.items():
            out[f"pictures/{name}{suffix}.svg"] = svg
        if language == "en":
            out["pictures/report.html"] = report_html(document)
    out["pictures/plan.txt"] = plan_text()
    return out


def stale(generated: dict[str, str]) -> list[str]:
    """Generated files whose committed copy differs (or is missing)."""
    return [name for name, text in sorted(generated.items())
            if not (DOCS / name).is_file() or (DOCS / name).read_text(encoding="utf-8") != text]  # fmt: skip


def render_png(html: Path, png: Path) -> None:
    """The report page as a person sees it: headless Chromium (Debian's), through Playwright."""
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    # Which HTML the PNG shows: the test compares this with the HTML the code renders now.
    png.with_suffix(".png.sha256").write_text(html_digest(html.read_text(encoding="utf-8")) + "\n", encoding="utf-8")


def html_digest(html: str) -> str:
    import hashlib

    return hashlib.sha256(html.encode("utf-8")).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list the stale files; write nothing")
    parser.add_argument("--no-png", action="store_true", help="do not render the report's PNG")
    args = parser.parse_args(argv)
    generated = generate()
    if args.check:
        names = stale(generated)
        for name in names:
            print(f"stale: docs/{name} (run make docs)")
        return 1 if names else 0
    for name, text in generated.items():
        path = DOCS / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote docs/{name}")
    if not args.no_png:
        render_png(PICTURES / "report.html", PICTURES / "report.png")
        print("wrote docs/pictures/report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
