#!/usr/bin/env bash
# Lab 6, optional: DPDK's testpmd forwarding between two namespaces over
# veth, with the net_af_packet or net_af_xdp virtual device (no NIC, no
# hugepages, no PCI). Counts what reaches dst while a sender blasts 64-byte
# frames from src for 3 s.
#
#   sudo apt-get install --no-install-recommends dpdk-dev librte-net-af-packet23 \
#        librte-net-af-xdp23 librte-mempool-ring23
#   sudo bash labs/06-kernel-bypass/dpdk-testpmd.sh net_af_packet   # or net_af_xdp
#
# Namespaces are named l6dpdk<pid>-{src,mid,dst} and removed at the end.
set -euo pipefail
VDEV=${1:-net_af_packet}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
P=l6dpdk$$
LOG=$(mktemp /tmp/l6dpdk-XXXX.log)
cleanup() { for n in src mid dst; do ip netns del "$P-$n" 2>/dev/null || true; done; }
trap cleanup EXIT
for n in src mid dst; do ip netns add "$P-$n"; ip -n "$P-$n" link set lo up; done
ip link add a0 netns "$P-src" type veth peer name eth0 netns "$P-mid"
ip link add eth1 netns "$P-mid" type veth peer name b0 netns "$P-dst"
ip -n "$P-src" link set a0 up; ip -n "$P-mid" link set eth0 up
ip -n "$P-mid" link set eth1 up; ip -n "$P-dst" link set b0 up
case "$VDEV" in
  net_af_packet|net_af_xdp) ;;
  *) echo "usage: $0 net_af_packet|net_af_xdp" >&2; exit 2 ;;
esac
# --no-huge implies legacy memory, which DPDK 22.11 refuses together with
# --in-memory: --no-shconf is what keeps it from writing shared runtime files.
# With --stats-period testpmd forwards without waiting on stdin; timeout ends it.
ip netns exec "$P-mid" timeout 30 dpdk-testpmd --no-huge -m 512 --no-shconf --no-pci \
  -l 0-1 "--vdev=${VDEV}0,iface=eth0" "--vdev=${VDEV}1,iface=eth1" -- \
  --forward-mode=io --auto-start --stats-period=1 --total-num-mbufs=16384 >"$LOG" 2>&1 &
for _ in $(seq 300); do grep -q "Port statistics" "$LOG" && break; sleep 0.1; done
grep -q "Port statistics" "$LOG" || { echo "testpmd did not start:" >&2; tail -20 "$LOG" >&2; exit 1; }
rx() { ip netns exec "$P-dst" cat /sys/class/net/b0/statistics/rx_packets; }
r0=$(rx)
ip netns exec "$P-src" "$ROOT/.venv/bin/python" "$ROOT/benchmarks/nf.py" --_send a0 64 3 >/dev/null
sleep 0.5
echo "testpmd with $VDEV forwarded $(( $(rx) - r0 )) frames in 3 s (log: $LOG)"
kill %1 2>/dev/null || true
wait 2>/dev/null || true
