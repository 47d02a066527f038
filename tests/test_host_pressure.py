"""nslab.host.cpu_pressure_us: the PSI counter graders use to say how
contended the CPU was while a submission was graded."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from nslab import host


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_contention_shows_in_cpu_pressure():
    if host.cpu_pressure_us() is None:
        pytest.skip("this kernel has no pressure stall information (/proc/pressure/cpu)")
    procs = [mp.Process(target=_spin, args=(0.6,)) for _ in range(3 * (os.cpu_count() or 1))]
    before = host.cpu_pressure_us()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    waited = host.cpu_pressure_us() - before
    # three spinners per CPU for 0.6 s: some of them wait nearly all the time
    assert waited > 200_000, waited
