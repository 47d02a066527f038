# Appended by tests/test_grading_hostile_lab0.py to the reference solution: at
# import, the controller tries to read the lab's secrets, forge results and kill
# every process it can. None of it may change its grade.
import glob as _glob
import json as _json
import os as _os
import signal as _signal

for _p in _glob.glob("/tmp/*grade*/**", recursive=True) + _glob.glob("/work/*/labs/*/solution/*"):
    try:
        with open(_p) as _f:
            print("READ", _p, _f.read()[:100])
    except OSError as _exc:
        print("DENIED", _p, _exc)
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
