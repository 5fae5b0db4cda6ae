"""YAML bytes -> plain documents plus a position tree, defensively.

Why this exists: config files come from Git, ConfigMaps and hand edits, so the
parser must survive anything: broken YAML, non-UTF-8 bytes, alias bombs,
absurd nesting, duplicate keys.  It walks libyaml's *event* stream (through
PyYAML's ``CSafeLoader`` when present, the pure-Python ``SafeLoader``
otherwise) with an explicit stack instead of the recursive composer, so depth
is bounded by a counter rather than by the C stack, anchors are measured when
they are used, and every value gets a ``Loc``.  This is the only module that
imports ``yaml``.

Speed: almost every file is plain, valid YAML, and almost no position is ever
looked up.  So ``parse_text(..., positions=False)`` first runs a lean loop
that builds only the values and each document's start, and gives up (to the
full, defensive loop above, which then reports exactly what it always did) at
the first thing out of the ordinary: an error, an anchor or alias, a merge
key, a duplicate key, deep nesting.  The position tree of a file is then
built on first use by ``Positions``, which re-parses the file's text.

Depth: lbctl's own limit (``MAX_DEPTH``) must decide, whatever the PyYAML and
libyaml versions.  Newer libyaml builds (PyYAML 6.0.4's wheels) refuse deep flow
nesting themselves, and because libyaml's scanner reads ahead over ``[[[...``
before the first event is delivered, their refusal comes first, with their own
wording and position.  When libyaml reports its nesting limit, the file is read
again through the pure-Python ``SafeLoader`` (no such limit; its state machine
does not recurse), so the builder's counter reports lbctl's message at the
first level too deep, the same on every version.  Only such files pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from reconciler.config.tree import Loc, format_path
from reconciler.errors import ConfigError

MAX_DEPTH = 64  # nesting levels of mappings/sequences in one document
ALIAS_BUDGET = 10_000  # nodes that aliases may add to one file in total

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MERGE, _TIMESTAMP = _TAG + "merge", _TAG + "timestamp"
_MISS = object()
_HINT_SYNTAX = "check the indentation and quoting around this line"


@dataclass(frozen=True)
class Document:
    """One non-empty YAML document whose root is a mapping."""

    value: dict[str, Any]
    loc: Loc
    index: int  # 0-based position of the document in its file


class Positions:
    """The position trees of one file's documents, built on first use.

    Holds the file's text; ``root(index)`` re-parses it with positions (once)
    and returns the ``Loc`` tree of document ``index``.  Pickles as
    (file, text) only, so a persisted parse result stays small.
    """

    __slots__ = ("file", "text", "_roots")

    def __init__(self, file: str, text: str, roots: dict[int, Loc] | None = None) -> None:
        self.file = file
        self.text = text
        self._roots = roots

    def root(self, index: int) -> Loc:
        roots = self._roots
        if roots is None:  # a race only parses twice: the result is the same
            parsed = _parse_full(self.file, self.text)
            roots = {doc.index: doc.loc for doc in parsed.documents}
            self._roots = roots
        return roots[index]

    def __getstate__(self) -> tuple[str, str]:
        return (self.file, self.text)

    def __setstate__(self, state: tuple[str, str]) -> None:
        self.file, self.text = state
        self._roots = None


@dataclass(frozen=True)
class ParsedFile:
    documents: tuple[Document, ...]
    errors: tuple[ConfigError, ...]
    # full position trees of ``documents`` (by ``Document.index``); None when nothing was parsed
    positions: Positions | None = None


class _Unusual(Exception):
    """The lean loop met something only the full loop handles."""


class _Fatal(Exception):
    """Stop parsing this file: what follows cannot be trusted."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(error.message)
        self.error = error


def _error(file: str, line: int, column: int, message: str, hint: str | None = None) -> ConfigError:
    return ConfigError(file, line, column, None, None, "", message, hint)


def decode(file: str, data: bytes) -> tuple[str | None, ConfigError | None]:
    """UTF-8 text of ``data`` (BOM stripped), or an error naming the bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start]
        return None, _error(file, line, column,
                            f"file is not valid UTF-8: byte 0x{bad:02x} at offset {exc.start}",
                            "save the file as UTF-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, None


class _Frame:
    """An open mapping or sequence on the parse stack."""

    __slots__ = ("value", "loc", "anchor", "size", "key", "key_pos", "merges", "is_map")

    def __init__(self, value: Any, loc: Loc, anchor: str | None, is_map: bool) -> None:
        self.value = value
        self.loc = loc
        self.anchor = anchor
        self.size = 1  # nodes in this subtree, aliases expanded
        self.key: str | None = None  # mapping: key waiting for its value
        self.key_pos: tuple[int, int] = (0, 0)
        self.merges: list[tuple[Any, Loc]] | None = None
        self.is_map = is_map


class _Builder:
    """Turns one file's event stream into documents; see the module docstring."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.documents: list[Document] = []
        self.errors: list[ConfigError] = []
        self.resolver = Resolver()
        self.constructor = SafeConstructor()
        self.budget = ALIAS_BUDGET
        self.stack: list[_Frame] = []
        self.memo: dict[tuple[str, Any], Any] = {}  # plain scalar text -> value, per file
        self.doc_errors_from = 0  # errors from here on belong to the current document

    # -- scalars ---------------------------------------------------------
    def scalar(self, ev: Any) -> Any:
        if ev.tag is None:  # plain or quoted without a tag: the value depends on the text only
            key = (ev.value, ev.implicit)
            hit = self.memo.get(key, _MISS)
            if hit is not _MISS:
                return hit
            errors_before = len(self.errors)
            value = self._scalar(ev)
            if len(self.errors) == errors_before:
                self.memo[key] = value
            return value
        return self._scalar(ev)

    def _scalar(self, ev: Any) -> Any:
        tag = ev.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(ScalarNode, ev.value, ev.implicit)  # type: ignore[no-untyped-call]
        if tag == _STR or tag == _TIMESTAMP:
            return ev.value
        if tag == _NULL:
            return None
        if tag in (_INT, _FLOAT, _BOOL):
            node = ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark)
            try:
                return self.constructor.construct_object(node)
            except (ConstructorError, ValueError):
                mark = ev.start_mark
                self.errors.append(_error(self.file, mark.line + 1, mark.column + 1,
                                          f'"{ev.value}" is not a valid {tag[len(_TAG):]}',
                                          "quote it to make it a string"))
                return ev.value
        mark = ev.start_mark
        shown = "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag
        error = _error(self.file, mark.line + 1, mark.column + 1, f"unsupported YAML tag {shown}",
                       "use plain strings, numbers, booleans, lists and mappings")
        self.errors.append(replace(error, path=format_path(self._here())))
        return ev.value

    # -- the event loop --------------------------------------------------
    def run(self, text: str, loader_class: Any = None) -> None:
        loader = (loader_class or _Loader)(text)
        try:
            self._loop(loader)
        finally:
            loader.dispose()

    def _loop(self, loader: Any) -> None:  # noqa: C901 - one flat state machine reads best
        file = self.file
        stack: list[_Frame] = []
        self.stack = stack
        anchors: dict[str, tuple[Any, Loc, int]] = {}
        root: tuple[Any, Loc] | None = None
        doc_index = -1
        get_event = loader.get_event
        check_event = loader.check_event
        while check_event():
            ev = get_event()
            et = type(ev)
            if et is ScalarEvent:
                mark = ev.start_mark
                if stack:
                    top = stack[-1]
                    if top.is_map and top.key is None:
                        # a mapping key: always its text, except a plain "<<"
                        if ev.value == "<<" and ev.tag is None and ev.implicit[0]:
                            top.key = "<<"
                        else:
                            top.key = ev.value
                        top.key_pos = (mark.line + 1, mark.column + 1)
                        continue
                value = self.scalar(ev)
                loc = Loc(mark.line + 1, mark.column + 1)
                if ev.anchor is not None:
                    anchors[ev.anchor] = (value, loc, 1)
                if stack:
                    self._add(stack[-1], value, loc, 1)
                else:
                    root = (value, loc)
            elif et is MappingStartEvent or et is SequenceStartEvent:
                mark = ev.start_mark
                if stack and stack[-1].is_map and stack[-1].key is None:
                    raise _Fatal(_error(file, mark.line + 1, mark.column + 1,
                                        "a mapping key must be a plain value, not a list or mapping",
                                        "write the key as a string"))
                if len(stack) >= MAX_DEPTH:
                    raise _Fatal(_error(file, mark.line + 1, mark.column + 1,
                                        f"nesting deeper than {MAX_DEPTH} levels",
                                        "lbctl resources are never this deep; "
                                        "is the file generated wrongly?"))
                loc = Loc(mark.line + 1, mark.column + 1)
                if et is MappingStartEvent:
                    loc.children, loc.keys = {}, {}
                    stack.append(_Frame({}, loc, ev.anchor, True))
                else:
                    loc.children = []
                    stack.append(_Frame([], loc, ev.anchor, False))
            elif et is MappingEndEvent or et is SequenceEndEvent:
                frame = stack.pop()
                if frame.merges:
                    self._merge(frame)
                if frame.anchor is not None:
                    anchors[frame.anchor] = (frame.value, frame.loc, frame.size)
                if stack:
                    self._add(stack[-1], frame.value, frame.loc, frame.size)
                else:
                    root = (frame.value, frame.loc)
            elif et is AliasEvent:
                mark = ev.start_mark
                target = anchors.get(ev.anchor)
                if target is None:  # libyaml reports this itself; be safe anyway
                    raise _Fatal(_error(file, mark.line + 1, mark.column + 1,
                                        f"unknown alias *{ev.anchor}", "define the &anchor before using it"))
                value, loc, size = target
                self.budget -= size
                if self.budget < 0:
                    raise _Fatal(_error(file, mark.line + 1, mark.column + 1,
                                        f"YAML aliases expand to more than {ALIAS_BUDGET} nodes",
                                        "this looks like an alias bomb; write the values out or use "
                                        "fewer anchors"))
                if stack:
                    top = stack[-1]
                    if top.is_map and top.key is None:
                        if not isinstance(value, str):
                            raise _Fatal(_error(file, mark.line + 1, mark.column + 1,
                                                "a mapping key must be a plain value",
                                                "write the key as a string"))
                        top.key, top.key_pos = value, (mark.line + 1, mark.column + 1)
                        continue
                    self._add(top, value, loc, size)
                else:
                    root = (value, loc)
            elif et is DocumentStartEvent:
                doc_index += 1
                anchors = {}
                self.doc_errors_from = len(self.errors)
                root = None
            elif et is DocumentEndEvent:
                self._finish(root, doc_index)
                root = None

    def _add(self, top: _Frame, value: Any, loc: Loc, size: int) -> None:
        top.size += size
        if not top.is_map:
            top.value.append(value)
            top.loc.children.append(loc)  # type: ignore[union-attr]
            return
        key = top.key
        top.key = None
        assert key is not None
        if key == "<<":
            if top.merges is None:
                top.merges = []
            top.merges.append((value, loc))
            return
        mapping = top.value
        keys = top.loc.keys
        assert keys is not None
        if key in mapping:
            line, column = top.key_pos
            first = keys[key]
            error = _error(self.file, line, column, f'duplicate key "{key}" (first at line {first[0]})',
                           "remove one of them; YAML keys must be unique")
            self.errors.append(replace(error, path=format_path(self._path() + [key])))
            return
        mapping[key] = value
        keys[key] = top.key_pos
        top.loc.children[key] = loc  # type: ignore[index,call-overload]

    def _here(self) -> list[str | int]:
        """Path of the scalar being read (all open frames)."""
        return [f.key if f.is_map else len(f.value) for f in self.stack]  # type: ignore[misc]

    def _path(self) -> list[str | int]:
        """Path of the node being filled (for errors found mid-document)."""
        path: list[str | int] = []
        for frame in self.stack[:-1]:
            path.append(frame.key if frame.is_map else len(frame.value))  # type: ignore[arg-type]
        return path

    def _merge(self, frame: _Frame) -> None:
        """Apply ``<<: *anchor`` merge keys: explicit keys win, earlier merges win."""
        assert frame.merges is not None
        mapping, loc = frame.value, frame.loc
        for value, vloc in frame.merges:
            sources = list(zip(value, vloc.children, strict=True)) if isinstance(value, list) and isinstance(
                vloc.children, list) else [(value, vloc)]
            for source, sloc in sources:
                if not isinstance(source, dict):
                    self.errors.append(_error(self.file, sloc.line, sloc.column,
                                              "a merge key (<<) needs a mapping or a list of mappings",
                                              "point << at an &anchor of a mapping"))
                    continue
                for key, item in source.items():
                    if key not in mapping:
                        mapping[key] = item
                        loc.children[key] = sloc.children[key]  # type: ignore[index]
                        loc.keys[key] = sloc.keys[key]  # type: ignore[index]

    def _blame(self, value: dict[str, Any]) -> None:
        """Name the resource in errors found inside this document."""
        kind, name = _subject(value)
        for i in range(self.doc_errors_from, len(self.errors)):
            self.errors[i] = replace(self.errors[i], kind=kind, name=name)

    def _finish(self, root: tuple[Any, Loc] | None, index: int) -> None:
        if root is not None and isinstance(root[0], dict):
            self._blame(root[0])
        if root is None or root[0] is None:
            return  # an empty document: nothing to do
        value, loc = root
        if not isinstance(value, dict):
            what = "a list" if isinstance(value, list) else f'the scalar "{value}"'
            self.errors.append(_error(self.file, loc.line, loc.column,
                                      f"document {index + 1} is {what}, not a mapping",
                                      "each document must be a resource with apiVersion, kind, metadata "
                                      "and spec"))
            return
        if not value:
            return  # "{}" carries nothing either
        self.documents.append(Document(value, loc, index))


def _subject(value: dict[str, Any]) -> tuple[str | None, str | None]:
    """(kind, name) of a document, as far as they are strings."""
    kind = value.get("kind")
    meta = value.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return (kind if isinstance(kind, str) else None, name if isinstance(name, str) else None)


def _syntax_error(file: str, text: str, exc: yaml.YAMLError) -> ConfigError:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            where = ""
            if exc.context_mark is not None and exc.context_mark.line != mark.line:
                where = f" at line {exc.context_mark.line + 1}"
            message += f" {exc.context.strip()}{where}"
        return _error(file, mark.line + 1, mark.column + 1, message, _HINT_SYNTAX)
    if isinstance(exc, yaml.reader.ReaderError):
        pos = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character
        code = f"#x{ord(char):04x}" if isinstance(char, str) else f"#x{char:02x}"
        return _error(file, line, column, f"invalid YAML: unacceptable character {code}",
                      "remove control characters from the file")
    return _error(file, 1, 1, f"invalid YAML: {exc}", _HINT_SYNTAX)


def _lean(file: str, text: str) -> list[Document]:  # noqa: C901 - one flat state machine reads best
    """Documents of plain, valid YAML without position trees; raises ``_Unusual`` otherwise.

    Only each document's start is recorded (``Document.loc`` has no children).
    Containers are attached to their parent when they open (there are no
    merge keys here), so the values equal what the full loop builds.
    """
    builder = _Builder(file)
    memo = builder.memo
    documents: list[Document] = []
    stack: list[Any] = []  # open containers
    keys: list[str | None] = []  # per open mapping: the key waiting for its value (None for lists)
    root: Any = None
    root_loc: Loc | None = None
    doc_index = -1
    loader = _Loader(text)
    try:
        for ev in iter(loader.get_event, None):
            et = type(ev)
            if et is ScalarEvent:
                if ev.anchor is not None:
                    raise _Unusual
                if stack:
                    top = stack[-1]
                    if type(top) is dict:
                        key = keys[-1]
                        if key is None:  # this scalar is a key
                            text_ = ev.value
                            if text_ == "<<" or text_ in top:
                                raise _Unusual
                            keys[-1] = text_
                            continue
                if ev.tag is None:
                    if ev.implicit[0]:
                        value = memo.get(ev.value, _MISS)
                        if value is _MISS:
                            value = builder._scalar(ev)
                            if builder.errors:
                                raise _Unusual
                            memo[ev.value] = value
                    else:
                        value = ev.value  # quoted without a tag: always a string
                else:
                    value = builder._scalar(ev)
                    if builder.errors:
                        raise _Unusual
                if not stack:
                    if value is not None:
                        raise _Unusual  # a scalar document: an error the full loop words
                elif type(top) is dict:
                    top[key] = value
                    keys[-1] = None
                else:
                    top.append(value)
            elif et is MappingStartEvent or et is SequenceStartEvent:
                if ev.anchor is not None or len(stack) >= MAX_DEPTH - 1:
                    raise _Unusual
                new: Any = {} if et is MappingStartEvent else []
                if stack:
                    top = stack[-1]
                    if type(top) is dict:
                        key = keys[-1]
                        if key is None:
                            raise _Unusual  # a collection as a mapping key
                        top[key] = new
                        keys[-1] = None
                    else:
                        top.append(new)
                else:
                    if type(new) is not dict:
                        raise _Unusual  # a list document: an error the full loop words
                    mark = ev.start_mark
                    root, root_loc = new, Loc(mark.line + 1, mark.column + 1)
                stack.append(new)
                keys.append(None)
            elif et is MappingEndEvent or et is SequenceEndEvent:
                stack.pop()
                keys.pop()
            elif et is AliasEvent:
                raise _Unusual
            elif et is DocumentStartEvent:
                doc_index += 1
                root = root_loc = None
            elif et is DocumentEndEvent:
                if root and root_loc is not None:
                    documents.append(Document(root, root_loc, doc_index))
                root = root_loc = None
    finally:
        loader.dispose()
    return documents


def _libyaml_depth_limit(exc: yaml.YAMLError) -> bool:
    """libyaml's own nesting limit (newer builds), whatever its exact wording."""
    problem = getattr(exc, "problem", None) or str(exc)
    return "nesting depth" in problem


def _parse_full(file: str, text: str, loader_class: Any = None) -> ParsedFile:
    builder = _Builder(file)
    try:
        builder.run(text, loader_class)
    except _Fatal as exc:
        builder.errors.append(exc.error)
    except yaml.YAMLError as exc:
        if loader_class is None and _Loader is not yaml.SafeLoader and _libyaml_depth_limit(exc):
            return _parse_full(file, text, yaml.SafeLoader)  # lbctl's limit reports it
        builder.errors.append(_syntax_error(file, text, exc))
    except RecursionError:  # the pure-Python scanner on pathological input
        builder.errors.append(_error(file, 1, 1, f"nesting deeper than {MAX_DEPTH} levels",
                                     "lbctl resources are never this deep"))
    return ParsedFile(tuple(builder.documents), tuple(builder.errors))


def parse_text(file: str, text: str, positions: bool = True) -> ParsedFile:
    """All documents of ``text``; errors instead of exceptions, always.

    With ``positions=False`` the documents' ``loc`` may carry only the start
    of the document; ``ParsedFile.positions`` gives the full trees on demand.
    """
    if not positions:
        try:
            return ParsedFile(tuple(_lean(file, text)), (), Positions(file, text))
        except (_Unusual, yaml.YAMLError, RecursionError):
            pass  # the full loop reports it exactly
    parsed = _parse_full(file, text)
    roots = {doc.index: doc.loc for doc in parsed.documents}
    return ParsedFile(parsed.documents, parsed.errors, Positions(file, text, roots))


def parse_bytes(file: str, data: bytes, positions: bool = True) -> ParsedFile:
    text, error = decode(file, data)
    if error is not None or text is None:
        return ParsedFile((), (error,) if error else ())
    return parse_text(file, text, positions)
