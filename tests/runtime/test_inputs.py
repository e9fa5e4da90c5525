"""What numpy and torch users pass is accepted, everything else is refused with one sentence, and no call returns NaN.

Each test is one case a hostile probe found (issue 25): valid inputs that were refused (a pickled float32 array, a
memmap, numpy scalars), integers past 2**63, tensors without data, broken graph files behind ``verify=False``,
finite inputs far outside the declared range, and the VQ prior at a denormal temperature.
"""
import itertools
import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

from vaedeploy import load
from vaedeploy.bundle import BundleError, load_bundle
from vaedeploy.runtime import InputError
from vaedeploy.runtime.backends.onnxruntime import OnnxRuntimeRunner
from vaedeploy.runtime.base import MAX_TEMPERATURE
from vaedeploy.runtime.latents import _categorical


class Subclass(np.ndarray):
    """An ndarray subclass of a user's own."""


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def vae(exported):
    return load(exported("vae")[1])


@pytest.fixture(scope="module")
def vqvae(exported):
    return load(exported("vqvae")[1])


# ---- 1. what numpy users pass is accepted ---------------------------------------------------------------------


def test_a_pickled_float32_array_is_accepted(vae):
    x = images(3)
    unpickled = pickle.loads(pickle.dumps(x))  # what multiprocessing, joblib and DataLoader workers hand over
    assert unpickled.dtype == np.float32 and unpickled.dtype is not np.dtype(np.float32)
    np.testing.assert_array_equal(vae.encode(unpickled, seed=1), vae.encode(x, seed=1))
    np.testing.assert_array_equal(vae.decode(pickle.loads(pickle.dumps(vae.encode(x, seed=1)))),
                                  vae.decode(vae.encode(x, seed=1)))


def test_a_memmap_and_other_ndarray_subclasses_are_accepted(vae, tmp_path):
    x = images(3)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert type(mapped) is np.memmap
    np.testing.assert_array_equal(vae.reconstruct(mapped), vae.reconstruct(x))
    z = vae.encode(x, seed=2)
    np.testing.assert_array_equal(vae.decode(z.view(Subclass)), vae.decode(z))


def test_float32_of_the_other_byte_order_is_accepted_and_float64_converted_as_before(vae):
    x = images(3)
    np.testing.assert_array_equal(vae.reconstruct(x.astype(">f4")), vae.reconstruct(x))
    np.testing.assert_array_equal(vae.reconstruct(x.astype(np.float64)), vae.reconstruct(x))
    np.testing.assert_array_equal(vae.reconstruct(x.astype(np.float16)), vae.reconstruct(x.astype(np.float16)
                                                                                          .astype(np.float32)))
    for lossy in (x.astype(np.longdouble), (x * 16).astype(np.uint8)):  # not converted: that would lose values
        with pytest.raises(InputError, match="expected float32 values"):
            vae.reconstruct(lossy)


def test_a_masked_array_is_refused_rather_than_its_masked_values_used(vae):
    x = np.ma.masked_array(images(2), mask=np.zeros((2, 1, 8, 8), bool))
    with pytest.raises(InputError, match=r"x: expected a plain array, got a masked array .*x.filled"):
        vae.reconstruct(x)


def test_numpy_scalars_are_accepted_where_python_numbers_are(vae):
    expected = vae.sample(3, seed=4, temperature=0.5)
    for temperature in (np.float32(0.5), np.float64(0.5), np.float16(0.5)):
        np.testing.assert_array_equal(vae.sample(3, seed=4, temperature=temperature), expected)
    np.testing.assert_array_equal(vae.sample(np.int64(3), seed=np.uint64(4), temperature=0.5, offset=np.int32(0)),
                                  expected)
    np.testing.assert_array_equal(vae.sample(np.uint8(3), seed=np.array(4), temperature=0.5), expected)
    np.testing.assert_array_equal(vae.sample(3, seed=4, temperature=np.int64(1)), vae.sample(3, seed=4))
    for temperature in (True, np.bool_(True), "1", None, np.array([0.5])):
        with pytest.raises(InputError, match=r"temperature: expected a finite number in \[0, 1000\]"):
            vae.sample(3, seed=4, temperature=temperature)


# ---- 2. integers past 2**63 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2**63, np.uint64(2**64 - 1), 2**100])
def test_n_past_an_arrays_length_is_refused_with_the_limit_named(vae, n):
    with pytest.raises(InputError, match=r"n: expected a positive integer of at most 2\*\*63 - 1 .*, got"):
        vae.sample(n)


def test_numpy_integer_seeds_and_offsets_of_any_value(vae):
    x = images(2)
    expected = vae.encode(x, seed=2**63 - 1, offset=5)
    for seed in (np.int64(2**63 - 1), np.uint64(2**63 - 1), np.array(2**63 - 1, np.uint64)):
        np.testing.assert_array_equal(vae.encode(x, seed=seed, offset=np.uint64(5)), expected)
    for name, kwargs in [("seed", dict(seed=np.uint64(2**64 - 1))), ("seed", dict(seed=np.uint64(2**63))),
                         ("offset", dict(seed=1, offset=np.uint64(2**64 - 1))), ("seed", dict(seed=np.int64(-1))),
                         ("offset", dict(seed=1, offset=np.int8(-1)))]:
        with pytest.raises(InputError, match=rf"{name}: expected an integer in \[0, 2\*\*63\), got"):
            vae.encode(x, **kwargs)
    with pytest.raises(InputError, match=r"seed: expected integers in \[0, 2\*\*63\)"):
        vae.encode(x, seed=np.array([1, 2**64 - 1], np.uint64))


# ---- 3. tensors without data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_meta_and_sparse_tensors_are_refused_with_one_sentence(exported, backend):
    rt = load(exported("vae")[1], backend=backend)
    for tensor, what in [(torch.empty(2, 1, 8, 8, device="meta"), "a meta tensor"),
                         (torch.from_numpy(images(2)).to_sparse(), "a sparse_coo tensor")]:
        with pytest.raises(InputError, match=f"x: expected a dense tensor with data, got {what}"):
            rt.encode(tensor)
    with pytest.raises(InputError, match="z: expected a dense tensor with data, got a meta tensor"):
        rt.decode(torch.empty(2, 4, device="meta"))
    with pytest.raises(InputError, match="seed: expected a dense tensor with data, got a meta tensor"):
        rt.sample(2, seed=torch.empty(2, dtype=torch.int64, device="meta"))


def test_uint64_codes_past_2_63_are_refused_not_wrapped(vqvae):
    codes = vqvae.encode(images(2))[0]
    np.testing.assert_array_equal(vqvae.decode(codes.astype(np.uint64)), vqvae.decode(codes))
    with pytest.raises(InputError, match=r"codes: expected integers below 2\*\*63, got uint64 values up to "
                                         r"18446744073709551615"):
        vqvae.decode(np.full_like(codes, 2**64 - 1, dtype=np.uint64))


def test_meta_integer_codes_are_refused_with_one_sentence(vqvae):
    with pytest.raises(InputError, match="codes: expected a dense tensor with data, got a meta tensor"):
        vqvae.decode(torch.empty(2, 2, 2, dtype=torch.int64, device="meta"))


# ---- 4. broken graph files behind verify=False -------------------------------------------------------------------


@pytest.fixture()
def bundle_copy(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported("vae")[1], copy)
    return copy


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_graph_loaded_without_verify_is_one_bundle_error_naming_the_file(bundle_copy, damage):
    graph = bundle_copy / "decoder.onnx"
    data = graph.read_bytes()
    graph.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an onnx graph", "empty": b""}[damage])
    with pytest.raises(BundleError, match=r"decoder.onnx: ONNX Runtime cannot load this decoder graph \(.+\); "
                                          r"expected the ONNX file `vaedeploy export` wrote"):
        load(bundle_copy, verify=False, backend="onnxruntime")


def test_a_missing_graph_file_is_one_bundle_error_naming_the_file(bundle_copy):
    bundle = load_bundle(bundle_copy, verify=False)
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing file encoder.onnx"):
        load(bundle_copy, verify=False)
    with pytest.raises(BundleError, match=r"encoder.onnx: ONNX Runtime cannot load this encoder graph"):
        OnnxRuntimeRunner(bundle, "encoder", "fp32", "cpu").activate()  # gone between the check and the session


# ---- 5. finite inputs far outside the declared range: refused, never NaN -----------------------------------------


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_images_outside_the_declared_range_are_refused(exported, backend):
    rt = load(exported("vae")[1], backend=backend)
    assert rt.bundle.manifest["input"]["range"] == [0.0, 1.0]
    x = images(2)
    for bad, got in [(np.full_like(x, 3e38), r"values in \[3e\+38, 3e\+38\]"), (x * 255, r"values in \[.*, 25\d.*\]"),
                     (x - 0.01, r"values in \[-0.0\d+, .*\]"), (np.where(x > 0.5, np.nan, x), "NaN"),
                     (np.full_like(x, -np.inf), r"values in \[-inf, -inf\]")]:
        for value in (bad, torch.from_numpy(bad.astype(np.float32))):
            for op in (rt.encode, rt.reconstruct, rt.encode_params):
                with pytest.raises(InputError, match=rf"x: expected finite values in \[0, 1\] \(the bundle's "
                                                     rf"input.range\), got {got}"):
                    op(value)
    edges = np.zeros_like(x)
    edges[0], edges[1, 0, 0, 0] = 1.0, -0.0  # the bounds themselves, and -0, whose bits the quick test reads as big
    assert np.isfinite(rt.reconstruct(edges)).all()
    edges[1, 0, 0, 0] = np.nextafter(np.float32(1), np.float32(2))
    with pytest.raises(InputError, match=r"x: expected finite values in \[0, 1\] .*got values in \[0.0, 1.0000001\]"):
        rt.reconstruct(edges)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_check_inputs_false_skips_the_values_pass_but_never_the_shape_or_the_output_check(exported, backend):
    rt = load(exported("vae")[1], backend=backend)
    above = images(2) + 1  # in [1, 2]: outside the declared range, finite, so the graphs run on it
    for op in (rt.encode, rt.reconstruct, rt.encode_params):
        with pytest.raises(InputError, match=r"x: expected finite values in \[0, 1\]"):
            op(above)
    assert rt.reconstruct(above, check_inputs=False).shape == above.shape
    mean, logvar = rt.encode_params(above, check_inputs=False)
    np.testing.assert_allclose(rt.encode(above, seed=3, check_inputs=False),
                               rt.encode_params(above, check_inputs=False)[0] + np.exp(logvar / 2) *
                               (rt.encode(images(2), seed=3) - rt.encode_params(images(2))[0]) /
                               np.exp(rt.encode_params(images(2))[1] / 2), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match=r"x: expected shape N×1×8×8, got 2×1×8×9"):
        rt.encode(np.zeros((2, 1, 8, 9), np.float32), check_inputs=False)
    z = np.zeros((1, rt.latent_dim), np.float32)
    z[0, 0] = np.nan
    with pytest.raises(InputError, match=r"z: expected finite values, got NaN"):
        rt.decode(z)
    with pytest.raises(InputError, match=r"decode: expected finite images, got NaN or Inf from the decoder"):
        rt.decode(z, check_inputs=False)


def _with_range(bundle_copy, declared):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    if declared is None:
        del manifest["input"]["range"]
    else:
        manifest["input"]["range"] = declared
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    return bundle_copy


def test_the_range_comes_from_the_manifest(bundle_copy):
    x = images(2)
    shifted = load(_with_range(bundle_copy, [-1, 0.5]))  # a range not around [0, 1]: min and max decide
    assert np.isfinite(shifted.reconstruct(x - 1)).all() and np.isfinite(shifted.reconstruct(x * 1.5 - 1)).all()
    with pytest.raises(InputError, match=r"expected finite values in \[-1, 0.5\]"):
        shifted.reconstruct(x)
    above = load(_with_range(bundle_copy, [0.5, 2]))  # a range above 0: no bit test, since 0 … 0.5 read as small
    assert np.isfinite(above.reconstruct(x + 1)).all()
    with pytest.raises(InputError, match=r"expected finite values in \[0.5, 2\]"):
        above.reconstruct(x)
    without = load(_with_range(bundle_copy, None))  # no declared range: any finite image
    assert np.isfinite(without.reconstruct(x * 30 - 15)).all()
    with pytest.raises(InputError, match=r"x: expected finite values, got NaN"):
        without.reconstruct(np.full_like(x, np.nan))
    for declared in ([1, 0], [0], "0..1", [0, float("inf")], [True, 1]):
        with pytest.raises(BundleError, match=r"input.range: expected \[low, high\], two finite numbers"):
            load(_with_range(bundle_copy, declared))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_temperature_above_the_documented_maximum_is_refused(exported, backend):
    rt = load(exported("vae")[1], backend=backend)
    for temperature in (1e308, 10**400, MAX_TEMPERATURE * 1.001, float("inf"), float("nan"), -1.0, np.float64(-0.5)):
        with pytest.raises(InputError, match=r"temperature: expected a finite number in \[0, 1000\]"):
            rt.sample(2, seed=0, temperature=temperature)
    assert np.isfinite(rt.sample(2, seed=0, temperature=MAX_TEMPERATURE)).all()


@pytest.mark.parametrize("name", ["vae", "vae_conv_bernoulli", "vqvae"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_decoding_huge_latents_gives_finite_images_or_an_error_never_nan(exported, name, backend):
    rt = load(exported(name)[1], backend=backend)
    shape = rt.latent_shape if name == "vqvae" else (rt.latent_dim,)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=min(int(np.prod(shape)), 4))), np.float32)
    for magnitude in (3e38, 1e38, 1e30):
        z = np.resize(signs * magnitude, (len(signs), *shape))  # whether a sign pattern overflows depends on weights
        for value in (z, torch.from_numpy(z)):
            try:
                images = rt.decode(value)
            except InputError as e:
                assert re.fullmatch(r"decode: expected finite images, got NaN or Inf from the decoder, most likely "
                                    r"because z \(largest \|z\| [\d.e+]+\) is far outside the latents the model was "
                                    r"trained on", str(e)), e
            else:
                assert np.isfinite(np.asarray(images)).all()


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_decoder_that_gives_nan_is_refused_with_the_op_and_cause_named(exported, backend):
    rt = load(exported("vae")[1], backend=backend)
    z = np.zeros((3, 4), np.float32)
    z[1] = 3e38
    decoded = rt._decoder.run

    def overflowing(latents):  # what a decoder whose sums overflow gives: NaN in the rows of huge z
        first, *rest = decoded(latents)
        first = first.copy() if isinstance(first, np.ndarray) else first.clone()
        first[1] = float("nan")
        return [first, *rest]

    rt._decoder.run = overflowing
    for value in (z, torch.from_numpy(z)):
        with pytest.raises(InputError, match=r"decode: expected finite images, got NaN or Inf from the decoder, most "
                                             r"likely because z \(largest \|z\| 3e\+38\) is far outside"):
            rt.decode(value)
    with pytest.raises(InputError, match="decode: expected finite images"):
        rt.decode(z, out=np.empty((3, 1, 8, 8), np.float32) if backend == "onnxruntime" else torch.empty(3, 1, 8, 8))
    with pytest.raises(InputError, match=r"sample: expected finite images, got NaN or Inf from the decoder at "
                                         r"temperature 1000; a lower temperature keeps the latents where"):
        rt.sample(3, seed=0, temperature=MAX_TEMPERATURE)
    rt._decoder.run = decoded
    assert np.isfinite(rt.decode(z[:1] + 1e3)).all()


# ---- 6. the VQ prior at a tiny temperature -----------------------------------------------------------------------


def test_vq_codes_at_a_tiny_temperature_are_the_argmax_codes(vqvae):
    argmax = vqvae.sample_codes(6, seed=3, temperature=0)
    for temperature in (1e-30, 1e-300, 1e-310, 5e-324):  # 1e-310 and 5e-324 are denormal
        np.testing.assert_array_equal(vqvae.sample_codes(6, seed=3, temperature=temperature), argmax)
    assert not np.array_equal(vqvae.sample_codes(6, seed=3, temperature=100.0), argmax)


def test_the_categorical_draw_is_sensible_at_every_temperature():
    logits = np.array([[0.0, 1e-29, -3e38, 3e38], [2.0, 2.0, 1.0, -np.inf]], np.float32)
    u = np.array([0.5, 0.75])
    np.testing.assert_array_equal(_categorical(logits, 0.0, u), [3, 0])
    np.testing.assert_array_equal(_categorical(logits, 5e-324, u), [3, 1])  # a tie splits evenly; -inf never drawn
    near = np.array([[0.0, 1e-29]], np.float32)  # at T = 1e-30 the weights are e^-10 : 1
    assert _categorical(near, 1e-30, np.array([1e-5]))[0] == 0 and _categorical(near, 1e-30, np.array([1e-4]))[0] == 1
    # at a huge temperature every code is as likely: the uniform's quarter picks the code
    np.testing.assert_array_equal(_categorical(logits[:1].clip(-10, 10), 1e300, np.array([0.6])), [2])
