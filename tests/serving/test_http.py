"""The Open Inference Protocol front door (graft_fx.serving.http), over loopback.

The protocol tests run against `FakeRuntime`, which follows the runtime interface exactly and
whose outputs are known functions of the inputs; `TestRealRuntime` runs the stock tritonclient
against a real `Runtime` from tests/serving/fixtures.py's ``small_runtime()`` when that exists.
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as tc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from graft_fx.errors import GraftError
from graft_fx.serving.http import (
    HEADER_LENGTH, INPUT, OUTPUT, Server, create_app, default_max_body_bytes, parse_infer,
)
from graft_fx.serving.metrics import Metrics
from graft_fx.serving.runtime import FragmentSpec, Rejected, nonfinite

from .fixtures import small_runtime

REASONS = ("bad-input", "hopeless", "expired", "overloaded", "failed", "shutdown")


def _a(x):  # FP32 [1, 3, 4] -> FP32 [1, 3]
    return x.sum(-1) * 2 + 1


def _b(x):  # FP16 [1, 8] -> FP16 [1, 8]
    return x * 3


def _c(x):  # BF16 [1, 2, 2] -> FP32 [1, 2]
    return x.float().sum(-1) + 0.5


def _d(x):  # INT8 [1, 5] -> INT32 [1, 5]
    return x.to(torch.int32) * 1000


def _e(x):  # FP32 [1, 256, 512] -> FP32 [1, 256]: a large row, decoded off the event loop
    return x.mean(-1)


FUNCTIONS = [_a, _b, _c, _d, _e]


class FakeRuntime:
    """The runtime interface, with outputs a known function of inputs, run on a thread pool."""

    model = "toy"

    def __init__(self, delay_s: float = 0.0):
        self.fragments = (
            FragmentSpec(0, "toy.a", (3, 4), torch.float32, (3,), torch.float32, 1.0, True),
            FragmentSpec(1, "toy.b", (8,), torch.float16, (8,), torch.float16, 1.0, False),
            FragmentSpec(2, "toy.c", (2, 2), torch.bfloat16, (2,), torch.float32, 1.0, True),
            FragmentSpec(3, "toy.d", (5,), torch.int8, (5,), torch.int32, 1.0, False),
            FragmentSpec(4, "toy.e", (256, 512), torch.float32, (256,), torch.float32, 1.0, True),
        )
        self.metrics = Metrics([f.name for f in self.fragments], ["group0"])
        self.delay_s = delay_s
        self.reject: str | None = None  # reject every request with this reason
        self.calls: list[tuple[int, float, float | None]] = []  # (fragment, submitted at, deadline_s)
        self.ready = True
        self._pool = ThreadPoolExecutor(8)
        self._lock = threading.Lock()

    def clock(self) -> float:
        return time.monotonic()

    def submit(self, fragment, rows, deadline_s=None) -> Future:
        now = self.clock()
        spec = self.fragments[fragment] if isinstance(fragment, int) else \
            next(f for f in self.fragments if f.name == fragment)
        with self._lock:
            self.calls.append((spec.index, now, deadline_s))
        self.metrics.submitted(spec.name)
        fut: Future = Future()
        deadline = now + spec.slo_s if deadline_s is None else deadline_s

        def reject(reason, message):
            self.metrics.rejected(spec.name, reason)
            fut.set_exception(Rejected(reason, f"{spec.name}: {message}"))
            return fut

        if tuple(rows.shape) != (1, *spec.row_shape) or rows.dtype != spec.dtype:
            return reject("bad-input", f"got {list(rows.shape)} {rows.dtype}")
        problem = nonfinite(rows) if spec.finite else None
        if problem:
            return reject("bad-input", problem)
        if deadline <= now:
            return reject("hopeless", "deadline already past")
        if self.reject:
            return reject(self.reject, f"told to reject with {self.reject}")

        def run():
            time.sleep(self.delay_s)
            out = FUNCTIONS[spec.index](rows).to(spec.output_dtype)
            t = self.clock()
            self.metrics.answered(spec.name, t - now, t <= deadline)
            fut.set_result(out)

        self._pool.submit(run)
        return fut

    def close(self, drain: bool = True) -> None:
        self.ready = False
        self._pool.shutdown(wait=drain)


@pytest.fixture(scope="module")
def fake():
    rt = FakeRuntime(delay_s=0.002)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def server(fake):
    with Server(fake) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = tc.InferenceServerClient(server.address, network_timeout=10.0, connection_timeout=5.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


@pytest.fixture(autouse=True)
def _reset(request):
    if "fake" in request.fixturenames:
        fake = request.getfixturevalue("fake")
        fake.reject, fake.ready = None, True
    yield


def _input(name, array, binary=True):
    dt = {np.float32: "FP32", np.float16: "FP16", np.int8: "INT8"}.get(array.dtype.type, "BF16")
    i = tc.InferInput(name, list(array.shape), dt)
    i.set_data_from_numpy(array, binary_data=binary)
    return i


def _request(shape=(1, 3, 4), datatype="FP32", data=None, binary: bytes | None = None, **extra):
    """A raw request body and its headers, as curl would send it."""
    inp = {"name": INPUT, "datatype": datatype, "shape": list(shape)}
    if binary is not None:
        inp["parameters"] = {"binary_data_size": len(binary)}
    else:
        inp["data"] = data if data is not None else [0.5] * math.prod(shape)
    req = {"inputs": [inp], **extra}
    header = json.dumps(req).encode()
    if binary is None:
        return header, {}
    return header + binary, {HEADER_LENGTH: str(len(header))}


def _post(http, body, headers=None, model="toy.a"):
    return http.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})


def _assert_error(r, status, *words):
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in {msg!r}"
    return msg


class TestTritonClient:
    def test_health_and_metadata(self, client, fake):
        assert client.is_server_live()
        assert client.is_server_ready()
        meta = client.get_server_metadata()
        assert meta["name"] == "graft_fx" and "binary_tensor_data" in meta["extensions"]
        m = client.get_model_metadata("toy.a")
        assert m["name"] == "toy.a" and m["versions"] == ["1"]
        assert m["inputs"] == [{"name": INPUT, "datatype": "FP32", "shape": [1, 3, 4]}]
        assert m["outputs"] == [{"name": OUTPUT, "datatype": "FP32", "shape": [1, 3]}]
        assert client.get_model_metadata("toy.c", model_version="1")["inputs"][0]["datatype"] == "BF16"
        assert client.is_model_ready("toy.b")
        assert not client.is_model_ready("nope")
        fake.ready = False
        assert not client.is_server_ready() and not client.is_model_ready("toy.b")
        assert client.is_server_live()

    @pytest.mark.parametrize("binary", [True, False])
    def test_infer(self, client, fake, binary):
        x = torch.randn(1, 3, 4).numpy()
        outputs = None if binary else [tc.InferRequestedOutput(OUTPUT, binary_data=False)]
        res = client.infer("toy.a", [_input(INPUT, x, binary)], outputs=outputs)
        expected = _a(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(res.as_numpy(OUTPUT), expected, rtol=1e-6)
        assert res.get_response()["model_name"] == "toy.a"
        params = res.get_output(OUTPUT).get("parameters", {})
        assert ("binary_data_size" in params) == binary
        assert fake.calls[-1][2] is None  # no timeout: the fragment's own SLO

    def test_binary_output_for_json_input(self, client):
        x = torch.randn(1, 3, 4).numpy()
        res = client.infer("toy.a", [_input(INPUT, x, binary=False)],
                           outputs=[tc.InferRequestedOutput(OUTPUT, binary_data=True)], model_version="1")
        assert "binary_data_size" in res.get_output(OUTPUT)["parameters"]
        np.testing.assert_allclose(res.as_numpy(OUTPUT), _a(torch.from_numpy(x)).numpy(), rtol=1e-6)

    def test_timeout_sets_deadline(self, client, fake):
        x = torch.randn(1, 3, 4).numpy()
        before = time.monotonic()
        client.infer("toy.a", [_input(INPUT, x)], timeout=250_000)  # microseconds
        after = time.monotonic()
        _, _, deadline = fake.calls[-1]
        assert before + 0.25 <= deadline <= after + 0.25

    def test_other_dtypes(self, client):
        x16 = np.linspace(-2, 2, 8, dtype=np.float16).reshape(1, 8)
        x16[0, 0] = np.inf  # toy.b accepts non-finite values
        res = client.infer("toy.b", [_input(INPUT, x16)])
        np.testing.assert_array_equal(res.as_numpy(OUTPUT), (torch.from_numpy(x16) * 3).numpy())
        xi = np.array([[-128, -1, 0, 1, 127]], dtype=np.int8)
        res = client.infer("toy.d", [_input(INPUT, xi, binary=False)],
                           outputs=[tc.InferRequestedOutput(OUTPUT, binary_data=False)])
        np.testing.assert_array_equal(res.as_numpy(OUTPUT), xi.astype(np.int32) * 1000)

    def test_bf16(self, client):
        ml_dtypes = pytest.importorskip("ml_dtypes")
        x = np.array([[[1.5, -2.0], [0.25, 8.0]]], dtype=ml_dtypes.bfloat16)
        res = client.infer("toy.c", [_input(INPUT, x)])
        np.testing.assert_allclose(res.as_numpy(OUTPUT), [[0.0, 8.75]])

    @pytest.mark.parametrize("binary", [True, False])
    def test_large_row(self, client, binary):
        x = torch.randn(1, 256, 512).numpy()
        outputs = [tc.InferRequestedOutput(OUTPUT, binary_data=binary)]
        res = client.infer("toy.e", [_input(INPUT, x, binary)], outputs=outputs)
        np.testing.assert_allclose(res.as_numpy(OUTPUT), x.mean(-1), rtol=1e-5, atol=1e-6)

    def test_gzip_request(self, client):
        x = torch.randn(1, 3, 4).numpy()
        res = client.infer("toy.a", [_input(INPUT, x)], request_compression_algorithm="gzip")
        np.testing.assert_allclose(res.as_numpy(OUTPUT), _a(torch.from_numpy(x)).numpy(), rtol=1e-6)

    def test_errors_reach_the_client(self, client):
        x = torch.randn(1, 3, 4).numpy()
        with pytest.raises(InferenceServerException) as e:
            client.infer("nope", [_input(INPUT, x)])
        assert e.value.status() == "404" and "nope" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.infer("toy.a", [_input(INPUT, x)], model_version="2")
        assert e.value.status() == "404" and "version" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.infer("toy.a", [_input(INPUT, x)], timeout=0)
        assert e.value.status() == "504" and "hopeless" in e.value.message()


class TestMalformed:
    """Every malformed request: its status, a message naming the problem, and no submission."""

    @pytest.fixture(autouse=True)
    def _not_submitted(self, fake):
        n = len(fake.calls)
        yield
        assert len(fake.calls) == n, "a malformed request reached runtime.submit"

    def test_wrong_shape(self, http):
        body, h = _request(shape=(1, 3, 5))
        _assert_error(_post(http, body, h), 400, "shape", "[1, 3, 5]", "[1, 3, 4]")
        body, h = _request(shape=(2, 3, 4))
        _assert_error(_post(http, body, h), 400, "shape", "exactly one row")

    def test_wrong_dtype(self, http):
        body, h = _request(datatype="FP16", binary=np.zeros(12, np.float16).tobytes())
        _assert_error(_post(http, body, h), 400, "datatype", "FP16", "expected FP32")

    def test_json_element_types_and_length(self, http):
        body, h = _request(data=[0.5] * 11)
        _assert_error(_post(http, body, h), 400, "11 data elements", "needs 12")
        body, h = _request(data=["x"] * 12)
        _assert_error(_post(http, body, h), 400, "element 0", "expected a number")
        body, h = _request(shape=(1, 5), datatype="INT8", data=[1, 2, 3, 4, 300])
        _assert_error(_post(http, body, h, model="toy.d"), 400, "300", "out of range", "INT8")
        body, h = _request(shape=(1, 5), datatype="INT8", data=[1, 2, 3, 4, 0.5])
        _assert_error(_post(http, body, h, model="toy.d"), 400, "element 4", "integer")

    def test_oversized_body(self, http, server):
        limit = server.app.state.max_body_bytes
        assert limit == default_max_body_bytes(server.app.state.runtime.fragments)
        big = b" " * (limit + 1)
        _assert_error(_post(http, big), 413, str(limit))

        def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(limit // 8192 + 2):
                yield b" " * 8192
        _assert_error(http.post("/v2/models/toy.a/infer", content=chunks()), 413, str(limit))

    def test_truncated_binary(self, http):
        raw = np.ones(12, np.float32).tobytes()
        body, h = _request(binary=raw)
        _assert_error(_post(http, body[:-4], h), 400, "truncated", "48 bytes", "44 bytes")

    def test_lying_binary_data_size(self, http):
        raw = np.ones(10, np.float32).tobytes()  # says 40 bytes, sends 40, but the shape needs 48
        body, h = _request(binary=raw)
        _assert_error(_post(http, body, h), 400, "binary_data_size", "40", "needs 48")
        body, h = _request(binary=np.ones(12, np.float32).tobytes())
        _assert_error(_post(http, body, {}), 400, HEADER_LENGTH)  # binary but no header length
        _assert_error(_post(http, body, {HEADER_LENGTH: str(len(body) + 1)}), 400, HEADER_LENGTH)
        _assert_error(_post(http, body, {HEADER_LENGTH: "abc"}), 400, HEADER_LENGTH)

    def test_unknown_model(self, http):
        body, h = _request()
        msg = _assert_error(_post(http, body, h, model="resnet50.relu_99"), 404, "unknown model", "resnet50.relu_99")
        assert "toy.a" in msg  # names what is served
        _assert_error(http.get("/v2/models/nope"), 404, "nope")
        _assert_error(http.post("/v2/models/toy.a/versions/7/infer", content=body), 404, "version")

    def test_bad_json(self, http):
        _assert_error(_post(http, b'{"inputs": [', {}), 400, "not valid JSON")
        _assert_error(_post(http, b"[1, 2]", {}), 400, "inference request object")
        _assert_error(_post(http, b"[" * 30_000, {}), 400, "not valid JSON")

    def test_missing_or_extra_inputs(self, http):
        _assert_error(_post(http, b"{}"), 400, "no \"inputs\"", INPUT)
        _assert_error(_post(http, b'{"inputs": []}'), 400, "no \"inputs\"")
        req = json.loads(_request()[0])
        two = json.dumps({"inputs": req["inputs"] * 2}).encode()
        _assert_error(_post(http, two), 400, "2 inputs", "exactly one")
        req["inputs"][0]["name"] = "INPUT__0"
        _assert_error(_post(http, json.dumps(req).encode()), 400, "INPUT__0", INPUT)
        del req["inputs"][0]["data"]
        req["inputs"][0]["name"] = INPUT
        _assert_error(_post(http, json.dumps(req).encode()), 400, "no \"data\"")

    def test_unknown_output(self, http):
        body, h = _request(outputs=[{"name": "logits"}])
        _assert_error(_post(http, body, h), 400, "logits", OUTPUT)

    def test_a_timeout_beyond_a_day_or_a_float_is_a_bad_request(self, http):
        """A review find: an integer no float can hold reached math.isfinite and answered 500."""
        body = b'{"inputs": [{"name": "activation", "datatype": "FP32", "shape": [1, 3, 4], "data": ' + \
            json.dumps([0.5] * 12).encode() + b'}], "parameters": {"timeout": 1' + b"0" * 400 + b"}}"
        _assert_error(_post(http, body), 400, "timeout", "at most")
        body, h = _request(parameters={"timeout": 1e300})
        _assert_error(_post(http, body, h), 400, "timeout", "a day")

    @pytest.mark.parametrize("timeout", [0, -5])
    def test_deadline_already_past(self, http, timeout):
        body, h = _request(parameters={"timeout": timeout})
        _assert_error(_post(http, body, h), 504, "hopeless", "timeout")

    def test_bad_parameters(self, http):
        body, h = _request(parameters={"timeout": "soon"})
        _assert_error(_post(http, body, h), 400, "timeout", "microseconds")
        body, h = _request(parameters={"binary_data_output": "yes"})
        _assert_error(_post(http, body, h), 400, "binary_data_output")

    def test_routing_errors_are_protocol_json(self, http):
        _assert_error(http.get("/v2/models/toy.a/infer"), 405, "GET")
        _assert_error(http.get("/v3/anything"), 404, "/v3/anything")
        _assert_error(_post(http, b"xx", {"Content-Encoding": "br"}), 415, "br")
        _assert_error(_post(http, gzip.compress(b"{}")[:-6], {"Content-Encoding": "gzip"}), 400, "truncated")



@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused_by_the_runtime_before_queueing(http, fake, value):
    """Values are the runtime's to judge (`runtime.nonfinite`): the request reaches submit, which
    refuses it as bad input before anything is queued, and the client gets a 400 naming the value."""
    x = np.zeros((1, 3, 4), np.float32)
    x[0, 1, 2] = value
    body, h = _request(binary=x.tobytes())
    _assert_error(_post(http, body, h), 400, "non-finite", "[0, 1, 2]")
    body = json.dumps({"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 3, 4],
                                   "data": x.reshape(-1).tolist()}]}).encode()  # NaN/Infinity literals
    _assert_error(_post(http, body), 400, "non-finite")

class TestRuntimeOutcomes:
    @pytest.mark.parametrize("reason,status", [("bad-input", 400), ("hopeless", 504), ("expired", 504),
                                               ("overloaded", 503), ("failed", 500), ("shutdown", 503)])
    def test_rejection_status(self, http, fake, reason, status):
        fake.reject = reason
        body, h = _request()
        r = _post(http, body, h)
        _assert_error(r, status, reason, "told to reject")
        assert ("retry-after" in r.headers) == (reason == "overloaded")

    def test_metrics(self, http, fake):
        body, h = _request(binary=np.ones(12, np.float32).tobytes())

        def count(families, name, **labels):
            return sum(s.value for f in families for s in f.samples
                       if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

        before = list(text_string_to_metric_families(http.get("/metrics").text))
        for _ in range(3):
            assert _post(http, body, h).status_code == 200
        assert _post(http, body[:-1], h).status_code == 400
        r = http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        after = list(text_string_to_metric_families(r.text))
        got = count(after, "graft_requests_total", fragment="toy.a") - count(before, "graft_requests_total",
                                                                              fragment="toy.a")
        assert got == 3  # the malformed one never reached the runtime
        ok = "graft_http_infer_responses_total"
        assert count(after, ok, model="toy.a", code="200") - count(before, ok, model="toy.a", code="200") == 3
        assert count(after, ok, model="toy.a", code="400") - count(before, ok, model="toy.a", code="400") == 1


def test_concurrent_clients_get_their_own_answers(server, fake):
    """16 threads x 20 requests, binary and JSON mixed: each answer is its own input's function."""
    def worker(t: int) -> int:
        wrong = 0
        with httpx.Client(base_url=server.url, timeout=10.0) as h:
            for i in range(20):
                x = np.full((1, 3, 4), t * 100 + i, np.float32)
                x[0, 0, 0] += 0.25
                if i % 2:
                    body, headers = _request(binary=x.tobytes(), parameters={"binary_data_output": True})
                else:
                    body, headers = _request(data=x.tolist())
                r = _post(h, body, headers)
                assert r.status_code == 200, r.text
                if i % 2:
                    n = int(r.headers[HEADER_LENGTH])
                    out = np.frombuffer(r.content[n:], np.float32)
                else:
                    out = np.array(r.json()["outputs"][0]["data"], np.float32)
                wrong += not np.allclose(out, _a(torch.from_numpy(x)).numpy().reshape(-1))
        return wrong

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(worker, range(16))) == 0


def test_stop_drains_in_flight_requests():
    rt = FakeRuntime(delay_s=0.3)
    server = Server(rt).start()
    body, h = _request(binary=np.ones(12, np.float32).tobytes())
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: httpx.post(f"{server.url}/v2/models/toy.a/infer", content=body, headers=h,
                                                 timeout=10.0))
        while not rt.calls:
            time.sleep(0.005)
        server.stop()
        assert pending.result().status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/v2/health/live", timeout=2.0)
    rt.close()


def test_parse_infer_directly():
    spec = FakeRuntime().fragments[0]
    x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    body, h = _request(binary=x.numpy().tobytes(), parameters={"timeout": 1500})
    req = parse_infer(spec, bytearray(body), h[HEADER_LENGTH])
    assert torch.equal(req.rows, x) and req.timeout_us == 1500 and not req.binary_output
    nested = {"inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 3, 4], "data": x.tolist()}],
              "parameters": {"binary_data_output": True}}
    req = parse_infer(spec, bytearray(json.dumps(nested).encode()), None)
    assert torch.equal(req.rows, x) and req.binary_output


def test_create_app_refuses_unknown_dtype():
    rt = FakeRuntime()
    rt.fragments = (FragmentSpec(0, "toy.z", (2,), torch.complex64, (2,), torch.float32, 1.0, True),)
    with pytest.raises(GraftError, match="complex64"):
        create_app(rt)


# ---------------------------------------------------------------------------------------------
# Against the real runtime


@pytest.fixture(scope="module")
def real():
    rt = small_runtime(budget_s=0.5)
    try:
        with Server(rt) as s:
            yield rt, s
    finally:
        rt.close()


class TestRealRuntime:
    def test_tritonclient_matches_submit(self, real):
        """Every fragment type, binary and JSON, with and without timeout, all at once (so the
        runtime batches them): tritonclient's answer equals the runtime's own submit's."""
        rt, s = real
        client = tc.InferenceServerClient(s.address, network_timeout=30.0)
        try:
            assert client.is_server_live() and client.is_server_ready()
            metas = {spec.name: client.get_model_metadata(spec.name) for spec in rt.fragments}
        finally:
            client.close()
        for spec in rt.fragments:
            assert metas[spec.name]["inputs"][0]["shape"] == [1, *spec.row_shape]
            assert metas[spec.name]["outputs"][0]["shape"] == [1, *spec.output_row_shape]

        def over_http(spec, x, binary, timeout):
            c = tc.InferenceServerClient(s.address, network_timeout=30.0)
            try:
                i = tc.InferInput(INPUT, [1, *spec.row_shape], metas[spec.name]["inputs"][0]["datatype"])
                i.set_data_from_numpy(x.numpy(), binary_data=binary)
                outputs = [tc.InferRequestedOutput(OUTPUT, binary_data=binary)]
                return c.infer(spec.name, [i], outputs=outputs, timeout=timeout).as_numpy(OUTPUT)
            finally:
                c.close()

        torch.manual_seed(0)
        inputs = [torch.randn(1, *spec.row_shape).to(spec.dtype) for spec in rt.fragments]
        with ThreadPoolExecutor(2 * len(inputs)) as pool:
            direct = [rt.submit(spec.index, x.clone(), rt.clock() + 2.0) for spec, x in zip(rt.fragments, inputs)]
            http = [[pool.submit(over_http, spec, x, binary, timeout)
                     for binary, timeout in ((True, 2_000_000), (False, None))]
                    for spec, x in zip(rt.fragments, inputs)]
            for spec, want, got in zip(rt.fragments, direct, http):
                want = want.result(timeout=30).cpu()
                for g in got:
                    out = g.result(timeout=30)
                    assert out.shape == (1, *spec.output_row_shape)
                    torch.testing.assert_close(torch.from_numpy(out.copy()), want, rtol=1e-5, atol=1e-6)

    def test_rejections_and_metrics(self, real):
        rt, s = real
        spec = rt.fragments[0]
        with httpx.Client(base_url=s.url, timeout=30.0) as h:
            bad = np.full((1, *spec.row_shape), np.nan, np.float32)
            body, headers = _request(shape=bad.shape, binary=bad.tobytes())
            _assert_error(_post(h, body, headers, model=spec.name), 400, "non-finite")
            ok = np.ones((1, *spec.row_shape), np.float32)
            body, headers = _request(shape=ok.shape, binary=ok.tobytes(), parameters={"timeout": 1})
            _assert_error(_post(h, body, headers, model=spec.name), 504, "hopeless")  # 1 µs: cannot be met
            families = list(text_string_to_metric_families(h.get("/metrics").text))
            assert any(f.name == "graft_requests" for f in families)
