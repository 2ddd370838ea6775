"""The renewal policy (pure) and the job-file fields that feed it: renew, audit.syslog."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from provision.audit.forward import SyslogTarget, syslog_target
from provision.bundle import CertInfo
from provision.errors import JobFileError, UsageError
from provision.jobfile import Job, Renew, parse_duration, parse_jobfile
from provision.renewal import renewal_decision

NOW = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def info(not_after: datetime, sha: str = "aa") -> CertInfo:
    return CertInfo(subject="CN=CHAN Tai Man", subject_cn="CHAN Tai Man", issuer="CN=CA", issuer_cn="CA",
                    serial="1001", not_before=not_after - timedelta(days=1095), not_after=not_after, sha256=sha,
                    key_type="EC", key_bits=256, curve="P-256", friendly_name=None)  # fmt: skip


HEADER = 'version: 1\nbatch: b\ndefaults:\n  slot: 9c\n  slot_name: "x"\n  pin: {value: "123456"}\n'
CARD = "cards:\n  - id: HK-1\n    holder: CHAN\n    card: {serial: 1}\n    pkcs12: {path: a.p12, password: {value: p}}\n"


def jobfile(text: str) -> object:
    return parse_jobfile(text, Path("/tmp/renewal.yaml"), check_files=False)


@pytest.fixture
def job() -> Job:
    jf = jobfile(HEADER + "  renew: {when_expires_within: 30d}\n" + CARD)
    return jf.jobs[0]  # type: ignore[attr-defined,no-any-return]


# --- durations and the job file ---


@pytest.mark.parametrize(("text", "expected"), [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)),
                                                 ("2w", timedelta(weeks=2)), ("0d", timedelta(0))])  # fmt: skip
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "30 days", "1.5d", "d", "-3d", "30m", "3y"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_renew_in_defaults_reaches_every_job(job: Job) -> None:
    assert job.renew == Renew("30d", timedelta(days=30))


def test_renew_on_a_card_replaces_the_default() -> None:
    jf = jobfile(HEADER + "  renew: {when_expires_within: 30d}\n" + CARD + "    renew: {when_expires_within: 2w}\n")
    assert jf.jobs[0].renew == Renew("2w", timedelta(weeks=2))  # type: ignore[attr-defined]


def test_no_renew_means_always_load() -> None:
    assert jobfile(HEADER + CARD).jobs[0].renew is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("written", ["30", "30 days", "yes", "1.5d"])
def test_a_bad_duration_is_an_error_with_its_line(written: str) -> None:
    with pytest.raises(JobFileError) as caught:
        jobfile(HEADER + f"  renew: {{when_expires_within: {written}}}\n" + CARD)
    problem = caught.value.problems[0]
    assert problem.line == 7 and problem.path == "defaults.renew.when_expires_within"
    assert "30d, 12h or 2w" in problem.message


def test_renew_needs_its_window() -> None:
    with pytest.raises(JobFileError) as caught:
        jobfile(HEADER + "  renew: {}\n" + CARD)
    assert "'when_expires_within' is missing" in caught.value.problems[0].message


def test_audit_syslog_in_the_job_file() -> None:
    jf = jobfile(HEADER + CARD + "audit: {syslog: /dev/log}\n")
    assert jf.audit_syslog == "/dev/log" and jf.audit_syslog_all is False  # type: ignore[attr-defined]
    jf = jobfile(HEADER + CARD + "audit: {syslog: 'logs.example:514', forward: all}\n")
    assert jf.audit_syslog == "logs.example:514" and jf.audit_syslog_all is True  # type: ignore[attr-defined]
    with pytest.raises(JobFileError) as caught:
        jobfile(HEADER + CARD + "audit: {syslog: dev/log}\n")
    assert "/dev/log, or host:port" in caught.value.problems[0].message


def test_syslog_addresses() -> None:
    assert syslog_target("/dev/log") == SyslogTarget("/dev/log")
    assert syslog_target("10.0.0.5:514", all_events=True) == SyslogTarget(("10.0.0.5", 514), all_events=True)
    for bad in ("nohost", ":514", "host:port", "host:70000"):
        with pytest.raises(UsageError):
            syslog_target(bad)


# --- the decision ---


def test_an_empty_slot_is_loaded(job: Job) -> None:
    decision = renewal_decision(job, None, info(NOW + timedelta(days=1000)), NOW)
    assert decision.act and decision.reason == "the slot is empty"


def test_an_unreadable_certificate_is_replaced(job: Job) -> None:
    assert renewal_decision(job, None, info(NOW + timedelta(days=1000)), NOW, current_unreadable=True).act


def test_a_certificate_valid_beyond_the_window_is_skipped_with_the_reason(job: Job) -> None:
    current = info(datetime(2027, 3, 1, 15, 59, 59, tzinfo=UTC))
    decision = renewal_decision(job, current, info(NOW + timedelta(days=1200), "bb"), NOW)
    assert not decision.act and not decision.refused and decision.outcome == "skip"
    assert decision.reason.startswith("the certificate on the card is valid until 2027-03-01 15:59 UTC, more than 30d")
    hk = renewal_decision(job, current, info(NOW + timedelta(days=1200), "bb"), NOW, tz=ZoneInfo("Asia/Hong_Kong"))
    assert "valid until 2027-03-01 23:59 HKT" in hk.reason


@pytest.mark.parametrize("days_left", [30, 29, 1, 0, -10])
def test_a_certificate_within_the_window_or_expired_is_renewed(job: Job, days_left: int) -> None:
    current = info(NOW + timedelta(days=days_left))
    decision = renewal_decision(job, current, info(NOW + timedelta(days=1095), "bb"), NOW)
    assert decision.act and decision.outcome == "load"
    assert ("has expired" if days_left <= 0 else "expires within 30d") in decision.reason


def test_one_second_beyond_the_window_is_skipped(job: Job) -> None:
    current = info(NOW + timedelta(days=30, seconds=1))
    assert not renewal_decision(job, current, info(NOW + timedelta(days=1095), "bb"), NOW).act


@pytest.mark.parametrize("new_days", [10, 5])  # older than, and as old as, the card's certificate
def test_a_renewal_that_is_not_newer_is_refused(job: Job, new_days: int) -> None:
    current = info(NOW + timedelta(days=5))
    decision = renewal_decision(job, current, info(NOW + timedelta(days=new_days) - timedelta(days=5), "bb"), NOW)
    assert not decision.act and decision.refused and decision.outcome == "refuse"
    assert "a renewal must be newer" in decision.reason


def test_the_same_certificate_is_left_to_the_loader(job: Job) -> None:
    same = info(NOW + timedelta(days=400), "cc")
    assert renewal_decision(job, same, same, NOW).act  # the loader's own "already on the card" path


def test_without_a_policy_the_job_always_acts(job: Job) -> None:
    plain = replace(job, renew=None)
    assert renewal_decision(plain, info(NOW + timedelta(days=900)), info(NOW + timedelta(days=10), "bb"), NOW).act
