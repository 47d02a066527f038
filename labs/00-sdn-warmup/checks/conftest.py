"""Helpers of lab 0's checks: the fabric's shape, read from the running
topology (so the same checks work for any number of leaves)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture
def racks(lab) -> dict[str, list[str]]:
    """leaf -> the hosts under it, in order."""
    out: dict[str, list[str]] = {}
    for host in lab.hosts():
        for _local, remote in lab.topology.neighbours(host):
            out.setdefault(remote.node, []).append(host)
    return dict(sorted(out.items()))


@pytest.fixture
def uplinks(lab) -> dict[str, dict[str, int]]:
    """leaf -> {spine: OpenFlow port of the leaf towards that spine}."""
    out: dict[str, dict[str, int]] = {}
    spines = {s for s in lab.switches() if s.startswith("sp")}
    for leaf in (s for s in lab.switches() if s.startswith("lf")):
        for local, remote in lab.topology.neighbours(leaf):
            if remote.node in spines:
                out.setdefault(leaf, {})[remote.node] = lab.ofport(leaf, local.iface)
    return out


def cross_rack_pairs(racks: dict[str, list[str]]) -> list[tuple[str, str]]:
    rack_of = {h: leaf for leaf, hs in racks.items() for h in hs}
    hosts = [h for hs in racks.values() for h in hs]
    return [(a, b) for a in hosts for b in hosts if rack_of[a] != rack_of[b]]


def ping_pairs(ping, pairs, count=3, interval_s=0.2, wait_s=2.0, workers=4):
    """{(src, dst): PingResult}, a few pairs at a time (bounded threads)."""
    with ThreadPoolExecutor(max_workers=workers) as ex:
        futs = {
            p: ex.submit(ping, p[0], p[1], count=count, interval_s=interval_s, wait_s=wait_s)
            for p in pairs
        }
        return {p: f.result() for p, f in futs.items()}


def ping_until_answered(ping, pairs, rounds=3, **kw):
    """Ping `pairs`; pairs without every reply get up to `rounds - 1` more tries,
    each longer. Retrying on a condition (a missing reply), not waiting a fixed
    time, keeps a loaded machine from costing points; a fabric that drops a
    pair's packets fails every round."""
    results = ping_pairs(ping, pairs, **kw)
    for i in range(1, rounds):
        retry = [p for p, r in results.items() if r.received < r.sent or not r.ok]
        if not retry:
            break
        results.update(ping_pairs(ping, retry, count=5, interval_s=0.5, wait_s=2.0 + 2 * i))
    return results


def host_port(lab, host: str) -> tuple[str, int]:
    """(leaf, OpenFlow port) where `host` is plugged in."""
    local, remote = next(iter(lab.topology.neighbours(host)))
    return remote.node, lab.ofport(remote.node, remote.iface)


def tx_packets(openflow, lab, hosts) -> dict[str, int]:
    """Packets each host's leaf port has sent towards it (OVS port counters)."""
    out = {}
    for h in hosts:
        leaf, port = host_port(lab, h)
        out[h] = openflow.ports(leaf)[str(port)].tx_packets
    return out


def settle() -> None:
    """OVS refreshes flow and port counters from the datapath about every
    0.5 s: wait a little before and after reading them."""
    time.sleep(1.2)
