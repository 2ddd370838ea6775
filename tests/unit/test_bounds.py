"""Bounds on every input (docs/batch.md "Bounds on every input"): each is checked before the work it
would cause. Endless sources (/dev/zero, a FIFO fed without end, `yes`) are guarded by
pytest-timeout: the test asserts that the error arrives, never how fast."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from provision import limits
from provision import template as templates
from provision.errors import InputTooLargeError, JobFileError, SecretError, TemplateError
from provision.jobfile import load_jobfile
from provision.secrets import SecretSource, obtain

posix_only = pytest.mark.posix_only  # /dev/zero, FIFOs and `yes` are POSIX (not collected on Windows: tests/conftest.py)


# ----------------------------------------------------------------------------------------------
# bounded reads


@posix_only
@pytest.mark.timeout(30)
def test_read_bounded_stops_an_endless_device() -> None:
    with pytest.raises(InputTooLargeError) as caught:
        limits.read_bounded(Path("/dev/zero"), 1000, "job file")
    assert "larger than 1000 bytes" in caught.value.message and caught.value.exit_code == 2


@posix_only
@pytest.mark.timeout(30)
def test_read_bounded_stops_a_fifo_fed_without_end(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    stop, opened = threading.Event(), threading.Event()

    def feed() -> None:
        try:
            with open(fifo, "wb") as out:
                opened.set()
                while not stop.is_set():
                    out.write(b"x" * 4096)
        except (BrokenPipeError, OSError):
            pass

    # A read end held open first lets the writer open and start, so the read below meets a live
    # writer (a FIFO read before any writer opened is an empty file, not an endless one).
    holder = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert opened.wait(10)
    try:
        with pytest.raises(InputTooLargeError):
            limits.read_bounded(fifo, 100_000, "PKCS#12 file")
    finally:
        stop.set()
        os.close(holder)


def test_read_bounded_reads_a_file_at_its_limit(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"a" * 1000)
    assert limits.read_bounded(tmp_path / "f", 1000, "job file") == b"a" * 1000
    with pytest.raises(InputTooLargeError):
        limits.read_bounded(tmp_path / "f", 999, "job file")


# ----------------------------------------------------------------------------------------------
# job files


@posix_only
@pytest.mark.timeout(60)
def test_a_job_file_from_dev_zero_is_refused() -> None:
    with pytest.raises(JobFileError, match="larger than"):
        load_jobfile("/dev/zero")


def test_a_job_file_over_its_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provision.jobfile.MAX_FILE_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\nbatch: b\n" + "# padding\n" * 20)
    with pytest.raises(JobFileError, match="larger than 100 bytes"):
        load_jobfile(path)


CARD = """  - id: HK-{n}
    holder: H {n}
    card: {{serial: {serial}}}
    pkcs12: {{path: x.p12, password: {{env: NOPE}}}}
"""


def test_cards_beyond_the_bound_are_refused_before_they_are_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_CARDS", 3)
    built: list[int] = []
    import provision.jobfile as jobfile

    real = jobfile._build_job
    monkeypatch.setattr(jobfile, "_build_job", lambda index, *a: built.append(index) or real(index, *a))
    text = "version: 1\nbatch: b\ndefaults: {slot: 9c, slot_name: x, pin: {env: NOPE}}\ncards:\n"
    text += "".join(CARD.format(n=n, serial=1000 + n) for n in range(5))
    path = tmp_path / "many.yaml"
    path.write_text(text)
    with pytest.raises(JobFileError) as caught:
        load_jobfile(path, check_files=False)
    assert "more than 3 cards" in caught.value.message
    problem = caught.value.problems[0]
    assert problem.line == 5 + 4 * 3 and problem.path == "cards[3]"  # the first card over the bound
    assert built == [0, 1, 2]  # the fourth card was never built


# ----------------------------------------------------------------------------------------------
# templates


@pytest.mark.parametrize(
    "spec",
    [
        "{holder:>999999999}",
        "{holder:x<256}",
        "{holder:.999999999}",
        "{holder:^+1000}",
        "{card.serial:0000000999999}",
        "{card.serial:,.300}",
        "{cert.serial:*>70000}",
        "{cert.not_before:%999999999Y}",
        "{cert.not_before:%-1000d}",
        "{today:%_0999Y}",
    ],
)
def test_wide_format_specs_are_refused_before_anything_is_formatted(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_format = format
    monkeypatch.setattr("builtins.format", lambda value, s="": calls.append(s) or real_format(value, s))
    with pytest.raises(TemplateError, match="width or precision"):
        templates.parse(spec)
    assert calls == []  # not even the trial render ran


@pytest.mark.parametrize("spec", ["{holder:>255}", "{holder:9>10}", "{cert.not_before:%Y%m%d}",
                                  "e-Cert{cert.not_before:%-d 2026}", "{card.serial:08d}"])  # fmt: skip
def test_ordinary_specs_still_parse(spec: str) -> None:
    templates.parse(spec)


def test_template_length_and_rendered_length_are_bounded() -> None:
    with pytest.raises(TemplateError, match="longer than 512"):
        templates.parse("x" * 513)
    tmpl = templates.parse("{holder}" * 60)
    with pytest.raises(TemplateError, match="more than 1024 characters"):
        tmpl.render({"holder": "h" * 100_000})
    assert len(tmpl.render({"holder": "h" * 17})) == 1020


def test_a_long_slot_name_is_refused() -> None:
    assert templates.check_slot_name("n" * 64) is None
    assert "longer than 64" in (templates.check_slot_name("n" * 65) or "")


# ----------------------------------------------------------------------------------------------
# secrets


def _secret_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def test_a_huge_secret_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = _secret_file(tmp_path / "pin", b"")
    with open(path, "r+b") as handle:
        handle.truncate(10 * 1024**3)  # a 10 GB sparse file: reading it whole would take minutes
    with pytest.raises(SecretError, match="larger than 65536 bytes"):
        obtain(SecretSource("file", str(path)), unattended=True)


def test_a_long_secret_is_refused_from_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long = "1" * (limits.MAX_SECRET_CHARS + 1)
    monkeypatch.setenv("LONG_SECRET", long)
    sources = [
        SecretSource("env", "LONG_SECRET"),
        SecretSource("file", str(_secret_file(tmp_path / "long", long.encode() + b"\n"))),
        SecretSource("value", long),
        SecretSource("command", (sys.executable, "-c", f"print('1' * {limits.MAX_SECRET_CHARS + 1})")),
    ]
    for source in sources:
        with pytest.raises(SecretError, match="longer than 1024 characters") as caught:
            obtain(source, unattended=True)
        assert long not in caught.value.message
    monkeypatch.setenv("OK_SECRET", "1" * limits.MAX_SECRET_CHARS)
    assert len(obtain(SecretSource("env", "OK_SECRET"), unattended=True)) == limits.MAX_SECRET_CHARS


@posix_only
@pytest.mark.timeout(60)
def test_a_program_that_prints_without_end_is_stopped() -> None:
    with pytest.raises(SecretError, match="printed more than 65536 bytes"):
        obtain(SecretSource("command", ("yes",)), unattended=True)


@pytest.mark.timeout(60)
def test_a_program_that_never_answers_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provision.secrets.COMMAND_TIMEOUT_SECONDS", 1)
    with pytest.raises(SecretError, match="gave no answer within 1 s"):
        obtain(SecretSource("command", (sys.executable, "-c", "import time; time.sleep(50)")), unattended=True)


def test_a_program_secret_still_works() -> None:
    secret = obtain(SecretSource("command", (sys.executable, "-c", "print('s3cret'); print('more')")), unattended=True)
    assert secret.reveal() == b"s3cret"
