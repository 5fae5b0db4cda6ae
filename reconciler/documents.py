"""Typed resources -> the YAML documents that read back as the same resources.

Why this exists: the applied-configuration record (``reconciler.applied``) and
``lbctl export`` both have to write validated ``Resource`` objects back in the
input format, such that loading the output gives equal resources.  This is the
inverse of ``config/build.py`` and uses the same field-name table
(``model.YAML_NAMES``), so a field added to the model without a YAML name
fails here (and in the tests) instead of being dropped silently.

Fields equal to their model default are left out (loading fills them in
again), with two exceptions kept for the reader: a port's ``protocol`` and a
port range's ``to``.  ICMP ports carry no ``port``.  A Datapath interface whose
hook is the Datapath's default hook is written as a bare name.  Secrets (a
BGPPeer's ``password``) are replaced by ``model.SECRET_PLACEHOLDER`` unless
``secrets=True``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from reconciler.model import (
    API_VERSION,
    SECRET_PLACEHOLDER,
    YAML_NAMES,
    BGPPeerSpec,
    DatapathSpec,
    PortRange,
    Resource,
    ServicePort,
)

Doc = dict[str, Any]

_ALWAYS = {(ServicePort, "protocol"), (PortRange, "end")}


_REQUIRED = object()  # marks a field without a default: always written


@functools.cache
def _layout(cls: type) -> tuple[tuple[str, str, Any], ...]:
    """(field, YAML name, default or ``_REQUIRED``) of each field of ``cls``, computed once."""
    names = YAML_NAMES[cls]
    out = []
    for f in dataclasses.fields(cls):
        if (cls, f.name) in _ALWAYS:
            default: Any = _REQUIRED
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        out.append((f.name, names[f.name], default))
    return tuple(out)


def _value(value: Any) -> Any:
    if type(value) in YAML_NAMES:
        return plain(value)
    if isinstance(value, tuple):
        return [_value(v) for v in value]
    return value


def plain(obj: Any) -> Doc:
    """One model object (a spec or a part of one) as a YAML mapping."""
    out: Doc = {}
    cls: Any = type(obj)
    for name, yaml_name, default in _layout(cls):
        value = getattr(obj, name)
        if default is not _REQUIRED and value == default:
            continue
        out[yaml_name] = _value(value)
    if isinstance(obj, ServicePort):
        if obj.protocol == "ICMP" and obj.port == 0:
            del out["port"]  # ICMP has no port; the schema wants it left out
        out = {k: out[k] for k in ("port", "endPort", "protocol") if k in out} | out  # the usual order
    elif isinstance(obj, DatapathSpec):
        out["interfaces"] = [i.name if i.hook == obj.hook else plain(i) for i in obj.interfaces]
    return out


def to_document(res: Resource, *, secrets: bool = False) -> Doc:
    """``res`` as an input document (apiVersion, kind, metadata, spec)."""
    meta: Doc = {"name": res.metadata.name}
    if res.metadata.labels:
        meta["labels"] = dict(res.metadata.labels)
    spec = plain(res.spec)
    if isinstance(res.spec, BGPPeerSpec) and res.spec.password is not None and not secrets:
        spec["password"] = SECRET_PLACEHOLDER
    return {"apiVersion": API_VERSION, "kind": res.kind, "metadata": meta, "spec": spec}
