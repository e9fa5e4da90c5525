"""diffusers' autoencoders in vaedeploy (export/diffusers.py, export/overflow.py): tiny models of each class saved
with ``save_pretrained`` to a temp folder (no network), loaded back, their exported modules against diffusers' own
encode and decode, the photographs they are validated on, and an fp16 overflow built on purpose."""
import contextlib
import io
import json
import re

import diffusers
import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import DIFFUSERS_CONFIGS, DIFFUSERS_SIZES, tiny_diffusers
from hypothesis import given, settings
from hypothesis import strategies as st
from vaedeploy.export import diffusers as imported
from vaedeploy.export.onnx_export import HalfPrecision, export_graph
from vaedeploy.export.overflow import first_overflow
from vaedeploy.export.validate import validate_graphs

import vaedeploy
from vaedeploy.errors import ConfigError
from vaedeploy.models.spec import GraphSpec

CONFIGS = {name: (getattr(diffusers, cls), config) for name, (cls, config) in DIFFUSERS_CONFIGS.items()}
tiny = tiny_diffusers


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name → the folder its tiny model was saved to with save_pretrained."""
    root = tmp_path_factory.mktemp("diffusers")
    folders = {}
    for name in CONFIGS:
        tiny(name).save_pretrained(root / name)
        folders[name] = root / name
    return folders


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_class_loads_from_its_saved_folder_and_from_a_pipelines_vae_subfolder(saved, tmp_path, name):
    pipeline = tmp_path / "pipeline"
    tiny(name).save_pretrained(pipeline / "vae")
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    expected = tiny(name).state_dict()
    for source in (saved[name], pipeline):
        vae = imported.load_vae(source)
        assert type(vae) is CONFIGS[name][0] and not vae.training
        for key, value in vae.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_a_class_vaedeploy_does_not_import_is_named_in_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ConfigError, match=r"config.json: vaedeploy imports diffusers' AutoencoderKL, AutoencoderTiny, "
                                          r"VQModel; the config names 'AutoencoderKLWan'$"):
        imported.load_vae(tmp_path)
    with pytest.raises(ConfigError, match=r"imports diffusers' AutoencoderKL, AutoencoderTiny, VQModel; got a "
                                          r"UNet2DModel$"):
        imported.modules(diffusers.UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                                               down_block_types=("DownBlock2D",) * 2,
                                               up_block_types=("UpBlock2D",) * 2))


def test_a_folder_without_a_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"expected config.json of a diffusers autoencoder in it or in its vae/ "
                                          r"subfolder, found neither"):
        imported.load_vae(tmp_path)


@pytest.mark.parametrize("name", ["sd", "flux"])
def test_kl_modules_give_diffusers_posterior_and_decode(name):
    vae, x = tiny(name), torch.from_numpy(imported.photographs(16, 24, 2))
    encoder, decoder = imported.modules(vae)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        mean, logvar = encoder(x)
        torch.testing.assert_close(mean, posterior.mean, rtol=0, atol=0)
        torch.testing.assert_close(logvar, posterior.logvar, rtol=0, atol=0)
        torch.testing.assert_close(decoder(mean), vae.decode(mean).sample, rtol=0, atol=0)


def test_tiny_modules_give_diffusers_latents_and_decode():
    vae, x = tiny("taesd"), torch.from_numpy(imported.photographs(16, 24, 2))
    encoder, decoder = imported.modules(vae)
    with torch.no_grad():
        z = encoder(x)
        torch.testing.assert_close(z, vae.encode(x).latents, rtol=0, atol=0)
        torch.testing.assert_close(decoder(z), vae.decode(z).sample, rtol=0, atol=0)


def test_vq_modules_with_the_nearest_code_give_diffusers_decode():
    vae, x = tiny("vqgan"), torch.from_numpy(imported.photographs(16, 24, 2))
    encoder, decoder = imported.modules(vae)
    codebook = vae.quantize.embedding.weight.detach()
    with torch.no_grad():
        z_e = encoder(x)
        torch.testing.assert_close(z_e, vae.encode(x).latents, rtol=0, atol=0)
        rows = z_e.permute(0, 2, 3, 1).reshape(-1, codebook.shape[1])
        nearest = torch.cdist(rows, codebook).argmin(1)  # what VectorQuantizer does inside decode
        z_q = codebook[nearest].reshape(z_e.shape[0], z_e.shape[2], z_e.shape[3], -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(decoder(z_q), vae.decode(z_e).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, factor, scaling", [
    ("sd", 2, {"scaling_factor": 0.18215, "shift_factor": 0.0}),
    ("flux", 2, {"scaling_factor": 0.3611, "shift_factor": 0.1159}),
    ("taesd", 2, None),
])
def test_downsample_and_scaling_come_from_the_model(name, factor, scaling):
    vae = tiny(name)
    assert imported.downsample(vae) == factor
    assert imported.scaling(vae) == scaling


@pytest.mark.parametrize("height, width", [(32, 32), (24, 40), (64, 16)])
def test_photographs_are_distinct_real_images_in_range_at_any_size(height, width):
    x = imported.photographs(height, width, 5)
    assert x.shape == (5, 3, height, width) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.std(axis=(1, 2, 3)).min() > 0.1  # photographs, not flat fields
    flat = x.reshape(5, -1)
    assert min(np.abs(a - b).mean() for i, a in enumerate(flat) for b in flat[i + 1:]) > 0.05  # no two rows alike
    np.testing.assert_array_equal(x, imported.photographs(height, width, 5))


def test_psnr_of_a_known_error():
    expected = imported.photographs(16, 16, 2)
    shifted = expected + np.float32(0.02)  # mse 4e-4 over a range of 2: 10·log10(4 / 4e-4) = 40 dB
    assert imported.psnr(shifted, expected) == pytest.approx(40.0, abs=1e-3)
    assert imported.psnr(expected, expected) == np.inf
    assert np.isnan(imported.psnr(np.full_like(expected, np.nan), expected))


def test_an_fp16_overflow_built_on_purpose_is_traced_to_its_first_node(tmp_path):
    """The decoder's first convolution scaled so its activations pass float16's 65504 (SDXL's failure): finite in
    fp32 (the group norm after it normalises them), Inf then NaN in the fp16 graph."""
    vae = tiny("sd")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
    decoder = imported.modules(vae)[1]
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(decoder(z)).all()
    export_graph(HalfPrecision(decoder), (z,), ["z"], ["x"], tmp_path / "decoder.fp16.onnx")
    feed = {"z": z.numpy()}
    session = ort.InferenceSession(str(tmp_path / "decoder.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert not np.isfinite(session.run(None, feed)[0]).all()
    overflow = first_overflow(tmp_path / "decoder.fp16.onnx", feed)
    assert (overflow.op_type, overflow.module) == ("Conv", "decoder.conv_in")
    assert overflow.largest_input < 65504  # its inputs were in range: this node overflowed, not one before it
    assert str(overflow).startswith(f"the first node that overflows is '{overflow.node}' (Conv in module "
                                    "decoder.conv_in")
    # the same graph on latents that keep it in range (zeros: the scaled convolution gives its bias) has none
    assert first_overflow(tmp_path / "decoder.fp16.onnx", {"z": np.zeros_like(feed["z"])}) is None
    # and validation, which export and import run on every graph and precision, fails naming graph, precision, node
    spec = GraphSpec("decoder", decoder, ["z"], {"encodings": [z.numpy()]}, ["x"])
    report = validate_graphs([spec], {"decoder": {"fp16": "decoder.fp16.onnx"}}, tmp_path, 2)
    assert not report["passed"]
    assert report["failures"][0].startswith("decoder fp16 on encodings at batch 1: x max_abs=nan")
    assert (f"; NaN or Inf in the output: the first node that overflows is '{overflow.node}' (Conv in module "
            "decoder.conv_in") in report["failures"][0]


# ---- import into bundles -------------------------------------------------------------------------------------------

SIZES = DIFFUSERS_SIZES


@pytest.fixture(scope="module")
def bundles(saved, tmp_path_factory, diffusers_bundle):
    """name → a bundle: SD-style in fp32 and fp16 (conftest's, from Python), TAESD-style in fp32 imported from the
    saved folder through the command (what it printed under "printed")."""
    from vaedeploy.cli import main

    root = tmp_path_factory.mktemp("imported")
    made = {"sd": diffusers_bundle("sd")}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["import", "diffusers", str(saved["taesd"]), "--out", str(root / "taesd"), "--sizes", "16,32",
                     "--max-batch", "2"]) == 0
    return {**made, "taesd": root / "taesd", "printed": printed.getvalue()}


def test_import_writes_a_bundle_of_any_size_validated_on_photographs(bundles):
    manifest = json.loads((bundles["sd"] / "manifest.json").read_text())
    assert manifest["kind"] == "diffusers.AutoencoderKL"
    assert manifest["input"]["size"] == {"min": [16, 16], "max": [32, 32], "multiple": 2}
    assert manifest["input"]["range"] == [-1.0, 1.0]
    assert manifest["latent"] == {"type": "gaussian", "shape": [4, 8, 8], "downsample": 2,
                                  "scaling": {"scaling_factor": 0.18215, "shift_factor": 0.0}}
    assert {p for g in manifest["graphs"].values() for p in g} == {"fp32", "fp16"}
    report = json.loads((bundles["sd"] / "validation.json").read_text())
    assert report["passed"] and [16, 32] in report["sizes"] and [32, 16] in report["sizes"]
    assert {c["inputs"] for c in report["checks"]} >= {"photographs", "encodings", "prior", "size 32×16"}
    round_trip = manifest["validation"]["extra"]["round_trip_psnr"]
    assert round_trip["passed"] and set(round_trip["by_precision_and_size"]) == {
        f"{p}@{s}" for p in ("fp32", "fp16") for s in ("16x16", "32x32", "16x32", "32x16")}
    assert all(v >= imported.PSNR_FLOOR[k.split("@")[0]] for k, v in round_trip["by_precision_and_size"].items())


def test_a_round_trip_below_its_psnr_floor_fails(bundles, monkeypatch):
    """The floor is a real check: asked for more than fp32 graphs give, it fails and names the precision and size
    (an import then fails, as for any check of validation's)."""
    monkeypatch.setitem(imported.PSNR_FLOOR, "fp32", 1000.0)  # above the cap of the PSNR of equal images
    spec = imported.export_spec(tiny("taesd"), SIZES, 2)
    files = {role: {"fp32": f"{role}.onnx"} for role in ("encoder", "decoder")}
    result = imported.round_trip_check(spec, files, bundles["taesd"], 2)
    assert not result["passed"] and len(result["failures"]) == 4
    assert re.fullmatch(r"round trip of photographs through the fp32 graphs at 16×16: PSNR [\d.]+ dB against "
                        r"PyTorch float32, below 1000 dB", result["failures"][0])


@settings(max_examples=4, deadline=None)
@given(height=st.sampled_from([16, 20, 32]), width=st.sampled_from([16, 24, 32]), n=st.integers(1, 3))
def test_the_bundle_round_trip_agrees_with_diffusers_own_vae(bundles, height, width, n):
    vae, x = tiny("sd"), imported.photographs(height, width, n)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(x)).latent_dist
        expected = vae(torch.from_numpy(x)).sample.numpy()  # decode(the posterior's mode)
    for precision, least in (("fp32", 60.0), ("fp16", 35.0)):
        with vaedeploy.load(bundles["sd"], precision=precision) as rt:
            mean, _ = rt.encode_params(x)
            got = rt.reconstruct(x)
            assert imported.psnr(got, expected) > least
            z = rt.encode(x, seed=1)  # scaled: decode takes it back to the graph's space
            with torch.no_grad():
                drawn = vae.decode(torch.from_numpy(z) / 0.18215).sample.numpy()
            assert imported.psnr(rt.decode(z), drawn) > least
    np.testing.assert_allclose(mean, posterior.mean.numpy(), rtol=0, atol=5e-2)


def test_tiled_decode_agrees_with_diffusers_enable_tiling(bundles):
    vae = tiny("sd")
    vae.enable_tiling()  # tiles of its sample_size, 16 pixels, as tile=(16, 16) asks
    z = np.random.default_rng(2).normal(size=(2, 4, 20, 12)).astype(np.float32)  # 40×24: beyond the bundle's 32
    with torch.no_grad():
        expected = vae.decode(torch.from_numpy(z) / 0.18215).sample.numpy()
    with vaedeploy.load(bundles["sd"]) as rt:
        got = rt.decode(z, tile=(16, 16))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_taesd_imports_with_deterministic_latents(bundles):
    vae, x = tiny("taesd"), imported.photographs(24, 16, 2)
    manifest = json.loads((bundles["taesd"] / "manifest.json").read_text())
    assert manifest["latent"] == {"type": "deterministic", "shape": [4, 8, 8], "downsample": 2}
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(x)).latents
        images = vae.decode(latents).sample.numpy()
    with vaedeploy.load(bundles["taesd"]) as rt:
        np.testing.assert_allclose(rt.encode(x), latents.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(rt.decode(latents.numpy()), images, rtol=0, atol=1e-5)
        with pytest.raises(vaedeploy.errors.InputError, match="has no prior"):
            rt.sample(1)


def test_the_import_command_writes_the_bundle_and_refuses_in_one_line(bundles, tmp_path, capsys):
    from vaedeploy.cli import main

    assert bundles["printed"].startswith(f"imported diffusers.AutoencoderTiny to {bundles['taesd']}: deterministic "
                                         "latents of 4 channels at 1/2 of the image")
    (tmp_path / "wan").mkdir()
    (tmp_path / "wan" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    assert main(["import", "diffusers", str(tmp_path / "wan"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith("the config names 'AutoencoderKLWan'")


@pytest.mark.parametrize("sizes", [(16,), (16, 16), (16, 33), (0, 16), ()])
def test_sizes_are_two_or_more_multiples_of_the_downsampling(sizes):
    with pytest.raises(ConfigError, match=r"sizes: expected at least two image sides, positive multiples of the "
                                          r"model's downsampling factor 2"):
        imported.export_spec(tiny("sd"), sizes)

