"""What to probe: one ``ProbeTarget`` per (Service, endpoint address) with a probe.

Why this exists: the probe runner and the health tracker need the probe settings
of each endpoint with every default applied, in one flat, comparable form, so a
configuration change that does not touch an endpoint's probe leaves its state
(failure count, up/down) alone.  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.desired import canonical_ip
from reconciler.model import ProbeType, Resource, ServiceSpec

HealthKey = tuple[str, str]
"""(Service name, endpoint address in ``canonical_ip`` form): the key of ``desired.Health``."""


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    service: str
    address: str  # canonical
    type: ProbeType
    port: int  # 0 for ping
    request: str | None
    response: str | None
    status: int
    interval: float
    timeout: float
    retries: int
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def key(self) -> HealthKey:
        return (self.service, self.address)


def probe_port(spec: ServiceSpec, target_port: int | None) -> int:
    """The probed port: ``probe.port`` > the endpoint's ``targetPort`` > the first port's
    ``targetPort`` > the first port."""
    if spec.probe.port is not None:
        return spec.probe.port
    if target_port is not None:
        return target_port
    first = spec.ports[0] if spec.ports else None
    if first is None:
        return 0
    return first.target_port if first.target_port is not None else first.port


def probe_targets(resources: Iterable[Resource]) -> dict[HealthKey, ProbeTarget]:
    """Every endpoint of every Service whose probe type is not ``none``."""
    out: dict[HealthKey, ProbeTarget] = {}
    for res in resources:
        spec = res.spec
        if not isinstance(spec, ServiceSpec) or spec.probe.type == "none":
            continue
        p = spec.probe
        for ep in spec.endpoints:
            address = canonical_ip(ep.address)
            if (res.name, address) in out:
                continue
            port = 0 if p.type == "ping" else probe_port(spec, ep.target_port)
            out[(res.name, address)] = ProbeTarget(
                service=res.name, address=address, type=p.type, port=port, request=p.request,
                response=p.response, status=p.status, interval=float(p.interval), timeout=float(p.timeout),
                retries=p.retries, ca_file=p.ca_file, cert_file=p.cert_file, key_file=p.key_file)
    return out
