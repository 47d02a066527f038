"""What this host can do: probes behind `nslab doctor` and the engine's choices.

Each capability reports `real`, `fallback` or `missing` with a one-line reason
and what it means for the labs. Probes are side-effect free: kernel features
are tried inside a throwaway network namespace (`unshare -n`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Capability:
    name: str
    status: str  # real | fallback | missing
    detail: str
    impact: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _run(cmd: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _qdisc_works(kind_args: str) -> bool:
    """Try a qdisc on loopback of a throwaway namespace; nothing persists."""
    if not shutil.which("unshare") or not shutil.which("tc"):
        return False
    r = _run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && tc qdisc add dev lo root {kind_args}"]
    )
    return r.returncode == 0


@functools.cache
def has_netem() -> bool:
    return _qdisc_works("netem delay 1ms")


@functools.cache
def has_htb() -> bool:
    return _qdisc_works("htb default 1")


@functools.cache
def ovs_kernel_datapath() -> bool:
    """True when the openvswitch kernel module is loaded (or loads)."""
    if Path("/sys/module/openvswitch").exists():
        return True
    if shutil.which("modprobe") and _run(["modprobe", "-q", "openvswitch"]).returncode == 0:
        return Path("/sys/module/openvswitch").exists()
    return False


def ovs_running() -> bool:
    return _run(["ovs-vsctl", "--timeout=3", "show"]).returncode == 0


def docker_running() -> bool:
    docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
    return _run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=15).returncode == 0


def gpu_present() -> bool:
    return bool(shutil.which("nvidia-smi")) and _run(["nvidia-smi", "-L"]).returncode == 0


def cpu_pressure_us() -> int | None:
    """Microseconds, since boot, during which some runnable task waited for a
    CPU (the kernel's pressure stall information, /proc/pressure/cpu), or None
    where the kernel has no PSI. Differences over an interval say how
    contended the machine was in it, whoever caused it."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        return int(dict(kv.split("=") for kv in some[1:])["total"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def probe() -> list[Capability]:
    """Every capability the labs care about, most fundamental first."""
    caps: list[Capability] = []
    ovs = ovs_running()
    if not ovs:
        caps.append(
            Capability(
                "ovs",
                "missing",
                "ovs-vsctl does not answer",
                "ovs-bridge nodes cannot start: run `sudo make provision`",
            )
        )
    elif ovs_kernel_datapath():
        caps.append(Capability("ovs", "real", "Open vSwitch with the kernel datapath"))
    else:
        caps.append(
            Capability(
                "ovs",
                "fallback",
                "no openvswitch kernel module: userspace datapath (netdev), offloads off on veths",
                "OpenFlow behaves the same; throughput ~1-2 Gbit/s instead of 10+",
            )
        )
    caps.append(
        Capability(
            "htb",
            "real" if has_htb() else "missing",
            "tc HTB (link bw)" if has_htb() else "sch_htb not available",
            "" if has_htb() else "links with `bw` cannot be shaped",
        )
    )
    if has_netem():
        caps.append(Capability("netem", "real", "tc netem (delay, jitter, loss)"))
    else:
        caps.append(
            Capability(
                "netem",
                "missing",
                "sch_netem not in this kernel",
                "links with delay/jitter/loss fail at `up` unless --allow-degraded; "
                "checks that need them skip with this reason",
            )
        )
    caps.append(
        Capability(
            "docker",
            "real" if docker_running() else "missing",
            "Docker engine answers" if docker_running() else "Docker engine not running",
            ""
            if docker_running()
            else "container nodes (NFs, pods) cannot start: run `sudo make provision`",
        )
    )
    caps.append(_ansible_capability())
    caps.append(_cgroup_capability())
    caps.append(_sandbox_capability())
    caps.append(_rdma_capability())
    if gpu_present():
        from nslab.serving.devices import cuda_available

        ok, why = cuda_available()
        caps.append(
            Capability("gpu", "real", f"NVIDIA GPU visible to nvidia-smi; cuda pods: {why}")
            if ok
            else Capability(
                "gpu",
                "fallback",
                f"a GPU exists but {why}",
                "pods with device: cuda cannot run; use cpu or sim-gpu",
            )
        )
    else:
        caps.append(
            Capability(
                "gpu",
                "fallback",
                "no GPU: pods use cpu or the sim-gpu profile",
                "inference timing comes from calibrated profiles",
            )
        )
    for tool in ("iperf3", "tshark", "tcpdump", "ethtool"):
        path = shutil.which(tool)
        caps.append(
            Capability(
                tool,
                "real" if path else "missing",
                path or f"{tool} not on PATH",
                "" if path else "run `sudo make provision`",
            )
        )
    return caps


def _ansible_capability() -> Capability:
    """Ansible configures lab 1's NF containers (nslab.nf.apply)."""
    import importlib.util
    import sys

    runner = importlib.util.find_spec("ansible_runner") is not None
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or (
        shutil.which("ansible-playbook")
    )
    if runner and playbook:
        return Capability("ansible", "real", f"ansible-runner and {playbook} (nslab.nf.apply)")
    return Capability(
        "ansible",
        "fallback",
        "ansible-runner or ansible-playbook missing",
        "lab 1's NFs install their nftables kernel guard themselves instead of Ansible; "
        "`nslab nf apply` fails: run `sudo make provision`",
    )


def _cgroup_capability() -> Capability:
    from nslab import cgroup

    if not cgroup.available():
        return Capability(
            "cgroup",
            "missing",
            cgroup.describe(),
            "teardown finds processes by their NSLAB_LAB label and the student user; "
            "no per-submission memory/pids limits beyond rlimits",
        )
    if cgroup.limits_backend() == "v2":
        return Capability("cgroup", "real", cgroup.describe())
    return Capability(
        "cgroup",
        "fallback",
        cgroup.describe(),
        "same ownership and kill; limits and figures from cgroup v1"
        if cgroup.limits_backend() == "v1"
        else "ownership and kill only: no memory/pids limits by cgroup",
    )


def _sandbox_capability() -> Capability:
    if shutil.which("bwrap"):
        return Capability(
            "sandbox",
            "real",
            "bubblewrap: student code sees the OS, the kit's packages and its work dir only",
        )
    return Capability(
        "sandbox",
        "missing",
        "bubblewrap (bwrap) not installed",
        "student code runs as its own user with rlimits but sees the host's files: "
        "run `sudo make provision` before grading",
    )


def _rdma_capability() -> Capability:
    try:
        from nslab.rdma import provider_info  # written with the RDMA issue
    except ImportError:
        provider_info = None
    if provider_info is not None:
        info = provider_info()
        return Capability("rdma", info["status"], info["detail"], info.get("impact", ""))
    if Path("/sys/class/infiniband").is_dir() and os.listdir("/sys/class/infiniband"):
        return Capability("rdma", "real", "an RDMA device exists (rxe or hardware)")
    return Capability(
        "rdma",
        "fallback",
        "no RDMA device (rdma_rxe absent)",
        "RDMA labs use the userspace RoCEv2 provider",
    )
