"""Drivers: the only code with side effects on the box.

Why this exists: the core (config, desired, plan) is pure; each driver owns one
third-party library and one part of the live system and speaks ``State`` records
(``reconciler.records``) in both directions.  Unit tests replace drivers with
in-memory ones that follow the same Protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from reconciler.plan import Change
from reconciler.records import Record


class Driver(Protocol):
    """A part of the live system.

    ``kinds`` names the record kinds it owns.  ``read()`` returns the live
    records of those kinds; ``apply()`` carries out changes of those kinds,
    in the order given, idempotently (applying a change whose effect is already
    live is not an error).  ``writes`` counts the kernel writes made so far, so
    tests can prove a no-op apply writes nothing.
    """

    kinds: frozenset[str]
    writes: int

    def read(self) -> Mapping[str, Mapping[str, Record]]: ...

    def apply(self, changes: Sequence[Change]) -> None: ...
