"""Limits of the datapath, in one place.

Why this exists: validation must reject a configuration the kernel maps cannot
hold *before* anything is applied, and the numbers must match the structures in
``bpf/lb_shared.h`` (a test compares them).  The sizes of the maps are not here:
they are the Datapath's ``capacities`` (``model.DatapathCapacities``, defaults
there), checked by ``config/semantic.py``.
"""

import os

MAX_ENDPOINTS_PER_SERVICE = 256
MAX_FIREWALL_RULES = 1024
MAX_SECONDARY_VIPS = 3
MAX_INTERFACES = 64
MAGLEV_MAX_TABLE_SIZE = 65521  # largest prime below 2**16 (indexes are u16)
MAX_SERVICE_NAME = 63  # bytes of a Service name the datapath stores (lb_service.name)
MAX_ALLOWED_SOURCES = 16  # allowedSources CIDRs per service (lb_service.allowed)
MAX_PORT_RANGES_PER_VIP = 8  # port-range services per (VIP, protocol) (lb_range_list)
SEL_CHUNK = 512  # selection table entries per lb_sel entry (LB_SEL_CHUNK)
WEIGHTED_TABLE_MAX = 4096  # lbctl's choice: weights are scaled down to a table this long


BOX_MEMORY_ENV = "LBCTL_BOX_MEMORY"


def box_memory() -> int:
    """The memory in bytes the default capacities are sized to: this box's physical memory,
    or ``$LBCTL_BOX_MEMORY`` (bytes) when set, e.g. for a box that shares its memory with
    other work, or a test suite that builds many datapaths at once."""
    given = os.environ.get(BOX_MEMORY_ENV, "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
