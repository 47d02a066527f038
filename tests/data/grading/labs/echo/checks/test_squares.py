"""Checks of the squares lab. SECRET_CHECK_TOKEN_91c2 (hidden from students)."""

import random
import socket

import pytest


def ask(lab, n: int, timeout: float = 1.0) -> str:
    r = lab_probe(lab, f"{n}\n", timeout)
    return r


def lab_probe(lab, text: str, timeout: float) -> str:
    with socket.create_connection(("127.0.0.1", lab.ports["app"]), timeout=timeout) as s:
        s.sendall(text.encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while len(data) < 1000:
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


@pytest.mark.points(2)
def test_file(lab, record):
    """out.txt lists the squares of 1..10"""
    text = lab.read_output("out.txt")
    assert text is not None, "expected a file out.txt in the work dir, observed none"
    got = text.split()
    want = [str(i * i) for i in range(1, 11)]
    record.value("lines", len(got))
    assert got == want, f"expected {' '.join(want)}, observed {' '.join(got[:12])}"


@pytest.mark.points(3)
def test_square_of_7(lab, probe, record, expect):
    """answers 7 with 49"""
    r = probe.tcp(None, "127.0.0.1", lab.ports["app"], send="7\n", timeout_s=1.0)
    assert r.ok, f"expected a TCP connection to the service, observed {r}"
    reply = (r.replies or [""])[0].strip()
    record.value("reply", reply)
    expect(reply, "==", "49", "reply to 7")


@pytest.mark.points(3)
@pytest.mark.visibility("hidden")
@pytest.mark.time_limit(2)
def test_big_number(lab):
    """answers a big number exactly"""
    # A naive blocking read without a timeout: only the grader's time limit stops it.
    with socket.create_connection(("127.0.0.1", lab.ports["app"])) as s:
        s.sendall(b"123456789\n")
        reply = s.recv(100).decode().strip()
    assert reply == str(123456789**2), f"expected {123456789**2}, observed {reply!r}"


@pytest.mark.points(2)
@pytest.mark.partial
def test_many(lab, record):
    """answers 10 numbers (partial credit)"""
    rng = random.Random(42)  # fixed seed: same questions for everyone, every time
    nums = [rng.randrange(-1000, 1000) for _ in range(10)]
    right = 0
    for n in nums:
        try:
            right += ask(lab, n) == str(n * n)
        except OSError:
            pass
    record.credit(right / len(nums), f"{right} of {len(nums)} answers right")
    assert right == len(nums), f"expected 10 right answers, observed {right}"


@pytest.mark.points(1)
@pytest.mark.visibility("after_due_date")
def test_latency(lab, probe, record, expect):
    """connects fast"""
    r = probe.tcp(None, "127.0.0.1", lab.ports["app"], count=20, timeout_s=1.0)
    lat = r.latencies
    record.cdf("TCP connect latency", lat.samples)
    record.value("connect p50", lat.p50 if lat.samples else float("nan"), "ms")
    assert lat.samples, f"expected 20 connections, observed {r}"
    expect(lat.p50, "<", 200.0, "median connect time", "ms")
