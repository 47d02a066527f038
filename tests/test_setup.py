"""The set-up a newcomer relies on: provisioning is idempotent and fast the
second time, the Vagrantfile is valid, the CLI answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="provisioning needs root")
def test_second_provision_only_checks():
    """On a provisioned machine the script installs nothing (the fast path)."""
    r = subprocess.run(
        ["bash", str(REPO / "scripts/provision.sh")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "distro packages present" in r.stdout
    assert "installing" not in r.stdout, r.stdout


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is installed by provisioning")
def test_vagrantfile_validates():
    r = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = (REPO / "Vagrantfile").read_text()
    assert "ubuntu-24.04" in text and "scripts/provision.sh" in text and "forward_x11" in text


def test_doctor_json_reports_every_capability():
    r = subprocess.run(
        [sys.executable, "-m", "nslab", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    caps = json.loads(r.stdout)
    for name in ("ovs", "netem", "htb", "docker", "ansible", "rdma", "gpu", "iperf3", "tshark"):
        assert caps[name]["status"] in ("real", "fallback", "missing"), name
        assert caps[name]["detail"]


def test_cli_lists_its_verbs():
    r = subprocess.run([sys.executable, "-m", "nslab", "--help"], capture_output=True, text=True)
    for verb in ("up", "down", "status", "exec", "shell", "doctor", "graph", "export"):
        assert verb in r.stdout, verb


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the demo brings up a lab: needs root")
def test_demo_shows_the_datacenter_working():
    """What `sudo make demo` runs after provisioning."""
    r = subprocess.run(
        [sys.executable, "-m", "nslab.demo"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "all-pairs reachability: 12/12 pairs answered (0% loss)" in r.stdout
    assert "iperf3 h1 (rack 1) -> h4 (rack 2)" in r.stdout
    assert "lab demo is down" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="provisioning needs root")
def test_sudo_nslab_runs_after_provisioning():
    """`sudo nslab ...` (the docs' convention) finds a provisioned checkout's CLI
    through sudo's secure_path, even from a PATH without the venv."""
    link = Path("/usr/local/bin/nslab")
    assert link.is_symlink(), "scripts/provision.sh makes /usr/local/bin/nslab a link"
    target = Path(os.readlink(link))
    assert target.name == "nslab" and target.parent.name == "bin", target
    assert target.parent.parent.name == ".venv" and target.exists(), target
    assert link.lstat().st_uid == 0
    if shutil.which("sudo") is None:
        pytest.skip("sudo is installed by provisioning")
    r = subprocess.run(
        ["sudo", "-n", "nslab", "lab", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "00-sdn-warmup" in r.stdout
