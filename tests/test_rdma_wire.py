"""RoCEv2 wire format and QP state machine of the soft provider (no root needed:
packets go over loopback UDP sockets this test opens)."""

from __future__ import annotations

import threading

import pytest
from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP

import nslab.rdma.enums as e
from nslab.errors import NslabError
from nslab.rdma import cm, native, provider_info
from nslab.rdma import soft as v
from nslab.rdma import wire as w

FULL = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE


def scapy_icrc(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """scapy's own ICRC for a RoCEv2 UDP payload, as Linux sends it (DF, ID 0)."""
    pkt = (
        IP(src=src, dst=dst, id=0, flags="DF", ttl=64)
        / UDP(sport=sport, dport=dport)
        / BTH(payload)
    )
    return pkt[BTH].compute_icrc(None)


def test_icrc_matches_scapy_on_built_packets():
    for op, body in ((w.SEND_ONLY, b"hello RDMA!"), (w.WRITE_ONLY, bytes(range(64))), (w.ACK, b"")):
        hdr = w.pack_bth(op, 0x123456, 0xFFFFFE, ackreq=True)
        if op == w.WRITE_ONLY:
            hdr += w.RETH.pack(0x7F0012345678, 0xDEADBEEF, len(body))
        if op == w.ACK:
            hdr += w.AETH.pack((w.SYN_ACK << 24) | 7)
        pad = -len(body) & 3
        hdr = hdr[:1] + bytes([hdr[1] | pad << 4]) + hdr[2:]
        body += b"\0" * pad
        n = len(hdr) + len(body) + 4
        seed = w.icrc_seed(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 50000, 4791, n)
        crc = w.ICRC.pack(w.icrc(seed, hdr, body))
        assert crc == scapy_icrc("10.0.0.1", "10.0.0.2", 50000, 4791, hdr + body + crc)
        # Masked fields really are masked: FECN/BECN set by a switch keep the ICRC valid...
        marked = bytearray(hdr)
        marked[4] |= 0xC0
        assert w.ICRC.pack(w.icrc(seed, bytes(marked), body)) == crc
        # ...but a flipped payload or PSN bit does not.
        bad = bytearray(hdr)
        bad[11] ^= 1
        assert w.ICRC.pack(w.icrc(seed, bytes(bad), body)) != crc


def test_psn_arithmetic_wraps_at_24_bits():
    assert w.psn_add(0xFFFFFF, 1) == 0
    assert w.psn_diff(0, 0xFFFFFF) == 1
    assert w.psn_diff(0xFFFFFF, 0) == -1
    assert w.psn_diff(5, 3) == 2


@pytest.mark.parametrize("nat", [pytest.param(True, id="native", marks=pytest.mark.skipif(not native.available(), reason="native data path not built")), pytest.param(False, id="python")])  # fmt: skip
def test_state_machine_rejects_illegal_transitions_and_posts(nat):
    with v.Context("trdma-sm", addr="127.0.0.1", port=0, native=nat) as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 16)
        mr = v.MR(pd, 64, FULL)
        qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq, cap=v.QPCap(4, 4)))
        assert qp.qp_state == e.IBV_QPS_RESET
        wr = v.SendWR(1, e.IBV_WR_SEND, sg=[v.SGE(mr.buf, 8, mr.lkey)])
        with pytest.raises(v.VerbsError, match="RESET"):
            qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 8, mr.lkey)]))
        with pytest.raises(v.VerbsError, match="illegal transition"):
            qp.modify(v.QPAttr(qp_state=e.IBV_QPS_RTS))
        qp.to_init(v.QPAttr(qp_access_flags=FULL))
        qp.post_recv(v.RecvWR(1, 1, [v.SGE(mr.buf, 8, mr.lkey)]))  # legal in INIT
        with pytest.raises(v.VerbsError, match="needs RTS"):
            qp.post_send(wr)
        with pytest.raises(v.VerbsError, match="illegal transition"):
            qp.modify(v.QPAttr(qp_state=e.IBV_QPS_RTS))  # INIT -> RTS skips RTR
        with pytest.raises(v.VerbsError, match="dgid"):
            qp.to_rtr(v.QPAttr(dest_qp_num=5))
        attr = v.QPAttr(
            dest_qp_num=5, ah_attr=v.AHAttr(v.GlobalRoute("::ffff:127.0.0.1")), dest_port=9
        )
        qp.to_rtr(attr)
        with pytest.raises(v.VerbsError, match="needs RTS"):
            qp.post_send(wr)
        qp.to_rts(attr)
        assert qp.qp_state == e.IBV_QPS_RTS
        # ERR flushes what is queued and what is posted afterwards.
        qp.modify(v.QPAttr(qp_state=e.IBV_QPS_ERR))
        qp.post_send(wr)
        statuses = sorted(wc.status for wc in cq.poll_wait(2, timeout=2))
        assert statuses == [e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_WR_FLUSH_ERR]
        qp.modify(v.QPAttr(qp_state=e.IBV_QPS_RESET))
        assert qp.qp_state == e.IBV_QPS_RESET


@pytest.mark.parametrize("nat", [pytest.param(True, id="native", marks=pytest.mark.skipif(not native.available(), reason="native data path not built")), pytest.param(False, id="python")])  # fmt: skip
def test_local_protection_error_on_bad_lkey(nat):
    with v.Context("trdma-lk", addr="127.0.0.1", port=0, native=nat) as ctx:
        pd = v.PD(ctx)
        cq = v.CQ(ctx, 16)
        mr = v.MR(pd, 64, FULL)
        qp = v.QP(pd, v.QPInitAttr(scq=cq, rcq=cq))
        attr = v.QPAttr(dest_qp_num=5, ah_attr=v.AHAttr(v.GlobalRoute("127.0.0.1")), dest_port=9)
        qp.to_init(attr)
        qp.to_rts(attr)
        qp.post_send(
            v.SendWR(7, e.IBV_WR_SEND, sg=[v.SGE(mr.buf + 60, 8, mr.lkey)])
        )  # past the end
        (wc,) = cq.poll_wait(1, timeout=2)
        assert (wc.wr_id, wc.status) == (7, e.IBV_WC_LOC_PROT_ERR)


def test_loopback_packets_carry_a_valid_icrc_per_scapy():
    """Real packets from the transport (two contexts on 127.0.0.1) checked by scapy."""
    seen: list[tuple[bytes, tuple]] = []
    with (
        v.Context("trdma-s", addr="127.0.0.1", port=0, native=False) as cs,
        v.Context("trdma-c", addr="127.0.0.1", port=0, native=False) as cc,
    ):  # fmt: skip (tx_hook)
        for c in (cs, cc):
            c.tx_hook = lambda data, addr, c=c: (seen.append((data, (c.port, addr[1]))), [(data, addr)])[1]  # fmt: skip
        pds, pdc = v.PD(cs), v.PD(cc)
        mrs, mrc = v.MR(pds, 8192, FULL), v.MR(pdc, 8192, FULL)
        mrc.write(bytes(range(256)) * 32, 8192)
        with cm.Listener(0, "127.0.0.1") as lst:
            box: dict = {}
            t = threading.Thread(target=lambda: box.update(ep=lst.accept(cs, pds, private={"rkey": mrs.rkey, "addr": mrs.buf})))  # fmt: skip
            t.start()
            ep = cm.connect(cc, pdc, "127.0.0.1", lst.port, mtu=1024)
            t.join(10)
        wr = v.SendWR(1, e.IBV_WR_RDMA_WRITE, sg=[v.SGE(mrc.buf, 3000, mrc.lkey)], send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
        wr.set_wr_rdma(ep.private["rkey"], ep.private["addr"])
        ep.qp.post_send(wr)
        rd = v.SendWR(2, e.IBV_WR_RDMA_READ, sg=[v.SGE(mrc.buf + 4096, 2500, mrc.lkey)], send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
        rd.set_wr_rdma(ep.private["rkey"], ep.private["addr"] + 1)
        ep.qp.post_send(rd)
        wcs = ep.cq.poll_wait(2, timeout=5)
        assert [wc.status for wc in wcs] == [0, 0]
        assert mrs.read(3000) == mrc.read(3000)
        assert mrc.read(2500, 4096) == mrs.read(2500, 1)
        box["ep"].close()
        ep.close()
    ops = {w.describe(d)["name"] for d, _ in seen}
    assert {"WRITE_FIRST", "WRITE_MIDDLE", "WRITE_LAST", "ACK", "READ_REQUEST", "READ_RESP_FIRST", "READ_RESP_LAST"} <= ops  # fmt: skip
    for data, (sport, dport) in seen:
        assert data[-4:] == scapy_icrc("127.0.0.1", "127.0.0.1", sport, dport, data), w.describe(
            data
        )


def test_provider_info_reports_a_status():
    info = provider_info()
    assert info["status"] in ("real", "fallback", "missing")
    assert info["detail"]


def test_bad_spin_window_setting_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("NSLAB_RDMA_SPIN_US", "fast")
    with pytest.raises(NslabError, match="NSLAB_RDMA_SPIN_US='fast'"):
        v.Context("trdma-spin", addr="127.0.0.1", port=0)
    monkeypatch.setenv("NSLAB_RDMA_SPIN_US", "0")
    with v.Context("trdma-spin", addr="127.0.0.1", port=0) as ctx:
        assert ctx.rx_spin_s == 0
