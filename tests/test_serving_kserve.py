"""Malformed Open Inference Protocol requests against a real pod on loopback:
each gets a 400 that says what is wrong (never a 500, never NaN results),
and the pod keeps serving, as the stock tritonclient then shows."""

from __future__ import annotations

import http.client
import json
import socket

import numpy as np
import pytest

from nslab.serving import local, metrics, models
from nslab.serving.http import split_url
from nslab.serving.testing import model_repo  # noqa: F401  (fixture)

GOOD_INPUT = {"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}


def with_input(**kw) -> dict:
    return {"inputs": [dict(GOOD_INPUT, **kw)]}


def raw_post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = split_url(url)
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("POST", "/v2/models/digits/infer", body, headers or {})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


@pytest.fixture(scope="module")
def pod(model_repo):  # noqa: F811
    with local.pods({"model": "digits", "name": "tsrv-ks"}) as (p,):
        yield p


CASES = {
    "input entry is a number": ({"inputs": [5]}, "inputs.0"),
    "input entry is null": ({"inputs": [None]}, "inputs.0"),
    "inputs is an object": ({"inputs": {"name": "INPUT0"}}, "inputs"),
    "no inputs key": ({"outputs": []}, "inputs: Field required"),
    "data is an object": (with_input(data={"a": 1}), "inputs.0.data"),
    "data full of nulls": (with_input(data=[None] * 64), "null"),
    "data of strings": (with_input(data=["x"] * 64), "numbers"),
    "data ragged": (with_input(data=[[0.0] * 63, [0.0]]), "regular array"),
    "data nested lists of nulls": (with_input(data=[[None] * 64]), "null"),
    "parameters is a string": ({**with_input(), "parameters": "fast"}, "parameters"),
    "input parameters is a list": (with_input(parameters=[1]), "inputs.0.parameters"),
    "outputs is a string": ({**with_input(), "outputs": "PROBS"}, "outputs"),
    "output entry is a number": ({**with_input(), "outputs": [3]}, "outputs.0"),
    "unknown output": ({**with_input(), "outputs": [{"name": "NOPE"}]}, "unknown output"),
    "shape is a string": (with_input(shape="1,64"), "inputs.0.shape"),
    "shape negative": (with_input(shape=[-1, 64]), "inputs.0.shape.0"),
    "shape of floats": (with_input(shape=[1.0, 64.0]), "inputs.0.shape"),
    "id is a number": ({**with_input(), "id": 7}, "id"),
    "name is null": (with_input(name=None), "inputs.0.name"),
    "typo in a key": (with_input(dtype="FP32"), "inputs.0.dtype"),
    "binary size of the wrong type": (with_input(parameters={"binary_data_size": "256"}), "256"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_json_requests_get_a_clear_400(pod, case):
    body, needle = CASES[case]
    status, resp = raw_post(pod.url, json.dumps(body).encode())
    assert status == 400, (status, resp)
    assert resp["error"].startswith("bad inference request") and needle in resp["error"], resp


RAW = {
    "nested 100,000 deep": (
        b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        {},
        "recursion",
    ),
    "NaN tokens": (
        json.dumps(with_input(data=[float("nan")] * 64)).encode(),
        {},
        "NaN",
    ),
    "not JSON": (b"{not json", {}, "Invalid JSON"),
    "JSON that is a list": (b"[1, 2]", {}, "should be an object"),
    "empty body": (b"", {}, "Invalid JSON"),
    "not UTF-8": (b'{"inputs": "\xff\xfe"}', {}, "Invalid JSON"),
    "header length not a number": (b"{}", {"Inference-Header-Content-Length": "x"}, "integer"),
    "header length past the body": (b"{}", {"Inference-Header-Content-Length": "99"}, "outside"),
    "binary data too short": (
        json.dumps(with_input(data=None, parameters={"binary_data_size": 256})).encode(),
        {"Inference-Header-Content-Length": "0"},
        "Invalid JSON",
    ),
}


@pytest.mark.parametrize("case", list(RAW))
def test_malformed_bodies_get_a_clear_400(pod, case):
    body, headers, needle = RAW[case]
    if case == "binary data too short":  # a valid header, then 10 of the 256 bytes
        headers = {"Inference-Header-Content-Length": str(len(body))}
        body += b"\0" * 10
        needle = "binary data ends"
    status, resp = raw_post(pod.url, body, headers)
    assert status == 400, (status, resp)
    assert needle in resp["error"], resp


def test_a_negative_content_length_is_a_400(pod):
    host, port = split_url(pod.url)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 400") and b"negative Content-Length" in head, head


def test_the_pod_keeps_serving_and_never_answered_500(pod, model_repo):  # noqa: F811
    for body, _ in CASES.values():  # a burst of bad requests first
        raw_post(pod.url, json.dumps(body).encode())
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed")
    c = httpclient.InferenceServerClient(pod.url.removeprefix("http://"))
    m = models.load("digits", model_repo)
    x = m.samples["INPUT0"][:3]
    for binary in (True, False):
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        r = c.infer("digits", [inp])
        assert np.array_equal(r.as_numpy("LABEL"), m.infer({"INPUT0": x})["LABEL"])
        assert np.isfinite(r.as_numpy("PROBS")).all()
    # tritonclient's own error path: a 400 surfaces as its exception with our message.
    bad = httpclient.InferInput("INPUT0", [1, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=False)
    with pytest.raises(Exception, match="expected \\[batch, \\[64\\]\\]"):
        c.infer("digits", [bad])
    c.close()
    host, port = split_url(pod.url)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/metrics")
    parsed = metrics.parse(conn.getresponse().read().decode())
    conn.close()
    assert metrics.value(parsed, "nslab_requests_total", code="500") == 0
    assert metrics.value(parsed, "nslab_requests_total", code="400") >= len(CASES)
