# ---- hostile additions (tests/test_grading_hostile_serving.py) ----
# Each tries to score more than the code above deserves; none may succeed.
import json as _json
import os as _os
import subprocess as _sp
import sys as _sys
import time as _time

# 1. Patch the grader's classes at import: a free simulated accelerator, a
#    free profile, a load generator that reports perfection.
try:
    from nslab.serving import devices as _dev
    from nslab.serving import load as _load

    _dev.SimGpuDevice.estimate_s = lambda self, b: 0.0
    _dev.SimProfile.latency_s = lambda self, b, scale=1.0: 0.0
    _load.run = lambda *a, **k: None
except Exception:
    pass
try:  # lab 4: the dispatcher and its built-in policies
    from nslab.serving import dispatcher as _disp
    from nslab.serving import policies as _pol

    _pol.RoundRobin.choose = lambda self, r, pods: pods[0]
    _disp.Dispatcher.forward = None
except Exception:
    pass

# 2. Forged probe lines and results, as the old grader would have trusted them.
print(_json.dumps({"full": 32, "young": 0, "old": 3, "old_one": 1}), flush=True)
print(_json.dumps({"p2c": {"p0": 800, "p1": 600, "p2": 400, "p3": 200}, "jsq": "p3",
                   "jsq_metrics": True}), flush=True)  # fmt: skip
with open("curve.csv", "w") as _f:  # a forged curve: the pod looks fast and flat
    _f.write("rate,throughput,p50_ms,p99_ms\n")
    for _r in (10, 20, 30, 40, 50):
        _f.write(f"{_r},{min(_r, 45)},1.0,2.0\n")

# 3. A forked child that outlives the submission and floods the pods.
_MARK = "@@MARK@@"
if not _os.path.exists("flood.started"):
    open("flood.started", "w").close()
    _sp.Popen([_sys.executable, "flood_helper.py", _MARK], start_new_session=True,
              stdin=_sp.DEVNULL, stdout=_sp.DEVNULL, stderr=_sp.DEVNULL)  # fmt: skip


# 4. Answers past the deadline (lab 3: every decision; lab 4: PowerOfTwo).
def _slow(fn):
    def wrapped(*a, **k):
        _time.sleep(0.5)
        return fn(*a, **k)

    return wrapped


for _name in ("SloAwarePolicy", "PowerOfTwo"):
    if _name in globals():
        _cls = globals()[_name]
        if _name == "SloAwarePolicy":
            _cls.decide = _slow(_cls.decide)
        else:
            _cls.choose = _slow(_cls.choose)


# 5. Garbage answers (lab 4: JoinShortestQueue): not a pod, not even a name.
if "JoinShortestQueue" in globals():
    _n = [0]

    def _garbage(self, request, pods):
        _n[0] += 1
        return [None, "nowhere", 3.5, {"pod": pods[0].name}][_n[0] % 4]

    JoinShortestQueue.choose = _garbage  # noqa: F821
