"""Helpers of the nslab.llm tests: a `nslab serve llm` subprocess and its metrics."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

NSLAB = str(Path(sys.executable).with_name("nslab"))


def start_server(*extra: str) -> tuple[subprocess.Popen, str]:
    argv = [NSLAB, "serve", "llm", "--model", "tiny", "--port", "0", "--block-size", "4", *extra]
    # a later --model wins (argparse), so callers may ask for smollm2
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return proc, f"http://127.0.0.1:{line.split()[1]}"
            if not line:
                break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
