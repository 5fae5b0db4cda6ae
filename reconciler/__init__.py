"""lbctl: declarative control plane for an eBPF L4 load balancer.

The package is named ``reconciler`` because that is what it does: it makes the
live box match the YAML files.
"""

__version__ = "0.1.0"
