"""The one error type of the configuration layer.

Why this exists: every problem found in a configuration directory -- unreadable
file, broken YAML, schema violation, semantic conflict -- is reported the same
way, as ``file:line:col: Kind/name: spec.path: message (hint)``, so operators
(and editors, which jump to ``file:line:col``) get one predictable format and
scripts get the same fields as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


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
    """Errors are listed by file, then position, then text."""
    return (error.file, error.line, error.column, error.path, error.message)
