"""`nslab rdma perf` between two namespaces: both sides exit and print
perftest's columns."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from nslab.rdma.netns import make_pair
from nslab.rdma.perf import BW_COLUMNS, LAT_COLUMNS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


@pytest.fixture(scope="module")
def pair():
    p = make_pair(f"trdma{os.getpid() % 10000}p", subnet="10.79.3")
    try:
        yield p
    finally:
        p.remove()


def perf(pair, test: str, *client_args: str) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "nslab", "rdma", "perf", test, "--timeout", "20", "-p", "18599"]
    srv = subprocess.Popen(pair.exec_cmd("b", cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        time.sleep(1.0)
        cli = subprocess.run(pair.exec_cmd("a", [*cmd[:6], pair.b_ip, *cmd[6:], *client_args]), capture_output=True, text=True, timeout=60)  # fmt: skip
        sout, _ = srv.communicate(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert srv.returncode == 0, sout
    return cli.stdout, sout


def rows(text: str, header: str) -> list[list[float]]:
    lines = text.splitlines()
    i = lines.index(header)
    out = []
    for line in lines[i + 1 :]:
        if line.startswith("---"):
            break
        out.append([float(x) for x in line.split()])
    return out


def test_write_lat_prints_perftest_columns(pair):
    cli, srv = perf(pair, "write_lat", "-n", "200", "-s", "64")
    for text in (cli, srv):
        assert LAT_COLUMNS in text
        (r,) = rows(text, LAT_COLUMNS)
        size, n, tmin, tmax, typ, avg, sd, p99, p999 = r
        assert (size, n) == (64, 200)
        assert 0 < tmin <= typ <= tmax and tmin <= avg <= tmax and tmin <= p99 <= p999 <= tmax
    assert "RDMA_Write Latency Test" in cli


def test_perf_runs_on_both_data_paths(pair):
    """The Python data path's client against the native server: same columns,
    and each side's header says which data path it ran."""
    from nslab.rdma import native

    if not native.available():
        pytest.skip(f"native data path not built: {native.BUILD_ERROR}")
    cli, srv = perf(pair, "read_lat", "-n", "100", "-s", "64", "--datapath", "python")
    assert rows(cli, LAT_COLUMNS)[0][:2] == [64, 100] and rows(srv, LAT_COLUMNS)
    assert "data path python" in cli and "data path native" in srv


def test_read_bw_and_send_lat(pair):
    cli, srv = perf(pair, "read_bw", "-n", "50", "-s", "65536")
    (r,) = rows(cli, BW_COLUMNS)
    assert r[0] == 65536 and r[1] == 50 and r[3] > 0 and r[2] >= r[3] * 0.99
    assert BW_COLUMNS in srv
    cli, _ = perf(pair, "send_lat", "-n", "100", "-s", "1000")
    assert rows(cli, LAT_COLUMNS)[0][:2] == [1000, 100]


def test_client_without_server_fails_clearly(pair):
    cmd = [sys.executable, "-m", "nslab", "rdma", "perf", "write_lat", pair.b_ip, "-p", "18598", "--timeout", "2"]  # fmt: skip
    r = subprocess.run(pair.exec_cmd("a", cmd), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "cannot reach" in r.stderr and "Traceback" not in r.stderr
