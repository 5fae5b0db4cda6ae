"""Parse the durations operators type on the command line: ``200ms``, ``2s``, ``1m``, ``0.5``.

Why this exists: ``--debounce`` is naturally milliseconds and ``--resync``
seconds; accepting units on both avoids an option whose unit must be looked up.
A bare number means seconds.
"""

from __future__ import annotations

import argparse
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds for ``text``; raises ``argparse.ArgumentTypeError`` with an example on bad input."""
    match = _PATTERN.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (examples: 200ms, 2s, 1m, 0.5)")
    return float(match.group(1)) * _UNITS[match.group(2) or ""]


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
