"""`vaedeploy triton-repo BUNDLE --out DIR`: a Triton Inference Server model repository of a bundle, for scale-out.

The repository serves the same V2 models as ``vaedeploy serve`` (same names, inputs, outputs and request
parameters), so a client moves from one to the other unchanged (docs/serving.md):

- ``NAME.encoder``, ``NAME.decoder`` (and ``NAME.<prior graph>`` of a two-stage VAE): the bundle's ONNX graphs as
  ``onnxruntime_onnx`` models (for GPU servers), or with ``graphs="python"`` (``--graphs python``) as Python-backend
  models that run them through ONNX Runtime (for Triton servers without the onnxruntime backend), with the dynamic
  batching of ``vaedeploy serve``'s options;
- Python-backend steps (``model.py`` imports ``triton_step``, which computes with the runtime's own functions, so
  the noise is the runtime's, bit for bit): ``NAME.reparameterize`` (z = mean + exp(logvar/2)·eps),
  ``NAME.prior_noise`` (z ~ N(0, T²) for ``sample``), ``NAME.stage1_noise`` (two-stage), ``NAME.nearest`` (VQ's
  nearest code), ``NAME.image`` (a Bernoulli decoder's logits → mean image), ``NAME.scale`` and ``NAME.unscale``
  (a latent scaling's rule, ``runtime.latents``: after a deterministic encoder, before the decoder in ``decode``);
- ensembles with ``vaedeploy serve``'s names chaining them, one per operation of the runtime's table
  (``vaedeploy.runtime.operations``), whose tensors and request parameters they take: ``NAME.encode``,
  ``NAME.encode_params``, ``NAME.decode``, ``NAME.sample``. A sample's rows come as a one-element INT64 tensor ``n``
  (``SAMPLE_ROWS``), since Triton refuses an ensemble step without an input tensor; ``vaedeploy serve`` takes the
  same tensor. Not those ``NOT_ENSEMBLES`` lists: ``NAME.reconstruct`` (an ensemble has one tensor per name, so it
  cannot take ``x`` and give ``x``: decode the ``mean`` of ``encode_params``, or use ``vaedeploy serve``), VQ's
  ``NAME.decode_codes`` and ``NAME.sample_codes``.
Triton forwards an ensemble's request parameters to its steps (Triton ≥ 23.10, core PR #261), so a request's seed
reaches the noise step, and a spatial sample's ``height`` and ``width`` (a bundle of any image size: every axis of
any size is -1 in the configs, ``Tensor.v2_shape``) reach ``prior_noise``, which draws at that size. The Python
steps need ``vaedeploy`` importable in Triton's Python environment (numpy < 2 and onnxruntime, no torch); each checks
it when it loads, with a message naming the fix.

Written for the latent types ``gaussian`` (with or without a two-stage prior), ``deterministic`` and ``vq`` (not its
``sample``: the autoregressive prior runs one graph call per code, which is ``vaedeploy serve``'s job); a
``hierarchical`` bundle is refused with a sentence saying so. Version folders are ``1/``, as Triton expects. The
output directory follows vaedeploy's one ownership rule (``vaedeploy.owned``): it is replaced whole, atomically where
the OS allows, only when it is absent, empty or a repository this command wrote holding nothing the user added (a
rerun refuses, listing the entries that would be lost); every path written, whatever model or file name made it,
must stay inside the output directory.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import owned
from ..bundle import load_bundle
from ..errors import ConfigError
from ..runtime.latents import STAGE1_NOISE_OFFSET, latent_scaling
from ..runtime.operations import DTYPE_NAMES, Operation, Tensor, operations_of

OLDER_MARKER = ".vaedeploy-triton-repo.json"  # what marked a repository before vaedeploy's one marker
ENUM_FIELDS = {"data_type", "kind", "timeout_action"}  # written unquoted in the text format
# the operations of the runtime's table the repository writes no ensemble for, and why (module docstring)
NOT_ENSEMBLES = {
    "reconstruct": "an ensemble has one tensor per name, so it cannot take x and give x",
    "decode_codes": "the codebook lookup is not written as a step yet: send z_q to decode",
    "sample_codes": "the autoregressive prior runs one graph call per code: vaedeploy serve's job",
}
NOT_ENSEMBLES_OF = {"vq": {"sample": NOT_ENSEMBLES["sample_codes"]}}  # by latent type, besides NOT_ENSEMBLES
# what runs the bundle's graphs: Triton's onnxruntime backend (GPU servers, the default), or its Python backend
# through ONNX Runtime (servers built without the onnxruntime backend, such as the one nvidia-pytriton ships)
GRAPH_RUNNERS = {"onnxruntime": "onnxruntime_onnx models", "python": "Python-backend models over ONNX Runtime"}


def ensembles_of(operations: dict[str, Operation], latent_type: str) -> list[str]:
    """The operations of a bundle's table (``runtime.operations``) that its repository serves as ensembles."""
    left_out = {**NOT_ENSEMBLES, **NOT_ENSEMBLES_OF.get(latent_type, {})}
    return [name for name in operations if name not in left_out]


# ---- the text format of ModelConfig ------------------------------------------------------------------------------

def _scalar(key: str, value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return value if key in ENUM_FIELDS else json.dumps(value)


def text_proto(message: dict, indent: int = 0) -> str:
    """A ``ModelConfig`` given as its JSON fields (dicts, lists, scalars; maps as dicts) in protobuf's text format."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if value == [] or value == {}:
            continue  # an empty repeated field or map is the field's default
        if isinstance(value, dict) and key == "parameters":  # map<string, ModelParameter>
            for name, parameter in value.items():
                lines.append(f"{pad}{key} {{\n{pad}  key: {json.dumps(name)}\n{pad}  value {{\n"
                             f"{text_proto(parameter, indent + 2)}{pad}  }}\n{pad}}}")
            continue
        if isinstance(value, dict) and key in ("input_map", "output_map"):  # map<string, string>
            for k, v in value.items():
                lines.append(f"{pad}{key} {{\n{pad}  key: {json.dumps(k)}\n{pad}  value: {json.dumps(v)}\n{pad}}}")
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{text_proto(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines += [f"{pad}{key} {{\n{text_proto(item, indent + 1)}{pad}}}" for item in value]
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(key, v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(key, value)}")
    return "".join(line + "\n" for line in lines)


# ---- the models -------------------------------------------------------------------------------------------------

def _tensor(name: str, datatype: str, dims) -> dict:
    return {"name": name, "data_type": f"TYPE_{datatype}", "dims": [int(d) for d in dims]}


def _table_tensors(tensors: tuple[Tensor, ...], batching: bool) -> list[dict]:
    """The table's tensors, -1 for every axis of any size (``Tensor.v2_shape``); without ``batching`` the batch axis
    is one of the dims."""
    return [_tensor(t.name, t.datatype, t.v2_shape[1:] if batching else t.v2_shape) for t in tensors]


def _graph_tensors(specs: list[dict]) -> list[dict]:
    """A graph entry's tensors; an axis the manifest names (``bundle.IMAGE_AXES``, ``LATENT_AXES``: a bundle of any
    image size) takes any size, -1."""
    return [_tensor(s["name"], DTYPE_NAMES[np.dtype(s["dtype"])], [-1 if isinstance(d, str) else d
                                                                   for d in s["shape"][1:]]) for s in specs]


# A sample's rows, as a tensor: Triton refuses an ensemble step with no input tensor, so `n` comes as one INT64
# element (vaedeploy serve takes the same tensor, or the request parameter n; docs/serving.md)
SAMPLE_ROWS = _tensor("n", "INT64", [1])


class _Repository:
    """The models of one bundle, as ModelConfig dicts, and the files each needs."""

    def __init__(self, bundle, name: str, batching: dict, graphs: str):
        self.bundle, self.name, self.batching, self.graphs = bundle, name, batching, graphs
        self.operations = operations_of(bundle)
        self.max_batch = int(batching.get("max_batch_size", 64))
        self.configs: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes | Path]] = {}  # model → {path in its version folder: content}

    def graph(self, role: str) -> str:
        """The model of one of the bundle's graphs: Triton's onnxruntime backend runs it, or with ``graphs`` "python"
        the Python backend through ONNX Runtime (``triton_step``)."""
        entry = self.bundle.graph(role)
        inputs, outputs = _graph_tensors(entry["inputs"]), _graph_tensors(entry["outputs"])
        if self.graphs == "python":
            model = self.python(role, inputs, outputs, step="graph")
        else:
            model = f"{self.name}.{role}"
            self.configs[model] = {"name": model, "platform": "onnxruntime_onnx", "max_batch_size": self.max_batch,
                                   "input": inputs, "output": outputs,
                                   **{k: v for k, v in self.batching.items() if k != "max_batch_size"}}
            self.files[model] = {}
        self.files[model]["model.onnx"] = entry["path"]
        return model

    def python(self, part: str, inputs: list[dict], outputs: list[dict], settings: dict | None = None,
               reads: tuple[str, ...] = (), batching: bool = True, step: str | None = None) -> str:
        """The Python-backend model ``NAME.part`` running ``step`` of ``triton_step`` (default: the one named
        ``part``) with its ``settings`` (JSON values) and the request parameters it ``reads``; without ``batching``
        it takes no batch axis (a sample's noise: each request says its rows in its ``n`` tensor)."""
        model = f"{self.name}.{part}"
        parameters = {k: {"string_value": json.dumps(v)} for k, v in {"step": step or part, **(settings or {})}.items()}
        if reads:
            parameters["request_parameters"] = {"string_value": ",".join(reads)}
        config = {"name": model, "backend": "python", "max_batch_size": self.max_batch if batching else 0,
                  "input": inputs, "output": outputs, "parameters": parameters}
        if batching:
            config.update({k: v for k, v in self.batching.items() if k != "max_batch_size"})
        else:
            config["instance_group"] = self.batching.get("instance_group", [{"count": 1, "kind": "KIND_CPU"}])
        self.configs[model] = config
        self.files[model] = {"model.py": MODEL_PY.encode()}
        return model

    def ensemble(self, operation: str, steps: list[tuple]) -> None:
        """The ensemble of one operation of the table, whose tensors and request parameters it takes (named in its
        config as ``vaedeploy serve``'s /config does); ``steps``: (model, {step input: ensemble tensor}, {step output:
        ensemble tensor}). An operation without inputs (a sample) is not batched and takes its rows as the tensor
        ``SAMPLE_ROWS``: Triton refuses an ensemble step without an input tensor."""
        op = self.operations[operation]
        batching, reads = bool(op.inputs), op.parameters
        model = f"{self.name}.{operation}"
        inputs = _table_tensors(op.inputs, batching) if batching else [SAMPLE_ROWS]
        self.configs[model] = {
            "name": model, "platform": "ensemble", "max_batch_size": self.max_batch if batching else 0,
            "input": inputs, "output": _table_tensors(op.outputs, batching),
            "ensemble_scheduling": {"step": [{"model_name": m, "model_version": -1, "input_map": i, "output_map": o}
                                             for m, i, o in steps]}}
        if reads:
            self.configs[model]["parameters"] = {"request_parameters": {"string_value": ",".join(reads)}}
        self.files[model] = {}


def _image_step(repo: _Repository, decoder: str, source: str, target: str) -> list[tuple]:
    """The steps from a decoder's input tensor ``source`` to the mean image ``target``."""
    entry = repo.bundle.graph("decoder")
    first = entry["outputs"][0]["name"]
    step_input = entry["inputs"][0]["name"]
    if repo.bundle.manifest["likelihood"]["kind"] != "bernoulli":
        return [(decoder, {step_input: source}, {first: target})]
    image = repo.python("image", _graph_tensors(entry["outputs"][:1]),
                        _table_tensors(repo.operations["decode"].outputs, batching=True), {"input": first})
    return [(decoder, {step_input: source}, {first: f"{target}_logits"}),
            (image, {first: f"{target}_logits"}, {"x": target})]


def build(bundle, name: str, batching: dict, graphs: str = "onnxruntime") -> _Repository:
    """The models of a loaded bundle served as ``name`` with ``batching`` (``BatchPolicy.model_config``): one
    ensemble per operation of ``ensembles_of``, over the graphs (run by ``graphs``: one of ``GRAPH_RUNNERS``) and
    Python steps it chains."""
    if graphs not in GRAPH_RUNNERS:
        raise ConfigError(f"graphs: expected one of {', '.join(GRAPH_RUNNERS)}, got {graphs!r}")
    latent = bundle.latent
    kind = latent["type"]
    if kind == "hierarchical":
        raise ConfigError(f"{bundle.root}: triton-repo writes gaussian, deterministic and vq bundles; a hierarchical "
                          "one needs a noise input per layer and a concatenation step that are not written yet: "
                          "serve it with `vaedeploy serve`")
    repo = _Repository(bundle, name, batching, graphs)
    steps = _steps(repo, kind)
    for operation in ensembles_of(repo.operations, kind):
        repo.ensemble(operation, steps[operation])
    return repo


def _steps(repo: _Repository, kind: str) -> dict[str, list[tuple]]:
    """Each ensemble's steps, by operation, for a bundle of latent type ``kind``."""
    bundle, latent = repo.bundle, repo.bundle.latent
    d = bundle.latent_shape[0]
    encoder, decoder = repo.graph("encoder"), repo.graph("decoder")
    enc_outputs = [o["name"] for o in bundle.graph("encoder")["outputs"]]
    steps = {"encode_params": [(encoder, {"x": "x"}, {o: o for o in enc_outputs})]}
    if kind == "vq":
        grid = list(bundle.latent_shape[1:])
        codes, z_q = _tensor("codes", "INT64", grid), _tensor("z_q", "FP32", [d, *grid])
        nearest = repo.python("nearest", [_tensor("z_e", "FP32", [d, *grid])], [codes, z_q],
                              {"codebook": latent["codebook"]})
        repo.files[nearest]["codebook.npy"] = bundle.path(bundle.manifest["arrays"][latent["codebook"]])
        steps["encode"] = [(encoder, {"x": "x"}, {"z_e": "z_e"}),
                           (nearest, {"z_e": "z_e"}, {"codes": "codes", "z_q": "z_q"})]
        steps["decode"] = _image_step(repo, decoder, "z_q", "x")
        return steps
    z = _table_tensors(repo.operations["decode"].inputs, batching=True)[0]  # one latent: [d] or [c, -1, -1]
    scaling = latent_scaling(latent)
    steps["decode"] = _image_step(repo, decoder, "z", "x")
    if scaling is not None:  # decode takes encode's latents: the graph's are z / scale + shift (runtime.latents)
        unscale = repo.python("unscale", [{**z, "name": "z_scaled"}], [z], {"scaling": scaling})
        steps["decode"] = [(unscale, {"z_scaled": "z"}, {"z": "z_graph"}),
                           *_image_step(repo, decoder, "z_graph", "x")]
    if kind == "deterministic":
        steps["encode"] = [(encoder, {"x": "x"}, {"z": "z" if scaling is None else "z_graph"})]
        if scaling is not None:
            scale = repo.python("scale", [z], [{**z, "name": "z_scaled"}], {"scaling": scaling})
            steps["encode"].append((scale, {"z": "z_graph"}, {"z_scaled": "z"}))
        return steps
    reparameterize = repo.python("reparameterize", _graph_tensors(bundle.graph("encoder")["outputs"]), [z],
                                 {"scaling": scaling} if scaling else {}, reads=repo.operations["encode"].parameters)
    steps["encode"] = [(encoder, {"x": "x"}, {"mean": "mean", "logvar": "logvar"}),
                       (reparameterize, {"mean": "mean", "logvar": "logvar"}, {"z": "z"})]
    sample = repo.operations["sample"]
    prior = latent.get("prior")
    if prior is None:  # N(0, T²) in the graph's own space, as Runtime.sample draws it: no scaling
        draw = repo.python("prior_noise", [SAMPLE_ROWS], [{**z, "dims": [-1, *z["dims"]]}], _draw(repo, sample),
                           sample.parameters, batching=False)
        steps["sample"] = [(draw, {"n": "n"}, {"z": "z"}), *_image_step(repo, decoder, "z", "x")]
        return steps
    u_dim, stage2 = int(prior["dim"]), repo.graph(prior["graph"])
    draw = repo.python("prior_noise", [SAMPLE_ROWS], [_tensor("z", "FP32", [-1, u_dim])], {"shape": [u_dim]},
                       sample.parameters, batching=False)
    stage1 = repo.python("stage1_noise", [_tensor("mean", "FP32", [d]), _tensor("log_gamma", "FP32", [d])],
                         [_tensor("z", "FP32", [d])], {"base": STAGE1_NOISE_OFFSET}, sample.parameters)
    steps["sample"] = [(draw, {"n": "n"}, {"z": "u"}), (stage2, {"u": "u"}, {"mean": "mean", "log_gamma": "log_gamma"}),
                       (stage1, {"mean": "mean", "log_gamma": "log_gamma"}, {"z": "z"}),
                       *_image_step(repo, decoder, "z", "x")]
    return steps


def _draw(repo: _Repository, sample: Operation) -> dict:
    """The settings of a ``prior_noise`` step: one latent's ``shape``; for a sample at any size (the table's
    ``height`` and ``width``), the bundle's ``input`` shape and size range and the latent's ``downsample``, from which
    the step finds the shape of a request's size."""
    settings = {"shape": list(repo.bundle.latent_shape)}
    if sample.bounds:
        bundle_input = repo.bundle.manifest["input"]
        settings.update(sizes={"shape": bundle_input["shape"], "size": bundle_input["size"]},
                        downsample=repo.bundle.downsample)
    return settings


# ---- writing ----------------------------------------------------------------------------------------------------

def older_repository(directory: Path) -> set[str] | None:
    """The entries a repository written before vaedeploy's marker vouches for: its ``OLDER_MARKER`` names its
    models, and each model folder holds what this writer puts there (config.pbtxt, ``1/`` with its model file and
    the codebook); None without that marker."""
    try:
        models = json.loads((directory / OLDER_MARKER).read_text())["models"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    if not isinstance(models, list) or not all(isinstance(m, str) and "/" not in m for m in models):
        return None
    listed = {OLDER_MARKER}
    for model in models:
        listed |= {f"{model}/", f"{model}/config.pbtxt", f"{model}/1/",
                   *(f"{model}/1/{file}" for file in ("model.onnx", "model.py", "codebook.npy"))}
    return listed


REPOSITORY = owned.Kind(tool="triton-repo", what="a repository written by `vaedeploy triton-repo`",
                        noun="repository", error=ConfigError, legacy=older_repository)


def write_repository(bundle_dir, out, name: str, batching: dict, graphs: str = "onnxruntime") -> list[str]:
    """Write the repository of the bundle at ``bundle_dir`` served as ``name`` into ``out``; returns its models.

    ``out`` follows vaedeploy's ownership rule (``vaedeploy.owned``): absent, empty, or an earlier output holding
    nothing the user added, else refused with the entries that would be lost; a failure leaves it as it was.

    Args:
        batching: ``max_batch_size``, ``dynamic_batching`` and ``instance_group`` as Triton's ModelConfig JSON
            fields (``vaedeploy.serve.batcher.BatchPolicy.model_config()`` gives them from serve's options).
        graphs: what runs the bundle's graphs (``GRAPH_RUNNERS``).
    """
    bundle = load_bundle(bundle_dir)
    repo = build(bundle, name, batching, graphs)
    details = {"bundle": str(Path(bundle_dir).resolve()), "name": name, "models": sorted(repo.configs)}
    with owned.Staging(Path(out), REPOSITORY, details) as staging:
        for model, config in repo.configs.items():
            staging.write_bytes(f"{model}/config.pbtxt", text_proto(config).encode())
            staging.mkdir(f"{model}/1")  # Triton needs the version folder, an ensemble's too
            for file, content in repo.files[model].items():
                if isinstance(content, Path):
                    staging.copy(f"{model}/1/{file}", content)
                else:
                    staging.write_bytes(f"{model}/1/{file}", content)
        staging.commit()
    return sorted(repo.configs)


# ---- the model.py of every Python-backend model --------------------------------------------------------------------

# The step itself is vaedeploy's (``triton_step``); this file only says how to fix an environment without vaedeploy.
MODEL_PY = '''"""A step of a Triton repository written by `vaedeploy triton-repo`: vaedeploy.deploy.triton_step runs it,
with the runtime's own noise, nearest-code and graph functions; this model's config parameters name the step."""
try:
    from vaedeploy.deploy.triton_step import TritonPythonModel  # noqa: F401
except ImportError as error:
    raise ImportError(f"vaedeploy is not importable in Triton's Python environment ({error}); expected it installed "
                      "there: pip install vaedeploy 'numpy<2' into the environment the model's EXECUTION_ENV_PATH "
                      "names, or whose bin/ is first on the server's PATH (docs/serving.md)") from error
'''
