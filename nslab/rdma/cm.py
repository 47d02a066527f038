"""Connection set-up out of band over TCP, like perftest (and a tiny rdma_cm).

RC QPs must learn each other's QP number, starting PSN, address and UDP port
before they can talk; perftest exchanges these over a TCP socket, rdma_cm over
its own protocol. Here each side sends one JSON line:

    {"qpn": 1193046, "psn": 4242, "port": 4791, "mtu": 1024, "private": {...}}

and takes the peer's IP address from the TCP connection. `private` carries
application data (an rkey, a buffer address and length, ...) the way rdma_cm's
private_data does. The TCP connection stays open while the endpoint lives:
it is a handy control channel (perftest uses it to synchronise too).
"""

from __future__ import annotations

import importlib
import json
import random
import socket
from typing import Any

from nslab.errors import NslabError
from nslab.rdma import enums as e

MAX_LINE = 1 << 16


def send_json(sock: socket.socket, obj: Any) -> None:
    sock.sendall(json.dumps(obj).encode() + b"\n")


def recv_json(sock: socket.socket, timeout: float = 10.0) -> Any:
    """Read one JSON line; a closed or silent peer is an NslabError."""
    sock.settimeout(timeout)
    buf = bytearray()
    while not buf.endswith(b"\n"):
        try:
            chunk = sock.recv(1)
        except TimeoutError as exc:
            raise NslabError(f"peer sent nothing for {timeout:.0f} s during RDMA set-up") from exc
        if not chunk:
            raise NslabError("peer closed the connection during RDMA set-up")
        buf += chunk
        if len(buf) > MAX_LINE:
            raise NslabError("peer sent an over-long set-up message")
    return json.loads(buf)


def local_info(qp, mtu: int = 1024, private: dict | None = None) -> dict:
    psn = random.getrandbits(24)
    return {
        "qpn": qp.qp_num,
        "psn": psn,
        "port": qp.ctx.port,
        "mtu": mtu,
        "private": private or {},
    }


def connect_qp(
    qp,
    mine: dict,
    peer: dict,
    peer_ip: str,
    access: int = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE,
    timeout: int = 14,
    retry_cnt: int = 7,
    rnr_retry: int = 7,
    on_init=None,
) -> int:
    """Move qp RESET -> INIT -> RTR -> RTS towards the peer and return the path
    MTU used. `on_init(qp)` runs in INIT: the place to post the first receives,
    before the peer can send."""
    mod = _module_of(qp)
    mtu = min(int(mine["mtu"]), int(peer["mtu"]))
    attr = mod.QPAttr(qp_access_flags=access)
    qp.to_init(attr)
    if on_init is not None:
        on_init(qp)
    attr = mod.QPAttr(
        path_mtu=e.mtu_enum(mtu),
        dest_qp_num=int(peer["qpn"]),
        rq_psn=int(peer["psn"]),
        sq_psn=int(mine["psn"]),
        timeout=timeout,
        retry_cnt=retry_cnt,
        rnr_retry=rnr_retry,
        qp_access_flags=access,
        ah_attr=mod.AHAttr(gr=mod.GlobalRoute(dgid=peer_ip)),
        dest_port=int(peer.get("port", 4791)),
    )
    qp.to_rtr(attr)
    qp.to_rts(attr)
    return mtu


def _module_of(obj):
    """The provider module (soft or rxe) an object comes from."""
    return importlib.import_module(type(obj).__module__)


class Endpoint:
    """A connected RC QP with its CQ and the TCP control channel."""

    def __init__(self, ctx, pd, cq, qp, sock: socket.socket, peer: dict, peer_ip: str, mtu: int):
        self.ctx, self.pd, self.cq, self.qp = ctx, pd, cq, qp
        self.sock, self.peer, self.peer_ip, self.mtu = sock, peer, peer_ip, mtu

    @property
    def private(self) -> dict:
        """The peer's private data (e.g. its rkey, address and length)."""
        return self.peer.get("private", {})

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.qp.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _make_qp(ctx, pd, cq, depth: int):
    mod = _module_of(ctx)
    cap = mod.QPCap(max_send_wr=depth, max_recv_wr=depth, max_send_sge=4, max_recv_sge=4)
    return mod.QP(pd, mod.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap, sq_sig_all=0))


class Listener:
    """Accepts RDMA connections on a TCP port (like rdma_listen/rdma_accept)."""

    def __init__(self, port: int, addr: str = "0.0.0.0"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((addr, port))
        except OSError as exc:
            self.sock.close()
            raise NslabError(f"cannot listen on TCP {addr}:{port}: {exc.strerror}") from exc
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def accept(
        self,
        ctx,
        pd,
        cq=None,
        private=None,
        mtu: int = 1024,
        depth: int = 128,
        timeout: float | None = 30.0,
        on_qp=None,
    ) -> Endpoint:
        """Wait for one client. `on_qp(qp)` runs while the QP is in INIT (post
        the first receives there). `private` may be a function of the client's
        private data (e.g. to size a buffer from the client's request)."""
        self.sock.settimeout(timeout)
        try:
            conn, (peer_ip, _) = self.sock.accept()
        except TimeoutError as exc:
            raise NslabError(f"no RDMA client connected within {timeout:.0f} s") from exc
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mod = _module_of(ctx)
        cq = cq or mod.CQ(ctx, depth * 2)
        qp = _make_qp(ctx, pd, cq, depth)
        try:
            peer = recv_json(conn)
            if callable(private):
                private = private(peer.get("private", {}))
            mine = local_info(qp, mtu, private)
            used = connect_qp(qp, mine, peer, peer_ip, on_init=on_qp)
            send_json(conn, mine)
        except Exception:
            conn.close()
            qp.close()
            raise
        return Endpoint(ctx, pd, cq, qp, conn, peer, peer_ip, used)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(
    ctx,
    pd,
    host: str,
    port: int,
    cq=None,
    private: dict | None = None,
    mtu: int = 1024,
    depth: int = 128,
    timeout: float = 10.0,
    on_qp=None,
) -> Endpoint:
    """Connect to a Listener (like rdma_connect) and return a ready Endpoint."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise NslabError(
            f"cannot reach the RDMA peer's set-up port {host}:{port}: {exc.strerror or exc} "
            "(is the server running, and is this the server's address?)"
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mod = _module_of(ctx)
    cq = cq or mod.CQ(ctx, depth * 2)
    qp = _make_qp(ctx, pd, cq, depth)
    try:
        mine = local_info(qp, mtu, private)
        send_json(sock, mine)
        peer = recv_json(sock, timeout)
        used = connect_qp(qp, mine, peer, sock.getpeername()[0], on_init=on_qp)
    except Exception:
        sock.close()
        qp.close()
        raise
    return Endpoint(ctx, pd, cq, qp, sock, peer, host, used)
