"""Source positions of every node of a parsed document, and path syntax.

Why this exists: errors must point at ``file:line:col`` of the offending node,
long after the YAML parser is gone.  The parser records a compact tree of
``Loc`` objects (one per node) beside the plain values; ``LocationMap`` answers
``"spec.endpoints[2].address" -> Location`` lazily, so a 100k-node directory
does not pay for building 100k path strings that are almost never looked up.
The tree itself may be lazy too: a ``LocationMap`` over a ``RootSource`` asks
for it (and the source re-parses the file) only on the first lookup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from reconciler.model import Location


class Loc:
    """Position of one node (1-based) and of its children.

    Mappings have ``children`` as ``dict[key, Loc]`` and ``keys`` as
    ``dict[key, (line, column)]`` (the position of the key itself); sequences
    have ``children`` as a list; scalars have neither.
    """

    __slots__ = ("line", "column", "children", "keys")

    def __init__(self, line: int, column: int) -> None:
        self.line = line
        self.column = column
        self.children: dict[str, Loc] | list[Loc] | None = None
        self.keys: dict[str, tuple[int, int]] | None = None

    def child(self, segment: str | int) -> Loc | None:
        children = self.children
        if isinstance(children, dict) and isinstance(segment, str):
            return children.get(segment)
        if isinstance(children, list) and isinstance(segment, int) and 0 <= segment < len(children):
            return children[segment]
        return None


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_SEGMENT = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\["((?:[^"\\]|\\.)*)"\]')


def format_path(segments: Sequence[str | int]) -> str:
    """``["spec", "ports", 0, "port"]`` -> ``spec.ports[0].port``."""
    out: list[str] = []
    for seg in segments:
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif _PLAIN_KEY.match(seg):
            out.append(f".{seg}" if out else seg)
        else:
            quoted = seg.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{quoted}"]')
    return "".join(out)


def parse_path(path: str) -> list[str | int] | None:
    """Inverse of ``format_path``; ``None`` when ``path`` is not one."""
    segments: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None or m.end() == pos:
            return None
        if m.group(1) is not None:
            segments.append(m.group(1))
        elif m.group(2) is not None:
            segments.append(int(m.group(2)))
        else:
            segments.append(re.sub(r"\\(.)", r"\1", m.group(3)))
        pos = m.end()
    return segments


def find(root: Loc, segments: Sequence[str | int]) -> tuple[Loc | None, int]:
    """Walk ``segments`` from ``root``: the deepest node reached and how many segments it used."""
    node = root
    for used, seg in enumerate(segments):
        nxt = node.child(seg)
        if nxt is None:
            return node, used
        node = nxt
    return node, len(segments)


def key_position(root: Loc, segments: Sequence[str | int]) -> tuple[int, int] | None:
    """Position of the mapping key named by the last segment, if there is one."""
    if not segments or not isinstance(segments[-1], str):
        return None
    parent, used = find(root, segments[:-1])
    if parent is None or used != len(segments) - 1 or parent.keys is None:
        return None
    return parent.keys.get(segments[-1])


class RootSource(Protocol):
    """Something that builds the ``Loc`` tree of a file's document on demand."""

    def root(self, index: int) -> Loc: ...


class LocationMap(Mapping[str, Location]):
    """Read-only ``path -> Location`` view over a ``Loc`` tree (exact paths only).

    Give either the tree (``root``) or a ``source`` and the document's
    ``index`` in its file, to build the tree only when a path is looked up.
    """

    def __init__(self, file: str, root: Loc | None = None, *, source: RootSource | None = None,
                 index: int = 0) -> None:
        if root is None and source is None:
            raise ValueError("LocationMap needs a root or a source")
        self._file = file
        self._root = root
        self._source = source
        self._index = index

    def _tree(self) -> Loc:
        if self._root is not None:
            return self._root
        assert self._source is not None
        return self._source.root(self._index)

    def __getitem__(self, path: str) -> Location:
        segments = parse_path(path)
        if segments is None:
            raise KeyError(path)
        node, used = find(self._tree(), segments)
        if node is None or used != len(segments):
            raise KeyError(path)
        return Location(self._file, node.line, node.column)

    def __iter__(self) -> Iterator[str]:
        stack: list[tuple[list[str | int], Loc]] = [([], self._tree())]
        while stack:
            segments, node = stack.pop()
            if segments:
                yield format_path(segments)
            children = node.children
            if isinstance(children, dict):
                stack.extend((segments + [k], v) for k, v in children.items())
            elif isinstance(children, list):
                stack.extend((segments + [i], v) for i, v in enumerate(children))

    def __len__(self) -> int:
        return sum(1 for _ in self)
