"""The "rxe" provider: pyverbs over a kernel RDMA device (SoftRoCE or an RNIC).

Same names as nslab.rdma.soft, so lab code and nslab.rdma.cm run on either.
Only the few places where the soft provider extends pyverbs are adapted here:
`CQ.poll_wait`, `MR.mv`, `Context.port`, and QPAttr/GlobalRoute taking an IPv4
address. Not exercised on the build machine (no RDMA device there); its tests
skip unless a device exists.
"""

from __future__ import annotations

import os
import time

from pyverbs.addr import GID  # type: ignore[import-not-found]
from pyverbs.addr import AHAttr as _AHAttr
from pyverbs.addr import GlobalRoute as _GlobalRoute
from pyverbs.cq import CQ as _CQ  # type: ignore[import-not-found]
from pyverbs.cq import WC  # noqa: F401
from pyverbs.device import Context as _Context  # type: ignore[import-not-found]
from pyverbs.device import get_device_list
from pyverbs.mr import MR as _MR  # type: ignore[import-not-found]
from pyverbs.pd import PD  # noqa: F401  # type: ignore[import-not-found]
from pyverbs.qp import QP, QPCap, QPInitAttr  # noqa: F401  # type: ignore[import-not-found]
from pyverbs.qp import QPAttr as _QPAttr
from pyverbs.wr import SGE, RecvWR, SendWR  # noqa: F401  # type: ignore[import-not-found]

from nslab.rdma.wire import ROCEV2_PORT

# Which GID table entry is the RoCEv2 IPv4 one (rxe: usually 1; see `show_gids`).
GID_INDEX = int(os.environ.get("NSLAB_RXE_GID_INDEX", "1"))


class Context(_Context):
    provider = "rxe"
    port = ROCEV2_PORT

    def __init__(self, name: str | None = None, **kwargs):
        if not name or name.startswith("soft"):
            devs = get_device_list()
            name = devs[0].name.decode() if devs else "rxe0"
        super().__init__(name=name)
        self.stats: dict = {}  # the kernel keeps its counters in /sys/class/infiniband/*/ports/*/hw_counters


class MR(_MR):
    @property
    def mv(self) -> memoryview:
        return memoryview(
            bytearray(self.read(self.length, 0))
        )  # a copy: pyverbs has no zero-copy view


class CQ(_CQ):
    def poll_wait(self, num_entries: int = 1, timeout: float = 5.0, busy: bool = False) -> list:
        out: list = []
        end = time.monotonic() + timeout
        while len(out) < num_entries and time.monotonic() < end:
            n, wcs = self.poll(num_entries - len(out))
            out.extend(wcs[:n])
        return out


def GlobalRoute(dgid: str = "", sgid_index: int = GID_INDEX, hop_limit: int = 64):  # noqa: N802
    g = dgid if ":" in dgid else f"::ffff:{dgid}"
    return _GlobalRoute(dgid=GID(g), sgid_index=sgid_index, hop_limit=hop_limit)


def AHAttr(gr=None, is_global: int = 1, port_num: int = 1):  # noqa: N802
    return _AHAttr(gr=gr, is_global=is_global, port_num=port_num)


def QPAttr(dest_port: int = ROCEV2_PORT, ah_attr=None, **kwargs):  # noqa: N802
    attr = _QPAttr(**kwargs)
    if ah_attr is not None:
        attr.ah_attr = ah_attr
    return attr
