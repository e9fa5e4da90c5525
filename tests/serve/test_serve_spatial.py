"""`vaedeploy serve` with a spatial bundle that takes any image size (the klconv kind: images H×W, multiples of 4 from
8 to 32; latents 2×H/4×W/4), over tritonclient's HTTP and gRPC clients: metadata and config with -1 for the batch and
every axis of any size, every model at two sizes (one non-square) against the runtime, a sample at a requested size,
requests of two sizes in flight together, and a size the bundle does not take refused with a 400 and one sentence
while the server keeps serving. The batcher's side (pieces of two sizes are never one batch) is in test_batcher.py.
"""
import concurrent.futures

import numpy as np
import pytest
import tritonclient.http as triton
from test_server import PROTOCOLS, TIMEOUT, TOLERANCE, client, infer, outputs, post, tensor
from tritonclient.utils import InferenceServerException

from vaedeploy import load

SIZES = [(8, 8), (16, 12)]  # the reference size and a non-square one


@pytest.fixture(params=PROTOCOLS)
def protocol(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def spatial(serve, exported):
    bundle = exported("klconv")[1]
    return serve([bundle], "--name", "kl", "--grpc-port", "0", "--max-sample", "64"), load(bundle)


def test_metadata_and_config_show_minus_one_for_every_axis_of_any_size(spatial, protocol):
    server, rt = spatial
    c = client(server, protocol=protocol)
    c_lat = rt.latent_shape[0]
    for model, inputs, outputs_ in [("kl.encode", [[-1, 1, -1, -1]], [[-1, c_lat, -1, -1]]),
                                    ("kl.decode", [[-1, c_lat, -1, -1]], [[-1, 1, -1, -1]]),
                                    ("kl.sample", [], [[-1, 1, -1, -1]])]:
        meta = c.get_model_metadata(model)
        assert [t["shape"] for t in meta.get("inputs", [])] == inputs, model
        assert [t["shape"] for t in meta["outputs"]] == outputs_, model
        config = c.get_model_config(model)
        assert [t["dims"] for t in config.get("input", [])] == [s[1:] for s in inputs], model


@pytest.mark.parametrize("size", SIZES)
def test_encode_decode_reconstruct_at_any_size_equal_the_runtime(spatial, protocol, size):
    server, rt = spatial
    c = client(server, protocol=protocol)
    x = np.random.default_rng(size[1]).random((2, 1, *size), dtype=np.float32)
    (z,) = infer(c, protocol, "kl.encode", {"x": x}, ["z"], seed=5, offset=3)
    np.testing.assert_allclose(z, rt.encode(x, seed=5, offset=3), **TOLERANCE)
    assert z.shape == (2, rt.latent_shape[0], size[0] // 4, size[1] // 4)
    mean, logvar = infer(c, protocol, "kl.encode_params", {"x": x}, ["mean", "logvar"])
    for got, want in zip((mean, logvar), rt.encode_params(x)):
        np.testing.assert_allclose(got, want, **TOLERANCE)
    (decoded,) = infer(c, protocol, "kl.decode", {"z": z}, ["x"])
    np.testing.assert_allclose(decoded, rt.decode(z), **TOLERANCE)
    (rebuilt,) = infer(c, protocol, "kl.reconstruct", {"x": x}, ["x"])
    np.testing.assert_allclose(rebuilt, rt.reconstruct(x), **TOLERANCE)


def test_sample_at_a_requested_size_equals_the_runtime(spatial, protocol):
    server, rt = spatial
    c = client(server, protocol=protocol)
    (x,) = infer(c, protocol, "kl.sample", {}, ["x"], n=3, seed=7, height=12, width=20)
    np.testing.assert_allclose(x, rt.sample(3, seed=7, size=(12, 20)), **TOLERANCE)
    (reference,) = infer(c, protocol, "kl.sample", {}, ["x"], n=2, seed=7)  # no size: the reference size
    np.testing.assert_allclose(reference, rt.sample(2, seed=7), **TOLERANCE)


def test_requests_of_two_sizes_sent_together_are_each_answered_at_their_size(spatial):
    server, rt = spatial
    c = client(server, concurrency=8)
    sizes = [SIZES[i % 2] for i in range(8)] + [(20, 8)] * 4
    xs = [np.random.default_rng(i).random((1 + i % 3, 1, *s), dtype=np.float32) for i, s in enumerate(sizes)]
    pending = [c.async_infer("kl.reconstruct", [tensor("x", x)], outputs=outputs(["x"], True)) for x in xs]
    samples = [c.async_infer("kl.sample", [], outputs=outputs(["x"], True),
                             parameters={"n": 2, "seed": i, "height": h, "width": w})
               for i, (h, w) in enumerate(sizes)]
    for x, answer in zip(xs, pending):
        np.testing.assert_allclose(answer.get_result(timeout=TIMEOUT).as_numpy("x"), rt.reconstruct(x), **TOLERANCE)
    for i, ((h, w), answer) in enumerate(zip(sizes, samples)):
        np.testing.assert_allclose(answer.get_result(timeout=TIMEOUT).as_numpy("x"),
                                   rt.sample(2, seed=i, size=(h, w)), **TOLERANCE)


@pytest.mark.parametrize("model, inputs, parameters, words", [
    ("kl.encode", {"x": np.zeros((1, 1, 10, 8), np.float32)}, {}, "10×8"),  # not a multiple of 4
    ("kl.decode", {"z": np.zeros((1, 2, 9, 2), np.float32)}, {}, "9×2"),  # h·4 = 36 is past 32
    ("kl.sample", {}, {"n": 1, "height": 10}, "multiple of 4"),
    ("kl.sample", {}, {"n": 1, "height": 8, "width": 36}, "36"),
])
def test_a_size_the_bundle_does_not_take_is_a_400_in_one_sentence(spatial, protocol, model, inputs, parameters,
                                                                   words):
    server, rt = spatial
    c = client(server, protocol=protocol)
    with pytest.raises(InferenceServerException) as refused:
        infer(c, protocol, model, inputs, ["x"] if model != "kl.encode" else ["z"], **parameters)
    message = refused.value.message()
    assert words in message and "\n" not in message and "Traceback" not in message
    if protocol == "http":
        status, _, _ = post(server, f"/v2/models/{model}/infer", triton.InferenceServerClient.generate_request_body(
            [tensor(k, v, binary=False) for k, v in inputs.items()], parameters=parameters or None)[0])
        assert status == 400
    (x,) = infer(c, protocol, "kl.reconstruct", {"x": np.full((1, 1, 8, 12), 0.5, np.float32)}, ["x"])
    np.testing.assert_allclose(x, rt.reconstruct(np.full((1, 1, 8, 12), 0.5, np.float32)), **TOLERANCE)


def test_a_thread_pool_of_clients_of_two_sizes_over_grpc(spatial):
    # gRPC's own path: concurrent calls of two sizes, each answered at its size
    server, rt = spatial
    c = client(server, protocol="grpc")

    def call(i):
        x = np.random.default_rng(i).random((1, 1, *SIZES[i % 2]), dtype=np.float32)
        (got,) = infer(c, "grpc", "kl.reconstruct", {"x": x}, ["x"])
        return x, got

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for x, got in pool.map(call, range(8)):
            np.testing.assert_allclose(got, rt.reconstruct(x), **TOLERANCE)
