"""Secrets and where they come from.

A job file names a *source* (``{env: NAME}``, ``{file: PATH}``, ``{prompt: "…"}``,
``{command: [argv…]}``, ``{value: "…"}``); ``obtain`` turns a source into a ``Secret`` at the last
moment. ``Secret`` never shows its value: ``repr``/``str`` are redacted, and only ``reveal()``
yields the bytes. Error messages name the source (variable name, file path, program name), never
the value, and never the output of a command (it may hold the secret).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision import limits
from provision.errors import InputTooLargeError, SecretError
from provision.i18n import msg

SOURCE_KINDS = ("env", "file", "prompt", "command", "value", "empty")
# ``{empty: true}``: the one secret that is empty on purpose, a PKCS#12 file exported without a
# password. The schema allows it only for pkcs12.password; every other source giving an empty
# value is an error, so an empty PIN, PUK or management key is never sent.
COMMAND_TIMEOUT_SECONDS = limits.COMMAND_TIMEOUT_SECONDS


class Secret:
    """A secret value. Redacted everywhere except ``reveal()``; ``wipe()`` zeroes our copy."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        self._value = bytearray(value)

    def reveal(self) -> bytes:
        return bytes(self._value)

    def wipe(self) -> None:
        for i in range(len(self._value)):
            self._value[i] = 0
        self._value = bytearray()

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:  # constant-time, so tests can compare safely
        import hmac

        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> str:  # a Secret is never pickled, copied to a journal or sent away
        raise TypeError("a Secret cannot be serialised")


@dataclass(frozen=True)
class SecretSource:
    """Where a secret comes from, as written in a job file. Holds no secret except ``value``."""

    kind: str  # one of SOURCE_KINDS
    ref: str | tuple[str, ...]  # env name, file path, prompt text, argv, or the literal value
    base_dir: Path = Path(".")  # relative file paths are relative to the job file

    def __repr__(self) -> str:  # the literal ``value`` form must not leak through a repr either
        shown = "***" if self.kind == "value" else self.ref
        return f"SecretSource({self.kind}={shown!r})"

    def describe(self) -> str:
        """What an operator reads in messages: the source, never the value."""
        if self.kind == "env":
            return f"environment variable {self.ref}"
        if self.kind == "file":
            return f"file {self.path}"
        if self.kind == "prompt":
            return f"prompt {self.ref!r}"
        if self.kind == "command":
            assert isinstance(self.ref, tuple)
            return f"command {self.ref[0]}"
        if self.kind == "empty":
            return "empty password ({empty: true})"
        return "value written in the job file"

    @property
    def path(self) -> Path:
        assert isinstance(self.ref, str)
        p = Path(os.path.expanduser(self.ref))
        return p if p.is_absolute() else self.base_dir / p


PromptFn = Callable[[str], str]


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def check_file_permissions(path: Path) -> str | None:
    """Why ``path`` may not hold a secret, or None. Group/world-readable files are refused."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"secret file {path} does not exist; create it with mode 0600"
    except OSError as exc:
        return f"secret file {path} cannot be read ({exc.strerror}); check its permissions"
    except ValueError:  # a NUL byte in the path: no file system can hold that name
        return f"secret file {str(path)!r} is not a possible file name (it contains a NUL byte)"
    if not stat.S_ISREG(st.st_mode):
        return f"secret file {path} is not a regular file"
    # On Windows the mode bits do not describe ACLs; there the file's ACL is the operator's job.
    if sys.platform != "win32" and st.st_mode & 0o077:
        return (
            f"secret file {path} can be read by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod 600 {path}'"
        )
    if not os.access(path, os.R_OK):
        return f"secret file {path} is not readable by this user"
    return None


def check_obtainable(source: SecretSource, *, unattended: bool) -> str | None:
    """Why this source cannot give a value in the chosen mode, or None. Obtains nothing."""
    if source.kind == "env":
        assert isinstance(source.ref, str)
        if source.ref not in os.environ:
            return f"environment variable {source.ref} is not set; export it before the run"
        return None
    if source.kind == "file":
        return check_file_permissions(source.path)
    if source.kind == "prompt":
        if unattended:
            return "a {prompt: …} secret cannot be asked in an unattended run; use env, file or command"
        return None
    if source.kind == "command":
        assert isinstance(source.ref, tuple)
        if shutil.which(source.ref[0]) is None:
            return f"program {source.ref[0]!r} was not found on PATH"
        return None
    return None


def obtain(source: SecretSource, *, unattended: bool, prompt: PromptFn | None = None) -> Secret:
    """Read the secret now. Raises SecretError naming the source, never the value."""
    problem = check_obtainable(source, unattended=unattended)
    if problem:
        raise SecretError(problem)
    if source.kind == "env":
        assert isinstance(source.ref, str)
        value = os.environ[source.ref]
    elif source.kind == "file":
        try:
            raw = limits.read_bounded(source.path, limits.MAX_SECRET_FILE_BYTES, "secret file")
            value = _first_line(raw.decode("utf-8"))
        except InputTooLargeError:
            raise SecretError(msg('secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; a secret file holds the secret on its first line', path=source.path, MAX_SECRET_FILE_BYTES=limits.MAX_SECRET_FILE_BYTES)) from None  # fmt: skip
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(msg('secret file {path} cannot be read: {name}', path=source.path, name=type(exc).__name__)) from None
    elif source.kind == "prompt":
        assert isinstance(source.ref, str)
        ask = prompt or _terminal_prompt
        value = ask(source.ref)
    elif source.kind == "command":
        assert isinstance(source.ref, tuple)
        value = _run_command(source.ref)
    elif source.kind == "value":
        assert isinstance(source.ref, str)
        value = source.ref
    elif source.kind == "empty":
        return Secret(b"")  # said explicitly: the file has no password
    else:  # pragma: no cover - the loader only builds known kinds
        raise SecretError(msg('unknown secret source {kind!r}', kind=source.kind))
    value = value.rstrip("\r\n")
    if not value:
        raise SecretError(msg('the {describe} gave an empty secret; check the source', describe=source.describe()))
    if len(value) > limits.MAX_SECRET_CHARS:
        raise SecretError(msg('the {describe} gave a secret longer than {MAX_SECRET_CHARS} characters; check the source', describe=source.describe(), MAX_SECRET_CHARS=limits.MAX_SECRET_CHARS))  # fmt: skip
    return Secret(value)


def _run_command(argv: tuple[str, ...]) -> str:
    # No shell: argv goes to the program as written, nothing is interpolated. Its stderr passes
    # through to the operator's terminal (pass/gpg may ask there); its stdout is the secret, read
    # up to its bound (a program that prints without end, such as `yes`, is stopped there) and
    # for at most COMMAND_TIMEOUT_SECONDS.
    import threading
    import time

    limit = limits.MAX_COMMAND_OUTPUT_BYTES
    try:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except FileNotFoundError:
        raise SecretError(msg('program {value!r} was not found; check the command source', value=argv[0])) from None
    except OSError as exc:
        raise SecretError(msg('program {value!r} could not be started ({strerror})', value=argv[0], strerror=exc.strerror)) from None
    assert child.stdout is not None
    pipe = child.stdout.fileno()
    chunks: list[bytes] = []

    def read_output() -> None:  # a thread: a blocking read with a deadline, on every platform
        size = 0
        while size <= limit:
            chunk = os.read(pipe, min(65536, limit + 1 - size))
            if not chunk:
                return
            chunks.append(chunk)
            size += len(chunk)

    reader = threading.Thread(target=read_output, daemon=True, name="secret-command")
    deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
    reader.start()
    reader.join(COMMAND_TIMEOUT_SECONDS)
    output = b"".join(chunks)
    problem = None
    if reader.is_alive():
        problem = f"program {argv[0]!r} gave no answer within {COMMAND_TIMEOUT_SECONDS} s"
    elif len(output) > limit:
        problem = f"program {argv[0]!r} printed more than {limit} bytes; a secret program prints the secret on one line"
    else:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            problem = f"program {argv[0]!r} gave no answer within {COMMAND_TIMEOUT_SECONDS} s"
    if problem is not None:
        child.kill()
        child.wait()
        reader.join(0.5)
        if not reader.is_alive():  # a grandchild may still hold the pipe: then leave its fd alone
            child.stdout.close()
        raise SecretError(problem)
    child.stdout.close()
    if child.returncode != 0:
        raise SecretError(
            msg('program {value!r} exited with status {returncode}; run it by hand to see why', value=argv[0], returncode=child.returncode)
        )
    try:
        return _first_line(output.decode("utf-8"))
    except UnicodeDecodeError:
        raise SecretError(msg('program {value!r} printed something that is not UTF-8 text', value=argv[0])) from None


def typed_secret(value: str, what: str) -> Secret:
    """A secret a person typed at a prompt of the runner or the counter screen, held to the rules of
    every other source: never empty (an empty PIN would spend a try on the card), at most
    MAX_SECRET_CHARS characters."""
    value = value.rstrip("\r\n")
    if not value:
        raise SecretError(msg('no {what} was typed; nothing was sent to the card', what=what))
    if len(value) > limits.MAX_SECRET_CHARS:
        raise SecretError(msg('the {what} typed is longer than {MAX_SECRET_CHARS} characters; nothing was sent to the card', what=what, MAX_SECRET_CHARS=limits.MAX_SECRET_CHARS))
    return Secret(value)


def _terminal_prompt(text: str) -> str:
    import getpass

    if not sys.stdin.isatty():
        raise SecretError(
            msg('cannot ask for {text_!r}: there is no terminal; use an env, file or command source', text_=text)
        )
    try:
        from provision.display import printable

        return getpass.getpass(printable(f"{text}: "), stream=sys.stderr)
    except (EOFError, KeyboardInterrupt):
        raise SecretError(msg('no answer was given for {text_!r}', text_=text)) from None
