"""RDMA for nslab: a verbs-style API over two providers.

- "soft": a userspace RoCEv2 RC transport (nslab.rdma.soft) that runs inside
  any network namespace and puts real RoCEv2 packets on the wire.
- "rxe": the kernel's SoftRoCE (or a real RNIC) through pyverbs
  (nslab.rdma.rxe), where an RDMA device exists and pyverbs imports.

Lab code imports the verbs names from `nslab.rdma.api` (the provider chosen by
`provider_info()`, overridable with NSLAB_RDMA_PROVIDER=soft|rxe) and the
constants from `nslab.rdma.enums`, so it reads like pyverbs code.
"""

from __future__ import annotations

import os
from pathlib import Path

from nslab.rdma import native as _native  # registers the native data path with soft


def _rdma_devices() -> list[str]:
    try:
        return sorted(p.name for p in Path("/sys/class/infiniband").iterdir())
    except OSError:
        return []


def _in_root_netns() -> bool:
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return True


def provider_info() -> dict:
    """Which RDMA provider nslab uses here and why, for `nslab doctor`:
    {"status": "real"|"fallback"|"missing", "provider": "rxe"|"soft"|None, "detail": str,
    "datapath": "native"|"python"|None}; the soft provider's detail ends with
    which data path it uses (nslab.rdma.native.info())."""
    info = _provider_info()
    if info["provider"] == "soft":
        dp = _native.info()
        info["datapath"] = dp["datapath"]
        info["detail"] += f"; data path: {dp['datapath']} ({dp['detail']})"
    else:
        info["datapath"] = None
    return info


def _provider_info() -> dict:
    forced = os.environ.get("NSLAB_RDMA_PROVIDER", "").strip().lower()
    devs = _rdma_devices()
    try:
        import pyverbs  # noqa: F401

        pyverbs_ok, why_not = True, ""
    except Exception as exc:  # ImportError, or a broken rdma-core install
        pyverbs_ok, why_not = False, f"pyverbs does not import ({type(exc).__name__}: {exc})"
    if forced == "soft":
        return {"status": "fallback", "provider": "soft", "detail": "NSLAB_RDMA_PROVIDER=soft: userspace RoCEv2 (UDP 4791) chosen by the user"}  # fmt: skip
    if devs and pyverbs_ok and (_in_root_netns() or forced == "rxe"):
        return {"status": "real", "provider": "rxe", "detail": f"RDMA device(s) {', '.join(devs)} via pyverbs"}  # fmt: skip
    if forced == "rxe":
        reason = why_not or ("no RDMA device in /sys/class/infiniband" if not devs else "")
        return {"status": "missing", "provider": None, "detail": f"NSLAB_RDMA_PROVIDER=rxe but {reason}"}  # fmt: skip
    if not devs:
        reason = "no RDMA device (/sys/class/infiniband is empty; rdma_rxe not loaded or not in this kernel)"
    elif not pyverbs_ok:
        reason = f"RDMA device(s) {', '.join(devs)} present but {why_not}"
    else:
        reason = "inside a network namespace, where rxe does not work before Linux 7.1"
    return {"status": "fallback", "provider": "soft", "detail": f"userspace RoCEv2 over UDP 4791: {reason}"}  # fmt: skip
