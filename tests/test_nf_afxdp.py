"""The NF toolkit's AF_XDP backend (--io afxdp): the same pipeline forwards
the same frames as over AF_PACKET, on real veths in a throwaway network
namespace (`unshare -n`), with real AF_XDP sockets in copy mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.root

SCRIPT = textwrap.dedent(
    r"""
    import json, subprocess, sys, threading, time
    from nslab.nf import Counter, Discard, FromDevice, IPClassifier, Router, ToDevice
    from nslab.nf.rawsock import RawSocket
    sh = lambda c: subprocess.run(c, shell=True, check=True, capture_output=True)
    sh("ip link set lo up")
    for a, b in (("xdpa", "xdpA"), ("xdpB", "xdpb")):
        sh(f"ip link add {a} type veth peer name {b} && ip link set {a} up && ip link set {b} up")
    time.sleep(0.3)
    r = Router("fwd", io=sys.argv[1])
    c = r.add(IPClassifier("udp dst port 7", "-"), "c")
    r.add(FromDevice("xdpA"), "in") >> c
    c[0] >> r.add(Discard("blocked"))
    c[1] >> r.add(Counter("ok")) >> r.add(ToDevice("xdpB"), "out")
    t = threading.Thread(target=r.run, kwargs={"duration": 3, "install_signals": False})
    src, dst = RawSocket("xdpa"), RawSocket("xdpb")
    t.start()
    time.sleep(0.8)
    def frame(port, i):
        ip = bytes.fromhex("4500002000004000401100000a0000010a000002")
        udp = (1000 + i).to_bytes(2, "big") + port.to_bytes(2, "big") + bytes.fromhex("000c0000")
        return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + udp + b"abcd" + bytes(14)
    sent = [frame(9, i) for i in range(200)] + [frame(7, i) for i in range(50)]
    for k in range(0, len(sent), 25):
        src.send_batch(sent[k:k + 25]); time.sleep(0.01)
    got = []
    end = time.time() + 1.5
    while time.time() < end:
        got += [bytes(f) for f in dst.recv_batch() if f[12:14] == b"\x08\x00"]
        time.sleep(0.005)
    t.join()
    rep = r.report()
    print(json.dumps({"got": len(got), "same": sorted(got) == sorted(sent[:200]),
                      "io": r.io, "report": rep.get("classes", {})}))
    """
)


@pytest.mark.parametrize("io", ["afpacket", "afxdp"])
def test_pipeline_forwards_the_same_over_both_backends(io, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, raw and AF_XDP sockets)")
    (tmp_path / "run.py").write_text(SCRIPT)
    r = subprocess.run(
        ["unshare", "-n", sys.executable, str(tmp_path / "run.py"), io],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["io"] == io
    # every allowed frame came out unchanged, none of the blocked ones
    assert res["got"] == 200 and res["same"], res


def test_unknown_backend_is_a_clear_error():
    from nslab.errors import NslabError
    from nslab.nf import Router

    with pytest.raises(NslabError, match="afpacket, afxdp"):
        Router("x", io="dpdk")
