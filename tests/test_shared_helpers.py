"""The small helpers every part of nslab shares: one percentile, one wait, one
problem format, one free port, one setns."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nslab.netns import entered, offloads_off
from nslab.ports import free_port
from nslab.problems import Problem, Problems
from nslab.stats import percentile
from nslab.topo.model import Origin
from nslab.wait import WaitTimeout, wait_until

# -- percentile: nearest rank, numpy's method="inverted_cdf" ------------------------


def test_percentile_is_numpys_inverted_cdf_on_random_data():
    rng = np.random.default_rng(10)
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 2000))
        x = rng.lognormal(size=n)  # latency-like, with a long tail
        p = float(rng.uniform(0.01, 100))
        if abs(p / 100 * n - round(p / 100 * n)) < 1e-6:
            continue  # p % of n is a whole rank: numpy's float rounding decides (see below)
        assert percentile(x, p) == np.percentile(x, p, method="inverted_cdf"), (n, p)
        checked += 1
    assert checked > 250


def test_percentile_whole_ranks_and_edges():
    # 99.9 % of 1000 values is rank 999 exactly (numpy's float product says 1000)
    assert percentile(np.arange(1, 1001), 99.9) == 999
    assert percentile(list(range(1, 101)), 50) == 50
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0  # the largest
    assert percentile([7.0], 0.1) == 7.0
    assert percentile(x := [5.0, 1.0, 4.0], 99) in x  # always a value that was observed
    assert math.isnan(percentile([], 50))
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError, match="outside"):
            percentile([1.0], bad)


def test_measure_and_serving_use_the_same_percentile():
    from nslab import measure
    from nslab.serving import stats

    assert measure.percentile is percentile and stats.percentile is percentile
    assert measure.Latencies([1.0, 2.0, 3.0, 10.0]).p90 == 10.0  # nearest rank, not 7.9


# -- wait_until ----------------------------------------------------------------------


def test_wait_until_returns_the_first_truthy_value():
    calls = []

    def third_time() -> str | None:
        calls.append(1)
        return "ready" if len(calls) >= 3 else None

    assert wait_until(third_time, timeout=5, interval=0.01, what="x") == "ready"
    assert len(calls) == 3


def test_wait_until_timeout_names_what_was_awaited():
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2 s waiting for the pod on :8080"):
        wait_until(lambda: False, timeout=0.2, interval=0.05, what="the pod on :8080")
    assert 0.2 <= time.monotonic() - t0 < 2


def test_wait_until_checks_once_more_at_the_deadline():
    start = time.monotonic()
    # true only after the deadline has nearly passed: a sleep past it must not lose it
    assert wait_until(lambda: time.monotonic() - start > 0.25, timeout=0.3, interval=10)


def test_wait_until_lets_the_predicate_stop_early():
    def exited():
        raise RuntimeError("process exited with 1")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        wait_until(exited, timeout=30)
    assert time.monotonic() - t0 < 1


def test_wait_timeout_is_a_user_error_and_a_timeout():
    from nslab.errors import NslabError

    exc = WaitTimeout("x", 1)
    assert isinstance(exc, NslabError) and isinstance(exc, TimeoutError)


# -- Problem ------------------------------------------------------------------------


def test_problem_formats_file_line_key_what_fix():
    p = Problem("lab.yaml", 7, "topology.links[1].endpoints[0]", "unknown node 's9'", "define it")
    assert str(p) == "lab.yaml:7: topology.links[1].endpoints[0]: unknown node 's9' — define it"
    assert str(Problem("f.yaml", None, "", "is empty")) == "f.yaml: is empty"
    assert str(Problem("f.yaml", 3, "", "bad YAML", "fix it")) == "f.yaml:3: bad YAML — fix it"
    # an Origin names the same place the same way
    o = Origin("t.yaml", 4, "topology.nodes.h1")
    assert str(Problem.at(o, "what")).startswith(f"{o}: ")


def test_problems_are_listed_once_in_file_order():
    ps = Problems()
    ps.add(Origin("f", 9, "b"), "late")
    ps.add(Origin("f", 2, "a"), "early", "fix")
    ps.add(Origin("f", 2, "a"), "early", "fix")  # the same problem twice: reported once
    ps.add(Origin("f", None, ""), "no line")
    assert len(ps) == 3
    assert ps.messages() == ["f: no line", "f:2: a: early — fix", "f:9: b: late"]


def test_lab_yaml_and_topology_problems_share_the_format(tmp_path):
    from nslab.labs import LabError, load_lab

    lab = tmp_path / "07-demo"
    lab.mkdir()
    (lab / "lab.yaml").write_text("title: t\ntitle: again\nlimits: {nproc: 0}\n")
    with pytest.raises(LabError) as err:
        load_lab(lab)
    f = lab / "lab.yaml"
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{f}:2: title: duplicate key 'title' (first at line 1)")
    assert " — " in lines[0]
    assert lines[1] == f"{f}:3: limits.nproc: must be a positive integer (got 0)"


# -- free_port, setns ------------------------------------------------------------------


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs root")
def test_entered_namespace_holds_the_sockets_and_comes_back_and_offloads_go_off():
    name = f"refns{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        home = os.stat("/proc/thread-self/ns/net").st_ino
        seen = {}

        def inside() -> None:  # in a thread: setns moves only the calling thread
            with entered(f"/run/netns/{name}"):
                seen["ino"] = os.stat("/proc/thread-self/ns/net").st_ino
                seen["ifaces"] = [n for _, n in socket.if_nameindex()]
            seen["back"] = os.stat("/proc/thread-self/ns/net").st_ino

        t = threading.Thread(target=inside)
        t.start()
        t.join(10)
        assert seen["ino"] != home and seen["ifaces"] == ["lo"] and seen["back"] == home
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
        with pytest.raises(FileNotFoundError), entered(f"/run/netns/{name}-missing"):
            pass
        # offloads_off works in a namespace this thread is not in
        subprocess.run(
            [
                "ip",
                "-n",
                name,
                "link",
                "add",
                "name",
                "rfa0",
                "type",
                "veth",
                "peer",
                "name",
                "rfb0",
            ],
            check=True,
        )
        offloads_off([(f"/run/netns/{name}", "rfa0")])
        if shutil.which("ethtool"):
            k = subprocess.run(
                ["ip", "netns", "exec", name, "ethtool", "-k", "rfa0"],
                capture_output=True,
                text=True,
            ).stdout
            for feature in (
                "tx-checksumming",
                "tx-tcp-segmentation",
                "generic-segmentation-offload",
            ):
                assert f"{feature}: off" in k, k
        with pytest.raises(OSError):
            offloads_off([(f"/run/netns/{name}", "nosuchif")])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


# -- interrupt_on_signals: a TERM runs the finally blocks ----------------------------


@pytest.mark.root
def test_a_terminated_benchmark_removes_its_namespaces():
    """What `timeout` or a CI runner sends (SIGTERM) ends a program that called
    interrupt_on_signals() through its `finally:`: the namespace pair it made
    is gone. Without it, killed benchmark runs had left ~400 namespaces."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    prefix = f"tsig{os.getpid() % 10000}"
    prog = (
        "import time\n"
        "from nslab.process import interrupt_on_signals\n"
        "from nslab.rdma.netns import make_pair\n"
        "interrupt_on_signals()\n"
        f"p = make_pair({prefix!r}, subnet='10.79.31')\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "finally:\n"
        "    p.remove()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert f"{prefix}a" in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout  # fmt: skip
        proc.terminate()
        assert proc.wait(10) != 0
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert prefix not in left, left
    finally:
        proc.kill()
        for ns in ("a", "b"):
            subprocess.run(["ip", "netns", "del", f"{prefix}{ns}"], capture_output=True)
