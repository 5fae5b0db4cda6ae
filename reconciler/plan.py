"""Plan: the ordered difference between desired and live state.

Why this exists: it is the one pure function that decides *what* changes and in
*which order*; ordering rules live here and nowhere else.  Drivers receive
``Change`` objects and only carry them out.

(Skeleton: ``Change`` is the contract shared with the drivers; ``diff`` and the
ordering rules are added by the reconcile work.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.records import Record

Action = Literal["create", "update", "delete", "replace"]
SYMBOLS: dict[str, str] = {"create": "+", "update": "~", "delete": "-", "replace": "-/+"}


@dataclass(frozen=True)
class Change:
    """One step of a plan: make ``key`` of ``kind`` go from ``before`` to ``after``.

    ``before`` is None for create, ``after`` is None for delete.  ``fields``
    names the record fields that differ (update and replace; empty otherwise).
    """

    kind: str
    key: str
    action: Action
    before: Record | None
    after: Record | None
    fields: tuple[str, ...] = ()
