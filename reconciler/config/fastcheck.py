"""A compiled yes/no check for lbctl's schemas, to keep jsonschema off the hot path.

Why this exists: jsonschema needs ~300 us per Service document, 3 s for a
10,000-service directory -- most of the 5 s budget.  Almost every document in
a real directory is valid, so the loader first asks this predicate, compiled
once per kind into nested closures, "is it valid?" and runs jsonschema (which
produces the error messages) only when the answer is no.  It supports exactly
the keywords lbctl's schemas use; compiling a schema with any other keyword
raises ``Unsupported`` and the loader then uses jsonschema for everything, so
the two can never silently disagree about what is valid.  A property test
checks they agree on generated documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = {"description", "title", "$schema", "$id", "$defs", "$comment", "examples", "default"}


class Unsupported(Exception):
    """The schema uses a keyword this compiler does not implement."""


def _is_int(x: Any) -> bool:
    return (type(x) is int) or (type(x) is float and x.is_integer())


def _is_num(x: Any) -> bool:
    return type(x) in (int, float)


_TYPES: dict[str, Check] = {
    "integer": _is_int,
    "number": _is_num,
    "string": lambda x: type(x) is str,
    "object": lambda x: type(x) is dict,
    "array": lambda x: type(x) is list,
    "boolean": lambda x: type(x) is bool,
    "null": lambda x: x is None,
}


def _scalar_set(values: list[Any]) -> frozenset[Any]:
    if not all(type(v) is str for v in values):
        raise Unsupported("enum/const with non-string values")
    return frozenset(values)


class _Compiler:
    def __init__(self, root: Mapping[str, Any], formats: Mapping[str, Callable[[str], object]]) -> None:
        self.root = root
        self.formats = formats
        self.refs: dict[str, Check] = {}

    def ref(self, pointer: str) -> Check:
        if pointer in self.refs:
            return self.refs[pointer]
        if not pointer.startswith("#/$defs/") or pointer.count("/") != 2:
            raise Unsupported(f"$ref {pointer}")
        holder: list[Check] = []
        self.refs[pointer] = lambda x: holder[0](x)  # allows recursion
        holder.append(self.compile(self.root["$defs"][pointer.rsplit("/", 1)[1]]))
        self.refs[pointer] = holder[0]
        return holder[0]

    def compile(self, schema: Any) -> Check:  # noqa: C901 - one branch per keyword
        if schema is True:
            return lambda x: True
        if schema is False:
            return lambda x: False
        checks: list[Check] = []
        unknown = set(schema) - _ANNOTATIONS - {
            "$ref", "type", "const", "enum", "properties", "additionalProperties", "required", "minimum",
            "maximum", "minLength", "maxLength", "pattern", "format", "items", "minItems", "maxItems",
            "anyOf", "if", "then", "else", "propertyNames"}
        if unknown:
            raise Unsupported(", ".join(sorted(unknown)))
        if "$ref" in schema:
            checks.append(self.ref(schema["$ref"]))
        if "type" in schema:
            t = schema["type"]
            if not isinstance(t, str):
                raise Unsupported("type lists")
            checks.append(_TYPES[t])
        if "const" in schema:
            allowed = _scalar_set([schema["const"]])
            checks.append(lambda x: type(x) is str and x in allowed)
        if "enum" in schema:
            choices = _scalar_set(schema["enum"])
            checks.append(lambda x: type(x) is str and x in choices)
        if "minimum" in schema:
            low = schema["minimum"]
            checks.append(lambda x: not _is_num(x) or x >= low)
        if "maximum" in schema:
            high = schema["maximum"]
            checks.append(lambda x: not _is_num(x) or x <= high)
        if "minLength" in schema:
            n = schema["minLength"]
            checks.append(lambda x: type(x) is not str or len(x) >= n)
        if "maxLength" in schema:
            m = schema["maxLength"]
            checks.append(lambda x: type(x) is not str or len(x) <= m)
        if "pattern" in schema:
            search = re.compile(schema["pattern"]).search
            checks.append(lambda x: type(x) is not str or search(x) is not None)
        if "format" in schema:
            fmt = self.formats.get(schema["format"])
            if fmt is not None:
                checks.append(lambda x: type(x) is not str or _format_ok(fmt, x))
        if "items" in schema:
            item = self.compile(schema["items"])
            checks.append(lambda x: type(x) is not list or all(item(i) for i in x))
        if "minItems" in schema:
            lo = schema["minItems"]
            checks.append(lambda x: type(x) is not list or len(x) >= lo)
        if "maxItems" in schema:
            hi = schema["maxItems"]
            checks.append(lambda x: type(x) is not list or len(x) <= hi)
        if any(k in schema for k in ("properties", "additionalProperties", "required", "propertyNames")):
            checks.append(self._object(schema))
        if "anyOf" in schema:
            branches = [self.compile(s) for s in schema["anyOf"]]
            checks.append(lambda x: any(b(x) for b in branches))
        if "if" in schema:
            cond = self.compile(schema["if"])
            then = self.compile(schema.get("then", True))
            other = self.compile(schema.get("else", True))
            checks.append(lambda x: then(x) if cond(x) else other(x))
        if not checks:
            return lambda x: True
        if len(checks) == 1:
            return checks[0]
        return lambda x: all(c(x) for c in checks)

    def _object(self, schema: Mapping[str, Any]) -> Check:
        props = {k: self.compile(v) for k, v in schema.get("properties", {}).items()}
        required = tuple(schema.get("required", ()))
        extra_schema = schema.get("additionalProperties", True)
        extra: Check | None = None if extra_schema is True else self.compile(extra_schema)
        names: Check | None = self.compile(schema["propertyNames"]) if "propertyNames" in schema else None

        def check(x: Any) -> bool:
            if type(x) is not dict:
                return True
            for r in required:
                if r not in x:
                    return False
            for key, value in x.items():
                sub = props.get(key)
                if sub is not None:
                    if not sub(value):
                        return False
                elif extra is not None and not extra(value):
                    return False
                if names is not None and not names(key):
                    return False
            return True
        return check


def _format_ok(fmt: Callable[[str], object], value: str) -> bool:
    try:
        fmt(value)
    except ValueError:
        return False
    return True


def compile_schema(schema: Mapping[str, Any], formats: Mapping[str, Callable[[str], object]]) -> Check:
    """A predicate equivalent to ``Draft202012Validator(schema).is_valid``; may raise ``Unsupported``."""
    return _Compiler(schema, formats).compile(schema)
