"""JSON-Schema validation of one document, with errors worded for humans.

Why this exists: the schemas in ``reconciler/schemas/`` are the contract of the
resource format (``lbctl schema KIND`` prints them), and jsonschema's own
messages ("Additional properties are not allowed ('prot' was unexpected)")
are not what an operator should read.  This module compiles one validator per
kind once, runs it on a document, and turns each failure into a
``ConfigError`` at the offending node, with ``spec.ports[0].port`` style paths
and a hint.  It is the only module that imports ``jsonschema`` and works with
jsonschema 4.10 (Debian bookworm) as well as the newest release.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from reconciler.config import fastcheck
from reconciler.config.formats import CHECKS, PARSERS, FormatProblem
from reconciler.config.tree import Loc, find, format_path, key_position
from reconciler.errors import ConfigError
from reconciler.model import KINDS

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_DNS_LABEL = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_PATTERNS = {
    _DNS_LABEL: ("is not a valid DNS label",
                 "use lower-case letters, digits and '-', starting and ending with a letter or digit"),
    "^[^\\s/:]+$": ("is not a valid interface name", "no spaces, '/' or ':'"),
    "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$": (
        "is not a valid label value",
        "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"),
}
_TYPES = {"integer": "an integer", "string": "a string", "boolean": "true or false",
          "object": "a mapping", "array": "a list", "number": "a number", "null": "empty"}


def schema_text(kind: str) -> str:
    return (SCHEMA_DIR / f"{kind}.json").read_text(encoding="utf-8")


@cache
def schema(kind: str) -> dict[str, Any]:
    """The parsed JSON Schema of ``kind`` (one of ``reconciler.model.KINDS``)."""
    loaded: dict[str, Any] = json.loads(schema_text(kind))
    return loaded


def _format_checker() -> Any:
    checker = jsonschema.FormatChecker(formats=())
    for name, check in CHECKS.items():
        checker.checks(name, raises=FormatProblem)(check)
    return checker


@cache
def validator(kind: str) -> Any:
    """A compiled Draft 2020-12 validator for ``kind``, built once per process."""
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema(kind))
    return cls(schema(kind), format_checker=_format_checker())


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "empty value" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = _show_full(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _show_full(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (dict, list)):
        return "a " + _kind_of(value)
    return "empty" if value is None else str(value)


def _describe(value: Any) -> str:
    """``string "80"``, ``integer 5``, ``a list``: what a value is, for messages."""
    if isinstance(value, (dict, list)):
        return "a " + _kind_of(value)
    if value is None:
        return "empty"
    return f"{_kind_of(value)} {_show(value)}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'did you mean "{close[0]}"?' if close else None


class _Translator:
    """Turns jsonschema errors of one document into ConfigErrors."""

    def __init__(self, file: str, root: Loc, kind: str | None, name: str | None) -> None:
        self.file, self.root, self.kind, self.name = file, root, kind, name
        self.out: list[ConfigError] = []
        self.seen: set[tuple[str, str]] = set()

    def emit(self, segments: list[str | int], message: str, hint: str | None = None,
             at_key: bool = False) -> None:
        path = format_path(segments)
        if (path, message) in self.seen:
            return
        self.seen.add((path, message))
        pos = key_position(self.root, segments) if at_key else None
        if pos is None:
            node, _ = find(self.root, segments)
            node = node or self.root
            pos = (node.line, node.column)
        self.out.append(ConfigError(self.file, pos[0], pos[1], self.kind, self.name, path, message, hint))

    def translate(self, error: Any) -> None:  # noqa: C901 - one branch per keyword
        segments: list[str | int] = list(error.absolute_path)
        keyword, expected, inst, sch = error.validator, error.validator_value, error.instance, error.schema
        if "propertyNames" in error.absolute_schema_path and keyword != "propertyNames":
            self.emit(segments + [str(inst)], f"{_show(inst)} is not a valid label key",
                      "a label key is an optional DNS prefix and '/', then letters, digits, '-', '_' and '.'",
                      at_key=True)
            return
        if keyword == "required":
            props = sch.get("properties", {}) if isinstance(sch, dict) else {}
            for field in expected:
                if isinstance(inst, dict) and field not in inst:
                    desc = props.get(field, {}).get("description", "").rstrip(".")
                    self.emit(segments + [field], "required field is missing",
                              f"add {field}: {desc}" if desc else f"add {field}")
        elif keyword == "additionalProperties":
            allowed = set(sch.get("properties", {}))
            for key in inst:
                if key not in allowed:
                    hint = _did_you_mean(key, allowed) or (
                        "allowed: " + ", ".join(sorted(allowed)) if allowed else None)
                    self.emit(segments + [key], f'unknown field "{key}"', hint, at_key=True)
        elif keyword == "type":
            types = [expected] if isinstance(expected, str) else expected
            want = " or ".join(_TYPES.get(t, t) for t in types)
            hint = None
            if isinstance(inst, str) and want in ("an integer", "a number"):
                hint = "remove the quotes" if inst.strip().lstrip("-").isdigit() else None
            elif isinstance(inst, bool) and want == "a string":
                hint = "YAML reads yes/no/on/off/true/false as booleans; quote the value"
            elif isinstance(inst, (int, float)) and want == "a string":
                hint = "quote the value"
            elif inst is None:
                hint = "give it a value"
            self.emit(segments, f"must be {want}, not {_describe(inst)}", hint)
        elif keyword == "enum":
            choices = [str(c) for c in expected]
            hint = None
            if isinstance(inst, bool):
                hint = ("YAML reads unquoted yes/no/on/off/true/false as booleans; "
                        "use one of the values listed")
            elif isinstance(inst, str):
                same = [c for c in choices if c.lower() == inst.lower()]
                hint = (f'did you mean "{same[0]}"? values are case-sensitive' if same
                        else _did_you_mean(inst, choices))
            self.emit(segments, f"{_show(inst)} is not one of: {', '.join(choices)}", hint)
        elif keyword == "const":
            if segments == ["kind"]:
                return  # dispatch picked this schema from kind, it cannot differ
            self.emit(segments, f"must be {_show(expected)}, not {_show(inst)}")
        elif keyword in ("minimum", "maximum"):
            low, high = sch.get("minimum"), sch.get("maximum")
            if low is not None and high is not None:
                self.emit(segments, f"{_show(inst)} is out of range {low}-{high}")
            elif low is not None:
                self.emit(segments, f"{_show(inst)} is too small: the minimum is {low}")
            else:
                self.emit(segments, f"{_show(inst)} is too large: the maximum is {high}")
        elif keyword == "pattern":
            message, hint = _PATTERNS.get(expected, ("has the wrong format", f"it must match {expected}"))
            self.emit(segments, f"{_show(inst)} {message}", hint)
        elif keyword == "propertyNames":
            for sub in error.context or ():
                self.translate(sub)
        elif keyword == "minLength":
            self.emit(segments, "must not be empty" if expected == 1 else
                      f"must be at least {expected} characters long")
        elif keyword == "maxLength":
            self.emit(segments, f"is too long: at most {expected} characters")
        elif keyword == "minItems":
            self.emit(segments, "must not be empty" if expected == 1 else
                      f"needs at least {expected} entries")
        elif keyword == "maxItems":
            self.emit(segments, f"has too many entries: at most {expected}")
        elif keyword == "format":
            cause = error.cause
            self.emit(segments, str(cause) if cause is not None else
                      f"{_show(inst)} is not a valid {expected}")
        elif keyword in ("anyOf", "oneOf"):
            self._alternatives(error, segments, sch)
        else:
            self.emit(segments, f"is invalid: {error.message}")

    def _alternatives(self, error: Any, segments: list[str | int], sch: dict[str, Any]) -> None:
        """Report the branch the value was evidently meant for, or what the forms are."""
        branches: dict[int, list[Any]] = {}
        for sub in error.context or ():
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        plausible = [errs for errs in branches.values()
                     if not any(e.validator == "type" and not e.relative_path for e in errs)]
        if len(plausible) == 1:
            for sub in plausible[0]:
                self.translate(sub)
            return
        desc = sch.get("description", "").rstrip(".")
        hint = f"not {_describe(error.instance)}"
        if isinstance(error.instance, bool):
            hint += "; YAML reads yes/no/on/off/true/false as booleans, quote the value"
        message = f"must be {desc[0].lower() + desc[1:]}" if desc else "matches none of the allowed forms"
        self.emit(segments, message, hint)


@cache
def quick(kind: str) -> fastcheck.Check | None:
    """The compiled fast predicate of ``kind``, or ``None`` if its schema is beyond the compiler."""
    try:
        return fastcheck.compile_schema(schema(kind), PARSERS)
    except fastcheck.Unsupported:
        return None


def passes(kind: str, value: dict[str, Any]) -> bool:
    """True when the fast predicate says the document is valid (no positions needed)."""
    fast = quick(kind)
    return fast is not None and fast(value)


def check(kind: str, value: dict[str, Any], file: str, root: Loc, name: str | None) -> list[ConfigError]:
    """Schema errors of one document already known to be of ``kind``."""
    if passes(kind, value):
        return []
    val = validator(kind)
    translator = _Translator(file, root, kind, name)
    for error in val.iter_errors(value):
        translator.translate(error)
    return translator.out


def unknown_kind(kind: Any) -> tuple[str, str]:
    """(message, hint) for a kind field naming no schema."""
    known = ", ".join(KINDS)
    if not isinstance(kind, str):
        return f"kind must be a string, not {_describe(kind)}", f"one of: {known}"
    hint = _did_you_mean(kind, KINDS)
    return f'unknown kind "{kind}"', (hint + f" kinds: {known}") if hint else f"kinds: {known}"
