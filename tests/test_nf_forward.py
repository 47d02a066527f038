"""A pass-through NF built with the toolkit forwards real pings between two
namespaces (and nothing passes without it); its report counts them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from nslab.nf.netns import NetnsSet
from nslab.wait import WaitTimeout, wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, raw sockets)"),
]

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "nslab/nf/configs/passthrough.click"


@pytest.fixture
def line():
    """a (10.9.0.1) -- fwd (eth0 | eth1) -- b (10.9.0.2); fwd has no addresses."""
    with NetnsSet("tnf") as n:
        a, f, b = n.ns("a"), n.ns("fwd"), n.ns("b")
        n.veth(a, "eth0", f, "eth0")
        n.veth(f, "eth1", b, "eth0")
        n.addr(a, "eth0", "10.9.0.1/24")
        n.addr(b, "eth0", "10.9.0.2/24")
        yield n, a, f, b


def ping(n, ns, dst, count=3) -> int:
    r = n.exec(ns, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", dst], check=False, timeout=15)
    for word in r.stdout.split(","):
        if "received" in word:
            return int(word.split()[0])
    return 0


# nsenter enters only the network namespace (like Mininet's mnexec): /sys then
# shows the root namespace's interfaces, so the NF must not read MACs from /sys
@pytest.mark.parametrize("nsenter", [False, True], ids=["ip-netns-exec", "nsenter"])
def test_passthrough_forwards_pings_and_reports(line, tmp_path, nsenter):
    n, a, f, b = line
    assert ping(n, a, "10.9.0.2", count=1) == 0  # nothing bridges the two links yet
    rep = tmp_path / "fwd.report"
    p = n.popen(
        f,
        [
            sys.executable,
            "-m",
            "nslab.nf",
            str(CONFIG),
            "a=eth0",
            "b=eth1",
            "--name",
            "fwd",
            "--report",
            str(rep),
        ],
        cwd=ROOT,
        nsenter=nsenter,
    )
    # the NF is up once the first frame passes; pings then all come back
    try:
        wait_until(lambda: ping(n, a, "10.9.0.2", count=1) == 1, 10, what="a ping through fwd")
    except WaitTimeout as exc:
        pytest.fail(f"{exc}; the NF said: {n.stop(p)}")
    assert ping(n, a, "10.9.0.2", count=5) == 5
    out, err = n.stop(p)
    assert p.returncode == 0, err
    data = json.loads(rep.read_text())
    assert "a_to_b" in (rep.with_name("fwd.report.txt")).read_text()
    # at least the 5 counted echo requests went a->b and 5 replies b->a (ARP and the
    # warm-up pings add a few more)
    assert data["classes"]["a_to_b"]["packets"] >= 5
    assert data["classes"]["b_to_a"]["packets"] >= 5
    assert data["interfaces"]["eth0"]["in_packets"] == data["classes"]["a_to_b"]["packets"]
    assert data["interfaces"]["eth1"]["out_packets"] == data["classes"]["a_to_b"]["packets"]
    assert data["total_drops"] == 0
    assert "NF report: fwd" in out
