"""The sampling paths against distributions known by construction: bundles written by hand whose graphs are a few
ONNX nodes, so every probability is a number in this file.

- VQ: a prior whose logits at position t are a fixed table's row for the token at t (the start token, then the code
  drawn before), so the joint law of the first two codes is p0(c0)·P(c1 | c0) with p0 and P chosen here. Chi-square
  tests of many drawn rows at several temperatures (softmax(logits / T)), argmax at T = 0, and a server batch of
  mixed temperatures and offsets against single calls row by row.
- Two-stage: a stage-2 decoder with mean(u) = 3u and log γ = log 4 and decoders that pass z through, so a sample at
  temperature T is z ~ N(0, T²·(9 + 4)) per dimension (u ~ N(0, T²), then N(mean(u), T²·γ)).
- The server's V2 models of the VQ bundle: the request parameters' bounds, and each request's own rows in a batch.
"""
import json

import numpy as np
import pytest

from vaedeploy import load
from vaedeploy.bundle import sha256_file
from vaedeploy.serve.models import operations
from vaedeploy.serve.protocol import ProtocolError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from scipy import stats  # noqa: E402

K = 4  # codes
GRID = (2, 2)
START = K  # the start token: the table's last row
P0 = np.array([0.1, 0.2, 0.3, 0.4])  # the law of the first code at T = 1
FAVOURED = 0.7  # after code c, code (c + 1) % K has this probability, the others share the rest


def _next_law() -> np.ndarray:
    """P(c1 | c0) at T = 1: rows c0, columns c1."""
    table = np.full((K, K), (1 - FAVOURED) / (K - 1))
    table[np.arange(K), (np.arange(K) + 1) % K] = FAVOURED
    return table


def _at_temperature(p: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / T) along the last axis."""
    scaled = np.log(p) / t
    e = np.exp(scaled - scaled.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _tensor(name: str, dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, ["batch", *dims])


def _save(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)


def _entry(file: str, inputs: list, outputs: list) -> dict:
    spec = lambda name, dims, dtype="float32": {"name": name, "shape": ["batch", *dims], "dtype": dtype}  # noqa: E731
    return {"fp32": {"file": file, "inputs": [spec(*i) for i in inputs], "outputs": [spec(*o) for o in outputs]}}


def _finish(root, manifest: dict):
    manifest.update(format_version=1, max_batch=64, validation={"passed": True}, likelihood={
        "kind": "identity", "outputs": ["x"]}, files={p.name: sha256_file(p) for p in sorted(root.iterdir())})
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def vq_bundle(tmp_path_factory):
    """x [1, 2, 2] → z_e = x; z_q → x = z_q; codebook 4×1; prior: logits[:, t] = log table[tokens[:, t]]."""
    root = tmp_path_factory.mktemp("tiny_vq")
    image = (1, *GRID)
    _save(root / "encoder.onnx", [helper.make_node("Identity", ["x"], ["z_e"])], [_tensor("x", image)],
          [_tensor("z_e", image)])
    _save(root / "decoder.onnx", [helper.make_node("Identity", ["z_q"], ["x"])], [_tensor("z_q", image)],
          [_tensor("x", image)])
    table = np.log(np.vstack([_next_law(), P0])).astype(np.float32)  # rows 0..K-1: after a code; row K: start
    length = GRID[0] * GRID[1]
    _save(root / "prior.onnx", [helper.make_node("Gather", ["table", "tokens"], ["logits"], axis=0)],
          [_tensor("tokens", [length], TensorProto.INT64)], [_tensor("logits", [length, K])],
          [numpy_helper.from_array(table, "table")])
    np.save(root / "codebook.npy", np.arange(K, dtype=np.float32)[:, None])
    return _finish(root, {
        "kind": "tiny_vq", "input": {"shape": list(image)},
        "latent": {"type": "vq", "dim": 1, "grid": list(GRID), "num_codes": K, "codebook": "codebook",
                   "prior": {"type": "autoregressive", "length": length, "start_token": START, "graph": "prior"}},
        "arrays": {"codebook": "codebook.npy"},
        "graphs": {"encoder": _entry("encoder.onnx", [("x", image)], [("z_e", image)]),
                   "decoder": _entry("decoder.onnx", [("z_q", image)], [("x", image)]),
                   "prior": _entry("prior.onnx", [("tokens", [length], "int64")], [("logits", [length, K])])}})


@pytest.fixture(scope="module")
def vq(vq_bundle):
    runtime = load(vq_bundle, backend="onnxruntime")
    yield runtime
    runtime.close()


def _chi_square_p(counts: np.ndarray, probabilities: np.ndarray) -> float:
    return stats.chisquare(counts.ravel(), counts.sum() * probabilities.ravel()).pvalue


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_the_first_two_codes_follow_the_priors_joint_law_at_each_temperature(vq, temperature):
    n = 6000
    codes = vq.sample_codes(n, seed=11, temperature=temperature).reshape(n, -1)
    first = _at_temperature(P0, temperature)
    joint = first[:, None] * _at_temperature(_next_law(), temperature)  # p0_T(c0) · P_T(c1 | c0)
    counts = np.zeros((K, K))
    np.add.at(counts, (codes[:, 0], codes[:, 1]), 1)
    assert _chi_square_p(counts.sum(1), first) > 1e-4, f"first code {counts.sum(1)} against {n * first}"
    assert _chi_square_p(counts, joint) > 1e-4, f"(c0, c1) counts {counts.tolist()} against {(n * joint).round()}"


def test_temperature_sharpens_and_flattens_the_first_code():
    """The laws the chi-square tests use differ enough between temperatures for 6000 rows to tell them apart."""
    cold, warm = _at_temperature(P0, 0.5), _at_temperature(P0, 2.0)
    assert cold[-1] == pytest.approx(0.4**2 / (P0**2).sum()) and warm[-1] == pytest.approx(0.4**0.5 / (P0**0.5).sum())
    assert cold[-1] > P0[-1] > warm[-1]


def test_temperature_zero_takes_the_most_likely_code_at_every_position(vq):
    codes = vq.sample_codes(3, seed=5, temperature=0.0).reshape(3, -1)
    expected = [3, 0, 1, 2]  # argmax p0 = 3, then the favoured successor of each code
    assert codes.tolist() == [expected] * 3


def test_a_server_batch_of_mixed_temperatures_and_offsets_gives_each_request_its_own_call(vq):
    sample_codes = next(op for op in operations("tiny", vq) if op.name == "tiny.sample_codes")
    requests = [{"n": 5, "seed": 3, "temperature": 0.5, "offset": 0}, {"n": 7, "seed": 3, "temperature": 3.0},
                {"n": 4, "seed": 9, "temperature": 0.5, "offset": 20}, {"n": 6, "seed": 9, "temperature": 1.0,
                                                                        "offset": 100}]
    batch = sample_codes.run([sample_codes.piece({}, r) for r in requests])
    for request, (codes,) in zip(requests, batch):
        alone = vq.sample_codes(request["n"], seed=request["seed"], temperature=request["temperature"],
                                offset=request.get("offset", 0))
        np.testing.assert_array_equal(codes, alone, err_msg=f"request {request}")


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """x [1, 1, 2] → mean = x flattened, logvar = 0; z → x reshaped; stage 2: u [1] → mean = 3u·[1, 1],
    log γ = log 4."""
    root = tmp_path_factory.mktemp("tiny_two_stage")
    image = (1, 1, 2)
    _save(root / "encoder.onnx", [helper.make_node("Flatten", ["x"], ["mean"], axis=1),
                                  helper.make_node("Sub", ["mean", "mean"], ["logvar"])],
          [_tensor("x", image)], [_tensor("mean", [2]), _tensor("logvar", [2])])
    _save(root / "decoder.onnx", [helper.make_node("Reshape", ["z", "shape"], ["x"])], [_tensor("z", [2])],
          [_tensor("x", image)], [numpy_helper.from_array(np.array([-1, *image], np.int64), "shape")])
    _save(root / "stage2.onnx", [helper.make_node("MatMul", ["u", "w"], ["mean"]),
                                 helper.make_node("MatMul", ["u", "zero"], ["u0"]),
                                 helper.make_node("Add", ["u0", "log4"], ["log_gamma"])],
          [_tensor("u", [1])], [_tensor("mean", [2]), _tensor("log_gamma", [2])],
          [numpy_helper.from_array(np.full((1, 2), 3.0, np.float32), "w"),
           numpy_helper.from_array(np.zeros((1, 2), np.float32), "zero"),
           numpy_helper.from_array(np.full(2, np.log(4.0), np.float32), "log4")])
    root = _finish(root, {
        "kind": "tiny_two_stage", "input": {"shape": list(image)},
        "latent": {"type": "gaussian", "dim": 2, "prior": {"type": "two_stage", "dim": 1, "graph": "stage2"}},
        "graphs": {"encoder": _entry("encoder.onnx", [("x", image)], [("mean", [2]), ("logvar", [2])]),
                   "decoder": _entry("decoder.onnx", [("z", [2])], [("x", image)]),
                   "stage2": _entry("stage2.onnx", [("u", [1])], [("mean", [2]), ("log_gamma", [2])])}})
    runtime = load(root, backend="onnxruntime")
    yield runtime
    runtime.close()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.5])
def test_a_two_stage_sample_has_the_variance_its_temperature_gives(two_stage, temperature):
    n = 8000
    z = two_stage.sample(n, seed=2, temperature=temperature).reshape(n, 2)
    variance = temperature**2 * (3.0**2 + 4.0)  # Var(3·T·u) + T²·γ
    # the sample variance of n normals has relative standard error sqrt(2 / n), 1.6% here: 5 of them allowed
    assert z.var(0) == pytest.approx([variance] * 2, rel=5 * np.sqrt(2 / n))
    assert np.abs(z.mean(0)).max() < 5 * np.sqrt(variance / n)


def test_a_two_stage_sample_at_temperature_zero_is_the_stage2_mean_of_zero(two_stage):
    np.testing.assert_array_equal(two_stage.sample(4, seed=1, temperature=0.0).reshape(4, 2), np.zeros((4, 2)))


# ---- the server's request parameters and a batch's outputs, on the same bundle ------------------------------------

def _operation(runtime, op: str, **options):
    return next(o for o in operations("tiny", runtime, **options) if o.name == f"tiny.{op}")


def test_n_is_bounded_by_the_servers_max_sample(vq):
    sample_codes = _operation(vq, "sample_codes", max_sample=10)
    assert sample_codes.checked_parameters({"n": 10}) == {"n": 10}
    for n in (0, 11):
        with pytest.raises(ProtocolError, match="parameter n"):
            sample_codes.checked_parameters({"n": n})


def test_the_schedule_parameters_are_accepted_and_others_named(vq):
    sample_codes = _operation(vq, "sample_codes")
    assert sample_codes.checked_parameters({"priority": 1, "timeout": 1000, "seed": 4}) == {
        "priority": 1, "timeout": 1000, "seed": 4}
    with pytest.raises(ProtocolError, match=r"unknown request parameter\(s\) \['temprature'\]"):
        sample_codes.checked_parameters({"temprature": 0.5})


def test_a_requests_last_row_must_lie_before_2_63_in_the_stream(vq):
    sample_codes = _operation(vq, "sample_codes")
    assert sample_codes.piece({}, {"n": 3, "offset": 2**63 - 3}).offset == 2**63 - 3
    with pytest.raises(ProtocolError, match="parameter offset: rows"):
        sample_codes.piece({}, {"n": 4, "offset": 2**63 - 3})


def test_a_batch_of_requests_gives_each_its_own_rows(vq):
    decode_codes = _operation(vq, "decode_codes")
    codes = [np.array([[[0, 1], [2, 3]]] * rows, np.int64) + k for k, rows in enumerate([3, 2])]
    codes[1] %= K
    batch = decode_codes.run([decode_codes.piece({"codes": c}, {}) for c in codes])
    for c, (images,) in zip(codes, batch):
        np.testing.assert_array_equal(images, vq.decode(c))
