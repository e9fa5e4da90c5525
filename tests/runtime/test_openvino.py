"""The OpenVINO backend keeps the runtime's contract for every kind: each op of the bundle's operation table gives
what ONNX Runtime gives on the same inputs (the same graphs, another compiler), seeds and splitting included."""
import numpy as np
import pytest
from helpers import BUNDLE_MAX_BATCH, BUNDLE_RUNS, images

from vaedeploy import load
from vaedeploy.bundle import load_bundle
from vaedeploy.errors import ConfigError
from vaedeploy.runtime.backends import resolve
from vaedeploy.runtime.operations import operations_of

pytest.importorskip("openvino", reason="the openvino backend needs `pip install 'vaedeploy[openvino]'` (CI installs "
                                       "it with the test extra)")

ROWS = (1, 5, BUNDLE_MAX_BATCH + 3)  # one row, a few, and a call split at the bundles' max batch


def inputs_of(op, rt, rows: int) -> list:
    """Inputs for ``op``: images, N(0, I) latents, codes and z_q as a VQ bundle's encoder makes them."""
    made = []
    for tensor in op.inputs:
        if tensor.name == "x":
            made.append(images(rows, seed=rows))
        elif tensor.name == "codes":
            made.append(np.random.default_rng(rows).integers(0, tensor.high + 1, (rows, *tensor.dims)))
        elif tensor.name == "z_q":
            made.append(rt.encode(images(rows, seed=rows))[1])
        else:
            # latents at the reference size: a spatial latent's dims are symbols ("h", "w")
            made.append(np.random.default_rng(rows).standard_normal((rows, *rt.latent_shape), dtype=np.float32))
    return made


@pytest.mark.parametrize("name", sorted(BUNDLE_RUNS))
def test_every_op_of_every_kind_equals_onnxruntime(exported, name):
    bundle = exported(name)[1]
    with load(bundle, backend="onnxruntime") as reference, load(bundle, backend="openvino") as rt:
        assert rt.backend == "openvino" and rt.backend_reason == "asked for"
        for op in operations_of(rt).values():
            for rows in ROWS:
                given = inputs_of(op, reference, rows)
                expected = op.run(reference, given, rows, 7, 3, 0.8)
                got = op.run(rt, given, rows, 7, 3, 0.8)
                for e, g in zip(expected, got):
                    assert isinstance(g, np.ndarray) and g.shape == e.shape and g.dtype == e.dtype, (op.name, rows)
                    if g.dtype.kind == "f":
                        np.testing.assert_allclose(g, e, atol=2e-4, rtol=1e-4, err_msg=f"{name} {op.name} {rows}")
                    else:  # codes: a near-tie between two codebook rows may flip within the graphs' float error
                        assert np.mean(g == e) >= 0.99, (name, op.name, rows)


def test_the_precision_hint_and_the_properties_reach_every_compiled_graph(exported):
    bundle = exported("vae")[1]
    with load(bundle, backend="openvino", openvino_config={"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": "1"}) as rt:
        rt.decode(np.zeros((2, rt.latent_dim), np.float32))
        for runner in rt.runners.values():
            assert int(runner.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
            assert runner.executes() == "f32"


def test_fp16_graphs_run_under_the_f16_hint_close_to_fp32(exported):
    bundle = exported("vae")[1]
    x = images(9)
    with load(bundle, backend="openvino", precision="fp16") as half, load(bundle, backend="openvino") as full:
        assert half.runners["decoder"].config["INFERENCE_PRECISION_HINT"] == "f16"
        np.testing.assert_allclose(half.reconstruct(x), full.reconstruct(x), atol=5e-2)


@pytest.mark.parametrize("config, expected", [
    ({"NO_SUCH_PROPERTY": "1"}, r"openvino_config: expected OpenVINO CPU properties .* got \['NO_SUCH_PROPERTY'\]"),
    ({1: "2"}, "openvino_config: expected a dict of OpenVINO CPU properties"),
])
def test_a_bad_property_is_refused_in_one_sentence(exported, config, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        load(exported("vae")[1], backend="openvino", openvino_config=config)
    assert "\n" not in str(err.value)


def test_openvino_runs_on_the_cpu_only(exported):
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve("openvino", "cuda", load_bundle(exported("vae")[1]))
