"""The Python-backend models of a Triton repository (``vaedeploy triton-repo``), as Triton's Python backend runs them.

Each ``model.py`` the repository holds is a few lines (``triton_repo.MODEL_PY``): it imports ``TritonPythonModel``
from here, so a step computes with the runtime's own functions (``runtime.arrays.NumpyArrays``: the Philox noise,
reparameterize, nearest code, sigmoid; ``runtime.noise.Noise``: which stream rows a request draws;
``runtime.latents``: the latent scaling's one rule) and a seed gives
what ``vaedeploy serve`` gives, with nothing re-implemented. The model's config parameters name its step and the
step's settings; each request's own parameters (seed, offset, temperature) come with it, forwarded by the ensemble.

Steps:
- ``graph``: one of the bundle's ONNX graphs (``model.onnx`` beside ``model.py``) through ONNX Runtime, for Triton
  servers without the onnxruntime backend (``--graphs python``); the requests Triton's dynamic batcher hands over
  together run as one call;
- ``reparameterize``: z = mean + exp(logvar/2)·eps, the noise of each request's seed and offset (one stream of d or
  c·h·w elements per row, at the request's size), in ``encode``'s space where the bundle declares a latent scaling;
- ``prior_noise``: z ~ N(0, T²) of a ``sample``, ``n`` rows from its ``n`` tensor; for a bundle of any image size,
  at the request's ``height`` and ``width`` (the bundle's range and multiple; default its reference size);
- ``scale``, ``unscale``: a latent scaling's rule (``runtime.latents.to_encoded``, ``from_encoded``), for a
  deterministic ``encode`` and for ``decode``;
- ``stage1_noise``: a two-stage sample's z ~ N(mean, T²·γ);
- ``nearest``: VQ's nearest code (``codebook.npy`` beside ``model.py``);
- ``image``: a Bernoulli decoder's logits → the mean image.

The environment Triton runs a step in is checked when the model loads (``check_environment``): Triton 2.51's Python
backend reads tensors wrong under numpy 2, with no error (docs/serving.md).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # Triton's own module, present only inside its Python backend

from ..bundle import ImageSizes
from ..runtime.arrays import NumpyArrays
from ..runtime.latents import from_encoded, to_encoded
from ..runtime.noise import Noise
from ..runtime.operations import PARAMETERS, SIZE

ARRAYS = NumpyArrays()


def check_environment(numpy_version: str = np.__version__) -> None:
    """Refuse, with the fix, an environment whose numpy Triton's Python backend misreads (numpy 2 under 2.51)."""
    if int(numpy_version.split(".")[0]) >= 2:
        raise RuntimeError(f"Triton's Python environment has numpy {numpy_version}; expected numpy < 2 (Triton 2.51's "
                           "Python backend reads tensors wrong under numpy 2, silently): pip install 'numpy<2' into "
                           "the environment the model's EXECUTION_ENV_PATH names, or whose bin/ is first on the "
                           "server's PATH")


def parameter(parameters: dict, name: str):
    """A request parameter checked against the runtime's table (``runtime.operations.PARAMETERS``), or its default
    (a seed's is None: ``Noise.of`` draws a fresh one)."""
    spec, value = PARAMETERS[name], parameters.get(name)
    if value is None:
        return spec.default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (spec.integral and value != int(value)) \
            or not spec.low <= value <= spec.high:
        kind = "an integer" if spec.integral else "a number"
        raise ValueError(f"parameter {name}: expected {kind} from {spec.low:g} to {spec.high:g}, got {value!r}")
    return int(value) if spec.integral else float(value)


class TritonPythonModel:
    """One step of the repository; Triton calls ``initialize`` once, then ``execute`` with the requests queued."""

    def initialize(self, args: dict) -> None:
        check_environment()
        config = json.loads(args["model_config"])
        settings = {k: json.loads(v["string_value"]) for k, v in config.get("parameters", {}).items()
                    if k not in ("request_parameters", "EXECUTION_ENV_PATH")}
        self.step, self.settings = settings.pop("step"), settings
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        here = Path(args["model_repository"]) / args["model_version"]
        if self.step == "graph":
            from ..runtime.backends import SERVER_SESSION_CONFIG
            from ..runtime.backends.onnxruntime import ort, session_options

            self.session = ort.InferenceSession(str(here / "model.onnx"), session_options(config=SERVER_SESSION_CONFIG),
                                                providers=["CPUExecutionProvider"])
        if self.step == "nearest":
            self.codebook = np.load(here / "codebook.npy", allow_pickle=False)

    def execute(self, requests: list) -> list:
        if self.step == "graph":
            return self._graph(requests)
        return [self._respond(request, lambda r=request: getattr(self, "_" + self.step)(r)) for request in requests]

    def _respond(self, request, compute):
        """One request's response: its outputs, or its own error (one bad request must not fail the others)."""
        try:
            arrays = compute()
        except Exception as error:  # noqa: BLE001 - whatever went wrong is this request's answer, as a sentence
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.step}: {error}"))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(a))
                                                          for name, a in zip(self.outputs, arrays)])

    # ---- the steps ------------------------------------------------------------------------------------------------

    def _graph(self, requests: list) -> list:
        """The requests Triton's batcher hands over together, run as one call of the graph and split again."""
        feeds = [[_input(request, name) for name in self.inputs] for request in requests]
        try:
            joined = [np.concatenate(column) for column in zip(*feeds)]
            outputs = self.session.run(self.outputs, dict(zip(self.inputs, joined)))
        except Exception:  # noqa: BLE001 - a request that cannot join the batch: each runs alone, with its own error
            return [self._respond(r, lambda f=f: self.session.run(self.outputs, dict(zip(self.inputs, f))))
                    for r, f in zip(requests, feeds)]
        bounds = np.cumsum([0, *(len(f[0]) for f in feeds)])
        return [self._respond(r, lambda a=a, b=b: [o[a:b] for o in outputs])
                for r, a, b in zip(requests, bounds[:-1], bounds[1:])]

    def _reparameterize(self, request) -> tuple:
        mean, logvar = _input(request, "mean"), _input(request, "logvar")
        noise = _noise(request, len(mean))
        z = ARRAYS.reparameterize(mean, logvar, *noise.stream(math.prod(mean.shape[1:])))
        return (to_encoded(z, self.settings.get("scaling")),)

    def _prior_noise(self, request) -> tuple:
        n, parameters = _rows(request), _parameters(request)
        shape = self._latent_shape(parameters)
        noise = Noise.of(parameter(parameters, "seed"), parameter(parameters, "offset"), n)
        return (ARRAYS.normal((n, *shape), *noise.stream(math.prod(shape)))
                * np.float32(parameter(parameters, "temperature")),)

    def _latent_shape(self, parameters: dict) -> tuple:
        """One latent's shape for a sample request: the bundle's, or for a bundle of any image size, c×H/f×W/f at the
        request's ``height`` and ``width`` (each defaulting to the reference size), refused as the runtime refuses a
        size it does not take."""
        if "sizes" not in self.settings:
            return tuple(self.settings["shape"])
        sizes, f = ImageSizes.of(self.settings["sizes"]), self.settings["downsample"]
        size = tuple(reference if parameters.get(name) is None else parameter(parameters, name)
                     for name, reference in zip(SIZE, sizes.reference))
        if why := sizes.refusal(size):
            raise ValueError(f"parameters height, width: expected {why}, got {size[0]}×{size[1]}")
        return self.settings["shape"][0], size[0] // f, size[1] // f

    def _scale(self, request) -> tuple:
        return (to_encoded(_input(request, "z"), self.settings.get("scaling")),)

    def _unscale(self, request) -> tuple:
        return (from_encoded(_input(request, "z_scaled"), self.settings.get("scaling")),)

    def _stage1_noise(self, request) -> tuple:
        mean, log_gamma = _input(request, "mean"), _input(request, "log_gamma")
        n, d = mean.shape
        t = np.float32(parameter(_parameters(request), "temperature"))
        eps = ARRAYS.normal((n, d), *_noise(request, n).stream(d, base=self.settings["base"]))
        return (mean + t * ARRAYS.exp(0.5 * log_gamma) * eps,)

    def _nearest(self, request) -> tuple:
        z_e = _input(request, "z_e")
        n, d, h, w = z_e.shape
        index, quantized = ARRAYS.nearest(ARRAYS.channels_last(z_e).reshape(-1, d), self.codebook)
        return index.reshape(n, h, w).astype(np.int64), ARRAYS.channels_first(quantized.reshape(n, h, w, d))

    def _image(self, request) -> tuple:
        return (ARRAYS.sigmoid(_input(request, self.settings["input"])),)


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def _parameters(request) -> dict:
    return json.loads(request.parameters() or "{}")


def _noise(request, rows: int) -> Noise:
    parameters = _parameters(request)
    return Noise.of(parameter(parameters, "seed"), parameter(parameters, "offset"), rows)


def _rows(request) -> int:
    """A sample's ``n``: its one-element tensor (Triton refuses an ensemble step without an input tensor), checked as
    the parameter is, and equal to the parameter ``n`` where a request sends both."""
    n = parameter({"n": int(_input(request, "n").reshape(-1)[0])}, "n")
    given = _parameters(request).get("n", n)
    if given != n:
        raise ValueError(f"n is {n} as an input and {given!r} as a parameter; expected one of the two")
    return n
