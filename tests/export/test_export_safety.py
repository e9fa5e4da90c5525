"""Export writes only what it owns, replaces a bundle in one step, and refuses modules the runtime would get wrong."""
import json
import os
import shutil
import threading

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from vaedeploy.export import ValidationError, export_bundle, export_run

from vaedeploy import load
from vaedeploy.bundle import BundleError, load_bundle
from vaedeploy.errors import ConfigError
from vaedeploy.io import replace_directory
from vaedeploy.owned import MARKER


def ae_run(exported):
    return exported("ae")[0]


def export_ae(run, out, max_batch=4, **kwargs):
    return export_run(run, out, exporter="legacy", max_batch=max_batch, **kwargs)


def tree(path):
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_folder_of_the_users_files_a_file_and_a_run_are_never_replaced(exported, tmp_path):
    run = ae_run(exported)
    users = tmp_path / "photos"
    users.mkdir()
    (users / "holiday.jpg").write_bytes(b"\xff\xd8 one of a kind")
    single = tmp_path / "notes.txt"
    single.write_text("mine")
    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    before = {p: tree(p) for p in (users, run_copy)}
    for target, message in [(users, "is not a vaedeploy bundle"), (single, "is a file, not a bundle directory"),
                            (run_copy, "is a training run")]:
        for force in (False, True):
            with pytest.raises(BundleError, match=message):
                export_ae(run_copy, target, force=force)
    assert {p: tree(p) for p in (users, run_copy)} == before and single.read_text() == "mine"


def test_a_bundle_holding_a_users_file_or_a_damaged_manifest(exported, tmp_path):
    run, out = ae_run(exported), tmp_path / "bundle"
    export_ae(run, out)
    assert (out / MARKER).is_file()
    (out / "README.txt").write_text("my notes about this model")
    with pytest.raises(BundleError, match=r"holds files that are not part of its bundle \(README.txt\)"):
        export_ae(run, out, force=True)
    (out / "README.txt").unlink()
    (out / "manifest.json").write_text("{ half a manifest")
    export_ae(run, out, max_batch=8)  # the marker proves it ours: a damaged manifest needs no --force
    assert load_bundle(out).max_batch == 8
    empty = tmp_path / "empty"
    empty.mkdir()
    export_ae(run, empty)
    assert load_bundle(empty).kind == "ae"


def test_a_bundle_of_an_older_version_is_known_by_its_valid_manifest(exported, tmp_path):
    run, out = ae_run(exported), tmp_path / "bundle"
    export_ae(run, out)
    (out / MARKER).unlink()  # as bundles were written before the marker
    export_ae(run, out, max_batch=8)
    assert load_bundle(out).max_batch == 8 and (out / MARKER).is_file()
    (out / MARKER).unlink()
    (out / "README.txt").write_text("my notes")
    with pytest.raises(BundleError, match=r"not part of its bundle \(README.txt\)"):
        export_ae(run, out, force=True)
    (out / "README.txt").unlink()
    (out / "manifest.json").write_text("{ half a manifest")
    with pytest.raises(BundleError, match="cannot be read and it carries no .vaedeploy-owned.json.*pass --force"):
        export_ae(run, out)
    with pytest.raises(BundleError, match="it cannot for model.safetensors, validation.json, which would be lost"):
        export_ae(run, out, force=True)  # the graphs carry vaedeploy's metadata; the weights and report do not
    for name in ("model.safetensors", "validation.json"):
        (out / name).unlink()
    export_ae(run, out, max_batch=2, force=True)
    assert load_bundle(out).max_batch == 2


def test_a_users_folder_whose_manifest_has_a_files_object_is_not_a_bundle(exported, tmp_path):
    """Issue 25, case 1: ownership is proven by vaedeploy's marker, never by the shape of someone's JSON."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my site</h1>")
    (site / "data.csv").write_text("a,b\n1,2\n")
    (site / "manifest.json").write_text(json.dumps({"name": "my app", "files": {"index.html": "0" * 64}}))
    before = tree(site)
    for force in (False, True):
        with pytest.raises(BundleError, match=r"is not a vaedeploy bundle \(it holds data.csv, index.html, "
                                              r"manifest.json\)"):
            export_ae(ae_run(exported), site, force=force)
    assert tree(site) == before


def test_force_never_deletes_graphs_and_arrays_vaedeploy_did_not_write(exported, tmp_path):
    """Issue 25, case 2: a folder with an unreadable manifest.json and the user's own .onnx and .npy files."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "manifest.json").write_text("{ not json")
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "resnet", [], [])), models / "resnet.onnx")
    np.save(models / "embeddings.npy", np.arange(6.0))
    before = tree(models)
    with pytest.raises(BundleError, match="pass --force"):
        export_ae(ae_run(exported), models)
    with pytest.raises(BundleError, match="it cannot for embeddings.npy, resnet.onnx, which would be lost"):
        export_ae(ae_run(exported), models, force=True)
    assert tree(models) == before


def test_a_reader_never_sees_the_bundle_missing_while_it_is_replaced(tmp_path):
    target, missing, stop = tmp_path / "b", [], threading.Event()
    target.mkdir()
    (target / "manifest.json").write_text("0")

    def read():
        while not stop.is_set():
            if not (target / "manifest.json").exists():
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(300):
        new = tmp_path / f"new{i}"
        new.mkdir()
        (new / "manifest.json").write_text(str(i))
        old = replace_directory(new, target, backup=tmp_path / f"backup{i}")
        shutil.rmtree(old)
    stop.set()
    reader.join()
    assert not missing and (target / "manifest.json").read_text() == "299"


def test_leftovers_are_cleaned_only_when_they_are_ours_and_their_export_is_gone(exported, tmp_path):
    run, out = ae_run(exported), tmp_path / "bundle"
    export_ae(run, out)
    pids = (2**22 + 7, os.getppid(), 2**22 + 9)  # past Linux's largest pid; the parent, alive; past again
    dead, alive, unmarked = (tmp_path / f".bundle.export-{pid}-ab12cd34.tmp" for pid in pids)
    for leftover in (dead, alive, unmarked):
        leftover.mkdir()
        (leftover / "encoder.onnx").write_bytes(b"partial")
    for leftover in (dead, alive):  # a staging directory's first file
        (leftover / MARKER).write_text(json.dumps({"format": "vaedeploy-owned", "version": 1, "tool": "export",
                                                   "complete": False, "entries": []}))
    export_ae(run, out)
    assert not dead.exists() and alive.exists() and (unmarked / "encoder.onnx").exists()  # a name proves nothing


def test_a_failed_validation_never_replaces_something_else_at_out_failed(exported, tmp_path, monkeypatch):
    from vaedeploy.export import validate

    run, out = ae_run(exported), tmp_path / "bundle"
    (tmp_path / "bundle.failed").mkdir()
    (tmp_path / "bundle.failed" / "keep.txt").write_text("mine")
    monkeypatch.setitem(validate.TOLERANCES, "fp32", {"max_abs": -1.0, "rel_l2": -1.0})
    with pytest.raises(ValidationError, match=r"report in .*bundle.failed-[0-9a-f]{8}/validation.json"):
        export_ae(run, out)
    assert (tmp_path / "bundle.failed" / "keep.txt").read_text() == "mine" and not out.exists()


def test_the_manifest_states_the_opset_the_graph_declares(tmp_path):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(6, 2))
    decoder = nn.Sequential(nn.Linear(2, 6), nn.Unflatten(1, (2, 3)))
    out = export_bundle(encoder, decoder, latent="deterministic", example=torch.rand(4, 2, 3), out=tmp_path / "b",
                        max_batch=4, opset=20)
    for variants in load_bundle(out).manifest["graphs"].values():
        entry = variants["fp32"]
        declared = {o.domain: o.version for o in onnx.load(str(out / entry["file"])).opset_import}
        assert entry["opset"] == declared.get("", declared.get("ai.onnx")) == 20


def test_a_users_encoder_that_calls_tensor_mean_exports_and_runs(tmp_path):
    class CentredEncoder(nn.Module):  # the exporter names an inner value "mean", the name of our output
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))

        def forward(self, x):
            mean, logvar = self.net(x).chunk(2, dim=1)
            return mean - mean.mean(dim=1, keepdim=True), logvar

    encoder, decoder = CentredEncoder(), nn.Sequential(nn.Linear(3, 12), nn.Sigmoid(), nn.Unflatten(1, (3, 4)))
    out = export_bundle(encoder, decoder, latent="gaussian", example=torch.rand(10, 3, 4), out=tmp_path / "b",
                        max_batch=8)
    x = np.random.default_rng(0).random((5, 3, 4), dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in encoder(torch.from_numpy(x))]
    for got, want in zip(load(out).encode_params(x), expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_module_that_mixes_the_rows_of_a_batch_fails_validation(tmp_path):
    class BatchCentred(nn.Module):  # x - x.mean(0): a row's code depends on the other rows
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

        def forward(self, x):
            h = x - x.mean(0, keepdim=True)
            return self.net(h)

    decoder = nn.Sequential(nn.Linear(3, 12), nn.Unflatten(1, (3, 4)))
    with pytest.raises(ValidationError, match="encoder fp32 on data, first row apart at batch 8: rows depend on the "
                                              "rest of the batch"):
        export_bundle(BatchCentred(), decoder, latent="deterministic", example=torch.rand(10, 3, 4),
                      out=tmp_path / "b", max_batch=8, exporter="legacy")
    assert not (tmp_path / "b").exists()


def test_a_decoder_whose_output_is_not_shaped_like_the_images_is_refused(tmp_path):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    flat_decoder = nn.Linear(8, 64)  # N×64 for 1×8×8 images
    with pytest.raises(ConfigError, match=r"shaped like its images, N×1×8×8; got shapes \['2×64'\] for N=2"):
        export_bundle(encoder, flat_decoder, latent="deterministic", example=torch.rand(4, 1, 8, 8),
                      out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_manifest_records_where_the_data_came_from(exported):
    manifest = json.loads((exported("vae")[1] / "manifest.json").read_text())
    assert manifest["input"]["data"] == {"name": "digits", "preprocessing": "dequantize", "split_seed": 0,
                                         "fractions": [0.1, 0.1]}
