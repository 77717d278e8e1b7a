"""The HTTP front door: the Open Inference Protocol (KServe v2 REST) in front of a serving runtime.

Phones (or anything else) speak the protocol that NVIDIA Triton Inference Server implements, so
the stock ``tritonclient.http`` client, ``perf_analyzer`` and plain curl work unchanged:

======  ==========================================  ============================================
GET     ``/v2/health/live``                         200 while the process serves HTTP
GET     ``/v2/health/ready``                        200 while ``runtime.ready``, else 400
GET     ``/v2``                                     server metadata (name, version, extensions)
GET     ``/v2/models/{name}[/versions/1]``          model metadata
GET     ``/v2/models/{name}[/versions/1]/ready``    200 while ``runtime.ready``, else 400
POST    ``/v2/models/{name}[/versions/1]/infer``    inference
GET     ``/metrics``                                Prometheus text format
======  ==========================================  ============================================

Health and readiness answer with the protocol's convention, 200 for true and a 4xx (400) for
false; a load balancer treats any non-2xx as "not ready".

**Models and tensors.** One protocol model per fragment type, named by `FragmentSpec.name` (e.g.
``resnet50.relu_12``), with a single version ``"1"``. It has one input, ``activation`` (`INPUT`),
of shape ``[1, *row_shape]``, and one output, ``output`` (`OUTPUT`), of shape
``[1, *output_row_shape]``. A request carries exactly one row: the runtime batches rows across
requests itself, so the batch dimension is fixed at 1 and the metadata says so (no ``-1``).
Datatypes follow `DATATYPES` (FP32, FP16, BF16, FP64, INT8..INT64, UINT8..UINT64, BOOL).

**Tensor data.** JSON tensor data (``"data"``, flat or nested in row-major order) and the binary
tensor data extension: an input with parameter ``binary_data_size`` has its bytes
(little-endian, row-major, no padding) after the JSON header, whose length the request header
``Inference-Header-Content-Length`` gives. Binary bytes are read with `torch.frombuffer`; nothing
from the network is ever unpickled. The output is binary when its requested output has parameter
``binary_data: true``, or, failing a per-output choice, when the request parameter
``binary_data_output`` is true (tritonclient sets it when no outputs are named); the response then
carries ``Inference-Header-Content-Length`` and ``binary_data_size`` the same way, with content
type ``application/octet-stream``. Otherwise the response is plain JSON. Gzip and deflate request
bodies (``Content-Encoding``) are accepted; decompression is bounded by the body limit.

**Deadline.** The request parameter ``timeout``, in **microseconds**, is the server-side time the
request may take from its receipt (Triton's semantics; ``tritonclient ... infer(timeout=us)``
sets it): ``deadline_s = runtime.clock() at receipt + timeout / 1e6``. Without ``timeout`` the
runtime applies the fragment's configured SLO (``deadline_s=None``). A zero or negative timeout
is a deadline already past: the request is rejected at the door ("hopeless", 504) without being
queued. Other request parameters (``priority``, ``sequence_id``, custom ones) are ignored.

**Validation before submission.** Body size (413), JSON well-formedness, model name (404) and
version, exactly one input named ``activation`` with the model's datatype and shape, binary sizes
that add up (declared sizes must equal the bytes after the JSON header, and each must equal
shape x element size), JSON data of the right length and element type, and finite values where
`FragmentSpec.finite`. Only a request that passes all of them reaches ``runtime.submit``.

**Errors** come back as the protocol's ``{"error": "<message>"}`` JSON, the message naming what
was wrong and what was expected:

=====  =====================================================================================
400    malformed request or bad input (runtime reason ``bad-input``)
404    unknown model, version or path
405    wrong method
413    body larger than ``max_body_bytes``
415    unsupported ``Content-Encoding``
500    the batch's execution failed (``failed``), or the runtime misbehaved
503    ``overloaded`` (with ``Retry-After: 1``, seconds) or ``shutdown``
504    ``hopeless`` (deadline cannot be met, or already past) or ``expired`` (lost its slack)
=====  =====================================================================================

Every request gets exactly one response. The runtime's Future is awaited without blocking the
event loop; a client that disconnects does not cancel the runtime's work (the runtime owns its
Futures). Stop the HTTP server before closing the runtime, so in-flight requests drain.
Binary data is assumed little-endian, as on every host torch supports in practice.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future
from importlib import metadata
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import GraftError
from .runtime import REASONS, FragmentSpec, Runtime

INPUT = "activation"
OUTPUT = "output"
VERSION = "1"
SERVER_NAME = "graft_fx"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_SLACK_BYTES = 64 * 1024
# The most bytes one JSON number takes as tritonclient writes it ("-2.2250738585072014e-308,").
JSON_BYTES_PER_ELEMENT = 25
RETRY_AFTER_S = 1
MAX_TIMEOUT_US = 86_400 * 10**6  # a day: longer is a mistake, not a deadline
INLINE_PARSE_BYTES = 256 * 1024  # bodies larger than this are decoded on a worker thread

# torch dtype -> protocol datatype. The protocol's binary layout is the dtype's native one.
DATATYPES: dict[torch.dtype, str] = {
    torch.float32: "FP32",
    torch.float16: "FP16",
    torch.bfloat16: "BF16",
    torch.float64: "FP64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.bool: "BOOL",
}

# Runtime rejection reason (`runtime.REASONS`) -> HTTP status.
STATUS: dict[str, int] = {
    "bad-input": 400,
    "hopeless": 504,
    "expired": 504,
    "overloaded": 503,
    "shutdown": 503,
    "failed": 500,
}


assert set(STATUS) == set(REASONS), "every rejection reason needs its HTTP status"


class ProtocolError(Exception):
    """A request answered with ``{"error": message}`` and ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def datatype(dtype: torch.dtype) -> str:
    """The protocol datatype of a torch dtype; a GraftError for one the protocol cannot carry."""
    try:
        return DATATYPES[dtype]
    except KeyError:
        raise GraftError(f"dtype {dtype} has no Open Inference Protocol datatype; expected one of "
                         f"{', '.join(str(d) for d in DATATYPES)}") from None


def _row_bytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def default_max_body_bytes(fragments: Sequence[FragmentSpec]) -> int:
    """64 kB of JSON plus, for the largest input row, room for it 4 times over in binary or once
    as JSON numbers (up to 25 bytes each as tritonclient writes them), whichever is larger."""
    largest = max((max(4 * _row_bytes(f.row_shape, f.dtype), JSON_BYTES_PER_ELEMENT * math.prod(f.row_shape))
                   for f in fragments), default=0)
    return largest + JSON_SLACK_BYTES


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _tensor_metadata(name: str, dtype: torch.dtype, row_shape: Sequence[int]) -> dict:
    return {"name": name, "datatype": datatype(dtype), "shape": [1, *row_shape]}


def model_metadata(spec: FragmentSpec) -> dict:
    """The protocol's model metadata of one fragment type."""
    return {
        "name": spec.name,
        "versions": [VERSION],
        "platform": "graft_fx",
        "inputs": [_tensor_metadata(INPUT, spec.dtype, spec.row_shape)],
        "outputs": [_tensor_metadata(OUTPUT, spec.output_dtype, spec.output_row_shape)],
    }


# ---------------------------------------------------------------------------------------------
# Parsing an inference request


class InferRequest:
    """A validated inference request: one row, its timeout (µs) and how to answer."""

    __slots__ = ("rows", "timeout_us", "binary_output", "id")

    def __init__(self, rows: torch.Tensor, timeout_us: float | None, binary_output: bool, id: str | None):
        self.rows = rows
        self.timeout_us = timeout_us
        self.binary_output = binary_output
        self.id = id


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_number(v: Any) -> bool:
    return type(v) in (int, float)


def _flatten(data: Any, limit: int) -> list:
    """Row-major flattening of nested JSON lists; stops past ``limit`` elements."""
    if not isinstance(data, list):
        return [data]
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
            if len(out) > limit:
                return out
        else:
            stack.pop()
    return out


def _json_tensor(spec: FragmentSpec, data: Any, shape: list[int]) -> torch.Tensor:
    numel = math.prod(shape)
    flat = _flatten(data, numel)
    where = f"input '{INPUT}' of model '{spec.name}'"
    if len(flat) != numel:
        more = "more than " if len(flat) > numel else ""
        raise _bad(f"{where} has {more}{len(flat)} data elements; shape {_shape(shape)} needs {numel}")
    dt = spec.dtype
    name = datatype(dt)
    if dt == torch.bool:
        check, expected = (lambda v: type(v) is bool), "true or false"
    elif dt.is_floating_point:
        check, expected = _is_number, "a number"
    else:
        check, expected = _is_int, "an integer"
    for i, v in enumerate(flat):
        if not check(v):
            raise _bad(f"{where}: data element {i} is {json.dumps(v)[:40]} ({type(v).__name__}); "
                       f"expected {expected} for {name}")
    if not dt.is_floating_point and dt != torch.bool and flat:
        info = torch.iinfo(dt)
        lo, hi = min(flat), max(flat)
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise _bad(f"{where}: data value {bad} is out of range for {name} ([{info.min}, {info.max}])")
    try:
        return torch.tensor(flat, dtype=dt).reshape(shape)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise _bad(f"{where}: data cannot be read as {name} ({e})") from None


def _binary_tensor(spec: FragmentSpec, body: bytearray, offset: int, shape: list[int]) -> torch.Tensor:
    numel = math.prod(shape)
    size = numel * torch.empty((), dtype=spec.dtype).element_size()
    # a copy of the bytes into a buffer of its own (aligned, and a plain memcpy on this thread: a torch
    # copy would fork intra-op threads), viewed as the tensor
    t = torch.frombuffer(bytearray(memoryview(body)[offset:offset + size]), dtype=spec.dtype).reshape(shape)
    if spec.dtype == torch.bool:
        raw = t.view(torch.uint8)
        if bool((raw > 1).any()):
            raise _bad(f"input '{INPUT}' of model '{spec.name}': BOOL binary data must be bytes 0 or 1")
    return t


def parse_infer(spec: FragmentSpec, body: bytearray, header_length: str | None) -> InferRequest:
    """Validate an inference request for ``spec`` and decode its one input row.

    ``body`` is the whole (decompressed) request body, ``header_length`` the value of the
    ``Inference-Header-Content-Length`` header or None. Raises `ProtocolError` (400) on anything
    that is not a well-formed one-row request for this model.
    """
    if header_length is None:
        json_end = len(body)
    else:
        try:
            json_end = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} is {header_length[:40]!r}; expected the JSON header's length in "
                       "bytes, a non-negative integer") from None
        if not 0 <= json_end <= len(body):
            raise _bad(f"{HEADER_LENGTH} is {json_end} but the body has {len(body)} bytes; expected the "
                       "length of the JSON header that starts the body")
    try:
        req = json.loads(bytes(memoryview(body)[:json_end]))
    except (ValueError, RecursionError) as e:
        hint = "" if header_length is not None else (
            f"; a body that carries binary tensor data after its JSON needs the {HEADER_LENGTH} header")
        raise _bad(f"the request's JSON header is not valid JSON ({e}); expected an inference request "
                   f"object{hint}") from None
    if not isinstance(req, dict):
        raise _bad(f"the request's JSON is a {type(req).__name__}; expected an inference request object "
                   '{"inputs": [...]}')

    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise _bad('request "parameters" must be a JSON object')
    timeout_us = params.get("timeout")
    # compared, never converted: a huge JSON integer is a Python int that float() cannot hold, and NaN
    # or infinity fail the comparison
    if timeout_us is not None and (not _is_number(timeout_us) or not -MAX_TIMEOUT_US <= timeout_us <= MAX_TIMEOUT_US):
        raise _bad(f'request parameter "timeout" is {json.dumps(timeout_us)[:40]}; expected a number of '
                   f"microseconds, at most {MAX_TIMEOUT_US} (a day)")
    binary_default = params.get("binary_data_output", False)
    if type(binary_default) is not bool:
        raise _bad('request parameter "binary_data_output" must be true or false')
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad('request "id" must be a string')

    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad(f'the request has no "inputs"; model \'{spec.name}\' expects exactly one input, '
                   f"'{INPUT}'")
    if len(inputs) != 1:
        raise _bad(f"the request has {len(inputs)} inputs; model '{spec.name}' expects exactly one, '{INPUT}'")
    inp = inputs[0]
    if not isinstance(inp, dict):
        raise _bad("each input must be a JSON object with name, datatype, shape and data")
    name = inp.get("name")
    if name != INPUT:
        raise _bad(f"the request's input is named {json.dumps(name)[:60]}; model '{spec.name}' expects "
                   f"'{INPUT}'")
    where = f"input '{INPUT}' of model '{spec.name}'"
    expected_dt = datatype(spec.dtype)
    if inp.get("datatype") != expected_dt:
        raise _bad(f"{where} has datatype {json.dumps(inp.get('datatype'))[:40]}; expected {expected_dt}")
    expected_shape = [1, *spec.row_shape]
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape) or shape != expected_shape:
        raise _bad(f"{where} has shape {json.dumps(shape)[:80]}; expected {_shape(expected_shape)} "
                   f"(one row of {_shape(spec.row_shape)}; a request carries exactly one row)")
    iparams = inp.get("parameters", {})
    if not isinstance(iparams, dict):
        raise _bad(f'"parameters" of {where} must be a JSON object')
    for key in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
        if key in iparams:
            raise _bad(f"{where} uses shared memory ({key}); this server takes JSON or binary tensor data only")

    size = iparams.get("binary_data_size")
    binary_bytes = len(body) - json_end
    if size is not None:
        if "data" in inp:
            raise _bad(f'{where} has both "data" and binary_data_size; expected one of them')
        if not _is_int(size) or size < 0:
            raise _bad(f"binary_data_size of {where} is {json.dumps(size)[:40]}; expected a non-negative "
                       "integer count of bytes")
        if header_length is None:
            raise _bad(f"{where} has binary_data_size but the request has no {HEADER_LENGTH} header; "
                       "binary data needs it to tell where the JSON header ends")
        if size != binary_bytes:
            raise _bad(f"the inputs declare {size} bytes of binary data (binary_data_size) but {binary_bytes} "
                       f"bytes follow the {json_end}-byte JSON header; the binary payload is truncated or its "
                       "declared size is wrong")
        need = _row_bytes(shape, spec.dtype)
        if size != need:
            raise _bad(f"binary_data_size of {where} is {size} bytes; shape {_shape(shape)} of {expected_dt} "
                       f"needs {need} bytes")
        rows = _binary_tensor(spec, body, json_end, shape)
    else:
        if binary_bytes:
            raise _bad(f"{binary_bytes} bytes follow the {json_end}-byte JSON header but no input declares "
                       "binary_data_size; expected none")
        if "data" not in inp:
            raise _bad(f'{where} has no "data" and no binary_data_size parameter; expected one of them')
        rows = _json_tensor(spec, inp["data"], shape)

    # values (finite or not) are the runtime's to judge: `runtime.nonfinite`, before it queues anything

    binary_output = binary_default
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise _bad('request "outputs" must be a list of requested outputs')
        for out in outputs:
            if not isinstance(out, dict) or out.get("name") != OUTPUT:
                got = json.dumps(out.get("name") if isinstance(out, dict) else out)[:60]
                raise _bad(f"the request asks for output {got}; model '{spec.name}' has one output, '{OUTPUT}'")
            oparams = out.get("parameters", {})
            if not isinstance(oparams, dict):
                raise _bad(f"\"parameters\" of requested output '{OUTPUT}' must be a JSON object")
            if oparams.get("classification"):
                raise _bad(f"output '{OUTPUT}' cannot be returned as a classification; request raw data")
            if "binary_data" in oparams:
                if type(oparams["binary_data"]) is not bool:
                    raise _bad(f"parameter binary_data of requested output '{OUTPUT}' must be true or false")
                binary_output = oparams["binary_data"]
    return InferRequest(rows, timeout_us, binary_output, rid)


def encode_response(spec: FragmentSpec, out: torch.Tensor, binary: bool, rid: str | None) -> Response:
    """The protocol's inference response for output ``out`` (already of the spec's shape and dtype)."""
    out = out.detach().to("cpu").contiguous()
    tensor: dict[str, Any] = {"name": OUTPUT, "datatype": datatype(spec.output_dtype), "shape": list(out.shape)}
    resp: dict[str, Any] = {"model_name": spec.name, "model_version": VERSION}
    if rid is not None:
        resp["id"] = rid
    resp["outputs"] = [tensor]
    if not binary:
        tensor["data"] = out.reshape(-1).tolist()
        return Response(json.dumps(resp, separators=(",", ":")), media_type="application/json")
    raw = out.reshape(-1).view(torch.uint8).numpy().tobytes()
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(resp, separators=(",", ":")).encode()
    return Response(header + raw, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


# ---------------------------------------------------------------------------------------------
# The app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytearray:
    """The request body, decompressed, refusing (413) anything over ``limit`` bytes early."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise _bad(f"Content-Length is {declared[:40]!r}; expected an integer") from None
        if n > limit:
            raise ProtocolError(413, f"the request body is {n} bytes; this server accepts at most {limit}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported; expected gzip, deflate or none")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProtocolError(413, f"the request body is more than {limit} bytes; this server accepts at most "
                                     f"{limit}")
    if encoding == "identity":
        return body
    d = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        plain = d.decompress(bytes(body), limit + 1)
    except zlib.error as e:
        raise _bad(f"the {encoding} request body does not decompress ({e})") from None
    if len(plain) > limit:
        raise ProtocolError(413, f"the decompressed request body is more than {limit} bytes; this server accepts "
                                 f"at most {limit}")
    if not d.eof:
        raise _bad(f"the {encoding} request body is truncated")
    return bytearray(plain)


async def _outcome(fut: Future) -> torch.Tensor:
    """Await a concurrent Future from the event loop without blocking it and without ever
    cancelling it: if this coroutine is cancelled (client gone, server stopping) the runtime's
    Future is left alone, since the runtime owns it."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def copy(_: Future) -> None:
        if waiter.done():
            return
        if fut.cancelled():
            waiter.set_exception(RuntimeError("the runtime cancelled the request"))
        elif fut.exception() is not None:
            waiter.set_exception(fut.exception())
        else:
            waiter.set_result(fut.result())

    def done(_: Future) -> None:
        try:
            loop.call_soon_threadsafe(copy, fut)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    fut.add_done_callback(done)
    return await waiter


def _rejection(e: BaseException) -> ProtocolError:
    reason = getattr(e, "reason", None)
    if isinstance(e, GraftError) and reason in STATUS:
        status = STATUS[reason]
        headers = {"Retry-After": str(RETRY_AFTER_S)} if reason == "overloaded" else None
        return ProtocolError(status, f"request rejected ({reason}): {e}", headers)
    return ProtocolError(500, f"execution failed: {type(e).__name__}: {e}")


def create_app(runtime: Runtime, *, max_body_bytes: int | None = None) -> FastAPI:
    """An ASGI app serving ``runtime`` over the Open Inference Protocol (see the module docstring).

    ``max_body_bytes``: the largest request body accepted (413 beyond it), after decompression
    too; default `default_max_body_bytes`.
    """
    specs = {f.name: f for f in runtime.fragments}
    for f in specs.values():  # fail at start, not per request, on a dtype the protocol lacks
        datatype(f.dtype)
        datatype(f.output_dtype)
    limit = default_max_body_bytes(runtime.fragments) if max_body_bytes is None else int(max_body_bytes)
    try:
        version = metadata.version("graft_fx")
    except metadata.PackageNotFoundError:
        version = "unknown"

    registry = CollectorRegistry()
    responses = Counter("graft_http_infer_responses", "Inference responses by model and HTTP status",
                        ["model", "code"], registry=registry)

    app = FastAPI(title="graft_fx", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.state.max_body_bytes = limit

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            msg = (f"no such endpoint: {request.method} {request.url.path}; expected /v2, /v2/health/live, "
                   "/v2/health/ready, /v2/models/<name>[/versions/1][/ready|/infer] or /metrics")
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return _error(exc.status_code, msg, dict(exc.headers or {}))

    def lookup(request: Request) -> FragmentSpec:
        name = request.path_params["name"]
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ProtocolError(404, f"unknown model {name!r}; this server serves: {known}")
        v = request.path_params.get("version")
        if v is not None and v != VERSION:
            raise ProtocolError(404, f"model {name!r} has no version {v!r}; its only version is {VERSION!r}")
        return spec

    def not_ready() -> JSONResponse:
        return _error(400, f"runtime for model {runtime.model!r} is not ready (starting or closing)")

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200) if runtime.ready else not_ready()

    async def server_metadata(request: Request) -> JSONResponse:
        return JSONResponse({"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)})

    async def model(request: Request) -> JSONResponse:
        try:
            return JSONResponse(model_metadata(lookup(request)))
        except ProtocolError as e:
            return _error(e.status, e.message, e.headers)

    async def model_ready(request: Request) -> Response:
        try:
            lookup(request)
        except ProtocolError as e:
            return _error(e.status, e.message, e.headers)
        return Response(status_code=200) if runtime.ready else not_ready()

    async def infer(request: Request) -> Response:
        receipt = runtime.clock()
        label = request.path_params["name"] if request.path_params["name"] in specs else ""
        try:
            response = await _infer(request, receipt)
        except ProtocolError as e:
            response = _error(e.status, e.message, e.headers)
        except Exception as e:  # exactly one response, whatever happened
            response = _error(500, f"internal error: {type(e).__name__}: {e}")
        responses.labels(label, str(response.status_code)).inc()
        return response

    async def _infer(request: Request, receipt: float) -> Response:
        spec = lookup(request)
        body = await _read_body(request, limit)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > INLINE_PARSE_BYTES:  # keep the event loop free while decoding a large body
            req = await asyncio.to_thread(parse_infer, spec, body, header_length)
        else:
            req = parse_infer(spec, body, header_length)
        deadline = None
        if req.timeout_us is not None:
            if req.timeout_us <= 0:
                raise ProtocolError(504, f"request rejected (hopeless): timeout {req.timeout_us} µs leaves no time "
                                         "to serve it; expected a positive timeout in microseconds")
            deadline = receipt + req.timeout_us / 1e6
        try:
            fut = runtime.submit(spec.index, req.rows, deadline)
        except Exception as e:
            raise ProtocolError(500, f"the runtime did not accept the request: {type(e).__name__}: {e}") from None
        try:
            out = await _outcome(fut)
        except Exception as e:
            raise _rejection(e) from None
        if not isinstance(out, torch.Tensor) or out.numel() != math.prod(spec.output_row_shape):
            got = _shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ProtocolError(500, f"the runtime answered {got}; expected a tensor of shape "
                                     f"{_shape([1, *spec.output_row_shape])}")
        out = out.reshape(1, *spec.output_row_shape).to(spec.output_dtype)
        return encode_response(spec, out, req.binary_output, req.id)

    async def metrics(request: Request) -> Response:
        return Response(runtime.metrics.exposition() + generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        ("/v2/health/live", live, ["GET"]),
        ("/v2/health/ready", ready, ["GET"]),
        ("/v2", server_metadata, ["GET"]),
        ("/v2/models/{name}", model, ["GET"]),
        ("/v2/models/{name}/versions/{version}", model, ["GET"]),
        ("/v2/models/{name}/ready", model_ready, ["GET"]),
        ("/v2/models/{name}/versions/{version}/ready", model_ready, ["GET"]),
        ("/v2/models/{name}/infer", infer, ["POST"]),
        ("/v2/models/{name}/versions/{version}/infer", infer, ["POST"]),
        ("/metrics", metrics, ["GET"]),
    ]
    for path, endpoint, methods in routes:
        app.add_route(path, endpoint, methods=methods, include_in_schema=False)
    return app


# ---------------------------------------------------------------------------------------------
# Running it


def serve(runtime: Runtime, host: str = "127.0.0.1", port: int = 8000, *, max_body_bytes: int | None = None,
          log_level: str = "info", graceful_s: float | None = None) -> None:
    """Serve ``runtime`` on ``host:port`` until interrupted (SIGINT/SIGTERM), blocking.

    In-flight requests drain on shutdown (for at most ``graceful_s`` seconds if given); close
    the runtime after this returns.
    """
    uvicorn.run(create_app(runtime, max_body_bytes=max_body_bytes), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=graceful_s)


class Server:
    """The front door on a background thread, for tests and embedding: ``start()`` binds and
    returns once it accepts connections, ``stop()`` drains and joins. ``port=0`` takes a free
    port, readable from ``port`` (and ``url``) as soon as the object exists.

    >>> with Server(runtime) as server:          # doctest: +SKIP
    ...     client = tritonclient.http.InferenceServerClient(server.address)
    """

    def __init__(self, runtime: Runtime, host: str = "127.0.0.1", port: int = 0, *,
                 max_body_bytes: int | None = None, log_level: str = "warning", graceful_s: float = 5.0):
        self.app = create_app(runtime, max_body_bytes=max_body_bytes)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns TCP_NODELAY on only for sockets that say they are TCP, and
        # without it every response waits ~40 ms for the client's delayed acknowledgement
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="off",
                                timeout_graceful_shutdown=graceful_s)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port``, as tritonclient wants it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout_s: float = 10.0) -> Server:
        if self._thread is not None:
            raise GraftError("this Server was already started; expected start() once")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name=f"graft-http-{self.port}", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise GraftError(f"the HTTP server on {self.address} exited while starting")
            if time.monotonic() > end:
                self.stop()
                raise GraftError(f"the HTTP server on {self.address} did not start within {timeout_s} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``graceful_s``), join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
