"""Throwaway network namespaces for NF tests and benchmarks.

Everything created carries the given prefix plus a random id
(namespaces `<prefix>-<tag>-<id>`), is recorded, and `close()` removes
exactly that: processes it started (by pid), then its namespaces (which
takes their veths and bridges with them).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from typing import Any

from nslab.netns import offloads_off


def sh(
    cmd: list[str], timeout: float = 20, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class NetnsSet:
    """A set of namespaces linked by veths; use as a context manager."""

    def __init__(self, prefix: str = "tnf"):
        self.prefix = prefix
        self.id = secrets.token_hex(2)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> NetnsSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, tag: str) -> str:
        """Create namespace `<prefix>-<tag>-<id>` with lo up; returns its name."""
        name = f"{self.prefix}-{tag}-{self.id}"
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.exec(name, ["ip", "link", "set", "lo", "up"])
        return name

    def exec(
        self, ns: str, cmd: list[str] | str, timeout: float = 20, check: bool = True, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return sh(["ip", "netns", "exec", ns, *cmd], timeout=timeout, check=check, **kw)

    def popen(self, ns: str, cmd: list[str], nsenter: bool = False, **kw: Any) -> subprocess.Popen:
        """Start cmd in ns. `nsenter=True` enters only the network namespace and
        keeps the root's /sys, like Mininet's mnexec (`ip netns exec` remounts /sys)."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        enter = ["nsenter", f"--net=/run/netns/{ns}"] if nsenter else ["ip", "netns", "exec", ns]
        p = subprocess.Popen([*enter, *cmd], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, mtu: int | None = None) -> None:
        """A veth pair between two namespaces, up, with checksum/segmentation
        offloads off (frames forwarded by raw sockets must carry final checksums)."""
        sh(
            [
                "ip",
                "link",
                "add",
                if_a,
                "netns",
                ns_a,
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                ns_b,
            ]
        )
        offloads_off([(f"/run/netns/{ns_a}", if_a), (f"/run/netns/{ns_b}", if_b)])
        for ns, i in ((ns_a, if_a), (ns_b, if_b)):
            if mtu:
                self.exec(ns, ["ip", "link", "set", i, "mtu", str(mtu)])
            self.exec(ns, ["ip", "link", "set", i, "up"])

    def bridge(self, ns: str, name: str, ports: list[str]) -> None:
        """A Linux bridge inside `ns` enslaving `ports` (no STP, forwarding at once)."""
        self.exec(
            ns,
            ["ip", "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
        )
        for p in ports:
            self.exec(ns, ["ip", "link", "set", p, "master", name])
        self.exec(ns, ["ip", "link", "set", name, "up"])

    def addr(self, ns: str, iface: str, cidr: str, gateway: str | None = None) -> None:
        self.exec(ns, ["ip", "addr", "add", cidr, "dev", iface])
        if gateway:
            self.exec(ns, ["ip", "route", "add", "default", "via", gateway])

    def stop(self, p: subprocess.Popen, timeout: float = 5) -> tuple[str, str]:
        """SIGTERM a process we started (its session), wait, SIGKILL if needed."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                out, err = p.communicate(timeout=timeout)
                return out.decode(errors="replace") if out else "", err.decode(
                    errors="replace"
                ) if err else ""
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=timeout)
        return out.decode(errors="replace") if out else "", err.decode(
            errors="replace"
        ) if err else ""

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                self.stop(p, timeout=3)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.namespaces.clear()
