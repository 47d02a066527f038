"""The Open Inference Protocol (KServe v2) inference request as pydantic
models, and its decoding into NumPy arrays for a model.

The pod parses every request body with `InferenceRequest.model_validate_json`
(pydantic's own JSON parser, which also bounds nesting depth), so a request
of the wrong shape gets a 400 that names the field, never a 500. What the
schema cannot say (the model's inputs, datatypes, dims, that `data` holds
numbers and fits `shape`) `decode_inputs` checks next.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as ValidationError  # re-exported for the pod

from nslab.serving import models as model_repo

# KServe: "parameters" is an object whose values are strings, numbers or booleans.
Parameters = dict[str, Union[StrictBool, StrictInt, StrictFloat, StrictStr]]
Dim = Annotated[StrictInt, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Model):
    name: StrictStr
    shape: list[Dim]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: list[Any] | None = None  # flat or nested, row-major; numbers checked in decode


class RequestOutput(_Model):
    name: StrictStr
    parameters: Parameters | None = None


class InferenceRequest(_Model):
    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class BadRequest(Exception):
    """The request is well-formed JSON but not a valid inference request."""


def explain(exc: ValidationError) -> str:
    """pydantic's errors as one line: `inputs.0.data: Input should be a valid list; ...`."""
    parts = []
    for e in exc.errors()[:5]:
        where = ".".join(str(x) for x in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """(the request, the binary tensor data after its JSON header)."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest("Inference-Header-Content-Length is not an integer") from None
        if not 0 <= n <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {n} is outside the body's {len(body)} bytes"
            )
        header, binary = body[:n], body[n:]
    try:
        return InferenceRequest.model_validate_json(header), binary
    except ValidationError as exc:
        raise BadRequest(explain(exc)) from None


def _from_json(name: str, data: list, np_dt: Any) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise BadRequest(f"input {name}: 'data' is not a regular array: {exc}") from None
    if arr.size and arr.dtype.kind not in "biuf":
        raise BadRequest(
            f"input {name}: 'data' must hold only numbers (or booleans), "
            f"found {'null' if arr.dtype == object else arr.dtype.name} values"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise BadRequest(f"input {name}: 'data' holds NaN or infinity (not JSON numbers)")
    return arr.astype(np_dt)


def decode_inputs(
    model: model_repo.Model, req: InferenceRequest, binary: bytes
) -> tuple[dict[str, np.ndarray], int]:
    """The request's tensors as arrays of the model's inputs, and the batch size."""
    specs = {t.name: t for t in model.inputs}
    got: dict[str, np.ndarray] = {}
    offset = 0
    if not req.inputs:
        raise BadRequest("request has no 'inputs'")
    for t in req.inputs:
        if t.name not in specs:
            raise BadRequest(
                f"unexpected input {t.name!r}; model {model.name} expects {list(specs)}"
            )
        if t.name in got:
            raise BadRequest(f"input {t.name} given twice")
        spec = specs[t.name]
        if t.datatype != spec.datatype:
            raise BadRequest(f"input {t.name}: datatype {t.datatype!r}, expected {spec.datatype}")
        dims = spec.dims
        if len(t.shape) != len(dims) + 1 or any(
            d != -1 and d != s for d, s in zip(dims, t.shape[1:], strict=True)
        ):
            raise BadRequest(
                f"input {t.name}: shape {t.shape}, expected [batch, {dims}] (-1 = any)"
            )
        np_dt = model_repo.DTYPES[t.datatype]
        count = math.prod(t.shape)
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            want = count * np.dtype(np_dt).itemsize
            if not isinstance(size, int) or isinstance(size, bool) or size != want:
                raise BadRequest(
                    f"input {t.name}: binary_data_size {size!r}, expected {want} "
                    f"({count} x {t.datatype})"
                )
            if offset + size > len(binary):
                raise BadRequest(
                    f"input {t.name}: binary data ends at byte {len(binary)}, needs {offset + size}"
                )
            arr = np.frombuffer(binary, np_dt, count=count, offset=offset)
            offset += size
        elif t.data is not None:
            arr = _from_json(t.name, t.data, np_dt)
        else:
            raise BadRequest(f"input {t.name}: no 'data' and no binary_data_size")
        if arr.size != count:
            raise BadRequest(
                f"input {t.name}: data does not fit shape {t.shape}: {arr.size} values for {count}"
            )
        got[t.name] = arr.reshape(t.shape)
    missing = set(specs) - set(got)
    if missing:
        raise BadRequest(f"missing input(s) {sorted(missing)}")
    rows = {a.shape[0] for a in got.values()}
    if len(rows) != 1:
        raise BadRequest("inputs disagree on the batch dimension")
    n = rows.pop()
    if n < 1:
        raise BadRequest("batch dimension is 0")
    if n > model.max_batch_size:
        raise BadRequest(f"batch of {n} exceeds the model's max_batch_size {model.max_batch_size}")
    return got, n
