"""The runtime's table of operations is the one list: every consumer (the server's V2 models, the bench's floor and
its ops, the Triton repository's ensembles, the explorer page's spec, the docs table) offers exactly its ops, with
its tensors and request parameters, for a bundle of each latent type."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import images

from vaedeploy import load
from vaedeploy.bench import floor, local
from vaedeploy.deploy.triton_repo import NOT_ENSEMBLES, NOT_ENSEMBLES_OF, SAMPLE_ROWS, build, ensembles_of
from vaedeploy.runtime import base, latents, noise
from vaedeploy.runtime.operations import DOCS_TYPES, PARAMETERS, docs_table, operations_of, render_docs
from vaedeploy.serve import models
from vaedeploy.web.site import explorer_spec

SERVING = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
# a bundle of each latent type (and the two-stage prior): kind → (latent type, the docs table's label)
KINDS = {"vae": ("gaussian", "gaussian"), "twostage": ("gaussian", "gaussian, two-stage prior"),
         "ae": ("deterministic", "deterministic"), "vqvae": ("vq", "vq"), "biva": ("hierarchical", "hierarchical")}
# a bundle of spatial latents that takes any image size: the table and the docs have it; each consumer's own tests
# cover it as that consumer learns spatial latents
SPATIAL = {"klconv": ("gaussian", "gaussian, spatial, any size"), "vqgan": ("vq", "vq, no prior, any size")}
IMPORTED = {"vqgan"}  # imported from a tiny diffusers model (conftest's ``diffusers_bundle``), not trained
ALL_OPS = ("encode", "encode_params", "decode", "decode_codes", "reconstruct", "sample", "sample_codes")


@pytest.fixture(scope="module")
def runtimes(exported, diffusers_bundle):
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = load(diffusers_bundle(kind) if kind in IMPORTED else exported(kind)[1], backend="onnxruntime")
        return made[kind]

    yield get
    for runtime in made.values():
        runtime.close()


@pytest.mark.parametrize("kind", [*KINDS, *SPATIAL])
def test_the_table_is_the_latent_types(runtimes, kind):
    runtime = runtimes(kind)
    ops = operations_of(runtime)
    assert runtime.latent_type == {**KINDS, **SPATIAL}[kind][0]
    expected = {"gaussian": ["encode", "encode_params", "decode", "reconstruct", "sample"],
                "deterministic": ["encode", "encode_params", "decode", "reconstruct"],
                "hierarchical": ["encode", "encode_params", "decode", "reconstruct", "sample"],
                "vq": ["encode", "encode_params", "decode", "decode_codes", "reconstruct", "sample", "sample_codes"]}
    without_prior = ("sample", "sample_codes") if kind == "vqgan" else ()  # a VQGAN has no prior: nothing to sample
    assert list(ops) == [op for op in expected[runtime.latent_type] if op not in without_prior]
    assert operations_of(runtime.bundle) == ops, "a bundle and its runtime give one table"
    for op in ops.values():  # every op is the runtime's method of its name (decode_codes: decode given codes)
        assert hasattr(runtime, {"decode_codes": "decode"}.get(op.name, op.name)), op.name


def test_codes_range_over_the_codebook(runtimes):
    runtime = runtimes("vqvae")
    ops = operations_of(runtime)
    for codes in (ops["encode"].outputs[0], ops["decode_codes"].inputs[0], ops["sample_codes"].outputs[0]):
        assert (codes.name, codes.low, codes.high) == ("codes", 0, runtime.num_codes - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_an_op_takes_the_noise_parameters_exactly_where_its_result_depends_on_them(runtimes, kind):
    runtime = runtimes(kind)
    for op in operations_of(runtime).values():
        if [t.name for t in op.inputs] != ["x"]:
            continue
        first, second = (op.run(runtime, (images(2),), 2, seed, 0, 1.0) for seed in (1, 2))
        depends = any(not np.array_equal(a, b) for a, b in zip(first, second))
        assert depends == ("seed" in op.parameters) == ("offset" in op.parameters), op.name


@pytest.mark.parametrize("kind", KINDS)
def test_the_servers_models_are_the_table(runtimes, kind):
    runtime = runtimes(kind)
    ops = operations_of(runtime)
    served = models.operations("b", runtime)
    assert [m.name for m in served] == [f"b.{name}" for name in ops]
    for model, op in zip(served, ops.values()):
        assert [(s.name, s.dims) for s in model.inputs] == [(t.name, t.dims) for t in op.inputs]
        assert [(s.name, s.dims) for s in model.outputs] == [(t.name, t.dims) for t in op.outputs]
        assert model.parameters == op.parameters and model.call is op.run


@pytest.mark.parametrize("kind", KINDS)
def test_the_bench_measures_and_floors_the_tables_ops(runtimes, kind):
    runtime = runtimes(kind)
    ops = operations_of(runtime)
    assert [op for op in local.OPS if local.supports(runtime, op)] == [op for op in local.OPS if op in ops]
    for name in ALL_OPS:
        assert floor.op_graphs(runtime, name) == (list(ops[name].graphs) if name in ops else None), name


@pytest.mark.parametrize("kind", [k for k, (latent, _) in KINDS.items() if latent != "hierarchical"])
def test_the_triton_ensembles_are_the_table_less_what_it_leaves_out(runtimes, kind):
    runtime = runtimes(kind)
    ops = operations_of(runtime)
    repo = build(runtime.bundle, "b", {"max_batch_size": 8})
    ensembles = [c["name"].removeprefix("b.") for c in repo.configs.values() if c.get("platform") == "ensemble"]
    left_out = {**NOT_ENSEMBLES, **NOT_ENSEMBLES_OF.get(runtime.latent_type, {})}
    assert sorted(ensembles) == sorted(name for name in ops if name not in left_out) == sorted(
        ensembles_of(ops, runtime.latent_type))
    for name in ensembles:
        config, op = repo.configs[f"b.{name}"], ops[name]
        batch = [] if op.inputs else [-1]  # a sample is not batched: its batch axis is a dim
        # a sample takes its rows as the tensor n (SAMPLE_ROWS): Triton refuses an ensemble step without an input
        inputs = [(t.name, [*batch, *t.dims]) for t in op.inputs] or [(SAMPLE_ROWS["name"], SAMPLE_ROWS["dims"])]
        assert [(t["name"], t["dims"]) for t in config["input"]] == inputs
        assert [(t["name"], t["dims"]) for t in config["output"]] == [(t.name, [*batch, *t.dims]) for t in op.outputs]
        reads = config.get("parameters", {}).get("request_parameters", {}).get("string_value", "")
        assert reads == ",".join(op.parameters)


def test_the_two_stage_noise_step_starts_where_the_runtime_does(runtimes):
    repo = build(runtimes("twostage").bundle, "b", {"max_batch_size": 8})
    settings = repo.configs["b.stage1_noise"]["parameters"]
    assert json.loads(settings["base"]["string_value"]) == latents.STAGE1_NOISE_OFFSET


@pytest.mark.parametrize("kind", KINDS)
def test_the_explorer_spec_lists_the_tables_ops(runtimes, digits, kind):
    runtime = runtimes(kind)
    ops = operations_of(runtime)
    listed = explorer_spec(runtime, digits)["operations"]
    assert [op["name"] for op in listed] == list(ops)
    assert listed == json.loads(json.dumps([op.as_dict() for op in ops.values()])), "the page reads the table"


@pytest.mark.parametrize("kind", [*KINDS, *SPATIAL])
def test_the_docs_table_lists_the_tables_ops(runtimes, kind):
    runtime = runtimes(kind)
    label = {**KINDS, **SPATIAL}[kind][1]
    rows = [line.split(" | ")[1].strip("`").removeprefix("NAME.") for line in docs_table().splitlines()
            if line.startswith(f"| {label} | ")]
    assert rows == list(operations_of(runtime))


def test_the_docs_table_is_current():
    page = SERVING.read_text()
    assert render_docs(page) == page, (
        "docs/serving.md's table of operations is stale; rerun: .venv/bin/python -c 'from pathlib import Path; "
        "from vaedeploy.runtime.operations import render_docs as r; p = Path(\"docs/serving.md\"); "
        "p.write_text(r(p.read_text()))'")
    assert set(DOCS_TYPES) == {label for _, label in (*KINDS.values(), *SPATIAL.values())}


def test_one_table_of_request_parameters_with_the_runtimes_limits():
    assert PARAMETERS["seed"].high == PARAMETERS["offset"].high == noise.STREAM_LIMIT - 1
    assert PARAMETERS["temperature"].high == base.MAX_TEMPERATURE
    for name, parameter in PARAMETERS.items():  # the server's limits are the table's
        limit = models.PARAMETERS[name]
        assert (limit.integral, limit.low, limit.high, limit.option) == (
            parameter.integral, parameter.low, parameter.high, parameter.option)


def test_the_table_imports_without_torch():
    code = "import sys, vaedeploy.runtime.operations; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
