"""`vaedeploy serve` under Triton's own clients (tritonclient.http, binary and JSON; tritonclient.grpc, raw and typed
contents): every model of every latent type against the runtime, concurrent clients with mixed sizes and seeds,
overload, disconnects, bad input, shutdown. The tests of answers run over both protocols (``protocol``); overload,
disconnects, bad input and shutdown over gRPC have their own cases in test_grpc.py.

Results of differently batched calls agree to about 1e-7, not bit for bit (BLAS picks kernels by batch size), so a
response is compared with the direct runtime call to 1e-6.
"""
import contextlib
import http.client
import json
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from v2clients import GrpcClient, get

from vaedeploy import load

TOLERANCE = dict(rtol=1e-6, atol=1e-6)
TIMEOUT = 30  # seconds, every client call


PROTOCOLS = ["http", "grpc"]
CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "INT32": "int_contents"}  # gRPC's typed fields


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


def client(server, concurrency: int = 1, protocol: str = "http"):
    if protocol == "grpc":
        return GrpcClient(server.grpc_url)
    return triton.InferenceServerClient(server.url, concurrency=concurrency, connection_timeout=TIMEOUT,
                                        network_timeout=TIMEOUT)


def images(n: int, seed: int, shape=(1, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def tensor(name: str, array: np.ndarray, binary: bool = True, datatype: str | None = None, protocol: str = "http"):
    """An input for tritonclient: binary or JSON over HTTP; raw or typed contents over gRPC."""
    datatype = datatype or {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}[str(array.dtype)]
    if protocol == "http":
        t = triton.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=binary)
        return t
    t = triton_grpc.InferInput(name, list(array.shape), datatype)
    if binary:
        t.set_data_from_numpy(array)
    else:  # tritonclient sends raw contents only; its request's tensor takes the typed ones
        getattr(t._get_tensor().contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return t


def outputs(names, binary: bool, protocol: str = "http") -> list:
    if protocol == "grpc":
        return [triton_grpc.InferRequestedOutput(name) for name in names]
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def infer(c, protocol: str, model: str, inputs: dict, names: list[str], **parameters) -> list[np.ndarray]:
    """The named outputs of one request of binary tensors over ``protocol``, with request ``parameters``."""
    answer = c.infer(model, [tensor(k, v, protocol=protocol) for k, v in inputs.items()],
                     outputs=outputs(names, True, protocol), parameters=parameters or None)
    return [answer.as_numpy(name) for name in names]


def metric(text: str, name: str, model: str, **labels) -> float:
    """The value of one sample of a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body, headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# ---- the protocol's endpoints and every model of every latent type ---------------------------------------------

KINDS = ["vae", "ae", "vqvae", "biva", "twostage", "vae_conv_bernoulli"]


@pytest.fixture(scope="module")
def kinds_server(serve, exported):
    bundles = [exported(name)[1] for name in KINDS]
    return serve(bundles, *[a for name in KINDS for a in ("--name", name)], "--max-sample", "256",
                 "--max-body-bytes", str(1 << 20), "--grpc-port", "0")


def expected_call(rt, model: str, array, seed, offset: int = 0):
    operation = model.split(".")[1]
    if operation == "encode":
        z = rt.encode(array, seed=seed, offset=offset)
        return list(z) if isinstance(z, tuple) else [z]
    if operation == "encode_params":
        return list(rt.encode_params(array))
    if operation in ("decode", "decode_codes"):
        return [rt.decode(array)]
    if operation == "reconstruct":
        return [rt.reconstruct(array)]
    if operation == "sample":
        return [rt.sample(3, seed=seed, temperature=0.8, offset=offset)]
    return [rt.sample_codes(3, seed=seed, temperature=0.8, offset=offset)]


def test_every_model_of_every_kind_answers_what_its_runtime_call_gives(kinds_server, exported, protocol):
    c = client(kinds_server, protocol=protocol)
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "vaedeploy" and "binary_tensor_data" in meta["extensions"]
    index = c.get_model_repository_index()
    assert all(m["state"] == "READY" for m in index)
    names = [m["name"] for m in index]
    assert {"vae.encode", "vae.sample", "ae.encode", "vqvae.decode_codes", "vqvae.sample_codes", "biva.sample",
            "twostage.sample"} <= set(names) and "ae.sample" not in names  # an AE has no prior to sample
    for kind in KINDS:
        rt = load(exported(kind)[1])
        rng = np.random.default_rng(1)
        for name in [n for n in names if n.split(".")[0] == kind]:
            metadata, config = c.get_model_metadata(name), c.get_model_config(name)
            assert c.is_model_ready(name) and metadata["name"] == name and config["max_batch_size"] == 64
            assert [i["name"] for i in config["input"]] == [i["name"] for i in metadata["inputs"]]
            inputs, array = [], None
            for spec in metadata["inputs"]:
                assert spec["shape"][0] == -1
                shape = [3, *spec["shape"][1:]]
                array = rng.integers(0, rt.num_codes, shape) if spec["datatype"] == "INT64" else \
                    rng.standard_normal(shape).astype(np.float32) if spec["name"] != "x" else images(3, 2)
                inputs.append(array)
            out_names = [o["name"] for o in metadata["outputs"]]
            seeded = "seed" in config.get("parameters", {}).get("request_parameters", {}).get("string_value", "")
            expected = expected_call(rt, name, array, 11, offset=5 if seeded else 0)
            for binary in (True, False):
                params = {"seed": 11, "offset": 5} if seeded else {}
                if name.endswith(("sample", "sample_codes")):
                    params.update(n=3, temperature=0.8)
                result = c.infer(name, [tensor(s["name"], a, binary, protocol=protocol)
                                        for s, a in zip(metadata["inputs"], inputs)],
                                 parameters=params, outputs=outputs(out_names, binary, protocol))
                for out, want in zip(out_names, expected):
                    got = result.as_numpy(out)
                    assert got.dtype == want.dtype and got.shape == want.shape, (name, out)
                    np.testing.assert_allclose(got, want, **TOLERANCE, err_msg=f"{name}.{out} binary={binary}")
        rt.close()


def test_fp16_travels_as_binary_and_json_fp16_is_refused(kinds_server, exported, protocol):
    c, rt = client(kinds_server, protocol=protocol), load(exported("vae")[1])
    x = images(2, 3).astype(np.float16)
    got = c.infer("vae.reconstruct", [tensor("x", x, protocol=protocol)]).as_numpy("x")
    np.testing.assert_allclose(got, rt.reconstruct(x.astype(np.float32)), **TOLERANCE)
    if protocol == "http":
        with pytest.raises(InferenceServerException, match="FP16 data must be sent as binary"):
            c.infer("vae.reconstruct", [tensor("x", x, binary=False)])


def test_requested_outputs_only_and_request_id_echoed(kinds_server, protocol):
    c = client(kinds_server, protocol=protocol)
    result = c.infer("vae.encode_params", [tensor("x", images(2, 0), protocol=protocol)],
                     outputs=outputs(["logvar"], True, protocol), request_id="abc")
    response = result.get_response()
    assert (response["id"] if protocol == "http" else response.id) == "abc" and result.as_numpy("mean") is None
    assert result.as_numpy("logvar").shape == (2, 4)


# ---- bad input: a 4xx JSON error naming what was expected, and the server keeps serving ------------------------

def infer_body(inputs: list, parameters: dict | None = None) -> bytes:
    return json.dumps({"inputs": inputs, "parameters": parameters or {}}).encode()


def x_spec(shape, datatype="FP32", data=None):
    return {"name": "x", "shape": shape, "datatype": datatype,
            "data": data if data is not None else [0.5] * int(np.prod(shape))}


BAD = [
    # (path's model, body, headers, status, words the error must contain)
    ("vae.encode", infer_body([x_spec([1, 1, 8, 7])]), {}, 400, "expected shape N×1×8×8, got 1×1×8×7"),
    ("vae.encode", infer_body([x_spec([1, 1, 8, 8], "INT32", [1] * 64)]), {}, 400, "expected datatype FP32"),
    ("vae.encode", b'{"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [NaN'
                   + b', 0.5' * 63 + b']}]}', {}, 400, "got NaN or Inf"),
    ("vae.encode", infer_body([x_spec([1, 1, 8, 8], data=[0.5] * 63)]), {}, 400, "expected 64 values"),
    ("vae.encode", infer_body([x_spec([0, 1, 8, 8])]), {}, 400, "N ≥ 1"),
    ("vae.encode", infer_body([]), {}, 400, "expected input(s) ['x']"),
    ("vae.encode", infer_body([x_spec([1, 1, 8, 8])], {"seeds": 1}), {}, 400, "unknown request parameter"),
    ("vae.encode", infer_body([x_spec([1, 1, 8, 8])], {"seed": -1}), {}, 400, "parameter seed"),
    ("vae.sample", infer_body([], {"n": 257}), {}, 400, "--max-sample"),
    ("vae.sample", infer_body([], {"temperature": "hot"}), {}, 400, "temperature"),
    ("vae.sample", infer_body([], {"priority": 3}), {}, 400, "no priority levels"),
    ("vae.nope", infer_body([]), {}, 404, "unknown model 'vae.nope'"),
    ("vae.encode/versions/2", infer_body([x_spec([1, 1, 8, 8])]), {}, 404, "no version '2'"),
    ("vae.encode", b'{"inputs": [', {}, 400, "does not parse"),
    ("vae.encode", b'[1, 2]', {}, 400, "expected a JSON object"),
    ("vae.encode", b'{"inputs": []}' + b"\0" * 8, {"Inference-Header-Content-Length": "99"}, 400,
     "Inference-Header-Content-Length"),
    ("vae.encode", json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                           "parameters": {"binary_data_size": 100}}]}).encode() + b"\0" * 100,
     {"Inference-Header-Content-Length": None}, 400, "expected 256 bytes"),
    ("vae.encode", json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                           "parameters": {"binary_data_size": 256}}]}).encode() + b"\0" * 200,
     {"Inference-Header-Content-Length": None}, 400, "the body has 200 left"),
    ("vae.encode", json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                           "parameters": {"binary_data_size": 256}}]}).encode() + b"\0" * 300,
     {"Inference-Header-Content-Length": None}, 400, "44 bytes after the JSON header"),
    ("vae.encode", infer_body([x_spec([1, 1, 8, 8])]) + b" " * (1 << 20), {}, 413, "--max-body-bytes"),
]


@pytest.mark.parametrize("model, body, headers, status, words", BAD, ids=[f"{b[0]}-{b[3]}-{b[4][:24]}" for b in BAD])
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(kinds_server, model, body, headers, status, words):
    if headers.get("Inference-Header-Content-Length", "") is None:  # the JSON's own length
        headers = {"Inference-Header-Content-Length": str(body.index(b"}]}") + 3)}
    got, _, answer = post(kinds_server, f"/v2/models/{model}/infer", body, headers)
    assert got == status, answer
    error = json.loads(answer)["error"]
    assert words in error, error
    assert client(kinds_server).infer("vae.sample", [], parameters={"n": 1, "seed": 0}).as_numpy("x").shape == \
        (1, 1, 8, 8)


def test_unknown_routes_and_the_metrics_page(kinds_server):
    status, body = get(kinds_server, "/v3/nothing")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]
    status, body = get(kinds_server, "/metrics")
    assert status == 200 and b"nv_inference_request_success{" in body and b"vaedeploy_batch_size_bucket" in body


# ---- load: concurrent clients, mixed sizes and seeds, every response checked -----------------------------------

CLIENTS, REQUESTS = 8, 24  # requests per client
SIZES = [1, 1, 2, 3, 5, 8, 13, 70]  # 70 > max_batch_size: split into 64 + 6 and reassembled


def test_concurrent_clients_get_exactly_their_own_rows(serve, exported, protocol):
    bundle = exported("vae")[1]
    server = serve([bundle], "--name", "vae", "--max-queue-delay-us", "3000", "--grpc-port", "0")
    rt = load(bundle)
    rng = np.random.default_rng(0)
    plan = []  # (model, n, seed, x, binary)
    for i in range(CLIENTS * REQUESTS):
        n, seed = int(rng.choice(SIZES)), int(rng.integers(0, 2**63))
        model = "vae.sample" if i % 2 else "vae.encode"
        plan.append((model, n, seed, images(n, i) if model == "vae.encode" else None, bool(i % 3)))
    c = client(server, concurrency=CLIENTS, protocol=protocol)
    pending = []
    for model, n, seed, x, binary in plan:
        if model == "vae.encode":
            pending.append(c.async_infer(model, [tensor("x", x, binary, protocol=protocol)],
                                         parameters={"seed": seed}, outputs=outputs(["z"], binary, protocol)))
        else:
            pending.append(c.async_infer(model, [], parameters={"n": n, "seed": seed},
                                         outputs=outputs(["x"], binary, protocol)))
    lost = mismatched = errors = 0
    for (model, n, seed, x, _binary), request in zip(plan, pending):
        try:
            result = request.get_result(timeout=TIMEOUT)
        except InferenceServerException as e:
            errors += 1
            print(model, n, e)
            continue
        except Exception as e:  # a timeout or a dropped connection
            lost += 1
            print(model, n, repr(e))
            continue
        got = result.as_numpy("z" if model == "vae.encode" else "x")
        want = rt.encode(x, seed=seed) if model == "vae.encode" else rt.sample(n, seed=seed)
        mismatched += got is None or got.shape != want.shape or not np.allclose(got, want, **TOLERANCE)
    c.close()
    assert (lost, mismatched, errors) == (0, 0, 0)
    text = get(server, "/metrics")[1].decode()
    for model in ("vae.encode", "vae.sample"):
        sizes = [n for m, n, *_ in plan if m == model]
        pieces = sum(-(-n // 64) for n in sizes)
        assert metric(text, "nv_inference_request_success", model) == len(sizes)
        assert metric(text, "nv_inference_count", model) == sum(sizes)
        assert metric(text, "vaedeploy_batch_size_sum", model) == sum(sizes)
        executions = metric(text, "nv_inference_exec_count", model)
        assert executions < pieces, f"{model}: {executions} executions for {pieces} pieces: no batch joined requests"
        assert metric(text, "nv_inference_request_failure", model, reason="BACKEND") == 0


# ---- overload, disconnects, shutdown ----------------------------------------------------------------------------

DELAY_US = 400_000  # requests of one row wait this long for a batch of 8 that never fills


@pytest.fixture(scope="module")
def tiny_queue(serve, exported):
    return serve([exported("vae")[1]], "--name", "vae", "--max-batch-size", "8", "--max-queue-size", "4",
                 "--max-queue-delay-us", str(DELAY_US))


def burst(server, count: int) -> list[tuple[int, float, dict]]:
    """``count`` sample requests at once from threads: (status, seconds, headers) of each."""
    results = [None] * count
    body = infer_body([], {"n": 1, "seed": 5})

    def one(i):
        started = time.monotonic()
        status, headers, answer = post(server, "/v2/models/vae.sample/infer", body)
        results[i] = (status, time.monotonic() - started, headers, answer)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return results


def test_a_full_queue_refuses_at_once_and_serves_fully_afterwards(tiny_queue, exported):
    results = burst(tiny_queue, 24)
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert len(served) + len(refused) == 24 and 1 <= len(served) <= 8 and len(refused) >= 16
    for _status, seconds, headers, answer in refused:
        assert json.loads(answer)["error"] == "Exceeds maximum queue size" and headers.get("retry-after") == "1"
        assert seconds < DELAY_US * 1e-6, f"a refusal took {seconds:.3f} s: it waited in the queue"
    rt = load(exported("vae")[1])
    c = client(tiny_queue)
    for seed in range(6):  # full service afterwards, one request at a time
        got = c.infer("vae.sample", [], parameters={"n": 1, "seed": seed}).as_numpy("x")
        np.testing.assert_allclose(got, rt.sample(1, seed=seed), **TOLERANCE)
    assert tiny_queue.process.poll() is None


def test_clients_that_disconnect_do_not_wedge_the_batcher(tiny_queue):
    body = infer_body([], {"n": 1, "seed": 1})
    request = (f"POST /v2/models/vae.sample/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode()
    before = metric(get(tiny_queue, "/metrics")[1].decode(), "nv_inference_request_failure", "vae.sample",
                    reason="CANCELED")
    for whole in (True, True, True, True, False):  # four fill the queue and leave; one leaves mid-body
        sock = socket.create_connection(("127.0.0.1", tiny_queue.port), timeout=TIMEOUT)
        sock.sendall(request + (body if whole else body[:5]))
        time.sleep(0.05)
        sock.close()
    time.sleep(0.2)
    text = get(tiny_queue, "/metrics")[1].decode()
    assert metric(text, "nv_inference_request_failure", "vae.sample", reason="CANCELED") - before == 4
    assert metric(text, "nv_inference_pending_request_count", "vae.sample") == 0  # their rows left the queue
    c = client(tiny_queue)
    started = time.monotonic()
    for seed in range(4):
        assert c.infer("vae.sample", [], parameters={"n": 8, "seed": seed}).as_numpy("x").shape == (8, 1, 8, 8)
    assert time.monotonic() - started < 4 * DELAY_US * 1e-6, "a full batch of 8 should not wait for the delay"
    assert tiny_queue.process.poll() is None


def test_sigterm_drains_the_requests_in_flight(serve, exported):
    bundle = exported("vae")[1]
    server = serve([bundle], "--name", "vae", "--max-queue-delay-us", str(DELAY_US), "--preferred-batch-size", "64")
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(
        (s, post(server, "/v2/models/vae.sample/infer", infer_body([], {"n": 2, "seed": s}))))) for s in range(5)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(get(server, "/metrics")[1].decode(),
                                                 "nv_inference_pending_request_count", "vae.sample") < 5:
        time.sleep(0.02)
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(TIMEOUT)
    code = server.process.wait(TIMEOUT)
    assert code in (0, -signal.SIGTERM), server.stderr()
    rt = load(bundle)
    assert len(results) == 5
    for seed, (status, headers, answer) in results:
        assert status == 200, answer
        header = int(headers["Inference-Header-Content-Length"]) if "Inference-Header-Content-Length" in headers \
            else len(answer)
        doc = json.loads(answer[:header])
        got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
        np.testing.assert_allclose(got, rt.sample(2, seed=seed), **TOLERANCE)
    assert "Traceback" not in server.stderr()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_shutdown_marks_the_server_unready_first(exported):
    from vaedeploy.serve.app import InferenceServer, Uvicorn

    rt = load(exported("vae")[1])
    server = InferenceServer([("vae", rt)])
    server.ready = True
    uv = Uvicorn(server)
    uv.handle_exit(signal.SIGTERM, None)
    assert server.ready is False and uv.should_exit
    rt.close()


@contextlib.contextmanager
def in_process(bundle):
    """``vaedeploy serve`` of one bundle (as vae) on a thread of this process: (its InferenceServer, its port)."""
    import asyncio

    from vaedeploy.serve.app import InferenceServer, Uvicorn, _listening_socket

    server = InferenceServer([("vae", load(bundle))])
    uv, sock = Uvicorn(server), _listening_socket("127.0.0.1", 0)
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield server, sock.getsockname()[1]
    finally:
        uv.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def infer_request(seed: int) -> bytes:
    body = b'{"parameters": {"n": 1, "seed": %d}}' % seed
    return b"POST /v2/models/vae.sample/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_every_http_request_leaves_the_in_flight_count_it_entered(exported):
    # the count decides which requests may run on the event loop; one that leaked would turn that path off for good
    with in_process(exported("vae")[1]) as (server, port):
        requests = [("POST", "/v2/models/vae.sample/infer", b'{"parameters": {"n": 1, "seed": 1}}', 200),
                    ("POST", "/v2/models/vae.sample/infer", b'{"parameters": {"n": 0}}', 400),
                    ("POST", "/v2/models/vae.nothing/infer", b"{}", 404), ("GET", "/v2/health/ready", None, 200),
                    ("GET", "/nowhere", None, 404)]
        for method, path, body, status in requests * 2:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            connection.request(method, path, body)
            assert connection.getresponse().status == status, path
            connection.close()
        with socket.create_connection(("127.0.0.1", port)) as gone:  # headers, then the client leaves before its body
            gone.sendall(infer_request(0)[:-5])
        deadline = time.monotonic() + TIMEOUT
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.in_flight == 0


def test_requests_that_arrive_together_share_a_batch_without_a_queue_delay(exported):
    # no queue delay: a request alone on the server runs at once on the event loop; requests whose headers were read
    # together must not each be taken for a lone one (they count as in flight from their headers), so they batch. The
    # server's event loop is held for 0.3 s while they are sent, so all of them are read in its next step.
    together = 32
    with in_process(exported("vae")[1]) as (server, port):
        for _ in range(5):  # one by one: the model's cost is known from its first run, its later runs are warm
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            connection.request("POST", "/v2/models/vae.sample/infer", b'{"parameters": {"n": 1}}')
            assert connection.getresponse().status == 200
            connection.close()
        before = server.statistics("vae.sample")["model_stats"][0]["execution_count"]
        connections = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(together)]
        server._loop.call_soon_threadsafe(time.sleep, 0.3)
        time.sleep(0.05)
        for seed, connection in enumerate(connections):
            connection.sendall(infer_request(seed))
        for connection in connections:
            answer = http.client.HTTPResponse(connection)
            answer.begin()
            assert answer.status == 200 and json.loads(answer.read())["outputs"][0]["shape"] == [1, 1, 8, 8]
            connection.close()
        executions = server.statistics("vae.sample")["model_stats"][0]["execution_count"] - before
    assert executions <= 2, f"{executions} executions for {together} requests that arrived together"


def test_the_cli_refuses_bad_options_in_one_line(exported, capsys):
    from vaedeploy.cli import main

    bundle = str(exported("vae")[1])
    assert main(["serve", bundle, "--name", "a", "--name", "b"]) == 2
    assert "--name: given 2 times for 1 bundle(s)" in capsys.readouterr().err
    assert main(["serve", bundle, bundle]) == 2
    assert "would be served twice" in capsys.readouterr().err
    assert main(["serve", bundle, "--preferred-batch-size", "128"]) == 2
    assert "preferred_batch_size: expected sizes from 1 to max_batch_size 64" in capsys.readouterr().err


def test_timeouts_reject_requests_that_waited_too_long(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae", "--max-queue-delay-us", str(DELAY_US),
                   "--timeout-us", "50000")
    status, _, answer = post(server, "/v2/models/vae.sample/infer", infer_body([], {"n": 1}))
    assert status == 503 and json.loads(answer)["error"] == "Request timeout expired"
    status, _, answer = post(server, "/v2/models/vae.sample/infer", infer_body([], {"n": 64}))
    assert status == 200  # a full batch is sent at once, before its timeout
    text = get(server, "/metrics")[1].decode()
    assert metric(text, "nv_inference_request_failure", "vae.sample", reason="REJECTED") == 1
    assert re.search(r'nv_inference_request_success\{model="vae.sample",version="1"\} 1.0', text)


def test_the_server_turns_onnxruntime_spinning_off_and_direct_load_keeps_the_default(exported, monkeypatch):
    import argparse

    import vaedeploy
    import vaedeploy.serve as serving
    from vaedeploy.errors import ConfigError
    from vaedeploy.serve.command import SESSION_CONFIG, add_serve_arguments, serve

    def spinning(rt) -> str | None:
        options = rt.runners["decoder"].session.get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # onnxruntime raises for an entry that was never set: its default, spinning
            return None

    served = []
    monkeypatch.setattr(serving, "run", lambda server, *args: served.append(server))
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    bundle = str(exported("vae")[1])
    assert serve(parser.parse_args([bundle, "--backend", "onnxruntime"])) == 0
    (rt,) = served[0].runtimes
    assert SESSION_CONFIG == {"session.intra_op.allow_spinning": "0"} and spinning(rt) == "0"
    rt.close()
    def entry(rt, key: str) -> str | None:
        try:
            return rt.runners["decoder"].session.get_session_options().get_session_config_entry(key)
        except RuntimeError:
            return None

    with vaedeploy.load(bundle) as direct:
        assert spinning(direct) is None
    # docs/benchmarks.md: chaining graphs at large batches on few cores wants the pools to stop after each run
    with vaedeploy.load(bundle, session_config={"session.force_spinning_stop": "1"}) as chained:
        assert entry(chained, "session.force_spinning_stop") == "1" and spinning(chained) is None
    with vaedeploy.load(bundle, backend="torch", session_config=SESSION_CONFIG) as other:  # no sessions to configure
        assert other.backend == "torch"
    with pytest.raises(ConfigError, match="session_config: expected ONNX Runtime config entries as strings"):
        vaedeploy.load(bundle, session_config={"session.intra_op.allow_spinning": 0})
