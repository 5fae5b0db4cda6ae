"""Tell the service manager how the daemon is doing: systemd's notification protocol.

Why this exists: ``lbctl.service`` is ``Type=notify``, so ``systemctl start lbctl``
returns only once the first reconcile has verified (``READY=1``), and
``systemctl status lbctl`` shows the applied revision (``STATUS=``).  The protocol
is one datagram of ``KEY=value`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` is Linux's abstract namespace).  It is written
here, in a few lines of the standard library, rather than taken from Debian's
``python3-systemd``: that binding links libsystemd, has no wheel on PyPI (the venv
and the Debian-python test runs would need a compiler and libsystemd-dev), and
lbctl needs only this one call of it.

Without ``$NOTIFY_SOCKET`` (run by hand, by tests, under another supervisor) every
call does nothing.  Sending never raises and never blocks the daemon: a full or
vanished socket is reported once through ``on_error`` and otherwise ignored.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

ENV = "NOTIFY_SOCKET"


def _address(name: str) -> str:
    """The socket address of ``$NOTIFY_SOCKET``: ``@name`` is the abstract ``\\0name``."""
    return "\0" + name[1:] if name.startswith("@") else name


def _one_line(value: str) -> str:
    """A field's value on one line (the protocol separates fields by newlines)."""
    return " ".join(value.split())


class Notifier:
    """Sends ``KEY=value`` notifications to the service manager, if there is one."""

    def __init__(self, address: str | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.address = address if address is not None else os.environ.get(ENV) or None
        self._on_error = on_error
        self._failed = False
        self.sent: list[str] = []  # what was sent, for the daemon's tests and logs

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, fields: Mapping[str, str]) -> bool:
        """Send ``fields`` as one datagram; True when it was delivered."""
        if self.address is None or not fields:
            return False
        message = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), _address(self.address))
        except OSError as exc:
            if not self._failed and self._on_error is not None:
                self._on_error(f"cannot notify {self.address}: {exc}")
            self._failed = True
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str) -> bool:
        return self.notify({"READY": "1", "STATUS": status})

    def status(self, status: str) -> bool:
        return self.notify({"STATUS": status})

    def stopping(self, status: str) -> bool:
        return self.notify({"STOPPING": "1", "STATUS": status})
