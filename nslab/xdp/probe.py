"""What this kernel offers for XDP and AF_XDP, tried for real on a veth pair
in a throwaway network namespace (`unshare -n`, gone when the probe exits).

`python -m nslab.xdp.probe` (as root) prints one JSON object; `capabilities()`
turns it into `nslab doctor` lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from nslab.host import Capability


def _try(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as exc:  # the probe reports every failure as text
        return str(exc).splitlines()[0][:160]


def _probe_here() -> dict[str, str]:
    """Runs inside the throwaway namespace."""
    from nslab.xdp import bpf, netlink, xsk

    res: dict[str, str] = {}
    subprocess.run(
        "ip link add xdpdoca type veth peer name xdpdocb && ip link set xdpdoca up && "
        "ip link set xdpdocb up",
        shell=True,
        check=True,
        capture_output=True,
    )
    try:
        fd = bpf.prog_load(bpf.insns_return(bpf.XDP_PASS), "nslab_probe")
    except Exception as exc:
        return {"load": str(exc).splitlines()[0]}
    res["load"] = "ok"
    for mode in ("generic", "native"):

        def once(mode: str = mode) -> None:
            netlink.set_xdp("xdpdoca", fd, mode)
            netlink.set_xdp("xdpdoca", -1, mode)

        res[mode] = _try(once)
    os.close(fd)
    for name, zc in (("afxdp_copy", False), ("afxdp_zerocopy", True)):
        res[name] = _try(lambda zc=zc: xsk.XskSocket("xdpdoca", zerocopy=zc).close())
    return res


def _btf() -> str:
    try:
        with open("/sys/kernel/btf/vmlinux", "rb") as f:
            magic = f.read(2)
    except OSError as exc:
        return f"/sys/kernel/btf/vmlinux: {exc.strerror}"
    return "ok" if magic == b"\x9f\xeb" else "/sys/kernel/btf/vmlinux is not BTF"


def probe() -> dict[str, str]:
    res = {"btf": _btf()}
    for tool in ("clang", "bpftool"):
        res[tool] = "ok" if shutil.which(tool) else f"{tool} not installed"
    if os.geteuid() != 0:
        res["load"] = "needs root"
        return res
    try:
        r = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "nslab.xdp.probe", "--inside"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        res.update(json.loads(r.stdout) if r.returncode == 0 else {"load": r.stderr[-200:]})
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        res["load"] = f"probe failed: {exc}"
    return res


def capabilities(res: dict[str, str] | None = None) -> list[Capability]:
    res = res if res is not None else probe()
    ok = lambda k: res.get(k) == "ok"  # noqa: E731
    tools = [t for t in ("clang", "bpftool") if not ok(t)]
    caps = []
    if not ok("load"):
        caps.append(
            Capability(
                "xdp",
                "missing",
                f"cannot load an XDP program: {res.get('load')}",
                "lab 06 cannot run here",
            )
        )
        return caps
    if ok("native"):
        caps.append(
            Capability(
                "xdp",
                "fallback" if tools else "real",
                "XDP native and generic on veth"
                + (f"; missing {', '.join(tools)}: `sudo make provision`" if tools else ""),
                "veth, not a NIC driver: XDP numbers are not NIC numbers"
                if not tools
                else "lab 06 needs clang and bpftool",
            )
        )
    elif ok("generic"):
        caps.append(
            Capability(
                "xdp",
                "fallback",
                f"XDP generic only on veth (native: {res.get('native')})",
                "lab 06 runs in generic mode (slower, same verdicts)",
            )
        )
    else:
        caps.append(Capability("xdp", "missing", f"no XDP on veth: {res.get('generic')}", ""))
    if ok("afxdp_zerocopy"):
        caps.append(Capability("afxdp", "real", "AF_XDP zero-copy and copy mode"))
    elif ok("afxdp_copy"):
        caps.append(
            Capability(
                "afxdp",
                "fallback",
                f"AF_XDP copy mode (zero-copy on veth: {res.get('afxdp_zerocopy', '').split(': ')[-1]})",
                "the NF toolkit's --io afxdp works; zero-copy needs a NIC driver with AF_XDP",
            )
        )
    else:
        caps.append(
            Capability(
                "afxdp",
                "missing",
                f"no AF_XDP: {res.get('afxdp_copy')}",
                "NFs use AF_PACKET (--io afpacket)",
            )
        )
    caps.append(
        Capability(
            "btf",
            "real" if ok("btf") else "missing",
            "kernel BTF (/sys/kernel/btf/vmlinux)" if ok("btf") else res["btf"],
            "" if ok("btf") else "verifier logs still show source lines (from the object's BTF)",
        )
    )
    return caps


if __name__ == "__main__":
    if "--inside" in sys.argv:
        print(json.dumps(_probe_here()))
    else:
        print(json.dumps(probe(), indent=1))
