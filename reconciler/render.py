"""Render a plan the way operators know from Terraform.

Why this exists: a reviewer must see at a glance what an apply will do to the
box: a legend of the actions present, one block per changed object with
field-level ``~ old -> new``, then the summary line.  The renderer reads ONLY
``Plan.to_json()`` output (a string or its parsed dict), never ``Plan``
objects, so what scripts see with ``-o json`` and what humans see can never
disagree, and a plan saved as JSON renders the same later.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text


SUPPORTED_FORMAT = 1

LEGEND: tuple[tuple[str, str, str], ...] = (
    ("create", "+", "create"),
    ("update", "~", "update in-place"),
    ("replace", "-/+", "destroy and then create replacement"),
    ("delete", "-", "destroy"),
)
HEADLINE = {
    "create": "will be created",
    "update": "will be updated in-place",
    "replace": "must be replaced",
    "delete": "will be destroyed",
}
STYLE = {"+": "green", "~": "yellow", "-": "red", "-/+": "magenta", " ": "", "#": "dim"}
NO_CHANGES = "No changes. The datapath matches the configuration."
# What replacing a record of these kinds does beyond the record itself (BGP: which sessions reset).
REPLACE_EFFECT = {
    "bgp-peer": "its BGP session is reset; other sessions stay up",
    "bgp-global": "every BGP session is reset",
}
# A plan with more changes than this is printed one line per change unless asked for in full
# (``--full-plan``): 30,000 changes in full are a million lines nobody reads, and most of the time.
COMPACT_OVER = 1000
FAULTS = "faults"  # the record field naming what a live read found wrong (reconciler.records)

Line = tuple[str, str]  # (text, style)


def _load(plan_json: str | Mapping[str, Any]) -> Mapping[str, Any]:
    data: Mapping[str, Any] = json.loads(plan_json) if isinstance(plan_json, str) else plan_json
    version = data.get("format_version")
    if version != SUPPORTED_FORMAT:
        raise ValueError(f"plan format_version {version!r} is not supported "
                         f"(this lbctl reads {SUPPORTED_FORMAT})")
    return data


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in sorted(v.items())) + "}"
    return str(v)


def _backend(b: Any) -> str:
    if isinstance(b, dict) and "address" in b:
        host = f"[{b['address']}]" if ":" in str(b["address"]) else str(b["address"])
        port = b.get("port", 0) or "*"
        return f"{host}:{port} weight {b.get('weight', 1)}"
    return _value(b)


def _is_backend_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) and "address" in x for x in v)


def _list_block(lines: list[Line], sym: str, name: str, width: int, items: list[Any]) -> None:
    lines.append((f"      {sym} {name:<{width}} = [", sym))
    for item in items:
        lines.append((f"          {sym} {_backend(item)}", sym))
    lines.append(("        ]", ""))


def _whole(lines: list[Line], sym: str, rec: Mapping[str, Any]) -> None:
    # Like terraform, a created or destroyed object lists only the attributes it has.
    shown = {k: v for k, v in rec.items() if v is not None}
    width = max((len(k) for k in shown), default=0)
    for name in sorted(shown):
        v = shown[name]
        if _is_backend_list(v):
            _list_block(lines, sym, name, width, v)
        else:
            lines.append((f"      {sym} {name:<{width}} = {_value(v)}", sym))


def _changed(lines: list[Line], change: Mapping[str, Any]) -> None:
    before: Mapping[str, Any] = change.get("before") or {}
    after: Mapping[str, Any] = change.get("after") or {}
    fields = [f for f in change.get("fields", []) if f != "key"]
    forces = change["action"] == "replace"
    width = max((len(f) for f in fields), default=0)
    for name in fields:
        old, new = before.get(name), after.get(name)
        note = "  # forces replacement" if forces and name in change.get("forces", ()) else ""
        if name == FAULTS:
            # Faults are what the live read found wrong; desired records have none.
            lines.append((f"      ~ {name:<{width}} = [", "~"))
            for x in old or []:
                lines.append((f"          - {_value(x)}", "-"))
            for x in new or []:
                lines.append((f"          + {_value(x)}", "+"))
            lines.append(("        ]", ""))
        elif _is_backend_list(old) or _is_backend_list(new):
            old_l = [json.dumps(x, sort_keys=True) for x in old or []]
            new_l = [json.dumps(x, sort_keys=True) for x in new or []]
            old_s, new_s = set(old_l), set(new_l)
            gone = [x for x, s in zip(old or [], old_l, strict=True) if s not in new_s]
            came = [x for x, s in zip(new or [], new_l, strict=True) if s not in old_s]
            kept = len(new_l) - len(came)
            lines.append((f"      ~ {name:<{width}} = [{note}", "~"))
            for x in gone:
                lines.append((f"          - {_backend(x)}", "-"))
            for x in came:
                lines.append((f"          + {_backend(x)}", "+"))
            if kept:
                lines.append((f"            # ({kept} unchanged)", "#"))
            lines.append(("        ]", ""))
        else:
            lines.append((f"      ~ {name:<{width}} = {_value(old)} -> {_value(new)}{note}", "~"))
    hidden = len([k for k in after if k not in fields])
    if hidden:
        noun = "attribute" if hidden == 1 else "attributes"
        lines.append((f"        # ({hidden} unchanged {noun} hidden)", "#"))


def _compact(lines: list[Line], change: Mapping[str, Any]) -> None:
    sym = change["symbol"]
    fields = [f for f in change.get("fields", []) if f != "key"]
    shown = f" ({', '.join(fields)})" if fields and change["action"] in ("update", "replace") else ""
    lines.append((f"{sym:>5} {change['kind']} {json.dumps(change['key'])}{shown}", sym))


def plan_lines(plan_json: str | Mapping[str, Any], compact: bool = False) -> list[Line]:
    """The rendered plan as (text, style) lines; ``compact``: one line per change, no attributes.

    The compact form needs only each change's kind, key, action, symbol and
    fields (``Plan.to_dict(records=False)``).
    """
    data = _load(plan_json)
    changes = data.get("changes", [])
    if not changes:
        return [(NO_CHANGES, "bold green")]
    present = {c["action"] for c in changes}
    lines: list[Line] = [
        ("lbctl compared the configuration with the live state of the box.", ""),
        ("Actions are indicated with the following symbols:", ""),
    ]
    for action, sym, text in LEGEND:
        if action in present:
            lines.append((f"{sym:>5} {text}", sym))
    if compact:
        lines += [("", ""), (f"lbctl will perform the following actions ({len(changes)} changes, one line "
                             "each; --full-plan or -o json shows their attributes):", ""), ("", "")]
        for c in changes:
            _compact(lines, c)
    else:
        lines += [("", ""), ("lbctl will perform the following actions:", "")]
    for c in changes if not compact else ():
        sym = c["symbol"]
        lines.append(("", ""))
        effect = REPLACE_EFFECT.get(c["kind"]) if c["action"] == "replace" else None
        lines.append((f"  # {c['kind']} {c['key']} {HEADLINE[c['action']]}"
                      + (f" ({effect})" if effect else ""), "bold"))
        lines.append((f"{sym:>3} {c['kind']} {json.dumps(c['key'])} {{", sym))
        if c["action"] == "create":
            _whole(lines, "+", c.get("after") or {})
        elif c["action"] == "delete":
            _whole(lines, "-", c.get("before") or {})
        else:
            _changed(lines, c)
        lines.append(("    }", ""))
    s = data.get("summary", {})
    lines += [("", ""), (f"Plan: {s.get('add', 0)} to add, {s.get('change', 0)} to change, "
                         f"{s.get('destroy', 0)} to destroy.", "bold")]
    return lines


def render_plain(plan_json: str | Mapping[str, Any], compact: bool = False) -> str:
    """The plan as plain text (golden files, logs, non-terminal output)."""
    return "".join(text + "\n" for text, _ in plan_lines(plan_json, compact))


def render_rich(plan_json: str | Mapping[str, Any], compact: bool = False) -> Text:
    """The plan as a styled rich ``Text``."""
    from rich.text import Text  # only for a terminal: rich costs ~40 ms to import

    out = Text()
    for text, style in plan_lines(plan_json, compact):
        out.append(text, style=STYLE.get(style, style))
        out.append("\n")
    return out


def print_plan(plan_json: str | Mapping[str, Any], console: Any = None,
               file: IO[str] | None = None, compact: bool = False) -> None:
    """Print with colours on a terminal, plain text otherwise (fast for big plans).

    ``console`` is a ``rich.console.Console``; without one, rich is imported only
    when ``file`` (default stdout) is a terminal.
    """
    if console is None:
        out = file if file is not None else sys.stdout
        if not _isatty(out) and not os.environ.get("FORCE_COLOR"):
            out.write(render_plain(plan_json, compact))
            out.flush()
            return
        from rich.console import Console

        console = Console(file=file, highlight=False)
    if console.is_terminal:
        console.print(render_rich(plan_json, compact), end="", soft_wrap=True)
    else:
        console.file.write(render_plain(plan_json, compact))
        console.file.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wants_compact(n_changes: int, full: bool) -> bool:
    """Whether a plan of ``n_changes`` is printed in the compact form (``full``: asked for in full)."""
    return not full and n_changes > COMPACT_OVER
