"""The load generator: percentiles on synthetic data, arrival processes, achieved
rate against a real pod on loopback, outputs (CSV/JSON/plots)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from nslab.errors import NslabError
from nslab.serving import load, local
from nslab.serving.stats import percentile, summary, within
from nslab.serving.testing import model_repo  # noqa: F401  (fixture)


def test_nearest_rank_percentiles():
    v = list(range(1, 101))  # 1..100
    assert percentile(v, 50) == 50
    assert percentile(v, 99) == 99
    assert percentile(v, 100) == 100
    assert percentile(v, 0.5) == 1
    w = np.arange(1, 1001)
    assert percentile(w, 99.9) == 999
    assert percentile([7.0], 99) == 7.0
    assert np.isnan(percentile([], 50))
    rng = np.random.default_rng(3)
    x = rng.permutation(10000)  # order must not matter
    assert percentile(x, 95) == 9499
    s = summary(np.array([0.001, 0.002, 0.003, 0.004]))
    assert s["p50_ms"] == pytest.approx(2.0) and s["max_ms"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        percentile(v, 0)


def test_stability_rule():
    assert within([100, 104, 96], 10)
    assert not within([100, 125, 96], 10)
    assert not within([float("nan"), 1.0], 10)


@pytest.mark.parametrize("kind, cv", [("constant", 0.0), ("poisson", 1.0), ("gamma", 3.0)])
def test_arrival_processes_have_the_asked_mean_and_cv(kind, cv):
    gaps = load.interarrivals(kind, 200.0, 200_000, cv=cv, rng=np.random.default_rng(1))
    assert gaps.mean() == pytest.approx(1 / 200.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.05)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(NslabError, match="arrival process"):
        load.interarrivals("pareto", 10, 5)
    with pytest.raises(NslabError, match="rate must be > 0"):
        load.interarrivals("poisson", 0, 5)
    with pytest.raises(NslabError, match="exactly one of rate"):
        load.run("http://127.0.0.1:1", "identity", rate=1, concurrency=1)


@pytest.fixture(scope="module")
def identity_pod(model_repo):  # noqa: F811
    with local.pods({"model": "identity", "name": "tsrv-id"}) as (p,):
        yield p


@pytest.mark.parametrize("rate", [200, 800])
def test_achieved_rate_matches_requested(identity_pod, rate):
    r = load.run(
        identity_pod.url,
        "identity",
        rate=rate,
        arrival="constant",
        warmup_s=0.3,
        window_s=1.0,
        stable_windows=0,
        max_windows=3,
    )
    # 10 % tolerance: other engineers' tests may load this 2-core machine. When
    # the generator's loop is woken late it catches up (sends what is due), so
    # the achieved rate holds even then; the median send must still be on time.
    assert r.achieved_rate == pytest.approx(rate, rel=0.10), r.line()
    assert r.send_lag_p50_ms < 2.0, f"median send {r.send_lag_p50_ms:.2f} ms late"
    assert r.throughput >= 0.75 * rate, r.line()  # and the pod answered them
    assert r.errors == 0 and r.rejected == 0


def test_poisson_rate_and_closed_loop(identity_pod):
    r = load.run(
        identity_pod.url,
        "identity",
        rate=300,
        arrival="poisson",
        warmup_s=0.3,
        window_s=1.0,
        stable_windows=0,
        max_windows=3,
        seed=7,
    )
    assert r.achieved_rate == pytest.approx(300, rel=0.15), r.line()
    c = load.run(
        identity_pod.url,
        "identity",
        concurrency=2,
        warmup_s=0.3,
        window_s=0.5,
        stable_windows=0,
        max_windows=2,
    )
    assert c.ok > 50 and c.errors == 0 and c.mode == "closed"


def test_stops_when_windows_agree(identity_pod):
    r = load.run(
        identity_pod.url,
        "identity",
        rate=200,
        arrival="constant",
        warmup_s=0.3,
        window_s=0.5,
        stable_windows=3,
        stability_pct=25,
        max_windows=8,
    )
    assert len(r.windows) <= 8
    if r.stable:  # usually after 3 windows; a busy box may need more
        assert within([w["throughput"] for w in r.windows[-3:]], 25)


def test_connection_refused_counts_errors(model_repo):  # noqa: F811
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = load.run(
        f"http://127.0.0.1:{port}",
        "identity",
        rate=50,
        warmup_s=0.1,
        window_s=0.5,
        stable_windows=0,
        max_windows=1,
    )
    assert r.ok == 0 and r.errors > 10


def test_goodput_and_outputs(identity_pod, tmp_path):
    rs = load.sweep(
        identity_pod.url,
        "identity",
        rates=[100, 200],
        slo_ms=0.001,
        warmup_s=0.2,
        window_s=0.5,
        stable_windows=0,
        max_windows=1,
    )
    assert all(r.goodput is not None and r.goodput < r.throughput for r in rs)  # 1 µs SLO: no one
    paths = load.write(rs, tmp_path / "tsrv_out", "test")
    names = {p.name for p in paths}
    assert {
        "results.json",
        "results.csv",
        "latency_vs_load.png",
        "latency_vs_load.svg",
        "latency_cdf.png",
        "latency_cdf.svg",
    } <= names
    rows = list(csv.DictReader(open(tmp_path / "tsrv_out" / "results.csv")))
    assert [float(r["rate"]) for r in rows] == [100.0, 200.0]
    data = json.loads((tmp_path / "tsrv_out" / "results.json").read_text())
    assert len(data[0]["latencies_ms"]) == data[0]["ok"]
    assert (tmp_path / "tsrv_out" / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_load_writes_results(identity_pod, tmp_path, capsys):
    from nslab.cli import main

    out = tmp_path / "tsrv_cli"
    rc = main(
        [
            "load",
            identity_pod.url,
            "--model",
            "identity",
            "--rate",
            "100,150",
            "--warmup-s",
            "0.2",
            "--window-s",
            "0.5",
            "--stable-windows",
            "0",
            "--max-windows",
            "1",
            "--verify",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "rate=100/s" in text and "rate=150/s" in text
    assert (out / "latency_vs_load.svg").exists() and (out / "results.csv").exists()


def test_cli_load_without_server_is_a_clear_error(model_repo, capsys):  # noqa: F811
    from nslab.cli import main

    rc = main(
        [
            "load",
            "http://127.0.0.1:1",
            "--model",
            "identity",
            "--rate",
            "20",
            "--warmup-s",
            "0.1",
            "--window-s",
            "0.3",
            "--stable-windows",
            "0",
            "--max-windows",
            "1",
        ]
    )
    assert rc == 1
    assert "no request succeeded against http://127.0.0.1:1" in capsys.readouterr().err
