"""Limits of the datapath, in one place.

Why this exists: validation must reject a configuration the kernel maps cannot
hold *before* anything is applied, and the numbers must match the map sizes in
``bpf/lb_shared.h`` (a test compares them).
"""

MAX_SERVICES = 65536  # (VIP, protocol, port range) entries in the service map
MAX_ENDPOINTS_PER_SERVICE = 256
# Endpoint counter slots (lb_be_stats / lb_be_conns): one per endpoint of every service entry.
MAX_ENDPOINT_COUNTERS = 131072
MAX_FIREWALL_RULES = 1024
MAX_SECONDARY_VIPS = 3
MAX_INTERFACES = 64
MAGLEV_MAX_TABLE_SIZE = 65521  # largest prime below 2**16 (indexes are u16)
MAX_SERVICE_NAME = 63  # bytes of a Service name the datapath stores (lb_service.name)
MAX_ALLOWED_SOURCES = 16  # allowedSources CIDRs per service (lb_service.allowed)
MAX_PORT_RANGES_PER_VIP = 8  # port-range services per (VIP, protocol) (lb_range_list)
