"""Checks of lab 2 (RDMA key-value lookups).

The grader runs its own KV server (nslab.rdma.kv) in node kv and loads a
hidden key set over TCP from c2. The student's kvclient.py runs sandboxed in
c1, driven by grader-written code that times every GET. Verdicts come from
what the grader observes: returned values (self-validating: key, version and
a checksum inside), a capture on c1's link, and the server's own counters
(handler runs vs one-sided READs served by the transport)."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import nslab
from nslab import measure
from nslab.grading import sandbox

REPO_ROOT = str(Path(nslab.__file__).resolve().parent.parent)
SEED = 2026
N_KEYS, N_ABSENT, N_HOT = 200, 25, 12
SEND_OPS = set(range(0x00, 0x06))  # SEND FIRST..ONLY_IMM
WRITE_OPS = set(range(0x06, 0x0C))
READ_REQUEST = 0x0C
P50_LIMIT_MS = 20.0  # generous: the soft provider is Python on a loaded 2-core VM


def _keys() -> tuple[list[bytes], list[bytes], list[bytes]]:
    rnd = random.Random(SEED)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_"

    def key() -> bytes:
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(6, 40))).encode()

    present = list(dict.fromkeys(key() for _ in range(N_KEYS)))
    absent = [k for k in (key() + b"~" for _ in range(N_ABSENT)) if k not in present]
    hot = [b"hot-%03d" % i for i in range(N_HOT)]
    return present, absent, hot


def _last_json(text: str, what: str):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"{what}: expected a JSON result line, observed output:\n{text[-1500:]}")


def grader_py(lab, node: str, code: str, timeout: float = 60):
    """Run grader code (root) in a node; returns its last JSON line."""
    code = f"import sys; sys.path.insert(0, {REPO_ROOT!r})\n" + code
    r = lab.exec(node, [sys.executable, "-c", code], timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"grader problem in {node}: {r.stderr[-1500:]}")
    return _last_json(r.stdout, f"grader code in {node}")


def student_py(lab, node: str, code: str, timeout: float = 60):
    """Run grader-written code that imports the student's kvclient, as the
    sandboxed student user inside `node`. Returns its last JSON line."""
    wrap = [sys.executable, "-m", "nslab.grading.sandbox", "--user", lab.user,
            "--limits", json.dumps(lab.limits.as_dict()), "--cwd", str(lab.submission), "--",
            sys.executable, "-c", code]  # fmt: skip
    env = sandbox.student_env(str(lab.submission), {"PYTHONPATH": f"{lab.submission}:{REPO_ROOT}"})
    p = lab.popen(node, wrap, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise AssertionError(f"your client did not finish within {timeout:.0f} s") from None
    return _last_json(
        out, f"your kvclient.py (exit status {p.returncode}; its error output: {err[-1200:]})"
    )


@pytest.fixture(scope="module")
def server(lab):
    """The grader's KV server in node kv, loaded with the hidden key set."""
    ip = lab.ip("kv")
    log = open(lab.logs_dir / "kvserver.log", "w")  # noqa: SIM115 - closed below
    env = {"PYTHONPATH": REPO_ROOT, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = lab.popen("kv", [sys.executable, "-m", "nslab.rdma.kv", "serve", "--addr", ip], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # fmt: skip
    try:
        present, _, hot = _keys()
        load = [k.hex() for k in present + hot]
        grader_py(lab, "c2", f"""
import json, time
from nslab.rdma.kv import TcpClient, versioned_value
end = time.monotonic() + 20
while True:
    try:
        t = TcpClient({ip!r}); break
    except OSError:
        if time.monotonic() > end: raise
        time.sleep(0.2)
for i, h in enumerate({load!r}):
    k = bytes.fromhex(h)
    t.put(k, versioned_value(k, 1, 20 + (i * 37) % 280))
print(json.dumps({{"loaded": len({load!r})}}))
""")  # fmt: skip
        yield ip
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def server_stats(lab, ip: str) -> dict:
    return grader_py(lab, "c2", f"import json\nfrom nslab.rdma.kv import TcpClient\nprint(json.dumps(TcpClient({ip!r}).stats()))")  # fmt: skip


GET_DRIVER = """
import json, time, traceback
import kvclient
out = {{"values": {{}}, "lat_us": []}}
try:
    c = kvclient.KVClient({ip!r})
    for h in {keys!r}:
        t0 = time.perf_counter()
        v = c.get(bytes.fromhex(h))
        out["lat_us"].append((time.perf_counter() - t0) * 1e6)
        out["values"][h] = None if v is None else bytes(v).hex()
except Exception as exc:
    out["error"] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def get_run(lab, server):
    """One GET-only run of the student's client over the hidden keys, with a
    capture on c1's link and the server's counters before and after."""
    present, absent, _ = _keys()
    keys = [k.hex() for k in present + absent]
    random.Random(SEED + 1).shuffle(keys)
    before = server_stats(lab, server)
    cap = measure.capture(lab.engine, "c1:eth0", "udp port 4791", max_packets=50000, snaplen=96)
    with cap:
        res = student_py(lab, "c1", GET_DRIVER.format(ip=server, keys=keys), timeout=75)
    after = server_stats(lab, server)
    ops = []
    c1 = lab.ip("c1")
    for p in cap.packets:
        if p.haslayer("UDP") and p["IP"].src == c1:
            payload = bytes(p["UDP"].payload)
            if payload:
                ops.append(payload[0])
    cap.remove()
    return {"res": res, "before": before, "after": after, "ops": ops, "n": len(keys)}


@pytest.mark.points(3)
def test_get_returns_the_stored_values(get_run, record):
    """GET returns the stored value for every hidden key, and nothing for absent keys"""
    from nslab.rdma.kv import check_value

    res = get_run["res"]
    assert "error" not in res, f"your client raised {res.get('error')}"
    present, absent, _ = _keys()
    wrong = []
    for k in present:
        v = res["values"].get(k.hex())
        if v is None or check_value(k, bytes.fromhex(v)) != 1:
            wrong.append(k)
    extra = [k for k in absent if res["values"].get(k.hex()) is not None]
    record.value("keys checked", len(present) + len(absent))
    assert not wrong, f"expected the stored value for {len(present)} keys, observed {len(wrong)} wrong or missing (e.g. {wrong[0]!r})"  # fmt: skip
    assert not extra, f"expected None for {len(absent)} absent keys, observed a value for {len(extra)} (e.g. {extra[0]!r})"  # fmt: skip


@pytest.mark.points(2)
def test_gets_are_one_sided_reads_on_the_wire(get_run, record):
    """the capture shows GETs as RDMA READ requests only (no SEND, no WRITE)"""
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
    b, a = get_run["before"], get_run["after"]
    handled = a["handler_calls"] - b["handler_calls"]
    served = a["one_sided_read"] - b["one_sided_read"]
    record.value("server handler runs during GETs", handled)
    record.value("one-sided READs served by the server's transport", served)
    assert handled == 0, f"expected 0 runs of the server's handler during {get_run['n']} GETs, observed {handled}: a GET must not be an RPC"  # fmt: skip
    assert served >= get_run["n"], f"expected at least {get_run['n']} one-sided READs served, observed {served}"  # fmt: skip


@pytest.mark.points(1)
def test_get_latency(lab, server, get_run, record):
    """GET latency percentiles (measured around your get() calls), against the TCP RPC baseline"""
    lat = sorted(get_run["res"].get("lat_us") or [0.0])
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    keys = [k.hex() for k in _keys()[0][:100]]
    tcp = grader_py(lab, "c1", f"""
import json, time, statistics
from nslab.rdma.kv import TcpClient
t = TcpClient({server!r}); lat = []
for h in {keys!r}:
    t0 = time.perf_counter(); t.get(bytes.fromhex(h)); lat.append((time.perf_counter() - t0) * 1e6)
print(json.dumps({{"p50": statistics.median(lat)}}))
""")  # fmt: skip
    record.value("GET p50", round(p50, 1), "us")
    record.value("GET p99", round(p99, 1), "us")
    record.value("TCP RPC GET p50 (baseline)", round(tcp["p50"], 1), "us")
    record.cdf("GET latency", lat, "us")
    assert p50 <= P50_LIMIT_MS * 1000, f"expected GET p50 at most {P50_LIMIT_MS} ms, observed {p50 / 1000:.1f} ms"  # fmt: skip


@pytest.mark.points(2)
@pytest.mark.time_limit(120)
def test_gets_consistent_during_updates(lab, server, record):
    """GETs racing concurrent PUTs return whole values (never torn), never older than seen before"""
    from nslab.rdma.kv import check_value

    _, _, hot = _keys()
    updater = lab.popen("c2", [sys.executable, "-m", "nslab.rdma.kv", "update", server, "--keys", ",".join(k.decode() for k in hot), "--seconds", "8"], env={"PYTHONPATH": REPO_ROOT, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        res = student_py(lab, "c1", f"""
import json, time
import kvclient
c = kvclient.KVClient({server!r}); seen = []
end = time.monotonic() + 5
for i in range(4000):
    if time.monotonic() > end: break
    for h in {[k.hex() for k in hot]!r}:
        v = c.get(bytes.fromhex(h))
        seen.append([h, None if v is None else bytes(v).hex()])
print(json.dumps({{"seen": seen}}))
""", timeout=60)  # fmt: skip
    finally:
        out, err = updater.communicate(timeout=30)
    puts = _last_json(out, "the grader's updater") if updater.returncode == 0 else {"puts": 0}
    last: dict[str, int] = {}
    bad, back = [], []
    for h, v in res["seen"]:
        ver = None if v is None else check_value(bytes.fromhex(h), bytes.fromhex(v))
        if ver is None:
            bad.append(h)
            continue
        if ver < last.get(h, 0):
            back.append(h)
        last[h] = ver
    record.value("GETs during updates", len(res["seen"]))
    record.value("concurrent PUTs", puts.get("puts", 0))
    assert res["seen"], "expected GETs during the updates, observed none"
    assert not bad, f"expected whole values, observed {len(bad)} torn or mixed values of {len(res['seen'])}: validate versions/checksum and retry"  # fmt: skip
    assert not back, f"expected versions never to go back, observed {len(back)} older values after newer ones"  # fmt: skip
    assert max(last.values()) > 1, (
        "expected to observe updated versions, observed only the initial ones"
    )


@pytest.mark.points(1)
def test_wrong_rkey_gives_an_error_not_data(lab, server, record):
    """a GET with a wrong rkey fails with an error completion instead of returning data"""
    key = _keys()[0][0].hex()
    res = student_py(lab, "c1", f"""
import json
import kvclient
c = kvclient.KVClient({server!r})
c.conn.rkey ^= 0x5A5A5A5A  # corrupt the key the server handed out
try:
    v = c.get(bytes.fromhex({key!r}))
    print(json.dumps({{"returned": None if v is None else bytes(v).hex()}}))
except Exception as exc:
    print(json.dumps({{"raised": f"{{type(exc).__name__}}: {{exc}}"}}))
""")  # fmt: skip
    record.value("outcome", json.dumps(res))
    assert "raised" in res, f"expected an error (remote access error completion), observed get() returning {res.get('returned')!r:.60}"  # fmt: skip


@pytest.mark.points(0)
def test_gets_under_loss(lab, server, record):
    """GETs stay correct with 2 % packet loss on c1's link (where tc netem exists)"""
    r = lab.exec("c1", ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "loss", "2%"])
    if r.returncode != 0:
        pytest.skip(f"no packet loss emulation here (tc netem: {r.stderr.strip()[:120]}); behaviour under loss not measured")  # fmt: skip
    try:
        present = [k.hex() for k in _keys()[0][:60]]
        res = student_py(lab, "c1", GET_DRIVER.format(ip=server, keys=present), timeout=75)
    finally:
        lab.exec("c1", ["tc", "qdisc", "del", "dev", "eth0", "root"])
    from nslab.rdma.kv import check_value

    assert "error" not in res, f"your client raised {res.get('error')} under loss"
    wrong = [h for h in present if check_value(bytes.fromhex(h), bytes.fromhex(res["values"].get(h) or "")) is None]  # fmt: skip
    assert not wrong, f"expected correct values under 2 % loss, observed {len(wrong)} wrong"
