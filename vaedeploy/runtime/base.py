"""The runtime every latent type shares: input checks, batches split at ``max_batch``, runners' lifecycle, the API.

numpy arrays in give numpy arrays out; torch tensors in give tensors out on the tensor's device (``arrays.py``).
A call of N rows runs in slices of at most ``max_batch`` rows, each slice drawing the noise of its own rows
(``noise.py``), and its result is filled into one array of N rows, so memory is bounded by the batch and the result.
The latent types (``latents.py``) implement the per-slice steps: ``_encode_params_rows``, ``_encode_rows``,
``_decode_rows``, ``_reconstruct_rows`` and, where the bundle has a prior, ``_sample_rows``; each takes the arrays
of one slice (and its rows' ``Noise``).
"""
from __future__ import annotations

import numpy as np

from ..bundle import PRECISIONS, Bundle
from ..errors import ConfigError, InputError
from .backends import backend_class
from .noise import Noise


class Runtime:
    """A loaded bundle on one backend and device. Build it with ``vaedeploy.load``; ``close()`` (or ``with``) frees it.

    Attributes: ``backend`` (the backend that runs, also when ``auto`` chose it), ``device``, ``precision``,
    ``kind``, ``latent_type``, ``latent_dim``, ``input_shape``, ``max_batch`` (larger batches are split and
    reassembled in order), ``runners`` (role → the backend's runner of that graph, with its last call's time).
    """

    LATENT_TYPES: tuple[str, ...] = ()
    DECODER_ROLE = "decoder"  # the graph behind ``decode(z)``

    def __init__(self, bundle: Bundle, backend: str, device: str, precision: str):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.bundle, self.backend, self.device, self.precision = bundle, backend, device, precision
        self.kind, self.latent_type = bundle.kind, bundle.latent["type"]
        if self.latent_type not in self.LATENT_TYPES:
            raise ConfigError(f"{bundle.root}: {type(self).__name__} serves {' and '.join(self.LATENT_TYPES)} "
                              f"latents, the bundle has {self.latent_type!r}")
        self.latent_dim = int(bundle.latent["dim"])
        self.input_shape = bundle.input_shape
        self.max_batch = bundle.max_batch
        self.likelihood = bundle.manifest["likelihood"]["kind"]
        self.runners: dict = {}
        self._backend = backend_class(backend)(bundle, precision, device)
        self.arrays = self._backend.arrays
        self.closed = False
        try:
            self._decoder = self._runner(self.DECODER_ROLE, self.bundle.manifest["likelihood"]["outputs"][:1])
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.bundle.root}, kind={self.kind}, backend={self.backend}, "
                f"device={self.device}, precision={self.precision})")

    def _runner(self, role: str, outputs: list[str] | None = None):
        """An active runner of graph ``role`` returning ``outputs`` (decode returns the mean image: only the first
        likelihood parameter is computed and copied out)."""
        runner = self._backend.runner(role, outputs).activate()
        self.runners[role] = runner
        return runner

    def close(self) -> None:
        """Free every runner's session or module; later calls raise ``InputError``."""
        for runner in self.runners.values():
            runner.deactivate()
        self._backend.close()
        self.closed = True

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- shared steps ------------------------------------------------------------------------------------------

    def _take(self, x, trailing: tuple, name: str):
        if self.closed:
            raise InputError(f"{self!r} is closed; load the bundle again")
        return self.arrays.take(x, trailing, name)

    def _map(self, step, *arrays) -> tuple:
        """``step(*arrays)`` on slices of at most ``max_batch`` rows of every array (the noise slices like one);
        each of its outputs gathered in order into one array of all the rows."""
        n = len(arrays[0])
        if n <= self.max_batch:  # the hot path: no slicing
            return step(*arrays)
        gathered = None
        for start in range(0, n, self.max_batch):
            rows = slice(start, min(n, start + self.max_batch))
            parts = step(*(a[rows] for a in arrays))
            if gathered is None:
                gathered = tuple(self.arrays.empty((n, *p.shape[1:]), p) for p in parts)
            for whole, part in zip(gathered, parts):
                whole[rows] = part
        return gathered

    def _image(self, params):
        """The mean image from the decoder's first likelihood parameter (sigmoid of the logits for Bernoulli)."""
        return self.arrays.sigmoid(params) if self.likelihood == "bernoulli" else params

    def _decode_rows(self, z) -> tuple:
        return (self._image(self._decoder.run(z)[0]),)

    def _check_sample(self, n, temperature) -> tuple[int, float]:
        if self.closed:
            raise InputError(f"{self!r} is closed; load the bundle again")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n: expected a positive integer, got {n!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
                not np.isfinite(temperature) or temperature < 0:
            raise InputError(f"temperature: expected a finite number ≥ 0, got {temperature!r}")
        return int(n), float(temperature)

    # ---- the API -----------------------------------------------------------------------------------------------

    def encode_params(self, x) -> tuple:
        """The encoder's outputs for images x (N × input shape): ``(mean, logvar)``, or ``(z,)`` for an AE."""
        x, back = self._take(x, self.input_shape, "x")
        return tuple(back(p) for p in self._map(self._encode_params_rows, x))

    def encode(self, x, seed=None, offset=0):
        """A latent z (N × latent_dim) per image: a draw from q(z|x), or the code itself for deterministic latents.

        ``seed`` fixes the draw (None draws a fresh seed); row r uses row ``offset + r`` of the seed's noise
        stream, so rows encoded in separate calls draw what one call would. Per-row ``seed`` and ``offset`` arrays
        (N values each) give every row its own stream (``noise.py``).
        """
        x, back = self._take(x, self.input_shape, "x")
        return back(self._map(self._encode_rows, x, Noise.of(seed, offset, len(x)))[0])

    def decode(self, z):
        """The mean image (N × input shape) of p(x|z) for latents z (N × latent_dim)."""
        z, back = self._take(z, (self.latent_dim,), "z")
        return back(self._map(self._decode_rows, z)[0])

    def reconstruct(self, x):
        """decode(the encoder's most likely code): the posterior mean for Gaussian latents."""
        x, back = self._take(x, self.input_shape, "x")
        return back(self._map(self._reconstruct_rows, x)[0])

    def sample(self, n: int, seed=None, temperature: float = 1.0, offset=0):
        """n images from the bundle's prior at ``temperature``; row r uses row ``offset + r`` of ``seed``'s stream
        (per-row arrays as for ``encode``). Drawn and decoded ``max_batch`` rows at a time."""
        n, temperature = self._check_sample(n, temperature)
        return self.arrays.output(self._map(lambda noise: self._sample_rows(noise, temperature),
                                            Noise.of(seed, offset, n))[0])

    # ---- what a latent type implements ---------------------------------------------------------------------------

    def _encode_params_rows(self, x) -> tuple:
        raise NotImplementedError

    def _encode_rows(self, x, noise: Noise) -> tuple:
        raise NotImplementedError

    def _reconstruct_rows(self, x) -> tuple:
        raise NotImplementedError

    def _sample_rows(self, noise: Noise, temperature: float) -> tuple:
        """The images of ``len(noise)`` rows drawn with ``noise``."""
        raise InputError(f"sample: a {self.kind} bundle has no prior over its {self.latent_type} latents; "
                         "expected a bundle with gaussian latents or a learned prior")
