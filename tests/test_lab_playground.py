"""`nslab lab start` runs a lab's playground (lab 4: four pods and a
round-robin dispatcher on loopback) in the background, and `lab stop` ends
every process of it: nothing for the student to juggle with `&`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from nslab import cgroup

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="lab start needs root"),
]
PORTS = (8001, 8002, 8003, 8004, 8080)


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nslab", "lab", *args],
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_lab_start_runs_the_fleet_and_stop_ends_it():
    if any(_busy(p) for p in PORTS):
        pytest.skip(f"one of the playground's ports {PORTS} is in use here")
    up = cli("start", "04-load-balancing")
    try:
        assert up.returncode == 0, up.stderr
        with urllib.request.urlopen("http://127.0.0.1:8080/v2/dispatcher", timeout=10) as r:
            assert r.status == 200 and b"slow2" in r.read()
        assert all(_busy(p) for p in PORTS)
        assert cgroup.pids("lab4", "services") or not cgroup.available()
    finally:
        down = cli("stop", "04-load-balancing")
    assert down.returncode == 0, down.stderr
    assert not any(_busy(p) for p in PORTS), "a playground process outlived `lab stop`"
    assert "lab4" not in cgroup.labs()
