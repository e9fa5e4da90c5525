"""What ``--force`` may replace (``export.target.check_target``), on folders laid out here: a bundle whose manifest
cannot be read is replaced with ``force`` only when vaedeploy can tell it wrote every entry from the entry itself
(the manifest, ONNX graphs whose metadata names vaedeploy); a file, graph or folder of the user's beside them is
refused with a sentence naming it."""
import onnx
import pytest
from onnx import TensorProto, helper
from vaedeploy.export.target import check_target

from vaedeploy.bundle import BundleError


def _graph(path, metadata: dict[str, str]) -> None:
    """A one-node ONNX graph carrying ``metadata`` (export writes ``vaedeploy_version`` into every graph's)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, metadata)
    onnx.save(model, path)


def _damaged(tmp_path):
    """A bundle folder whose manifest.json is not JSON, with two graphs export wrote."""
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("{ cut off")
    for name in ("encoder.onnx", "decoder.onnx"):
        _graph(out / name, {"vaedeploy_version": "0.1.0", "role": name[:-5]})
    return out


def test_a_damaged_bundle_of_vaedeploys_graphs_is_replaced_with_force_only(tmp_path):
    out = _damaged(tmp_path)
    with pytest.raises(BundleError, match="pass --force to replace it anyway"):
        check_target(out)
    check_target(out, force=True)


@pytest.mark.parametrize("name, make", [
    ("mine.onnx", lambda p: _graph(p, {})),
    ("theirs.onnx", lambda p: _graph(p, {"author": "someone", "producer": "another exporter"})),
    ("notes.json", lambda p: p.write_text("{}")),
    ("photos", lambda p: (p.mkdir(), (p / "holiday.jpg").write_bytes(b"one of a kind"))),
])
def test_force_refuses_a_damaged_bundle_holding_something_of_the_users(tmp_path, name, make):
    out = _damaged(tmp_path)
    make(out / name)
    with pytest.raises(BundleError, match=f"it cannot for .*{name}.*, which would be lost"):
        check_target(out, force=True)
