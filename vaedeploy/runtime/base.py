"""The runtime every latent type shares: input checks, batches split at ``max_batch``, runners' lifecycle, the API.

numpy arrays in give numpy arrays out; torch tensors in give tensors out on the tensor's device (``arrays.py``).
A call of N rows runs in slices of at most ``max_batch`` rows, each slice drawing the noise of its own rows
(``noise.py``), and its result is filled into one array of N rows, so memory is bounded by the batch and the result.

Each op is a ``Plan`` (``buckets.py``): the per-slice step a latent type implements (``_encode_params_rows``,
``_encode_rows``, ``_decode_rows``, ``_reconstruct_rows`` and, where the bundle has a prior, ``_sample_rows``), taking
the arrays of one slice, then its rows' ``Noise`` where the op draws noise, then the temperature where it takes one.
The API methods name the op and ``_call`` runs its plan: directly in slices (``_map``), or, on a runtime with batch
buckets, through the bucket machinery, which records the whole plan once per bucket (one CUDA graph on CUDA). So
the latent types are written once for every way of running them.

Sizes (docs/runtime.md, "Image sizes"): a bundle with ``input.size`` takes images of any H, W it declares (multiples
of ``input.size.multiple`` in its range) and spatial latents of the matching h, w = H / f, W / f; ``sample`` draws at
``size=(H, W)`` (default the reference ``input.shape``). Every other bundle takes its one shape. A call of one size
runs its slices at that size; sessions and modules are the same at every size.

Latent scaling (``latent.scaling``, diffusers' rule): ``encode`` returns (z - shift) · scale, ``decode`` takes latents
in that space, ``encode_params`` returns the graph's own mean and log-variance and ``sample`` draws N(0, I) in the
graph's space (``latents.GaussianRuntime``).

What a call accepts (docs/runtime.md): images within the bundle's declared ``input.range`` (a finite input far outside
it would run the graphs into NaN), latents of any finite value, ``n`` rows up to 2**63 − 1, a temperature in
[0, ``MAX_TEMPERATURE``]; numpy integer and float scalars wherever Python ones are. Latents have no declared range,
so ``decode`` and ``sample`` refuse a result that is not finite rather than return it.
"""
from __future__ import annotations

import math
import numbers
import sys
from fractions import Fraction
from functools import cached_property
from typing import Callable

import numpy as np

from ..bundle import PRECISIONS, Bundle, BundleError
from ..errors import ConfigError, InputError
from .arrays import CHECKED, FINITE, Values, shape_text
from .backends import backend_class
from .buckets import Buckets, DirectCalls, Plan, bucket_sizes
from .noise import Noise
from .tiles import OVERLAP, Tiling, choose, tiled

EXECUTION = {  # what a runtime's calls run through, as describe() says it
    None: "direct: each call runs the backend in slices of at most max_batch rows",
    "direct calls": "batch buckets, each call on static buffers run directly (no graphs)",
    "onnxruntime graphs": "batch buckets; ONNX Runtime's own CUDA graph per session and bucket, the noise kernels "
                          "between them",
    "CUDA graphs": "batch buckets, one CUDA graph per bucket capturing the whole call",
}
# The largest sampling temperature: T·eps must stay far inside float32 (beyond it the latents overflow into NaN
# images), and a thousand times the prior's scale is already far from anything a model was trained on.
MAX_TEMPERATURE = 1e3


def input_values(bundle: Bundle) -> Values:
    """The values an image may hold: the manifest's ``input.range`` (any finite value where it declares none)."""
    declared = bundle.manifest["input"].get("range")
    if declared is None:
        return FINITE
    if not (isinstance(declared, list) and len(declared) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in declared)
            and declared[0] <= declared[1]):
        raise BundleError(f"{bundle.root}: manifest.json input.range: expected [low, high], two finite numbers with "
                          f"low ≤ high, got {declared!r}")
    return Values(*declared, "the bundle's input.range")


def decoded_refusal(z) -> str:
    """Why ``decode`` refuses images with NaN or Inf: the latents it was given."""
    return (f"decode: expected finite images, got NaN or Inf from the decoder, most likely because z (largest |z| "
            f"{float(abs(z).max()):g}) is far outside the latents the model was trained on")


def sampled_refusal(temperature: float) -> str:
    """Why ``sample`` refuses images with NaN or Inf: the temperature it drew at."""
    return (f"sample: expected finite images, got NaN or Inf from the decoder at temperature {temperature:g}; a lower "
            "temperature keeps the latents where the model was trained")


class Runtime:
    """A loaded bundle on one backend and device. Build it with ``vaedeploy.load``; ``close()`` (or ``with``) frees it.

    Attributes: ``backend`` (the backend that runs, also when ``auto`` chose it) and ``backend_reason`` (why),
    ``device``, ``precision``, ``kind``, ``latent_type``, ``input_shape`` and ``latent_shape`` (one image's and one
    latent's shape at the reference size), ``latent_dim`` (``latent_shape[0]``: d, or a spatial latent's channels),
    ``sizes`` (the image sizes it takes, ``bundle.ImageSizes``; None: ``input_shape`` only), ``downsample`` (H / h of a
    spatial latent, else None), ``max_batch`` (larger batches are split and reassembled in order), ``buckets`` (the
    batch bucket sizes, or None), ``cuda_graphs``, ``runners`` (role → the backend's runner of that graph),
    ``plans`` (op → ``Plan``).

    Args (beyond the bundle, backend, device and precision ``load`` resolved):
        backend_reason: why this backend runs (``asked for``, or ``auto``'s sentence).
        buckets: batch bucket sizes (None: 1, 2, 4, … max_batch where ``cuda_graphs``, else no buckets).
        cuda_graphs: record each bucket's call as a CUDA graph (default: on CUDA); needs a CUDA device.
        backend_options: keyword arguments of the backend's own (onnxruntime: ``session_config``; tensorrt:
            ``engines``).
    """

    LATENT_TYPES: tuple[str, ...] = ()
    DECODER_ROLE = "decoder"  # the graph behind ``decode(z)``

    def __init__(self, bundle: Bundle, backend: str, device: str, precision: str, *, backend_reason: str = "asked for",
                 buckets=None, cuda_graphs: bool | None = None, backend_options: dict | None = None):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.bundle, self.backend, self.device, self.precision = bundle, backend, device, precision
        self.backend_reason = backend_reason
        self.kind, self.latent_type = bundle.kind, bundle.latent["type"]
        if self.latent_type not in self.LATENT_TYPES:
            raise ConfigError(f"{bundle.root}: {type(self).__name__} serves {' and '.join(self.LATENT_TYPES)} "
                              f"latents, the bundle has {self.latent_type!r}")
        self.latent_shape, self.input_shape = bundle.latent_shape, bundle.input_shape
        self.latent_dim = self.latent_shape[0]
        self.sizes, self.downsample = bundle.sizes, bundle.downsample
        self.input_values = input_values(bundle)
        self.max_batch = bundle.max_batch
        self.likelihood = bundle.manifest["likelihood"]["kind"]
        self.cuda_graphs = device != "cpu" if cuda_graphs is None else cuda_graphs
        if not isinstance(self.cuda_graphs, bool) or (self.cuda_graphs and device == "cpu"):
            raise ConfigError(f"cuda_graphs must be True or False, and True needs device='cuda'; got {cuda_graphs!r} "
                              f"on device {device!r}")
        self.buckets = bucket_sizes(buckets, self.max_batch) if buckets is not None or self.cuda_graphs else None
        self.runners: dict = {}
        self._backend = backend_class(backend)(bundle, precision, device, self.buckets, self.cuda_graphs,
                                               **(backend_options or {}))
        self.arrays = self._backend.arrays
        self._buckets = None if self.buckets is None else Buckets(self.arrays, self.buckets, *self._recorder())
        self.closed = False
        try:
            self._decoder = self._runner(self.DECODER_ROLE, self.bundle.manifest["likelihood"]["outputs"][:1])
        except BaseException:
            self.close()
            raise

    def _recorder(self) -> tuple:
        """How the buckets record a call, and how calls on different streams are ordered, for this device."""
        recorder = DirectCalls(self._backend.warmup_runs)
        if self.device == "cpu":
            return recorder, None
        from . import cuda

        if self.cuda_graphs and self._backend.capturable:
            recorder = cuda.CudaGraphs(self.arrays.device)
        return recorder, cuda.StreamOrder(self.arrays.device)

    @property
    def execution(self) -> str:
        """What the calls run through: one of ``EXECUTION``'s descriptions."""
        if self._buckets is None:
            return EXECUTION[None]
        if self._buckets.recorder.graphs:
            return EXECUTION["CUDA graphs"]
        return EXECUTION["onnxruntime graphs" if self.cuda_graphs else "direct calls"]

    def describe(self) -> dict:
        """What runs and why: the backend and the reason it was chosen, device, precision, the batch buckets, and for
        each op which buckets are recorded (a CUDA graph each, with ``cuda_graphs`` on the torch backend), how long
        each recording took and how often it ran, and the memory the static buffers and the graphs' pool hold."""
        described = {"bundle": str(self.bundle.root), "kind": self.kind, "latent_type": self.latent_type,
                     "backend": self.backend, "backend_reason": self.backend_reason, "device": self.device,
                     "precision": self.precision, "max_batch": self.max_batch, "cuda_graphs": self.cuda_graphs,
                     "execution": self.execution, "buckets": None, "closed": self.closed}
        if self._buckets is not None:
            described["buckets"] = self._buckets.describe()
            described["buckets"]["not_recorded"] = sorted(op for op, plan in self.plans.items()
                                                          if not plan.recordable)
        return described

    def __repr__(self) -> str:
        why = "" if self.backend_reason == "asked for" else f" [{self.backend_reason}]"
        buckets = ""
        if self._buckets is not None:
            sizes, recorder = self.buckets, self._buckets.recorder
            buckets = (f", buckets={sizes[0]}..{sizes[-1]} ({len(sizes)}), "
                       f"{recorder.name}: {len(self._buckets.slots)} {recorder.made}")
        return (f"{type(self).__name__}({self.bundle.root}, kind={self.kind}, backend={self.backend}{why}, "
                f"device={self.device}, precision={self.precision}{buckets})")

    def _runner(self, role: str, outputs: list[str] | None = None):
        """An active runner of graph ``role`` returning ``outputs`` (decode returns the mean image: only the first
        likelihood parameter is computed and copied out)."""
        runner = self._backend.runner(role, outputs).activate()
        self.runners[role] = runner
        return runner

    def close(self) -> None:
        """Free every runner's session or module and every recorded graph; later calls raise ``InputError``."""
        for runner in self.runners.values():
            runner.deactivate()
        self._backend.close()
        self._buckets = None
        self.closed = True

    def warmup(self) -> dict:
        """Record every op for every bucket now, the largest bucket first (``load(..., warmup="all")``: the capture
        time is paid at load, not by a first call); returns ``describe()``, which has each recording's time."""
        if self._buckets is None:
            raise ConfigError("warmup needs batch buckets: load with buckets=... (or on CUDA, where they are the "
                              "default)")
        for op, plan in self.plans.items():
            if plan.recordable:
                self._buckets.warm(op, plan, self.latent_shape if plan.sized else None)
        return self.describe()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- shared steps ------------------------------------------------------------------------------------------

    def _take(self, x, trailing: tuple, name: str, values: Values = FINITE):
        if self.closed:
            raise InputError(f"{self!r} is closed; load the bundle again")
        return self.arrays.take(x, trailing, name, values)

    def _take_images(self, x, check_inputs: bool = True, name: str = "x"):
        """Images at the reference size, or at any size the bundle takes (``sizes``), and the way back; their values
        are read only when ``check_inputs`` (the API's keyword: False where the caller has checked them)."""
        dims = self.input_shape if self.sizes is None else self.image_dims(x, name)
        return self._take(x, dims, name, self.input_values if check_inputs else CHECKED)

    def _take_latents(self, z, check_inputs: bool = True, name: str = "z"):
        """Latents of the reference shape, or of a spatial latent's shape at any size the bundle takes."""
        dims = self.latent_shape if self.sizes is None else self.latent_dims(z, name)
        return self._take(z, dims, name, FINITE if check_inputs else CHECKED)

    def image_dims(self, x, name: str) -> tuple:
        """The per-row shape x must have: ``input_shape``, or x's own (C, H, W) where the bundle takes that size."""
        shape = getattr(x, "shape", None)
        if self.sizes is None or shape is None:  # a non-array is refused by ``take``, naming its type
            return self.input_shape
        c = self.input_shape[0]
        why = str(self.sizes) if len(shape) != 4 or shape[1] != c else self.sizes.refusal(tuple(shape[2:]))
        if why:
            raise InputError(f"{name}: expected shape N×{c}×H×W with {why}, got {shape_text(shape)}")
        return tuple(shape[1:])

    def latent_dims(self, z, name: str) -> tuple:
        """The per-row shape latents z must have: ``latent_shape``, or for a spatial latent of a bundle that takes
        any size, z's own (c, h, w) where (h·f, w·f) is a size it takes."""
        shape = getattr(z, "shape", None)
        if self.sizes is None or len(self.latent_shape) != 3 or shape is None:
            return self.latent_shape
        c, f = self.latent_shape[0], self.downsample
        taken = len(shape) == 4 and shape[1] == c and not self.sizes.refusal((shape[2] * f, shape[3] * f))
        if not taken:
            raise InputError(f"{name}: expected shape N×{c}×h×w with h = H/{f}, w = W/{f} and {self.sizes}, got "
                             f"{shape_text(shape)}")
        return tuple(shape[1:])

    def latent_shape_at(self, size=None) -> tuple:
        """One latent's shape for images of ``size`` (H, W) (None: the reference size); an ``InputError`` for a
        size this bundle does not take."""
        if size is None:
            return self.latent_shape
        reference = self.input_shape[1:]
        if self.sizes is None:
            if (tuple(size) if isinstance(size, (tuple, list)) else size) != tuple(reference):
                raise InputError(f"size: expected {shape_text(reference)}, the one image size of this bundle (it "
                                 f"declares no input.size), got {size!r}")
            return self.latent_shape
        if why := self.sizes.refusal(size):
            raise InputError(f"size: expected {why}, got {size!r}")
        if len(self.latent_shape) == 1:
            return self.latent_shape
        f = self.downsample
        return self.latent_shape[0], int(size[0]) // f, int(size[1]) // f

    def _finite(self, images, refusal: Callable[..., str], *about):
        """``images``, unless they hold NaN or Inf (one cheap pass: ``arrays.finite``); the sentence
        (``refusal(*about)``, which may read the inputs again) is made only then."""
        if not self.arrays.finite(images):
            raise InputError(refusal(*about))
        return images

    @cached_property
    def plans(self) -> dict[str, Plan]:
        """op → its ``Plan``: what ``_call`` runs for each API method."""
        return self._plans()

    def _plans(self) -> dict[str, Plan]:
        image, latent = ((self.input_shape, "float32"),), ((self.latent_shape, "float32"),)
        return {"encode_params": Plan(self._encode_params_rows, image),
                "encode": Plan(self._encode_rows, image, noise=True),
                "decode": Plan(self._decode_rows, latent),
                "reconstruct": Plan(self._reconstruct_rows, image)}

    def _call(self, op: str, *inputs, noise: Noise | None = None, temperature=None, shape=None, out=None) -> tuple:
        """Op ``op``'s plan over every row of ``inputs`` (or of ``noise``, at one latent ``shape`` for a sized plan):
        through the batch buckets where this runtime has them and the plan can be recorded with this noise, else
        directly in slices (``_map``)."""
        plan = self.plans[op]
        if self._buckets is None:
            return self._map(plan, inputs, noise, temperature, shape, out)
        if plan.recordable and (noise is None or noise.is_one_stream):
            return self._buckets.call(op, plan, inputs, noise, temperature, out, shape)
        # per-row seeds (one stream per row, which no kernel launch takes) and ops read on the host run directly,
        # one call at a time with the buckets' calls, and copied out: a bound runner's outputs are its buffers
        with self._buckets.lock:
            return self._map(plan, inputs, noise, temperature, shape, out, gather=True)

    def _map(self, plan: Plan, inputs: tuple, noise=None, temperature=None, shape=None, out=None,
             gather=False) -> tuple:
        """``plan.rows`` on slices of at most ``max_batch`` rows of every input (the noise slices like one); each of
        its outputs gathered in order into one array of all the rows, the first into ``out`` when given (and always
        when ``gather``)."""
        arrays = (*inputs, noise) if plan.noise else inputs
        extra = plan.extra(temperature, shape)
        n = len(arrays[0])
        if n <= self.max_batch and out is None and not gather:  # the hot path: no slicing
            return plan.rows(*arrays, *extra)
        gathered = None
        for start in range(0, n, self.max_batch):
            rows = slice(start, min(n, start + self.max_batch))
            parts = plan.rows(*(a[rows] for a in arrays), *extra)
            if gathered is None:
                gathered = [self._result(out if i == 0 else None, n, p) for i, p in enumerate(parts)]
            for whole, part in zip(gathered, parts):
                whole[rows] = part
        return tuple(gathered)

    def _result(self, out, n: int, like):
        shape = (n, *like.shape[1:])
        return self.arrays.empty(shape, like) if out is None else self.arrays.take_out(out, shape, like)

    def _image(self, params):
        """The mean image from the decoder's first likelihood parameter (sigmoid of the logits for Bernoulli)."""
        return self.arrays.sigmoid(params) if self.likelihood == "bernoulli" else params

    def _decode_rows(self, z) -> tuple:
        return (self._image(self._decoder.run(z)[0]),)

    def _check_sample(self, n, temperature) -> tuple[int, float]:
        """``n`` and ``temperature`` as Python numbers: numpy scalars are taken as their Python values, bools never."""
        if self.closed:
            raise InputError(f"{self!r} is closed; load the bundle again")
        if type(n) is int and type(temperature) is float and 1 <= n <= sys.maxsize and 0 <= temperature <= \
                MAX_TEMPERATURE:  # the common call, without the abstract-class checks (a microsecond each)
            return n, temperature
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or not 1 <= int(n) <= sys.maxsize:
            raise InputError(f"n: expected a positive integer of at most 2**63 - 1 (the most rows an array can "
                             f"have), got {n!r}")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) or \
                not 0 <= temperature <= MAX_TEMPERATURE:  # compared as given: float(10**400) would overflow
            raise InputError(f"temperature: expected a finite number in [0, {MAX_TEMPERATURE:g}], got {temperature!r}")
        return int(n), float(temperature)

    # ---- the API -----------------------------------------------------------------------------------------------

    def encode_params(self, x, *, tile=None, check_inputs: bool = True) -> tuple:
        """The encoder's outputs for images x (N × input shape): ``(mean, logvar)``, or ``(z,)`` for an AE; never
        scaled (the graph's own). ``tile`` and ``check_inputs`` as for ``encode``: each output blended as diffusers'
        ``tiled_encode``."""
        tiling = None if tile is None else self._tiling(tile, x, "x", latent=False)
        if tiling is not None:
            params, back = self._tiled_params(x, tiling)
            return tuple(map(back, params))
        x, back = self._take_images(x, check_inputs)
        return tuple(map(back, self._call("encode_params", x)))

    def _tiled_params(self, x, tiling: Tiling) -> tuple:
        """The encoder's outputs for x, tile by tile and blended, and the way back to the caller's type."""
        x, back = self._take(x, tuple(x.shape[1:]), "x", self.input_values)
        return tiled(lambda t: self._call("encode_params", t), x, tiling, self.arrays), back

    def encode(self, x, seed=None, offset=0, *, tile=None, out=None, check_inputs: bool = True):
        """A latent z (N × latent shape) per image: a draw from q(z|x), or the code itself for deterministic
        latents; scaled where the bundle declares ``latent.scaling`` ((z - shift) · scale).

        ``seed`` fixes the draw (None draws a fresh seed); row r uses row ``offset + r`` of the seed's noise
        stream, so rows encoded in separate calls draw what one call would. Per-row ``seed`` and ``offset`` arrays
        (N values each) give every row its own stream (``noise.py``). ``out``: a preallocated result (N × latent
        shape float32, in this runtime's arrays) that is filled and returned instead of a new array. ``tile``: None,
        (th, tw) pixels or ``"auto"``: an image larger than the tile is encoded tile by tile, the posterior's
        parameters blended as diffusers' ``tiled_encode`` blends them, then drawn from as one latent (``_tiling``).
        ``check_inputs=False`` skips the pass over x's values (finite, in the bundle's input range) for a caller that
        has made it already, as the server does before queueing a request; shapes and types are checked always.
        """
        tiling = None if tile is None else self._tiling(tile, x, "x", latent=False)
        if tiling is not None:
            params, back = self._tiled_params(x, tiling)
            return self._into(self._encode_from_params(params, Noise.of(seed, offset, len(x))), out, back)
        x, back = self._take_images(x, check_inputs)
        z = self._call("encode", x, noise=Noise.of(seed, offset, len(x)), out=out)[0]
        return z if out is not None else back(z)

    def decode(self, z, *, tile=None, out=None, check_inputs: bool = True):
        """The mean image (N × input shape) of p(x|z) for latents z (N × latent shape, in ``encode``'s space: scaled
        where the bundle declares ``latent.scaling``); ``out`` and ``check_inputs`` as for ``encode`` (the decoded
        images are checked for NaN and Inf always). ``tile``: None, (th, tw) pixels or ``"auto"``: an image larger
        than the tile is decoded tile by tile and blended as diffusers' ``tiled_decode`` blends (``_tiling``)."""
        tiling = None if tile is None else self._tiling(tile, z, "z", latent=True)
        if tiling is not None:
            z, back = self._take(z, tuple(z.shape[1:]), "z")
            images = tiled(lambda t: self._call("decode", t), z, tiling, self.arrays)[0]
            return self._into(self._finite(images, decoded_refusal, z), out, back)
        z, back = self._take_latents(z, check_inputs)
        images = self._finite(self._call("decode", z, out=out)[0], decoded_refusal, z)
        return images if out is not None else back(images)

    def _tiling(self, tile, x, name: str, latent: bool) -> Tiling | None:
        """The tiles (in x's units: latent rows for decode, pixels for encode) of a call with ``tile=`` on x, or None
        to run it whole (an image within one tile: diffusers' rule, ``tiles.choose``); the API calls it only for a
        ``tile`` that is not None.

        Tiles take any size of spatial latents (gaussian or deterministic) of a bundle with ``input.size``; the tile
        is a size the bundle takes, and the image any multiple of ``input.size.multiple``, larger than the largest
        the graphs take too: the graphs only ever see a tile or a smaller one at the image's far edges.
        """
        if self.sizes is None or len(self.latent_shape) != 3 or not hasattr(self, "_encode_from_params"):
            raise InputError(f"tile: expected None for a {self.latent_type} bundle of latent shape "
                             f"{shape_text(self.latent_shape)}; tiles need spatial gaussian or deterministic latents "
                             "of a bundle that takes any image size (input.size)")
        f, shape = self.downsample, getattr(x, "shape", None)
        channels = self.latent_shape[0] if latent else self.input_shape[0]
        scale = f if latent else 1
        if shape is None or len(shape) != 4 or shape[1] != channels or shape[2] * scale % self.sizes.multiple \
                or shape[3] * scale % self.sizes.multiple:
            what = f"N×{channels}×h×w latents with h·{f}, w·{f}" if latent else f"N×{channels}×H×W images with H, W"
            raise InputError(f"{name}: expected {what} multiples of {self.sizes.multiple} for a tiled call, got "
                             f"{shape_text(shape) if shape is not None else type(x).__name__}")
        if tile != "auto" and isinstance(tile, (tuple, list)) and (why := self.sizes.refusal(tile)):
            raise InputError(f"tile: expected (th, tw) with {why}, got {tile!r}")
        pixels = choose(tile, (shape[2] * scale, shape[3] * scale), self.sizes.high)
        if pixels is None:
            return None
        try:
            return Tiling(tuple(p // f for p in pixels), f) if latent else Tiling(pixels, Fraction(1, f))
        except InputError:  # said in pixels, the tile's units here
            raise InputError(f"tile: expected sides that are multiples of {round(f / OVERLAP)} pixels (the overlap, "
                             f"{OVERLAP:g} of a tile, a whole number of latent rows), got {tile!r}") from None

    def _into(self, result, out, back):
        """A tiled call's result, copied into the caller's ``out`` where one is given, else in the caller's type."""
        if out is None:
            return back(result)
        out = self.arrays.take_out(out, tuple(result.shape), result)
        out[...] = result
        return out

    def reconstruct(self, x, *, out=None, check_inputs: bool = True):
        """decode(the encoder's most likely code): the posterior mean for Gaussian latents; ``out`` and
        ``check_inputs`` as for ``encode``."""
        x, back = self._take_images(x, check_inputs)
        images = self._call("reconstruct", x, out=out)[0]
        return images if out is not None else back(images)

    def sample(self, n: int, seed=None, temperature: float = 1.0, offset=0, size=None, *, out=None):
        """n images from the bundle's prior at ``temperature``; row r uses row ``offset + r`` of ``seed``'s stream
        (per-row arrays as for ``encode``), one counter per latent element in C order, at any ``size``. ``size``:
        (H, W) of the images, one the bundle takes (default the reference ``input.shape``). Drawn and decoded
        ``max_batch`` rows at a time (a bucket at a time on a runtime with buckets); ``out`` as for ``encode``."""
        n, temperature = self._check_sample(n, temperature)
        if "sample" not in self.plans:
            raise InputError(self._no_prior("sample"))
        shape = self.latent_shape_at(size)
        images = self._call("sample", noise=Noise.of(seed, offset, n), temperature=temperature,
                            shape=shape if self.plans["sample"].sized else None, out=out)[0]
        images = self._finite(images, sampled_refusal, temperature)
        return images if out is not None else self.arrays.output(images)

    def _no_prior(self, op: str) -> str:
        """Why ``op`` (``sample``, ``sample_codes``) is refused by a bundle whose model has no prior to draw from."""
        return (f"{op}: the model of this {self.kind} bundle has no prior over its {self.latent_type} latents to "
                "sample from; expected a bundle with gaussian latents or a learned prior")

    # ---- what a latent type implements ---------------------------------------------------------------------------

    def _encode_params_rows(self, x) -> tuple:
        raise NotImplementedError

    def _encode_rows(self, x, noise: Noise) -> tuple:
        raise NotImplementedError

    def _reconstruct_rows(self, x) -> tuple:
        raise NotImplementedError
