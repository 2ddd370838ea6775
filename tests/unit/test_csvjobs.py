"""``provision jobs new``: job files from spreadsheets, with their quirks, always validating."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provision.csvjobs import jobs_from_csv, parse_serial, write_jobs_from_csv
from provision.errors import JobFileError, UsageError
from provision.jobfile import load_jobfile
from tests.helpers.product import checkout_pythonpath, provision_cmd

TEMPLATE = """version: 1
batch: renewal-2026-11
timezone: Asia/Hong_Kong
defaults:
  slot: 9c
  slot_name: "e-Cert{cert.not_before:%Y%m%d}"
  pin: {file: secrets/card.pin}
  renew: {when_expires_within: 30d}
  export: {pem: "out/{job.id}.pem"}
x-pkcs12-password: {file: secrets/p12.pass}
"""


@pytest.fixture
def office(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    for name in ("card.pin", "p12.pass", "chan.pass"):
        path = tmp_path / "secrets" / name
        path.write_text("x\n")
        path.chmod(0o600)
    (tmp_path / "certs").mkdir()
    for name in ("a", "b", "c"):
        (tmp_path / "certs" / f"{name}.p12").write_bytes(b"0")
    (tmp_path / "template.yaml").write_text(TEMPLATE)
    return tmp_path


def make(office: Path, csv: bytes, **kw: object) -> object:
    (office / "holders.csv").write_bytes(csv)
    return jobs_from_csv(office / "holders.csv", office / "template.yaml", office / "batch.yaml", **kw)  # type: ignore[arg-type]


def problems(office: Path, csv: bytes) -> list[str]:
    with pytest.raises(JobFileError) as caught:
        make(office, csv)
    return [str(p) for p in caught.value.problems]


def test_excel_csv_with_bom_semicolons_and_chinese_names(office: Path) -> None:
    csv = ("\ufeffID;Holder;Card Serial;PKCS12;Password File;Notes\r\n"
           "HK-1;CHAN Tai Man;12345678;certs/a.p12;secrets/chan.pass;VIP\r\n"
           "0012;no;;certs/b.p12;;\r\n"
           "HK-3;陳大文;=\"0012345680\";certs/c.p12;;\r\n;;;;;\r\n").encode("utf-8")  # fmt: skip
    made = make(office, csv)
    jobs = made.jobfile.jobs  # type: ignore[attr-defined]
    assert [(j.id, j.holder, j.card.serial, j.card.any) for j in jobs] == [
        ("HK-1", "CHAN Tai Man", 12345678, False), ("0012", "no", None, True), ("HK-3", "陳大文", 12345680, False)]  # fmt: skip
    assert jobs[0].pkcs12_password.ref == "secrets/chan.pass"
    assert jobs[1].pkcs12_password.ref == "secrets/p12.pass"  # the template's x-pkcs12-password
    assert all(j.renew is not None and j.renew.when_expires_within == "30d" for j in jobs)
    warnings = made.warnings  # type: ignore[attr-defined]
    assert any("holders.csv:1: Notes: the column 'Notes' is not used" in w for w in warnings)
    assert any("holders.csv:4: card_serial: card serial '0012345680' has leading zeros" in w for w in warnings)
    text = made.text  # type: ignore[attr-defined]
    assert 'holder: "no"' in text and 'id: "0012"' in text and 'holder: "陳大文"' in text


def test_the_written_file_validates_and_keeps_types(office: Path) -> None:
    (office / "holders.csv").write_text("id,holder,card_serial,pkcs12\nyes,off,1,certs/a.p12\n0x10,null,2,certs/b.p12\n")
    write_jobs_from_csv(office / "holders.csv", office / "template.yaml", office / "out" / "batch.yaml")
    jf = load_jobfile(office / "out" / "batch.yaml", unattended=True)
    assert [(j.id, j.holder) for j in jf.jobs] == [("yes", "off"), ("0x10", "null")]
    assert jf.jobs[0].pkcs12_path.resolve() == (office / "certs" / "a.p12").resolve()  # rebased for out/
    assert jf.jobs[0].pin.path.resolve() == (office / "secrets" / "card.pin").resolve()
    with pytest.raises(UsageError):  # never overwritten by accident
        write_jobs_from_csv(office / "holders.csv", office / "template.yaml", office / "out" / "batch.yaml")


@pytest.mark.parametrize("cell", ["1.2345678E7", "1.23457E+07", "12345678.0", "12,345,678", "12 345 678", "12ab"])
def test_serials_a_spreadsheet_mangled_are_errors_with_the_line(office: Path, cell: str) -> None:
    found = problems(office, f'id,holder,serial,pkcs12\nHK-1,A,1,certs/a.p12\nHK-2,B,"{cell}",certs/b.p12\n'.encode())
    assert len(found) == 1 and found[0].startswith(f"{office / 'holders.csv'}:3: card_serial: card serial {cell!r}")


def test_parse_serial() -> None:
    assert parse_serial("") == (None, None, None)
    assert parse_serial("12345678") == (12345678, None, None)
    assert parse_serial("4294967296")[1] is not None
    value, error, warning = parse_serial("007")
    assert value == 7 and error is None and warning is not None


def test_duplicate_ids_and_serials_name_both_lines(office: Path) -> None:
    found = problems(office, b"id,holder,serial,pkcs12\nHK-1,A,1,certs/a.p12\nHK-2,B,2,certs/b.p12\n"
                             b"HK-1,C,2,certs/c.p12\n")  # fmt: skip
    assert any(":4: id: id 'HK-1' is on line 2 and line 4" in p for p in found)
    assert any(":4: card_serial: card serial 2 is on line 3 and line 4" in p for p in found)


def test_a_quoted_cell_over_two_lines_keeps_the_line_numbers_right(office: Path) -> None:
    found = problems(office, b'id,holder,serial,pkcs12\nHK-1,"A\nB",1,certs/a.p12\nHK-2,C,1e7,certs/b.p12\n')
    assert any(":2: holder: the holder cell contains a line break" in p for p in found)
    assert any(":4: card_serial: card serial '1e7'" in p for p in found)


def test_secrets_never_come_from_a_spreadsheet(office: Path) -> None:
    found = problems(office, b"id,holder,serial,pkcs12,PIN\nHK-1,A,1,certs/a.p12,123456\n")
    assert any("the column 'PIN' looks like it holds secrets" in p for p in found)


def test_missing_columns_and_cells(office: Path) -> None:
    found = problems(office, b"id,holder,serial\nHK-1,A,1\n")
    assert any("the header has no 'pkcs12' column" in p for p in found)
    found = problems(office, b"id,holder,serial,pkcs12\nHK-1,,1,certs/a.p12\nbad id,B,2,certs/b.p12\n")
    assert any(":2: holder: the holder cell is empty" in p for p in found)
    assert any(":3: id: id 'bad id' is not valid" in p for p in found)


def test_not_utf8_is_refused_with_advice(office: Path) -> None:
    found = problems(office, "id,holder,serial,pkcs12\nHK-1,陳大文,1,certs/a.p12\n".encode("big5"))
    assert any(":2: the file is not UTF-8 text; in Excel save it as 'CSV UTF-8" in p for p in found)


def test_the_job_files_own_checks_run(office: Path) -> None:
    found = problems(office, b"id,holder,serial,pkcs12\nHK-1,A,1,certs/missing.p12\n")
    assert any("batch.yaml" in p and "does not exist" in p for p in found)


def test_template_with_cards_is_refused(office: Path) -> None:
    (office / "template.yaml").write_text(TEMPLATE + "cards:\n  - id: X\n")
    with pytest.raises(JobFileError) as caught:
        make(office, b"id,holder,serial,pkcs12\nHK-1,A,1,certs/a.p12\n")
    assert "a template has no cards" in str(caught.value)


def test_cli_jobs_new(office: Path) -> None:
    (office / "holders.csv").write_text("id;holder;card serial;pkcs12\nHK-1;CHAN Tai Man;12345678;certs/a.p12\n")
    env = {**os.environ, **checkout_pythonpath()}
    done = subprocess.run([*provision_cmd(), "jobs", "new", "--csv", "holders.csv", "--template",
                           "template.yaml", "-o", "batch.yaml", "--unattended"], cwd=office, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "batch.yaml: written and valid, batch renewal-2026-11, 1 job(s)"
    bad = subprocess.run([*provision_cmd(), "jobs", "new", "--csv", "holders.csv", "--template",
                          "template.yaml", "-o", "batch.yaml"], cwd=office, env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "already exists" in bad.stderr


def test_a_derived_management_keys_master_file_is_rebased_too(office: Path) -> None:
    (office / "secrets" / "master.key").write_text("00112233\n")
    (office / "secrets" / "master.key").chmod(0o600)
    derive = '{derive: {master: {file: secrets/master.key}, label: "HK"}}'
    (office / "template.yaml").write_text(TEMPLATE.replace(
        "  renew:", f"  management_key: {derive}\n  management_key_rotate: {derive}\n  renew:"))  # fmt: skip
    (office / "holders.csv").write_text("id,holder,card_serial,pkcs12\nHK-1,A,1,certs/a.p12\n")
    write_jobs_from_csv(office / "holders.csv", office / "template.yaml", office / "out" / "batch.yaml")
    job = load_jobfile(office / "out" / "batch.yaml", unattended=True).jobs[0]
    for spec in (job.management_key, job.management_key_rotate):
        assert spec.master.path.resolve() == (office / "secrets" / "master.key").resolve()  # type: ignore[union-attr]
        assert spec.label == "HK"  # type: ignore[union-attr]
