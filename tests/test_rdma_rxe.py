"""The rxe provider (pyverbs over a kernel RDMA device): the same connection
helper and a READ/WRITE round trip. Skips where no RDMA device exists or
pyverbs does not import (the build VM has neither)."""

from __future__ import annotations

import threading

import pytest

from nslab.rdma import provider_info

INFO = provider_info()
pytestmark = pytest.mark.skipif(
    INFO["provider"] != "rxe", reason=f"no usable RDMA device: {INFO['detail']}"
)


def test_rxe_read_write_roundtrip():  # pragma: no cover - needs an RDMA device
    import nslab.rdma.enums as e
    from nslab.rdma import cm, rxe

    ip = "127.0.0.1"
    full = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
    ctx = rxe.Context()
    pd = rxe.PD(ctx)
    ms, mc = rxe.MR(pd, 4096, full), rxe.MR(pd, 4096, full)
    ms.write(b"x" * 64, 64, 0)
    with cm.Listener(0, ip) as lst:
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(ep=lst.accept(ctx, pd, private={"rkey": ms.rkey, "addr": ms.buf})))  # fmt: skip
        t.start()
        ep = cm.connect(ctx, pd, ip, lst.port)
        t.join(10)
    wr = rxe.SendWR(1, e.IBV_WR_RDMA_READ, num_sge=1, sg=[rxe.SGE(mc.buf, 64, mc.lkey)])
    wr.set_wr_rdma(ep.private["rkey"], ep.private["addr"])
    ep.qp.post_send(wr)
    (wc,) = ep.cq.poll_wait(1, timeout=5)
    assert wc.status == e.IBV_WC_SUCCESS
    assert mc.read(64, 0) == b"x" * 64
