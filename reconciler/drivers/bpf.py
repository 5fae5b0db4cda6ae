"""The bpf driver: services, endpoint sets and attachments as eBPF maps and programs.

Why this exists: it is the only code that turns ``service``, ``endpoints`` and
``attach`` records into kernel state (and back).  It loads ``lb_kern.o`` through
the small libbpf binding, pins every map and program under a pin root
(``/sys/fs/bpf/lbctl`` or ``/sys/fs/bpf/lbctl/NETNS``) and reuses pinned maps
on restart, so flows and counters survive lbctl restarts and traffic keeps
flowing while no lbctl process runs.

Kernel-internal ids are this module's business and are always derived from the
maps, so a restarted process finds them:

* service id: key of ``lb_conf`` (an ``lb_service`` that remembers its natural
  key); allocated lowest-free when a service or endpoint set first appears;
* endpoint stat id: ``lb_backend.stat_id``, index of ``lb_be_stats`` /
  ``lb_be_conns``; kept for an endpoint (address, port) across updates;
* slot: each endpoint set is written to the *inactive* slot of ``lb_backends``
  / ``lb_sel`` and then published by replacing ``lb_conf`` (one RCU swap), so a
  packet never sees a half-written list.

The driver is assembled from parts that each own one thing: ``bpf_layout``
(the layout, from lb_shared.h), ``bpf_codec`` (entries as bytes), ``bpf_pins``
(loading and pins), ``bpf_read`` / ``bpf_apply`` (services and endpoint sets),
``bpf_attach`` (programs on hooks), ``bpf_firewall`` (the rule tables), ``bpf_observe`` (counters, flows),
``bpf_expire`` (ending idle flows) and
``bpf_teardown`` (``lbctl down``).
"""

from __future__ import annotations

from reconciler.drivers.bpf_apply import FLUSH_BYTES, BpfApply
from reconciler.drivers.bpf_codec import weighted_table
from reconciler.drivers.bpf_expire import BpfExpire
from reconciler.drivers.bpf_firewall import BpfFirewall
from reconciler.drivers.bpf_observe import BpfObserve, Flow
from reconciler.drivers.bpf_pins import PROGS, pin_root_for
from reconciler.drivers.bpf_teardown import BpfTeardown

__all__ = ["FLUSH_BYTES", "PROGS", "BpfDriver", "Flow", "pin_root_for", "weighted_table"]


class BpfDriver(BpfApply, BpfFirewall, BpfObserve, BpfExpire, BpfTeardown):
    """Driver for record kinds ``service``, ``endpoints``, ``attach`` and ``firewall``."""

    kinds = frozenset({"service", "endpoints", "attach", "firewall"})
