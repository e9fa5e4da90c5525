"""Server mode: against the stand-in V2 server (conftest.py) for the requests it sends and the figures it gives back,
and against a live `vaedeploy serve` of a demo-shaped bundle, with the bundle's floor beside every row."""
import numpy as np
import pytest

from vaedeploy.bench import output, run, server
from vaedeploy.errors import ConfigError

SHORT = {"budget_s": 4.0, "window_s": 0.05, "max_windows": 4}


def test_binary_requests_follow_the_protocol_and_rows_carry_the_figures(v2_server):
    url, stand_in = v2_server()
    doc = run.measure_server(url, ["toy.double", "toy.sample"], batches=[1, 3], concurrencies=[1, 4], **SHORT)
    output.check(doc)
    assert doc["server"]["name"] == "standin" and "binary_tensor_data" in doc["server"]["extensions"]
    assert {(r["model"], r["batch"], r["concurrency"]) for r in doc["rows"]} == {
        (m, b, c) for m in ("toy.double", "toy.sample") for b in (1, 3) for c in (1, 4)}
    for row in doc["rows"]:
        assert row["errors"] == 0 and row["calls"] >= 4 and row["p50_ms"] > 0 and row["items_per_s"] > 0
        assert row["binary"] and row["floor"] is None and row["x_floor"] is None
    doubles = [(h, header, t) for m, h, header, t in stand_in.requests if m == "toy.double"]
    headers, header, tensors = doubles[-1]
    assert int(headers["Inference-Header-Content-Length"]) > 0
    assert header["inputs"][0]["parameters"]["binary_data_size"] == tensors["x"].nbytes
    assert header["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    assert tensors["x"].dtype == np.float32 and np.any(tensors["x"] != 0), "real inputs, never zeros"
    assert len({t["x"].tobytes() for _, _, t in doubles}) > 1, "the inputs rotate"
    samples = [header["parameters"] for m, _, header, _ in stand_in.requests if m == "toy.sample"]
    assert {p["n"] for p in samples} == {1, 3} and len({p["seed"] for p in samples}) > 1, "n = batch, seeds change"


def test_json_tensors_when_asked_or_when_the_server_lacks_the_binary_extension(v2_server):
    url, stand_in = v2_server(binary=False)
    doc = run.measure_server(url, ["toy.double"], batches=[2], **SHORT)
    assert not doc["rows"][0]["binary"] and any("binary_tensor_data" in n for n in doc["notes"])
    _, headers, header, tensors = stand_in.requests[-1]
    assert "Inference-Header-Content-Length" not in headers and "data" in header["inputs"][0]
    assert doc["rows"][0]["errors"] == 0 and tensors["x"].shape == (2, 4)


def test_wrong_answers_are_errors_with_the_reason(v2_server):
    url, _ = v2_server()
    row = run.measure_server(url, ["toy.short"], batches=[2], **SHORT)["rows"][0]
    assert row["errors"] > 0 and row["calls"] == 0 and "2 rows" in row["first_error"]


def test_unknown_models_and_dead_servers_are_one_sentence(v2_server):
    url, _ = v2_server()
    with pytest.raises(ConfigError, match="--model toy.missing: the server answered 404"):
        run.measure_server(url, ["toy.missing"], batches=[1], **SHORT)
    with pytest.raises(ConfigError, match="cannot reach the server"):
        run.measure_server("http://127.0.0.1:9", ["toy.double"], batches=[1], **SHORT)
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        server.Client("ftp://example")


def test_a_live_vaedeploy_serve_with_the_bundles_floor(exported, serve):
    bundle = exported("vae")[1]
    server = serve([bundle], "--name", "vae")
    doc = run.measure_server(f"http://{server.url}", ["vae.sample", "vae.encode"], bundles=[bundle], batches=[1, 4],
                             concurrencies=[1, 2], **SHORT)
    output.check(doc)
    assert doc["server"]["name"] == "vaedeploy" and "binary_tensor_data" in doc["server"]["extensions"]
    assert len(doc["rows"]) == 8 and doc["bundles"][0]["sha256"]
    for row in doc["rows"]:
        assert row["errors"] == 0 and row["calls"] >= 4 and row["binary"], row
        assert row["floor"]["floor_ms"] > 0 and row["x_floor"] > 1, "a server call costs more than its graphs' floor"


def test_an_answer_that_is_not_an_infer_response_is_an_error_in_a_sentence(monkeypatch):
    answers = {"/v2/models/m/infer": (200, {}, b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}')}
    client = server.Client("http://127.0.0.1:9")
    monkeypatch.setattr(client, "request", lambda method, path, body=None, headers=None: answers[path])
    call = server.server_call(client, "m", {"inputs": [], "outputs": [{"name": "y"}], "parameters": []}, 1, True, {},
                              None)
    with pytest.raises(server.ServerError, match="the server's answer is not an infer response: output 'y': "
                                                 "expected 'data' or parameters.binary_data_size, got neither"):
        call(0)
    answers["/v2/models/m/infer"] = (200, {}, b'{"outputs": "\xff"}')
    with pytest.raises(server.ServerError, match="the response's JSON header does not parse"):
        call(0)
    answers["/v2/models/m/infer"] = (500, {}, b"\xff oops")
    with pytest.raises(server.ServerError, match="HTTP 500: "):
        call(0)


def test_metadata_that_is_not_utf8_json_is_one_sentence(monkeypatch):
    client = server.Client("http://127.0.0.1:9")
    monkeypatch.setattr(client, "request", lambda method, path, body=None, headers=None: (200, {}, b"\xff{}"))
    with pytest.raises(ConfigError, match=r"http://127.0.0.1:9/v2: expected a JSON object in UTF-8, got b'\\xff\{\}'"):
        server.server_metadata(client)


def test_a_spatial_bundle_s_axes_of_any_size_take_the_bundle_s_reference_size(exported, serve):
    # klconv's metadata has -1 for H, W and h, w: the bench sends its test images and latents of the reference size
    bundle = exported("klconv")[1]
    server = serve([bundle], "--name", "kl")
    doc = run.measure_server(f"http://{server.url}", ["kl.encode", "kl.decode", "kl.sample"], bundles=[bundle],
                             batches=[2], **SHORT)
    output.check(doc)
    assert len(doc["rows"]) == 3 and all(row["errors"] == 0 and row["calls"] >= 4 for row in doc["rows"]), doc["rows"]


def test_an_axis_of_any_size_without_a_size_to_give_it_is_one_sentence():
    spec = {"name": "z", "shape": [-1, 2, -1, -1], "datatype": "FP32"}
    assert server._shape(spec, 3, [(1, 8, 8), (2, 2, 4)]) == [3, 2, 2, 4]  # the first of its rank and fixed dims
    with pytest.raises(ConfigError, match=r"input 'z' has shape \[-1, 2, -1, -1\]: expected a local bundle"):
        server._shape(spec, 3, [(1, 8, 8)])
