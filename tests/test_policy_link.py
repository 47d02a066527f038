"""The component side of the policy protocol (nslab.policy.protocol.PolicyLink),
driven by a policy peer on a real Unix socket in another thread, so that
either side can stall while the other runs.

Found by grading lab 4's solution five times on a loaded machine: one run
lost 7 of 15 points because five late answers in a row gave the policy up
for the rest of the run."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from pydantic import BaseModel

from nslab.policy.protocol import PolicyLink


class Decision(BaseModel):
    n: int


class Peer(threading.Thread):
    """A policy process stand-in: answers each ask with n=1 after `delay(i)` s."""

    def __init__(self, path: str, delay=lambda i: 0.0):
        super().__init__(daemon=True)
        self.path, self.delay = path, delay

    def run(self) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.path)
            f = s.makefile("rwb")
            json.loads(f.readline())  # setup
            f.write(b'{"type":"ready","policy":"P","info":{}}\n')
            f.flush()
            for i, line in enumerate(f):
                time.sleep(self.delay(i))
                ask = json.loads(line)
                f.write(
                    json.dumps({"type": "answer", "id": ask["id"], "decision": {"n": 1}}).encode()
                )
                f.write(b"\n")
                f.flush()


async def connected(tmp_path, delay=lambda i: 0.0, **kw) -> PolicyLink:
    link = PolicyLink(
        str(tmp_path / "p.sock"),
        "test",
        {},
        Decision,
        lambda s: Decision(n=0),
        deadline_s=0.05,
        **kw,
    )
    await link.start()
    Peer(link.path, delay).start()
    await asyncio.wait_for(link.ready.wait(), 10)
    return link


def test_component_lag_is_not_charged_to_the_policy(tmp_path):
    """The component's loop blocks past the deadline while the policy answers at
    once: the answer is in the socket when the timer fires, so it counts."""

    async def main():
        link = await connected(tmp_path)
        got = []
        for _ in range(5):
            asyncio.get_running_loop().call_soon(time.sleep, 0.15)  # the component stalls
            got.append((await link.ask({})).n)
        await link.stop()
        return got, link.counts

    got, counts = asyncio.run(main())
    assert got == [1] * 5 and counts["ok"] == 5 and counts["late"] == 0, counts


def test_a_policy_that_stalled_is_benched_then_asked_again(tmp_path):
    """Five late answers bench the policy (fallbacks at once, counted absent); after
    the bench it is asked again, and its answers count once more."""

    async def main():
        link = await connected(tmp_path, delay=lambda i: 0.12 if i < 5 else 0.0, bench_s=0.5)
        loop = asyncio.get_running_loop()
        late = [(await link.ask({})).n for _ in range(5)]
        t0 = loop.time()
        benched = [(await link.ask({})).n for _ in range(3)]
        quick = loop.time() - t0
        await asyncio.sleep(0.6)  # the bench ends; the peer has drained its late answers
        again = [(await link.ask({})).n for _ in range(3)]
        await link.stop()
        return late, benched, quick, again, link.counts

    late, benched, quick, again, counts = asyncio.run(main())
    assert late == [0] * 5 and benched == [0] * 3 and quick < 0.05, (late, benched, quick)
    assert again == [1] * 3, again
    assert counts["late"] == 5 and counts["ok"] == 3 and counts["absent"] >= 4, counts
