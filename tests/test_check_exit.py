"""`nslab check` exits 0 when every check passes; a skipped check worth 0
points (e.g. one that needs tc netem where the kernel lacks it) does not make
a perfect score read as a failure, while a skipped check worth points does."""

from __future__ import annotations

import os
import subprocess
import sys

import grading_support
import pytest
from grading_support import make_lab

pytestmark = pytest.mark.root
grading_env = grading_support.grading_env

CHECKS = """
import pytest

@pytest.mark.points(2)
def test_works(lab):
    \"\"\"the thing works\"\"\"

@pytest.mark.points({pts})
def test_needs_netem(lab):
    \"\"\"behaviour under loss\"\"\"
    pytest.skip("no packet loss emulation here")
"""


@pytest.mark.parametrize("pts, rc", [(0, 0), (1, 1)])
def test_exit_status_with_a_skipped_check(tmp_path, grading_env, pts, rc):
    lab = make_lab(
        tmp_path, "skp", "title: Skip\nname: sk\n", {"test_s.py": CHECKS.format(pts=pts)}
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "nslab", "check", str(lab), "--submission", str(sub)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert r.returncode == rc, r.stdout + r.stderr
    assert "SKIP" in r.stdout and "no packet loss emulation here" in r.stdout
