"""The full-size architectures people deploy, imported with random weights (the weights change nothing of what is
exported): Stable Diffusion 1.5's VAE (``AutoencoderKL``, 128/256/512/512 channels) and TAESD (``AutoencoderTiny``'s
defaults), both built from the configs of benchmarks/diffusers_vae.py (no download), at a small validated size range;
the bundle loads and round-trips photographs as diffusers does. ``slow``: each import exports and validates about
80 M (SD) or 2.4 M (TAESD) parameters of graphs; CI runs it (it selects no marker out)."""
import numpy as np
import pytest
import torch
from vaedeploy.export.diffusers import from_diffusers, photographs, psnr

from benchmarks.diffusers_vae import build
from vaedeploy import load

SIZES = {"sd": (32, 64), "taesd": (64, 128)}  # SD downsamples by 8, TAESD by 8: latents of 4×4 up to 8×8 or 16×16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd", "taesd"])
def test_a_full_size_architecture_imports_loads_and_round_trips(tmp_path, name):
    vae = build(name)
    bundle = from_diffusers(vae, out=tmp_path / name, sizes=SIZES[name], max_batch=1)
    x = photographs(SIZES[name][0], SIZES[name][1], 2)  # a non-square size between the range's corners
    with torch.no_grad():
        expected = vae(torch.from_numpy(x)).sample.numpy() if name == "sd" else \
            vae.decode(vae.encode(torch.from_numpy(x)).latents).sample.numpy()
    with load(bundle) as rt:
        assert rt.latent_shape[0] == 4 and rt.downsample == 8
        got = rt.reconstruct(x)
    assert got.shape == x.shape and np.isfinite(got).all()
    assert psnr(got, expected) > 60.0  # fp32 graphs against PyTorch float32: rounding only
