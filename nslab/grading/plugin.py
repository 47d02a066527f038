"""The grading pytest plugin: load with `pytest -p nslab.grading.plugin`
(`nslab check` and `nslab grade` do; it is not registered globally).

Marks
    @pytest.mark.points(n)              what the check is worth (default 1)
    @pytest.mark.partial                the check may award a fraction with record.credit()
    @pytest.mark.visibility(v)          visible (default) | hidden | after_due_date | after_published
                                        (checks in the lab's grader/checks/ default to hidden)
    @pytest.mark.time_limit(s)          per-check timeout (default: lab.yaml check_timeout)
    @pytest.mark.variants(*names)       run only on these lab variants ('default' = lab.yaml params)

Fixtures
    lab        the running lab (GradedLab), one per variant, torn down after
    node_exec  lab.exec: run a command in a node as the grader
    ping, iperf3, capture, probe, openflow, latency   the instruments of nslab.measure
    record     observations for the report: record.value(), .cdf(), .series(), .credit(), .note()
    expect     expect(observed, op, expected, what, unit): fails with "expected X, observed Y"

A check that exceeds its time limit fails with "timed out after N s"; it never passes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import operator
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nslab import measure
from nslab.grading import sandbox
from nslab.grading.runtime import GradedLab
from nslab.labs import VISIBILITIES, LabSpec, Variant, load_lab

CONFIG_ENV = "NSLAB_GRADE_CONFIG"
_RANK = {"visible": 0, "after_published": 1, "after_due_date": 2, "hidden": 3}
_STATE = pytest.StashKey[dict]()
_RECORD = pytest.StashKey["Record"]()
MAX_SAMPLES = 5000


class CheckTimeout(BaseException):
    """Raised in a check that ran out of time. A BaseException, so that a
    check's own `except Exception` cannot swallow it."""


class Record:
    """Observations of one check, shown in report.html and in the feedback."""

    def __init__(self, partial: bool):
        self.values: dict[str, dict[str, Any]] = {}
        self.plots: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.fraction: float | None = None
        self._partial = partial

    def value(self, name: str, value: float | int | str, unit: str = "") -> None:
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        self.values[name] = {"value": value, "unit": unit}

    def cdf(self, title: str, samples: list[float], unit: str = "ms") -> None:
        """A latency distribution, drawn as a CDF in the report."""
        self.plots.append(
            {"kind": "cdf", "title": title, "unit": unit, "samples": list(samples)[:MAX_SAMPLES]}
        )

    def series(
        self, title: str, x: list[float], y: list[float], xlabel: str = "time (s)", ylabel: str = ""
    ) -> None:
        """A curve over time (e.g. throughput per interval)."""
        n = min(len(x), len(y), MAX_SAMPLES)
        self.plots.append(
            {
                "kind": "series",
                "title": title,
                "x": list(x)[:n],
                "y": list(y)[:n],
                "xlabel": xlabel,
                "ylabel": ylabel,
            }
        )

    def note(self, text: str) -> None:
        self.notes.append(str(text))

    def credit(self, fraction: float, why: str = "") -> None:
        """Award part of the check's points (needs @pytest.mark.partial)."""
        if not self._partial:
            raise RuntimeError("record.credit() needs @pytest.mark.partial on the check")
        self.fraction = max(0.0, min(1.0, float(fraction)))
        if why:
            self.notes.append(why)


_OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    ">=": (operator.ge, "at least"),
    ">": (operator.gt, "more than"),
    "<=": (operator.le, "at most"),
    "<": (operator.lt, "less than"),
    "==": (operator.eq, ""),
    "!=": (operator.ne, "not"),
}


def expect(observed: Any, op: str, expected: Any, what: str = "value", unit: str = "") -> None:
    """Assert `observed op expected` with the feedback the student reads:
    'throughput: expected at least 80 Mbit/s, observed 42.1 Mbit/s'."""
    fn, words = _OPS[op]
    if not fn(observed, expected):
        u = f" {unit}" if unit else ""
        exp = f"{words} {_fmt(expected)}{u}".strip()
        raise AssertionError(f"{what}: expected {exp}, observed {_fmt(observed)}{u}")


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# -- configuration -----------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--nslab-config", default=None, help="grading run config (JSON), written by nslab grade"
    )


def pytest_configure(config: pytest.Config) -> None:
    for m in (
        "points(n): points the check is worth",
        "partial: the check may award part of its points via record.credit()",
        "visibility(v): visible | hidden | after_due_date | after_published",
        "time_limit(seconds): per-check timeout",
        "variants(*names): run the check only on these lab variants",
    ):
        config.addinivalue_line("markers", m)
    path = config.getoption("--nslab-config") or os.environ.get(CONFIG_ENV)
    if not path:
        raise pytest.UsageError(
            "nslab.grading.plugin needs a grading config: run checks with `nslab check` or `nslab grade`"
        )
    cfg = json.loads(Path(path).read_text())
    spec = load_lab(Path(cfg["lab_dir"]))
    config.stash[_STATE] = {
        "cfg": cfg,
        "spec": spec,
        "deadline": time.monotonic() + float(cfg.get("time_budget", spec.time_budget)),
        "results": Path(cfg["results"]),
    }


def _state(config: pytest.Config) -> dict:
    return config.stash[_STATE]


def _variants(spec: LabSpec, public: bool) -> list[Variant]:
    default = Variant("default", dict(spec.params), "visible", 1.0)
    vs = [default] + list(spec.variants)
    return [v for v in vs if not public or v.visibility == "visible"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "lab" not in metafunc.fixturenames:
        return
    st = _state(metafunc.config)
    variants = _variants(st["spec"], st["cfg"].get("visibility") == "public")
    mark = metafunc.definition.get_closest_marker("variants")
    if mark is not None:
        variants = [v for v in variants if v.name in mark.args]
    if len(st["spec"].variants) == 0 and mark is None:
        return  # one lab: keep plain test ids
    metafunc.parametrize(
        "lab", variants, indirect=True, scope="session", ids=[v.name for v in variants]
    )


def _visibility(item: pytest.Item) -> str:
    m = item.get_closest_marker("visibility")
    # checks from the lab's grader/checks/ are hidden unless marked otherwise
    hidden_file = item.path.name in _state(item.config)["cfg"].get("hidden_files", [])
    vis = m.args[0] if m and m.args else ("hidden" if hidden_file else "visible")
    if vis not in VISIBILITIES:
        raise pytest.UsageError(
            f"{item.nodeid}: visibility must be one of {VISIBILITIES}, not {vis!r}"
        )
    variant = _item_variant(item)
    if variant is not None and _RANK[variant.visibility] > _RANK[vis]:
        vis = variant.visibility
    return vis


def _item_variant(item: pytest.Item) -> Variant | None:
    cs = getattr(item, "callspec", None)
    v = cs.params.get("lab") if cs else None
    return v if isinstance(v, Variant) else None


def _points(item: pytest.Item) -> float:
    m = item.get_closest_marker("points")
    pts = float(m.args[0]) if m and m.args else 1.0
    v = _item_variant(item)
    return pts * (v.weight if v else 1.0)


def _name(item: pytest.Item) -> str:
    fn = getattr(item, "function", None)
    doc = (fn.__doc__ or "").strip().splitlines() if fn else []
    base = doc[0].strip() if doc else item.name.split("[")[0]
    v = _item_variant(item)
    return f"{base} [{v.name}]" if v and v.name != "default" else base


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    st = _state(config)
    # a check whose variants are all filtered out (e.g. hidden ones in the public
    # view) is not a check of this run, not a skipped one
    empty = [i for i in items if _no_variant(i)]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [i for i in items if i not in empty]
    if st["cfg"].get("visibility") == "public":
        shown = {"visible"}
        due = st["spec"].due
        if due is not None and dt.datetime.now(dt.timezone.utc) > due:
            shown.add("after_due_date")  # past the due date students may see these
        keep = [i for i in items if _visibility(i) in shown]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep


def _no_variant(item: pytest.Item) -> bool:
    cs = getattr(item, "callspec", None)
    return cs is not None and "lab" in cs.params and not isinstance(cs.params["lab"], Variant)


def pytest_collection_finish(session: pytest.Session) -> None:
    st = _state(session.config)
    collected = [
        {
            "nodeid": i.nodeid,
            "name": _name(i),
            "max_score": _points(i),
            "visibility": _visibility(i),
        }
        for i in session.items
    ]
    path = st["results"].with_name("collected.json")
    path.write_text(json.dumps(collected, indent=1))


# -- time limits ---------------------------------------------------------------
def _on_alarm(signum: int, frame: Any) -> None:
    raise CheckTimeout(_ALARM["msg"])


_ALARM: dict[str, str] = {"msg": ""}


def _limited(seconds: float, msg: str) -> Callable[[], None]:
    """Arm a real-time alarm that raises CheckTimeout; returns the disarm function."""
    _ALARM["msg"] = msg
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))

    def disarm() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)

    return disarm


def _check_limit(item: pytest.Item) -> float:
    m = item.get_closest_marker("time_limit")
    return float(m.args[0]) if m and m.args else _state(item.config)["spec"].check_timeout


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    st = _state(item.config)
    left = st["deadline"] - time.monotonic()
    if left <= 0:
        budget = st["cfg"].get("time_budget", st["spec"].time_budget)
        raise CheckTimeout(
            f"not run: the lab's time budget of {budget:g} s was used up by earlier checks"
        )
    limit = min(st["spec"].setup_timeout + _check_limit(item), left)
    disarm = _limited(limit, f"timed out after {limit:g} s while setting up the lab")
    try:
        return (yield)
    finally:
        disarm()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    limit = _check_limit(item)
    disarm = _limited(limit, f"timed out after {limit:g} s")
    try:
        return (yield)
    finally:
        disarm()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    limit = _state(item.config)["spec"].setup_timeout
    disarm = _limited(limit, f"timed out after {limit:g} s while tearing down the lab")
    try:
        return (yield)
    finally:
        disarm()


# -- results -------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Iterator[pytest.TestReport]:
    rep = yield
    phases = item.stash.setdefault(_PHASES, {})
    phases[call.when] = (rep, call.excinfo)
    return rep


_PHASES = pytest.StashKey[dict]()


def _reason(when: str, excinfo: Any) -> tuple[str, str]:
    """(outcome, human reason) of a failed phase."""
    exc = excinfo.value
    if isinstance(exc, CheckTimeout):
        return "timeout", str(exc)
    if excinfo.errisinstance(pytest.skip.Exception):
        return "skipped", f"skipped: {getattr(exc, 'msg', exc)}"
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, AssertionError):
        # keep the check's own message; drop pytest's introspection of a custom-message assert
        head, sep, _rest = msg.partition("\nassert ")
        text = head if sep and head.strip() else msg
    elif excinfo.errisinstance(pytest.fail.Exception):
        text = getattr(exc, "msg", msg)
    else:
        text = f"{type(exc).__name__}: {msg}"
    if when == "setup":
        return "error", f"could not set up: {text}"
    if when == "teardown":
        return "error", f"error while cleaning up: {text}"
    return (
        "failed"
        if isinstance(exc, AssertionError) or excinfo.errisinstance(pytest.fail.Exception)
        else "error"
    ), text


def _clip(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else text[: n - 20] + "\n... (cut)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    t0 = time.monotonic()
    res = yield
    phases = item.stash.get(_PHASES, {})
    outcome, reason = "passed", ""
    for when in ("setup", "call", "teardown"):
        rep, excinfo = phases.get(when, (None, None))
        if rep is not None and not rep.passed and excinfo is not None:
            outcome, reason = _reason(when, excinfo)
            break
    rec = item.stash.get(_RECORD, None)
    max_score = _points(item)
    frac = rec.fraction if rec is not None and rec.fraction is not None else None
    if outcome == "passed":
        score = max_score * (frac if frac is not None else 1.0)
    elif outcome == "failed" and frac is not None:
        score = max_score * frac
    else:
        score = 0.0
    entry = {
        "nodeid": item.nodeid,
        "name": _name(item),
        "outcome": outcome,
        "score": round(score, 4),
        "max_score": max_score,
        "visibility": _visibility(item),
        "reason": _clip(reason),
        "values": rec.values if rec else {},
        "plots": rec.plots if rec else [],
        "notes": rec.notes if rec else [],
        "duration_s": round(time.monotonic() - t0, 3),
    }
    with open(_state(item.config)["results"], "a") as f:
        f.write(json.dumps(entry) + "\n")
    return res


# -- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[GradedLab]:
    st = _state(request.config)
    cfg, spec = st["cfg"], st["spec"]
    variant = getattr(request, "param", None)
    if not isinstance(variant, Variant):
        variant = Variant("default", dict(spec.params), "visible", 1.0)
    # one short instance name per variant: interface names are <instance>-<node>-<iface>
    idx = spec.variants.index(variant) + 1 if variant in spec.variants else 0
    instance = cfg["instance"] + (str(idx) if idx else "")
    glab = GradedLab(
        spec,
        Path(cfg["submission"]),
        cfg["user"],
        sandbox.Limits.from_dict(cfg.get("limits")),
        instance,
        Path(cfg["logs"]) / variant.name,
        variant,
    )
    glab.start()
    try:
        yield glab
    finally:
        glab.stop()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    rec = Record(request.node.get_closest_marker("partial") is not None)
    request.node.stash[_RECORD] = rec
    return rec


@pytest.fixture(name="expect")
def expect_fixture() -> Callable[..., None]:
    return expect


@pytest.fixture
def node_exec(lab: GradedLab) -> Callable[..., Any]:
    return lab.exec


@pytest.fixture
def ping(lab: GradedLab) -> Callable[..., measure.PingResult]:
    def _ping(src: str, dst: str, count: int = 3, **kw: Any) -> measure.PingResult:
        return measure.ping(lab, src, lab.ip(dst), count=count, **kw)

    return _ping


@pytest.fixture
def iperf3(lab: GradedLab) -> Callable[..., measure.IperfResult]:
    def _iperf3(client: str, server: str, seconds: float = 3.0, **kw: Any) -> measure.IperfResult:
        return measure.iperf3(lab, client, server, lab.ip(server), seconds=seconds, **kw)

    return _iperf3


@pytest.fixture
def capture(
    lab: GradedLab, request: pytest.FixtureRequest
) -> Iterator[Callable[..., measure.Capture]]:
    caps: list[measure.Capture] = []
    art = Path(_state(request.config)["cfg"]["artifacts"])
    art.mkdir(parents=True, exist_ok=True)

    def _capture(where: str, bpf: str = "", **kw: Any) -> measure.Capture:
        name = f"{request.node.name}-{len(caps)}".replace("/", "_").replace(":", "_")
        kw.setdefault("path", art / f"{name[:80]}.pcap")
        runner = lab.engine if lab.engine is not None else None
        cap = measure.capture(runner, where, bpf, **kw)
        caps.append(cap)
        return cap

    yield _capture
    for c in caps:
        c.stop()


class _Probe:
    def __init__(self, lab: GradedLab):
        self.lab = lab

    def tcp(self, node: str | None, host: str, port: int, **kw: Any) -> measure.TcpResult:
        runner = self.lab if node is not None else None
        return measure.tcp_connect(runner, node, self.lab.ip(host) if node else host, port, **kw)

    def http(self, node: str | None, url: str, **kw: Any) -> measure.HttpResult:
        return measure.http_request(self.lab if node is not None else None, node, url, **kw)


@pytest.fixture
def probe(lab: GradedLab) -> _Probe:
    return _Probe(lab)


class _OpenFlow:
    def __init__(self, lab: GradedLab):
        self.lab = lab

    def bridge(self, switch: str) -> str:
        return self.lab.bridge(switch) if self.lab.engine is not None else switch

    def flows(self, switch: str, table: int | None = None) -> list[measure.Flow]:
        return measure.dump_flows(self.bridge(switch), table)

    def ports(self, switch: str) -> dict[str, measure.PortStats]:
        return measure.port_stats(self.bridge(switch))

    def packet_ins(self, switch: str) -> int:
        return measure.packets_to_controller(self.bridge(switch))


@pytest.fixture
def openflow(lab: GradedLab) -> _OpenFlow:
    return _OpenFlow(lab)


@pytest.fixture
def latency() -> Callable[..., measure.Latencies]:
    def _latency(
        fn: Callable[[], object], n: int = 100, interval_s: float = 0.0, timeout_s: float = 30.0
    ) -> measure.Latencies:
        return measure.LatencySampler(fn, n, interval_s, timeout_s).run()

    return _latency
