"""systemd readiness notification over NOTIFY_SOCKET (the sd_notify datagram protocol).

Call ``notify_ready()`` once the CA and manifests are loaded and the agent socket
accepts connections, and ``notify_stopping()`` when shutdown begins. Both do nothing and
return False when NOTIFY_SOCKET is unset, so the agent behaves the same outside systemd.
They raise NotifySocketError when NOTIFY_SOCKET is set but unusable, because a unit with
Type=notify would otherwise wait for READY=1 until its start timeout.

NOTIFY_SOCKET is either a filesystem path (``/run/systemd/notify``) or an abstract
socket name written with a leading ``@``. systemd's ``vsock:`` form is not supported.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from agent.telemetry.errors import NotifySocketError

NOTIFY_SOCKET_VARIABLE = "NOTIFY_SOCKET"


def notify_ready(environ: Mapping[str, str] | None = None) -> bool:
    """Send READY=1; return True if a message was sent."""
    return notify("READY=1", environ)


def notify_stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Send STOPPING=1; return True if a message was sent."""
    return notify("STOPPING=1", environ)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify state string such as ``READY=1`` to NOTIFY_SOCKET.

    ``environ`` defaults to os.environ. Returns False without sending when
    NOTIFY_SOCKET is unset or empty.
    """
    env = os.environ if environ is None else environ
    address = env.get(NOTIFY_SOCKET_VARIABLE, "")
    if not address:
        return False
    target = _socket_address(address)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # MSG_DONTWAIT: a receiver whose queue is full must not block the event loop.
            sock.sendto(state.encode("utf-8"), socket.MSG_DONTWAIT, target)
        except OSError as error:
            raise NotifySocketError(address, os.strerror(error.errno or 0)) from error
    return True


def _socket_address(address: str) -> str | bytes:
    if address.startswith("/"):
        return address
    if address.startswith("@") and len(address) > 1:
        # Linux abstract namespace: the name starts with a NUL byte instead of "@".
        return b"\0" + address[1:].encode("utf-8")
    raise NotifySocketError(address, "expected an absolute path or an @abstract name")
