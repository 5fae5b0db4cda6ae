"""Where lbctl keeps things on a box, and the protocol numbers it speaks: each fact once.

Why this exists: the CLI's defaults, the drivers, the daemon, the demo and the
tests all need the same paths and names (the configuration directory, the state
directory, the bpffs pin root, the VIP interface) and the same protocol table.
Stated here once, below every other module, a change reaches all of them and no
two copies can drift apart.  Defaults of the configuration *resources* stay in
``reconciler.model`` (which takes the VIP interface from here).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

# Where things live (docs/architecture.md, "Where state lives"). With --netns NAME the
# state dir and the pin root get a NAME subdirectory each.
DEFAULT_CONFIG_DIR: Final = "/etc/lbctl/conf.d"
DEFAULT_STATE_DIR: Final = "/var/lib/lbctl"
BPFFS: Final = "/sys/fs/bpf"
DEFAULT_PIN_ROOT: Final = f"{BPFFS}/lbctl"

# lbctl's interface the VIPs' local routes go through (Datapath.spec.vipInterface).
DEFAULT_VIP_INTERFACE: Final = "lbctl0"

# IANA protocol numbers of the protocols a Service can name (record spelling: lower case).
PROTO_NUMBERS: Final[Mapping[str, int]] = MappingProxyType(
    {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58})
PROTO_NAMES: Final[Mapping[int, str]] = MappingProxyType({n: p for p, n in PROTO_NUMBERS.items()})

# The datapath's files lbctl needs at run time: the compiled object and the header its
# map layouts are declared in (cffi reads it). `make build` copies both into the package
# (reconciler/datapath/, shipped as package data); a Debian package puts them in the system
# directory; LBCTL_DATAPATH_DIR names another directory holding both.
DATAPATH_OBJECT: Final = "lb_kern.o"
DATAPATH_HEADER: Final = "lb_shared.h"
DATAPATH_PACKAGE_DIR: Final = "datapath"
DATAPATH_SYSTEM_DIR: Final = "/usr/lib/lbctl"
DATAPATH_DIR_ENV: Final = "LBCTL_DATAPATH_DIR"
