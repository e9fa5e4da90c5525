"""Runtimes of the kinds with more than an encoder and a decoder, each driven by the manifest's ``latent`` entry.

- ``vq`` (``vqvae``): encode is x → z_e (encoder graph) → nearest codebook row (``vaedeploy.kernels``, outside every
  graph) → (indices N×h×w, z_q N×D×h×w); decode takes indices (integers) or z_q (floats); sample runs the ``prior``
  graph autoregressively and draws each code by inverse CDF from the kernels' seeded Philox uniforms, in numpy on
  both backends, so one seed gives the same codes on both.
- ``hierarchical`` (``biva``): the encoder and the sampling decoder take one noise input per stochastic layer,
  filled from the seeded kernel noise (one N×Σd draw, split by layer, bottom first); z is every layer's sample
  concatenated, and ``decode`` runs the graph from that z to x. Zero noise gives each layer's posterior mean.
- two-stage prior (``twostage``): a Gaussian VAE whose ``sample`` is u ~ N(0, T² I) → stage-2 decoder (mean, log γ)
  → z = mean + T·exp(log γ / 2)·eps → stage-1 decoder.
"""
from __future__ import annotations

import numpy as np

from ..bundle import BundleError
from ..kernels import philox, vq_nearest_numpy
from .api import InputError, Runtime, _is_torch_tensor, _same, _shape_text

# the stage-1 noise of a two-stage sample starts here in the Philox stream, far past any u draw, so row i of a
# sample does not depend on how many rows were asked for
STAGE1_NOISE_OFFSET = 2**62


def _categorical(logits: np.ndarray, temperature: float, uniform: np.ndarray) -> np.ndarray:
    """One code per row of N×K logits: inverse CDF of softmax(logits / T) at ``uniform``; argmax at T = 0."""
    if temperature == 0:
        return logits.argmax(1)
    scaled = logits.astype(np.float64) / temperature
    cdf = np.cumsum(np.exp(scaled - scaled.max(1, keepdims=True)), 1)
    return np.minimum((cdf < uniform[:, None] * cdf[:, -1:]).sum(1), logits.shape[1] - 1)


class VQRuntime(Runtime):
    """A VQ-VAE bundle: ``encode`` → (indices, z_q); ``decode`` accepts either; ``sample`` through the code prior."""

    LATENT_TYPES = ("vq",)

    def __init__(self, bundle, backend: str, device: str, precision: str):
        super().__init__(bundle, backend, device, precision)
        latent = bundle.latent
        self.grid, self.num_codes = tuple(int(s) for s in latent["grid"]), int(latent["num_codes"])
        self.latent_shape = (self.latent_dim, *self.grid)
        codebook = bundle.array(latent["codebook"])
        if codebook.dtype != np.float32 or codebook.shape != (self.num_codes, self.latent_dim):
            raise BundleError(f"{bundle.root}: expected a float32 {self.num_codes}×{self.latent_dim} codebook, got "
                              f"{codebook.dtype} {_shape_text(codebook.shape)}")
        self.codebook = codebook if self._native == "numpy" else self._torch.from_numpy(codebook).to(device)
        prior = latent["prior"]
        self.code_length, self.start_token = int(prior["length"]), int(prior["start_token"])
        self._prior = self._runner(prior["graph"], ["logits"])

    def _quantize(self, z_e):
        """z_e (N×D×h×w) → (indices N×h×w, z_q N×D×h×w) through the kernels' nearest-code op."""
        n = len(z_e)
        if self._native == "numpy":
            flat = np.ascontiguousarray(z_e.transpose(0, 2, 3, 1)).reshape(-1, self.latent_dim)
            index, rows = vq_nearest_numpy(flat, self.codebook)
        else:
            from ..kernels import vq_nearest

            index, rows = vq_nearest(z_e.permute(0, 2, 3, 1).reshape(-1, self.latent_dim).contiguous(),
                                     self.codebook)
        return index.reshape(n, *self.grid), self._channels_first(rows, n)

    def _channels_first(self, rows, n: int):
        z_q = rows.reshape(n, *self.grid, self.latent_dim)
        if self._native == "numpy":
            return np.ascontiguousarray(z_q.transpose(0, 3, 1, 2))
        return z_q.permute(0, 3, 1, 2).contiguous()

    def _take_codes(self, codes):
        """Integer codes N×h×w (or N×L) in [0, K), in the backend's type, and the way back to the caller's."""
        if _is_torch_tensor(codes):
            back = self._back_to_torch(codes.device)
            codes = codes.detach().cpu().numpy()
        else:
            back = _same
        if tuple(codes.shape[1:]) not in (self.grid, (self.code_length,)):
            raise InputError(f"codes: expected shape N×{_shape_text(self.grid)} or N×{self.code_length}, got "
                             f"{_shape_text(codes.shape)}")
        if len(codes) == 0:
            raise InputError("codes: expected at least one row (N ≥ 1), got an empty batch")
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise InputError(f"codes: expected indices in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
        codes = codes.astype(np.int64, copy=False).reshape(len(codes), -1)
        if self._native == "torch":
            return self._torch.from_numpy(codes).to(self.device), (self._to_numpy if back is _same else back)
        return codes, back

    def _lookup(self, codes):
        return self._channels_first(self.codebook[codes.reshape(-1)], len(codes))

    @staticmethod
    def _is_codes(z) -> bool:
        if _is_torch_tensor(z):
            return not z.is_floating_point() and not z.is_complex() and str(z.dtype) != "torch.bool"
        return isinstance(z, np.ndarray) and np.issubdtype(z.dtype, np.integer)

    def encode_params(self, x):
        """The encoder's output ``(z_e,)``, N×D×h×w, before quantization."""
        return super().encode_params(x)

    def encode(self, x, seed: int | None = None):
        """``(indices N×h×w int64, z_q N×D×h×w)``: the nearest codebook row of every latent vector. Deterministic;
        ``seed`` is accepted for the common API and unused."""
        x, back = self._take(x, self.input_shape, "x")
        index, z_q = self._quantize(self._run(self._encoder, x)[0])
        return back(index), back(z_q)

    def decode(self, z):
        """The mean image of p(x|z_q) for integer codes (N×h×w or N×L) or float z_q (N×D×h×w)."""
        if self._is_codes(z):
            codes, back = self._take_codes(z)
            z_q = self._lookup(codes)
        else:
            z_q, back = self._take(z, self.latent_shape, "z")
        return back(self._image(self._run(self._decoder, z_q)[0]))

    def reconstruct(self, x):
        x, back = self._take(x, self.input_shape, "x")
        _, z_q = self._quantize(self._run(self._encoder, x)[0])
        return back(self._image(self._run(self._decoder, z_q)[0]))

    def sample_codes(self, n: int, seed: int | None = None, temperature: float = 1.0) -> np.ndarray:
        """N×h×w codes from the prior, one position at a time; code (i, t) uses Philox uniform i·L + t of ``seed``."""
        n, seed, temperature = self._check_sample(n, seed, temperature)
        length = self.code_length
        uniform = philox.uint_to_uniform_float(philox.randint(seed, philox.counters(0, n * length)))
        uniform = uniform.reshape(n, length).astype(np.float64)
        tokens = np.zeros((n, length), np.int64)
        tokens[:, 0] = self.start_token
        codes = np.empty((n, length), np.int64)
        for t in range(length):
            # the prior is causal: positions after t do not change the logits at t, so all L are fed every step
            feed = tokens if self._native == "numpy" else self._torch.from_numpy(tokens).to(self.device)
            logits = self._run(self._prior, feed)[0][:, t]
            codes[:, t] = _categorical(logits if self._native == "numpy" else logits.cpu().numpy(), temperature,
                                       uniform[:, t])
            if t + 1 < length:
                tokens[:, t + 1] = codes[:, t]
        return codes.reshape(n, *self.grid)

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """n images decoded from codes drawn from the prior at ``temperature`` (0: the most likely code each step)."""
        codes = self.sample_codes(n, seed, temperature).reshape(n, -1)
        if self._native == "torch":
            codes = self._torch.from_numpy(codes).to(self.device)
        return self._default_output()(self._image(self._run(self._decoder, self._lookup(codes))[0]))


class HierarchicalRuntime(Runtime):
    """A bundle with stochastic layers whose graphs take each layer's noise as an input (``biva``)."""

    LATENT_TYPES = ("hierarchical",)

    def __init__(self, bundle, backend: str, device: str, precision: str):
        self.DECODER_ROLE = bundle.latent["graphs"]["decode"]
        super().__init__(bundle, backend, device, precision)
        self.layers = bundle.latent["layers"]
        names = [o["name"] for o in bundle.graph("encoder", precision)["outputs"]]
        self._outputs = {k: [names.index(layer[k]) for layer in self.layers] for k in ("z", "mean", "logvar")}
        bounds = np.cumsum([0] + [int(layer["dim"]) for layer in self.layers])
        self._columns = list(zip(bounds[:-1], bounds[1:]))
        self._sampler = self._runner(bundle.latent["graphs"]["sample"], self._image_outputs)

    def _layer_noise(self, n: int, seed: int | None, scale: float = 1.0) -> list:
        """Each layer's noise, bottom first: columns of one N×Σd standard-normal draw; zeros when seed is None."""
        if seed is None:
            eps = np.zeros((n, self.latent_dim), np.float32)
            eps = eps if self._native == "numpy" else self._torch.from_numpy(eps).to(self.device)
        else:
            eps = self._normal((n, self.latent_dim), seed) * np.float32(scale)
        if self._native == "numpy":
            return [np.ascontiguousarray(eps[:, a:b]) for a, b in self._columns]
        return [eps[:, a:b].contiguous() for a, b in self._columns]

    def _infer(self, x, seed: int | None, key: str):
        outputs = self._run(self._encoder, x, *self._layer_noise(len(x), seed))
        return self._join([outputs[i] for i in self._outputs[key]], 1)

    def encode_params(self, x):
        """(mean, logvar), N×Σd each: every layer's posterior given its parents' posterior means."""
        x, back = self._take(x, self.input_shape, "x")
        outputs = self._run(self._encoder, x, *self._layer_noise(len(x), None))
        return tuple(back(self._join([outputs[i] for i in self._outputs[k]], 1)) for k in ("mean", "logvar"))

    def encode(self, x, seed: int | None = None):
        """z (N×Σd): every layer's posterior sample, bottom first, drawn top-down with the noise of ``seed``."""
        x, back = self._take(x, self.input_shape, "x")
        return back(self._infer(x, self._noise_seed(seed), "z"))

    def reconstruct(self, x):
        """decode(every layer's posterior mean given its parents' means)."""
        x, back = self._take(x, self.input_shape, "x")
        return back(self._image(self._run(self._decoder, self._infer(x, None, "z"))[0]))

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """n images sampled ancestrally, top layer first, from noise N(0, temperature² I) of every layer."""
        n, seed, temperature = self._check_sample(n, seed, temperature)
        noise = self._layer_noise(n, seed, temperature)
        return self._default_output()(self._image(self._run(self._sampler, *noise)[0]))


class TwoStageRuntime(Runtime):
    """A Gaussian VAE whose prior is a second VAE's decoder: u → z (``twostage``)."""

    def __init__(self, bundle, backend: str, device: str, precision: str):
        super().__init__(bundle, backend, device, precision)
        prior = bundle.latent["prior"]
        self.stage2_dim = int(prior["dim"])
        self._stage2 = self._runner(prior["graph"], ["mean", "log_gamma"])

    def sample(self, n: int, seed: int | None = None, temperature: float = 1.0):
        """u ~ N(0, T² I) → z ~ N(mean(u), T²·γ(u)) → the stage-1 decoder's mean image, as ``TwoStage.sample``."""
        n, seed, temperature = self._check_sample(n, seed, temperature)
        t = np.float32(temperature)
        mean, log_gamma = self._run(self._stage2, self._normal((n, self.stage2_dim), seed) * t)
        exp = np.exp if self._native == "numpy" else self._torch.exp
        z = mean + t * exp(0.5 * log_gamma) * self._normal((n, self.latent_dim), seed, STAGE1_NOISE_OFFSET)
        return self._default_output()(self._image(self._run(self._decoder, z)[0]))


RUNTIMES = {"vq": VQRuntime, "hierarchical": HierarchicalRuntime}  # by the manifest's latent type
PRIORS = {"two_stage": TwoStageRuntime}  # Gaussian latents with a learned prior, by its type


def runtime_class(bundle) -> type[Runtime]:
    latent = bundle.latent
    if latent.get("type") in RUNTIMES:
        return RUNTIMES[latent["type"]]
    return PRIORS.get(latent.get("prior", {}).get("type"), Runtime)
