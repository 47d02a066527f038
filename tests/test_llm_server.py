"""`nslab serve llm`: the OpenAI-compatible server, with the stock `openai` client as
the oracle, and bad input that must always get an OpenAI-shaped 4xx."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time

import pytest
from llm_support import NSLAB, metric, start_server, stop_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def server():
    proc, url = start_server()
    yield url
    stop_server(proc)
    assert proc.returncode in (0, -15), proc.stderr.read()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def test_completions_with_the_openai_client(client):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=7, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 7
    # Streaming gives the same text, chunk by chunk, and the usage chunk last.
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="Hello",
            max_tokens=7,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7


def test_chat_with_the_openai_client(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny",
        messages=msgs,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens
    # Without include_usage there is no usage chunk, as with OpenAI. This one samples
    # (temperature 1), so ignore_eos keeps a sampled end-of-sequence from ending it early.
    plain = list(
        client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=3, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert all(c.choices for c in plain) and plain[-1].choices[0].finish_reason == "length"


def test_sse_wire_format(server):
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server + "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and "usage" not in first


def test_models_tokenize_detokenize_health(server, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    r = httpx.post(server + "/tokenize", json={"model": "tiny", "prompt": "héllo"})
    assert r.json()["tokens"] == list("héllo".encode()) and r.json()["count"] == 6
    r = httpx.post(server + "/detokenize", json={"model": "tiny", "tokens": [104, 105]})
    assert r.json() == {"prompt": "hi"}
    assert httpx.get(server + "/health").status_code == 200


def test_metrics_count_what_was_served(server, client):
    before = metric(server, "vllm:prefix_cache_hits_total")
    prompt = "A shared prompt that is long enough to fill several KV blocks."
    for _ in range(2):
        client.completions.create(model="tiny", prompt=prompt, max_tokens=2)
    assert metric(server, "vllm:prefix_cache_hits_total") > before
    assert metric(server, "vllm:time_to_first_token_seconds_count") >= 2
    assert metric(server, "vllm:inter_token_latency_seconds_count") >= 2
    assert metric(server, "vllm:e2e_request_latency_seconds_count") >= 2
    assert 0 < metric(server, "nslab:prefix_cache_hit_rate") <= 1
    assert metric(server, "vllm:num_requests_running") == 0
    assert metric(server, "vllm:kv_cache_usage_perc") == 0


DEEP = "[" * 100_000 + "]" * 100_000
BAD = [
    ("completions", {"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "max_tokens": 0}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "max_tokens": -3}, 400),
    ("completions", {"model": "tiny", "prompt": 12}, 400),
    ("completions", {"model": "tiny", "prompt": None}, 400),
    ("completions", {"model": "tiny", "prompt": [1, 99999]}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "temperature": "hot"}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "temperature": 9}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "top_p": 0}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "stop": [1]}, 400),
    ("completions", {"model": "tiny", "prompt": "x", "n": 2}, 400),
    ("completions", {"model": "tiny"}, 400),
    ("completions", {"model": "gpt-4", "prompt": "x"}, 404),
    ("completions", {"model": "tiny", "prompt": "x" * 1100}, 400),
    ("completions", {"model": "tiny", "prompt": "x" * 1000, "max_tokens": 100}, 400),
    ("completions", [1, 2], 400),
    ("completions", "just a string", 400),
    ("chat/completions", {"model": "tiny", "messages": []}, 400),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400),
    ("chat/completions", {"model": "tiny", "messages": "hi"}, 400),
    ("chat/completions", {"model": "tiny", "messages": [None]}, 400),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD)
def test_bad_requests_get_openai_errors(server, path, body, status):
    r = httpx.post(f"{server}/v1/{path}", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw",
    [b'{"model": ', b"\xff\xfe", DEEP.encode(), b"", b"x" * (2 << 20)],
    ids=["truncated", "not-utf8", "nested-100000", "empty", "huge-2MiB"],
)
def test_malformed_bodies_get_4xx_and_the_server_keeps_serving(server, client, raw):
    r = httpx.post(server + "/v1/completions", content=raw)
    assert 400 <= r.status_code < 500, r.text
    assert "message" in r.json()["error"]
    r = client.completions.create(
        model="tiny", prompt="still there?", max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert r.usage.completion_tokens == 2


def test_unknown_path_and_method(server):
    assert httpx.get(server + "/v1/nothing").status_code == 404
    r = httpx.get(server + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="tiny", prompt="x" * 2000)


def test_client_that_goes_away_frees_its_blocks(server):
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 900, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server + "/v1/completions", json=body) as r:
        for _ in r.iter_lines():
            break  # hang up after the first event
    deadline = time.monotonic() + 10
    while metric(server, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "vllm:num_requests_running") == 0
    assert metric(server, "vllm:kv_cache_usage_perc") == 0


def test_full_queue_gets_503_never_500():
    proc, url = start_server("--max-num-seqs", "1", "--max-waiting", "2")
    try:
        body = {"model": "tiny", "prompt": "go", "max_tokens": 300, "ignore_eos": True}

        def one(_):
            return httpx.post(url + "/v1/completions", json=body, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(one, range(12)))
        assert 200 in codes and 503 in codes, codes
        assert set(codes) <= {200, 503}, codes
        assert httpx.get(url + "/health").status_code == 200
        r = httpx.post(url + "/v1/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200
    finally:
        stop_server(proc)


def test_serve_llm_cuda_without_gpu_is_a_clear_error():
    try:
        import torch
    except ImportError:
        pytest.skip("torch not installed")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = subprocess.run(
        [NSLAB, "serve", "llm", "--model", "tiny", "--device", "cuda", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert r.returncode != 0 and "no CUDA GPU" in r.stderr
