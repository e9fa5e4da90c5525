"""A bundle's manifest is checked against the schema and against its graphs before anything runs."""
import copy
import json
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaedeploy import load
from vaedeploy.bundle import NAME, BundleError, check_manifest, load_bundle


@pytest.fixture()
def vae_copy(exported, tmp_path):
    copy_ = tmp_path / "bundle"
    shutil.copytree(exported("vae")[1], copy_)
    return copy_


def edited(bundle, change):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def swap_graphs(m):
    m["graphs"]["encoder"], m["graphs"]["decoder"] = m["graphs"]["decoder"], m["graphs"]["encoder"]


def point_encoder_at_decoder_file(m):
    m["graphs"]["encoder"]["fp32"]["file"] = "decoder.onnx"


CASES = [  # (what the independent check found, the edit, what the error names)
    ("max_batch 0", lambda m: m.update(max_batch=0), r"max_batch: expected an integer ≥ 1, got 0"),
    ("max_batch negative", lambda m: m.update(max_batch=-3), r"max_batch: expected an integer ≥ 1, got -3"),
    ("latent.shape not the decoder's input", lambda m: m["latent"].update(shape=[5]),
     r"graphs.encoder.fp32: the graph has output 'mean' shaped \['batch', 4\], expected \['batch', 5\]"),
    ("encoder and decoder swapped", swap_graphs, r"graphs.encoder.fp32: the graph has inputs named \['z'\]"),
    ("an entry naming the other graph's file", point_encoder_at_decoder_file,
     r"encoder.onnx|decoder.onnx: the graph has inputs named \['z'\], expected \['x'\]"),
    ("a changed likelihood", lambda m: m["likelihood"].update(kind="bernoulli"),
     r"likelihood.outputs: expected 1 name\(s\) for a bernoulli likelihood"),
    ("list-typed files", lambda m: m.update(files=list(m["files"])), r"files: expected an object"),
    ("a missing likelihood", lambda m: m.pop("likelihood"), r"missing key 'likelihood'"),
    ("format version 0", lambda m: m.update(format_version=0), r"format_version: expected an integer ≥ 1, got 0"),
    ("format version true", lambda m: m.update(format_version=True), r"format_version: expected an integer"),
    ("an unknown latent type", lambda m: m["latent"].update(type="flow"), r"latent.type: expected one of"),
    ("a failed validation", lambda m: m["validation"].update(passed=False), r"validation.passed: expected true"),
    ("a digest that is not one", lambda m: m["files"].update({"decoder.onnx": "abc"}),
     r"files\['decoder.onnx'\]: expected a sha256"),
    ("an fp16 variant without fp32", lambda m: m["graphs"]["decoder"].pop("fp32"), r"graphs.decoder: expected"),
    # names become folders and files (a Triton repository, engine caches): each is one plain word
    ("a graph role that climbs out", lambda m: m["graphs"].update({"../../escape": m["graphs"]["decoder"]}),
     r"graphs: expected a name of 1 to 64 letters.*got \"../../escape\""),
    ("a kind with a slash", lambda m: m.update(kind="vae/../x"), r"kind: expected a name of"),
    ("a model kind that is a path", lambda m: m["model"].update(kind="/tmp/x"), r"model.kind: expected a name of"),
    ("an input named like a path", lambda m: m["graphs"]["encoder"]["fp32"]["inputs"][0].update(name="a/b"),
     r"graphs.encoder.fp32.inputs\[0\].name: expected a name of"),
    ("an output named ..", lambda m: m["graphs"]["decoder"]["fp32"]["outputs"][0].update(name=".."),
     r"graphs.decoder.fp32.outputs\[0\].name: expected a name of"),
    ("a likelihood output that is empty", lambda m: m["likelihood"]["outputs"].__setitem__(0, ""),
     r"likelihood.outputs: expected a name of"),
    ("a file listed under a folder", lambda m: m["files"].update({"sub/x.onnx": "0" * 64}), r"files: expected a name"),
    ("an unknown dtype", lambda m: m["graphs"]["decoder"]["fp32"]["inputs"][0].update(dtype="tensor(bool)"),
     r"graphs.decoder.fp32.inputs\[0\].dtype: expected one of"),
    ("a max_batch of a billion", lambda m: m.update(max_batch=10**9),
     r"max_batch: expected at most 65536 \(the runtime splits larger batches\), got 1000000000"),
]


@pytest.mark.parametrize("name, change, message", CASES, ids=[c[0] for c in CASES])
def test_a_manifest_that_disagrees_with_its_graphs_is_refused_naming_the_field(vae_copy, name, change, message):
    load(vae_copy)
    edited(vae_copy, change)
    with pytest.raises(BundleError, match=message) as info:
        load(vae_copy)
    assert str(vae_copy) in str(info.value)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])  # checked by the sessions that run them; read for it
def test_a_graph_file_that_is_not_what_its_entry_says_is_refused(vae_copy, backend):
    # the checksums agree (rewritten for the swapped files), so only reading the graphs themselves catches it
    def swap_files(m):
        enc, dec = m["graphs"]["encoder"]["fp32"], m["graphs"]["decoder"]["fp32"]
        (vae_copy / "encoder.onnx").rename(vae_copy / "tmp.onnx")
        (vae_copy / "decoder.onnx").rename(vae_copy / "encoder.onnx")
        (vae_copy / "tmp.onnx").rename(vae_copy / "decoder.onnx")
        m["files"]["encoder.onnx"], m["files"]["decoder.onnx"] = m["files"]["decoder.onnx"], m["files"]["encoder.onnx"]
        assert enc["file"] == "encoder.onnx" and dec["file"] == "decoder.onnx"

    edited(vae_copy, swap_files)
    with pytest.raises(BundleError, match=r"encoder.onnx: the graph has inputs named \['z'\], expected \['x'\]"):
        load(vae_copy, backend=backend)


def test_load_reads_each_graph_file_once_for_its_sha256_and_once_for_its_session(vae_copy, monkeypatch):
    import onnxruntime

    import vaedeploy.bundle

    sessions, hashed = [], []
    session_class, sha256_file = onnxruntime.InferenceSession, vaedeploy.bundle.sha256_file

    def counted_session(path, *args, **kwargs):
        sessions.append(Path(path).name)
        return session_class(path, *args, **kwargs)

    def counted_sha256(path):
        hashed.append(Path(path).name)
        return sha256_file(path)

    monkeypatch.setattr(onnxruntime, "InferenceSession", counted_session)
    monkeypatch.setattr(vaedeploy.bundle, "sha256_file", counted_sha256)
    runtime = load(vae_copy, backend="onnxruntime")
    graphs = sorted(p.name for p in vae_copy.glob("*.onnx"))
    assert sorted(sessions) == graphs, "one session per graph: the one that runs it, which the check reuses"
    assert sorted(h for h in hashed if h.endswith(".onnx")) == graphs
    assert runtime.decode(np.zeros((1, runtime.latent_dim), np.float32)).shape == (1, *runtime.input_shape)


def test_json_of_any_shape_is_a_bundle_error(vae_copy):
    for text in ["[" * 100000 + "]" * 100000, "[1, 2]", "null", "\"manifest\"", "{\"format_version\": 1}", "\xff"]:
        (vae_copy / "manifest.json").write_text(text, errors="surrogateescape") if text != "\xff" else \
            (vae_copy / "manifest.json").write_bytes(b"\xff\xfe{")
        with pytest.raises(BundleError):
            load(vae_copy)


SCALARS = st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=True) | st.text(max_size=5)
JSON = st.recursive(SCALARS,
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children,
                                                                                      max_size=3), max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_malformed_manifests_give_a_bundle_error_and_never_another_exception(exported, data):
    from vaedeploy.models import MODELS

    bundle = exported(data.draw(st.sampled_from(sorted(MODELS))))[1]  # every latent type's schema
    valid = json.loads((bundle / "manifest.json").read_text())
    manifest = helpers.damage(data, copy.deepcopy(valid), JSON)
    try:
        check_manifest(manifest, "manifest.json")
    except BundleError:
        return
    # a manifest the schema accepts still has the types every reader relies on
    assert isinstance(manifest["graphs"], dict) and isinstance(manifest["max_batch"], int)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_loading_a_bundle_with_a_malformed_manifest_is_a_bundle_error_or_works(exported, tmp_path_factory, data):
    source = exported("vae")[1]
    bundle = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(source, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    path = data.draw(st.sampled_from([p for p in helpers.paths(manifest) if p]))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = data.draw(JSON)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        rt = load(bundle)
    except BundleError:
        return
    z = np.zeros((2, rt.latent_dim), np.float32)
    assert rt.decode(z).shape == (2, *rt.input_shape)


def _names(manifest: dict) -> list[str]:
    """Every name a manifest gives: what ``NAME`` must accept for each bundle export writes."""
    latent, graphs = manifest["latent"], manifest["graphs"]
    names = [manifest["kind"], manifest["model"]["kind"], *graphs, *manifest["files"], *manifest.get("arrays", {}),
             *manifest["likelihood"]["outputs"], *latent.get("graphs", {}).values()]
    names += [latent["prior"]["graph"]] if "prior" in latent else []
    names += [layer[k] for layer in latent.get("layers", []) for k in ("noise", "z", "mean", "logvar")]
    names += [spec["name"] for variants in graphs.values() for entry in variants.values()
              for side in ("inputs", "outputs") for spec in entry[side]]
    return names


def test_a_good_bundle_of_every_kind_passes_every_check_and_its_names_the_name_rule(exported):
    from vaedeploy.models import MODELS

    for name in MODELS:  # the exported fixture has one bundle of every registered kind, by its name
        bundle = load_bundle(exported(name)[1])
        check_manifest(bundle.manifest, bundle.root)
        assert all(NAME.fullmatch(n) and ".." not in n for n in _names(bundle.manifest)), name


def test_a_two_stage_prior_role_that_climbs_out_is_refused_by_triton_repo_and_nothing_is_written(exported, tmp_path,
                                                                                                   capsys):
    from vaedeploy.cli import main

    bundle = tmp_path / "in" / "b"
    shutil.copytree(exported("twostage")[1], bundle)
    role = "x/../../../SOMEWHERE"

    def climb(m):
        m["graphs"][role] = m["graphs"].pop(m["latent"]["prior"]["graph"])
        m["latent"]["prior"]["graph"] = role

    edited(bundle, climb)
    before = sorted(tmp_path.parent.rglob("*"))
    assert main(["triton-repo", str(bundle), "--out", str(tmp_path / "in" / "repo")]) == 2
    assert "latent.prior.graph: expected a name of" in capsys.readouterr().err
    assert sorted(tmp_path.parent.rglob("*")) == before, "nothing is written anywhere"
    with pytest.raises(BundleError, match="latent.prior.graph"):
        load_bundle(bundle, verify=False)
