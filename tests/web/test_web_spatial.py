"""The explorer on a spatial bundle in Chromium: klconv (a KL-f4 VAE with c×H/4×W/4 latents), exported with its tiny
example config. The page's sample at a chosen size equals ``Runtime.sample(1, seed, size=...)``, a dropped .npy and
``--latents`` decode to ``Runtime.decode(z)`` (through the bundle's latent scaling), and a latent of the wrong shape
gets one sentence, the same on the page and from ``vaedeploy web``.

Tolerances as in test_explorer.py: the same graphs on onnxruntime-web's wasm and native ONNX Runtime differ in
summation order, and the page's normals differ from numpy's by a few float32 ulps."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from vaedeploy import load
from vaedeploy.cli import main
from vaedeploy.web import WebError, write_site

IMAGE_ATOL = 2e-6
KIND = "klconv"


def _npy_bytes(z: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, z, allow_pickle=False)
    return buffer.getvalue()


def _check(view, doc: dict, expected: np.ndarray, measured: dict, name: str, atol: float = IMAGE_ATOL) -> None:
    """The page's image equals the runtime's, drawn at the runtime's size."""
    assert tuple(doc["size"]) == expected.shape[-2:]
    difference = float(np.abs(doc["image"] - expected.reshape(-1)).max())
    measured[name] = max(measured.get(name, 0.0), difference)
    assert difference <= atol
    view.assert_clean()


def _drop(view, z_bytes: bytes, name: str) -> str:
    """Drop a file on the page as a user's drag would, and return the latent note once the page has taken it."""
    view.page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name));
        document.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(z_bytes).decode(), name])
    view.page.wait_for_function("n => document.getElementById('latent-note').textContent.startsWith(n)", arg=name)
    view.idle()
    return view.page.inner_text("#latent-note")


def test_the_page_shows_the_spatial_view_backend_and_decode_time(open_page):
    view = open_page(KIND)
    runtime = load(view.bundle, backend="onnxruntime")
    assert view.page.is_visible("#spatial-section") and not view.page.is_visible("#pad-section")
    assert view.page.inner_text("#backend").startswith(("wasm", "webgpu"))
    assert "ms last" in view.page.inner_text("#decode-time")
    assert view.page.inner_text("#size-note") == f"sizes: {runtime.sizes}"
    # the first frame is the sample at the reference size with the seed field's seed
    doc = view.state()
    _check(view, doc, runtime.sample(1, seed=int(view.page.input_value("#seed"))), {}, "first frame")


@pytest.mark.parametrize("seed, size", [(7, (16, 16)), (2**40 + 3, (12, 28))])
def test_sample_at_a_chosen_size_matches_runtime_sample(open_page, measured, seed, size):
    view = open_page(KIND)
    runtime = load(view.bundle, backend="onnxruntime")
    view.page.fill("#seed", str(seed))
    view.page.fill("#height", str(size[0]))
    view.page.fill("#width", str(size[1]))
    view.page.click("#sample")
    view.idle()
    doc = view.state()
    assert view.page.inner_text("#sample-note").startswith(f"seed {seed} at {size[0]}×{size[1]}:")
    expected = runtime.sample(1, seed=seed, size=size)
    assert expected.shape == (1, 1, *size)
    _check(view, doc, expected, measured, f"sample {KIND} at {size[0]}x{size[1]}")


def test_a_size_the_bundle_does_not_take_is_one_sentence(open_page):
    view = open_page(KIND)
    runtime = load(view.bundle, backend="onnxruntime")
    frames = view.state()["frames"]
    view.page.fill("#height", "10")
    view.page.click("#sample")
    assert view.page.inner_text("#sample-note") == f"size: expected {runtime.sizes}, got 10×8"
    assert view.state()["frames"] == frames
    view.assert_clean()


def test_a_dropped_npy_decodes_like_the_runtime(open_page, measured):
    view = open_page(KIND)
    runtime = load(view.bundle, backend="onnxruntime")
    assert runtime.bundle.latent.get("scaling")  # the example config scales, so the page must unscale as decode does
    z = np.random.default_rng(5).standard_normal((1, runtime.latent_shape[0], 5, 3), dtype=np.float32)
    note = _drop(view, _npy_bytes(z), "z.npy")
    assert note == "z.npy: a 2×5×3 latent, decoded to 20×12"
    _check(view, view.state(), runtime.decode(z), measured, f"decode {KIND} (dropped .npy)")


def test_a_wrong_shaped_npy_gets_the_same_sentence_on_the_page_and_from_vaedeploy_web(open_page, tmp_path):
    view = open_page(KIND)
    frames = view.state()["frames"]
    wrong = np.zeros((1, 3, 5, 3), np.float32)  # three channels; the bundle's latent has two
    note = _drop(view, _npy_bytes(wrong), "wrong.npy")
    assert view.state()["frames"] == frames  # nothing decoded
    np.save(tmp_path / "wrong.npy", wrong)
    with pytest.raises(WebError) as refused:
        write_site(view.bundle, tmp_path / "site", latents=tmp_path / "wrong.npy")
    python_says = str(refused.value)
    assert python_says == f"{tmp_path / 'wrong.npy'}: " + note.split(": ", 1)[1]
    assert "expected a float32 latent of shape (1, 2, h, w) or (2, h, w)" in note
    assert note.endswith("got float32 (1, 3, 5, 3)") and "\n" not in note
    view.assert_clean()


def test_latents_written_by_vaedeploy_web_decode_like_the_runtime(open_site, exported, tmp_path, measured):
    bundle = exported(KIND)[1]
    runtime = load(bundle, backend="onnxruntime")
    z = runtime.encode(np.random.default_rng(2).random((1, 1, 16, 24), dtype=np.float32), seed=4)
    np.save(tmp_path / "z.npy", z[0])  # c×h×w, without the batch axis
    site = tmp_path / "site"
    assert main(["web", str(bundle), "--out", str(site), "--latents", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_array_equal(np.load(site / "latents.npy"), z)
    view = open_site(site, bundle)
    assert view.page.inner_text("#latent-note") == "latents.npy: a 2×4×6 latent, decoded to 16×24"
    _check(view, view.state(), runtime.decode(z), measured, f"decode {KIND} (--latents)")


def test_vaedeploy_web_refuses_latents_for_a_vector_bundle_in_one_line(exported, tmp_path, capsys):
    np.save(tmp_path / "z.npy", np.zeros((2, 2, 2), np.float32))
    assert main(["web", str(exported("vae")[1]), "--out", str(tmp_path / "site"), "--latents",
                 str(tmp_path / "z.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--latents: expected a bundle with spatial latents" in err and "\n" not in err
    assert not (tmp_path / "site").exists()


def test_vaedeploy_web_refuses_a_damaged_latents_file_in_one_line(exported, tmp_path, capsys):
    (tmp_path / "z.npy").write_bytes(_npy_bytes(np.zeros((2, 2, 2), np.float32))[:20])  # cut inside the header
    assert main(["web", str(exported(KIND)[1]), "--out", str(tmp_path / "site"), "--latents",
                 str(tmp_path / "z.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path / 'z.npy'}: not a .npy array" in err and "\n" not in err
    assert not (tmp_path / "site").exists()


def test_a_taesd_bundle_imported_from_diffusers_decodes_like_the_runtime(open_site, tmp_path, measured):
    """Issue 29's live-preview case: a tiny AutoencoderTiny (TAESD) through `vaedeploy import diffusers`'s
    from_diffusers, its deterministic latent decoded in the page (RGB, no sample: TAESD has no prior)."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    from vaedeploy.export.diffusers import from_diffusers

    torch.manual_seed(0)
    diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                              num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1),
                              latent_channels=4).eval().save_pretrained(tmp_path / "taesd")
    bundle = tmp_path / "bundle"
    from_diffusers(tmp_path / "taesd", out=bundle, sizes=(16, 32), max_batch=2)
    runtime = load(bundle, backend="onnxruntime")
    z = np.random.default_rng(8).standard_normal((1, *runtime.latent_shape_at((16, 32))), dtype=np.float32)
    np.save(tmp_path / "z.npy", z)
    view = open_site(write_site(bundle, tmp_path / "site", latents=tmp_path / "z.npy"), bundle)
    assert view.page.is_disabled("#sample")
    assert "ms last" in view.page.inner_text("#decode-time")
    _check(view, view.state(), runtime.decode(z), measured, "decode taesd (--latents)")


def test_a_vqmodel_bundle_imported_from_diffusers_decodes_its_quantized_latents_like_the_runtime(
        open_site, diffusers_bundle, tmp_path, measured):
    """Issue 29's VQModel in the page: a tiny VQGAN-style bundle at a size it takes; the z_q of an image (its codes'
    codebook rows, from the runtime's encode) decodes in the page as ``Runtime.decode(z_q)``; no sample (no prior)."""
    bundle = diffusers_bundle("vqgan")
    runtime = load(bundle, backend="onnxruntime")
    x = np.random.default_rng(9).random((1, 3, 16, 32), dtype=np.float32)
    codes, z_q = runtime.encode(x)
    np.save(tmp_path / "z_q.npy", z_q)
    view = open_site(write_site(bundle, tmp_path / "site", latents=tmp_path / "z_q.npy"), bundle)
    assert view.page.is_disabled("#sample")
    # a deeper decoder than klconv's (GroupNorm, two up blocks): wasm's summation order differs by a few 1e-6
    _check(view, view.state(), runtime.decode(z_q), measured, "decode vqgan z_q (--latents)", atol=1e-5)
