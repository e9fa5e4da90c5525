"""`vaedeploy triton-repo`'s output loaded by a real Triton Inference Server (2.51.0, the Python-backend build
nvidia-pytriton ships; tests/triton/tritonserver.py installs it), and tritonclient's HTTP and gRPC clients getting
from it the numbers `vaedeploy serve` gives for the same request and seed.

- ``--graphs python`` (the graphs through ONNX Runtime in the Python backend, for CPU-only servers): every model
  loads, READY;
- the default (``onnxruntime_onnx`` graphs, for GPU servers): loaded too; the one failure allowed is this build's
  missing onnxruntime backend library, for the graph models and the ensembles that need them;
- every ensemble (encode with a seed and offset, encode_params, decode, sample with n, seed, temperature and offset)
  answers the same request with what ``vaedeploy serve`` answers, through both clients (and so does vaedeploy serve's
  own gRPC service); a bundle of any image size (klconv, with a latent scaling) does so at two sizes, its sample
  drawn at the request's height and width.
Skips where the server cannot be installed (no PyPI, no libpython3.11), with a sentence; fails under CI=true.
"""
import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonserver import Triton, Unavailable, free_port, unavailable

from vaedeploy.bundle import load_bundle
from vaedeploy.deploy.triton_repo import ensembles_of, write_repository
from vaedeploy.runtime.operations import operations_of
from vaedeploy.serve.batcher import BatchPolicy

# one bundle of each latent type and Python step: reparameterize and prior_noise (vae), stage1_noise (twostage),
# nearest (vqvae), image (a Bernoulli decoder)
KINDS = ["vae", "twostage", "vqvae", "vae_conv_bernoulli"]
SPATIAL = "klconv"  # any image size (H, W multiples of 4 from 8 to 32), a latent scaling: scale steps, -1 dims
SIZES = [(12, 20), (32, 8)]
ONNXRUNTIME = "ort"  # the default variant of the vae bundle is served as ort.*
POLICY = BatchPolicy(max_batch_size=8).model_config()
MISSING_BACKEND = "unable to find backend library for backend 'onnxruntime'"
CLIENTS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def triton(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("real-triton")
    for kind in (*KINDS, SPATIAL):
        write_repository(exported(kind)[1], root / "python" / kind, kind, POLICY, graphs="python")
    write_repository(exported("vae")[1], root / "default", ONNXRUNTIME, POLICY)
    try:
        server = Triton([root / "python" / kind for kind in (*KINDS, SPATIAL)] + [root / "default"],
                        root / "tritonserver.log")
    except Unavailable as reason:
        unavailable(f"no real Triton here: {reason}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served(serve, exported):
    """vaedeploy serve over the same bundles, with the same batching, on HTTP and gRPC: (server, its gRPC address)."""
    kinds, grpc_port = (*KINDS, SPATIAL), free_port()
    server = serve([exported(kind)[1] for kind in kinds], *(a for kind in kinds for a in ("--name", kind)),
                   "--max-batch-size", "8",
                   "--grpc-port", grpc_port)
    return server, f"127.0.0.1:{grpc_port}"


def test_the_python_repository_loads_with_no_unavailable_model(triton):
    models = {name: m for name, m in triton.index().items() if not name.startswith(f"{ONNXRUNTIME}.")}
    assert {m["state"] for m in models.values()} == {"READY"}, {n: m.get("reason") for n, m in models.items()}
    assert {name.split(".")[0] for name in models} == {*KINDS, SPATIAL}


def test_the_default_repository_fails_only_for_the_missing_onnxruntime_backend(triton):
    """Its graph models need the onnxruntime backend this build lacks (a GPU server has it); its ensembles are not
    loaded because they need those models, each for that reason alone; its Python steps are READY."""
    models = {name: m for name, m in triton.index().items() if name.startswith(f"{ONNXRUNTIME}.")}
    graphs = {f"{ONNXRUNTIME}.encoder", f"{ONNXRUNTIME}.decoder"}
    for name in graphs:
        assert models[name]["state"] == "UNAVAILABLE" and MISSING_BACKEND in models[name]["reason"], models[name]
    ensembles = {f"{ONNXRUNTIME}.{op}" for op in ("encode", "encode_params", "decode", "sample")}
    assert all("state" not in models[name] for name in ensembles)  # never loaded: Triton refused them first
    log = triton.log.read_text()
    for name in ensembles:
        [refusal] = re.findall(rf"ensemble '{re.escape(name)}' depends on '([^']+)' which has no loaded version\. "
                               r"Model '\1' loading failed with error: version 1 is at UNAVAILABLE state: "
                               rf"Invalid argument: {re.escape(MISSING_BACKEND)}", log)
        assert refusal in graphs
    others = set(models) - graphs - ensembles
    assert others == {f"{ONNXRUNTIME}.reparameterize", f"{ONNXRUNTIME}.prior_noise"}
    assert {models[name]["state"] for name in others} == {"READY"}


def request_of(op, size=None, downsample=1) -> tuple[dict, dict]:
    """One request of each operation: 3 rows of images or latents (4 samples), every parameter it reads; for a bundle
    of any image size, at ``size`` (H, W): the table's letters H, W, h, w filled in, a sample's height and width."""
    rng = np.random.default_rng(0)
    letters = {} if size is None else {"H": size[0], "W": size[1], "h": size[0] // downsample,
                                       "w": size[1] // downsample}
    if "n" in op.parameters:  # a sample: its rows as the tensor n, the request shape Triton accepts
        inputs = {"n": np.array([4])}
    else:
        inputs = {t.name: (rng.random if t.name == "x" else rng.standard_normal)(
                  (3, *(letters.get(d, d) for d in t.dims))).astype(np.float32) for t in op.inputs}
    given = {"seed": 9, "offset": 2, "temperature": 0.7, **dict(zip(("height", "width"), size or ()))}
    return inputs, {name: given[name] for name in op.parameters if name in given}


def infer(client_module, url: str, model: str, inputs: dict, parameters: dict, outputs) -> list[np.ndarray]:
    """The same tritonclient code for every server and protocol: only the module and the address change."""
    client = client_module.InferenceServerClient(url)
    tensors = []
    for name, array in inputs.items():
        tensor = client_module.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors, parameters=parameters)
    return [result.as_numpy(t.name) for t in outputs]


@pytest.mark.parametrize("kind", KINDS)
def test_every_ensemble_answers_what_vaedeploy_serve_answers(triton, served, exported, kind):
    """encode with seed and offset, encode_params, decode, sample with n, seed, temperature and offset: Triton over
    HTTP and gRPC, and vaedeploy serve over gRPC, against vaedeploy serve over HTTP, the same request and seed."""
    assert_answers_as_served(triton, served, exported, kind)


@pytest.mark.parametrize("size", SIZES)
def test_a_bundle_of_any_size_answers_at_each_size_what_vaedeploy_serve_answers(triton, served, exported, size):
    """klconv at two sizes: images and latents of that size, a sample drawn at that height and width."""
    assert_answers_as_served(triton, served, exported, SPATIAL, size)


def assert_answers_as_served(triton, served, exported, kind, size=None):
    server, served_grpc = served
    others = {("triton", "http"): triton.http, ("triton", "grpc"): triton.grpc, ("vaedeploy", "grpc"): served_grpc}
    bundle = load_bundle(exported(kind)[1])
    table = operations_of(bundle)
    names = ensembles_of(table, bundle.latent["type"])
    assert {"encode", "encode_params", "decode"} <= set(names)
    for name in names:
        op = table[name]
        inputs, parameters = request_of(op, size, bundle.downsample)
        want = infer(httpclient, server.url, f"{kind}.{name}", inputs, parameters, op.outputs)
        if size is not None:  # the answer is of the size asked for
            assert want[0].shape[-2:] in (size, tuple(s // bundle.downsample for s in size)), (name, want[0].shape)
        for (system, protocol), url in others.items():
            got = infer(CLIENTS[protocol], url, f"{kind}.{name}", inputs, parameters, op.outputs)
            for tensor, a, b in zip(op.outputs, got, want):
                assert a.dtype == b.dtype and a.shape == b.shape, (kind, name, system, protocol, tensor.name)
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{kind}.{name} {system} {protocol}")
