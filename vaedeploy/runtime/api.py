"""One API over every backend: `load(bundle)` → encode, encode_params, decode, sample, reconstruct.

numpy arrays in give numpy arrays out; torch tensors in give tensors out on the tensor's device. The noise of
``encode`` and ``sample`` comes from ``vaedeploy.kernels`` and is defined by (seed, offset), not by a framework RNG:
element i of the N×d latent draws Philox counter i, so the same seed gives the same z on every call and on every
backend of one device, whatever the batch splitting. With the onnxruntime backend nothing here imports torch.
"""
from __future__ import annotations

import math
import secrets
import sys

import numpy as np

from ..bundle import PRECISIONS, Bundle, load_bundle
from ..kernels import reparameterize_numpy, standard_normal_numpy
from .backends import resolve, runner_class

_FLOAT32 = np.dtype(np.float32)
_CASTABLE = (np.float16, np.float64)  # floats that become float32 without surprise; ints and bools are refused


class InputError(ValueError):
    """An input the runtime cannot use: the message names the argument, what was expected and what came."""


def _same(x):
    return x


def _shape_text(shape) -> str:
    return "×".join(str(s) for s in shape) if len(shape) else "a 0-d scalar"


def _is_torch_tensor(x) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist where torch was imported; never import it here
    return torch is not None and isinstance(x, torch.Tensor)


class Runtime:
    """A loaded bundle on one backend and device. Build it with ``vaedeploy.load``.

    Attributes: ``backend`` (the backend that runs, also when ``auto`` chose it), ``device``, ``precision``,
    ``latent_dim``, ``input_shape``, ``max_batch`` (larger batches are split and reassembled in order).
    This class serves Gaussian and deterministic latents; ``kinds.py`` subclasses it for VQ, hierarchical and
    two-stage bundles.
    """

    LATENT_TYPES = ("gaussian", "deterministic")
    DECODER_ROLE = "decoder"  # the graph behind ``decode(z)``

    def __init__(self, bundle: Bundle, backend: str, device: str, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.bundle, self.backend, self.device, self.precision = bundle, backend, device, precision
        self.kind = bundle.kind
        self.latent_type = bundle.latent["type"]
        if self.latent_type not in self.LATENT_TYPES:
            raise ValueError(f"{bundle.root}: {type(self).__name__} serves {' and '.join(self.LATENT_TYPES)} "
                             f"latents, the bundle has {self.latent_type!r}")
        self.latent_dim = int(bundle.latent["dim"])
        self.input_shape = bundle.input_shape
        self.max_batch = bundle.max_batch
        self.likelihood = bundle.manifest["likelihood"]["kind"]
        self._Runner = runner_class(backend)
        self._native = self._Runner.native
        encoder_outputs = [o["name"] for o in bundle.graph("encoder", precision)["outputs"]]
        self._encoder = self._runner("encoder", encoder_outputs)
        # decode returns the mean image: only the first likelihood parameter is computed and copied out
        self._decoder = self._runner(self.DECODER_ROLE, self._image_outputs)
        if self._native == "torch":
            import torch

            self._torch = torch

    def __repr__(self) -> str:
        return (f"Runtime({self.bundle.root}, kind={self.kind}, backend={self.backend}, device={self.device}, "
                f"precision={self.precision})")

    @property
    def _image_outputs(self) -> list[str]:
        return self.bundle.manifest["likelihood"]["outputs"][:1]

    def _runner(self, role: str, outputs: list[str]):
        return self._Runner(self.bundle, role, self.precision, self.device, outputs)

    def runner(self, role: str):
        """The backend's runner of one graph (``encoder`` or ``decoder``), e.g. to time its raw session."""
        return {"encoder": self._encoder, "decoder": self._decoder}[role]

    # ---- conversion between what the caller gives and what the backend runs on -------------------------------

    def _take(self, x, trailing: tuple, name: str):
        """Check ``x`` (N × trailing floats, finite, N ≥ 1) and return it in the backend's type, with the function
        that turns a backend result back into the caller's type.

        The hot path (a float32 numpy array for onnxruntime) costs about a microsecond: an identity dtype check, a
        tuple compare, and the finiteness test as one dot product (NaN and Inf propagate into x·x; only when that is
        not finite, which a huge but finite input can also cause, is every value tested).
        """
        if type(x) is np.ndarray:
            if x.dtype is not _FLOAT32:
                if x.dtype.type not in _CASTABLE:
                    raise InputError(f"{name}: expected float32 values (float16/float64 are converted), got {x.dtype}")
                with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf, refused below
                    x = x.astype(np.float32)
            back = _same
        elif _is_torch_tensor(x):
            if not x.is_floating_point():
                raise InputError(f"{name}: expected a floating-point tensor (float32), got {x.dtype}")
            back = self._back_to_torch(x.device)
            x = x.detach()
        else:
            raise InputError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
        if x.shape[1:] != trailing:
            raise InputError(f"{name}: expected shape N×{_shape_text(trailing)}, got {_shape_text(x.shape)}"
                             + (" (add a batch axis)" if tuple(x.shape) == trailing else ""))
        if x.shape[0] == 0:
            raise InputError(f"{name}: expected at least one row (N ≥ 1), got an empty batch")
        if self._native == "numpy":
            if back is not _same:
                x = x.to("cpu", sys.modules["torch"].float32).numpy()
            if not math.isfinite(np.vdot(x, x)) and not np.isfinite(x).all():
                raise InputError(f"{name}: expected finite values, got NaN or Inf")
            return (x if x.flags.c_contiguous else np.ascontiguousarray(x)), back
        torch = self._torch
        x = torch.as_tensor(x) if back is _same else x
        if not torch.isfinite(x).all():
            raise InputError(f"{name}: expected finite values, got NaN or Inf")
        return x.to(self.device, torch.float32), (self._to_numpy if back is _same else back)

    @staticmethod
    def _to_numpy(t):
        return t.cpu().numpy()

    def _back_to_torch(self, device):
        if self._native == "torch":
            return lambda t: t.to(device)
        torch = sys.modules["torch"]
        return lambda a: torch.from_numpy(a).to(device)

    def _default_output(self):
        """How a result made without a caller's input (``sample``) comes back: numpy on the CPU, else a tensor."""
        if self._native == "numpy":
            return _same
        return self._to_numpy if self.device == "cpu" else _same

    # ---- running the graphs ----------------------------------------------------------------------------------

    def _run(self, runner, *inputs) -> list:
        """The runner's outputs for inputs of N rows each, in slices of at most ``max_batch`` rows."""
        n = len(inputs[0])
        if n <= self.max_batch:
            return runner(*inputs)
        parts = [runner(*(x[i : i + self.max_batch] for x in inputs)) for i in range(0, n, self.max_batch)]
        return [self._join([p[k] for p in parts], 0) for k in range(len(parts[0]))]

    def _join(self, arrays, axis: int):
        return (np.concatenate if self._native == "numpy" else self._torch.cat)(arrays, axis)

    def _normal(self, shape, seed: int, offset: int = 0):
        """Standard normals from the kernels' counter-based stream: element i is draw offset + i of ``seed``."""
        if self._native == "numpy":
            return standard_normal_numpy(shape, seed, offset)
        from ..kernels import standard_normal

        return standard_normal(shape, seed, offset, device=self.device)

    def _image(self, params):
        """The mean image from the decoder's first likelihood parameter (sigmoid of the logits for Bernoulli)."""
        if self.likelihood != "bernoulli":
            return params
        if self._native == "numpy":
            return np.exp(-np.logaddexp(np.float32(0), -params))
        return self._torch.sigmoid(params)

    def _noise_seed(self, seed) -> int:
        if seed is None:
            return secrets.randbits(63)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise InputError(f"seed: expected None or an integer in [0, 2**63), got {seed!r}")
        return int(seed)

    def _latent_from_params(self, params: list, seed):
        if self.latent_type == "deterministic":
            return params[0]
        mean, logvar = params
        if self._native == "numpy":
            return reparameterize_numpy(mean, logvar, self._noise_seed(seed))
        from ..kernels import reparameterize

        return reparameterize(mean, logvar, self._noise_seed(seed))

    # ---- the API ---------------------------------------------------------------------------------------------

    def encode_params(self, x):
        """The encoder's outputs for images x (N × input shape): ``(mean, logvar)``, or ``(z,)`` for an AE."""
        x, back = self._take(x, self.input_shape, "x")
        params = self._run(self._encoder, x)
        return tuple(params) if back is _same else tuple(back(p) for p in params)

    def encode(self, x, seed: int | None = None):
        """A latent z (N × latent_dim) per image: a draw from q(z|x) (``seed`` fixes it; None draws a fresh seed),
        or the code itself for deterministic latents."""
        x, back = self._take(x, self.input_shape, "x")
        return back(self._latent_from_params(self._run(self._encoder, x), seed))

    def decode(self, z):
        """The mean image (N × input shape) of p(x|z) for latents z (N × latent_dim)."""
        z, back = self._take(z, (self.latent_dim,), "z")
        return back(self._image(self._run(self._decoder, z)[0]))

    def reconstruct(self, x):
        """decode(the encoder's most likely code): the posterior mean for Gaussian latents."""
        x, back = self._take(x, self.input_shape, "x")
        z = self._run(self._encoder, x)[0]
        return back(self._image(self._run(self._decoder, z)[0]))

    def _check_sample(self, n, seed, temperature) -> tuple[int, int, float]:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n: expected a positive integer, got {n!r}")
        if not isinstance(temperature, (int, float)) or not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature: expected a finite number ≥ 0, got {temperature!r}")
        return int(n), self._noise_seed(seed), float(temperature)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """n images decoded from z ~ N(0, temperature² I) (Gaussian latents only: the prior of the VAE)."""
        if self.latent_type != "gaussian":
            raise InputError(f"sample: a {self.kind} bundle has no prior over its {self.latent_type} latents; "
                             "expected a bundle with gaussian latents")
        n, seed, temperature = self._check_sample(n, seed, temperature)
        z = self._normal((n, self.latent_dim), seed) * np.float32(temperature)
        return self._default_output()(self._image(self._run(self._decoder, z)[0]))


def load(bundle, backend: str = "auto", device: str = "cpu", precision: str = "fp32", verify: bool = True) -> Runtime:
    """Load a bundle directory and return a ``Runtime`` on ``backend``.

    Args:
        bundle: the directory ``vaedeploy export`` wrote.
        backend: ``auto`` (the fastest installed: onnxruntime, then torch), ``onnxruntime`` or ``torch``.
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``fp32`` (default) or ``fp16`` when the bundle has half-precision graphs.
        verify: check every file's sha256 (default True).
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    from .kinds import runtime_class  # kinds.py subclasses Runtime, so it imports this module

    loaded = load_bundle(bundle, verify=verify)
    return runtime_class(loaded)(loaded, resolve(backend), device, precision)
