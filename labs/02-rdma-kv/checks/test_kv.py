"""Checks of lab 2 (RDMA key-value lookups).

The grader owns everything it measures:
- its own KV server in node kv (labs/02-rdma-kv/grader/kvgrader.py), which
  fills its table itself with values made from a secret nonce drawn for this
  grading (handed over a pipe): no one else can make or guess them;
- the student's kvclient.py runs in a sandboxed process of its own in c1,
  started only through lab.student_command(), and is driven over a pipe:
  the grader writes a key, reads the value back, times the round trip and
  compares the value with its own;
- a capture on c1's link (the RDMA READ requests), and the server's own
  counters (handler runs vs one-sided READs served by its transport).
Nothing the student's process prints is taken as a result."""

from __future__ import annotations

import json
import os
import random
import secrets
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nslab
from nslab import measure
from nslab.rdma.kv import check_value

REPO_ROOT = str(Path(nslab.__file__).resolve().parent.parent)
LAB_DIR = Path(__file__).resolve().parent.parent
SECRET = secrets.token_bytes(16)  # per grading: the values cannot be guessed
N_KEYS, N_ABSENT, N_HOT, HOT_SIZE = 200, 25, 12, 120
SEND_OPS = set(range(0x00, 0x06))  # SEND FIRST..ONLY_IMM
WRITE_OPS = set(range(0x06, 0x0C))
READ_REQUEST = 0x0C
P50_LIMIT_MS = 20.0  # generous: the soft provider on a loaded 2-core VM
REPLY_TIMEOUT_S = 5.0  # one GET, as the grader sees it


def _keys() -> tuple[list[bytes], list[bytes], list[bytes]]:
    rnd = random.Random(SECRET)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"

    def key() -> bytes:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(6, 40))).encode()

    present = list(dict.fromkeys(key() for _ in range(N_KEYS)))
    absent = [k for k in (key() + b"~" for _ in range(N_ABSENT)) if k not in present]
    hot = [b"hot-%03d-%s" % (i, key()[:6]) for i in range(N_HOT)]
    return present, absent, hot


def _size(i: int) -> int:
    return 20 + (i * 37) % 280


def _last_json(text: str, what: str):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"{what}: expected a JSON result line, observed output:\n{text[-1500:]}")


def grader_py(lab, node: str, code: str, timeout: float = 60):
    """Run grader code (root) in a node; returns its last JSON line."""
    lab.kill_student()  # a baseline: nothing of the student's may run meanwhile
    code = f"import sys; sys.path.insert(0, {REPO_ROOT!r})\n" + code
    r = lab.exec(node, [sys.executable, "-c", code], timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"grader problem in {node}: {r.stderr[-1500:]}")
    return _last_json(r.stdout, f"grader code in {node}")


class KVServer:
    """The grader's KV server process in node kv, commanded over its stdin."""

    def __init__(self, lab):
        self.ip = lab.ip("kv")
        self.log = open(lab.logs_dir / "kvserver.log", "w")  # noqa: SIM115 - closed in close()
        env = {"PYTHONPATH": REPO_ROOT, "PYTHONSAFEPATH": "1", "PATH": "/usr/local/bin:/usr/bin:/bin"}  # fmt: skip
        for k in ("NSLAB_RDMA_PROVIDER", "NSLAB_RDMA_NATIVE"):
            if k in os.environ:
                env[k] = os.environ[k]
        argv = [sys.executable, str(LAB_DIR / "grader" / "kvgrader.py"), "--addr", self.ip]
        self.proc = lab.popen("kv", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=str(LAB_DIR), text=True, start_new_session=True)  # fmt: skip
        present, _, hot = _keys()
        keys = [[k.hex(), _size(i)] for i, k in enumerate(present)] + [[k.hex(), HOT_SIZE] for k in hot]  # fmt: skip
        self.ready = self._cmd({"secret": SECRET.hex(), "keys": keys}, 60)

    def _cmd(self, msg: dict, timeout: float = 30) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if r else ""
        if not line:
            raise AssertionError(f"the grader's KV server did not answer {msg.get('cmd', 'setup')} (see kvserver.log)")  # fmt: skip
        return json.loads(line)

    def stats(self) -> dict:
        return self._cmd({"cmd": "stats"})

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


# The student's side of the pipe: grader-written, but it runs inside the
# student's sandboxed process, so nothing it says is trusted except the
# values, which the grader checks against its own. Student prints go to
# stderr (fd 1 becomes the protocol pipe only).
DRIVER = r"""
import os, sys
proto = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
import kvclient
c = kvclient.KVClient(sys.argv[1])
proto.write("READY\n")
for line in sys.stdin:
    op, _, arg = line.strip().partition(" ")
    try:
        if op == "R":  # the wrong-rkey check: corrupt the key the server handed out
            c.conn.rkey ^= 0x5A5A5A5A
            continue
        v = c.get(bytes.fromhex(arg))
        proto.write("N\n" if v is None else "V " + bytes(v).hex() + "\n")
    except Exception as exc:
        proto.write("E " + (type(exc).__name__ + ": " + str(exc)).replace("\n", " ")[:300] + "\n")
"""


class StudentClient:
    """The student's KVClient in its own sandboxed process in c1, driven by
    the grader one key at a time. Latency is the grader's own clock around
    each request/reply."""

    def __init__(self, lab, server_ip: str, timeout: float = 60):
        self.lab = lab
        self.err = open(lab.logs_dir / "kvclient.log", "a")  # noqa: SIM115 - closed in close()
        argv = lab.student_command([sys.executable, "-c", DRIVER, server_ip])
        self.proc = lab.popen("c1", argv, env=lab.student_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)  # fmt: skip
        self.buf = b""
        line = self._line(timeout)
        if line != "READY":
            self.close()
            raise AssertionError(f"your KVClient did not connect within {timeout:.0f} s (got {line!r:.80}; its output is in kvclient.log)")  # fmt: skip

    def _line(self, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("ascii", "replace")

    def get(self, key: bytes) -> tuple[str, bytes | str | None, float]:
        """("value", bytes) | ("none", None) | ("error", message) | ("dead", why), and seconds."""
        t0 = time.perf_counter()
        try:
            self.proc.stdin.write(b"G " + key.hex().encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return "dead", "your client's process exited", 0.0
        line = self._line(REPLY_TIMEOUT_S)
        dt = time.perf_counter() - t0
        if line is None:
            return "dead", f"no answer within {REPLY_TIMEOUT_S:g} s", dt
        if line == "N":
            return "none", None, dt
        if line.startswith("V "):
            try:
                return "value", bytes.fromhex(line[2:]), dt
            except ValueError:
                return "error", "unreadable value", dt
        return "error", line[2:] if line.startswith("E ") else f"unexpected reply {line[:60]!r}", dt

    def corrupt_rkey(self) -> None:
        self.proc.stdin.write(b"R x\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            self.lab.kill_student()  # forked children too
            self.err.close()


@pytest.fixture(scope="module")
def server(lab):
    """The grader's KV server in node kv, holding the secret values."""
    s = KVServer(lab)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def get_run(lab, server):
    """One GET-only run of the student's client over the hidden keys, with a
    capture on c1's link and the server's counters before and after."""
    present, absent, _ = _keys()
    keys = present + absent
    random.Random(SECRET + b"order").shuffle(keys)
    client = StudentClient(lab, server.ip)
    try:
        before = server.stats()
        cap = measure.capture(lab.engine, "c1:eth0", "udp port 4791", max_packets=50000, snaplen=96)  # fmt: skip
        replies = {}
        with cap:
            for k in keys:
                replies[k] = client.get(k)
                if replies[k][0] == "dead":
                    break
        after = server.stats()
    finally:
        client.close()
    ops = []
    c1 = lab.ip("c1")
    for p in cap.packets:
        if p.haslayer("UDP") and p["IP"].src == c1:
            payload = bytes(p["UDP"].payload)
            if payload:
                ops.append(payload[0])
    cap.remove()
    sizes = {k: _size(i) for i, k in enumerate(present)}
    wrong = [k for k in present if replies.get(k, ("dead",))[0] != "value" or replies[k][1] != versioned(k, sizes[k])]  # fmt: skip
    extra = [k for k in absent if replies.get(k, ("dead",))[0] != "none"]
    errors = [r[1] for r in replies.values() if r[0] in ("error", "dead")]
    lat = [r[2] * 1e6 for r in replies.values() if r[0] in ("value", "none")]
    return {"wrong": wrong, "extra": extra, "errors": errors, "lat_us": lat, "before": before, "after": after, "ops": ops, "n": len(keys), "present": present, "absent": absent}  # fmt: skip


def versioned(key: bytes, size: int, version: int = 1) -> bytes:
    from nslab.rdma.kv import versioned_value

    return versioned_value(key, version, size, SECRET)


def _require_correct(run) -> None:
    """Wire, CPU and latency only count for GETs that returned the stored values."""
    if run["wrong"] or run["extra"]:
        pytest.fail(f"not measured: {len(run['wrong']) + len(run['extra'])} of {run['n']} GETs returned a wrong value (see the first check)")  # fmt: skip


@pytest.mark.points(3)
def test_get_returns_the_stored_values(get_run, record):
    """GET returns the stored value for every hidden key, and nothing for absent keys"""
    r = get_run
    record.value("keys checked", r["n"])
    if r["errors"]:
        record.note(f"first error from your client: {r['errors'][0]}")
    assert not r["wrong"], f"expected the stored value for {len(r['present'])} keys, observed {len(r['wrong'])} wrong or missing (e.g. {r['wrong'][0]!r}; first error: {(r['errors'] or ['none'])[0]})"  # fmt: skip
    assert not r["extra"], f"expected None for {len(r['absent'])} absent keys, observed something else for {len(r['extra'])} (e.g. {r['extra'][0]!r})"  # fmt: skip


@pytest.mark.points(2)
def test_gets_are_one_sided_reads_on_the_wire(get_run, record):
    """the capture shows GETs as RDMA READ requests only (no SEND, no WRITE)"""
    _require_correct(get_run)
    ops = get_run["ops"]
    reads = sum(op == READ_REQUEST for op in ops)
    sends = sum(op in SEND_OPS for op in ops)
    writes = sum(op in WRITE_OPS for op in ops)
    record.value("READ requests from c1", reads)
    record.value("SEND packets from c1", sends)
    assert sends == 0 and writes == 0, f"expected only RDMA READ requests from c1 during GETs, observed {sends} SEND and {writes} WRITE packets: use one-sided READs, not the RPC"  # fmt: skip
    assert reads >= get_run["n"], f"expected at least one READ request per GET ({get_run['n']}), observed {reads}"  # fmt: skip


@pytest.mark.points(2)
def test_server_cpu_not_involved_in_gets(get_run, record):
    """the server's request handler never ran for GETs; its transport served READs"""
    _require_correct(get_run)
    b, a = get_run["before"], get_run["after"]
    handled = a["handler_calls"] - b["handler_calls"]
    served = a["one_sided_read"] - b["one_sided_read"]
    record.value("server handler runs during GETs", handled)
    record.value("one-sided READs served by the server's transport", served)
    assert handled == 0, f"expected 0 runs of the server's handler during {get_run['n']} GETs, observed {handled}: a GET must not be an RPC"  # fmt: skip
    assert served >= get_run["n"], f"expected at least {get_run['n']} one-sided READs served, observed {served}"  # fmt: skip


@pytest.mark.points(1)
def test_get_latency(lab, server, get_run, record):
    """GET latency percentiles (the grader's clock around each GET), against the TCP RPC baseline"""
    _require_correct(get_run)
    lat = sorted(get_run["lat_us"])
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    keys = [k.hex() for k in get_run["present"][:100]]
    tcp = grader_py(lab, "c1", f"""
import json, time, statistics
from nslab.rdma.kv import TcpClient
t = TcpClient({server.ip!r}); lat = []
for h in {keys!r}:
    t0 = time.perf_counter(); t.get(bytes.fromhex(h)); lat.append((time.perf_counter() - t0) * 1e6)
print(json.dumps({{"p50": statistics.median(lat)}}))
""")  # fmt: skip
    record.value("GET p50 (incl. the grader's pipe round trip)", round(p50, 1), "us")
    record.value("GET p99", round(p99, 1), "us")
    record.value("TCP RPC GET p50 (baseline)", round(tcp["p50"], 1), "us")
    record.cdf("GET latency", lat, "us")
    assert p50 <= P50_LIMIT_MS * 1000, f"expected GET p50 at most {P50_LIMIT_MS} ms, observed {p50 / 1000:.1f} ms"  # fmt: skip


@pytest.mark.points(2)
@pytest.mark.time_limit(120)
def test_gets_consistent_during_updates(lab, server, record):
    """GETs racing concurrent PUTs return whole values (never torn), never older than seen before"""
    _, _, hot = _keys()
    client = StudentClient(lab, server.ip)
    seen: list[tuple[bytes, tuple]] = []
    try:
        server.proc.stdin.write(json.dumps({"cmd": "update", "keys": [k.hex() for k in hot], "seconds": 6, "size": HOT_SIZE}) + "\n")  # fmt: skip
        server.proc.stdin.flush()
        end = time.monotonic() + 5
        while time.monotonic() < end and len(seen) < 4000:
            for k in hot:
                seen.append((k, client.get(k)))
            if seen[-1][1][0] == "dead":
                break
    finally:
        client.close()
    r, _, _ = select.select([server.proc.stdout], [], [], 20)
    puts = json.loads(server.proc.stdout.readline()) if r else {"puts": 0}
    last: dict[bytes, int] = {}
    bad, back = [], []
    for k, (kind, v, _) in seen:
        ver = check_value(k, v, SECRET) if kind == "value" and len(v) == HOT_SIZE else None
        if ver is None:
            bad.append(k)
            continue
        if ver < last.get(k, 0):
            back.append(k)
        last[k] = ver
    record.value("GETs during updates", len(seen))
    record.value("concurrent PUTs (by the grader's server)", puts.get("puts", 0))
    assert seen, "expected GETs during the updates, observed none"
    assert not bad, f"expected whole stored values, observed {len(bad)} torn, mixed, missing or failed GETs of {len(seen)}: validate versions/checksum and retry"  # fmt: skip
    assert not back, f"expected versions never to go back, observed {len(back)} older values after newer ones"  # fmt: skip
    assert max(last.values()) > 1, "expected to observe updated versions, observed only the initial ones"  # fmt: skip


@pytest.mark.points(1)
def test_wrong_rkey_gives_an_error_not_data(lab, server, record):
    """a GET with a wrong rkey fails with an error completion instead of returning data"""
    key = _keys()[0][0]
    client = StudentClient(lab, server.ip)
    try:
        before = server.stats()
        client.corrupt_rkey()
        kind, detail, _ = client.get(key)
        after = server.stats()
    finally:
        client.close()
    refused = after["bad_rkey"] - before["bad_rkey"]
    record.value("outcome", f"{kind}: {detail!r:.80}")
    record.value("READs the server refused for their rkey", refused)
    assert kind == "error", f"expected an error (remote access error completion), observed {kind} {detail!r:.60}"  # fmt: skip
    assert refused >= 1, "expected your GET to send the READ and the server to refuse its rkey, observed no such READ at the server"  # fmt: skip


@pytest.mark.points(0)
def test_gets_under_loss(lab, server, record):
    """GETs stay correct with 2 % packet loss on c1's link (where tc netem exists)"""
    r = lab.exec("c1", ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "2%"])
    if r.returncode != 0:
        pytest.skip(f"no packet loss emulation here (tc netem: {r.stderr.strip()[:120]}); behaviour under loss not measured")  # fmt: skip
    present = _keys()[0][:60]
    client = StudentClient(lab, server.ip)
    try:
        wrong = [k for i, k in enumerate(present) if client.get(k)[1] != versioned(k, _size(i))]
    finally:
        client.close()
        lab.exec("c1", ["tc", "qdisc", "del", "dev", "eth0", "root"])
    assert not wrong, f"expected correct values under 2 % loss, observed {len(wrong)} wrong"
