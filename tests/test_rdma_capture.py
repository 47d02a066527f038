"""A real capture of the soft provider's traffic, decoded by tshark as RoCEv2
(InfiniBand BTH on UDP 4791) with the expected opcodes, PSNs and a NAK, for
both data paths (native C and the Python reference)."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time

import pytest

import nslab.rdma.enums as e
from nslab.rdma import cm, native
from nslab.rdma import soft as v
from nslab.rdma.netns import make_pair, netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not (shutil.which("tcpdump") and shutil.which("tshark")), reason="needs tcpdump and tshark"
    ),  # fmt: skip
]
FULL = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
DATAPATHS = [pytest.param(True, id="native", marks=pytest.mark.skipif(not native.available(), reason=f"native data path not built: {native.BUILD_ERROR}")), pytest.param(False, id="python")]  # fmt: skip


@pytest.mark.parametrize("nat", DATAPATHS)
def test_tshark_decodes_rocev2_opcodes(tmp_path, nat):
    pair = make_pair(f"trdma{os.getpid() % 10000}c", subnet="10.79.2")
    pcap = tmp_path / "trdma.pcap"
    dump = None
    ctxs = []
    try:
        dump = subprocess.Popen(
            pair.exec_cmd("a", ["tcpdump", "-Z", "root", "-U", "--immediate-mode", "-n", "-i", pair.a_if, "-w", str(pcap), "udp"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # tcpdump says "listening on" once it captures; wait for that (bounded).
        ready = select.select([dump.stderr], [], [], 20)[0] and dump.stderr.readline()
        assert ready and b"listening on" in ready, ready
        with netns(pair.b):
            cs = v.Context("trdma-cs", addr=pair.b_ip, native=nat)
            lst = cm.Listener(0, pair.b_ip)
        with netns(pair.a):
            cc = v.Context("trdma-cc", addr=pair.a_ip, native=nat)
        ctxs = [cs, cc]
        pds, pdc = v.PD(cs), v.PD(cc)
        mrs, mrc = v.MR(pds, 16384, FULL), v.MR(pdc, 16384, FULL)
        box: dict = {}

        def accept():
            with netns(pair.b):
                box["ep"] = lst.accept(cs, pds, private={"rkey": mrs.rkey, "addr": mrs.buf}, on_qp=lambda qp: qp.post_recv(v.RecvWR(9, 1, [v.SGE(mrs.buf, 8192, mrs.lkey)])))  # fmt: skip

        t = threading.Thread(target=accept)
        t.start()
        with netns(pair.a):
            ep = cm.connect(cc, pdc, pair.b_ip, lst.port)
        t.join(10)
        lst.close()
        rkey, addr = ep.private["rkey"], ep.private["addr"]
        ep.qp.post_send(v.SendWR(1, e.IBV_WR_SEND, sg=[v.SGE(mrc.buf, 2500, mrc.lkey)]))
        wr = v.SendWR(2, e.IBV_WR_RDMA_WRITE, sg=[v.SGE(mrc.buf, 8000, mrc.lkey)])  # GSO middles
        wr.set_wr_rdma(rkey, addr + 8192)
        ep.qp.post_send(wr)
        rd = v.SendWR(3, e.IBV_WR_RDMA_READ, sg=[v.SGE(mrc.buf + 4096, 9000, mrc.lkey)])
        rd.set_wr_rdma(rkey, addr)
        ep.qp.post_send(rd)
        assert [wc.status for wc in ep.cq.poll_wait(3, timeout=5)] == [0, 0, 0]
        bad = v.SendWR(4, e.IBV_WR_RDMA_WRITE, sg=[v.SGE(mrc.buf, 64, mrc.lkey)])
        bad.set_wr_rdma(rkey ^ 1, addr)
        ep.qp.post_send(bad)
        assert [wc.status for wc in ep.cq.poll_wait(1, timeout=5)] == [e.IBV_WC_REM_ACCESS_ERR]
        time.sleep(0.5)
    finally:
        for c in ctxs:
            c.close()
        if dump is not None:
            dump.terminate()
            dump.wait(5)
        pair.remove()
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "--disable-protocol", "rpcordma", "-T", "fields",
         "-e", "infiniband.bth.opcode", "-e", "infiniband.bth.psn", "-e", "infiniband.aeth.syndrome"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
    opcodes = [int(r[0]) for r in rows if r[0]]
    # SEND first/middle/last, WRITE only, READ request, READ response first/last, ACKs
    for op in (0x00, 0x01, 0x02, 0x0A, 0x0C, 0x0D, 0x0F, 0x11):
        assert op in opcodes, (hex(op), out.stdout, out.stderr)
    assert len(opcodes) == len(rows)  # every UDP packet decoded as InfiniBand
    syndromes = [int(r[2], 0) for r in rows if len(r) > 2 and r[2]]
    assert 0x62 in syndromes  # NAK: remote access error
    assert (
        opcodes.count(0x0E) == 7
    )  # 9000 B at MTU 1024: FIRST, 7 MIDDLE (sent as one GSO batch), LAST


@pytest.mark.parametrize("nat", DATAPATHS)
def test_icrc_of_captured_packets_matches_scapy(tmp_path, nat):
    """scapy recomputes the ICRC of every captured packet from its real IP and
    UDP headers (including the IP IDs of GSO segments) and agrees."""
    from scapy.contrib.roce import BTH
    from scapy.utils import rdpcap

    test_tshark_decodes_rocev2_opcodes(tmp_path, nat)
    pkts = [p for p in rdpcap(str(tmp_path / "trdma.pcap")) if p.haslayer(BTH)]
    assert len(pkts) >= 15
    ids = set()
    for p in pkts:
        raw = bytes(p[BTH])
        assert raw[-4:] == p[BTH].compute_icrc(None), p.summary()
        ids.add(p["IP"].id)
    assert len(ids) > 1  # GSO segments carried IDs 0, 1, 2, ...
