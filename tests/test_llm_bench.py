"""`nslab bench serve` against a real `nslab serve llm`: its counts agree with the
server's own Prometheus counters, failures are counted and shown, arrivals follow
the requested process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("torch")

from llm_support import NSLAB, metric, start_server, stop_server  # noqa: E402

from nslab.llm.bench import arrival_gaps  # noqa: E402


@pytest.fixture(scope="module")
def server():
    proc, url = start_server()
    yield url
    stop_server(proc)


def bench(url: str, *args: str, tmp: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp / "result.json"
    argv = [NSLAB, "bench", "serve", "--base-url", url, "--save-result"]
    argv += ["--result-dir", str(tmp), "--result-filename", out.name, *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return r, (json.loads(out.read_text()) if out.exists() else {})


def test_random_dataset_counts_match_the_server(server, tmp_path):
    gen0 = metric(server, "vllm:generation_tokens_total")
    done0 = metric(server, "vllm:request_success_total")
    r, res = bench(
        server,
        *("--num-prompts", "12", "--request-rate", "30", "--random-input-len", "40"),
        *("--random-output-len", "10", "--ignore-eos", "--goodput", "ttft:60000", "tpot:60000"),
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    for line in ("Successful requests:", "Failed requests:", "Mean TTFT (ms):", "P99 ITL (ms):"):
        assert line in r.stdout
    assert res["completed"] == 12 and res["failed"] == 0
    assert res["total_input_tokens"] == 12 * 40  # exact: prompts are token ids from /tokenize
    assert res["total_output_tokens"] == 12 * 10
    assert metric(server, "vllm:generation_tokens_total") - gen0 == 120
    assert metric(server, "vllm:request_success_total") - done0 == 12
    assert res["request_goodput"] == pytest.approx(res["request_throughput"])  # loose SLOs
    for key in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "ttfts", "itls", "output_lens"):
        assert key in res


def test_prefix_repetition_hits_the_prefix_cache(server, tmp_path):
    hits0 = metric(server, "vllm:prefix_cache_hits_total")
    r, res = bench(
        server,
        *("--dataset-name", "prefix-repetition", "--num-prompts", "8", "--max-concurrency", "2"),
        *("--prefix-repetition-prefix-len", "64", "--prefix-repetition-num-prefixes", "2"),
        tmp=tmp_path,
    )
    assert r.returncode == 0 and res["completed"] == 8, r.stdout + r.stderr
    assert "Maximum request concurrency:" in r.stdout
    # 6 of the 8 requests find their 64-token prefix cached (block size 4).
    assert metric(server, "vllm:prefix_cache_hits_total") - hits0 >= 6 * 64


def test_chat_trace(server, tmp_path):
    png = tmp_path / "ttft.png"
    r, res = bench(
        server, "--dataset-name", "chat", "--num-prompts", "4", "--plot", str(png), tmp=tmp_path
    )
    assert r.returncode == 0 and res["completed"] == 4, r.stdout + r.stderr
    assert res["backend"] == "openai-chat"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_requests_are_counted_and_shown(tmp_path):
    proc, url = start_server("--max-num-seqs", "1", "--max-waiting", "1")
    try:
        r, res = bench(
            url,
            *("--num-prompts", "10", "--random-input-len", "8", "--random-output-len", "200"),
            "--ignore-eos",
            tmp=tmp_path,
        )
    finally:
        stop_server(proc)
    assert res["failed"] > 0 and res["completed"] > 0, r.stdout
    assert res["completed"] + res["failed"] == 10
    assert "HTTP 503" in r.stdout  # the first failure, shown


def test_no_server_is_a_clear_error(tmp_path):
    r, _ = bench("http://127.0.0.1:9", "--num-prompts", "2", tmp=tmp_path)
    assert r.returncode != 0 and "is the server up" in r.stderr


def test_bad_goodput_is_a_clear_error(tmp_path):
    r, _ = bench("http://127.0.0.1:9", "--goodput", "ttft=5", tmp=tmp_path)
    assert r.returncode != 0 and "--goodput ttft=5" in r.stderr


def test_arrivals_poisson_and_gamma():
    gaps = arrival_gaps(2000, rate=50, burstiness=1.0, seed=1)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.1)
    bursty = arrival_gaps(2000, rate=50, burstiness=0.25, seed=1)
    assert sum(bursty) / len(bursty) == pytest.approx(1 / 50, rel=0.15)
    cv = lambda g: (sum((x - sum(g) / len(g)) ** 2 for x in g) / len(g)) ** 0.5 / (sum(g) / len(g))  # noqa: E731
    assert cv(gaps) == pytest.approx(1.0, rel=0.1) and cv(bursty) > 1.6
    assert arrival_gaps(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]


def test_sweep_over_concurrency_draws_throughput_and_ttft(server, tmp_path):
    tput, ttft = tmp_path / "tput.svg", tmp_path / "ttft.png"
    r, res = bench(
        server,
        *("--num-prompts", "4", "--random-input-len", "24", "--random-output-len", "6"),
        *("--ignore-eos", "--sweep-max-concurrency", "1,4"),
        *("--plot-throughput", str(tput), "--plot", str(ttft)),
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Sweep over max concurrency" in r.stdout
    runs = res["results"]
    assert [x["max_concurrency"] for x in runs] == [1, 4]
    assert all(x["completed"] == 4 and x["total_output_tokens"] == 24 for x in runs)
    # four requests at once finish sooner than one at a time on a batching engine
    assert runs[1]["duration"] < runs[0]["duration"]
    assert tput.read_bytes().lstrip().startswith(b"<?xml") and b"<svg" in tput.read_bytes()
    assert ttft.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_sweep_is_a_clear_error(tmp_path):
    r, _ = bench("http://127.0.0.1:9", "--sweep-max-concurrency", "4,x", tmp=tmp_path)
    assert r.returncode != 0 and "--sweep-max-concurrency 4,x" in r.stderr
    r, _ = bench("http://127.0.0.1:9", "--plot-throughput", "t.png", tmp=tmp_path)
    assert r.returncode != 0 and "needs --sweep-max-concurrency" in r.stderr
