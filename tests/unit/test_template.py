"""Slot-name and path templates: the fields of JOBFILE.md, nothing else, dates in the job's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from provision import template
from provision.errors import TemplateError
from provision.fields import template_values


class FakeCert:
    def __init__(self, not_before: datetime) -> None:
        self.not_before = not_before
        self.not_after = not_before.replace(year=not_before.year + 3)
        self.subject_cn = "CHAN Tai Man"
        self.issuer_cn = "Hongkong Post e-Cert CA"
        self.serial = "1001"
        self.sha256 = "ab" * 32


def render(text: str, when: datetime, zone: str = "UTC", **kw: object) -> str:
    values = template_values(ZoneInfo(zone), cert=FakeCert(when), **kw)  # type: ignore[arg-type]
    return template.parse(text).render(values)


def test_workflow_example() -> None:
    assert render("e-Cert{cert.not_before:%Y%m%d}", datetime(2006, 7, 29, 2, 15, tzinfo=UTC)) == "e-Cert20060729"


def test_dates_are_in_the_job_files_time_zone() -> None:
    made = datetime(2010, 3, 14, 17, 0, tzinfo=UTC)  # 01:00 on 15 March in Hong Kong
    assert render("e-Cert{cert.not_before:%Y%m%d}", made, "Asia/Hong_Kong") == "e-Cert20100315"
    assert render("e-Cert{cert.not_before:%Y%m%d}", made, "UTC") == "e-Cert20100314"


def test_all_fields_render() -> None:
    text = "{cert.subject_cn}|{cert.issuer_cn}|{cert.serial}|{cert.sha256:.8}|{cert.not_after:%Y}|{today:%Y}|{batch}"
    out = render(text, datetime(2020, 1, 1, tzinfo=UTC), batch="b1", now=datetime(2026, 11, 25, tzinfo=UTC))
    assert out == "CHAN Tai Man|Hongkong Post e-Cert CA|1001|abababab|2023|2026|b1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{cert.not_before.year}", "unknown field"),  # attribute access beyond the names
        ("{cert.__class__}", "unknown field"),
        ("{holder[0]}", "indexing"),
        ("{job.id!r}", "conversions"),
        ("{}", "empty field"),
        ("{0}", "empty field"),
        ("{pin}", "unknown field"),
        ("{holder:{batch}}", "cannot contain another field"),
        ("{holder:%Y}", "does not apply to holder"),
        ("e-Cert{", "unbalanced brace"),
        ("e-Cert}", "unbalanced brace"),
        ("out/\x00{job.id}.pem", "control character"),
        ("e-Cert\n{batch}", "control character"),
    ],
)
def test_refused_templates(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        template.parse(text)


def test_literal_braces_are_allowed() -> None:
    assert template.parse("{{x}}-{batch}").render({"batch": "b"}) == "{x}-b"


def test_path_rendering_cannot_climb_or_add_directories() -> None:
    t = template.parse("out/{holder}/{job.id}.pem")
    assert t.render({"holder": "../../etc", "job.id": "a/b"}, for_path=True) == "out/.._.._etc/a_b.pem"
    assert t.render({"holder": "..", "job.id": "x"}, for_path=True) == "out/_/x.pem"


def test_unknown_values_show_as_placeholders() -> None:
    assert template.parse("n-{card.serial}").render({"card.serial": None}) == "n-<card.serial>"


@pytest.mark.parametrize(("name", "ok"), [("e-Cert20060729", True), ("", False), ("x" * 65, False), ("a\nb", False)])
def test_slot_name_checks(name: str, ok: bool) -> None:
    assert (template.check_slot_name(name) is None) is ok
