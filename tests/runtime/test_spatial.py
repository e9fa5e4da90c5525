"""Spatial latents at any image size (issue 28): a ``klconv`` bundle (c×H/4×W/4 latents, any H, W multiple of 4 in
[8, 32], a latent scaling) served on both backends like its PyTorch model at several sizes; the noise of a row
independent of the call and the size; the scaling rule; refused sizes in one sentence; sessions and buckets across
sizes; the operation table; and a format-1 manifest still loads."""
import json

import numpy as np
import pytest
import torch
from helpers import edit_manifest, images
from vaedeploy.kernels import standard_normal_numpy

from vaedeploy import load
from vaedeploy.bundle import load_bundle
from vaedeploy.runtime import InputError
from vaedeploy.runtime.operations import operations_of
from vaedeploy.train import load_run

BACKENDS = ["onnxruntime", "torch"]
SIZES = [(8, 8), (12, 20), (32, 8), (32, 32)]  # the reference size, a non-square one, both extremes


@pytest.fixture(scope="module")
def spatial(exported):
    run, bundle = exported("klconv")
    model, _ = load_run(run)
    return model.eval(), bundle


def _close(backend: str, actual, expected) -> None:
    """Equal on onnxruntime (one graph, one thread order); within float error on torch (convolution kernels differ
    by batch size)."""
    if backend == "onnxruntime":
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_the_bundle_declares_its_sizes_latent_and_scaling(spatial):
    _, bundle = spatial
    manifest = load_bundle(bundle).manifest
    assert manifest["format_version"] == 2
    assert manifest["input"]["shape"] == [1, 8, 8]
    assert manifest["input"]["size"] == {"min": [8, 8], "max": [32, 32], "multiple": 4}
    assert manifest["latent"] == {"type": "gaussian", "shape": [2, 2, 2], "downsample": 4,
                                  "scaling": {"scaling_factor": 0.5, "shift_factor": 0.25}}
    encoder = manifest["graphs"]["encoder"]["fp32"]
    assert encoder["inputs"][0]["shape"] == ["batch", 1, "height", "width"]
    assert encoder["outputs"][0]["shape"] == ["batch", 2, "latent_height", "latent_width"]
    assert manifest["graphs"]["decoder"]["fp32"]["outputs"][0]["shape"] == ["batch", 1, "height", "width"]
    # validated at the reference size, both corners of the range and the two non-square extremes
    assert manifest["validation"]["sizes"] == [[8, 8], [32, 32], [8, 32], [32, 8]]
    report = json.loads((bundle / "validation.json").read_text())
    assert {c["inputs"] for c in report["checks"]} >= {"size 8×32", "size 32×8"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", SIZES)
def test_every_op_at_every_size_is_the_models(spatial, backend, size):
    model, bundle = spatial
    x = images(3, seed=sum(size), shape=(1, *size))
    with load(bundle, backend=backend) as rt, torch.no_grad():
        xt = torch.from_numpy(x)
        mean, logvar = model.encoder(xt)
        np.testing.assert_allclose(rt.reconstruct(x), model.reconstruct(xt).numpy(), atol=2e-5)
        got_mean, got_logvar = rt.encode_params(x)
        assert got_mean.shape == (3, 2, size[0] // 4, size[1] // 4)
        np.testing.assert_allclose(got_mean, mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(got_logvar, logvar.numpy(), atol=1e-5)
        assert rt.sample(2, seed=1, size=size).shape == (2, 1, *size)
        assert rt.latent_shape_at(size) == (2, size[0] // 4, size[1] // 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_scales_decode_unscales_encode_params_and_sample_are_the_graphs(spatial, backend):
    """diffusers' rule: encode gives (z - shift)·scale, decode takes that space, encode_params the graph's own
    mean and log-variance, and sample draws N(0, I) in the graph's space."""
    model, bundle = spatial
    scale, shift = np.float32(0.5), np.float32(0.25)
    x = images(4, seed=2, shape=(1, 12, 16))
    with load(bundle, backend=backend) as rt, torch.no_grad():
        assert rt.scaling == (0.5, 0.25)
        mean, logvar = (t.numpy() for t in model.encoder(torch.from_numpy(x)))
        z_graph = mean + np.exp(0.5 * logvar) * standard_normal_numpy(mean.shape, 11)
        z = rt.encode(x, seed=11)
        np.testing.assert_allclose(z, (z_graph - shift) * scale, atol=1e-5)
        decoded = model.decoder.likelihood.mean(model.decoder(torch.from_numpy(z / scale + shift))).numpy()
        np.testing.assert_allclose(rt.decode(z), decoded, atol=2e-5)
        np.testing.assert_allclose(rt.encode_params(x)[0], mean, atol=1e-5)
        eps = 0.7 * standard_normal_numpy((3, 2, 5, 3), 4)
        sampled = model.decoder.likelihood.mean(model.decoder(torch.from_numpy(eps))).numpy()
        np.testing.assert_allclose(rt.sample(3, seed=4, temperature=0.7, size=(20, 12)), sampled, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(8, 8), (16, 24)])
def test_row_r_of_a_call_is_a_one_row_call_at_offset_r_at_any_size(spatial, backend, size):
    _, bundle = spatial
    x = images(5, seed=3, shape=(1, *size))
    with load(bundle, backend=backend) as rt:
        samples, codes = rt.sample(5, seed=7, size=size), rt.encode(x, seed=7)
        for r in range(5):
            _close(backend, samples[r], rt.sample(1, seed=7, offset=r, size=size)[0])
            _close(backend, codes[r], rt.encode(x[r:r + 1], seed=7, offset=r)[0])


def test_the_noise_of_a_row_is_one_stream_of_its_latent_elements_in_c_order(spatial):
    _, bundle = spatial
    with load(bundle, backend="onnxruntime") as rt:
        x = images(2, seed=4, shape=(1, 16, 8))
        mean, logvar = rt.encode_params(x)
        eps = standard_normal_numpy((2, 2 * 4 * 2), 9, 3 * 2 * 4 * 2).reshape(mean.shape)  # rows 3 and 4
        np.testing.assert_allclose(rt.encode(x, seed=9, offset=3), (mean + np.exp(logvar / 2) * eps - 0.25) * 0.5,
                                   atol=1e-6)


REFUSED_SIZES = [  # (size, what the sentence says)
    ((13, 20), r"size: expected H and W multiples of 4 from 8×8 to 32×32, got \(13, 20\)"),
    ((4, 8), r"size: expected H and W multiples of 4 from 8×8 to 32×32, got \(4, 8\)"),
    ((8, 36), r"size: expected H and W multiples of 4 .*, got \(8, 36\)"),
    ((8, 14), r"size: expected H and W multiples of 4 .*, got \(8, 14\)"),  # W alone not a multiple
    ((8,), r"size: expected \(H, W\), two integers, with H and W multiples of 4"),
    ((8.0, 8.0), r"size: expected \(H, W\), two integers"),
    ((True, 8), r"size: expected \(H, W\), two integers"),
    ("8x8", r"size: expected \(H, W\), two integers"),
]


@pytest.mark.parametrize("size, message", REFUSED_SIZES, ids=[str(s) for s, _ in REFUSED_SIZES])
def test_a_sample_size_the_bundle_does_not_take_is_refused_in_one_sentence(spatial, size, message):
    with load(spatial[1], backend="onnxruntime") as rt, pytest.raises(InputError, match=message):
        rt.sample(1, size=size)


REFUSED_ARRAYS = [  # (op, per-row shape, what the sentence says)
    ("encode", (1, 10, 12), r"x: expected shape N×1×H×W with H and W multiples of 4 from 8×8 to 32×32, got 1×1×10×12"),
    ("encode", (1, 36, 8), r"x: expected shape N×1×H×W with .*, got 1×1×36×8"),
    ("reconstruct", (3, 8, 8), r"x: expected shape N×1×H×W .*, got 1×3×8×8"),
    ("encode_params", (8, 8), r"x: expected shape N×1×H×W .*, got 1×8×8"),
    ("decode", (2, 3, 50), r"z: expected shape N×2×h×w with h = H/4, w = W/4 and H and W multiples of 4 from 8×8 to "
                           r"32×32, got 1×2×3×50"),
    ("decode", (2, 1, 2), r"z: expected shape N×2×h×w .*, got 1×2×1×2"),
    ("decode", (3, 2, 2), r"z: expected shape N×2×h×w .*, got 1×3×2×2"),  # a size it takes, the wrong channels
    ("decode", (8,), r"z: expected shape N×2×h×w .*, got 1×8"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op, shape, message", REFUSED_ARRAYS, ids=[f"{o}{s}" for o, s, _ in REFUSED_ARRAYS])
def test_an_array_of_a_size_the_bundle_does_not_take_is_refused_in_one_sentence(spatial, backend, op, shape,
                                                                                 message):
    with load(spatial[1], backend=backend) as rt, pytest.raises(InputError, match=message):
        getattr(rt, op)(np.zeros((1, *shape), np.float32))


def test_a_bundle_of_one_size_takes_that_size_only(exported):
    with load(exported("vae")[1], backend="onnxruntime") as rt:
        assert rt.sizes is None and rt.sample(2, seed=1, size=(8, 8)).shape == (2, 1, 8, 8)
        with pytest.raises(InputError, match=r"size: expected 8×8, the one image size of this bundle \(it declares "
                                             r"no input.size\), got \(16, 16\)"):
            rt.sample(1, size=(16, 16))
        with pytest.raises(InputError, match=r"x: expected shape N×1×8×8, got 2×1×16×16"):
            rt.encode(images(2, shape=(1, 16, 16)))


def test_calls_of_different_sizes_run_in_the_same_sessions(spatial):
    with load(spatial[1], backend="onnxruntime") as rt:
        sessions = {role: runner.session for role, runner in rt.runners.items()}
        for size in SIZES:
            rt.reconstruct(images(2, shape=(1, *size)))
            rt.sample(2, size=size)
        assert {role: runner.session for role, runner in rt.runners.items()} == sessions


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_buckets_key_on_batch_height_and_width(spatial, backend):
    _, bundle = spatial
    direct, rt = load(bundle, backend=backend), load(bundle, backend=backend, buckets=(1, 2, 4))
    for size in [(8, 8), (16, 12), (8, 8)]:
        x = images(3, seed=size[1], shape=(1, *size))
        _close(backend, rt.reconstruct(x), direct.reconstruct(x))
        _close(backend, rt.sample(3, seed=2, size=size), direct.sample(3, seed=2, size=size))
        z = direct.encode(x, seed=1)
        _close(backend, rt.decode(z), direct.decode(z))
    recorded = rt.describe()["buckets"]["recorded"]
    assert set(recorded["reconstruct"]) == set(recorded["sample"]) == {4}
    assert recorded["reconstruct"][4]["shapes"] == [[[1, 8, 8]], [[1, 16, 12]]]  # one slot per size, made once
    assert recorded["reconstruct"][4]["runs"] == 3
    assert recorded["sample"][4]["shapes"] == [[[2, 2, 2]], [[2, 4, 3]]]
    assert recorded["decode"][4]["shapes"] == [[[2, 2, 2]], [[2, 4, 3]]]
    assert len(rt._buckets.slots) == 2 * 3
    rt.warmup()  # records the reference size's slots, which exist: nothing new at that size
    assert recorded["reconstruct"][4]["shapes"] == rt.describe()["buckets"]["recorded"]["reconstruct"][4]["shapes"]


def test_the_operation_table_names_the_spatial_axes_and_the_sample_size(spatial):
    with load(spatial[1], backend="onnxruntime") as rt:
        ops = operations_of(rt)
        assert ops["encode"].inputs[0].shape == ("N", 1, "H", "W")
        assert ops["encode"].outputs[0].shape == ("N", 2, "h", "w")
        assert ops["decode"].inputs[0].v2_shape == [-1, 2, -1, -1]
        assert ops["sample"].parameters == ("n", "seed", "temperature", "offset", "height", "width")
        height = ops["sample"].parameter("height")
        assert (height.low, height.high, height.default, height.multiple) == (8, 32, 8, 4)
        assert ops["sample"].as_dict()["parameters"][-1] == {"name": "width", "type": "integer", "low": 8, "high": 32,
                                                             "default": 8, "multiple": 4}
        (images_,) = ops["sample"].run(rt, (), 2, 5, 0, 1.0, size=(12, 16))
        np.testing.assert_array_equal(images_, rt.sample(2, seed=5, size=(12, 16)))


def test_a_fixed_size_bundles_sample_has_no_size_parameters(exported):
    ops = operations_of(load_bundle(exported("vae")[1]))
    assert ops["sample"].parameters == ("n", "seed", "temperature", "offset") and ops["sample"].bounds == ()
    assert ops["decode"].inputs[0].v2_shape == [-1, 4]


def test_a_format_1_bundle_loads_and_runs_as_before(exported, tmp_path):
    """A bundle written before format 2: ``latent.dim`` and no size, scaling or downsample."""
    import shutil

    bundle = tmp_path / "v1"
    shutil.copytree(exported("vae")[1], bundle)
    edit_manifest(bundle, lambda m: m.update(format_version=1, latent={"type": "gaussian", "dim": 4}))
    assert json.loads((bundle / "manifest.json").read_text())["latent"] == {"type": "gaussian", "dim": 4}
    with load(bundle, backend="onnxruntime") as old, load(exported("vae")[1], backend="onnxruntime") as new:
        assert old.latent_shape == (4,) and old.bundle.manifest["latent"] == {"type": "gaussian", "shape": [4]}
        np.testing.assert_array_equal(old.sample(3, seed=2), new.sample(3, seed=2))
        x = images(3)
        np.testing.assert_array_equal(old.encode(x, seed=1), new.encode(x, seed=1))


def test_a_format_1_vq_bundle_reads_its_grid_as_the_latent_shape(exported, tmp_path):
    import shutil

    bundle = tmp_path / "v1"
    shutil.copytree(exported("vqvae")[1], bundle)

    def to_format_1(m):
        d, h, w = m["latent"].pop("shape")
        m["latent"].update(dim=d, grid=[h, w])
        m["format_version"] = 1

    edit_manifest(bundle, to_format_1)
    with load(bundle, backend="onnxruntime") as old, load(exported("vqvae")[1], backend="onnxruntime") as new:
        assert old.latent_shape == new.latent_shape and old.grid == new.grid
        np.testing.assert_array_equal(old.encode(images(2))[0], new.encode(images(2))[0])
