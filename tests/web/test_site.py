"""`vaedeploy web` without a browser: what it writes, what it refuses, how it serves. A stand-in page replaces the
npm build here, so these run wherever the Python package does."""
from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from vaedeploy import load
from vaedeploy.bundle import sha256_file
from vaedeploy.cli import main
from vaedeploy.data import load_dataset
from vaedeploy.owned import MARKER
from vaedeploy.web import PageNotBuilt, WebError, make_server, write_site
from vaedeploy.web import site as site_module


@pytest.fixture
def fake_page(tmp_path, monkeypatch):
    page = tmp_path / "page"
    (page / "ort").mkdir(parents=True)
    files = {"index.html": "<!doctype html>", "app.js": "", "ort/ort-wasm-simd-threaded.jsep.wasm": "\0asm"}
    for name, text in files.items():
        (page / name).write_text(text)
    (page / "build.json").write_text(json.dumps({"onnxruntime-web": "test", "files": sorted(files)}))
    monkeypatch.setattr(site_module, "PAGE", page)
    return page


def _bundle_without_data(exported, tmp_path, name="vae"):
    """A copy of an exported bundle whose manifest names no training data (as bundles from before it did)."""
    copy = shutil.copytree(exported(name)[1], tmp_path / f"{name}_copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["input"].pop("data", None)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, manifest


def test_writes_page_bundle_graphs_and_the_files_it_lists(exported, tmp_path, fake_page):
    _, bundle = exported("vqvae")
    out = write_site(bundle, tmp_path / "site", data="digits")
    spec = json.loads((out / "explorer.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MARKER}
    assert written == set(spec["files"])
    assert written <= set(json.loads((out / MARKER).read_text())["entries"])  # vaedeploy's marker lists them too
    assert {"index.html", "app.js", "ort/ort-wasm-simd-threaded.jsep.wasm", "explorer.json"} <= written
    # the fp32 graphs (no fp16 variants, no weights) and the codebook, byte for byte the bundle's
    copied = {n.removeprefix("bundle/") for n in written if n.startswith("bundle/")} - {"manifest.json"}
    assert copied == {"codebook.npy", "decoder.onnx", "encoder.onnx", "prior.onnx"}
    assert all(sha256_file(out / "bundle" / n) == manifest["files"][n] for n in copied)
    first_image = load_dataset("digits").evaluation_inputs("train")[:1]
    assert spec["codes"] == load(bundle, backend="onnxruntime").encode(first_image)[0].reshape(-1).tolist()
    assert "pad" not in spec


def test_pad_axes_are_the_principal_directions_of_the_encoded_training_set(exported, tmp_path, fake_page):
    _, bundle = exported("vae")
    pad = json.loads((write_site(bundle, tmp_path / "site", data="digits") / "explorer.json").read_text())["pad"]
    means = load(bundle, backend="onnxruntime").encode_params(load_dataset("digits").evaluation_inputs("train"))[0]
    means = means.astype(np.float64)
    axes = np.asarray(pad["axes"])
    np.testing.assert_allclose(pad["center"], means.mean(0), atol=1e-9)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-9)
    # the first axis holds the largest variance of any direction, the second the largest orthogonal to it
    _, singular, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(axes @ vt[:2].T), np.eye(2), atol=1e-6)
    np.testing.assert_allclose(pad["span"], 3 * singular[:2] / np.sqrt(len(means) - 1), rtol=1e-9)
    assert len(pad["points"]) == 500 and all(p[2] in range(10) for p in pad["points"])


def test_data_defaults_to_what_the_manifest_names_and_is_needed_without_it(exported, tmp_path, fake_page):
    copy, manifest = _bundle_without_data(exported, tmp_path)
    with pytest.raises(WebError, match="needs the encoded training data; expected --data"):
        write_site(copy, tmp_path / "site")
    assert not (tmp_path / "site").exists()
    manifest["input"]["data"] = {"name": "digits", "preprocessing": "dequantize", "split_seed": 0,
                                 "fractions": [0.1, 0.1]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    spec = json.loads((write_site(copy, tmp_path / "site") / "explorer.json").read_text())
    assert spec["data"]["name"] == "digits" and "1437 encoded training images of digits" in spec["pad"]["source"]


def test_refuses_data_of_another_image_shape(exported, tmp_path, fake_page):
    with pytest.raises(WebError, match=r"has 1×28×28 images; the bundle .* expects 1×8×8"):
        write_site(exported("vae")[1], tmp_path / "site", data="mnist5k")


def test_never_deletes_what_it_did_not_write(exported, tmp_path, fake_page):
    _, bundle = exported("vae")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(WebError, match="not a previous `vaedeploy web` output"):
        write_site(bundle, foreign, data="digits")
    assert (foreign / "todo.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    out = write_site(bundle, empty, data="digits")
    first = (out / "explorer.json").read_text()
    write_site(bundle, out, data="digits")  # a previous output is replaced
    assert json.loads((out / "explorer.json").read_text())["files"] == json.loads(first)["files"]
    (out / "bundle" / "added.txt").write_text("mine too")
    with pytest.raises(WebError, match=r"holds files that are not part of its page \(bundle/added.txt\)"):
        write_site(bundle, out, data="digits")
    assert (out / "bundle" / "added.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


def test_a_rerun_refuses_an_empty_folder_the_user_added(exported, tmp_path, fake_page, capsys):
    """Issue 25, case 3: even an empty folder a user made in an earlier output is named, and kept."""
    bundle, out = exported("vae")[1], tmp_path / "site"
    write_site(bundle, out, data="digits")
    (out / "drafts").mkdir()
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert main(["web", str(bundle), "--out", str(out), "--data", "digits"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds files that are not part of its page (drafts/)" in error
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before


def test_an_output_of_an_older_version_is_known_by_its_explorer_json(exported, tmp_path, fake_page):
    bundle, out = exported("vae")[1], tmp_path / "site"
    write_site(bundle, out, data="digits")
    (out / MARKER).unlink()  # as pages were written before the marker
    write_site(bundle, out, data="digits")
    assert (out / MARKER).is_file()
    (out / MARKER).unlink()
    (out / "bundle" / "extra.txt").write_text("mine")
    with pytest.raises(WebError, match=r"not part of its page \(bundle/extra.txt\)"):
        write_site(bundle, out, data="digits")


def test_a_full_disk_names_the_output_not_the_installed_page(exported, tmp_path, fake_page, monkeypatch, capsys):
    """Issue 25, case 4: shutil.copyfile reports ENOSPC with the source's name (its sendfile path does); the
    sentence names the output file being written."""
    wasm, real_copyfile = "ort/ort-wasm-simd-threaded.jsep.wasm", shutil.copyfile

    def full_disk(source, target):
        if str(source).endswith(".wasm"):
            raise OSError(28, "No space left on device", str(source), None, str(target))
        return real_copyfile(source, target)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    out = tmp_path / "site"
    assert main(["web", str(exported("vae")[1]), "--out", str(out), "--data", "digits"]) == 2
    error = capsys.readouterr().err
    assert error == f"error: cannot write {out / wasm}: No space left on device\n"
    assert str(fake_page) not in error and not out.exists() and [p.name for p in tmp_path.iterdir()] == ["page"]


def test_a_missing_page_build_is_one_sentence(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(site_module, "PAGE", tmp_path / "nowhere")
    with pytest.raises(PageNotBuilt, match=r"not built .*; run `make web`"):
        write_site(exported("vae")[1], tmp_path / "site", data="digits")


def test_cli_errors_are_one_line(tmp_path, capsys, fake_page):
    assert main(["web", str(tmp_path / "missing"), "--out", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "not a bundle directory" in err


def test_cli_writes_the_explorer(exported, tmp_path, capsys, fake_page):
    assert main(["web", str(exported("vae")[1]), "--out", str(tmp_path / "site"), "--data", "digits"]) == 0
    assert "wrote the latent explorer" in capsys.readouterr().out
    assert (tmp_path / "site" / "bundle" / "decoder.onnx").is_file()


def test_server_binds_loopback_isolates_and_lists_nothing(exported, tmp_path, fake_page):
    out = write_site(exported("vae")[1], tmp_path / "site", data="digits")
    server = make_server(out, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    base = f"http://127.0.0.1:{port}/"
    try:
        assert host == "127.0.0.1"
        with urllib.request.urlopen(base) as response:
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(base + "ort/ort-wasm-simd-threaded.jsep.wasm") as response:
            assert response.headers["Content-Type"] == "application/wasm"
        for url, data, status in [(base + "bundle/", None, 404), (base, b"{}", 501), (base + "../x", None, 404)]:
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(urllib.request.Request(url, data=data))
            assert caught.value.code == status
        with pytest.raises(WebError, match=f"127.0.0.1:{port}: cannot listen"):
            make_server(out, port=port)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(WebError, match="no explorer.json"):
        make_server(tmp_path, port=0)
