"""diffusers' VQModel imported into a ``vq`` bundle without a prior (export/diffusers.py, docs/diffusers.md): the
spatial code grid at any size the bundle takes, the codebook as an array, the runtime's nearest code, ``decode`` of
codes and of quantized latents, ``reconstruct``, and no ``sample``; validated on photographs at two sizes in fp32 and
fp16 against diffusers' own VQModel (code agreement and decoded PSNR)."""
import json

import numpy as np
import pytest
import torch
from helpers import tiny_diffusers
from vaedeploy.export.diffusers import photographs, psnr

import vaedeploy
from vaedeploy.errors import InputError
from vaedeploy.runtime.operations import operations_of

# fp32 graphs differ from PyTorch by rounding; fp16 by half precision through every layer (PSNR_FLOOR's figures)
LEAST_PSNR = {"fp32": 60.0, "fp16": 35.0}
LEAST_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}  # export's VQ_AGREEMENT


def diffusers_codes(vae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """diffusers' own (codes, z_e, image) of photographs x: VectorQuantizer's argmin of cdist, and ``vae(x)``."""
    with torch.no_grad():
        z_e = vae.encode(torch.from_numpy(x)).latents
        codebook = vae.quantize.embedding.weight
        codes = torch.cdist(z_e.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1]), codebook).argmin(1)
        image = vae(torch.from_numpy(x)).sample
    return codes.reshape(len(x), *z_e.shape[2:]).numpy(), z_e.numpy(), image.numpy()


def test_a_vqmodel_becomes_a_vq_bundle_of_any_size_with_its_codebook_and_no_prior(diffusers_bundle):
    bundle, vae = diffusers_bundle("vqgan"), tiny_diffusers("vqgan")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "diffusers.VQModel"
    assert manifest["latent"] == {"type": "vq", "shape": [3, 8, 8], "downsample": 2, "num_codes": 16,
                                  "codebook": "codebook"}
    assert manifest["input"]["size"] == {"min": [16, 16], "max": [32, 32], "multiple": 2}
    codebook = np.load(bundle / manifest["arrays"]["codebook"], allow_pickle=False)
    np.testing.assert_array_equal(codebook, vae.quantize.embedding.weight.detach().numpy())
    extra = manifest["validation"]["extra"]
    assert extra["vq_index_agreement"]["passed"]
    agreement = extra["round_trip_psnr"]["code_agreement"]  # at the range's corners and two non-square sizes
    assert set(agreement) == {f"{p}@{s}" for p in ("fp32", "fp16") for s in ("16x16", "32x32", "16x32", "32x16")}
    assert all(rate >= LEAST_AGREEMENT[where.split("@")[0]] for where, rate in agreement.items())


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("height, width", [(16, 16), (32, 24)])  # the reference size and a larger non-square one
def test_codes_and_images_agree_with_diffusers_vqmodel_on_photographs(diffusers_bundle, precision, height, width):
    vae, x = tiny_diffusers("vqgan"), photographs(height, width, 3)
    codes, z_e, image = diffusers_codes(vae, x)
    with vaedeploy.load(diffusers_bundle("vqgan"), precision=precision) as rt:
        got_codes, z_q = rt.encode(x)
        assert got_codes.shape == (3, height // 2, width // 2) and got_codes.dtype == np.int64
        assert float((got_codes == codes).mean()) >= LEAST_AGREEMENT[precision]
        np.testing.assert_array_equal(z_q, rt.codebook[got_codes].transpose(0, 3, 1, 2))  # rows of the codebook
        (params,) = rt.encode_params(x)
        np.testing.assert_allclose(params, z_e, rtol=0, atol=1e-3 if precision == "fp32" else 5e-2)
        assert psnr(rt.reconstruct(x), image) > LEAST_PSNR[precision]
        with torch.no_grad():  # decode of diffusers' own codes, as codes and as the quantized latents
            expected = vae.decode(torch.from_numpy(z_e)).sample.numpy()
        assert psnr(rt.decode(codes), expected) > LEAST_PSNR[precision]
        assert psnr(rt.decode(rt.codebook[codes].transpose(0, 3, 1, 2).copy()), expected) > \
            LEAST_PSNR[precision]



def test_the_table_has_no_sample_and_the_runtime_refuses_it_in_one_sentence(diffusers_bundle):
    with vaedeploy.load(diffusers_bundle("vqgan")) as rt:
        assert list(operations_of(rt)) == ["encode", "encode_params", "decode", "decode_codes", "reconstruct"]
        for op in ("sample", "sample_codes"):
            with pytest.raises(InputError, match=rf"^{op}: the model of this diffusers.VQModel bundle has no prior "
                                                 r"over its vq latents to sample from; expected a bundle with "
                                                 r"gaussian latents or a learned prior$"):
                getattr(rt, op)(1, seed=0)


# 14×16: below the range; no prior, so no flat N×L form; 40×16: above the range
@pytest.mark.parametrize("shape", [(1, 7, 8), (1, 64), (1, 20, 8)])
def test_codes_of_a_grid_the_bundle_does_not_take_are_refused_in_one_sentence(diffusers_bundle, shape):
    with vaedeploy.load(diffusers_bundle("vqgan")) as rt:
        with pytest.raises(InputError) as refused:
            rt.decode(np.zeros(shape, np.int64))
        assert str(refused.value) == ("codes: expected shape N×h×w with h = H/2, w = W/2 and H and W multiples of 2 "
                                      f"from 16×16 to 32×32, got {'×'.join(map(str, shape))}")
        with pytest.raises(InputError, match=r"^codes: expected indices in \[0, 16\), got \[0, 16\]$"):
            rt.decode(np.eye(8, 12, dtype=np.int64)[None] * 16)  # a grid it takes (16×24), one code out of range
