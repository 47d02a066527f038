"""The process that owns a running lab.

Started detached by `nslab.engine.up`; builds the lab, reports progress and
readiness on a pipe, then waits. SIGTERM, SIGINT or SIGHUP make it tear the
lab down and exit. If it is SIGKILLed, the recorded state lets `nslab down`
or the next `nslab up` clean up instead.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sys
import traceback

from nslab.engine.build import Builder
from nslab.engine.state import LabState, proc_of
from nslab.engine.teardown import teardown
from nslab.errors import NslabError


class Stop(BaseException):
    """Raised from a signal handler to unwind the build or the wait."""


def _stop(signum, frame) -> None:
    raise Stop(signal.Signals(signum).name)


def main(name: str, fd: int) -> int:
    pipe = os.fdopen(fd, "w", buffering=1)

    def say(kind: str, msg: str = "") -> None:
        try:
            pipe.write(f"{kind} {msg.replace(chr(10), chr(92) + 'n')}\n")
        except (BrokenPipeError, ValueError):
            pass  # nobody is listening any more (up returned or was killed)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    os.environ["NSLAB_LAB"] = name
    # Each host holds a pty (two descriptors): a thousand hosts pass the usual
    # soft limit of 1024. Raising the soft limit up to the hard one needs no privilege.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    state = LabState.load(name)
    state.supervisor = proc_of(os.getpid(), "supervisor")
    state.save()
    with open(state.dir / "topology.pickle", "rb") as f:
        topo = pickle.load(f)
    with open(state.dir / "request.pickle", "rb") as f:
        request = pickle.load(f)
    rc = 0
    try:
        Builder(topo, state, lambda m: say("P", m), request.get("controller")).build()
        say("READY")
        pipe.close()
        while True:
            signal.pause()
    except Stop as why:
        print(f"stopping on {why}", flush=True)
    except NslabError as exc:
        say("ERROR", str(exc))
        rc = 1
    except Exception as exc:  # a bug: keep the traceback in supervisor.log
        traceback.print_exc()
        say("ERROR", f"{type(exc).__name__}: {exc} (see {state.dir / 'supervisor.log'})")
        rc = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut teardown short
        teardown(LabState.load(name) if state.path.exists() else state)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
