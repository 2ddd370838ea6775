"""Job files: the YAML reading, the schema, the semantic checks and the error sentences."""

from __future__ import annotations

import os
import shutil
import textwrap
from datetime import date
from pathlib import Path

import pytest

from provision.errors import JobFileError
from provision.jobfile import load_jobfile, parse_jobfile

REPO = Path(__file__).resolve().parents[2]

HEAD = """\
version: 1
batch: b1
"""


def card_yaml(**overrides: str) -> str:
    fields = {
        "id": "J1",
        "holder": "CHAN Tai Man",
        "card": "{serial: 12345678}",
        "pkcs12": "{path: c.p12, password: {env: P12_PASSWORD}}",
        "slot": "9c",
        "slot_name": '"e-Cert{cert.not_before:%Y%m%d}"',
        "pin": "{env: CARD_PIN}",
    }
    fields.update(overrides)
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items() if v is not None)
    return "  - " + body[4:]


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    (tmp_path / "c.p12").write_bytes(b"not checked here")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARD_PIN", "0")
    monkeypatch.setenv("P12_PASSWORD", "0")


def load(tmp_path: Path, text: str, **kw: bool):  # type: ignore[no-untyped-def]
    return load_jobfile(write(tmp_path, text), **kw)


def problems(tmp_path: Path, text: str, **kw: bool) -> list[str]:
    with pytest.raises(JobFileError) as info:
        load(tmp_path, text, **kw)
    return [str(p) for p in info.value.problems]


def test_minimal_job_builds_frozen_dataclasses(tmp_path: Path) -> None:
    jf = load(tmp_path, HEAD + "cards:\n" + card_yaml())
    job = jf.jobs[0]
    assert (job.id, job.holder, job.card.serial, job.slot.hex) == ("J1", "CHAN Tai Man", 12345678, "9c")
    assert job.replace == "archive" and job.min_pin_retries == 2 and job.management_key_type == "auto"
    assert job.pkcs12_path == tmp_path / "c.p12"
    with pytest.raises(AttributeError):
        job.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "attribute", "expected"),
    [
        ({"holder": "no"}, "holder", "no"),  # YAML 1.1 would say False
        ({"holder": "yes"}, "holder", "yes"),
        ({"holder": "1:20"}, "holder", "1:20"),  # YAML 1.1 sexagesimal would say 80
        ({"id": "0012"}, "id", "0012"),  # text field keeps the characters
        ({"id": "1e5"}, "id", "1e5"),
        ({"card": "{serial: 012345678}"}, "serial", 12345678),  # decimal, never octal
        ({"card": "{serial: 0x00BC614E}"}, "serial", 12345678),
        ({"card": "{serial: 4294967295}"}, "serial", 4294967295),  # top bit set
        ({"slot": "0x9c"}, "slot", "9c"),
        ({"holder": ".nan"}, "holder", ".nan"),  # YAML 1.2 floats (.nan, .inf) in a text field stay text
        ({"holder": "-.INF"}, "holder", "-.INF"),
        ({"slot": "82"}, "slot", "82"),
        ({"slot": "signature"}, "slot", "9c"),
        ({"slot": "9C"}, "slot", "9c"),
        ({"min_pin_retries": "02"}, "min_pin_retries", 2),
        ({"expect": "{serial: 1001}"}, "expect.serial", "1001"),  # hex text, not the number 1001
        ({"expect": "{serial: 0x00AB}"}, "expect.serial", "ab"),
        ({"expect": "{not_after_after: 2027-01-01}"}, "expect.not_after_after", date(2027, 1, 1)),
        ({"card": "{guid: 0123456789ABCDEF0123456789ABCDEF}"}, "guid", "0123456789abcdef0123456789abcdef"),
    ],
)
def test_yaml_surprises_are_handled_deliberately(tmp_path: Path, override: dict[str, str], attribute: str, expected: object) -> None:
    job = load(tmp_path, HEAD + "cards:\n" + card_yaml(**override)).jobs[0]
    value: object
    if attribute in ("serial", "guid"):
        value = getattr(job.card, attribute)
    elif attribute == "slot":
        value = job.slot.hex
    elif attribute.startswith("expect."):
        value = getattr(job.expect, attribute.split(".")[1])
    else:
        value = getattr(job, attribute)
    assert value == expected


def test_yaml11_boolean_words_are_not_booleans(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "cards:\n" + card_yaml(card="{any: yes}"))
    assert len(found) == 1
    assert "cards[0].card.any: 'yes' is text in YAML 1.2; write 'any: true'" in found[0]


def test_error_names_file_line_path_and_what_to_do(tmp_path: Path) -> None:
    text = HEAD + "cards:\n" + card_yaml() + card_yaml(id="J2", card="{serial: 2}", slot="9f")
    found = problems(tmp_path, text)
    assert found == [f"{tmp_path / 'job.yaml'}:15: cards[1].slot: '9f' is not a PIV slot "
                     "(9a, 9c, 9d, 9e, 82-95, or authentication, signature, key-management, "
                     "card-authentication, retired1-retired20)"]  # fmt: skip


def test_every_problem_is_reported_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = HEAD + "cards:\n" + card_yaml(slto="9c") + card_yaml(id="J2", card="{serial: 2}", pin="CARD_PIN")
    found = problems(tmp_path, text)
    assert len(found) == 2
    assert ":11: cards[0]: unknown field 'slto' (did you mean 'slot'?)" in found[0]
    assert ":18: cards[1].pin: the text 'CARD_PIN' is not a secret source" in found[1]
    assert "a bare value is refused" in found[1]


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    text = HEAD + "batch: again\ncards:\n" + card_yaml()
    found = problems(tmp_path, text)
    assert found == [f"{tmp_path / 'job.yaml'}:3: batch: duplicate key 'batch' (first at line 2); keep only one"]


def test_anchors_aliases_and_merge_keys(tmp_path: Path) -> None:
    text = HEAD + textwrap.dedent("""\
        x-common: &common
          slot: 9d
          pin: {env: CARD_PIN}
        cards:
          - <<: *common
            id: J1
            holder: A
            card: {serial: 1}
            pkcs12: &p12 {path: c.p12, password: {env: P12_PASSWORD}}
            slot_name: "n{card.serial}"
          - <<: *common
            slot: 9a
            id: J2
            holder: B
            card: {serial: 2}
            pkcs12: *p12
            slot_name: "n{card.serial}"
        """)
    jf = load(tmp_path, text)
    assert [j.slot.hex for j in jf.jobs] == ["9d", "9a"]  # explicit keys win over merged ones
    assert jf.jobs[0].pkcs12_path == jf.jobs[1].pkcs12_path


def test_alias_bombs_are_refused(tmp_path: Path) -> None:
    lines = ["x-a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):  # 10**9 values once expanded, from a file of a few hundred bytes
        prev = f"*a{n - 1}"
        lines.append(f"x-a{n}: &a{n} [{', '.join([prev] * 10)}]")
    text = HEAD + "\n".join(lines) + "\ncards: []\n"
    found = problems(tmp_path, text)
    assert "aliases expand to too many values" in found[0]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "x-loop: &loop [*loop]\ncards: []\n")
    assert len(found) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("version: 1\n---\nversion: 1\n", "one YAML document"),
        ("- a\n- b\n", "a job file is a mapping"),
        ("version: 1\nbatch: [unclosed\n", "not valid YAML"),
        ("version: 2\nbatch: b\ncards: []\n", "version 2 is not supported"),
        ("version: 1\nbatch: b\n", "'cards' is missing; add it"),
        ("version: 1\nbatch: b\ncards: []\n", "the list is empty"),
        ("version: 1\nbatch: b\nx: !!binary aGVsbG8=\ncards: []\n", "YAML tag"),
        ("version: .nan\nbatch: b\ncards: []\n", "not supported"),
        ("version: 1\nbatch: b\ndefaults: {min_pin_retries: .inf}\ncards: []\n", "expected a whole number"),
    ],
)
def test_malformed_files_get_one_clear_sentence(tmp_path: Path, text: str, message: str) -> None:
    found = problems(tmp_path, text)
    assert any(message in f for f in found), found


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nholder: \xe9\n")
    with pytest.raises(JobFileError, match="not UTF-8"):
        load_jobfile(path)
    with pytest.raises(JobFileError, match="does not exist"):
        load_jobfile(tmp_path / "nope.yaml")


def test_semantic_checks(tmp_path: Path) -> None:
    text = HEAD + "timezone: Mars/Olympus\ndefaults: {id: X}\ncards:\n" + card_yaml() + card_yaml(
        card="{serial: 12345678}", pkcs12="{path: missing.p12, password: {env: NOT_SET_ANYWHERE}}",
        slot_name='"{cert.not_before.year}"'
    )  # fmt: skip
    found = "\n".join(problems(tmp_path, text))
    assert "timezone: 'Mars/Olympus' is not an IANA time zone" in found
    assert "defaults.id: 'id' belongs to each card" in found
    assert "cards[1].id: id 'J1' is already used by cards[0]" in found
    assert "cards[1].card: serial 12345678 already belongs to cards[0]; one job per card" in found
    assert "missing.p12 does not exist" in found
    assert "environment variable NOT_SET_ANYWHERE is not set" in found
    assert "unknown field {cert.not_before.year}" in found


def test_required_after_defaults(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "cards:\n" + card_yaml(slot=None, slot_name=None, pin=None, card=None))
    joined = "\n".join(found)
    for field in ("slot", "slot_name", "pin", "card"):
        assert f"'{field}' is missing" in joined


def test_defaults_apply_and_cards_override(tmp_path: Path) -> None:
    text = HEAD + 'defaults:\n  slot: 9a\n  slot_name: "x"\n  pin: {env: CARD_PIN}\n  card: {any: true}\n  replace: refuse\ncards:\n'
    text += card_yaml(slot=None, slot_name=None, pin=None, card=None) + card_yaml(id="J2", slot="9e", card=None, slot_name=None, pin=None)
    jf = load(tmp_path, text)
    assert [(j.slot.hex, j.replace, j.card.any) for j in jf.jobs] == [("9a", "refuse", True), ("9e", "refuse", True)]


def test_secret_sources(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin.txt"
    pin_file.write_text("1234\n")
    os.chmod(pin_file, 0o644)
    text = HEAD + "cards:\n" + card_yaml(pin="{file: pin.txt}", pkcs12='{path: c.p12, password: {prompt: "Envelope"}}')
    found = problems(tmp_path, text)
    assert len(found) == 1 and "can be read by others (mode 0644); run 'chmod 600" in found[0]
    os.chmod(pin_file, 0o600)
    assert load(tmp_path, text).jobs[0].pin.kind == "file"
    found = problems(tmp_path, text, unattended=True)
    assert len(found) == 1 and "cannot be asked in an unattended run" in found[0]


def test_value_secret_is_accepted_with_a_warning_that_hides_it(tmp_path: Path) -> None:
    jf = load(tmp_path, HEAD + "cards:\n" + card_yaml(pin='{value: "918273"}'))
    assert any("written in the job file" in w.message for w in jf.warnings)
    assert "918273" not in repr(jf)


def test_command_secret_must_exist(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + "cards:\n" + card_yaml(pin="{command: [no-such-program-xyz, show, pin]}"))
    assert "program 'no-such-program-xyz' was not found on PATH" in found[0]


def test_example_job_files_validate(tmp_path: Path) -> None:
    from provision.demo import write_material

    write_material(tmp_path, 4)
    examples = sorted((REPO / "jobs").glob("*.yaml"))
    assert {p.name for p in examples} >= {"counter.yaml", "renewal.yaml"}
    for example in examples:
        if example.name == "demo.yaml":
            continue
        shutil.copy(example, tmp_path / example.name)
        jf = load_jobfile(tmp_path / example.name)
        assert jf.jobs, example


def test_parse_jobfile_on_text_is_the_same_reader(tmp_path: Path) -> None:
    write(tmp_path, "")
    jf = parse_jobfile(HEAD + "cards:\n" + card_yaml(), tmp_path / "x.yaml")
    assert jf.jobs[0].pkcs12_path == tmp_path / "c.p12"


def test_the_shipped_schema_is_valid_draft_2020_12() -> None:
    import json

    import jsonschema

    from provision.resources import job_schema_bytes

    schema = json.loads(job_schema_bytes())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_defaults_written_after_the_cards_still_apply(tmp_path: Path) -> None:
    defaults = 'defaults:\n  slot: 9a\n  slot_name: "x"\n  pin: {env: CARD_PIN}\n  replace: refuse\n'
    cards = "cards:\n" + card_yaml(slot=None, slot_name=None, pin=None) + card_yaml(id="J2", card="{serial: 2}", slot="9e", slot_name=None, pin=None)
    before = load(tmp_path, HEAD + defaults + cards)
    after = load(tmp_path, HEAD + cards + defaults)
    assert [(j.slot.hex, j.replace) for j in after.jobs] == [("9a", "refuse"), ("9e", "refuse")]
    assert [(j.id, j.slot, j.replace, j.pin) for j in after.jobs] == [(j.id, j.slot, j.replace, j.pin) for j in before.jobs]


def test_cards_written_as_an_alias_are_checked_like_any_cards(tmp_path: Path) -> None:
    text = HEAD + "x-cards: &all\n" + card_yaml(slot="9x") + "cards: *all\n"
    found = problems(tmp_path, text)
    assert len(found) == 1 and "cards[0].slot" in found[0] and ":8:" in found[0], found  # the slot, in the anchored list
    jf = load(tmp_path, HEAD + "x-cards: &all\n" + card_yaml() + "cards: *all\n")
    assert [j.id for j in jf.jobs] == ["J1"]


def test_a_card_error_names_its_own_line_in_a_long_file(tmp_path: Path) -> None:
    cards = "".join(card_yaml(id=f"J{n}", card=f"{{serial: {n}}}") for n in range(50))
    cards += card_yaml(id="J50", card="{serial: 50}", min_pin_retries="many")
    found = problems(tmp_path, HEAD + "cards:\n" + cards)
    line = 4 + 50 * 7 + 7  # HEAD (2) + "cards:" + 50 cards of 7 lines, then the 8th field of the last
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'job.yaml'}:{line}: cards[50].min_pin_retries:"), found


def test_cards_are_handed_over_one_at_a_time_and_not_kept() -> None:
    import gc

    from provision.jobfile import load_yaml

    text = HEAD + "cards:\n" + "".join(card_yaml(id=f"STREAMED-{n}") for n in range(20))
    seen: list[str] = []

    def cards_alive() -> set[object]:  # this test's card mappings (they nest mappings: the gc tracks them)
        return {o["id"] for o in gc.get_objects() if isinstance(o, dict) and str(o.get("id")).startswith("STREAMED-")}

    def on_card(index: int, card: dict[str, object], lines: dict[tuple[str | int, ...], int], so_far: dict[str, object]) -> None:
        assert cards_alive() == {f"STREAMED-{index}"}  # the reader let go of every card before this one
        assert lines[("cards", index)] == 4 + 7 * index and so_far["batch"] == "b1"
        seen.append(str(card["id"]))

    data, lines = load_yaml(text, "x.yaml", on_card=on_card)
    assert seen == [f"STREAMED-{n}" for n in range(20)] and data["cards"] == 20
    assert not any(path[:1] == ("cards",) and len(path) > 1 for path in lines)


def test_an_explicit_str_tag_keeps_the_text(tmp_path: Path) -> None:
    jf = load(tmp_path, HEAD + "cards:\n" + card_yaml(holder="!!str 1234"))
    assert jf.jobs[0].holder == "1234"
    # A neighbouring typo is still caught, on its own line, with the field it probably meant.
    found = problems(tmp_path, HEAD + "batch2: x\ncards:\n" + card_yaml())
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'job.yaml'}:3: unknown field 'batch2' (did you mean 'batch'?)"), found


def test_a_text_that_passed_the_schema_is_not_checked_again(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, HEAD + "cards:\n" + card_yaml())
    cache = tmp_path / "cache"
    probe = ("import sys; from provision.jobfile import load_jobfile; jf = load_jobfile(sys.argv[1]); "
             "print(jf.jobs[0].id, 'jsonschema' in sys.modules)")  # fmt: skip
    env = {**os.environ, "PROVISION_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}

    def read() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(path)], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip

    assert read() == "J1 True"  # the first read checks the schema
    assert read() == "J1 False"  # the same text again: no schema check, no jsonschema import
    entries = list((cache / "validated").iterdir())
    assert len(entries) == 1 and len(entries[0].name) == 64 and entries[0].stat().st_size == 0  # a hash only
    path.write_text(path.read_text().replace("CHAN Tai Man", "CHAN Tai Men"))
    assert read() == "J1 True"  # one character changed: checked again


def test_a_forged_cache_entry_cannot_smuggle_a_broken_file_past_the_schema(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from provision import schema_cache

    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    text = HEAD + "cards:\n  - {id: J1, holder: x}\n"  # no pkcs12: the schema refuses it
    entry = schema_cache.marker(text)
    assert entry is not None
    schema_cache.remember(entry)
    found = problems(tmp_path, text)
    assert any("'pkcs12' is missing" in f for f in found), found
    monkeypatch.setenv("PROVISION_CACHE_DIR", "off")
    assert schema_cache.marker(text) is None


def test_audit_anchor_is_a_path_relative_to_the_job_file(tmp_path: Path) -> None:
    jf = load(tmp_path, HEAD + "audit: {anchor: ../witness/seals.jsonl}\ncards:\n" + card_yaml())
    assert jf.audit_anchor == tmp_path / "../witness/seals.jsonl"
    absolute = load(tmp_path, HEAD + "audit: {anchor: /mnt/witness/s.jsonl}\ncards:\n" + card_yaml())
    assert absolute.audit_anchor == Path("/mnt/witness/s.jsonl")
    assert load(tmp_path, HEAD + "cards:\n" + card_yaml()).audit_anchor is None
    assert any("anchor" in p for p in problems(tmp_path, HEAD + "audit: {anchor: 5}\ncards:\n" + card_yaml()))


def test_audit_timestamp_is_an_http_url(tmp_path: Path) -> None:
    jf = load(tmp_path, HEAD + "audit: {timestamp: 'http://tsa.example/'}\ncards:\n" + card_yaml())
    assert jf.audit_timestamp == "http://tsa.example/"
    assert any("timestamp" in p for p in problems(tmp_path, HEAD + "audit: {timestamp: 'ftp://x'}\ncards:\n" + card_yaml()))


def test_derived_management_key_and_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provision.jobfile import DerivedKey, PinProtectedKey

    monkeypatch.setenv("MGMT_MASTER", "00")
    derive = '{derive: {master: {env: MGMT_MASTER}, label: "HK 2026"}}'
    job = load(tmp_path, HEAD + "cards:\n" + card_yaml(management_key=derive, management_key_rotate=derive)).jobs[0]
    assert job.management_key == DerivedKey(job.management_key.master, "HK 2026")
    assert job.management_key.master.kind == "env" and job.management_key_kind == "derived"
    assert isinstance(job.management_key_rotate, DerivedKey)
    pinned = load(tmp_path, HEAD + "cards:\n" + card_yaml(management_key_rotate="{pin_protected: true}")).jobs[0]
    assert pinned.management_key is None and isinstance(pinned.management_key_rotate, PinProtectedKey)
    assert pinned.management_key_kind == "pin-protected"
    assert load(tmp_path, HEAD + "cards:\n" + card_yaml()).jobs[0].management_key_kind == "default"


@pytest.mark.parametrize("field", [
    "management_key: {derive: {master: 0011, label: x}}",  # a bare master: refused like any secret
    "management_key: {derive: {master: {env: MGMT_MASTER}}}",  # no label
    "management_key_rotate: {pin_protected: false}",
    "management_key_rotate: {}",
    "management_key_rotate: {derive: {master: {env: MGMT_MASTER}, label: x}, pin_protected: true}",
])  # fmt: skip
def test_bad_management_key_forms_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    monkeypatch.setenv("MGMT_MASTER", "00")
    name, value = field.split(": ", 1)
    assert problems(tmp_path, HEAD + "cards:\n" + card_yaml(**{name: value}))


def test_an_all_zero_guid_names_no_card(tmp_path: Path) -> None:
    """Cards without a GUID of their own carry 32 zeros in the CHUID, and the client takes that as
    no GUID (as OpenSC does): a job naming it could never match, so validate says so."""
    found = problems(tmp_path, HEAD + "cards:\n" + card_yaml(card="{guid: " + "0" * 32 + "}"))
    assert len(found) == 1 and "cards[0].card.guid: a GUID of 32 zeros" in found[0], found
    assert "name this card by its serial" in found[0]
    assert load(tmp_path, HEAD + "cards:\n" + card_yaml(card="{guid: " + "0" * 31 + "1}")).jobs[0].card.guid
