#!/usr/bin/env bash
# The lbctl demo (`sudo make demo`): a load balancer box, a client and three HTTP
# backends in network namespaces; lbctl plans and applies examples/demo/, the
# client's requests spread over the backends; one endpoint is edited away and
# the traffic moves.  The topology stays up afterwards; `sudo make demo-down`
# (this script with `down`) removes it.  Running the demo again starts afresh.
#
# Usage (root, from anywhere):  examples/demo/run.sh [up|down]
# Environment: LBCTL_DEMO_PREFIX (namespace prefix, default lbdemo), and lbctl's
# own LBCTL_PIN_ROOT / LBCTL_STATE_DIR (the tests use them to stay apart).
#
# Only lbctl enters the LB namespace itself (setns on a thread, never
# `ip netns exec`, which would hide the host's bpffs); the client side uses
# `ip netns exec ... curl`.  Traffic goes only to addresses inside the demo's
# namespaces.
set -Eeuo pipefail

cd "$(dirname "$0")/../.."
PREFIX=${LBCTL_DEMO_PREFIX:-lbdemo}
LB=$PREFIX-lb
CLIENT=$PREFIX-cl
LBCTL=.venv/bin/lbctl
PY=.venv/bin/python
VIP=10.250.0.1
REQUESTS=12
REMOVED=10.201.2.2 # the endpoint the demo edits away (backend2)

if [ -t 1 ]; then B=$'\e[1m' R=$'\e[0m'; else B='' R=''; fi
section() { printf '\n%s== %s%s\n' "$B" "$*" "$R"; }
run() { printf '$ %s\n' "$*"; "$@"; }
die() {
    echo "demo: FAILED: $*" >&2
    echo "demo: the topology is left for inspection; remove it with: sudo make demo-down" >&2
    exit 1
}
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

lbctl() { "$LBCTL" "$@" --netns "$LB"; }
# The topology helper imports tests.testbed (the test tree is not installed): the repository
# root goes on its path.
demo_py() { PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" examples/demo/demo.py "$@"; }

teardown() {
    if ip netns list | awk '{print $1}' | grep -qx -- "$LB"; then
        lbctl down >/dev/null || echo "demo: lbctl down --netns $LB failed; removing the namespace anyway" >&2
    fi
    demo_py down "$PREFIX"
}

# Send $REQUESTS HTTP requests from the client to the VIP; print who answered,
# four per line, then a summary line "<label>: backend0=N backend1=N ...".
traffic() {
    local label=$1 i out line='' summary=''
    declare -A count=()
    for ((i = 1; i <= REQUESTS; i++)); do
        out=$(ip netns exec "$CLIENT" curl -sS --max-time 3 "http://$VIP/" 2>&1) ||
            die "request $i to http://$VIP/ from $CLIENT failed: $out"
        count[$out]=$((${count[$out]:-0} + 1))
        line+=$(printf '  #%-2d -> %-9s' "$i" "$out")
        if ((i % 4 == 0)); then echo "$line"; line=''; fi
    done
    [ -z "$line" ] || echo "$line"
    for b in $(printf '%s\n' "${!count[@]}" | sort); do summary+=" $b=${count[$b]}"; done
    echo "$label:$summary"
    LAST=$summary
}

[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, bpffs): run 'sudo make demo'" >&2; exit 1; }
[ -x "$LBCTL" ] || die "$LBCTL is missing: run 'sudo make demo' (it sets up .venv and builds the datapath)"

if [ "${1:-up}" = down ]; then
    section "Removing the demo ($PREFIX-*)"
    teardown
    exit 0
fi

[ -f reconciler/datapath/lb_kern.o ] || die "the datapath is not built (reconciler/datapath/lb_kern.o): run 'make build'"
command -v curl >/dev/null || die "curl is missing: run 'sudo make setup'"

section "Clean slate: removing any previous demo"
teardown

section "Topology: network namespaces with private addresses (tests/testbed.py)"
echo "  client --- cl0 [LB box: eBPF datapath on tc] be0..be2 --- backend0..2"
demo_py up "$PREFIX" || die "could not build the topology"

section "Configuration: examples/demo/"
grep -v '^#' examples/demo/10-web.yaml | sed 's/^/  /'
echo "  (+ 00-datapath.yaml: attach to cl0 be0 be1 be2; 20-echo.yaml: UDP 53 -> 5353 on the same VIP)"

section "lbctl plan: what would change on the box"
run "$LBCTL" plan examples/demo --netns "$LB"

section "lbctl apply"
echo "\$ $LBCTL apply examples/demo --netns $LB"
out=$(lbctl apply examples/demo 2>&1) || { echo "$out"; die "lbctl apply failed"; }
grep -E '^(Apply complete|\(parse)' <<<"$out" | sed 's/^/  /'

section "Traffic: $REQUESTS HTTP requests from the client to http://$VIP/"
traffic "backends answering before the edit"
for b in backend0 backend1 backend2; do
    [[ " $LAST " == *" $b="* ]] || die "$b never answered before the edit (got:$LAST)"
done
echo "UDP echo on $VIP:53:"
demo_py udp "$PREFIX" 3

section "Edit: remove endpoint $REMOVED (backend2) from Service web, in a working copy"
WORK=$(mktemp -d /tmp/lbctl-demo.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp examples/demo/*.yaml "$WORK/"
sed -i "/address: ${REMOVED//./\\.}}/d" "$WORK/10-web.yaml"
diff -u --label examples/demo/10-web.yaml --label "$WORK/10-web.yaml" examples/demo/10-web.yaml \
    "$WORK/10-web.yaml" | sed 's/^/  /' || true

section "lbctl plan: the field-level change"
run "$LBCTL" plan "$WORK" --netns "$LB"

section "lbctl apply"
echo "\$ $LBCTL apply $WORK --netns $LB"
out=$(lbctl apply "$WORK" 2>&1) || { echo "$out"; die "lbctl apply of the edit failed"; }
grep -E '^(Apply complete|\(parse)' <<<"$out" | sed 's/^/  /'

section "Traffic again: the removed backend gets nothing"
traffic "backends answering after the edit"
[[ " $LAST " != *" backend2="* ]] || die "backend2 still answered after it was removed (got:$LAST)"
[[ " $LAST " == *" backend0="* && " $LAST " == *" backend1="* ]] || die "traffic did not spread (got:$LAST)"

section "lbctl get services"
run "$LBCTL" get services --netns "$LB"
section "lbctl get endpoints"
run "$LBCTL" get endpoints --netns "$LB"

section "Done: the demo box keeps running"
cat <<EOF
  The datapath is pinned: traffic flows with no lbctl process running.  Try it:
    sudo ip netns exec $CLIENT curl -s http://$VIP/
    sudo $LBCTL plan examples/demo --netns $LB     # the edit is live; this plan puts backend2 back
    sudo $LBCTL get conntrack --netns $LB
  Tear it all down (datapath, pins, namespaces, backend servers):
    sudo make demo-down
EOF
