"""The inference pod over real HTTP on loopback: Open Inference Protocol endpoints,
a stock tritonclient, metrics, models, dynamic batching and sim-gpu timing."""

from __future__ import annotations

import asyncio
import json
import statistics
import urllib.error
import urllib.request

import numpy as np
import pytest

from nslab.errors import NslabError
from nslab.serving import load, local, metrics, models
from nslab.serving.devices import PROFILES, parse_profile
from nslab.serving.pod import PodConfig, command
from nslab.serving.testing import model_repo  # noqa: F401  (fixture)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post(url: str, obj) -> tuple[int, dict]:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def digits_pod(model_repo):  # noqa: F811
    with local.pods({"model": "digits", "name": "tsrv-d"}) as (p,):
        yield p


def test_digits_model_is_accurate(model_repo):  # noqa: F811
    m = models.load("digits", model_repo)
    pred = m.infer({"INPUT0": m.samples["INPUT0"]})["LABEL"][:, 0]
    acc = float((pred == m.samples["labels"]).mean())
    assert acc >= 0.9, f"digits accuracy {acc:.3f} on the held-out quarter, expected >= 0.9"
    assert m.config["parameters"]["test_accuracy"] == pytest.approx(acc, abs=1e-3)


def test_cnn_is_deterministic_and_identity_echoes(model_repo):  # noqa: F811
    cnn = models.load("cnn", model_repo)
    x = cnn.samples["INPUT0"][:2]
    a, b = cnn.infer({"INPUT0": x})["LOGITS"], cnn.infer({"INPUT0": x})["LOGITS"]
    assert a.shape == (2, 10) and np.array_equal(a, b) and np.abs(a).sum() > 0
    ident = models.load("identity", model_repo)
    v = np.arange(5, dtype=np.float32)[None]
    assert np.array_equal(ident.infer({"INPUT0": v})["OUTPUT0"], v)


def test_unknown_model_is_a_clear_error(model_repo):  # noqa: F811
    with pytest.raises(NslabError, match="built-in models: identity, digits, cnn"):
        models.load("resnet9000", model_repo)


def test_health_metadata_and_infer(digits_pod, model_repo):  # noqa: F811
    u = digits_pod.url
    assert get(u + "/v2/health/live")[0] == 200
    assert get(u + "/v2/health/ready")[0] == 200
    assert get(u + "/v2/models/digits/ready")[0] == 200
    status, body = get(u + "/v2/models/digits")
    meta = json.loads(body)
    assert status == 200 and meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}
    ]
    m = models.load("digits", model_repo)
    x = m.samples["INPUT0"][:3]
    status, resp = post(
        u + "/v2/models/digits/infer",
        {
            "id": "r1",
            "inputs": [
                {"name": "INPUT0", "shape": [3, 64], "datatype": "FP32", "data": x.tolist()}
            ],
        },
    )
    assert status == 200 and resp["id"] == "r1"
    out = {o["name"]: o for o in resp["outputs"]}
    assert out["LABEL"]["shape"] == [3, 1]
    assert out["LABEL"]["data"] == m.infer({"INPUT0": x})["LABEL"][:, 0].tolist()


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{not json", 400, "bad inference request"),
        ({"inputs": []}, 400, "no 'inputs'"),
        ({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "'X'"),
        (
            {
                "inputs": [
                    {"name": "INPUT0", "shape": [1, 64], "datatype": "INT8", "data": [0] * 64}
                ]
            },
            400,
            "datatype",
        ),
        (
            {
                "inputs": [
                    {"name": "INPUT0", "shape": [1, 63], "datatype": "FP32", "data": [0] * 63}
                ]
            },
            400,
            "expected [batch, [64]]",
        ),
        (
            {
                "inputs": [
                    {"name": "INPUT0", "shape": [2, 64], "datatype": "FP32", "data": [0] * 64}
                ]
            },
            400,
            "does not fit",
        ),
    ],
)
def test_bad_requests_get_json_errors(digits_pod, body, status, needle):
    got, resp = post(digits_pod.url + "/v2/models/digits/infer", body)
    assert got == status and needle in resp["error"], resp


def test_unknown_paths_and_models_are_404(digits_pod):
    assert get(digits_pod.url + "/v2/models/nope")[0] == 404
    assert get(digits_pod.url + "/v1/whatever")[0] == 404


def test_stock_tritonclient_works(digits_pod, model_repo):  # noqa: F811
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    c = httpclient.InferenceServerClient(digits_pod.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
    assert c.get_model_metadata("digits")["name"] == "digits"
    m = models.load("digits", model_repo)
    x = m.samples["INPUT0"][:4]
    ref = m.infer({"INPUT0": x})
    for binary in (True, False):  # binary tensor extension and plain JSON
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("PROBS", "LABEL")]
        r = c.infer("digits", [inp], outputs=outs)
        assert np.allclose(r.as_numpy("PROBS"), ref["PROBS"], atol=1e-6)
        assert np.array_equal(r.as_numpy("LABEL"), ref["LABEL"])
    c.close()


def test_metrics_count_requests(digits_pod):
    before = metrics.parse(get(digits_pod.url + "/metrics")[1].decode())
    x = [0.0] * 64
    for _ in range(3):
        post(
            digits_pod.url + "/v2/models/digits/infer",
            {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": x}]},
        )
    after = metrics.parse(get(digits_pod.url + "/metrics")[1].decode())
    n = metrics.value(after, "nslab_requests_total", code="200")
    assert n - metrics.value(before, "nslab_requests_total", code="200") == 3
    for name in (
        "nslab_queue_length",
        "nslab_batch_size_count",
        "nslab_queue_seconds_sum",
        "nslab_compute_seconds_sum",
    ):
        assert name in after, f"{name} missing from /metrics"


def test_pod_config_errors_name_the_key():
    with pytest.raises(NslabError, match="unknown key.*max_batch"):
        PodConfig.from_dict({"max_batch": 4})
    with pytest.raises(NslabError, match="'max_batch_size' = 'x'"):
        PodConfig.from_dict({"max_batch_size": "x"})
    with pytest.raises(NslabError, match="device 'tpu'"):
        PodConfig.from_dict({"device": "tpu"})
    cmd = command({"model": "cnn", "device": "sim-gpu", "profile": "slow", "port": 9000})
    assert cmd[1:3] == ["-m", "nslab.serving.pod"] and json.loads(cmd[-1])["port"] == 9000


def test_profiles_follow_their_formula():
    p = parse_profile("a=10,c=1,sat=4")
    assert p.latency_s(1) == pytest.approx(0.011)
    assert p.latency_s(4) == pytest.approx(0.014)
    assert p.latency_s(5) == pytest.approx(0.014 + 0.011)  # a second wave
    assert PROFILES["slow"].throughput(32) > 10 * PROFILES["slow"].throughput(1)
    with pytest.raises(NslabError, match="unknown sim-gpu profile"):
        parse_profile("h100-magic")


def _infer_many(url: str, n: int, concurrency: int) -> list[dict]:
    """n requests from `concurrency` clients at once; returns the response parameters."""
    from nslab.serving.http import Pool, split_url

    async def main():
        pool = Pool(*split_url(url))
        body = json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
                ]
            }
        ).encode()
        out = []

        async def client(k):
            for _ in range(k):
                status, _, b = await pool.request(
                    "POST", "/v2/models/digits/infer", body, timeout=10
                )
                out.append((status, json.loads(b)))

        await asyncio.gather(*(client(n // concurrency) for _ in range(concurrency)))
        pool.close()
        return out

    return asyncio.run(main())


def test_sim_gpu_batch_time_follows_profile(model_repo):  # noqa: F811
    cfg = {
        "model": "digits",
        "device": "sim-gpu",
        "profile": "a=20,c=2,sat=8",
        "max_batch_size": 8,
        "max_queue_delay_us": 20000,
    }
    with local.pods(cfg) as (p,):
        single = _infer_many(p.url, 15, 1)
        t1 = statistics.median(r["parameters"]["compute_us"] for _, r in single) / 1000
        full = [r for _, r in _infer_many(p.url, 48, 8)]
    assert t1 == pytest.approx(22.0, abs=3.0), f"batch-1 service time {t1} ms, profile says 22 ms"
    by_size = {}
    for r in full:
        by_size.setdefault(r["parameters"]["batch_size"], []).append(r["parameters"]["compute_us"])
    assert 8 in by_size, f"no full batch of 8 formed: {sorted(by_size)}"
    t8 = statistics.median(by_size[8]) / 1000
    assert t8 == pytest.approx(36.0, abs=4.0), f"batch-8 service time {t8} ms, profile says 36 ms"


def test_batches_grow_under_load_and_delay_is_bounded(model_repo):  # noqa: F811
    cfg = {
        "model": "digits",
        "device": "sim-gpu",
        "profile": "a=10,c=0.2,sat=32",
        "max_batch_size": 16,
        "max_queue_delay_us": 5000,
    }
    with local.pods(cfg) as (p,):
        light = _infer_many(p.url, 10, 1)
        heavy = _infer_many(p.url, 160, 32)
        m = metrics.parse(get(p.url + "/metrics")[1].decode())
    light_bs = statistics.mean(r["parameters"]["batch_size"] for _, r in light)
    heavy_bs = statistics.mean(r["parameters"]["batch_size"] for _, r in heavy)
    assert light_bs == 1 and heavy_bs >= 8, (light_bs, heavy_bs)
    # A lone request waits max_queue_delay for company, then goes alone.
    q = statistics.median(r["parameters"]["queue_us"] for _, r in light) / 1000
    assert 4.0 <= q <= 10.0, f"lone request queued {q} ms, max_queue_delay is 5 ms"
    assert metrics.value(m, "nslab_batch_size_count") < 170  # fewer batches than requests
    assert max(r["parameters"]["batch_size"] for _, r in heavy) <= 16


def test_queue_limit_rejects_with_503(model_repo):  # noqa: F811
    cfg = {"model": "digits", "device": "sim-gpu", "profile": "a=50,c=0,sat=1", "queue_limit": 4}
    with local.pods(cfg) as (p,):
        res = _infer_many(p.url, 24, 12)
        m = metrics.parse(get(p.url + "/metrics")[1].decode())
    codes = [s for s, _ in res]
    assert codes.count(503) > 0 and codes.count(200) > 0, codes
    assert all("queue full" in r["error"] for s, r in res if s == 503)
    assert metrics.value(m, "nslab_rejected_total") == codes.count(503)


def test_load_generator_verifies_outputs(digits_pod, model_repo):  # noqa: F811
    r = load.run(
        digits_pod.url,
        "digits",
        concurrency=2,
        warmup_s=0.2,
        window_s=0.5,
        stable_windows=0,
        max_windows=2,
        verify=True,
    )
    assert r.ok > 20 and r.mismatches == 0 and r.errors == 0


@pytest.mark.gpu
def test_cuda_device_matches_cpu(model_repo):  # noqa: F811
    from nslab.serving.devices import CudaDevice, cuda_available

    ok, why = cuda_available()
    if not ok:
        pytest.skip(f"no CUDA path here: {why}")
    for name in ("digits", "cnn"):
        m = models.load(name, model_repo)
        x = m.samples["INPUT0"][:8]
        dev = CudaDevice(m)
        got = asyncio.run(dev.run({"INPUT0": x}, 8))
        ref = m.infer({"INPUT0": x})
        for k, v in ref.items():
            assert np.allclose(got[k], v, rtol=1e-3, atol=1e-4), f"{name}.{k} differs on CUDA"


def test_cuda_device_without_gpu_is_a_clear_error(model_repo):  # noqa: F811
    from nslab.serving.devices import cuda_available, make_device

    if cuda_available()[0]:
        pytest.skip("a GPU is present: the error path does not apply")
    with pytest.raises(NslabError, match="device 'cuda'.*use 'cpu' or 'sim-gpu'"):
        make_device("cuda", models.load("digits", model_repo))


def test_pod_uses_a_policy_file_and_yaml_config(model_repo, tmp_path):  # noqa: F811
    pol = tmp_path / "tsrv_pairs.py"
    pol.write_text(
        "from nslab.serving.batching import BatchPolicy\n"
        "class Pairs(BatchPolicy):\n"
        "    def decide(self, s):\n"
        "        return 2 if s.queued_items >= 2 or s.oldest_wait_s > 0.05 else 0\n"
    )
    cfg_file = tmp_path / "tsrv_pod.yaml"
    cfg_file.write_text(
        f"model: digits\ndevice: sim-gpu\nprofile: a=10,c=0,sat=8\nmax_batch_size: 8\n"
        f"policy: {pol}:Pairs\n"
    )
    import argparse

    from nslab.serving.pod import add_pod_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_pod_arguments(p)
    cfg = config_from_args(p.parse_args(["--config", str(cfg_file), "--max-queue-delay-us", "5"]))
    assert cfg.max_batch_size == 8 and cfg.max_queue_delay_us == 5 and cfg.policy.endswith("Pairs")
    with local.pods(
        {k: getattr(cfg, k) for k in ("model", "device", "profile", "max_batch_size", "policy")}
    ) as (pod,):
        sizes = {r["parameters"]["batch_size"] for _, r in _infer_many(pod.url, 40, 8)}
    assert sizes <= {1, 2} and 2 in sizes, sizes  # the file's policy, not Triton's rule


def test_concurrency_runs_batches_in_parallel(model_repo):  # noqa: F811
    # sim-gpu, 30 ms per request, no batching: 2 instances serve 8 concurrent
    # requests in about half the time of 1 instance.
    import time

    base = {"model": "digits", "device": "sim-gpu", "profile": "a=30,c=0,sat=1"}
    times = {}
    with local.pods(base, dict(base, concurrency=2)) as (one, two):
        for name, p in (("one", one), ("two", two)):
            _infer_many(p.url, 2, 1)  # connect and warm up
            t = time.perf_counter()
            res = _infer_many(p.url, 16, 8)
            times[name] = time.perf_counter() - t
            assert all(s == 200 for s, _ in res)
    assert times["two"] < 0.75 * times["one"], times
