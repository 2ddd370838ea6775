"""The values a template is filled with (JOBFILE.md's template table), and where an export goes.

Below both the planner and the loaders: ``plan`` shows the names these give, ``run`` writes them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from provision import template as templates

if TYPE_CHECKING:
    from provision.bundle import CertInfo
    from provision.jobfile import Job


def template_values(
    tz: ZoneInfo,
    *,
    cert: CertInfo | None = None,
    job: Job | None = None,
    batch: str | None = None,
    card_serial: int | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """The fields of JOBFILE.md's template table; dates in the job file's time zone."""
    now = now or datetime.now(UTC)
    values: dict[str, object] = {"today": now.astimezone(tz).date(), "batch": batch}
    if cert is not None:
        values |= {
            "cert.not_before": cert.not_before.astimezone(tz),
            "cert.not_after": cert.not_after.astimezone(tz),
            "cert.subject_cn": cert.subject_cn or "",
            "cert.issuer_cn": cert.issuer_cn or "",
            "cert.serial": cert.serial,
            "cert.sha256": cert.sha256,
        }
    if job is not None:
        values |= {"job.id": job.id, "holder": job.holder, "slot": job.slot.hex}
        card_serial = card_serial if card_serial is not None else job.card.serial
    values["card.serial"] = card_serial
    return values


def export_path(base_dir: Path, template: templates.Template, values: dict[str, object]) -> Path:
    """Where an export goes: the rendered template, relative to the job file's directory."""
    rendered = Path(template.render(values, for_path=True))
    return rendered if rendered.is_absolute() else base_dir / rendered
