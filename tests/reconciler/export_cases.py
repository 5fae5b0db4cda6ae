"""Configurations for the export round-trip tests: every kind and every field the README documents.

Why this exists: the unit tests (documents, export, the commands with
in-memory drivers) and the root tests on the real datapath must all check
the same configuration, so a field added to the README and here is checked
everywhere at once.  ``EVERYTHING`` needs interfaces ``eth0`` and ``eth1``
(``eth1`` with the XDP hook) and puts the VIPs on ``vips0``.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.model import SECRET_PLACEHOLDER

PASSWORD = "s3cret"

EVERYTHING = """\
apiVersion: lbctl.dev/v1alpha1
kind: Datapath
metadata: {name: edge-box, labels: {site: fra1}}
spec:
  interfaces: [eth0, {name: eth1, hook: xdp}]
  hook: tc
  vipInterface: vips0
---
apiVersion: lbctl.dev/v1alpha1
kind: Pool
metadata: {name: edge-v4}
spec:
  addresses: [203.0.113.0/30, 203.0.113.8-203.0.113.9]
  sharing: shared
  family: IPv4
---
apiVersion: lbctl.dev/v1alpha1
kind: Pool
metadata: {name: edge-v6}
spec: {addresses: ["2001:db8:100::/126"], sharing: exclusive}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: web, labels: {app.kubernetes.io/name: web, tier: frontend}}
spec:
  vip: 198.51.100.10
  ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 8080}
    - {name: https, port: 443, protocol: TCP}
    - {port: 30000, endPort: 30100, protocol: UDP}
  mode: onearm
  selection: maglev
  sessionTimeout: 120
  persistTimeout: 600
  maglevTableSize: 1021
  endpoints:
    - {address: 10.0.1.10, weight: 1}
    - {address: 10.0.1.11, weight: 2}
    - {address: 10.0.1.12, weight: 0, targetPort: 8081}
  allowedSources: [0.0.0.0/0, 2001:db8:ffff::/48]
  bgp: true
  withdrawWhenNoEndpoints: true
  probe: {type: http, port: 8080, request: /healthz, response: ok, interval: 5, timeout: 1, retries: 4}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  pool: edge-v4
  ports: [{port: 8443}]
  selection: persist
  persistTimeout: 3600
  endpoints: [{address: 10.0.2.10}, {address: 10.0.2.11}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: api-udp}
spec:
  pool: edge-v4
  ports: [{port: 8443, protocol: UDP}]
  selection: lc
  endpoints: [{address: 10.0.2.10}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: api6}
spec:
  pool: edge-v6
  vip: "2001:db8::80"
  ports: [{port: 80}]
  mode: fullnat
  selection: priority
  endpoints: [{address: "2001:db8:1::10", weight: 10}, {address: "2001:db8:1::11", weight: 1}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: api6-pool}
spec:
  pool: edge-v6
  ports: [{port: 80}]
  mode: dsr
  selection: hash
  endpoints: [{address: "2001:db8:1::10"}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: ping}
spec:
  vip: 198.51.100.11
  ports: [{protocol: ICMP}]
  endpoints: [{address: 10.0.1.10}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: sig}
spec:
  vip: 198.51.100.80
  secondaryVips: [198.51.100.81, 198.51.100.82]
  ports: [{port: 3868, protocol: SCTP, targetPort: 3869}]
  probe: {type: sctp}
  endpoints: [{address: 10.0.4.10}, {address: 10.0.4.11}]
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: tls}
spec:
  vip: 198.51.100.12
  ports: [{port: 443}]
  selection: priority
  probe: {type: https, request: /healthz, status: 204, caFile: /etc/lbctl/ca.pem,
          certFile: /etc/lbctl/probe.pem, keyFile: /etc/lbctl/probe.key}
  endpoints:
    - {address: 10.0.5.10, weight: 80}
    - {address: 10.0.5.11, weight: 20}
    - {address: 10.0.5.12, backup: true}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: dns}
spec:
  vip: 198.51.100.53
  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  probe: {type: udp, request: ping, response: pong}
  endpoints:
    - {address: 10.0.3.53}
    - {address: 10.0.3.54, targetPort: 5353}
    - {address: 10.0.3.55, backup: true}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: drained}
spec:
  vip: 198.51.100.99
  ports: [{port: 80}]
  endpoints: []
---
apiVersion: lbctl.dev/v1alpha1
kind: BGPConfig
metadata: {name: bgp}
spec: {localAS: 65001, routerID: 192.0.2.1, listenPort: 1179, listenAddresses: [192.0.2.1, "2001:db8::1"],
       communities: ["65001:100", "65001:200"], localPref: 200, med: 10}
---
apiVersion: lbctl.dev/v1alpha1
kind: BGPPeer
metadata: {name: upstream-a}
spec:
  address: 192.0.2.254
  remoteAS: 65000
  port: 1179
  holdTime: 9
  keepalive: 3
  multihop: 2
  password: s3cret
  description: upstream router A
---
apiVersion: lbctl.dev/v1alpha1
kind: BGPPeer
metadata: {name: upstream-b}
spec: {address: "2001:db8:ffff::1", remoteAS: 65002}
---
apiVersion: lbctl.dev/v1alpha1
kind: FirewallRule
metadata: {name: limit-dns}
spec:
  priority: 100
  match:
    source: 203.0.113.0/24
    destination: 198.51.100.53/32
    sourcePorts: {from: 1024, to: 65535}
    destinationPorts: {from: 53}
    protocol: UDP
    inInterface: eth0
  action: rateLimit
  rateLimit: {packetsPerSecond: 1000, burst: 200}
---
apiVersion: lbctl.dev/v1alpha1
kind: FirewallRule
metadata: {name: mark-all}
spec: {priority: 200, match: {}, action: mark, mark: 42}
---
apiVersion: lbctl.dev/v1alpha1
kind: FirewallRule
metadata: {name: allow-ssh}
spec: {priority: 10, match: {protocol: TCP, destinationPorts: {from: 22, to: 22}}, action: allow}
---
apiVersion: lbctl.dev/v1alpha1
kind: FirewallRule
metadata: {name: drop-bogons}
spec: {priority: 20, match: {source: 240.0.0.0/4}, action: drop}
---
apiVersion: lbctl.dev/v1alpha1
kind: FirewallRule
metadata: {name: trap-icmp}
spec: {priority: 30, match: {protocol: ICMP}, action: trap}
"""


def write(directory: Path, text: str = EVERYTHING, name: str = "all.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text, encoding="utf-8")
    return directory


def fill_secrets(text: str) -> str:
    """What the operator does with an export: put the real password where the placeholder is."""
    assert text.count(SECRET_PLACEHOLDER) == 1, "exactly one peer has a password"
    return text.replace(SECRET_PLACEHOLDER, PASSWORD)
