"""Every kind's graphs: exported alone, validated at every batch size, the VQ index agreement."""
import json

import numpy as np
import onnx
import pytest
import torch
from helpers import KINDS, VQVAE_GRAPHS, images, spec_graphs

from vaedeploy.bundle import load_bundle
from vaedeploy.models import build_model
from vaedeploy.train import load_run

TINY = {"hidden": [32], "latent_dim": 4}
TINY_BIVA = {"hidden": [32], "latent_dims": [4, 3, 2], "layer_hidden": 16}
TINY_TWOSTAGE = {"hidden": [32], "latent_dim": 4, "stage2_hidden": [16]}


def _graphs_for_export():
    """(name, module, example inputs) for every graph export will trace on its own: tensors in, tensors out."""
    bivae = build_model("bivae", TINY)
    bivae_conv = build_model("bivae", {**TINY, "backbone": "conv", "channels": [3, 5], "input_shape": (1, 28, 28)})
    biva = build_model("biva", TINY_BIVA)
    twostage = build_model("twostage", TINY_TWOSTAGE)
    noise = tuple(torch.randn(3, d) for d in (4, 3, 2))
    return [
        ("bivae decoder", bivae.decoder.standalone(), (torch.randn(3, 4),)),
        ("bivae conv decoder", bivae_conv.decoder.standalone(), (torch.randn(3, 4),)),
        ("biva encoder", biva.encoder, (torch.rand(3, 1, 8, 8), *noise)),
        ("biva decoder", biva.decoder, noise),
        ("twostage stage-2 decoder", twostage.stage2.decoder, (torch.randn(3, 4),)),
        ("twostage stage-1 decoder", twostage.decoder, (torch.randn(3, 4),)),
    ]


@pytest.mark.slow
def test_every_family_graph_exports_to_onnx_alone_and_matches_pytorch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    for i, (name, module, inputs) in enumerate(_graphs_for_export()):
        module.eval()
        path = tmp_path / f"graph{i}.onnx"
        torch.onnx.export(module, inputs, path, dynamo=True)
        session = onnxruntime.InferenceSession(str(path))
        feeds = {spec.name: x.numpy() for spec, x in zip(session.get_inputs(), inputs)}
        with torch.no_grad():
            expected = module(*inputs)
        for got, want in zip(session.run(None, feeds), expected):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_exports_its_graphs_validated_at_every_batch_size(exported, kind):
    run, bundle = exported(kind)
    manifest = load_bundle(bundle).manifest
    graphs = spec_graphs(load_run(run)[0])
    assert manifest["kind"] == kind and set(manifest["graphs"]) == graphs
    if kind == "vqvae":  # the spec checked against a hand-written truth (helpers.VQVAE_GRAPHS says why)
        assert graphs == VQVAE_GRAPHS
    assert manifest["validation"]["passed"] and manifest["validation"]["batch_sizes"] == [1, 2, 7, 64]
    report = json.loads((bundle / "validation.json").read_text())
    checked = {(c["graph"], c["precision"]) for c in report["checks"]}
    assert checked == {(g, p) for g in graphs for p in manifest["graphs"][g]}
    assert {c["batch"] for c in report["checks"]} == {1, 2, 7, 64}
    for variants in manifest["graphs"].values():
        for entry in variants.values():
            graph = onnx.load(str(bundle / entry["file"]))
            assert {n.op_type for n in graph.graph.node}.isdisjoint({"RandomNormal", "RandomNormalLike"})
            assert all(spec["shape"][0] == "batch" for spec in entry["inputs"] + entry["outputs"])
    if kind == "vqvae":
        assert "codebook.npy" in manifest["files"] and manifest["arrays"] == {"codebook": "codebook.npy"}
        # no nearest-code step inside a graph: the runtime does it with the kernels
        ops = {n.op_type for n in onnx.load(str(bundle / "encoder.onnx")).graph.node}
        assert not ops & {"ArgMin", "ArgMax", "Gather", "GatherElements"}
        agreement = report["extra"]["vq_index_agreement"]
        assert agreement["passed"] and set(agreement["by_precision_and_batch"]) == {
            f"{p}@{b}" for p in ("fp32", "fp16") for b in (1, 2, 7, 64)}
        assert manifest["validation"]["extra"]["vq_index_agreement"]["worst"] >= 0.99
    if kind == "biva":
        layers = manifest["latent"]["layers"]
        assert [layer["dim"] for layer in layers] == [4, 3, 2] and manifest["latent"]["shape"] == [9]
        assert [i["name"] for i in manifest["graphs"]["encoder"]["fp32"]["inputs"]] == ["x", "eps_1", "eps_2", "eps_3"]
        assert [i["name"] for i in manifest["graphs"]["decoder"]["fp32"]["inputs"]] == ["eps_1", "eps_2", "eps_3"]
    if kind == "twostage":
        assert manifest["graphs"]["stage2_decoder"]["fp32"]["module"] == "stage2.decoder"
        assert {c["inputs"] for c in report["checks"] if c["graph"] == "stage2_decoder"} == {"encodings", "normal"}


def test_the_vq_index_agreement_fails_a_graph_that_picks_other_codes(exported):
    import dataclasses

    from vaedeploy.export.validate import vq_index_agreement

    run, bundle = exported("vqvae")
    model, _ = load_run(run)
    with torch.no_grad():
        spec = model.eval().export_spec(images(64), 64)
    codebook = spec.arrays["codebook"]
    files = {"encoder": {"fp32": "encoder.onnx"}}
    passed = vq_index_agreement(spec, files, bundle, 64)
    assert passed["passed"] and passed["worst"] == 1.0 and passed["by_precision_and_batch"]["fp32@64"]["vectors"] == 256

    def shifted(x):  # the reference moves z_e by a quarter of the codebook's spread: many vectors change code
        return model.encoder(x) + 0.25 * float(codebook.std())

    spec.graphs = [dataclasses.replace(g, module=shifted) if g.role == "encoder" else g for g in spec.graphs]
    failed = vq_index_agreement(spec, files, bundle, 64)
    assert not failed["passed"] and failed["worst"] < 0.999
    assert "VQ index agreement" in failed["failures"][0]
