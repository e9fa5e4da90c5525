import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import edit_manifest, images
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from vaedeploy.kernels import standard_normal_numpy

from vaedeploy import load
from vaedeploy.bundle import BundleError
from vaedeploy.runtime import InputError
from vaedeploy.train import load_run

BATCHES = [1, 2, 7, 64, 130]  # 130 is above the bundles' max batch of 64: split and reassembled


@pytest.mark.parametrize("name", ["vae", "vae_conv_bernoulli", "ae"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_round_trips_match_the_pytorch_model_at_every_batch_size(exported, name, backend):
    run, bundle = exported(name)
    model, _ = load_run(run)
    rt = load(bundle, backend=backend)
    assert rt.backend == backend
    for n in BATCHES:
        x = images(n, seed=n)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            params = model.encoder(xt)
            params = (params,) if isinstance(params, torch.Tensor) else params
            expected_recon = model.reconstruct(xt).numpy()
        got = rt.encode_params(x)
        assert len(got) == len(params)
        for a, e in zip(got, params):
            np.testing.assert_allclose(a, e.numpy(), atol=2e-5, rtol=1e-4)
        recon = rt.reconstruct(x)
        assert recon.shape == x.shape and recon.dtype == np.float32
        np.testing.assert_allclose(recon, expected_recon, atol=2e-5)
        z = rt.encode(x, seed=5)
        if model.kind == "vae":
            mean, logvar = (p.numpy() for p in params)
            expected_z = mean + np.exp(logvar / 2) * standard_normal_numpy(mean.shape, 5)
            np.testing.assert_allclose(z, expected_z, atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            expected_image = model.decoder.likelihood.mean(model.decoder(torch.from_numpy(z))).numpy()
        np.testing.assert_allclose(rt.decode(z), expected_image, atol=2e-5)


def test_the_same_seed_gives_the_same_z_on_every_call_and_backend(exported):
    _, bundle = exported("vae")
    ort_rt, torch_rt = load(bundle, backend="onnxruntime"), load(bundle, backend="torch")
    x = images(9)
    z = ort_rt.encode(x, seed=123)
    np.testing.assert_array_equal(z, ort_rt.encode(x, seed=123))
    np.testing.assert_allclose(torch_rt.encode(x, seed=123), z, atol=1e-6)
    assert not np.allclose(ort_rt.encode(x, seed=124), z)
    assert not np.allclose(ort_rt.encode(x), ort_rt.encode(x)), "seed=None must draw a fresh seed"
    # the noise of row i does not depend on how the batch is split
    big = images(150)
    np.testing.assert_allclose(ort_rt.encode(big, seed=7)[:9], ort_rt.encode(big[:9], seed=7), atol=1e-6)
    samples = ort_rt.sample(5, seed=3)
    np.testing.assert_array_equal(samples, ort_rt.sample(5, seed=3))
    np.testing.assert_allclose(torch_rt.sample(5, seed=3), samples, atol=1e-6)
    np.testing.assert_allclose(ort_rt.sample(2, seed=3, temperature=0.0), ort_rt.decode(np.zeros((2, 4), "f4")),
                               atol=1e-7)


def test_torch_tensors_come_back_as_tensors_and_numpy_as_numpy(exported):
    _, bundle = exported("vae")
    for backend in ("onnxruntime", "torch"):
        rt = load(bundle, backend=backend)
        x = images(3)
        out = rt.reconstruct(torch.from_numpy(x))
        assert isinstance(out, torch.Tensor) and out.device.type == "cpu"
        np.testing.assert_allclose(out.numpy(), rt.reconstruct(x), atol=1e-6)
        assert isinstance(rt.encode_params(torch.from_numpy(x))[0], torch.Tensor)
        assert isinstance(rt.sample(2, seed=0), np.ndarray)


def test_half_precision_graphs_run_close_to_fp32(exported):
    _, bundle = exported("vae")
    x = images(20)
    full = load(bundle).reconstruct(x)
    for backend in ("onnxruntime", "torch"):
        half = load(bundle, backend=backend, precision="fp16")
        assert np.abs(half.reconstruct(x) - full).max() < 5e-3
    with pytest.raises(BundleError, match="no 'fp16' variant"):
        load(exported("ae")[1], precision="fp16")


def test_auto_picks_onnxruntime_and_bad_choices_are_named(exported):
    _, bundle = exported("ae")
    assert load(bundle).backend == "onnxruntime"
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        load(bundle, backend="tensorflow")
    with pytest.raises(ValueError, match="precision must be one of"):
        load(bundle, precision="int8")
    with pytest.raises(InputError, match="has no prior"):
        load(bundle).sample(2)


def test_onnxruntime_path_runs_without_torch(exported, tmp_path):
    _, bundle = exported("vae")
    z = np.random.default_rng(0).standard_normal((5, 4), dtype=np.float32)
    np.save(tmp_path / "z.npy", z)
    rt = load(bundle, backend="onnxruntime")
    np.save(tmp_path / "expected.npy", rt.decode(z))
    np.save(tmp_path / "expected_sample.npy", rt.sample(3, seed=11))
    np.save(tmp_path / "expected_encode.npy", rt.encode(rt.decode(z), seed=1))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from vaedeploy import load
        rt = load({str(bundle)!r}, backend="auto")
        assert rt.backend == "onnxruntime", rt.backend
        z = np.load({str(tmp_path / 'z.npy')!r}, allow_pickle=False)
        np.testing.assert_array_equal(rt.decode(z), np.load({str(tmp_path / 'expected.npy')!r}, allow_pickle=False))
        np.testing.assert_array_equal(rt.sample(3, seed=11),
                                      np.load({str(tmp_path / 'expected_sample.npy')!r}, allow_pickle=False))
        np.testing.assert_array_equal(rt.encode(rt.decode(z), seed=1),
                                      np.load({str(tmp_path / 'expected_encode.npy')!r}, allow_pickle=False))
        print("ok", sorted(m for m in sys.modules if m.startswith("torch")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ['torch']"  # only the None placeholder


@pytest.fixture()
def bundle_copy(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported("ae")[1], copy)
    return copy


def test_broken_bundles_are_refused_with_the_file_named(bundle_copy, tmp_path):
    load(bundle_copy)
    (bundle_copy / "decoder.onnx").write_bytes((bundle_copy / "decoder.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="decoder.onnx does not match its sha256"):
        load(bundle_copy)
    (bundle_copy / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing file decoder.onnx"):
        load(bundle_copy)
    with pytest.raises(BundleError, match="missing manifest.json"):
        load(tmp_path)
    with pytest.raises(BundleError, match="not a bundle directory"):
        load(tmp_path / "nowhere")


def test_newer_formats_and_paths_outside_the_bundle_are_refused(bundle_copy, tmp_path):
    (tmp_path / "secret.txt").write_text("x")
    edit_manifest(bundle_copy, lambda m: m["files"].update({"../secret.txt": "0" * 64}))
    with pytest.raises(BundleError, match="files: expected a name .* has no '..', got \"../secret.txt\""):
        load(bundle_copy)
    edit_manifest(bundle_copy, lambda m: m["files"].pop("../secret.txt"))
    edit_manifest(bundle_copy, lambda m: m["files"].update({"/etc/passwd": "0" * 64}))
    with pytest.raises(BundleError, match="files: expected a name .*, got \"/etc/passwd\""):
        load(bundle_copy)
    edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format 99 is newer"):
        load(bundle_copy)


def test_each_bad_input_gets_a_clear_error(exported):
    _, bundle = exported("vae")
    rt = load(bundle)
    x = images(2)
    cases = [
        (x[0], "expected shape N×1×8×8, got 1×8×8 \\(add a batch axis\\)"),
        (x.reshape(2, 64), "expected shape N×1×8×8, got 2×64"),
        ((x * 17).astype(np.uint8), "expected float32 values .* got uint8"),
        (np.where(np.eye(8, dtype=bool), np.nan, x).astype(np.float32), "expected finite values"),
        (np.full_like(x, np.inf), "expected finite values"),
        (x[:0], "expected at least one row"),
        (x.tolist(), "expected a numpy array or a torch tensor, got list"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int64), "expected a floating-point tensor"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            rt.encode(bad)
    with pytest.raises(InputError, match="z: expected shape N×4, got 3×5"):
        rt.decode(np.zeros((3, 5), np.float32))
    for bad in (dict(n=0), dict(n=2, seed=-1), dict(n=2, temperature=float("nan"))):
        with pytest.raises(InputError):
            rt.sample(**bad)
    # a huge but finite input passes the cheap finiteness test's fallback
    assert np.isfinite(rt.decode(np.full((1, 4), 1e30, np.float32))).all()


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9)
REFUSED_N = [0, -1, True, 2.5, None, 2**63, np.uint64(2**64 - 1), np.float32(3)]
# batch sizes the runtime accepts, half of them above the bundles' max batch (64), where it splits and reassembles
ROWS = st.one_of(st.integers(1, 64), st.integers(65, 160))


@st.composite
def accepted_arrays(draw, trailing, images: bool):
    """Float arrays of N × trailing that the runtime must accept, of any float dtype: images within the bundle's
    input range [0, 1] (at any scale inside it), latents finite at any scale."""
    n, dtype = draw(ROWS), draw(st.sampled_from([np.float16, np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-3, 1.0] if images else [1e-3, 1.0, 30.0]))
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(0 if images else -scale, scale,
                                                                           (n, *trailing))
    return values.astype(dtype)


@pytest.fixture(scope="module")
def vae_runtime(exported):
    return load(exported("vae")[1], verify=False)


def _call(rt, method, x, seed):
    if method == "sample":
        return rt.sample(x, seed=seed)
    if method == "encode":
        return rt.encode(x, seed=seed)
    return getattr(rt, method)(x)


def _assert_rows_match_single_row_calls(rt, method, x, seed, out):
    """Row i of a batch call is what a call on row i alone gives (for draws: row i of the seed's noise)."""
    if method == "encode_params":
        for i in range(len(x)):
            for got, single in zip(out, rt.encode_params(x[i : i + 1])):
                np.testing.assert_allclose(got[i : i + 1], single, rtol=1e-5, atol=1e-6)
        return
    if method in ("reconstruct", "decode"):
        for i in range(len(x)):
            np.testing.assert_allclose(out[i : i + 1], getattr(rt, method)(x[i : i + 1]), rtol=1e-5, atol=1e-6)
        return
    n = x if method == "sample" else len(x)
    noise = standard_normal_numpy((n, rt.latent_dim), seed)  # element i of the N×d latent draws counter i
    for i in range(n):
        if method == "sample":
            expected = rt.decode(noise[i : i + 1])
        else:
            mean, logvar = (p.astype(np.float64) for p in rt.encode_params(x[i : i + 1]))
            expected = mean + np.exp(np.clip(logvar, -30, 20) / 2) * noise[i]
        np.testing.assert_allclose(out[i : i + 1], expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), method=st.sampled_from(["encode", "encode_params", "reconstruct", "decode", "sample"]))
def test_any_input_gives_an_input_error_or_rows_that_match_single_row_calls(vae_runtime, data, method):
    rt = vae_runtime
    trailing = (rt.latent_dim,) if method == "decode" else rt.input_shape
    # about three times in four an input the runtime must accept, else anything at all
    accepted = data.draw(st.sampled_from(["accepted", "accepted", "accepted", "any"]), label="input") == "accepted"
    if method == "sample":
        x = data.draw(ROWS if accepted else st.sampled_from(REFUSED_N), label="n")
    else:
        x = data.draw(accepted_arrays(trailing, method != "decode") if accepted else hnp.arrays(DTYPES, SHAPES),
                      label="x")
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    try:
        out = _call(rt, method, x, seed)
    except InputError:
        assert not accepted, "an input the runtime must accept was refused"
        event("input error")
        return
    n = x if method == "sample" else len(x)
    event(f"result, n {'above' if n > rt.max_batch else 'within'} max_batch")
    first = out[0] if method == "encode_params" else out
    assert first.shape[0] == n and first.dtype == np.float32 and np.isfinite(first).all()
    _assert_rows_match_single_row_calls(rt, method, x, seed, out)
