"""The errors that cross layers: what reaches the user as a message, not a traceback.

Why this exists: the configuration layer, IPAM, the reconcile loop and the
commands all produce or report the same two kinds of problem, so both live here,
below every other module, and none of those layers has to import another just
for an error type:

* ``LbctlError(message, hint)``: a failure the operator can act on.  Every layer
  raises it (or a subclass defined next to the code that raises it, such as
  ``BpfError`` or ``LockTimeout``); the CLI prints ``str(error)`` and exits 1.
  Anything else is a bug and is reported as one.
* ``ConfigError``: one problem in the configuration, formatted
  ``file:line:col: Kind/name: spec.path: message (hint)`` so operators (and
  editors, which jump to ``file:line:col``) get one predictable format and
  scripts get the same fields as JSON.  The loader, the semantic checks and IPAM
  produce them; a run with any of them changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class LbctlError(Exception):
    """A failure the operator can act on."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} ({self.hint})" if self.hint else text


@dataclass(frozen=True, order=True)
class ConfigError:
    """One problem in the configuration, with where it is and what to do."""

    file: str
    line: int
    column: int
    kind: str | None
    name: str | None
    path: str
    message: str
    hint: str | None = None

    @property
    def subject(self) -> str:
        """``Kind/name`` as far as known ("" when neither is)."""
        if self.kind and self.name:
            return f"{self.kind}/{self.name}"
        if self.name:
            return f"?/{self.name}"
        return self.kind or ""

    def __str__(self) -> str:
        # line 0 means the whole file (unreadable, a symlink loop, ...)
        parts = [f"{self.file}:{self.line}:{self.column}" if self.line else self.file]
        if self.subject:
            parts.append(self.subject)
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        return f"{text} ({self.hint})" if self.hint else text

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sort_key(error: ConfigError) -> tuple[str, int, int, str, str]:
    """Configuration errors are listed by file, then position, then text."""
    return (error.file, error.line, error.column, error.path, error.message)
