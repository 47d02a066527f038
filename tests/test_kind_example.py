"""The instructor guide's example kind, end to end: one module outside the
kit, named in $NSLAB_KINDS, validated, brought up by the engine next to a
plain host, serving, and removed by teardown like any other node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces"),
]

DATA = Path(__file__).parent / "data" / "kinds"
TOPO = """
name: tkx
topology:
  nodes:
    sw: {kind: bridge}
    h1: {kind: linux}
    e1: {kind: echo-host, port: %s}
  links:
    - endpoints: ["h1:eth0", "sw:eth1"]
    - endpoints: ["e1:eth0", "sw:eth2"]
"""
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(20):
    s.sendto(b"nslab", (sys.argv[1], 5007))
    try:
        print(s.recvfrom(100)[0].decode()); break
    except OSError:
        pass
"""


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NSLAB_KINDS="echo_host", PYTHONPATH=str(DATA))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)  # fmt: skip


def test_an_instructors_kind_is_one_module(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO % 5007)
    code = f"""
import sys
from nslab.engine import up
with up({str(tmp_path / "t.yaml")!r}, progress=None) as lab:
    out = lab.exec("h1", [sys.executable, "-c", {CLIENT!r}, lab.ip("e1")], timeout=60).stdout
    print("ECHO", out.strip())
"""
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ECHO nslab" in r.stdout


def test_the_kind_validates_its_own_keys(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO % 70000)
    r = _run(f"from nslab.topo import load; load({str(tmp_path / 't.yaml')!r})", tmp_path)
    assert r.returncode != 0
    assert "t.yaml:" in r.stderr and "port: 70000 is not a UDP port" in r.stderr


def test_an_unknown_kinds_module_fails_clearly(monkeypatch):
    monkeypatch.setenv("NSLAB_KINDS", "nslab_no_such_kind_module")
    r = subprocess.run([sys.executable, "-c", "from nslab.kinds import all_kinds; all_kinds()"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0 and "NSLAB_KINDS names 'nslab_no_such_kind_module'" in r.stderr
