"""Plan: the ordered difference between desired and live state.

Why this exists: it is the one pure function that decides *what* changes and in
*which order*; ordering rules live here and nowhere else.  Drivers receive
``Change`` objects and only carry them out, in the order given.

Actions per record (``diff``):

* key only desired: create ``+``; key only live: delete ``-``;
* both, records differ: update ``~`` in place, or replace ``-/+`` (the driver
  removes the old object and creates the new one) when a field that cannot
  change in place changed.  Those fields, per kind (``REPLACE_FIELDS``):

  - ``service``: ``mode`` -- flows in the conntrack table were translated
    under the old mode (e.g. DSR vs full NAT) and must not be continued under
    the new one; a replace drops the entry and its flows;
  - ``firewall``: ``priority`` -- the rule's position in the ordered rule table;
  - ``attach``: ``hook`` -- tc and XDP are different attach points
    (detach one, attach the other);
  - ``vip``: ``prefixlen``, ``ifname`` -- a kernel address cannot be moved or
    re-masked, only removed and added;
  - ``bgp-global``: every field -- gobgpd changes its AS, router ID or listen
    socket only by stopping and starting BGP, which resets every session (the
    driver adds the peers and announcements back);
  - ``bgp-peer``: every field -- a changed AS, timer, port, multihop, password
    or description means a new session: that peer's session alone is reset,
    so a replaced ``bgp-peer`` is the list of sessions the plan resets;
  - ``endpoints`` and the other ``service`` fields update in place (the
    endpoint set is swapped atomically as a whole); so do ``announce``
    attributes (communities, local-pref, MED: the path is re-announced).

Order (``ORDER``): kernel settings the datapath needs first, then teardown,
innermost consumer first, then build-up, dependencies first, then detaching
programs, and giving kernel settings back last:

0. kernel settings (``sysctl``: forwarding, rp_filter) are set before anything
   else, so traffic is never steered into a box that cannot forward it;
1. withdraw announcements (never announce a VIP that is going away), remove BGP
   peers, stop the BGP speaker, delete services (before their endpoints, so no lookup ever finds a
   service without endpoints), delete endpoint sets, delete VIP addresses (after
   the announcement was withdrawn), delete firewall rules (protection stays
   until the services are gone).  Deletes come before creates, so freed map
   slots and VIP/port keys are available to the creates that follow;
2. attach programs, firewall rules (before anything is announced), endpoint
   sets (before the service that points at them), services, VIP addresses, the
   BGP speaker, its peers, and finally announcements (``reconciler.apply`` also
   verifies the services and VIP addresses behind an announcement before it
   announces it);
3. detach programs that are no longer configured;
4. restore kernel settings lbctl no longer needs to the values they had before
   lbctl set them (only after the programs that needed them are gone).

Within one step, changes are sorted by key (firewall rules by priority, then
name: the order the datapath evaluates them), so the same inputs give the same
plan and byte-identical ``Plan.to_json()``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.records import Record, ServiceKey

Action = Literal["create", "update", "delete", "replace"]
SYMBOLS: dict[str, str] = {"create": "+", "update": "~", "delete": "-", "replace": "-/+"}

FORMAT_VERSION = 1

ALL_FIELDS = "*"
REPLACE_FIELDS: dict[str, frozenset[str]] = {
    "service": frozenset({"mode"}),
    "firewall": frozenset({"priority"}),
    "attach": frozenset({"hook"}),
    "vip": frozenset({"prefixlen", "ifname"}),
    "bgp-global": frozenset({ALL_FIELDS}),
    "bgp-peer": frozenset({ALL_FIELDS}),
}

# (kind, phase) in execution order; phase "destroy" is delete, "build" is
# create/update/replace, "detach" is delete of attach only.
ORDER: tuple[tuple[str, str], ...] = (
    ("sysctl", "build"),
    ("announce", "destroy"),
    ("bgp-peer", "destroy"),
    ("bgp-global", "destroy"),
    ("service", "destroy"),
    ("endpoints", "destroy"),
    ("vip", "destroy"),
    ("firewall", "destroy"),
    ("attach", "build"),
    ("firewall", "build"),
    ("endpoints", "build"),
    ("service", "build"),
    ("vip", "build"),
    ("bgp-global", "build"),
    ("bgp-peer", "build"),
    ("announce", "build"),
    ("attach", "destroy"),
    ("sysctl", "destroy"),
)
_RANK = {step: i for i, step in enumerate(ORDER)}

SENSITIVE_FIELDS = frozenset({"password"})


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

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]


def _rank(change: Change) -> int:
    phase = "destroy" if change.action == "delete" else "build"
    rank = _RANK.get((change.kind, phase))
    if rank is None:  # a kind this planner does not know: after everything known
        return len(ORDER) + (0 if phase == "destroy" else 1)
    return rank


def changed_fields(before: Record, after: Record) -> tuple[str, ...]:
    if type(before) is not type(after):
        return tuple(f.name for f in dataclasses.fields(after))
    return tuple(f.name for f in dataclasses.fields(after)
                 if getattr(before, f.name) != getattr(after, f.name))


def _needs_replace(kind: str, fields: tuple[str, ...]) -> bool:
    fixed = REPLACE_FIELDS.get(kind, frozenset())
    return ALL_FIELDS in fixed or any(f in fixed for f in fields)


def forcing_fields(change: Change) -> tuple[str, ...]:
    """The changed fields that make ``change`` a replace."""
    if change.action != "replace":
        return ()
    fixed = REPLACE_FIELDS.get(change.kind, frozenset())
    return tuple(f for f in change.fields if ALL_FIELDS in fixed or f in fixed)


def _diff_kind(kind: str, desired: Mapping[str, Record], live: Mapping[str, Record]) -> list[Change]:
    out: list[Change] = []
    for key, want in desired.items():
        have = live.get(key)
        if have is None:
            out.append(Change(kind, key, "create", None, want))
        elif have != want:
            fields = changed_fields(have, want)
            action: Action = "replace" if _needs_replace(kind, fields) else "update"
            out.append(Change(kind, key, action, have, want, fields))
    for key, have in live.items():
        if key not in desired:
            out.append(Change(kind, key, "delete", have, None))
    return out


def diff(desired: Mapping[str, Mapping[str, Record]], live: Mapping[str, Mapping[str, Record]]) -> Plan:
    """The ordered changes that turn ``live`` into ``desired``.

    Kinds missing from one side count as empty.  Pure and deterministic.
    """
    changes: list[Change] = []
    for kind in sorted(set(desired) | set(live)):
        changes.extend(_diff_kind(kind, desired.get(kind, {}), live.get(kind, {})))
    changes.sort(key=lambda c: (_rank(c), c.kind, _within(c), c.key))
    return Plan(tuple(changes))


def _within(c: Change) -> int:
    """Order inside a kind besides the key: firewall rules in evaluation order (priority, then name)."""
    rec = c.after if c.after is not None else c.before
    return int(getattr(rec, "priority", 0)) if c.kind == "firewall" else 0


# --- JSON -----------------------------------------------------------------


def _jsonable(name: str, value: Any) -> Any:
    if name in SENSITIVE_FIELDS and value is not None:
        return "(sensitive)"
    if isinstance(value, ServiceKey):
        return str(value)
    if isinstance(value, bytes):
        if not value:
            return None
        digest = hashlib.sha256(value).hexdigest()[:16]
        return f"table[{len(value) // 2}] sha256:{digest}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable("", v) for v in value]
    return value


def record_to_json(record: Record | None) -> dict[str, Any] | None:
    """A record as plain JSON values (keys become text, tables a size + digest).

    ``faults`` appear only when there are some (only live records have them), and a
    service's ``source_address`` only when it has one (fullnat with a configured source),
    its ``sctp_peer_vips`` only when it has some (multihomed SCTP).
    """
    if record is None:
        return None
    out = _jsonable("", record)
    assert isinstance(out, dict)
    out.pop("key", None)  # the change's key already says it
    for optional in ("faults", "source_address", "sctp_peer_vips"):
        if not out.get(optional):
            out.pop(optional, None)
    return out


@dataclass(frozen=True)
class Plan:
    """An ordered, immutable tuple of changes."""

    changes: tuple[Change, ...] = ()

    def __len__(self) -> int:
        return len(self.changes)

    def __bool__(self) -> bool:
        return bool(self.changes)

    @property
    def empty(self) -> bool:
        return not self.changes

    def counts(self) -> dict[str, int]:
        """Terraform's summary: a replace counts as one add and one destroy."""
        add = change = destroy = 0
        for c in self.changes:
            if c.action == "create":
                add += 1
            elif c.action == "update":
                change += 1
            elif c.action == "delete":
                destroy += 1
            else:
                add += 1
                destroy += 1
        return {"add": add, "change": change, "destroy": destroy}

    def to_dict(self, records: bool = True) -> dict[str, Any]:
        """The plan as plain data; ``records=False`` leaves out ``before``/``after``.

        Without records it is what the compact rendering of a huge plan reads (one
        line per change): the records are most of the cost of a 30,000-change plan.
        """
        out: dict[str, Any] = {"format_version": FORMAT_VERSION, "summary": self.counts()}
        if records:
            out["changes"] = [
                {
                    "kind": c.kind,
                    "key": c.key,
                    "action": c.action,
                    "symbol": c.symbol,
                    "fields": list(c.fields),
                    "forces": list(forcing_fields(c)),
                    "before": record_to_json(c.before),
                    "after": record_to_json(c.after),
                }
                for c in self.changes
            ]
        else:
            out["changes"] = [{"kind": c.kind, "key": c.key, "action": c.action, "symbol": c.symbol,
                               "fields": list(c.fields)} for c in self.changes]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """Versioned, deterministic JSON (the renderer reads only this)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, ensure_ascii=False) + "\n"


def apply_to(state: Mapping[str, Mapping[str, Record]], plan: Plan) -> dict[str, dict[str, Record]]:
    """The state ``plan`` leads to from ``state`` (a pure model of what drivers do)."""
    out = {kind: dict(records) for kind, records in state.items()}
    for c in plan.changes:
        bucket = out.setdefault(c.kind, {})
        if c.after is None:
            bucket.pop(c.key, None)
        else:
            bucket[c.key] = c.after
    return out
