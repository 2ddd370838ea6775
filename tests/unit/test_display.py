"""Human output cannot steer the terminal: control characters, bidi overrides and rich markup in
data (holder names, subjects, slot names, messages) are shown as written, never obeyed."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from rich.console import Console

from provision.cli import main
from provision.counter import CounterScreen
from provision.display import printable

HOSTILE = "[bold red]CHAN\x1b[2J\x1b]0;owned\x07 Tai\u202eMan\r\x9b31m"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("CHAN\x1b[2JTai", "CHAN\\x1b[2JTai"),
        ("a\rb", "a\\x0db"),
        ("bell\x07", "bell\\x07"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("del\x7f", "del\\x7f"),
        ("abc\u202edef", "abc\\u202edef"),
        ("iso\u2066x\u2069", "iso\\u2066x\\u2069"),
        ("mark\u200fx", "mark\\u200fx"),
        ("line\nforged", "line\\x0aforged"),
        ("sep\u2028x", "sep\\u2028x"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("陳大文 CHAN Tai Man", "陳大文 CHAN Tai Man"),
        ("[bold red]x", "[bold red]x"),
    ],
)
def test_printable_shows_controls_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def _screen() -> tuple[CounterScreen, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=300, highlight=False)
    runner = SimpleNamespace(states=[], options=SimpleNamespace(), say=None,
                             jobfile=SimpleNamespace(batch="b\x1b[5m"))  # fmt: skip
    screen = CounterScreen(console=console, read_line=lambda: "n")
    screen.attach(runner)
    return screen, out


def test_the_counter_screen_shows_names_as_written() -> None:
    screen, out = _screen()
    info = SimpleNamespace(subject=f"CN={HOSTILE}", issuer="CN=[link=http://x]CA", serial="1001",
                           not_after=datetime(2030, 1, 1, tzinfo=UTC))  # fmt: skip
    job = SimpleNamespace(holder=HOSTILE)
    assert screen.confirm(job, info, f"e-Cert {HOSTILE}", None) is False
    screen.say(f"loading {HOSTILE}")
    screen.render_queue()
    text = out.getvalue()
    for raw in ("\x1b[2J", "\x1b]0;owned", "\x07", "\u202e", "\r", "\x9b", "\x1b[5m"):
        assert raw not in text
    assert "[bold red]CHAN\\x1b[2J" in text  # the markup shown as text, the escape visible
    assert "[link=http://x]CA" in text


@pytest.mark.parametrize("argv", [["run", "j.yaml", "--wait", "nan"], ["run", "j.yaml", "--wait", "-1"],
                                  ["run", "j.yaml", "--wait", "inf"], ["run", "j.yaml", "--lease", "-5"],
                                  ["run", "j.yaml", "--lease", "0"], ["resume", "--wait", "nan"],
                                  ["sim", "serve", "--latency-ms", "nan"], ["sim", "serve", "--port", "0"]])  # fmt: skip
def test_nonsense_numbers_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_cli_errors_show_controls_as_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["inspect", "no\x1b[2Jsuch\u202e.p12", "--password-env", "NOPE"])
    err = capsys.readouterr().err
    assert code == 2 and "\x1b" not in err and "\u202e" not in err and "no\\x1b[2Jsuch\\u202e.p12" in err


@pytest.mark.parametrize("typed", ["", "\n", "1" * 1025])
def test_a_typed_pin_is_never_empty_or_endless(typed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from provision import ui
    from provision.errors import SecretError

    monkeypatch.setattr(getpass, "getpass", lambda prompt="", stream=None: typed)
    screen, _ = _screen()
    with pytest.raises(SecretError, match="nothing was sent to the card"):
        screen.ask_pin("CHAN Tai Man", 3)  # the counter screen's PIN prompt
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    with pytest.raises(SecretError, match="nothing was sent to the card"):
        ui.terminal_pin_prompt("CHAN Tai Man", 3)  # the plain runner's
