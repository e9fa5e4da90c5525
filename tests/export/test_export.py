import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from vaedeploy.export import ExportError, export_bundle, export_graph, export_run
from vaedeploy.export import validate as validate_module
from vaedeploy.export.onnx_export import RANDOM_OPS
from vaedeploy.export.validate import validate_graphs

from vaedeploy import load
from vaedeploy.bundle import FORMAT_VERSION, load_bundle, sha256_file
from vaedeploy.models.spec import GraphSpec
from vaedeploy.train import load_run

BUNDLE_EXPORTER = {"vae": "dynamo", "vae_conv_bernoulli": "dynamo", "ae": "legacy"}


@pytest.mark.parametrize("name", ["vae", "vae_conv_bernoulli", "ae"])
def test_every_kind_exports_a_checked_validated_bundle(exported, name):
    run, bundle = exported(name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    _, config = load_run(run)
    assert manifest["format_version"] == FORMAT_VERSION and manifest["kind"] == config["kind"]
    assert manifest["validation"]["passed"] and manifest["validation"]["batch_sizes"] == [1, 2, 7, 64]
    for file, digest in manifest["files"].items():
        assert sha256_file(bundle / file) == digest
    assert {"encoder.onnx", "decoder.onnx", "model.safetensors", "validation.json"} <= set(manifest["files"])
    report = json.loads((bundle / "validation.json").read_text())
    labels = {(c["graph"], c["inputs"]) for c in report["checks"]}
    assert labels == {("encoder", "data"), ("decoder", "encodings"), ("decoder", "normal")}
    for role, variants in manifest["graphs"].items():
        for precision, entry in variants.items():
            model = onnx.load(str(bundle / entry["file"]))
            onnx.checker.check_model(model, full_check=True)
            assert entry["opset"] == 18 and entry["exporter"] == BUNDLE_EXPORTER[name]
            assert all(spec["shape"][0] == "batch" for spec in entry["inputs"] + entry["outputs"])
            assert not {n.op_type for n in model.graph.node} & RANDOM_OPS
            props = {p.key: p.value for p in model.metadata_props}
            assert props["kind"] == manifest["kind"] and props["role"] == role and props["precision"] == precision
            assert json.loads(props["latent"]) == manifest["latent"]
            # the same facts ONNX Runtime users read
            meta = ort.InferenceSession(str(bundle / entry["file"])).get_modelmeta().custom_metadata_map
            assert meta["exporter"] == entry["exporter"]


def test_fp16_graphs_are_half_precision_inside_and_validated_on_their_own(exported):
    _, bundle = exported("vae")
    manifest = json.loads((bundle / "manifest.json").read_text())
    model = onnx.load(str(bundle / manifest["graphs"]["decoder"]["fp16"]["file"]))
    weights = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in model.graph.initializer}
    assert np.dtype(np.float16) in weights and np.dtype(np.float32) not in weights
    report = json.loads((bundle / "validation.json").read_text())
    assert {c["precision"] for c in report["checks"]} == {"fp32", "fp16"}
    fp16 = manifest["validation"]["worst"]["decoder.fp16.mean"]
    assert 0 < fp16["rel_l2"] <= validate_module.TOLERANCES["fp16"]["rel_l2"]


def test_validation_fails_hard_on_a_graph_that_disagrees_with_pytorch(exported, tmp_path):
    run, bundle = exported("ae")
    model, _ = load_run(run)
    class Perturbed(nn.Module):  # the exported graph is right; its reference is off by 0.01 in the mean
        def forward(self, z):
            mean, logvar = model.decoder(z)
            return mean + 1e-2, logvar

    z = np.random.default_rng(0).standard_normal((64, 5), dtype=np.float32)
    case = GraphSpec("decoder", Perturbed(), ["z"], {"normal": [z]}, ["mean", "logvar"])
    report = validate_graphs([case], {"decoder": {"fp32": "decoder.onnx"}}, bundle, 64)
    assert not report["passed"] and len(report["failures"]) == 4  # batch 1, 2, 7, 64
    assert "decoder fp32 on normal at batch 1: mean max_abs=0.01" in report["failures"][0]
    assert all(c["outputs"]["logvar"]["passed"] for c in report["checks"])


def test_the_users_own_modules_export_validate_and_run(tmp_path):
    class Encoder(nn.Module):  # not a vaedeploy model: x (N×3×4) → (mean, logvar)
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))

        def forward(self, x):
            return self.net(x).chunk(2, dim=1)

    encoder, decoder = Encoder(), nn.Sequential(nn.Linear(3, 12), nn.Sigmoid(), nn.Unflatten(1, (3, 4)))
    out = export_bundle(encoder, decoder, latent="gaussian", example=torch.rand(10, 3, 4), out=tmp_path / "mine",
                        max_batch=16)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "custom" and manifest["latent"] == {"type": "gaussian", "shape": [3]}
    assert manifest["model"] is None and manifest["validation"]["batch_sizes"] == [1, 2, 7, 16]
    rt = load(out, backend="onnxruntime")
    z = np.random.default_rng(1).standard_normal((40, 3), dtype=np.float32)  # above max_batch: split
    with torch.no_grad():
        expected = decoder(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(rt.decode(z), expected, atol=1e-6)
    with pytest.raises(ValueError, match="torch backend needs the model's weights"):
        load(out, backend="torch")


class ConvEncoder(nn.Module):
    """A user's fully convolutional encoder: x N×1×H×W → (mean, logvar), each N×2×H/2×W/2."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):
        return self.net(x).chunk(2, dim=1)


def conv_decoder() -> nn.Module:
    """z N×2×h×w → images N×1×2h×2w."""
    return nn.Sequential(nn.ConvTranspose2d(2, 8, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 3, padding=1),
                         nn.Sigmoid())


def test_the_users_own_conv_modules_export_a_bundle_of_any_image_size(tmp_path):
    """Spatial latents of the user's own modules: a format-2 bundle with latent.shape [c, h, w], downsample, the size
    range and a scaling; validated at the range's corners; the runtime runs it at two other sizes as the modules do."""
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder(), conv_decoder()
    scaling = {"scaling_factor": 0.5, "shift_factor": 0.1}
    out = export_bundle(encoder, decoder, latent={"type": "gaussian", "scaling": scaling},
                        example=torch.rand(4, 1, 8, 12), out=tmp_path / "conv", max_batch=8,
                        size={"min": [4, 4], "max": [16, 16], "multiple": 4})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["latent"] == {"type": "gaussian", "scaling": scaling, "shape": [2, 4, 6], "downsample": 2}
    assert manifest["input"]["shape"] == [1, 8, 12]
    assert manifest["input"]["size"] == {"min": [4, 4], "max": [16, 16], "multiple": 4}
    assert manifest["validation"]["sizes"] == [[8, 12], [4, 4], [16, 16], [4, 16], [16, 4]]
    assert load_bundle(out).graph("encoder")["inputs"][0]["shape"] == ["batch", 1, "height", "width"]
    rt = load(out, backend="onnxruntime")
    for h, w in [(12, 16), (16, 4)]:
        x = torch.rand(3, 1, h, w)
        z = np.random.default_rng(h).standard_normal((3, 2, h // 2, w // 2), dtype=np.float32)
        with torch.no_grad():
            mean, logvar = encoder(x)
            image = decoder(torch.from_numpy(z) / 0.5 + 0.1)  # decode takes encode's scaled latents
        got = rt.encode_params(x.numpy())
        np.testing.assert_allclose(got[0], mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(got[1], logvar.numpy(), atol=1e-5)
        np.testing.assert_allclose(rt.decode(z), image.numpy(), atol=1e-5)
        assert rt.sample(2, seed=0, size=(h, w)).shape == (2, 1, h, w)
    rt.close()


def test_spatial_latents_without_a_size_range_make_a_bundle_of_one_size(tmp_path):
    out = export_bundle(ConvEncoder(), conv_decoder(), latent="gaussian", example=torch.rand(4, 1, 8, 8),
                        out=tmp_path / "fixed", max_batch=4)
    bundle = load_bundle(out)
    assert bundle.latent == {"type": "gaussian", "shape": [2, 4, 4], "downsample": 2} and bundle.sizes is None
    assert bundle.graph("decoder")["inputs"][0]["shape"] == ["batch", 2, 4, 4]


def vector_encoder() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


@pytest.mark.parametrize("encoder, latent, example, size, expected", [
    pytest.param(vector_encoder, "deterministic", (4, 1, 8, 8), {"min": [8, 8], "max": [16, 16], "multiple": 8},
                 r"^size: a range of image sizes needs spatial latents \(an encoder returning N×c×h×w\), got "
                 r"latents of shape \[4\]$", id="a size range for vector latents"),
    pytest.param(ConvEncoder, "gaussian", (4, 1, 6, 6), {"min": [3, 3], "max": [9, 9], "multiple": 3},
                 r"^size: expected \{'min': \[H, W\], 'max': \[H, W\], 'multiple': m\} with m a multiple of the "
                 r"latent's downsampling factor 2, .* got \{'min': \[3, 3\]", id="a multiple not one of the factor"),
    pytest.param(ConvEncoder, "gaussian", (4, 1, 8, 8), {"min": [16, 16], "max": [32, 32], "multiple": 4},
                 r"^size: expected .* the example's 8×8 between them, got \{'min': \[16, 16\]",
                 id="the example's size outside the range"),
    pytest.param(ConvEncoder, "gaussian", (4, 1, 9, 12), None,
                 r"^spatial latents must be the images' H×W over one integer factor, got latents 2×4×6 for images "
                 r"1×9×12$", id="latents not the images over one integer factor"),
])
def test_a_spatial_export_that_cannot_work_is_refused_in_one_sentence_before_exporting(tmp_path, encoder, latent,
                                                                                       example, size, expected):
    with pytest.raises(ValueError, match=expected):
        export_bundle(encoder(), conv_decoder(), latent=latent, example=torch.rand(*example), out=tmp_path / "b",
                      size=size)
    assert not (tmp_path / "b").exists()


def test_a_kind_with_more_graphs_and_arrays_plugs_into_the_same_bundle(tmp_path):
    # what a VQ or hierarchical kind adds: one more graph (here a "prior" over z) and an array beside the graphs
    encoder, prior = nn.Sequential(nn.Flatten(), nn.Linear(6, 2)), nn.Linear(2, 4)
    decoder = nn.Sequential(nn.Linear(2, 6), nn.Unflatten(1, (2, 3)))  # images like its 2×3 inputs
    z = np.random.default_rng(0).standard_normal((8, 2), dtype=np.float32)
    codebook = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = export_bundle(encoder, decoder, latent="deterministic", example=torch.rand(5, 2, 3), out=tmp_path / "b",
                        max_batch=8, extra_graphs=(GraphSpec("prior", prior, ["z"], {"normal": [z]}, ["logits"]),),
                        extra_arrays={"codebook": codebook})
    bundle = load_bundle(out)
    assert bundle.graph("prior")["outputs"][0]["name"] == "logits"
    assert {c["graph"] for c in json.loads((out / "validation.json").read_text())["checks"]} == {
        "encoder", "decoder", "prior"}
    np.testing.assert_array_equal(bundle.array("codebook"), codebook)
    with pytest.raises(ValueError, match="does not match its sha256"):
        np.save(out / "codebook.npy", codebook + 1)
        load_bundle(out)


def test_bad_modules_and_examples_get_clear_errors(tmp_path):
    class Noisy(nn.Module):
        def forward(self, z):
            return z + torch.randn_like(z)

    with pytest.raises(ExportError, match="random operations"):
        export_graph(Noisy(), (torch.zeros(2, 3),), ["z"], ["x"], tmp_path / "noisy.onnx", exporter="legacy")
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_graph(nn.Linear(3, 3), (torch.zeros(1, 3),), ["z"], ["x"], tmp_path / "one.onnx")
    with pytest.raises(ValueError, match="gaussian encoder must return 2 tensor"):
        export_bundle(nn.Linear(3, 2), nn.Linear(2, 3), latent="gaussian", example=torch.zeros(4, 3),
                      out=tmp_path / "b")
    with pytest.raises(ValueError, match="latent type must be one of"):
        export_bundle(nn.Linear(3, 2), nn.Linear(2, 3), latent="vq", example=torch.zeros(4, 3), out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_re_export_replaces_a_bundle_atomically(exported, tmp_path):
    run, _ = exported("ae")
    out = tmp_path / "bundle"
    export_run(run, out, exporter="legacy", max_batch=4)
    first = load_bundle(out).manifest["files"]
    export_run(run, out, exporter="legacy", max_batch=8)
    assert load_bundle(out).manifest["max_batch"] == 8 and load_bundle(out).manifest["files"] != first
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"], "a temporary directory was left behind"
