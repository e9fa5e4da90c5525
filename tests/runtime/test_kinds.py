"""Every kind beyond vae and ae, served on both backends like its PyTorch model: round trips, seeds, VQ codes."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import KINDS, images
from vaedeploy.kernels import standard_normal_numpy

from vaedeploy import load
from vaedeploy.runtime import InputError
from vaedeploy.runtime.latents import STAGE1_NOISE_OFFSET
from vaedeploy.train import load_run

BATCHES = [1, 7, 130]  # 130 is above the bundles' max batch of 64: split and reassembled


def mean_image(model, params) -> np.ndarray:
    return model.decoder.likelihood.mean(params).numpy()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_each_kind_round_trips_like_its_pytorch_model(exported, kind, backend):
    run, bundle = exported(kind)
    model, _ = load_run(run)
    model.eval()
    rt = load(bundle, backend=backend)
    for n in BATCHES:
        x = images(n, seed=n)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            np.testing.assert_allclose(rt.reconstruct(x), model.reconstruct(xt).numpy(), atol=2e-5)
            if kind == "vqvae":
                codes, z_q = rt.encode(x)
                np.testing.assert_array_equal(codes, model.encode_codes(xt).numpy())
                np.testing.assert_array_equal(z_q, model.codebook[torch.from_numpy(codes)].permute(0, 3, 1, 2))
                expected = model.decode_codes(torch.from_numpy(codes)).numpy()
                np.testing.assert_allclose(rt.decode(codes), expected, atol=2e-5)
                np.testing.assert_allclose(rt.decode(z_q), expected, atol=2e-5)
                np.testing.assert_allclose(rt.decode(codes.reshape(n, -1).astype(np.int32)), expected, atol=2e-5)
            elif kind == "biva":
                noise = np.split(standard_normal_numpy((n, 9), 5), [4, 7], axis=1)
                outputs = model.encoder(xt, *(torch.from_numpy(np.ascontiguousarray(e)) for e in noise))
                z = torch.cat(outputs[:3], 1)
                np.testing.assert_allclose(rt.encode(x, seed=5), z.numpy(), atol=1e-5)
                mean, logvar = rt.encode_params(x)
                zero = [torch.zeros(n, d) for d in (4, 3, 2)]
                means = model.encoder(xt, *zero)
                np.testing.assert_allclose(mean, torch.cat(means[3:6], 1).numpy(), atol=1e-5)
                np.testing.assert_allclose(logvar, torch.cat(means[6:], 1).numpy(), atol=1e-5)
                np.testing.assert_allclose(rt.decode(z.numpy()), mean_image(model, model.decoder.decode_latents(
                    list(outputs[:3]))), atol=2e-5)
            else:
                mean, logvar = rt.encode_params(x)
                expected_mean, expected_logvar = model.encoder(xt)
                np.testing.assert_allclose(mean, expected_mean.numpy(), atol=1e-5)
                np.testing.assert_allclose(logvar, expected_logvar.numpy(), atol=1e-5)
                z = rt.encode(x, seed=5)
                scale, shift = rt.scaling or (1.0, 0.0)  # decode takes encode's space, the graph z / scale + shift
                np.testing.assert_allclose(rt.decode(z), mean_image(model, model.decoder(torch.from_numpy(
                    z / np.float32(scale) + np.float32(shift)))), atol=2e-5)


@pytest.mark.parametrize("kind", ["biva", "twostage"])
def test_sampling_draws_the_kinds_prior_from_the_seeded_kernel_noise(exported, kind):
    run, bundle = exported(kind)
    model, _ = load_run(run)
    model.eval()
    n, seed, t = 70, 9, 0.7
    with torch.no_grad():
        if kind == "biva":
            noise = np.split(t * standard_normal_numpy((n, 9), seed), [4, 7], axis=1)
            expected = mean_image(model, model.decoder(*(torch.from_numpy(np.ascontiguousarray(e)) for e in noise)))
        else:
            u = torch.from_numpy(t * standard_normal_numpy((n, 4), seed))
            mean, log_gamma = model.stage2.decoder(u)
            eps = torch.from_numpy(standard_normal_numpy((n, 4), seed, STAGE1_NOISE_OFFSET))
            expected = mean_image(model, model.decoder(mean + t * torch.exp(0.5 * log_gamma) * eps))
    for backend in ("onnxruntime", "torch"):
        rt = load(bundle, backend=backend)
        np.testing.assert_allclose(rt.sample(n, seed=seed, temperature=t), expected, atol=2e-5)
    rt = load(bundle)
    np.testing.assert_array_equal(rt.sample(3, seed=seed), rt.sample(3, seed=seed))
    assert not np.allclose(rt.sample(3, seed=seed), rt.sample(3, seed=seed + 1))


def test_vq_sampling_is_seeded_and_the_same_on_both_backends(exported):
    run, bundle = exported("vqvae")
    model, _ = load_run(run)
    model.eval()
    ort_rt, torch_rt = load(bundle, backend="onnxruntime"), load(bundle, backend="torch")
    codes = ort_rt.sample_codes(200, seed=4)
    assert codes.shape == (200, 2, 2) and codes.dtype == np.int64 and 0 <= codes.min() and codes.max() < 16
    np.testing.assert_array_equal(codes, ort_rt.sample_codes(200, seed=4))
    np.testing.assert_array_equal(codes, torch_rt.sample_codes(200, seed=4))
    assert (codes != ort_rt.sample_codes(200, seed=5)).mean() > 0.5
    images = ort_rt.sample(20, seed=4)
    np.testing.assert_allclose(images, ort_rt.decode(codes[:20]), atol=1e-6)
    np.testing.assert_allclose(torch_rt.sample(20, seed=4), images, atol=2e-5)
    # temperature 0 takes the most likely code at each step: the prior's greedy path, whatever the seed
    with torch.no_grad():
        tokens = torch.full((3, 1), model.prior.start_token)
        for _ in range(model.prior.length):
            tokens = torch.cat([tokens, model.prior(tokens)[:, -1].argmax(1, keepdim=True)], 1)
    greedy = ort_rt.sample_codes(3, seed=1, temperature=0.0)
    np.testing.assert_array_equal(greedy.reshape(3, -1), tokens[:, 1:].numpy())
    np.testing.assert_array_equal(greedy, ort_rt.sample_codes(3, seed=2, temperature=0.0))
    # the codes follow the prior: the empirical frequency of the first code matches its softmax
    with torch.no_grad():
        first = torch.softmax(model.prior(torch.full((1, 1), model.prior.start_token))[0, -1], 0).numpy()
    counts = np.bincount(ort_rt.sample_codes(2000, seed=0)[:, 0, 0], minlength=16) / 2000
    assert np.abs(counts - first).max() < 0.05


def test_vq_decode_takes_codes_or_z_q_and_names_what_is_wrong(exported):
    rt = load(exported("vqvae")[1])
    codes, z_q = rt.encode(images(3))
    out = rt.decode(torch.from_numpy(codes))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), rt.decode(z_q), atol=1e-6)
    with pytest.raises(InputError, match=r"codes: expected indices in \[0, 16\), got \[16, 16\]"):
        rt.decode(np.full((2, 2, 2), 16))
    with pytest.raises(InputError, match="codes: expected shape N×2×2 or N×4, got 2×3"):
        rt.decode(np.zeros((2, 3), np.int64))
    with pytest.raises(InputError, match="z: expected shape N×4×2×2, got 2×4"):
        rt.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="expected at least one row"):
        rt.decode(np.zeros((0, 2, 2), np.int64))


def test_every_kind_runs_without_torch(exported, tmp_path):
    x = images(5)
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for kind in KINDS:
        rt = load(exported(kind)[1], backend="onnxruntime")
        expected[kind] = str(tmp_path / f"{kind}.npy")
        np.save(expected[kind], np.stack([rt.reconstruct(x), rt.sample(5, seed=2)]))
    bundles = {kind: str(exported(kind)[1]) for kind in KINDS}
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from vaedeploy import load
        x = np.load({str(tmp_path / 'x.npy')!r}, allow_pickle=False)
        for kind, bundle in {bundles!r}.items():
            rt = load(bundle)
            assert rt.backend == "onnxruntime", rt.backend
            got = np.stack([rt.reconstruct(x), rt.sample(5, seed=2)])
            np.testing.assert_array_equal(got, np.load({expected!r}[kind], allow_pickle=False))
            rt.encode(x, seed=1)
        print("ok", sorted(m for m in sys.modules if m.startswith("torch")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok ['torch']"
