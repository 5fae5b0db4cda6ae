"""Structured log lines for the daemon: one event, one line, on stderr.

Why this exists: an operator greps a daemon's log for what happened to a
delivery ("delivery seen", "config invalid", "applied", "drift repaired"), and a
log shipper parses it.  ``key=value`` (logfmt) is the default because it reads
well in ``journalctl``; ``json`` is one object per line for shippers.  This
module owns only the formatting and the single write per event (so lines from
the watcher and status threads never interleave).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Literal, TextIO

LogFormat = Literal["kv", "json"]
Value = str | int | float | bool | None
FORMATS: tuple[str, ...] = ("kv", "json")


def _timestamp(now: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{whole}.{int((now % 1) * 1000):03d}Z"


def _kv_value(value: Value) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t') and text.isprintable():
        return text
    return json.dumps(text)  # quoted, with \n and \" escaped: one event stays one line


def format_event(fmt: LogFormat, now: float, level: str, event: str, fields: dict[str, Value]) -> str:
    """One line (without newline) for an event and its fields, in ``fmt``."""
    if fmt == "json":
        obj: dict[str, Value] = {"ts": _timestamp(now), "level": level, "event": event}
        obj.update(fields)
        return json.dumps(obj, separators=(",", ":"), default=str)
    parts = [f"ts={_timestamp(now)}", f"level={level}", f"event={_kv_value(event)}"]
    parts.extend(f"{key}={_kv_value(value)}" for key, value in fields.items())
    return " ".join(parts)


class EventLog:
    """Writes structured events to a stream (stderr by default)."""

    def __init__(self, fmt: LogFormat = "kv", stream: TextIO | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (use one of {', '.join(FORMATS)})")
        self.fmt: LogFormat = fmt
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, level: str, event: str, fields: dict[str, Value]) -> None:
        line = format_event(self.fmt, time.time(), level, event, fields) + "\n"
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must never stop the daemon

    def info(self, event: str, **fields: Value) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: Value) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: Value) -> None:
        self._write("error", event, fields)
