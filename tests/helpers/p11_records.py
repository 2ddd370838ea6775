"""What a PKCS#11 load left in the records: the audit events and the journal's test-signature steps."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from tests.p11.test_softhsm import TokenBatch


def audit(batch: TokenBatch) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (batch.logs / "audit.jsonl").read_text().splitlines()]


def verified_mechanisms(batch: TokenBatch) -> list[str]:
    """The mechanism of every `verified` audit event, in order."""
    return [e["mechanism"] for e in audit(batch) if e.get("event") == "verified"]


def journal_mechanisms(batch: TokenBatch) -> list[str]:
    """The test-signature mechanism the journal's verify_load steps recorded, in order."""
    with sqlite3.connect(batch.logs / "journal.sqlite3") as db:
        rows = db.execute(
            "SELECT detail FROM steps WHERE action = 'verify_load' AND detail LIKE '%mechanism%'"
        ).fetchall()
    return [json.loads(row[0])["test_signature_mechanism"] for row in rows]
