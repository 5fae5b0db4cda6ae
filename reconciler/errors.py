"""Exceptions that reach the user as a clear message instead of a traceback.

Why this exists: every layer raises ``LbctlError`` (or a subclass) for things an
operator can fix; the CLI prints ``str(error)`` and its ``hint`` and exits 1.
Anything else is a bug and is reported as one.
"""

from __future__ import annotations


class LbctlError(Exception):
    """A failure the operator can act on."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text
