"""Models, built locally and kept in a Triton-like model repository.

Layout (as Triton's, with YAML instead of protobuf text for the config):

    <repo>/<name>/config.yaml         name, backend, max_batch_size, inputs, outputs
    <repo>/<name>/1/model.npz         weights (NumPy arrays)
    <repo>/<name>/1/samples.npz       example inputs (and labels) for load and checks

Nothing is downloaded: `digits` is trained on scikit-learn's bundled digits
data set, `cnn` has seeded random weights (compute-heavy, outputs are
deterministic), `identity` echoes its input (for overhead measurements).
The repository is built on first use in `$NSLAB_MODEL_REPO` or
`~/.cache/nslab/models` (about 3 s, mostly scikit-learn's import and training).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nslab.errors import NslabError

BUILTIN = ("identity", "digits", "cnn")

# KServe v2 / Triton datatypes.
DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def default_repo() -> Path:
    env = os.environ.get("NSLAB_MODEL_REPO")
    return Path(env) if env else Path.home() / ".cache" / "nslab" / "models"


@dataclass
class TensorSpec:
    name: str
    datatype: str
    dims: list[int]  # without the batch dimension; -1 = any size

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.datatype, "dims": self.dims}


class Model:
    """A loaded model: `infer` maps batched input arrays to batched outputs."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    config: dict[str, Any]

    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = path
        self.config = config
        self.name = config["name"]
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.inputs = [TensorSpec(t["name"], t["data_type"], t["dims"]) for t in config["input"]]
        self.outputs = [TensorSpec(t["name"], t["data_type"], t["dims"]) for t in config["output"]]
        version = path / str(config.get("version", 1))
        self.weights = dict(np.load(version / "model.npz"))
        samples = version / "samples.npz"
        self.samples = dict(np.load(samples)) if samples.exists() else {}

    def metadata(self) -> dict[str, Any]:
        def spec(t: TensorSpec) -> dict[str, Any]:
            shape = ([-1] if self.max_batch_size > 0 else []) + list(t.dims)
            return {"name": t.name, "datatype": t.datatype, "shape": shape}

        return {
            "name": self.name,
            "versions": [str(self.config.get("version", 1))],
            "platform": "nslab_numpy",
            "inputs": [spec(t) for t in self.inputs],
            "outputs": [spec(t) for t in self.outputs],
        }

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.forward(np, inputs)

    def forward(self, xp, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def torch_forward(self, torch, inputs: dict[str, Any], w: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class Identity(Model):
    def forward(self, xp, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}

    def torch_forward(self, torch, inputs, w):
        return {"OUTPUT0": inputs["INPUT0"]}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Digits(Model):
    """A one-hidden-layer MLP (64-64-10) trained by scikit-learn; input: 64
    pixel intensities 0..16 (8x8 image, as sklearn.datasets.load_digits)."""

    def forward(self, xp, inputs):
        w = self.weights
        x = inputs["INPUT0"].astype(np.float32) / 16.0
        h = np.maximum(x @ w["W1"] + w["b1"], 0.0)
        probs = _softmax(h @ w["W2"] + w["b2"]).astype(np.float32)
        return {"PROBS": probs, "LABEL": probs.argmax(axis=1).astype(np.int64)[:, None]}

    def torch_forward(self, torch, inputs, w):
        x = inputs["INPUT0"].float() / 16.0
        h = torch.relu(x @ w["W1"] + w["b1"])
        probs = torch.softmax(h @ w["W2"] + w["b2"], dim=1)
        return {"PROBS": probs, "LABEL": probs.argmax(dim=1).long()[:, None]}


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x [B,C,H,W], w [O,C,3,3], padding 1 -> [B,O,H,W] via im2col + one matmul."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # B,C,H,W,3,3
    out = np.einsum("bchwij,ocij->bohw", cols, w, optimize=True)
    return out + b[None, :, None, None]


class Cnn(Model):
    """conv3x3(3->16) relu maxpool2 conv3x3(16->32) relu global-avg-pool fc(32->10);
    seeded He-initialised weights: meaningless but deterministic outputs."""

    def forward(self, xp, inputs):
        w = self.weights
        x = inputs["INPUT0"].astype(np.float32)
        h = np.maximum(_conv3x3(x, w["c1"], w["c1b"]), 0.0)
        b, c, hh, ww = h.shape
        h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
        h = np.maximum(_conv3x3(h, w["c2"], w["c2b"]), 0.0)
        feat = h.mean(axis=(2, 3))
        return {"LOGITS": (feat @ w["fc"] + w["fcb"]).astype(np.float32)}

    def torch_forward(self, torch, inputs, w):
        f = torch.nn.functional
        h = f.relu(f.conv2d(inputs["INPUT0"].float(), w["c1"], w["c1b"], padding=1))
        h = f.max_pool2d(h, 2)
        h = f.relu(f.conv2d(h, w["c2"], w["c2b"], padding=1))
        return {"LOGITS": h.mean(dim=(2, 3)) @ w["fc"] + w["fcb"]}


CLASSES = {"identity": Identity, "digits": Digits, "cnn": Cnn}


def _write(dest: Path, config: dict, weights: dict, samples: dict) -> None:
    (dest / "1").mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    np.savez(dest / "1" / "model.npz", **weights)
    np.savez(dest / "1" / "samples.npz", **samples)


def _build_identity(dest: Path) -> None:
    rng = np.random.default_rng(0)
    config = {
        "name": "identity",
        "backend": "identity",
        "max_batch_size": 256,
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "FP32", "dims": [-1]}],
    }
    _write(dest, config, {"none": np.zeros(1)}, {"INPUT0": rng.random((64, 16), np.float32)})


def _build_digits(dest: Path) -> None:
    # Imported here: scikit-learn costs ~1 s to import and is needed only to train.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=0)
    clf.fit(Xtr / 16.0, ytr)
    acc = float(clf.score(Xte / 16.0, yte))
    weights = {
        "W1": clf.coefs_[0].astype(np.float32),
        "b1": clf.intercepts_[0].astype(np.float32),
        "W2": clf.coefs_[1].astype(np.float32),
        "b2": clf.intercepts_[1].astype(np.float32),
    }
    config = {
        "name": "digits",
        "backend": "digits",
        "max_batch_size": 256,
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [64]}],
        "output": [
            {"name": "PROBS", "data_type": "FP32", "dims": [10]},
            {"name": "LABEL", "data_type": "INT64", "dims": [1]},
        ],
        "parameters": {"test_accuracy": round(acc, 4), "trained_on": "sklearn load_digits, 75%"},
    }
    samples = {"INPUT0": Xte.astype(np.float32), "labels": yte.astype(np.int64)}
    _write(dest, config, weights, samples)


def _build_cnn(dest: Path) -> None:
    rng = np.random.default_rng(1234)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    weights = {
        "c1": he(16, 3, 3, 3),
        "c1b": np.zeros(16, np.float32),
        "c2": he(32, 16, 3, 3),
        "c2b": np.zeros(32, np.float32),
        "fc": (rng.standard_normal((32, 10)) * 0.25).astype(np.float32),
        "fcb": np.zeros(10, np.float32),
    }
    config = {
        "name": "cnn",
        "backend": "cnn",
        "max_batch_size": 64,
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [3, 32, 32]}],
        "output": [{"name": "LOGITS", "data_type": "FP32", "dims": [10]}],
    }
    samples = {"INPUT0": rng.random((16, 3, 32, 32), np.float32)}
    _write(dest, config, weights, samples)


BUILDERS = {"identity": _build_identity, "digits": _build_digits, "cnn": _build_cnn}


def ensure(name: str, repo: Path | str | None = None) -> Path:
    """The model's directory, building it first if it is a built-in one not yet built.
    Safe against concurrent builders (pods starting together): lock + atomic rename."""
    repo = Path(repo) if repo else default_repo()
    dest = repo / name
    if (dest / "config.yaml").exists():
        return dest
    if name not in BUILDERS:
        raise NslabError(
            f"model {name!r} is not in the model repository {repo} and is not a built-in "
            f"model; built-in models: {', '.join(BUILTIN)}"
        )
    repo.mkdir(parents=True, exist_ok=True)
    with open(repo / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "config.yaml").exists():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=repo))
        try:
            BUILDERS[name](tmp / name)
            os.rename(tmp / name, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load(name: str, repo: Path | str | None = None) -> Model:
    """Load a model from the repository (building a built-in one on first use)."""
    path = ensure(name, repo)
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except yaml.YAMLError as exc:
        raise NslabError(f"{path / 'config.yaml'}: not valid YAML: {exc}") from exc
    backend = config.get("backend", name)
    if backend not in CLASSES:
        raise NslabError(
            f"{path / 'config.yaml'}: backend {backend!r} unknown; use one of {', '.join(CLASSES)}"
        )
    return CLASSES[backend](path, config)
