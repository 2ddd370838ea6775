"""Property-based: whatever is thrown at the job-file reader, it answers with a JobFile or a
JobFileError whose every problem is one located sentence, never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provision.errors import JobFileError
from provision.jobfile import JobFile, parse_jobfile
from tests.helpers.jobfile_strategies import mutate

BASE: dict[str, Any] = {
    "version": 1,
    "batch": "b1",
    "timezone": "Asia/Hong_Kong",
    "defaults": {"slot": "9c", "slot_name": "e-Cert{cert.not_before:%Y%m%d}", "pin": {"value": "123456"}},
    "cards": [
        {"id": "A", "holder": "CHAN Tai Man", "card": {"serial": 1}, "pkcs12": {"path": "a.p12", "password": {"value": "p"}},
         "expect": {"serial": "1001", "not_after_after": "2027-01-01"}, "export": {"pem": "out/{job.id}.pem"}},
        {"id": "B", "holder": "LEE", "card": {"any": True}, "pkcs12": {"path": "b.p12", "password": {"env": "PW"}}},
    ],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KEYS = ["version", "batch", "timezone", "defaults", "cards", "id", "holder", "card", "serial", "guid", "any",
        "pkcs12", "path", "password", "slot", "slot_name", "pin", "management_key", "management_key_type",
        "replace", "min_pin_retries", "pin_policy", "touch_policy", "expect", "export", "pem", "env", "file",
        "prompt", "command", "value", "x-anchor", "audit", "key"]  # fmt: skip


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    return mutate(draw, BASE, KEYS, json_values, st.integers(1, 4))


def _check(text: str, tmp: Path) -> None:
    try:
        result = parse_jobfile(text, tmp / "fuzz.yaml", check_files=False)
    except JobFileError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.message and "\n" not in problem.message and "Traceback" not in problem.message
    else:
        assert isinstance(result, JobFile)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_documents(tmp_path_factory: Any, doc: Any) -> None:
    _check(yaml.safe_dump(doc, allow_unicode=True), Path("/nonexistent"))


VALID_TEXT = yaml.safe_dump(BASE)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID_TEXT)), st.integers(0, 20), st.text(max_size=12))
def test_mutated_text(position: int, cut: int, insert: str) -> None:
    _check(VALID_TEXT[:position] + insert + VALID_TEXT[position + cut :], Path("/nonexistent"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _check(text, Path("/nonexistent"))
