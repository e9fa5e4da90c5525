"""What `vaedeploy serve` answers to hostile requests and connections (issue 25): every request number checked by
one function against one table (huge integers, non-integral codes, a temperature out of range: a 400 sentence,
never a 500), no output with NaN or Inf (strict JSON only), a JSON 503 for a request cut off by the shutdown
timeout, a JSON 400 for malformed HTTP, idle and slow connections closed, and a port out of range refused by the
parser. Every answer here is parsed by a strict JSON parser (no NaN or Infinity tokens)."""
import asyncio
import http.client
import json
import re
import signal
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vaedeploy.bundle import ImageSizes
from vaedeploy.runtime.base import MAX_TEMPERATURE
from vaedeploy.runtime.operations import SAMPLING, SIZE, size_parameters
from vaedeploy.serve.models import MAX_WAIT_US, PARAMETERS, Operation, Piece, TensorSpec
from vaedeploy.serve.protocol import ProtocolError, bounds, check, parse_request

TIMEOUT = 30  # seconds, every client call
KEEP_ALIVE_S, HEADER_S = 0.5, 1.0  # the test server's --keep-alive-timeout and --header-timeout
BIG = "1" + "0" * 400  # 10**400 written as a JSON literal


def strict_json(body: bytes):
    """The body parsed as strict JSON: a NaN, Infinity or -Infinity token fails the test."""
    return json.loads(body, parse_constant=lambda token: pytest.fail(f"invalid JSON token {token} in {body[:200]!r}"))


def post(server, path: str, body: bytes) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def pending(server, model: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    match = re.search(rf'nv_inference_pending_request_count\{{model="{re.escape(model)}",version="1"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def server(serve, exported):
    return serve([exported("vae")[1], exported("vqvae")[1]], "--name", "vae", "--name", "vqvae",
                 "--keep-alive-timeout", KEEP_ALIVE_S, "--header-timeout", HEADER_S)


def x_body(value: str) -> str:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}) \
        .replace("0.5", value)


# ---- every request number: one checker, one table -----------------------------------------------------------

HOSTILE = [
    # (model, body, the error's words): issue 25's cases, each once
    ("vae.sample", f'{{"parameters": {{"temperature": {BIG}}}}}',
     f"parameter temperature: expected a finite number from 0 to {MAX_TEMPERATURE:g}, got an integer of 401 digits"),
    ("vae.sample", f'{{"parameters": {{"seed": {BIG}}}}}',
     "parameter seed: expected an integer from 0 to 2**63 - 1, got an integer of 401 digits"),
    ("vae.sample", f'{{"parameters": {{"offset": {BIG}}}}}',
     "parameter offset: expected an integer from 0 to 2**63 - 1, got an integer of 401 digits"),
    ("vae.sample", f'{{"parameters": {{"n": {BIG}}}}}',
     "parameter n: expected an integer from 1 to 4096 (the server's --max-sample), got an integer of 401 digits"),
    ("vae.sample", f'{{"parameters": {{"timeout": {BIG}}}}}',
     f"parameter timeout: expected an integer from 0 to {MAX_WAIT_US}, got an integer of 401 digits"),
    ("vae.sample", f'{{"parameters": {{"priority": {BIG}}}}}',
     "parameter priority: expected an integer from 0 to 2**63 - 1, got an integer of 401 digits"),
    ("vae.sample", '{"parameters": {"seed": 1' + "0" * 5000 + "}}",  # Python's json refuses it: the body parse
     "the request's JSON holds an integer of more than 4300 digits"),
    ("vae.encode", x_body(BIG),
     "input 'x'.data: expected a finite number from -3.40282e+38 to 3.40282e+38, got an integer of 401 digits"),
    ("vae.sample", '{"parameters": {"temperature": 1e308}}',
     f"parameter temperature: expected a finite number from 0 to {MAX_TEMPERATURE:g}, got 1e+308"),
    ("vae.sample", '{"parameters": {"n": 2.5}}', "parameter n: expected an integer from 1 to 4096"),
    ("vae.reconstruct", x_body("3e38"), "3e+38"),  # finite, far outside [0, 1]: refused, never NaN images
    ("vqvae.decode_codes",
     '{"inputs": [{"name": "codes", "shape": [1, 2, 2], "datatype": "INT64", "data": [1.9, 2.9, 0, 0]}]}',
     "input 'codes'.data: expected integers from -2**63 to 2**63 - 1, got non-integral values such as 1.9"),
    ("vqvae.decode_codes",
     '{"inputs": [{"name": "codes", "shape": [1, 2, 2], "datatype": "INT64", "data": [1, 2, 0, 99999]}]}',
     "vqvae.decode_codes: input 'codes': expected integers from 0 to"),
]


@pytest.mark.parametrize("model, body, words", HOSTILE, ids=[f"{m}-{w[:40]}" for m, _, w in HOSTILE])
def test_a_hostile_number_gets_a_400_sentence_and_the_server_keeps_serving(server, model, body, words):
    status, headers, answer = post(server, f"/v2/models/{model}/infer", body.encode())
    assert status == 400 and headers["content-type"] == "application/json", answer[:300]
    error = strict_json(answer)["error"]
    assert words in error and "\n" not in error, error
    status, _, answer = post(server, "/v2/models/vae.sample/infer", b'{"parameters": {"n": 2, "seed": 1}}')
    assert status == 200 and np.isfinite(strict_json(answer)["outputs"][0]["data"]).all()


def test_integral_numbers_are_taken_as_the_integers_they_are(server):
    body = b'{"parameters": {"n": 2.0, "seed": 3.0, "temperature": 1}}'
    status, _, answer = post(server, "/v2/models/vae.sample/infer", body)
    assert status == 200 and strict_json(answer)["outputs"][0]["shape"] == [2, 1, 8, 8]


# any JSON value a client may send as a parameter: integers of any size, floats with NaN and Inf, and non-numbers
JSON_VALUES = st.one_of(st.integers(min_value=-10**500, max_value=10**500), st.floats(), st.booleans(), st.none(),
                        st.text(max_size=4), st.lists(st.integers(), max_size=2))


SIZES = ImageSizes(low=(8, 8), high=(32, 64), multiple=4, reference=(8, 8))  # a spatial bundle's input.size


def sampler(max_sample: int = 4096) -> Operation:
    """A spatial sample: every parameter of the table, height and width with the bundle's own range and multiple."""
    x = TensorSpec("x", "FP32", (1, "H", "W"))
    return Operation("m.sample", None, [], [x], SAMPLING + SIZE, lambda *args: None, max_sample,
                     size_parameters(SIZES))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(PARAMETERS)), value=JSON_VALUES)
def test_every_parameter_value_is_taken_in_range_or_refused_in_one_sentence(name, value):
    body = json.dumps({"parameters": {name: value}}).encode()
    limit = sampler().limits[name]
    try:
        checked = sampler().checked_parameters(parse_request(body, None).parameters)[name]
    except ProtocolError as e:
        assert e.status == 400 and str(e).startswith(f"parameter {name}: expected ") and len(str(e)) < 200
    else:
        assert isinstance(checked, int if limit.integral else float) and limit.low <= checked <= limit.high
        assert checked == value and (not limit.integral or checked % limit.multiple == 0)


def test_the_checker_refuses_what_the_table_says_and_names_the_option():
    op = sampler(max_sample=8)
    assert op.checked_parameters({"n": 8, "temperature": MAX_TEMPERATURE}) == {"n": 8, "temperature": MAX_TEMPERATURE}
    with pytest.raises(ProtocolError, match=r"parameter n: expected an integer from 1 to 8 \(the server's "
                                            r"--max-sample\), got 9"):
        op.checked_parameters({"n": 9})
    # a spatial sample's size: the bundle's own range and multiple, in one sentence
    assert op.checked_parameters({"height": 12, "width": 64}) == {"height": 12, "width": 64}
    with pytest.raises(ProtocolError, match=r"parameter height: expected a multiple of 4 from 8 to 32, got 10$"):
        op.checked_parameters({"height": 10})
    with pytest.raises(ProtocolError, match=r"parameter width: expected a multiple of 4 from 8 to 64, got 68$"):
        op.checked_parameters({"width": 68})
    with pytest.raises(ProtocolError, match="unknown request parameter"):
        op.checked_parameters({"seeds": 1})
    with pytest.raises(ProtocolError, match="got NaN or Inf"):
        check("input 'x'", np.array([1.0, np.inf], np.float32), PARAMETERS["temperature"])
    with pytest.raises(ProtocolError, match="input 'codes': expected integers from 0 to 15, got values from 0 to 16"):
        check("input 'codes'", np.array([0, 16]), bounds("codes", True, 0, 15))


# ---- no NaN or Inf in an answer --------------------------------------------------------------------------------

def test_an_output_with_nan_or_inf_is_refused_naming_what_came_in_and_only_for_its_own_request():
    def overflowing(rt, inputs, rows, seed, offset, temperature, check_inputs):  # overflows for large inputs
        return (np.where(np.abs(inputs[0]) > 1e30, np.float32(np.inf), inputs[0]),)

    z = TensorSpec("z", "FP32", (2,))
    op = Operation("m.decode", None, [z], [TensorSpec("x", "FP32", (2,))], (), overflowing, 8)
    good = Piece((np.array([[0.5, 1.0]], np.float32),), 1, 0, 0, 1.0)
    bad = Piece((np.array([[3e38, 1.0]], np.float32),), 1, 0, 1, 1.0)
    first, second = op.run([good, bad])
    np.testing.assert_array_equal(first[0], good.inputs[0])
    assert isinstance(second, ProtocolError) and second.status == 400
    assert str(second) == ("m.decode: the model produced non-finite values (NaN or Inf) in output 'x' for this "
                           "request, whose input z holds values from 1 to 3e+38; expected inputs like the data the "
                           "model was trained on")


def test_a_nan_that_got_past_the_check_is_a_json_500_never_a_nan_token():
    from vaedeploy.serve.app import InferenceServer
    from vaedeploy.serve.batcher import DynamicBatcher

    class Runtime:
        backend = "fake"

    def nan(rt, inputs, rows, seed, offset, temperature, check_inputs):
        return (np.full_like(inputs[0], np.nan),)

    async def main():
        server = InferenceServer([])
        op = Operation("m.decode", Runtime, [TensorSpec("z", "FP32", (2,))], [TensorSpec("x", "FP32", (2,))], (),
                       nan, 8)
        op._refusal = lambda piece, outputs: None  # the output check off: the writer's own guard is what answers
        batcher = DynamicBatcher(op, server.policy, server.metrics.model(op.name))
        server.models[op.name], server.batchers[op.name] = op, batcher
        batcher.start()
        body = b'{"inputs": [{"name": "z", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1]}]}'

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            return await server.infer("m.decode", "1", {"headers": []}, receive)
        finally:
            await batcher.close()

    status, body, headers = asyncio.run(main())
    assert status == 500 and headers["content-type"] == "application/json"
    assert strict_json(body)["error"].startswith("internal error in m.decode: ValueError: Out of range float values "
                                                 "are not JSON compliant")


# ---- uvicorn's own answers, as JSON ------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"POST /v2/models/vae.sample/infer HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{}",
], ids=["garbage", "content-length-of-5000-digits"])
def test_malformed_http_gets_a_json_400(server, request_bytes):
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower()
    assert "not valid HTTP/1.1" in strict_json(body)["error"]


def test_a_request_cut_off_by_the_shutdown_timeout_gets_a_json_503(serve, exported):
    # the request waits 5 s for a batch of 64 that never forms; SIGTERM gives it 0.5 s
    stopping = serve([exported("vae")[1]], "--name", "vae", "--max-queue-delay-us", "5000000",
                     "--preferred-batch-size", "64", "--shutdown-timeout", "0.5")
    answers = []
    client = threading.Thread(target=lambda: answers.append(
        post(stopping, "/v2/models/vae.sample/infer", b'{"parameters": {"n": 1}}')))
    client.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pending(stopping, "vae.sample") < 1:
        time.sleep(0.02)
    stopping.process.send_signal(signal.SIGTERM)
    client.join(TIMEOUT)
    assert stopping.process.wait(TIMEOUT) in (0, -signal.SIGTERM)
    (status, headers, answer), = answers
    assert status == 503 and headers["content-type"] == "application/json"
    assert "--shutdown-timeout" in strict_json(answer)["error"]
    assert "Traceback" not in stopping.stderr()


def test_a_fault_in_an_endpoint_is_a_json_500(monkeypatch):
    from vaedeploy.serve.app import InferenceServer

    async def broken(self, request):
        raise KeyError("nothing")

    monkeypatch.setattr(InferenceServer, "server_metadata", broken)
    app, sent = InferenceServer([]).app, []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v2", "raw_path": b"/v2", "root_path": "", "headers": [],
             "query_string": b"", "scheme": "http", "server": ("127.0.0.1", 1), "http_version": "1.1"}
    with pytest.raises(KeyError):  # Starlette answers, then raises on for the server to log the traceback
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 500
    assert strict_json(sent[1]["body"])["error"] == "internal error in GET /v2: KeyError: 'nothing'"


# ---- idle and slow connections -----------------------------------------------------------------------------------

def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive_timeout(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        assert read_until_closed(sock) == b""
    assert KEEP_ALIVE_S * 0.9 <= time.monotonic() - started < KEEP_ALIVE_S + 5


def test_an_idle_connection_after_a_response_is_closed(server):
    body = b'{"parameters": {"n": 1}}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /v2/models/vae.sample/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        started = time.monotonic()
        answer = read_until_closed(sock)  # the response, then the close
    assert answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() - started < KEEP_ALIVE_S + 5


def test_headers_sent_too_slowly_get_a_json_408_at_the_header_timeout(server):
    request = b"POST /v2/models/vae.sample/infer HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        for i in range(0, len(request), 4):  # a byte every 0.1 s: more often than the keep-alive timeout
            try:
                sock.sendall(request[i:i + 4])
            except OSError:  # closed by the server
                break
            time.sleep(0.1)
        answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and "--header-timeout" in strict_json(body)["error"]
    assert HEADER_S * 0.9 <= time.monotonic() - started < HEADER_S + 5


# ---- options ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, words", [
    (["--port", "70000"], "--port: expected a TCP port from 0 to 65535 (0: any free port), got '70000'"),
    (["--keep-alive-timeout", "0"], "--keep-alive-timeout: expected a finite number > 0, got '0'"),
    (["--header-timeout", "inf"], "--header-timeout: expected a finite number > 0, got 'inf'"),
])
def test_options_out_of_range_are_refused_by_the_parser(exported, capsys, options, words):
    from vaedeploy.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["serve", str(exported("vae")[1]), *options])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and words in err and "Traceback" not in err


def test_queueing_times_past_an_hour_are_refused_in_one_line(exported, capsys):
    from vaedeploy.cli import main

    assert main(["serve", str(exported("vae")[1]), "--timeout-us", str(MAX_WAIT_US + 1)]) == 2
    assert f"default_timeout_microseconds: expected at most {MAX_WAIT_US} µs (an hour)" in capsys.readouterr().err


def test_the_server_wrote_no_traceback(server):
    assert "Traceback" not in server.stderr()


# ---- the values of a request are read once ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["encode", "decode"])
def test_a_requests_values_are_read_at_the_edge_and_not_again_by_the_batchs_call(exported, monkeypatch, name):
    from vaedeploy import load
    from vaedeploy.runtime.arrays import Values
    from vaedeploy.serve.models import operations

    rt = load(exported("vae")[1], backend="onnxruntime")
    op = next(o for o in operations("vae", rt) if o.name == f"vae.{name}")
    array = (np.random.default_rng(0).random((2, *rt.input_shape), dtype=np.float32) if name == "encode"
             else np.zeros((2, rt.latent_dim), np.float32))
    reads = []
    holds = Values.holds
    monkeypatch.setattr(Values, "holds", lambda self, x: reads.append(x.shape) or holds(self, x))
    pieces = [op.piece({op.inputs[0].name: array[i:i + 1]}, {}) for i in range(2)]
    assert len(reads) == 2  # each request, once, before it is queued
    for result in op.run(pieces) + op.run(pieces[:1]):  # a batch of two, and a request alone
        assert np.isfinite(result[0]).all()
    assert len(reads) == 2
