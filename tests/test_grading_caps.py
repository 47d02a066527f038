"""Sandboxed services that keep a few capabilities (lab.yaml `caps:`), e.g.
lab 1's NFs, which need raw sockets but must not run as root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nslab.grading import sandbox
from nslab.labs import LabError, load_lab

USER = "tlab1cap"
RAW = "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('raw ok')"
CAPS = (
    "import os; s = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines() "
    "if ':\\t' in l); print(os.getuid(), s['CapEff'].strip(), s['CapBnd'].strip())"
)
NET_RAW, NET_ADMIN = 1 << 13, 1 << 12


def _lab(tmp_path: Path, service: str) -> Path:
    (tmp_path / "lab.yaml").write_text(f"title: t\nname: t\nservices:\n  - {service}\n")
    return tmp_path


def test_caps_are_validated(tmp_path):
    with pytest.raises(LabError, match=r"lab.yaml:4: services.0.caps: must be a list"):
        load_lab(_lab(tmp_path, "{name: a, command: x, caps: [sys_admin]}"))
    with pytest.raises(LabError, match=r"services.0.caps: only for user: student"):
        load_lab(_lab(tmp_path, "{name: a, command: x, user: grader, caps: [net_raw]}"))
    spec = load_lab(_lab(tmp_path, "{name: a, command: x, caps: [net_raw, net_admin]}"))
    assert spec.services[0].caps == ["net_raw", "net_admin"]


@pytest.fixture
def user():
    if os.geteuid() != 0:
        pytest.skip("needs root (creates a user, switches to it)")
    sandbox.ensure_user(USER)
    yield USER
    sandbox.remove_user(USER)


def _run(user: str, code: str, caps: str | None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "nslab.grading.sandbox", "--user", user, "--cwd", "/"]
    if caps:
        cmd += ["--caps", caps]
    return subprocess.run(
        [*cmd, "--", sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )


@pytest.mark.root
def test_ambient_caps_give_raw_sockets_and_nothing_more(user):
    uid = sandbox.pwd.getpwnam(user).pw_uid
    plain = _run(user, RAW, None)
    assert plain.returncode != 0 and "PermissionError" in plain.stderr
    r = _run(user, RAW, "net_raw,net_admin")
    assert r.returncode == 0 and "raw ok" in r.stdout, r.stderr
    r = _run(user, CAPS, "net_raw,net_admin")
    got_uid, eff, bnd = r.stdout.split()
    assert int(got_uid) == uid  # not root
    assert int(eff, 16) == NET_RAW | NET_ADMIN
    assert int(bnd, 16) == NET_RAW | NET_ADMIN  # setuid programs cannot gain more
