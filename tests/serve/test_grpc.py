"""The V2 gRPC service's own cases: each malformed or refused request gets Triton's status code and one sentence and
the server keeps serving; the message limit; a full queue; a cancelled call; a busy port; SIGTERM with calls in
flight. What both protocols share (every model against its runtime, concurrency, outputs) is in test_server.py,
parametrised over tritonclient's HTTP and gRPC clients."""
import http.client
import signal
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from vaedeploy import load

TIMEOUT = 30
LIMIT = 1 << 16  # --max-body-bytes of the module's server: the largest gRPC message it takes


@pytest.fixture(scope="module")
def server(serve, exported):
    return serve([exported("vae")[1]], "--name", "vae", "--grpc-port", "0", "--max-sample", "256",
                 "--max-body-bytes", str(LIMIT))


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def request(model="vae.encode", shape=(1, 1, 8, 8), datatype="FP32", raw=None, parameters=None, **contents):
    """A ``ModelInferRequest`` with one input ``x`` (none when ``shape`` is None), its data in ``raw`` or in the typed
    ``contents`` (by default raw 0.5s)."""
    message = service_pb2.ModelInferRequest(model_name=model)
    if shape is not None:
        x = message.inputs.add(name="x", datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(x.contents, field).extend(values)
        if not contents:
            message.raw_input_contents.append(raw if raw is not None else
                                              np.full(shape, 0.5, np.float32).tobytes())
    for key, value in (parameters or {}).items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[type(value)]
        setattr(message.parameters[key], field, value)
    return message


def with_raw(message, raw: bytes):
    """``message`` with one more raw buffer."""
    message.raw_input_contents.append(raw)
    return message


def sample(stub, seed=0) -> np.ndarray:
    answer = stub.ModelInfer(request("vae.sample", None, parameters={"n": 1, "seed": seed}), timeout=TIMEOUT)
    return np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(answer.outputs[0].shape)


BAD = [
    # (request, status code, words the message must contain)
    (request(shape=(1, 1, 8, 7), raw=b"\0" * 224), "INVALID_ARGUMENT", "expected shape N×1×8×8, got 1×1×8×7"),
    (request(datatype="INT32", int_contents=[1] * 64), "INVALID_ARGUMENT", "expected datatype FP32"),
    (request(fp32_contents=[float("nan")] + [0.5] * 63), "INVALID_ARGUMENT", "got NaN or Inf"),
    (request(fp32_contents=[0.5] * 63), "INVALID_ARGUMENT", "expected 64 values"),
    (request(datatype="INT8", int_contents=[300] * 64), "INVALID_ARGUMENT", "from -128 to 127"),
    (request(raw=b"\0" * 100), "INVALID_ARGUMENT", "expected 256 bytes"),
    (request(datatype="FP16", fp32_contents=[0.5] * 64), "INVALID_ARGUMENT", "must be sent in raw_input_contents"),
    (request(datatype="BYTES", raw=b""), "INVALID_ARGUMENT", "datatype: expected one of"),
    (request(shape=(0, 1, 8, 8), raw=b""), "INVALID_ARGUMENT", "N ≥ 1"),
    (request(shape=None), "INVALID_ARGUMENT", "expected input(s) ['x']"),
    (request(parameters={"seeds": 1}), "INVALID_ARGUMENT", "unknown request parameter"),
    (request(parameters={"seed": -1}), "INVALID_ARGUMENT", "parameter seed"),
    (request(parameters={"seed": True}), "INVALID_ARGUMENT", "parameter seed: expected an integer"),
    (request("vae.sample", None, parameters={"n": 257}), "INVALID_ARGUMENT", "--max-sample"),
    (request("vae.sample", None, parameters={"temperature": "hot"}), "INVALID_ARGUMENT", "temperature"),
    (request("vae.sample", None, parameters={"priority": 3}), "INVALID_ARGUMENT", "no priority levels"),
    (request("vae.nope"), "NOT_FOUND", "unknown model 'vae.nope'"),
    (service_pb2.ModelInferRequest(model_name="vae.encode", model_version="2"), "NOT_FOUND", "no version '2'"),
    (with_raw(request(), b"\0" * 256), "INVALID_ARGUMENT", "expected one buffer per input (1), got 2"),
    (with_raw(request(fp32_contents=[0.5] * 64), b"\0" * 256), "INVALID_ARGUMENT", "got both"),
    (request(raw=b"\0" * (LIMIT + 4), shape=(1, 1, 1, (LIMIT + 4) // 4)), "RESOURCE_EXHAUSTED", "larger than max"),
]


@pytest.mark.parametrize("message, code, words", BAD, ids=[f"{b[1]}-{b[2][:30]}" for b in BAD])
def test_a_bad_request_gets_tritons_status_and_one_sentence_and_the_server_keeps_serving(server, stub, message, code,
                                                                                         words):
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(message, timeout=TIMEOUT)
    assert refused.value.code().name == code and words in refused.value.details(), refused.value.details()
    assert "\n" not in refused.value.details() and "Traceback" not in server.stderr()
    assert sample(stub).shape == (1, 1, 8, 8)


def test_tritons_own_parameters_are_ignored_as_triton_ignores_them(stub, exported):
    # perf_analyzer sends triton_enable_empty_final_response with every gRPC request (read by decoupled models only)
    parameters = {"n": 2, "seed": 9, "triton_enable_empty_final_response": True}
    answer = stub.ModelInfer(request("vae.sample", None, parameters=parameters), timeout=TIMEOUT)
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(answer.outputs[0].shape)
    np.testing.assert_allclose(got, load(exported("vae")[1]).sample(2, seed=9), rtol=1e-6, atol=1e-6)


def test_typed_contents_and_raw_contents_give_the_same_answer(stub, exported):
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    raw = stub.ModelInfer(request("vae.reconstruct", x.shape, raw=x.tobytes()), timeout=TIMEOUT)
    typed = stub.ModelInfer(request("vae.reconstruct", x.shape, fp32_contents=x.ravel().tolist()), timeout=TIMEOUT)
    assert raw.raw_output_contents[0] == typed.raw_output_contents[0]
    got = np.frombuffer(typed.raw_output_contents[0], np.float32).reshape(typed.outputs[0].shape)
    np.testing.assert_allclose(got, load(exported("vae")[1]).reconstruct(x), rtol=1e-6, atol=1e-6)


def test_requests_and_answers_over_a_mebibyte_are_read_and_written_off_the_event_loop(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae", "--grpc-port", "0", "--max-sample", "8192")
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    x = np.random.default_rng(1).random((4200, 1, 8, 8), dtype=np.float32)  # 1.07 MiB as typed contents
    answer = stub.ModelInfer(request("vae.reconstruct", x.shape, fp32_contents=x.ravel().tolist()), timeout=TIMEOUT)
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(answer.outputs[0].shape)
    rt = load(exported("vae")[1])
    np.testing.assert_allclose(got, rt.reconstruct(x), rtol=1e-6, atol=1e-6)
    answer = stub.ModelInfer(request("vae.sample", None, parameters={"n": 5000, "seed": 3}), timeout=TIMEOUT)
    assert len(answer.raw_output_contents[0]) == 5000 * 64 * 4  # 1.22 MiB written in a thread
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(answer.outputs[0].shape)
    np.testing.assert_allclose(got, rt.sample(5000, seed=3), rtol=1e-6, atol=1e-6)
    channel.close()


def test_the_metadata_calls_answer_and_an_unknown_model_is_not_found(server, stub):
    assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(service_pb2.ModelReadyRequest(name="vae.decode")).ready
    assert "statistics" in stub.ServerMetadata(service_pb2.ServerMetadataRequest()).extensions
    meta = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="vae.decode"))
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("z", "FP32", [-1, 4])]
    config = stub.ModelConfig(service_pb2.ModelConfigRequest(name="vae.sample")).config
    assert config.max_batch_size == 64 and config.parameters["request_parameters"].string_value
    assert {m.name for m in stub.RepositoryIndex(service_pb2.RepositoryIndexRequest()).models} >= {"vae.sample"}
    for call, message in [(stub.ModelReady, service_pb2.ModelReadyRequest(name="nope")),
                          (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
                          (stub.ModelConfig, service_pb2.ModelConfigRequest(name="nope")),
                          (stub.ModelStatistics, service_pb2.ModelStatisticsRequest(name="nope"))]:
        with pytest.raises(grpc.RpcError) as refused:
            call(message, timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in refused.value.details()


def test_a_full_queue_is_unavailable_at_once_and_a_cancelled_call_leaves_the_queue(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae", "--grpc-port", "0", "--max-batch-size", "8",
                   "--max-queue-size", "2", "--max-queue-delay-us", "2000000")
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    waiting = [stub.ModelInfer.future(request("vae.sample", None, parameters={"n": 1, "seed": s}), timeout=TIMEOUT)
               for s in range(2)]
    wait_until(lambda: queued(server) == 2)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request("vae.sample", None, parameters={"n": 1}), timeout=TIMEOUT)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and refused.value.details() == \
        "Exceeds maximum queue size"
    for call in waiting:
        call.cancel()
    assert wait_until(lambda: queued(server) == 0)  # the cancelled calls' rows left the queue
    statistics = triton_grpc.InferenceServerClient(server.grpc_url).get_inference_statistics("vae.sample")
    assert statistics.model_stats[0].inference_stats.fail.count == 3  # the refused call and the two cancelled
    assert stub.ModelInfer(request("vae.sample", None, parameters={"n": 8, "seed": 1}), timeout=TIMEOUT).outputs
    channel.close()


def wait_until(condition, seconds: float = 10) -> bool:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        time.sleep(0.02)
    return False


def queued(server) -> float:
    """The rows waiting in vae.sample's queue, from the metrics page."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count{") and 'model="vae.sample"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_busy_grpc_port_is_refused_in_one_line(exported, capsys):
    from vaedeploy.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(exported("vae")[1]), "--port", "0", "--grpc-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}: cannot listen for gRPC" in err and "Traceback" not in err


def test_sigterm_stops_new_calls_at_once_and_lets_the_calls_in_flight_finish(serve, exported):
    # an HTTP request and two gRPC calls wait for a batch (2 s delay); SIGTERM: a new gRPC call is refused at once,
    # while uvicorn still waits for the HTTP request, and every request in flight gets its answer
    bundle = exported("vae")[1]
    server = serve([bundle], "--name", "vae", "--grpc-port", "0", "--max-queue-delay-us", "2000000",
                   "--preferred-batch-size", "64")
    channel = grpc.insecure_channel(server.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls = [stub.ModelInfer.future(request("vae.sample", None, parameters={"n": 2, "seed": s}), timeout=TIMEOUT)
             for s in range(2)]
    http_answer = []
    body = b'{"parameters": {"n": 2, "seed": 2}}'
    waiting = threading.Thread(target=lambda: http_answer.append(post(server, "/v2/models/vae.sample/infer", body)))
    waiting.start()
    assert wait_until(lambda: queued(server) == 3)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request("vae.sample", None, parameters={"n": 1}), timeout=1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    rt = load(bundle)
    for seed, call in enumerate(calls):
        answer = call.result(timeout=TIMEOUT)
        got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(answer.outputs[0].shape)
        np.testing.assert_allclose(got, rt.sample(2, seed=seed), rtol=1e-6, atol=1e-6)
    waiting.join(TIMEOUT)
    assert http_answer and http_answer[0][0] == 200
    assert server.process.wait(TIMEOUT) in (0, -signal.SIGTERM) and "Traceback" not in server.stderr()
    channel.close()


def post(server, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
