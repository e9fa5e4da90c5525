"""Triton's statistics extension (``GET …/stats``, gRPC ModelStatistics): exact counts for a known sequence of
requests over both protocols, durations that add up (per request queue + compute ≤ success), batches charged to
each request in them, and the same answer over HTTP and gRPC."""
import json

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from test_server import get, images
from tritonclient.utils import InferenceServerException
from v2clients import message_json

TIMEOUT = 30
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def stats(server, model: str = "") -> list[dict]:
    path = f"/v2/models/{model}/stats" if model else "/v2/models/stats"
    status, body = get(server, path)
    assert status == 200, body
    return json.loads(body)["model_stats"]


def test_counts_are_exact_and_durations_add_up_over_both_protocols(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae", "--grpc-port", "0")
    http = triton.InferenceServerClient(server.url, network_timeout=TIMEOUT)
    grpc = triton_grpc.InferenceServerClient(server.grpc_url)
    sizes = [1, 2, 3, 2, 5]
    for i, n in enumerate(sizes):  # one at a time: each request is a batch of its own
        module, c = (triton, http) if i % 2 else (triton_grpc, grpc)
        x = module.InferInput("x", [n, 1, 8, 8], "FP32")
        x.set_data_from_numpy(images(n, i))
        c.infer("vae.encode", [x], parameters={"seed": i})
    for module, c in ((triton, http), (triton_grpc, grpc)):
        bad = module.InferInput("x", [1, 1, 8, 8], "FP32")
        bad.set_data_from_numpy(np.full((1, 1, 8, 8), np.nan, np.float32))
        with pytest.raises(InferenceServerException, match="expected finite values in \\[0, 1\\].*got NaN"):
            c.infer("vae.encode", [bad])
    with pytest.raises(InferenceServerException, match="unknown request parameter"):
        http.infer("vae.sample", [], parameters={"seeds": 1})

    (encode,) = stats(server, "vae.encode")
    inference = encode["inference_stats"]
    assert encode["name"] == "vae.encode" and encode["version"] == "1" and encode["last_inference"] > 0
    assert (encode["inference_count"], encode["execution_count"]) == (sum(sizes), len(sizes))
    assert inference["success"]["count"] == len(sizes) and inference["fail"]["count"] == 2
    assert all(inference[phase]["count"] == len(sizes) for phase in PHASES)
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in encode["batch_stats"]} == {1: 1, 2: 2, 3: 1, 5: 1}
    assert all(inference[key]["ns"] > 0 for key in ("success", "fail", "queue", "compute_input", "compute_infer"))
    assert sum(inference[phase]["ns"] for phase in PHASES) <= inference["success"]["ns"]
    # a request alone in its batch is charged exactly its batch's runtime calls
    assert inference["compute_infer"]["ns"] == sum(b["compute_infer"]["ns"] for b in encode["batch_stats"])
    sampled = next(m for m in stats(server) if m["name"] == "vae.sample")
    assert sampled["inference_stats"]["fail"]["count"] == 1 and sampled["execution_count"] == 0
    assert {m["name"] for m in stats(server)} == {m["name"] for m in http.get_model_repository_index()}
    # gRPC's ModelStatistics holds the same numbers (nothing ran in between)
    over_grpc = grpc.get_inference_statistics("vae.encode").model_stats[0]
    assert over_grpc.version == "1" and {**message_json(over_grpc), "version": "1"} == encode


def test_each_request_in_a_batch_is_charged_the_whole_batch(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae", "--max-queue-delay-us", "300000",
                   "--preferred-batch-size", "4")
    http = triton.InferenceServerClient(server.url, concurrency=4, network_timeout=TIMEOUT)
    pending = [http.async_infer("vae.sample", [], parameters={"n": 1, "seed": s}) for s in range(4)]
    for p in pending:
        p.get_result(timeout=TIMEOUT)
    (sample,) = stats(server, "vae.sample")
    inference, (batch,) = sample["inference_stats"], sample["batch_stats"]
    assert (sample["inference_count"], sample["execution_count"], batch["batch_size"]) == (4, 1, 4)
    assert inference["compute_infer"]["count"] == 4 and batch["compute_infer"]["count"] == 1
    assert inference["compute_infer"]["ns"] == 4 * batch["compute_infer"]["ns"]
    assert sum(inference[phase]["ns"] for phase in PHASES) <= inference["success"]["ns"]


def test_an_unknown_model_has_no_statistics(serve, exported):
    server = serve([exported("vae")[1]], "--name", "vae")
    status, body = get(server, "/v2/models/nope/stats")
    assert status == 404 and "unknown model 'nope'" in json.loads(body)["error"]
    status, body = get(server, "/v2/models/vae.sample/versions/2/stats")
    assert status == 404 and "no version '2'" in json.loads(body)["error"]


def test_an_image_the_runtime_would_refuse_is_refused_before_it_takes_a_batch_slot(serve, exported):
    # the runtime's own check (arrays.take with the bundle's input range) runs at the edge, in both front ends
    server = serve([exported("vae")[1]], "--name", "vae", "--grpc-port", "0")
    for module, c in ((triton, triton.InferenceServerClient(server.url, network_timeout=TIMEOUT)),
                      (triton_grpc, triton_grpc.InferenceServerClient(server.grpc_url))):
        x = module.InferInput("x", [2, 1, 8, 8], "FP32")
        x.set_data_from_numpy(np.full((2, 1, 8, 8), 2.0, np.float32))
        with pytest.raises(InferenceServerException, match=r"input 'x': expected finite values in \[0, 1\] \(the "
                                                           r"bundle's input.range\), got values in \[2.0, 2.0\]"):
            c.infer("vae.reconstruct", [x])
    (reconstruct,) = stats(server, "vae.reconstruct")
    assert reconstruct["execution_count"] == 0 and reconstruct["inference_stats"]["fail"]["count"] == 2
    assert reconstruct["inference_stats"]["queue"]["count"] == 0
