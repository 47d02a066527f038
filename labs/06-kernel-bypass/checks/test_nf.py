"""Part 3: one NF moved to AF_XDP, measured against AF_PACKET and the kernel.

The student's nf_afxdp.py runs sandboxed on node nf (CAP_NET_RAW,
CAP_NET_ADMIN, CAP_BPF: its AF_XDP sockets and their redirect program),
once with --io afxdp and once with --io afpacket. The grader sends UDP from
src to dst through it and counts what dst's sockets received; then it
measures frames per second through the NF (dst's interface counters) and
the NF's CPU time (/proc), and the same through a kernel bridge in nf with
no student process running."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import SBIN_PATH, offloads_off
from test_filter import RECV, SEND

BLAST = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, port, end = (sys.argv[1], int(sys.argv[2])), b"x" * 18, time.time() + float(sys.argv[3])
n = 0
while time.time() < end:
    for _ in range(64):
        try:
            s.sendto(port, dst)
        except OSError:
            pass
    n += 64
print(n)
"""


def _cpu_s(pid: int) -> float:
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    import os

    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _rx(lab) -> int:
    d = json.loads(lab.exec("dst", ["ip", "-s", "-j", "link", "show", "dev", "eth0"]).stdout)[0]
    return d["stats64"]["rx"]["packets"]


def _measure(lab, seconds: float = 1.5, pid: int | None = None) -> tuple[float, float]:
    """(frames/s arriving at dst, NF CPU seconds per second)"""
    rx0, cpu0 = _rx(lab), _cpu_s(pid) if pid else 0.0
    t0 = time.monotonic()
    lab.exec("src", [sys.executable, "-c", BLAST, lab.ip("dst"), "9", str(seconds)], timeout=30)
    time.sleep(0.2)
    dt = time.monotonic() - t0
    pps = (_rx(lab) - rx0) / dt
    cpu = ((_cpu_s(pid) - cpu0) / dt) if pid else 0.0
    return pps, cpu


@pytest.fixture(scope="session")
def nf_runs(lab, rng):
    offloads_off(lab, "src")
    offloads_off(lab, "dst")
    lab.exec(
        "dst",
        [
            "ip",
            "neigh",
            "replace",
            lab.ip("src"),
            "lladdr",
            json.loads(lab.exec("src", ["ip", "-j", "link", "show", "eth0"]).stdout)[0]["address"],
            "dev",
            "eth0",
        ],
    )
    blocked, allowed = rng.randrange(20000, 30000), rng.randrange(30000, 40000)
    out: dict = {"blocked": blocked, "allowed": allowed}
    for io in ("afxdp", "afpacket"):
        log = lab.logs_dir / f"nf-{io}.log"
        argv = lab.student_command(
            [sys.executable, "nf_afxdp.py", "eth0", "eth1", "--block", str(blocked), "--io", io],
            caps=("net_raw", "net_admin", "bpf"),
        )
        with open(log, "w") as f:
            proc = lab.popen(
                "nf",
                argv,
                env=lab.student_env({"PATH": SBIN_PATH}),
                cwd=lab.submission,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        res: dict = {"error": ""}
        end = time.monotonic() + 20
        while "forwarding on" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > end:
                res["error"] = (
                    f"nf_afxdp.py --io {io} did not start; its last output:\n"
                    + "\n".join(log.read_text(errors="replace").splitlines()[-8:])
                )
                break
            time.sleep(0.1)
        if not res["error"]:
            recv = lab.popen(
                "dst",
                [sys.executable, "-c", RECV, str(allowed), str(blocked), "4"],
                stdout=subprocess.PIPE,
                text=True,
            )
            recv.stdout.readline()
            lab.exec(
                "src", [sys.executable, "-c", SEND, lab.ip("dst"), str(allowed), str(blocked), "40"]
            )
            o, _ = recv.communicate(timeout=10)
            res["allowed"], res["blocked"] = (int(x) for x in o.split())
            res["pps"], res["cpu"] = _measure(lab, pid=proc.pid)
        lab.kill_student()
        proc.wait(timeout=10)
        out[io] = res
    # the kernel path: a bridge in nf, no student process left
    lab.exec(
        "nf",
        "ip link add br6 type bridge && ip link set eth0 master br6 && "
        "ip link set eth1 master br6 && ip link set br6 up",
    )
    try:
        out["kernel"], _ = _measure(lab)
    finally:
        lab.exec("nf", "ip link del br6")
    return out


def _check(nf_runs, io):
    r = nf_runs[io]
    assert not r["error"], r["error"]
    assert r["blocked"] == 0, (
        f"--io {io}: UDP port {nf_runs['blocked']} must be dropped; dst received {r['blocked']}"
    )
    assert r["allowed"] >= 38, (
        f"--io {io}: 40 datagrams to port {nf_runs['allowed']}; dst received {r['allowed']}"
    )


@pytest.mark.points(2)
def test_nf_over_afxdp(nf_runs):
    """the NF over AF_XDP drops the blocked port and forwards the rest"""
    _check(nf_runs, "afxdp")


@pytest.mark.points(1)
def test_nf_over_afpacket(nf_runs):
    """the same NF over AF_PACKET does the same"""
    _check(nf_runs, "afpacket")


@pytest.mark.points(1)
def test_nf_measured(nf_runs, record):
    """frames per second through the NF on both backends and through the kernel"""
    for io in ("afxdp", "afpacket"):
        r = nf_runs[io]
        if not r["error"] and "pps" in r:
            record.value(f"{io} pps", round(r["pps"]), "frames/s")
            record.value(f"{io} NF CPU", round(r["cpu"], 2), "CPU-s/s")
    record.value("kernel bridge pps", round(nf_runs["kernel"]), "frames/s")
    record.note("veth on a shared machine: compare the ratios, not the absolute numbers")
    for io in ("afxdp", "afpacket"):
        assert not nf_runs[io]["error"], nf_runs[io]["error"]
        assert nf_runs[io]["pps"] > 1000, (
            f"--io {io}: {nf_runs[io]['pps']:.0f} frames/s through the NF"
        )
