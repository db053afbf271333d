"""systemd's service notification (sd_notify(3)) for `Type=notify`: one datagram to $NOTIFY_SOCKET. Not under
systemd (no such variable) nothing is sent."""

from __future__ import annotations

import os
import socket
import sys

from codexlb import log

_log = log.get("codexlb.server")


def notify(**fields: object) -> None:
    """Send `READY=1`, `MAINPID=…` and the like; a failure is logged, never raised (serving goes on)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    message = "\n".join(f"{name}={value}" for name, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        _log.warning("cannot notify systemd", error=str(exc))


def main_pid() -> int:
    """The pid systemd should watch: the one-file binary's bootloader (this process's parent) when frozen."""
    return os.getppid() if getattr(sys, "frozen", False) else os.getpid()
