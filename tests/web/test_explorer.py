"""The explorer in a real browser (Debian's chromium, headless): the page decodes like the Python runtime.

Tolerances: the page runs the same ONNX graphs on onnxruntime-web's wasm backend, the Python runtime on native
ONNX Runtime; their float32 kernels differ in summation order, so images agree to IMAGE_ATOL (measured figures go
to build/test-artifacts/web/tolerances.json), and the drawn pixels (levels 0-255) to one level. The noise's integer
words agree bit for bit; its normals to NORMAL_ULPS float32 ulps (numpy's float32 log and cos are not JS's).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from vaedeploy.kernels import philox, standard_normal_numpy

from vaedeploy import load

IMAGE_ATOL = 2e-6
NORMAL_ULPS = 4
SEEDS = [0, 7, 2**32 - 1, 2**32, 2**32 + 5, 12_345_678_901_234_567, 2**63 - 1]
OFFSETS = [0, 1, 2**32 - 3, 2**62, 2**63 - 40]  # 2**32 - 3: the low word carries; 2**63 - 40: the last 40


def _pad_latent(spec: dict, a: float, b: float) -> np.ndarray:
    """z at pad coordinates (a, b), computed as the page computes it (float64, then float32)."""
    pad = spec["pad"]
    center, axes, span = (np.asarray(pad[k], np.float64) for k in ("center", "axes", "span"))
    z = center + a * span[0] * axes[0]
    if len(axes) > 1:
        z = z + b * span[1] * axes[1]
    return z.astype(np.float32)


def _pixel_levels(image: np.ndarray) -> np.ndarray:
    """The grey levels the page draws for a one-channel mean image."""
    return np.floor(np.clip(image, 0, 1) * 255 + 0.5).astype(np.int64)


def _check_image(view, doc: dict, expected: np.ndarray, measured: dict, name: str) -> None:
    expected = expected.reshape(-1)
    difference = float(np.abs(doc["image"] - expected).max())
    measured[name] = max(measured.get(name, 0.0), difference)
    assert difference <= IMAGE_ATOL
    drawn = doc["pixels"][..., 0].reshape(-1).astype(np.int64)
    assert np.abs(drawn - _pixel_levels(expected)).max() <= 1
    view.assert_clean()


def test_page_loads_cleanly_isolated_with_threads_and_keeps_a_screenshot(open_page, artifacts):
    view = open_page("vae")
    page = view.page
    assert page.evaluate("self.crossOriginIsolated")
    assert page.inner_text("#backend").startswith(("wasm", "webgpu"))
    assert page.inner_text("#threads").split()[0] == str(min(4, page.evaluate("navigator.hardwareConcurrency")))
    assert "ms last" in page.inner_text("#decode-time")
    assert {"app.js", "bundle/manifest.json", "bundle/decoder.onnx", "explorer.json"} <= {
        u.split("/", 3)[3] for u in view.requests}
    assert any(u.endswith(".wasm") for u in view.requests)  # onnxruntime-web's own files, from 127.0.0.1 too
    page.screenshot(path=artifacts / "web_explorer.png", full_page=True)
    assert (artifacts / "web_explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    view.assert_clean()


def test_page_without_isolation_runs_on_one_thread_and_says_so(open_page):
    view = open_page("vae", isolated=False)
    assert not view.page.evaluate("self.crossOriginIsolated")
    assert view.page.inner_text("#threads").startswith("1: the page is not cross-origin isolated")
    assert view.state()["frames"] >= 1
    view.assert_clean()


def test_pointer_on_the_pad_decodes_like_the_runtime(open_page, measured):
    view = open_page("vae")
    box = view.page.locator("#pad").bounding_box()
    view.page.mouse.move(box["x"] + 0.8 * box["width"], box["y"] + 0.3 * box["height"])
    view.idle()
    doc = view.state()
    a, b = doc["pad"]
    assert a == pytest.approx(0.6, abs=0.02) and b == pytest.approx(0.4, abs=0.02)
    spec = json.loads((view.site / "explorer.json").read_text())
    np.testing.assert_array_equal(np.asarray(doc["z"], np.float32), _pad_latent(spec, a, b))
    expected = load(view.bundle, backend="onnxruntime").decode(np.asarray([doc["z"]], np.float32))
    _check_image(view, doc, expected, measured, "decode vae (pad)")


@pytest.mark.parametrize("name", ["vae_conv_bernoulli", "biva", "ae"])
def test_a_given_latent_decodes_like_the_runtime(open_page, measured, name):
    """Bernoulli logits through the sigmoid; biva through its latent_decoder graph; an AE's deterministic code."""
    view = open_page(name)
    runtime = load(view.bundle, backend="onnxruntime")
    z = standard_normal_numpy((1, runtime.latent_dim), seed=3)
    view.page.evaluate("z => explorer.decodeLatent(z)", z[0].tolist())
    view.idle()
    doc = view.state()
    if runtime.likelihood == "bernoulli":
        assert 0 < doc["image"].min() and doc["image"].max() < 1
    _check_image(view, doc, runtime.decode(z), measured, f"decode {name}")


@pytest.mark.parametrize("name, seed", [("vae", 7), ("vae", 2**40 + 3), ("twostage", 11), ("biva", 5),
                                        ("vqvae", 2**33 + 1)])
def test_sample_with_a_seed_matches_runtime_sample(open_page, measured, name, seed):
    view = open_page(name)
    runtime = load(view.bundle, backend="onnxruntime")
    view.page.fill("#seed", str(seed))
    view.page.click("#sample")
    view.idle()
    doc = view.state()
    assert view.page.inner_text("#sample-note").startswith(f"seed {seed}:")
    if name == "vae":
        z = standard_normal_numpy((1, runtime.latent_dim), seed)[0]
        np.testing.assert_allclose(doc["z"], z, rtol=0, atol=NORMAL_ULPS * np.spacing(np.abs(z).max()))
    if name == "vqvae":
        assert doc["codes"] == runtime.sample_codes(1, seed).reshape(-1).tolist()
    _check_image(view, doc, runtime.sample(1, seed=seed), measured, f"sample {name}")


def test_vq_code_edit_changes_the_image_as_the_runtime_decodes_it(open_page, measured):
    view = open_page("vqvae")
    runtime = load(view.bundle, backend="onnxruntime")
    before = view.state()
    cell = view.page.locator(".code").nth(1)
    cell.click()
    view.idle()
    after = view.state()
    assert after["codes"][1] == (before["codes"][1] + 1) % runtime.num_codes
    assert after["codes"][:1] + after["codes"][2:] == before["codes"][:1] + before["codes"][2:]
    assert cell.inner_text() == str(after["codes"][1])
    decode = lambda codes: runtime.decode(np.asarray(codes, np.int64).reshape(1, *runtime.grid))  # noqa: E731
    # the image changes by more than the page and Python differ, and as the runtime's image changes
    change = after["image"] - before["image"]
    assert np.abs(change).max() > 2 * IMAGE_ATOL
    np.testing.assert_allclose(change, (decode(after["codes"]) - decode(before["codes"])).reshape(-1), rtol=0,
                               atol=2 * IMAGE_ATOL)
    _check_image(view, after, decode(after["codes"]), measured, "decode vqvae (codes)")


def test_what_the_page_does_not_support_is_said(open_page):
    view = open_page("ae")
    assert view.page.is_disabled("#sample")
    assert "no prior" in view.page.inner_text("#sample-note")
    assert "no sample" in view.page.inner_text("#supports")
    view.assert_clean()


def test_a_bad_seed_is_one_sentence_beside_the_button(open_page):
    view = open_page("vae")
    frames = view.state()["frames"]
    for text, message in [("-1", "seed must be in [0, 2**63), got -1"),
                          (str(2**63), f"seed must be in [0, 2**63), got {2**63}"),
                          ("", 'seed must be an integer in [0, 2**63), got ""'),
                          ("0x10", 'seed must be an integer in [0, 2**63), got "0x10"')]:
        view.page.fill("#seed", text)
        view.page.click("#sample")
        assert view.page.inner_text("#sample-note") == message
    assert view.state()["frames"] == frames
    view.assert_clean()


def test_js_philox_matches_python_words_uniforms_and_normals(open_page, measured):
    view = open_page("vae")
    n, worst = 40, 0.0
    for seed in SEEDS:
        for offset in OFFSETS:
            doc = view.page.evaluate("""([seed, offset, n]) => {
                const p = explorer.philox;
                return {words: p.randint4x(seed, offset, n), uniform: Array.from(p.uniform(seed, offset, n)),
                        normal: Array.from(p.standardNormal(seed, offset, n))};
            }""", [str(seed), str(offset), n])
            counters = philox.counters(offset, n)
            words = np.stack(philox.randint4x(seed, counters), 1)
            np.testing.assert_array_equal(np.asarray(doc["words"], np.uint64), words, err_msg=f"{seed=} {offset=}")
            uniform = philox.uint_to_uniform_float(philox.randint(seed, counters))
            np.testing.assert_array_equal(np.asarray(doc["uniform"], np.float32), uniform)
            normal = standard_normal_numpy(n, seed, offset)
            ulps = np.abs(np.asarray(doc["normal"], np.float32) - normal) / np.spacing(np.abs(normal))
            worst = max(worst, float(ulps.max()))
    measured["philox normals (float32 ulps)"] = worst
    assert worst <= NORMAL_ULPS
    view.assert_clean()
