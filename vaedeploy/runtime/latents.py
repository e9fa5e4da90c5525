"""The runtime of each latent type the bundle schema defines (``vaedeploy.bundle.LATENT_TYPES``), driven by the
manifest's ``latent`` entry alone: no kind's name and no training code is needed to serve a bundle.

- ``gaussian`` / ``deterministic``: encoder x → (mean, logvar) or z; ``encode`` draws z = mean + exp(logvar/2)·eps with
  the kernels' seeded noise; ``sample`` decodes z ~ N(0, T² I). A latent of shape [d] or [c, h, w] (spatial, at any size
  the bundle takes): the noise of a row is one stream of d or c·h·w elements in C order. With ``latent.scaling`` (s, t),
  ``encode`` returns (z - t)·s and ``decode`` takes that space (z / s + t reaches the graph); ``encode_params``,
  ``reconstruct`` and ``sample`` run in the graph's own space. A ``two_stage`` prior samples u ~ N(0, T² I) → stage-2
  decoder (mean, log γ) → z = mean + T·exp(log γ / 2)·eps → decoder.
- ``vq``: encode is x → z_e (encoder graph) → nearest codebook row (the kernels, outside every graph) → (indices
  N×h×w, z_q N×D×h×w); decode takes indices (integers) or z_q (floats); sample runs the ``prior`` graph
  autoregressively and draws each code by inverse CDF from the kernels' seeded uniforms (in numpy on every backend,
  so one seed gives the same codes everywhere).
- ``hierarchical``: the encoder and the sampling decoder take one noise input per stochastic layer, filled from one
  N×Σd draw split by layer, bottom first; z is every layer's sample concatenated, and ``decode`` runs the graph
  from that z to x. Zero noise gives each layer's posterior mean.
"""
from __future__ import annotations

import math

import numpy as np

from ..bundle import BundleError
from ..errors import InputError
from ..kernels import uniform_numpy
from .arrays import is_tensor, shape_text
from .base import Runtime, decoded_refusal
from .buckets import Plan
from .noise import Noise

# the stage-1 noise of a two-stage sample starts here in the Philox stream, far past any u draw, so row i of a
# sample does not depend on how many rows were asked for
STAGE1_NOISE_OFFSET = 2**62


def latent_scaling(latent: dict) -> tuple[float, float] | None:
    """A manifest latent entry's (scaling_factor, shift_factor), as diffusers defines them, or None: latents in the
    graph's own space."""
    scaling = latent.get("scaling")
    return None if scaling is None else (float(scaling["scaling_factor"]), float(scaling["shift_factor"]))


# The one rule of latent scaling (docs/bundle.md, "Latent scaling"), for numpy arrays and torch tensors alike; the
# Triton repository's Python steps (deploy/triton_step.py) apply these same functions.
def to_encoded(z, scaling: tuple[float, float] | None):
    """Latents of the graph's space in ``encode``'s: (z - shift) · scale, or z itself without a scaling."""
    if scaling is None:
        return z
    scale, shift = scaling
    return (z - shift) * scale


def from_encoded(z, scaling: tuple[float, float] | None):
    """Latents of ``encode``'s space (what ``decode`` takes) in the graph's: z / scale + shift, or z itself."""
    if scaling is None:
        return z
    scale, shift = scaling
    return z / scale + shift


class GaussianRuntime(Runtime):
    """Gaussian latents (``vae``, ``bivae``) and deterministic ones (``ae``: ``encode`` is the code itself)."""

    LATENT_TYPES = ("gaussian", "deterministic")

    def __init__(self, bundle, backend: str, device: str, precision: str, **options):
        super().__init__(bundle, backend, device, precision, **options)
        self.scaling = latent_scaling(bundle.latent)
        self._encoder = self._runner("encoder")

    def _plans(self) -> dict[str, Plan]:
        plans = super()._plans()
        if self.scaling is not None:
            plans["decode"] = Plan(self._decode_scaled_rows, plans["decode"].inputs)
        if self.latent_type == "gaussian":
            plans["sample"] = Plan(self._sample_rows, noise=True, temperature=True, sized=True)
        return plans

    def _encode_params_rows(self, x) -> tuple:
        return tuple(self._encoder.run(x))

    def _encode_rows(self, x, noise: Noise) -> tuple:
        return (self._encode_from_params(self._encoder.run(x), noise),)

    def _encode_from_params(self, params: tuple, noise: Noise):
        """z from the encoder's outputs (a tiled encode's blended ones too): the draw, scaled."""
        if self.latent_type == "deterministic":
            return to_encoded(params[0], self.scaling)
        width = math.prod(params[0].shape[1:])  # the latent elements of one row at this call's size
        return to_encoded(self.arrays.reparameterize(*params, *noise.stream(width)), self.scaling)

    def _decode_scaled_rows(self, z) -> tuple:
        """``decode`` of latents in ``encode``'s space."""
        return self._decode_rows(from_encoded(z, self.scaling))

    def _reconstruct_rows(self, x) -> tuple:
        return self._decode_rows(self._encoder.run(x)[0])

    def _sample_rows(self, noise: Noise, temperature, shape: tuple) -> tuple:
        """The images of ``len(noise)`` rows from z ~ N(0, T² I) of one latent ``shape``; ``temperature`` a float, or
        the device scalar of a recorded call."""
        return self._decode_rows(self.arrays.normal((len(noise), *shape), *noise.stream(math.prod(shape)))
                                 * temperature)


class TwoStageRuntime(GaussianRuntime):
    """A Gaussian VAE whose prior is a second VAE's decoder: u → z (``twostage``)."""

    def __init__(self, bundle, backend: str, device: str, precision: str, **options):
        super().__init__(bundle, backend, device, precision, **options)
        prior = bundle.latent["prior"]
        self.stage2_dim = int(prior["dim"])
        self._stage2 = self._runner(prior["graph"], ["mean", "log_gamma"])

    def _sample_rows(self, noise: Noise, temperature, shape: tuple) -> tuple:
        """u ~ N(0, T² I) → z ~ N(mean(u), T²·γ(u)) → the stage-1 decoder's mean image, as ``TwoStage.sample``
        (vector latents: ``shape`` is the bundle's one)."""
        t, arrays, n = temperature, self.arrays, len(noise)
        u = arrays.normal((n, self.stage2_dim), *noise.stream(self.stage2_dim))
        mean, log_gamma = self._stage2.run(u * t)
        eps = arrays.normal((n, self.latent_dim), *noise.stream(self.latent_dim, base=STAGE1_NOISE_OFFSET))
        return self._decode_rows(mean + t * arrays.exp(0.5 * log_gamma) * eps)


def _categorical(logits: np.ndarray, temperature: float, uniform: np.ndarray) -> np.ndarray:
    """One code per row of N×K logits: inverse CDF of softmax(logits / T) at ``uniform``; argmax at T = 0.

    The largest logit is subtracted before the division, so every scaled logit is ≤ 0 and the largest exactly 0 at
    any T > 0: a tiny T (even a denormal one, 1e-310) sends the others to -inf and their weights to 0, which is the
    argmax, where dividing first made inf - inf = NaN and code 0 everywhere."""
    if temperature == 0:
        return logits.argmax(1)
    logits = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # a tiny T overflows the differences to -inf: weight 0, what they should get
        scaled = (logits - logits.max(1, keepdims=True)) / temperature
    cdf = np.cumsum(np.exp(scaled), 1)
    return np.minimum((cdf < uniform[:, None] * cdf[:, -1:]).sum(1), logits.shape[1] - 1)


class VQRuntime(Runtime):
    """A VQ bundle: ``encode`` → (indices, z_q); ``decode`` accepts either; ``sample`` through the code prior where
    the bundle has one. Without a prior (a VQGAN) the grid follows the image: h×w = H/f × W/f at any size the bundle
    takes, and there is no ``sample``."""

    LATENT_TYPES = ("vq",)

    def __init__(self, bundle, backend: str, device: str, precision: str, **options):
        super().__init__(bundle, backend, device, precision, **options)
        latent = bundle.latent
        self.grid, self.num_codes = self.latent_shape[1:], int(latent["num_codes"])
        codebook = bundle.array(latent["codebook"])
        if codebook.dtype != np.float32 or codebook.shape != (self.num_codes, self.latent_dim):
            raise BundleError(f"{bundle.root}: expected a float32 {self.num_codes}×{self.latent_dim} codebook, got "
                              f"{codebook.dtype} {shape_text(codebook.shape)}")
        self.codebook = self.arrays.from_numpy(codebook)
        self._encoder = self._runner("encoder")
        prior = latent.get("prior")
        self.has_prior = prior is not None
        if self.has_prior:
            self.code_length, self.start_token = int(prior["length"]), int(prior["start_token"])
            self._prior = self._runner(prior["graph"], ["logits"])

    def _plans(self) -> dict[str, Plan]:
        """encode is deterministic; decode takes z_q or (``decode_codes``) integer codes N×h×w; sampling reads the
        prior's logits on the host at every position, so it is never recorded (and is absent without a prior)."""
        image = ((self.input_shape, "float32"),)
        plans = {**super()._plans(),
                 "encode": Plan(self._encode_rows, image),
                 "decode": Plan(self._decode_rows, ((self.latent_shape, "float32"),)),
                 "decode_codes": Plan(self._decode_codes_rows, ((self.grid, "int64"),))}
        if self.has_prior:
            plans["sample"] = Plan(self._sample_rows, noise=True, temperature=True, recordable=False)
            plans["sample_codes"] = Plan(self._sample_codes_rows, noise=True, temperature=True, recordable=False)
        return plans

    def _quantize(self, z_e) -> tuple:
        """z_e (N×D×h×w) → (indices N×h×w, z_q N×D×h×w) through the kernels' nearest-code op."""
        n, grid = len(z_e), tuple(z_e.shape[2:])
        index, rows = self.arrays.nearest(self.arrays.channels_last(z_e).reshape(-1, self.latent_dim), self.codebook)
        return index.reshape(n, *grid), self._channels_first(rows, n, grid)

    def _channels_first(self, rows, n: int, grid: tuple):
        return self.arrays.channels_first(rows.reshape(n, *grid, self.latent_dim))

    def _lookup(self, codes):
        """z_q (N×D×h×w) of N×h×w integer codes."""
        return self._channels_first(self.codebook[codes.reshape(-1)], len(codes), tuple(codes.shape[1:]))

    def _grid_of(self, shape: tuple) -> tuple | None:
        """The h×w grid that integer codes of per-row ``shape`` fill (h×w, or a prior's L), or None."""
        if self.has_prior:
            return self.grid if shape in (self.grid, (self.code_length,)) else None
        if len(shape) != 2 or self.sizes is None:
            return self.grid if shape == self.grid else None
        f = self.downsample
        return None if self.sizes.refusal((shape[0] * f, shape[1] * f)) else shape

    def code_dims(self, codes, name: str = "codes") -> tuple:
        """The per-row shape integer ``codes`` have if this bundle takes them: N×h×w (with a prior, also N×L; without
        one, any grid of an image size the bundle takes); an ``InputError`` otherwise."""
        shape = tuple(getattr(codes, "shape", ())[1:])
        if len(getattr(codes, "shape", ())) < 2 or self._grid_of(shape) is None:
            expected = f"N×{shape_text(self.grid)} or N×{self.code_length}" if self.has_prior else (
                f"N×{shape_text(self.grid)}" if self.sizes is None else
                f"N×h×w with h = H/{self.downsample}, w = W/{self.downsample} and {self.sizes}")
            raise InputError(f"{name}: expected shape {expected}, got {shape_text(getattr(codes, 'shape', ()))}")
        return shape

    def _take_codes(self, codes, check_inputs: bool = True):
        """Integer codes N×h×w (or N×L) in [0, K) (read only when ``check_inputs``), as N×h×w in the backend's
        arrays, and the way back."""
        codes, back = self.arrays.take_integers(codes, "codes")
        grid = self._grid_of(self.code_dims(codes))
        if len(codes) == 0:
            raise InputError("codes: expected at least one row (N ≥ 1), got an empty batch")
        if check_inputs and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise InputError(f"codes: expected indices in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
        return self.arrays.from_numpy(codes.reshape(len(codes), *grid)), back

    @staticmethod
    def _is_codes(z) -> bool:
        if is_tensor(z):
            return not z.is_floating_point() and not z.is_complex() and str(z.dtype) != "torch.bool"
        return isinstance(z, np.ndarray) and np.issubdtype(z.dtype, np.integer)

    def _encode_params_rows(self, x) -> tuple:
        return tuple(self._encoder.run(x))

    def encode_params(self, x, *, check_inputs: bool = True) -> tuple:
        """``(z_e,)``: the encoder's output N×D×h×w, before quantization."""
        return super().encode_params(x, check_inputs=check_inputs)

    def _encode_rows(self, x) -> tuple:
        return self._quantize(self._encoder.run(x)[0])

    def encode(self, x, seed=None, offset=0, *, check_inputs: bool = True):
        """``(indices N×h×w int64, z_q N×D×h×w)``: the nearest codebook row of every latent vector. Deterministic;
        ``seed`` and ``offset`` are accepted for the common API and unused; ``check_inputs`` as for
        ``Runtime.encode``."""
        x, back = self._take_images(x, check_inputs)
        return tuple(map(back, self._call("encode", x)))

    def decode(self, z, *, out=None, check_inputs: bool = True):
        """The mean image of p(x|z_q) for integer codes (N×h×w, or N×L with a prior) or float z_q (N×D×h×w), at
        any grid the bundle takes; ``out`` and ``check_inputs`` (the codes' range too) as for ``Runtime.encode``."""
        if self._is_codes(z):
            codes, back = self._take_codes(z, check_inputs)
            images = self._call("decode_codes", codes, out=out)[0]  # codebook rows: as finite as the validated ones
        else:
            z_q, back = self._take_latents(z, check_inputs)
            images = self._finite(self._call("decode", z_q, out=out)[0], decoded_refusal, z_q)
        return images if out is not None else back(images)

    def _decode_codes_rows(self, codes) -> tuple:
        return self._decode_rows(self._lookup(codes))

    def _reconstruct_rows(self, x) -> tuple:
        return self._decode_rows(self._quantize(self._encoder.run(x)[0])[1])

    def sample_codes(self, n: int, seed=None, temperature: float = 1.0, offset=0) -> np.ndarray:
        """N×h×w codes from the prior, one position at a time; code t of row r uses uniform t of row
        ``offset + r`` of ``seed``'s stream (L uniforms a row)."""
        n, temperature = self._check_sample(n, temperature)
        if not self.has_prior:
            raise InputError(self._no_prior("sample_codes"))
        codes = self._call("sample_codes", noise=Noise.of(seed, offset, n), temperature=temperature)[0]
        return self.arrays.to_numpy(codes).reshape(n, *self.grid)

    def _sample_codes_rows(self, noise: Noise, temperature: float) -> tuple:
        return (self._codes_rows(noise, temperature),)

    def _codes_rows(self, noise: Noise, temperature: float):
        """N×L codes in the backend's arrays."""
        n, length = len(noise), self.code_length
        uniform = uniform_numpy((n, length), *noise.stream(length)).astype(np.float64)
        tokens = np.zeros((n, length), np.int64)
        tokens[:, 0] = self.start_token
        codes = np.empty((n, length), np.int64)
        for t in range(length):
            # the prior is causal: positions after t do not change the logits at t, so all L are fed every step
            logits = self.arrays.to_numpy(self._prior.run(self.arrays.from_numpy(tokens))[0])[:, t]
            codes[:, t] = _categorical(logits, temperature, uniform[:, t])
            if t + 1 < length:
                tokens[:, t + 1] = codes[:, t]
        return self.arrays.from_numpy(codes.reshape(n, *self.grid))

    def _sample_rows(self, noise: Noise, temperature: float) -> tuple:
        return self._decode_rows(self._lookup(self._codes_rows(noise, temperature)))


class HierarchicalRuntime(Runtime):
    """A bundle with stochastic layers whose graphs take each layer's noise as an input (``biva``)."""

    LATENT_TYPES = ("hierarchical",)

    def __init__(self, bundle, backend: str, device: str, precision: str, **options):
        self.DECODER_ROLE = bundle.latent["graphs"]["decode"]
        super().__init__(bundle, backend, device, precision, **options)
        self.layers = bundle.latent["layers"]
        self._encoder = self._runner("encoder")
        names = self._encoder.output_names
        self._outputs = {k: [names.index(layer[k]) for layer in self.layers] for k in ("z", "mean", "logvar")}
        bounds = np.cumsum([0] + [int(layer["dim"]) for layer in self.layers])
        self._columns = list(zip(bounds[:-1], bounds[1:]))
        self._sampler = self._runner(bundle.latent["graphs"]["sample"], bundle.manifest["likelihood"]["outputs"][:1])

    def _plans(self) -> dict[str, Plan]:
        return {**super()._plans(), "sample": Plan(self._sample_rows, noise=True, temperature=True)}

    def _layer_noise(self, n: int, noise: Noise | None, scale=1.0) -> list:
        """Each layer's noise, bottom first: columns of one N×Σd standard-normal draw times ``scale`` (a float, or the
        device scalar of a recorded call); zeros without noise."""
        if noise is None:
            eps = self.arrays.zeros((n, self.latent_dim))
        else:
            eps = self.arrays.normal((n, self.latent_dim), *noise.stream(self.latent_dim)) * scale
        return [self.arrays.columns(eps, a, b) for a, b in self._columns]

    def _layers(self, x, noise: Noise | None, key: str):
        outputs = self._encoder.run(x, *self._layer_noise(len(x), noise))
        return self.arrays.cat([outputs[i] for i in self._outputs[key]], 1)

    def _encode_params_rows(self, x) -> tuple:
        """(mean, logvar), N×Σd each: every layer's posterior given its parents' posterior means."""
        outputs = self._encoder.run(x, *self._layer_noise(len(x), None))
        return tuple(self.arrays.cat([outputs[i] for i in self._outputs[k]], 1) for k in ("mean", "logvar"))

    def _encode_rows(self, x, noise: Noise) -> tuple:
        """z (N×Σd): every layer's posterior sample, bottom first, drawn top-down with the call's noise."""
        return (self._layers(x, noise, "z"),)

    def _reconstruct_rows(self, x) -> tuple:
        """decode(every layer's posterior mean given its parents' means)."""
        return self._decode_rows(self._layers(x, None, "z"))

    def _sample_rows(self, noise: Noise, temperature) -> tuple:
        """Ancestral sampling, top layer first, from noise N(0, T² I) of every layer."""
        return (self._image(self._sampler.run(*self._layer_noise(len(noise), noise, temperature))[0]),)


RUNTIMES = {"gaussian": GaussianRuntime, "deterministic": GaussianRuntime, "vq": VQRuntime,
            "hierarchical": HierarchicalRuntime}  # by the manifest's latent type
PRIORS = {"two_stage": TwoStageRuntime}  # Gaussian latents with a learned prior, by its type


def runtime_class(bundle) -> type[Runtime]:
    latent = bundle.latent
    if "prior" in latent and latent["type"] == "gaussian":
        return PRIORS[latent["prior"]["type"]]
    return RUNTIMES[latent["type"]]
