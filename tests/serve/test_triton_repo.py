"""`vaedeploy triton-repo`: every config.pbtxt parses into Triton's own ModelConfig (tritonclient's model_config_pb2);
names and shapes match the graphs and `vaedeploy serve`'s models; ensemble maps close; and each ensemble, executed
step by step here (ONNX Runtime for the graphs, the written model.py under a stand-in for Triton's
triton_python_backend_utils), answers what the runtime answers.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from helpers import edit_manifest
from tritonclient.grpc import model_config_pb2

from vaedeploy import load
from vaedeploy.bundle import read_graph_signature
from vaedeploy.cli import main
from vaedeploy.deploy.triton_repo import GRAPH_RUNNERS, MODEL_PY, OLDER_MARKER, write_repository
from vaedeploy.errors import ConfigError
from vaedeploy.owned import MARKER
from vaedeploy.serve.app import model_config
from vaedeploy.serve.batcher import BatchPolicy
from vaedeploy.serve.models import operations
from vaedeploy.serve.protocol import ProtocolError

# klconv: spatial latents, any image size, a latent scaling (-1 dims, sample at a size, scale steps)
KINDS = ["vae", "ae", "vqvae", "twostage", "vae_conv_bernoulli", "klconv"]
POLICY = BatchPolicy(max_batch_size=32, preferred_batch_size=(4, 8), max_queue_delay_microseconds=100,
                     max_queue_size=7, instances=2)
TYPES = {"TYPE_FP32": "float32", "TYPE_INT64": "int64"}


def read_repository(root) -> dict:
    configs = {}
    for path in sorted(root.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name and (path.parent / "1").is_dir()
        configs[config.name] = config
    return configs


@pytest.fixture(scope="module")
def repositories(exported, tmp_path_factory):
    """(kind, graphs) → (root, configs): each kind's repository with its graphs run by each of GRAPH_RUNNERS."""
    root = tmp_path_factory.mktemp("triton")
    made = {}
    for kind in KINDS:
        for graphs in GRAPH_RUNNERS:
            out = root / f"{kind}-{graphs}"
            models = write_repository(exported(kind)[1], out, kind, POLICY.model_config(), graphs)
            made[kind, graphs] = (out, read_repository(out))
            assert sorted(made[kind, graphs][1]) == models
        made[kind] = made[kind, "onnxruntime"]
    return made


def dims(tensor) -> list[int]:
    return list(tensor.dims)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("graphs", GRAPH_RUNNERS)
def test_graphs_batching_and_ensemble_maps(repositories, kind, graphs):
    root, configs = repositories[kind, graphs]
    for name, config in configs.items():
        if (root / name / "1" / "model.onnx").is_file():
            assert (config.platform == "onnxruntime_onnx") == (graphs == "onnxruntime"), name
            graph = read_graph_signature(root / name / "1" / "model.onnx")
            for side, specs in (("inputs", config.input), ("outputs", config.output)):
                assert [(s["name"], [-1 if isinstance(d, str) else d for d in s["shape"][1:]], s["dtype"])
                        for s in graph[side]] == \
                    [(t.name, dims(t), TYPES[model_config_pb2.DataType.Name(t.data_type)]) for t in specs]
        if config.platform != "ensemble" and config.max_batch_size:
            assert config.max_batch_size == 32 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]
            policy = config.dynamic_batching.default_queue_policy
            assert config.dynamic_batching.max_queue_delay_microseconds == 100 and policy.max_queue_size == 7
            assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
        if config.backend == "python":
            assert (root / name / "1" / "model.py").read_text() == MODEL_PY and config.instance_group[0].count == 2
        if config.platform != "ensemble":
            continue
        available = {t.name for t in config.input}
        for step in config.ensemble_scheduling.step:
            model = configs[step.model_name]  # every step is a model of the repository
            assert set(step.input_map) == {t.name for t in model.input}, (name, step.model_name)
            assert set(step.output_map) <= {t.name for t in model.output}
            assert set(step.input_map.values()) <= available, f"{name}: {step.model_name} reads an unwritten tensor"
            assert not set(step.output_map.values()) & available, f"{name}: a tensor written twice"
            available |= set(step.output_map.values())
        assert {t.name for t in config.output} <= available


@pytest.mark.parametrize("kind", KINDS)
def test_the_ensembles_are_vaedeploy_serves_models(repositories, exported, kind):
    _, configs = repositories[kind]
    rt = load(exported(kind)[1])
    served = {op.name: op for op in operations(kind, rt)}
    written = {name for name, c in configs.items() if c.platform == "ensemble"}
    missing = set(served) - written  # reconstruct: an ensemble cannot take x and give x; VQ's prior needs L steps
    assert missing == {f"{kind}.reconstruct"} | ({f"{kind}.decode_codes", f"{kind}.sample_codes", f"{kind}.sample"}
                                                if kind == "vqvae" else set()), missing
    for name in written:
        config, op = configs[name], served[name]
        batch = [-1] if config.max_batch_size else []
        # a sample's one input is its rows, n (Triton refuses an ensemble step without an input tensor)
        inputs = [("n", "TYPE_INT64", [1])] if op.samples else \
            [(s.name, f"TYPE_{s.datatype}", [-1, *s.v2_dims]) for s in op.inputs]
        assert inputs == [(t.name, model_config_pb2.DataType.Name(t.data_type), batch + dims(t))
                          for t in config.input], name
        assert [(s.name, f"TYPE_{s.datatype}", [-1, *s.v2_dims]) for s in op.outputs] == \
            [(t.name, model_config_pb2.DataType.Name(t.data_type), batch + dims(t)) for t in config.output], name
        reads = config.parameters["request_parameters"].string_value if "request_parameters" in config.parameters \
            else ""
        assert reads == ",".join(op.parameters), name
    rt.close()


# ---- the ensembles executed here, step by step ------------------------------------------------------------------

def stand_in_backend_utils() -> types.ModuleType:
    """The parts of triton_python_backend_utils a vaedeploy step uses."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class InferenceRequest:
        def __init__(self, inputs: dict, parameters: dict):
            self.inputs, self._parameters = {k: Tensor(k, v) for k, v in inputs.items()}, parameters

        def parameters(self):
            return json.dumps(self._parameters)

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    pb.Tensor, pb.InferenceRequest, pb.InferenceResponse, pb.TritonError = (Tensor, InferenceRequest,
                                                                            InferenceResponse, TritonError)
    pb.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    return pb


class Executor:
    """Runs a repository's ensembles as Triton would: each step when its inputs exist, in the config's order; the
    written model.py under the stand-in for Triton's module (triton_step imported afresh under it)."""

    def __init__(self, root, configs, monkeypatch):
        self.root, self.configs, self.models = root, configs, {}
        self.pb = stand_in_backend_utils()
        monkeypatch.setitem(sys.modules, "triton_python_backend_utils", self.pb)
        monkeypatch.delitem(sys.modules, "vaedeploy.deploy.triton_step", raising=False)
        step = importlib.import_module("vaedeploy.deploy.triton_step")
        # numpy 2 is what Triton 2.51's own tensor code misreads; the stand-in hands numpy arrays over as they are
        monkeypatch.setattr(step, "check_environment", lambda: None)

    def model(self, name):
        if name not in self.models:
            config = self.configs[name]
            if config.platform == "onnxruntime_onnx":
                self.models[name] = ort.InferenceSession(str(self.root / name / "1" / "model.onnx"))
            else:
                spec = importlib.util.spec_from_file_location(f"step_{name}", self.root / name / "1" / "model.py")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                step = module.TritonPythonModel()
                step.initialize({"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
                                 "model_repository": str(self.root / name), "model_version": "1"})
                self.models[name] = step
        return self.models[name]

    def run_model(self, name, feed: dict, parameters: dict) -> dict:
        [outputs] = self.run_requests(name, [(feed, parameters)])
        return outputs

    def run_requests(self, name, requests: list[tuple[dict, dict]]) -> list[dict]:
        """Each request's outputs from one execution of the model (as Triton's dynamic batcher hands them over)."""
        model = self.model(name)
        if isinstance(model, ort.InferenceSession):
            return [dict(zip([o.name for o in model.get_outputs()], model.run(None, feed))) for feed, _ in requests]
        responses = model.execute([self.pb.InferenceRequest(feed, parameters) for feed, parameters in requests])
        assert len(responses) == len(requests)
        for response in responses:
            assert response.error is None, response.error.message()
        return [{t.name(): t.as_numpy() for t in response.output_tensors} for response in responses]

    def infer(self, name, inputs: dict, parameters: dict) -> dict:
        config, tensors = self.configs[name], dict(inputs)
        for step in config.ensemble_scheduling.step:
            outputs = self.run_model(step.model_name, {k: tensors[v] for k, v in step.input_map.items()}, parameters)
            tensors.update({v: outputs[k] for k, v in step.output_map.items()})
        return {t.name: tensors[t.name] for t in config.output}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("graphs", GRAPH_RUNNERS)
def test_each_ensemble_answers_what_the_runtime_answers(repositories, exported, kind, graphs, monkeypatch):
    root, configs = repositories[kind, graphs]
    rt, run = load(exported(kind)[1]), Executor(root, configs, monkeypatch)
    x = np.random.default_rng(0).random((3, *rt.input_shape), dtype=np.float32)
    params = run.infer(f"{kind}.encode_params", {"x": x}, {})
    expected = {"encode_params": list(rt.encode_params(x))}
    z = rt.encode(x, seed=9, offset=2)
    expected["encode"] = list(z) if isinstance(z, tuple) else [z]
    if f"{kind}.sample" in configs:
        expected["sample"] = [rt.sample(4, seed=5, temperature=0.7, offset=3)]
    latent = z[1] if isinstance(z, tuple) else z
    expected["decode"] = [rt.decode(latent)]
    inputs = {"encode_params": {"x": x}, "encode": {"x": x}, "sample": {"n": np.array([4])},
              "decode": {"z_q" if kind == "vqvae" else "z": latent}}
    parameters = {"encode": {"seed": 9, "offset": 2}, "sample": {"seed": 5, "temperature": 0.7, "offset": 3}}
    for operation, want in expected.items():
        got = run.infer(f"{kind}.{operation}", inputs[operation], parameters.get(operation, {}))
        assert len(got) == len(want), operation
        for (name, array), reference in zip(got.items(), want):
            assert array.dtype == reference.dtype and array.shape == reference.shape, (operation, name)
            np.testing.assert_allclose(array, reference, rtol=1e-6, atol=1e-6, err_msg=f"{kind}.{operation}.{name}")
    assert len(params) == len(expected["encode_params"])
    rt.close()


def test_a_step_answers_a_bad_request_with_its_own_error(repositories, monkeypatch):
    root, configs = repositories["vae"]
    run = Executor(root, configs, monkeypatch)
    step, two = run.model("vae.prior_noise"), {"n": np.array([2])}
    good, bad = run.pb.InferenceRequest(two, {"seed": 1}), run.pb.InferenceRequest(two, {"seed": -1})
    twice = run.pb.InferenceRequest(two, {"n": 3})
    responses = step.execute([good, bad, twice])
    assert responses[0].error is None and responses[0].output_tensors[0].as_numpy().shape == (2, 4)
    assert responses[1].error.message() == \
        "prior_noise: parameter seed: expected an integer from 0 to 9.22337e+18, got -1"
    assert responses[2].error.message() == \
        "prior_noise: n is 2 as an input and 3 as a parameter; expected one of the two"


def test_serves_config_endpoint_is_a_valid_model_config(exported):
    rt = load(exported("vqvae")[1])
    for op in operations("vq", rt):
        config = json_format.ParseDict(model_config(op, POLICY), model_config_pb2.ModelConfig())
        assert config.name == op.name and config.max_batch_size == 32
    rt.close()


# ---- a bundle of any image size (issue 28): -1 dims, the sample's height and width, the latent scaling -----------

SIZES = [(12, 20), (32, 8)]  # two sizes the klconv bundle takes (H, W multiples of 4 from 8 to 32), neither 8×8


def test_a_spatial_bundles_configs_have_minus_one_for_every_axis_of_any_size(repositories):
    _, configs = repositories["klconv"]
    # a row: 1×H×W images, 2×H/4×W/4 latents (written out by hand); the batch axis is max_batch_size's, but in a
    # sample's models, which take no batch (their rows are the tensor n), where it is a dim of its own
    image, latent = [1, -1, -1], [2, -1, -1]
    assert [dims(t) for t in configs["klconv.encode"].input] == [image]
    assert [dims(t) for t in configs["klconv.encode"].output] == [latent]
    assert [dims(t) for t in configs["klconv.decode"].input] == [latent]
    assert [dims(t) for t in configs["klconv.encoder"].input] == [image]
    assert [dims(t) for t in configs["klconv.sample"].output] == [[-1, *image]]
    assert [dims(t) for t in configs["klconv.prior_noise"].output] == [[-1, *latent]]
    reads = configs["klconv.sample"].parameters["request_parameters"].string_value
    assert reads == "n,seed,temperature,offset,height,width"
    # decode takes encode's (scaled) latents: the unscale step runs before the decoder
    assert [step.model_name for step in configs["klconv.decode"].ensemble_scheduling.step] == \
        ["klconv.unscale", "klconv.decoder"]


@pytest.mark.parametrize("graphs", GRAPH_RUNNERS)
def test_a_spatial_bundle_answers_what_the_runtime_answers_at_two_sizes(repositories, exported, graphs, monkeypatch):
    """encode (noise of c·h·w elements per row, scaled), encode_params, decode (unscaled first) and sample at a
    requested height and width, each at two sizes, equal vaedeploy.load(bundle)'s answers."""
    root, configs = repositories["klconv", graphs]
    rt, run = load(exported("klconv")[1]), Executor(root, configs, monkeypatch)
    assert rt.scaling == (0.5, 0.25)  # the bundle's scaling, so encode and decode go through the rule
    for h, w in SIZES:
        x = np.random.default_rng(h).random((3, 1, h, w), dtype=np.float32)
        z = rt.encode(x, seed=9, offset=2)
        expected = {"encode": ({"x": x}, {"seed": 9, "offset": 2}, [z]),
                    "encode_params": ({"x": x}, {}, list(rt.encode_params(x))),
                    "decode": ({"z": z}, {}, [rt.decode(z)]),
                    "sample": ({"n": np.array([4])}, {"seed": 5, "temperature": 0.7, "offset": 3, "height": h,
                                                       "width": w},
                               [rt.sample(4, seed=5, temperature=0.7, offset=3, size=(h, w))])}
        for operation, (inputs, parameters, want) in expected.items():
            got = list(run.infer(f"klconv.{operation}", inputs, parameters).values())
            assert [a.shape for a in got] == [a.shape for a in want], (operation, h, w)
            for array, reference in zip(got, want):
                np.testing.assert_allclose(array, reference, rtol=1e-6, atol=1e-6, err_msg=f"{operation} {h}×{w}")
    # without height and width a sample is drawn at the reference size, as Runtime.sample draws it
    default = run.infer("klconv.sample", {"n": np.array([2])}, {"seed": 1})["x"]
    np.testing.assert_allclose(default, rt.sample(2, seed=1), rtol=1e-6, atol=1e-6)
    rt.close()


@pytest.mark.parametrize("height, width", [(12, 10), (36, 8), (4, 8)])
def test_a_sample_at_a_size_the_bundle_does_not_take_is_one_sentence(repositories, monkeypatch, height, width):
    root, configs = repositories["klconv"]
    run = Executor(root, configs, monkeypatch)
    request = run.pb.InferenceRequest({"n": np.array([2])}, {"seed": 1, "height": height, "width": width})
    [response] = run.model("klconv.prior_noise").execute([request])
    assert response.error.message() == "prior_noise: parameters height, width: expected H and W multiples of 4 " \
        f"from 8×8 to 32×32, got {height}×{width}"


def test_a_deterministic_bundle_with_a_scaling_scales_in_its_own_steps(exported, tmp_path, monkeypatch):
    """ae with a latent scaling written into its manifest: encode → the scale step, decode ← the unscale step."""
    bundle = edit_manifest(shutil.copytree(exported("ae")[1], tmp_path / "ae"), lambda m: m["latent"].update(
        scaling={"scaling_factor": 2.0, "shift_factor": -0.5}))
    models = write_repository(bundle, tmp_path / "repo", "ae", POLICY.model_config())
    assert {"ae.scale", "ae.unscale"} <= set(models)
    rt, run = load(bundle), Executor(tmp_path / "repo", read_repository(tmp_path / "repo"), monkeypatch)
    x = np.random.default_rng(0).random((3, *rt.input_shape), dtype=np.float32)
    z = run.infer("ae.encode", {"x": x}, {})["z"]
    np.testing.assert_allclose(z, rt.encode(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z, (rt.encode_params(x)[0] + 0.5) * 2.0, rtol=1e-6, atol=1e-6)  # scaled, not raw
    np.testing.assert_allclose(run.infer("ae.decode", {"z": z}, {})["x"], rt.decode(z), rtol=1e-6, atol=1e-6)
    rt.close()


def test_hierarchical_is_refused_and_other_files_are_never_replaced(exported, tmp_path):
    with pytest.raises(ConfigError, match="hierarchical one needs a noise input per layer"):
        write_repository(exported("biva")[1], tmp_path / "biva", "biva", POLICY.model_config())
    assert not (tmp_path / "biva").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a repository written by"):
        write_repository(exported("vae")[1], tmp_path / "mine", "vae", POLICY.model_config())
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    first = write_repository(exported("vae")[1], tmp_path / "repo", "vae", POLICY.model_config())
    again = write_repository(exported("vae")[1], tmp_path / "repo", "vae", POLICY.model_config())
    assert first == again and (tmp_path / "repo" / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "repo"]  # no staging or backup left behind


def test_a_rerun_refuses_what_the_user_added_and_names_it(exported, tmp_path, capsys):
    """Issue 25, case 3: a model folder and a NOTES.md the user put in an earlier output are never deleted."""
    bundle, out = exported("vae")[1], tmp_path / "repo"
    write_repository(bundle, out, "vae", POLICY.model_config())
    (out / "resnet" / "1").mkdir(parents=True)
    (out / "resnet" / "config.pbtxt").write_text('name: "resnet"')
    (out / "NOTES.md").write_text("my notes")
    before = {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")}
    assert main(["triton-repo", str(bundle), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "holds files that are not part of its repository (NOTES.md, resnet/, " \
        "resnet/1/, resnet/config.pbtxt), which a rewrite would lose" in error
    assert {p.relative_to(out): p.read_bytes() if p.is_file() else None for p in out.rglob("*")} == before


def test_a_symbolic_link_as_out_is_refused_and_left_as_it_was(exported, tmp_path):
    """Issue 25, case 3: --out a link to an empty folder; the link stays where it was, pointing where it did."""
    folder, link = tmp_path / "folder", tmp_path / "link"
    folder.mkdir()
    link.symlink_to(folder)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        write_repository(exported("vae")[1], link, "vae", POLICY.model_config())
    assert link.is_symlink() and link.readlink() == folder and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link"]


def test_a_name_that_would_leave_the_output_is_refused(exported, tmp_path):
    """Issue 25, case 5: every path written resolves inside the staging directory, whatever name made it."""
    out = tmp_path / "deep" / "repo"
    with pytest.raises(ConfigError, match=r"the path '\.\./\.\./escape\.encoder/config\.pbtxt' would be written "
                                          "outside the output directory"):
        write_repository(exported("vae")[1], out, "../../escape", POLICY.model_config())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep"]  # nothing written, no staging left


def test_a_repository_of_an_older_version_is_known_by_its_own_marker(exported, tmp_path):
    bundle, out = exported("vae")[1], tmp_path / "repo"
    models = write_repository(bundle, out, "vae", POLICY.model_config())
    (out / MARKER).unlink()
    (out / OLDER_MARKER).write_text(json.dumps({"bundle": str(bundle), "name": "vae", "models": models}))
    assert write_repository(bundle, out, "vae", POLICY.model_config()) == models
    assert (out / MARKER).is_file() and not (out / OLDER_MARKER).exists()


# ---- the Python steps' environment, the graphs in the Python backend, the sample's n tensor ----------------------

def test_a_step_refuses_numpy_2_naming_the_fix(monkeypatch):
    """Triton 2.51's Python backend misreads tensors under numpy 2, silently: a step refuses to load there."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stand_in_backend_utils())
    monkeypatch.delitem(sys.modules, "vaedeploy.deploy.triton_step", raising=False)
    step = importlib.import_module("vaedeploy.deploy.triton_step")
    with pytest.raises(RuntimeError, match=r"has numpy 2\.1\.0; expected numpy < 2 .* pip install 'numpy<2' into the "
                                           "environment the model's EXECUTION_ENV_PATH names"):
        step.check_environment("2.1.0")
    step.check_environment("1.26.4")


def test_a_model_py_without_vaedeploy_says_how_to_install_it(tmp_path):
    """-S: no site-packages, so no vaedeploy (run from an empty folder, so not from the source tree either)."""
    (tmp_path / "model.py").write_text(MODEL_PY)
    done = subprocess.run([sys.executable, "-S", "model.py"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert "ImportError: vaedeploy is not importable in Triton's Python environment (No module named 'vaedeploy'); " \
           "expected it installed there: pip install vaedeploy 'numpy<2' into the environment" in done.stderr


def test_python_graphs_run_the_requests_of_a_batch_as_one_call(repositories, exported, monkeypatch):
    """--graphs python: requests Triton hands over together run as one ONNX Runtime call and come back apart."""
    root, configs = repositories["vae", "python"]
    rt, run = load(exported("vae")[1]), Executor(root, configs, monkeypatch)
    z = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    first, second = run.run_requests("vae.decoder", [({"z": z[:2]}, {}), ({"z": z[2:]}, {})])
    np.testing.assert_allclose(np.concatenate([first["mean"], second["mean"]]), rt.decode(z), rtol=1e-6, atol=1e-6)
    assert first["mean"].shape == (2, 1, 8, 8) and second["logvar"].shape == (3, 1, 8, 8)
    rt.close()


def test_serve_takes_a_samples_n_as_the_tensor_triton_needs(exported):
    rt = load(exported("vae")[1])
    sample = next(op for op in operations("vae", rt) if op.name == "vae.sample")
    assert sample.piece({"n": np.array([3])}, {"seed": 1}).rows == 3
    assert sample.piece({}, {"n": 2}).rows == 2  # the request parameter, as before
    with pytest.raises(ProtocolError, match=r"vae\.sample: n is 3 as an input and 2 as a parameter; expected one of"):
        sample.piece({"n": np.array([3])}, {"n": 2})
    with pytest.raises(ProtocolError, match=r"input 'n': expected datatype INT64 and shape \[1\], got INT32 \[1\]"):
        sample.piece({"n": np.array([3], np.int32)}, {})
    with pytest.raises(ProtocolError, match=r"input 'n': expected an integer from 1 to 4096 \(the server's "
                                            r"--max-sample\), got 0"):
        sample.piece({"n": np.array([0])}, {})
    rt.close()
