"""Export validation's verdicts, one rule at a time, on ONNX graphs written here with ``onnx.helper``.

The graphs are identities (or a square root), so ONNX Runtime's output is its input exactly, and the "PyTorch
reference" is the input moved by a chosen offset: each metric's error is then known in advance, and a case can
fail exactly one of max-abs and relative L2. The VQ index agreement is checked on constructed codes whose number of
disagreements is chosen, at and next to its thresholds.
"""
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from vaedeploy.export.validate import (
    PSNR_CAP,
    TOLERANCES,
    VQ_AGREEMENT,
    batch_sizes,
    errors,
    summary,
    validate_graphs,
    vq_index_agreement,
)

from vaedeploy.models.spec import ExportSpec, GraphSpec
from vaedeploy.models.spec import validation_rows as rows

MAX_BATCH = 8


def write_graph(path, op: str = "Identity", outputs=("y",), rank: int = 2):
    """A graph x → op(x) for each output name, with a dynamic batch axis, that ONNX Runtime runs exactly."""
    shape = ["N", *(f"d{i}" for i in range(1, rank))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in outputs]
    graph = helper.make_graph([helper.make_node(op, ["x"], [name]) for name in outputs], "constructed", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path.name


class Offset(nn.Module):
    """The reference: x plus one offset per output (a tensor-valued offset broadcasts over the batch)."""

    def __init__(self, *offsets):
        super().__init__()
        self.offsets = offsets

    def forward(self, x):
        outs = tuple(x + float(o) for o in self.offsets)
        return outs[0] if len(outs) == 1 else outs


def validate(tmp_path, x: np.ndarray, reference: nn.Module, outputs=("y",), precision="fp32", op="Identity"):
    case = GraphSpec("decoder", reference, ["x"], {"data": [x]}, list(outputs))
    files = {"decoder": {precision: write_graph(tmp_path / "graph.onnx", op, outputs)}}
    return validate_graphs([case], files, tmp_path, MAX_BATCH)


def _uniform(low, high, rows_=MAX_BATCH, width=16):
    return np.random.default_rng(0).uniform(low, high, (rows_, width)).astype(np.float32)


def test_errors_are_max_abs_relative_l2_and_psnr_of_the_difference():
    expected = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    actual = np.array([[3.0, 4.5], [0.0, -0.5]], np.float32)
    err = errors(actual, expected)
    assert err["max_abs"] == 0.5
    assert err["rel_l2"] == pytest.approx(math.sqrt(0.5) / 5.0, rel=1e-12)
    # over the expected output's range, 4: mean squared error 0.5 / 4
    assert err["psnr_db"] == pytest.approx(10 * math.log10(4.0 ** 2 / (0.5 / 4)), rel=1e-12)
    assert errors(np.zeros(0), np.zeros(0)) == {"max_abs": 0.0, "rel_l2": 0.0, "psnr_db": PSNR_CAP}


def test_batch_sizes_and_rows_cycle_through_the_validation_inputs():
    assert batch_sizes(64) == [1, 2, 7, 64] and batch_sizes(10) == [1, 2, 7, 10] and batch_sizes(1) == [1]
    assert batch_sizes(100) == [1, 2, 7, 64, 100]
    np.testing.assert_array_equal(rows(np.arange(3.0)[:, None], 7)[:, 0], [0, 1, 2, 0, 1, 2, 0])
    assert rows(np.arange(3.0)[:, None], 2).dtype == np.float32


def test_a_graph_within_both_tolerances_passes_and_reports_its_errors(tmp_path):
    x = _uniform(1000.0, 1001.0)
    report = validate(tmp_path, x, Offset(0.0))
    assert report["passed"] and report["failures"] == [] and report["batch_sizes"] == [1, 2, 7, MAX_BATCH]
    assert [c["batch"] for c in report["checks"]] == [1, 2, 7, MAX_BATCH]
    assert report["worst"] == {"decoder.fp32.y": {"max_abs": 0.0, "rel_l2": 0.0, "psnr_db": PSNR_CAP}}
    assert summary(report)["passed"] and "checks" not in summary(report)


def test_max_abs_alone_beyond_its_tolerance_fails(tmp_path):
    # values near 1000 moved by 3e-4 (five float32 steps of 6.1e-5): max-abs 3e-4 > 1e-4, rel-L2 3e-7 < 1e-5
    x = _uniform(1000.0, 1001.0)
    report = validate(tmp_path, x, Offset(3e-4))
    worst = report["worst"]["decoder.fp32.y"]
    assert worst["max_abs"] > TOLERANCES["fp32"]["max_abs"] and worst["rel_l2"] < TOLERANCES["fp32"]["rel_l2"]
    assert not report["passed"]
    assert all(not c["passed"] and not c["outputs"]["y"]["passed"] for c in report["checks"])
    assert len(report["failures"]) == 4 and "y max_abs=0.000305" in report["failures"][-1]


def test_relative_l2_alone_beyond_its_tolerance_fails(tmp_path):
    # values near 1.5e-3 moved by 5e-5: max-abs 5e-5 < 1e-4, rel-L2 about 3e-2 > 1e-5
    x = _uniform(1e-3, 2e-3)
    report = validate(tmp_path, x, Offset(5e-5))
    worst = report["worst"]["decoder.fp32.y"]
    assert worst["max_abs"] < TOLERANCES["fp32"]["max_abs"] and worst["rel_l2"] > TOLERANCES["fp32"]["rel_l2"]
    assert not report["passed"] and all(not c["passed"] for c in report["checks"])


def test_the_measured_errors_are_those_of_each_batch(tmp_path):
    x = _uniform(1e-3, 2e-3)
    report = validate(tmp_path, x, Offset(5e-5))
    for check in report["checks"]:
        b = check["batch"]
        expected = errors(x[:b], (torch.from_numpy(x[:b]) + 5e-5).numpy())
        assert check["outputs"]["y"]["max_abs"] == expected["max_abs"]
        assert check["outputs"]["y"]["rel_l2"] == expected["rel_l2"]
    assert report["worst"]["decoder.fp32.y"]["rel_l2"] == max(c["outputs"]["y"]["rel_l2"] for c in report["checks"])


def test_half_precision_graphs_are_judged_by_their_own_tolerances(tmp_path):
    x = _uniform(1000.0, 1001.0)
    assert validate(tmp_path, x, Offset(3e-2), precision="fp16")["passed"]  # within 5e-2 and 1e-2
    assert not validate(tmp_path, x, Offset(3e-2), precision="fp32")["passed"]
    assert not validate(tmp_path, x, Offset(6e-2), precision="fp16")["passed"]


def test_one_failing_output_fails_its_check_and_the_other_output_still_passes(tmp_path):
    x = _uniform(1000.0, 1001.0)
    report = validate(tmp_path, x, Offset(0.0, 3e-4), outputs=("mean", "logvar"))
    assert not report["passed"]
    for check in report["checks"]:
        assert check["outputs"]["mean"]["passed"] and not check["outputs"]["logvar"]["passed"] and not check["passed"]
    assert "logvar max_abs" in report["failures"][0] and "mean max_abs" not in report["failures"][0]


class ClampedSqrt(nn.Module):
    def forward(self, x):
        return torch.sqrt(x.clamp(min=0))


def test_a_nan_where_pytorch_is_finite_fails(tmp_path):
    x = _uniform(0.0, 1.0)
    x[MAX_BATCH - 1, 3] = -1.0  # only the largest batch sees it: ONNX Runtime's sqrt gives NaN, the reference 0
    report = validate(tmp_path, x, ClampedSqrt(), op="Sqrt")
    verdicts = {c["batch"]: c["passed"] for c in report["checks"]}
    assert verdicts == {1: True, 2: True, 7: True, MAX_BATCH: False}
    assert not report["passed"] and math.isnan(report["worst"]["decoder.fp32.y"]["max_abs"])


class DropsAColumn(nn.Module):
    def forward(self, x):
        return x[:, :-1]


def test_a_shape_that_differs_from_pytorchs_fails_with_the_shapes_named(tmp_path):
    report = validate(tmp_path, _uniform(0.0, 1.0), DropsAColumn())
    output = report["checks"][0]["outputs"]["y"]
    assert not report["passed"] and not output["passed"] and output["max_abs"] == math.inf
    assert output["note"] == "shape [1, 16], PyTorch gives [1, 15]"


# ---- VQ index agreement -----------------------------------------------------------------------------------------

CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
VQ_ROWS = 250  # 250 × 2 × 2 = 1000 latent vectors at the largest batch


def _agreement(tmp_path, disagreements: int, precision: str) -> dict:
    """ONNX Runtime's z_e (an identity) puts every vector at code 0; the reference moves ``disagreements`` vectors
    of rows past 64 (so only the largest batch, 250, sees them) to code 1."""
    data = np.zeros((VQ_ROWS, 2, 2, 2), np.float32)
    data[:, 0] = 0.1
    shift = np.zeros_like(data)
    for i in range(disagreements):
        shift[100 + i // 4, 0, (i // 2) % 2, i % 2] = 0.8
    file = write_graph(tmp_path / "encoder.onnx", rank=4)

    def reference(x):
        return x + torch.from_numpy(shift[: len(x)])

    spec = ExportSpec({"type": "vq", "codebook": "codebook"}, {}, [GraphSpec("encoder", reference, ["x"],
                      {"data": [data]}, ["z_e"])], arrays={"codebook": CODEBOOK})
    return vq_index_agreement(spec, {"encoder": {precision: file}}, tmp_path, VQ_ROWS)


# the documented budget (export/validate.py): one flip in a thousand vectors in fp32, ten in fp16
@pytest.mark.parametrize("precision, allowed, threshold", [("fp32", 1, "0.999"), ("fp16", 10, "0.99")])
def test_vq_index_agreement_passes_at_its_threshold_and_fails_one_vector_below(tmp_path, precision, allowed,
                                                                                threshold):
    at = _agreement(tmp_path, allowed, precision)
    assert at["passed"] and at["failures"] == []
    largest = at["by_precision_and_batch"][f"{precision}@{VQ_ROWS}"]
    assert largest == {"rate": 1 - allowed / 1000, "vectors": 1000, "disagreements": allowed}
    assert at["by_precision_and_batch"][f"{precision}@7"] == {"rate": 1.0, "vectors": 28, "disagreements": 0}
    below = _agreement(tmp_path, allowed + 1, precision)
    assert not below["passed"] and below["worst"] == 1 - (allowed + 1) / 1000
    assert below["failures"] == [f"encoder {precision} on data at batch {VQ_ROWS}: VQ index agreement "
                                 f"{1 - (allowed + 1) / 1000:.4f} below {threshold}"]
    assert VQ_AGREEMENT[precision] == float(threshold)
