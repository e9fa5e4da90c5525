"""The bundle schema's cross-checks (``vaedeploy.bundle.check_manifest``) on manifests written here: a valid manifest
of each latent type passes (format 2, and format 1 upgraded in memory), and each cross-check violated alone is refused
with a ``BundleError`` naming the field."""
import copy
import re

import pytest

from vaedeploy.bundle import BundleError, check_manifest

IMAGE = [1, 4, 4]


def _spec(name, dims, dtype="float32"):
    return {"name": name, "shape": ["batch", *dims], "dtype": dtype}


def _graph(file, inputs, outputs, fp16=False):
    entry = {"file": file, "inputs": [_spec(*i) for i in inputs], "outputs": [_spec(*o) for o in outputs]}
    variants = {"fp32": entry}
    if fp16:
        variants["fp16"] = {**copy.deepcopy(entry), "file": file.replace(".onnx", ".fp16.onnx")}
    return variants


def _manifest(latent: dict, graphs: dict, likelihood=("x",), arrays=None) -> dict:
    files = {v["file"]: "0" * 64 for variants in graphs.values() for v in variants.values()}
    files.update({name: "1" * 64 for name in (arrays or {}).values()})
    return {"format_version": 2, "kind": "test", "input": {"shape": IMAGE}, "latent": latent,
            "likelihood": {"kind": "gaussian" if len(likelihood) == 2 else "bernoulli", "outputs": list(likelihood)},
            "graphs": graphs, "files": files, "max_batch": 64, "validation": {"passed": True},
            "arrays": arrays or {}}


def gaussian():
    return _manifest({"type": "gaussian", "shape": [3]}, {
        "encoder": _graph("encoder.onnx", [("x", IMAGE)], [("mean", [3]), ("logvar", [3])], fp16=True),
        "decoder": _graph("decoder.onnx", [("z", [3])], [("x", IMAGE)], fp16=True)})


def two_stage():
    m = gaussian()
    m["latent"]["prior"] = {"type": "two_stage", "dim": 2, "graph": "stage2"}
    m["graphs"]["stage2"] = _graph("stage2.onnx", [("u", [2])], [("mean", [3]), ("log_gamma", [3])])
    m["files"]["stage2.onnx"] = "0" * 64
    return m


def vq():
    return _manifest(
        {"type": "vq", "shape": [2, 2, 2], "num_codes": 8, "codebook": "codebook",
         "prior": {"type": "autoregressive", "length": 4, "start_token": 8, "graph": "prior"}},
        {"encoder": _graph("encoder.onnx", [("x", IMAGE)], [("z_e", [2, 2, 2])]),
         "decoder": _graph("decoder.onnx", [("z_q", [2, 2, 2])], [("x", IMAGE)]),
         "prior": _graph("prior.onnx", [("tokens", [4], "int64")], [("logits", [4, 8])])},
        arrays={"codebook": "codebook.npy"})


def hierarchical():
    layers = [{"dim": 2, "noise": "eps1", "z": "z1", "mean": "mean1", "logvar": "logvar1"},
              {"dim": 3, "noise": "eps2", "z": "z2", "mean": "mean2", "logvar": "logvar2"}]
    outputs = [(layer[k], [layer["dim"]]) for k in ("z", "mean", "logvar") for layer in layers]
    noise = [(layer["noise"], [layer["dim"]]) for layer in layers]
    return _manifest(
        {"type": "hierarchical", "shape": [5], "layers": layers,
         "graphs": {"encode": "encoder", "decode": "generate", "sample": "ancestral"}},
        {"encoder": _graph("encoder.onnx", [("x", IMAGE), *noise], outputs),
         "generate": _graph("generate.onnx", [("z", [5])], [("x", IMAGE), ("x_logvar", IMAGE)]),
         "ancestral": _graph("ancestral.onnx", noise, [("x", IMAGE), ("x_logvar", IMAGE)])},
        likelihood=("x", "x_logvar"))


SPATIAL = ["height", "width"]
LATENT = ["latent_height", "latent_width"]


def spatial():
    """A spatial Gaussian latent (4×H/4×W/4 of 1×H×W images, any H, W multiple of 4 in [8, 64]) with a scaling."""
    m = _manifest({"type": "gaussian", "shape": [4, 2, 3], "downsample": 4,
                   "scaling": {"scaling_factor": 0.5, "shift_factor": -0.1}}, {
        "encoder": _graph("encoder.onnx", [("x", [1, *SPATIAL])], [("mean", [4, *LATENT]), ("logvar", [4, *LATENT])]),
        "decoder": _graph("decoder.onnx", [("z", [4, *LATENT])], [("x", [1, *SPATIAL])])})
    m["input"] = {"shape": [1, 8, 12], "size": {"min": [8, 8], "max": [64, 64], "multiple": 4}}
    return m


def fixed_spatial():
    """A spatial latent of a bundle with one image size: every axis a number."""
    m = _manifest({"type": "deterministic", "shape": [2, 2, 2], "downsample": 2}, {
        "encoder": _graph("encoder.onnx", [("x", IMAGE)], [("z", [2, 2, 2])]),
        "decoder": _graph("decoder.onnx", [("z", [2, 2, 2])], [("x", IMAGE)])})
    return m


@pytest.mark.parametrize("make", [gaussian, two_stage, vq, hierarchical, spatial, fixed_spatial])
def test_a_valid_manifest_of_each_latent_type_passes(make):
    assert check_manifest(make(), "manifest.json") == make()


def _format_1(m: dict) -> dict:
    """``m`` as format 1 wrote it: ``latent.dim`` (and a VQ latent's ``grid``) in place of ``latent.shape``."""
    latent = m["latent"]
    shape = latent.pop("shape")
    latent["dim"] = shape[0]
    if latent["type"] == "vq":
        latent["grid"] = shape[1:]
    m["format_version"] = 1
    return m


@pytest.mark.parametrize("make", [gaussian, two_stage, vq, hierarchical])
def test_a_format_1_manifest_of_each_latent_type_is_read_as_format_2(make):
    assert check_manifest(_format_1(make()), "manifest.json") == make()


def test_a_format_1_manifest_without_its_dim_is_refused_naming_it():
    manifest = _format_1(gaussian())
    del manifest["latent"]["dim"]
    with pytest.raises(BundleError, match="latent: missing key 'dim'"):
        check_manifest(manifest, "manifest.json")


def _set(path: str, value):
    """A change setting the field at ``path`` (keys and [i] list items, dot-separated) to ``value``."""
    def change(m):
        *parents, last = path.split(".")
        target = m
        for key in parents:
            target = target[int(key[1:-1])] if key.startswith("[") else target[key]
        if last.startswith("["):
            target[int(last[1:-1])] = value
        else:
            target[last] = value
    return change


CASES = [
    ("hierarchical latent.shape not the layers' sum", hierarchical, _set("latent.shape", [4]),
     "latent.shape: expected [the sum of the layers' sizes], [5], got [4]"),
    ("hierarchical latent.shape the largest layer", hierarchical, _set("latent.shape", [3]),
     "latent.shape: expected [the sum of the layers' sizes], [5], got [3]"),
    ("a spatial hierarchical latent", hierarchical, _set("latent.shape", [5, 1, 1]), "latent.shape: expected [d]"),
    ("a latent of rank 2", gaussian, _set("latent.shape", [3, 3]), "latent.shape: expected [d] or [c, h, w]"),
    ("a spatial latent without downsample", spatial, lambda m: m["latent"].pop("downsample"),
     "latent: missing key 'downsample'"),
    ("a spatial latent not H / downsample", spatial, _set("latent.shape", [4, 2, 2]),
     "latent.shape: expected [c, H / 4, W / 4] of the input shape [1, 8, 12], got [4, 2, 2]"),
    ("a size multiple that breaks the downsampling", spatial, _set("input.size.multiple", 2),
     "input.size.multiple: expected a multiple of latent.downsample (4), got 2"),
    ("a multiple of the size that is not of the downsampling", spatial,
     _set("input.size", {"min": [6, 6], "max": [60, 60], "multiple": 6}),
     "input.shape: expected an H that input.size takes (6 to 60, a multiple of 6)"),
    ("a reference size outside the range", spatial, _set("input.size.max", [64, 8]),
     "input.shape: expected a W that input.size takes (8 to 8, a multiple of 4)"),
    ("size bounds not multiples", spatial, _set("input.size.min", [8, 10]), "input.size.min: expected [H, W]"),
    ("size of one bound", spatial, _set("input.size.max", [64]), "input.size.max: expected a list of at least 2"),
    ("a vector latent of any size", gaussian,
     _set("input.size", {"min": [4, 4], "max": [8, 8], "multiple": 4}), "input.size: expected none"),
    ("a VQ latent of any size", vq, _set("input.size", {"min": [4, 4], "max": [8, 8], "multiple": 4}),
     "input.size: expected none: a vq latent fixes the image size"),
    ("a dynamic size with a fixed graph", spatial, _set("graphs.decoder.fp32.outputs.[0].shape", ["batch", 1, 8, 12]),
     "output 'x' shaped ['batch', 1, 8, 12], expected ['batch', 1, 'height', 'width']"),
    ("a latent axis named as the image's", spatial,
     _set("graphs.decoder.fp32.inputs.[0].shape", ["batch", 4, *SPATIAL]), "input 'z' shaped"),
    ("a scaling factor of 0", spatial, _set("latent.scaling.scaling_factor", 0),
     "latent.scaling.scaling_factor: expected a finite number > 0, got 0"),
    ("a shift of NaN", spatial, _set("latent.scaling.shift_factor", float("nan")),
     "latent.scaling.shift_factor: expected a finite number"),
    ("a scaling without its shift", spatial, lambda m: m["latent"]["scaling"].pop("shift_factor"),
     "latent.scaling: missing key 'shift_factor'"),
    ("VQ prior tokens as floats", vq, _set("graphs.prior.fp32.inputs.[0].dtype", "float32"),
     "input 'tokens' of dtype float32, expected int64"),
    ("VQ logits as float16", vq, _set("graphs.prior.fp32.outputs.[0].dtype", "float16"),
     "output 'logits' of dtype float16, expected float32"),
    ("encoder input of a fixed batch", gaussian, _set("graphs.encoder.fp32.inputs.[0].shape", [8, *IMAGE]),
     "input 'x' shaped"),
    ("decoder output of a fixed batch", gaussian, _set("graphs.decoder.fp16.outputs.[0].shape", [1, *IMAGE]),
     "graphs.decoder.fp16"),
    ("VQ prior shorter than the grid", vq, _set("latent.prior.length", 3), "latent.prior.length"),
    ("VQ prior longer than the grid", vq, _set("latent.prior.length", 5), "latent.prior.length"),
    ("VQ start token past the table", vq, _set("latent.prior.start_token", 9), "latent.prior.start_token"),
    ("a graph without fp32", gaussian, lambda m: m["graphs"]["decoder"].pop("fp32"), "graphs.decoder"),
    ("Bernoulli with two outputs", gaussian, _set("likelihood", {"kind": "bernoulli", "outputs": ["x", "y"]}),
     "likelihood.outputs"),
    ("Gaussian with one output", hierarchical, _set("likelihood", {"kind": "gaussian", "outputs": ["x"]}),
     "likelihood.outputs"),
    ("two-stage u of the latent's size", two_stage, _set("graphs.stage2.fp32.inputs.[0].shape", ["batch", 3]),
     "input 'u' shaped"),
]


@pytest.mark.parametrize("name, make, change, message", CASES, ids=[c[0] for c in CASES])
def test_each_cross_check_violated_alone_is_refused(name, make, change, message):
    manifest = make()
    change(manifest)
    with pytest.raises(BundleError, match=re.escape(message)):
        check_manifest(manifest, "manifest.json")


def test_the_start_token_may_be_one_past_the_codes():
    manifest = vq()
    manifest["latent"]["prior"]["start_token"] = manifest["latent"]["num_codes"]
    check_manifest(manifest, "manifest.json")
