"""Forwarding audit events to syslog (RFC 5424): the target, its reachability check, the handler."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from provision.audit.records import rfc3339
from provision.errors import EnvironmentProblem, UsageError
from provision.i18n import msg

# ----------------------------------------------------------------------------------------------
# syslog


@dataclass(frozen=True)
class SyslogTarget:
    """Where seals (and, with ``all_events``, every event) are forwarded, RFC 5424 over syslog.

    ``address`` is a unix socket path (``/dev/log``) or ``(host, port)`` for UDP.
    """

    address: str | tuple[str, int]
    all_events: bool = False
    facility: int = logging.handlers.SysLogHandler.LOG_AUTHPRIV
    app_name: str = "provision"


def syslog_target(address: str, *, all_events: bool = False) -> SyslogTarget:
    """``/dev/log`` (a unix socket path: journald's) or ``host:port`` (UDP) → SyslogTarget."""
    if address.startswith("/"):
        return SyslogTarget(address, all_events=all_events)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(msg("'{address}' is not a syslog address; write a socket path such as /dev/log or host:port", address=address))
    return SyslogTarget((host, int(port)), all_events=all_events)


SYSLOG_PROBE_SECONDS = 0.25


def check_reachable(target: SyslogTarget) -> None:
    """Raise EnvironmentProblem (exit 3) unless ``target`` can take messages now.

    Python's SysLogHandler swallows a failed connection to a unix socket (as openlog(3) does) and
    never connects UDP, so an address that leads nowhere would be accepted and every seal lost
    silently. A unix socket must accept a connection; a UDP address must resolve, and an empty
    datagram sent to it must not be refused (the ICMP "port unreachable" of a host with no
    collector). A remote host that drops datagrams silently cannot be told from one that keeps them."""
    try:
        if isinstance(target.address, str):
            _connect_unix(target.address)
            return
        host, port = target.address
        family, kind, proto, _, address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.settimeout(SYSLOG_PROBE_SECONDS)
            probe.connect(address)
            probe.send(b"")
            try:
                probe.recv(1)
            except TimeoutError:
                pass  # no answer is what a listening collector gives
    except OSError as exc:
        shown = target.address if isinstance(target.address, str) else f"{target.address[0]}:{target.address[1]}"
        raise EnvironmentProblem(
            msg('cannot reach syslog at {shown} ({reason}); start the syslog service or correct --syslog / audit.syslog', shown=shown, reason=exc.strerror or type(exc).__name__)
        ) from None


def _connect_unix(path: str) -> None:
    last: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # journald's /dev/log is a datagram socket
        with socket.socket(socket.AF_UNIX, kind) as probe:
            probe.settimeout(SYSLOG_PROBE_SECONDS)
            try:
                probe.connect(path)
                return
            except OSError as exc:
                last = exc
    assert last is not None
    raise last


def _sd_escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class Rfc5424Formatter(logging.Formatter):
    """``1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG``; SysLogHandler puts ``<PRI>`` in front."""

    def __init__(self, app_name: str, host: str) -> None:
        super().__init__()
        self.app_name = app_name[:48] or "-"
        self.host = host[:255] or "-"

    def format(self, record: logging.LogRecord) -> str:
        stamp = rfc3339(datetime.fromtimestamp(record.created, UTC))
        msgid = str(getattr(record, "msgid", "-"))[:32] or "-"
        params: Mapping[str, object] = getattr(record, "sd", {})
        sd = "-"
        if params:
            sd = "[audit@32473 " + " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
        return f"1 {stamp} {self.host} {self.app_name} {os.getpid()} {msgid} {sd} {record.getMessage()}"


class SyslogHandler(logging.handlers.SysLogHandler):
    failures = 0

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failures += 1  # forwarding is a second copy; the file is the record. Never crash a run.
