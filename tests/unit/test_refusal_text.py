"""A refused card's reason is a typed value; its sentence is made at the display edge, word for word
the sentence the records have always carried."""

from __future__ import annotations

from provision.display import refusal_text
from provision.refusal import Refusal, RefusalKind


def test_each_kind_of_refusal_reads_as_the_records_always_said() -> None:
    assert refusal_text(Refusal(RefusalKind.CALLED_ANOTHER, holder="CHAN Tai Man", called="LEE Siu Ming")) == (
        "this is the card of CHAN Tai Man, but the counter called LEE Siu Ming; give it back and ask for the right card")
    assert refusal_text(Refusal(RefusalKind.JOB_ENDED, job_id="HK-1", holder="CHAN Tai Man", status="loaded")) == (
        "this card's job HK-1 (CHAN Tai Man) is already loaded")
    assert refusal_text(Refusal(RefusalKind.NO_JOB, jobfile="day.yaml", card="serial 12345678")) == (
        "no job in day.yaml is for this card (serial 12345678)")
    assert refusal_text(Refusal(RefusalKind.NO_JOB, jobfile="day.yaml", card="serial 1", expected="LEE Siu Ming")) == (
        "no job in day.yaml is for this card (serial 1); the counter expects the card of LEE Siu Ming")
    assert refusal_text(Refusal(RefusalKind.NOT_CLAIMED, detail="station B has job HK-1")) == "station B has job HK-1"
    taken = Refusal(RefusalKind.ANY_TAKEN, jobfile="day.yaml", card="serial 2", taken=1, job_id="HK-1",
                    holder="CHAN Tai Man", status="loaded")  # fmt: skip
    assert refusal_text(taken) == (
        "every job in day.yaml for any card is taken (1; the last, HK-1 (CHAN Tai Man), is loaded); "
        "this card (serial 2) is not written")
