"""One truth for every status (issue: records that cannot lie).

One run holds every kind of outcome: a load, a skip (already on the card), a skip (renewal not due),
a wrong PIN, a card pulled mid-load and never returned, a card that never came, a PKCS#12 that fails
before any card, a `replace: refuse`, and a stranger's card. Then the run JSON, the three report
files and `provision status --json` are compared row by row: the same status for every job,
in-doubt included; the refused card in every format; the default-key note in every format and only
where the factory key was used; nothing invented for rows that never reached a card."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from provision import fixtures
from provision.load import DEFAULT_KEY_NOTE
from provision.sim.card import SimCard, SimOptions
from tests.sim.test_runner import NOW, Batch, preload_old_certificate

STRANGER = 99999999


@pytest.fixture(scope="module")
def ca() -> fixtures.Issuer:
    return fixtures.make_ca("Records Agree CA")


@pytest.fixture
def batch(tmp_path: Path, canaries: Any, ca: fixtures.Issuer) -> Batch:
    return Batch(tmp_path, canaries, ca, fixtures.generate_key("p256"))


class _Tables(HTMLParser):
    """Every table of the page as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> list[list[dict[str, str]]]:
    parser = _Tables()
    parser.feed(text)
    return [[dict(zip(table[0], row, strict=True)) for row in table[1:] if len(row) == len(table[0])]
            for table in parser.tables]  # fmt: skip


def test_run_json_reports_and_status_agree_row_by_row(batch: Batch, ca: fixtures.Issuer, tmp_path: Path,
                                                      cli: Any) -> None:  # fmt: skip
    canaries = batch.canaries
    canaries.write_secret_file(tmp_path / "wrong.pin", "999999")
    batch.holder("HK-LOAD", "CHAN Tai Man", 101)
    batch.holder("HK-SKIP", "LEE Siu Ming", 102)
    batch.holder("HK-NOTDUE", "WONG Mei Ling", 103, extra="    renew: {when_expires_within: 1d}\n")
    batch.holder("HK-PIN", "CHEUNG Ka Yan", 104, extra="    pin: {file: wrong.pin}\n")
    batch.holder("HK-PULL", "HO Wing Sze", 105)
    batch.holder("HK-NEVER", "LAM Chi Keung", 106)
    batch.holder("HK-EXPIRED", "NG Siu Fung", 107, not_after=NOW - timedelta(hours=1))
    batch.holder("HK-REFUSE", "YIP Ka Ho", 108, extra="    replace: refuse\n")

    # HK-SKIP's card already carries its target: loaded by an earlier run with other logs.
    skip_state = tmp_path / "card-102.json"
    main_logs = batch.logs
    batch.logs = tmp_path / "earlier-logs"
    assert batch.run([SimCard(SimOptions(serial=102), skip_state)]).document["jobs"][1]["status"] == "loaded"
    batch.logs = main_logs

    not_due = SimCard(SimOptions(serial=103))
    preload_old_certificate(not_due, ca, "WONG Mei Ling")  # expires in 5 days: not within 1 day
    refuse = SimCard(SimOptions(serial=108))
    preload_old_certificate(refuse, ca, "YIP Ka Ho")
    cards = [SimCard(SimOptions(serial=101)), SimCard(SimOptions(serial=102), skip_state), not_due,
             SimCard(SimOptions(serial=104)), SimCard(SimOptions(serial=105, vanish_after=12)), refuse,
             SimCard(SimOptions(serial=STRANGER))]  # fmt: skip
    outcome = batch.run(cards)
    document = outcome.document
    expected = {"HK-LOAD": "loaded", "HK-SKIP": "skipped", "HK-NOTDUE": "skipped", "HK-PIN": "failed",
                "HK-PULL": "in-doubt", "HK-NEVER": "pending", "HK-EXPIRED": "failed", "HK-REFUSE": "refused"}
    run_json = {j["id"]: j for j in document["jobs"]}
    assert {k: v["status"] for k, v in run_json.items()} == expected

    reports = batch.logs / "reports"
    run_id = document["run_id"]
    report_json = json.loads((reports / f"{run_id}.json").read_text(encoding="utf-8"))
    rows = list(csv.DictReader(io.StringIO((reports / f"{run_id}.csv").read_text(encoding="utf-8"))))
    cards_table, refused_table = html_tables((reports / f"{run_id}.html").read_text(encoding="utf-8"))
    status = json.loads(cli("status", "--json", "--logs", str(batch.logs)).stdout)

    views = {
        "report json": {j["id"]: j["status"] for j in report_json["jobs"]},
        "report csv": {r["id"]: r["status"] for r in rows if r["id"]},
        "report html": {r["Job"]: r["Status"] for r in cards_table},
        "status": {j["id"]: j["status"] for j in status["jobs"] if j["run_id"] == run_id},
    }
    from provision.report import STATUS_WORDS

    words = {v: k for k, v in STATUS_WORDS.items()}
    views["report html"] = {k: words[v] for k, v in views["report html"].items()}
    for name, view in views.items():
        assert view == expected, name
    assert document["counts"] == report_json["counts"] and document["counts"]["in-doubt"] == 1

    # The stranger's card, with its serial, reader, time and reason, in every format.
    (refused_json,) = document["refused_cards"]
    assert refused_json["card_serial"] == STRANGER and refused_json["reason"] and refused_json["time"]
    assert report_json["refused_cards"] == document["refused_cards"]
    (refused_row,) = [r for r in rows if not r["id"]]
    assert (refused_row["status"], refused_row["card_serial"], refused_row["error"], refused_row["reader"]) == (
        "refused", str(STRANGER), refused_json["reason"], refused_json["reader"])
    (refused_html,) = refused_table
    from provision.report import when

    # The page writes the time as a person reads it, in the job's time zone (the exact one in <time datetime>).
    assert refused_html == {"Card serial": str(STRANGER), "Reader": refused_json["reader"],
                            "Time": when(refused_json["time"], document["timezone"]), "Reason": refused_json["reason"]}  # fmt: skip
    assert f'<time datetime="{refused_json["time"]}">' in (reports / f"{run_id}.html").read_text(encoding="utf-8")

    # The factory-default key note: on the jobs that authenticated with it, in every format.
    noted = {"HK-LOAD", "HK-PULL"}  # the pulled card had authenticated with it before it went
    assert {k for k, v in run_json.items() if DEFAULT_KEY_NOTE in v["notes"]} == noted
    assert {r["id"] for r in rows if DEFAULT_KEY_NOTE in r["notes"]} == noted
    assert {r["Job"] for r in cards_table if DEFAULT_KEY_NOTE in r["Details"]} == noted

    # Rows that never reached a card show what is known and nothing invented.
    for job_id in ("HK-EXPIRED", "HK-NEVER"):
        html_row = next(r for r in cards_table if r["Job"] == job_id)
        assert html_row["New certificate (On Card)"] == "" and html_row["Card serial"] == ""
        assert "{" not in html_row["Slot name"] and "<" not in html_row["Slot name"]
        assert run_json[job_id]["card_serial"] is None
    # The expired file never gave its certificate's date, so there is no slot name to show; the
    # pending job's file opened, so its name is known (what the card will be given).
    assert run_json["HK-EXPIRED"]["slot_name"] is None and "expired" in run_json["HK-EXPIRED"]["error"]
    assert next(r for r in cards_table if r["Job"] == "HK-EXPIRED")["Slot name"] == ""
    assert run_json["HK-NEVER"]["slot_name"].startswith("e-Cert20")
    for job_id in ("HK-PIN", "HK-REFUSE", "HK-PULL"):  # reached a card, but the new certificate is not On Card
        assert next(r for r in cards_table if r["Job"] == job_id)["New certificate (On Card)"] == ""
    assert run_json["HK-PIN"]["pin_tries_left"] == 2
    assert next(r for r in cards_table if r["Job"] == "HK-LOAD")["New certificate (On Card)"].startswith("expires")
