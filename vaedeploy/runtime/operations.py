"""What each latent type can do: one table of operations per bundle, read by every layer that offers them.

An operation (``encode``, ``encode_params``, ``decode``, ``reconstruct``, ``sample``; VQ's ``decode_codes`` and
``sample_codes``) has its input and output tensors, the request parameters it reads, the graph roles one call runs
in order, and the function that runs it on a ``Runtime``. ``operations_of(runtime_or_bundle)`` gives the table of a
bundle, read from its manifest's latent entry as the runtime is built. The server's V2 models
(``serve/models.py``), the bench's floor and its list of ops (``bench/floor.py``, ``bench/local.py``), the Triton
repository's ensembles (``deploy/triton_repo.py``), the explorer page's spec (``web/site.py``) and the table in
docs/serving.md (``docs_table``) are all derived from it, so a latent type's operations are written here once.

A tensor's shape is its batch axis ``"N"`` followed by its per-row dims: integers read from the manifest, or letters
for axes of any size: ``"H"``, ``"W"`` for an image's and ``"h"``, ``"w"`` for a spatial latent's where the bundle takes
any image size (``input.size``), and the docs table's symbols. ``Tensor.v2_shape`` is the one place that turns every
letter into the Open Inference Protocol's -1. A spatial ``sample`` reads the request parameters ``height`` and
``width`` (the image's H and W; bounds, multiple and default the bundle's): its ``Operation.bounds`` hold them, and
its ``run`` takes ``size=(height, width)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..bundle import IMAGE_AXES, LATENT_AXES, ImageSizes
from .base import MAX_TEMPERATURE
from .noise import STREAM_LIMIT

BATCH = "N"  # the symbolic batch axis of every tensor
MAX_SAMPLE = 4096  # the default largest n of a sample request (a server sets its own with --max-sample)

# The Open Inference Protocol's name of each numpy dtype, little-endian as on the wire (on a little-endian host these
# are numpy's own dtype objects, which the runtime's fast path checks by identity): the one map the server's codec,
# its models and the Triton repository read.
DATATYPES = {name: np.dtype(code) for name, code in {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1", "INT16": "<i2",
    "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.items()}
DTYPE_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


@dataclass(frozen=True)
class Parameter:
    """A request parameter: integers (``integral``) or finite numbers from ``low`` to ``high`` inclusive (integers
    also a multiple of ``multiple``), its ``default`` (None: a fresh seed per request), and the server option that
    sets its upper bound, if one does."""

    name: str
    integral: bool
    low: float
    high: float
    default: float | None
    option: str = ""
    multiple: int = 1

    def as_dict(self) -> dict:
        multiple = {"multiple": self.multiple} if self.multiple > 1 else {}
        return {"name": self.name, "type": "integer" if self.integral else "number", "low": self.low,
                "high": self.high, "default": self.default, **multiple}


# Every request parameter an operation may read, with the runtime's own bounds (seeds and stream rows below 2**63,
# temperatures up to MAX_TEMPERATURE).
PARAMETERS = {p.name: p for p in (
    Parameter("n", True, 1, MAX_SAMPLE, 1, "--max-sample"),
    Parameter("seed", True, 0, STREAM_LIMIT - 1, None),
    Parameter("offset", True, 0, STREAM_LIMIT - 1, 0),
    Parameter("temperature", False, 0.0, MAX_TEMPERATURE, 1.0),
    # an image's size for a spatial sample: each bundle's own bounds are its Operation.bounds (``size_parameters``)
    Parameter("height", True, 1, 2**31 - 1, None),
    Parameter("width", True, 1, 2**31 - 1, None),
)}
NOISE = ("seed", "offset")
SAMPLING = ("n", "seed", "temperature", "offset")
SIZE = ("height", "width")
SYMBOLS = {IMAGE_AXES[0]: "H", IMAGE_AXES[1]: "W", LATENT_AXES[0]: "h", LATENT_AXES[1]: "w"}  # manifest → table


def size_parameters(sizes: ImageSizes) -> tuple[Parameter, ...]:
    """``height`` and ``width`` of a bundle that takes any image size: its range, multiple and reference size."""
    return tuple(Parameter(name, True, low, high, reference, multiple=sizes.multiple)
                 for name, low, high, reference in zip(SIZE, sizes.low, sizes.high, sizes.reference))


@dataclass(frozen=True)
class Tensor:
    """An input or output: its name, numpy dtype name, shape (``BATCH`` then the per-row dims) and, for integers
    such as codes, the inclusive range a value must lie in."""

    name: str
    dtype: str
    shape: tuple
    low: int | None = None
    high: int | str | None = None

    @property
    def dims(self) -> tuple:
        """The dims after the batch axis."""
        return self.shape[1:]

    @property
    def v2_shape(self) -> list[int]:
        """The shape as the Open Inference Protocol writes it: -1 for the batch and every axis of any size."""
        return [-1 if isinstance(d, str) else int(d) for d in self.shape]

    @property
    def datatype(self) -> str:
        """Its V2 datatype name (``FP32``, ``INT64``)."""
        return DTYPE_NAMES[np.dtype(self.dtype)]

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                **({"range": [self.low, self.high]} if self.low is not None else {})}


# a call of the runtime for a batch: (runtime, inputs, rows, seed, offset, temperature, check_inputs) → the outputs,
# in order; seed and offset may be one per row (the server's batches mix requests); check_inputs=False where the caller
# has read the inputs' values already (the server, before queueing); an op whose parameters include SIZE is also given
# size=(height, width)
Run = Callable[..., tuple]


@dataclass(frozen=True)
class Operation:
    """One operation of a bundle: tensors, request parameters (names in ``PARAMETERS``), graph roles run in order
    (a VQ prior once per code), the function that runs it (``Run``) and, for parameters whose bounds are the
    bundle's own (a spatial sample's ``height`` and ``width``), those bounds."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    parameters: tuple[str, ...]
    graphs: tuple[str, ...]
    run: Run
    bounds: tuple[Parameter, ...] = ()

    def parameter(self, name: str) -> Parameter:
        """The parameter ``name`` as this operation takes it: the bundle's bounds where it has them."""
        return next((p for p in self.bounds if p.name == name), PARAMETERS[name])

    def as_dict(self) -> dict:
        """The JSON form the explorer page reads."""
        return {"name": self.name, "inputs": [t.as_dict() for t in self.inputs],
                "outputs": [t.as_dict() for t in self.outputs],
                "parameters": [self.parameter(p).as_dict() for p in self.parameters], "graphs": list(self.graphs)}


# ---- running each operation on a runtime --------------------------------------------------------------------------

def _encode_noisy(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    return (rt.encode(inputs[0], seed=seed, offset=offset, check_inputs=check_inputs),)


def _encode_plain(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    z = rt.encode(inputs[0], check_inputs=check_inputs)
    return z if isinstance(z, tuple) else (z,)


def _encode_params(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    return tuple(rt.encode_params(inputs[0], check_inputs=check_inputs))


def _decode(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    return (rt.decode(inputs[0], check_inputs=check_inputs),)


def _reconstruct(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    return (rt.reconstruct(inputs[0], check_inputs=check_inputs),)


# a sample's only inputs are its parameters, which the runtime checks in O(1) whatever check_inputs says
def _sample(rt, inputs, rows, seed, offset, temperature, check_inputs=True, size=None):
    return (rt.sample(rows, seed=seed, temperature=temperature, offset=offset, size=size),)


def _sample_codes(rt, inputs, rows, seed, offset, temperature, check_inputs=True):
    return (rt.sample_codes(rows, seed=seed, temperature=temperature, offset=offset),)


# ---- the table ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shapes:
    """What a latent type's table needs to know of a bundle: the image's dims, the latent's (its dims, or VQ's
    vector size, grid and codebook size), the encoder's outputs, the graph roles of decoding and of drawing a sample,
    and a spatial sample's size parameters."""

    image: tuple
    latent: tuple
    params: tuple[Tensor, ...]
    decoder: tuple[str, ...]
    sampler: tuple[str, ...] | None  # the graphs before the decoder in sample; None: no sample
    grid: tuple = ()
    num_codes: int | str = 0
    size: tuple[Parameter, ...] = ()  # height and width where sample takes any image size


def table(latent_type: str, shapes: Shapes) -> dict[str, Operation]:
    """The operations of ``latent_type`` (``bundle.LATENT_TYPES``) over ``shapes``, in the order they are listed."""
    x = Tensor("x", "float32", (BATCH, *shapes.image))
    encoder = ("encoder",)
    ops = []
    if latent_type == "vq":
        high = shapes.num_codes - 1 if isinstance(shapes.num_codes, int) else f"{shapes.num_codes}-1"
        codes = Tensor("codes", "int64", (BATCH, *shapes.grid), 0, high)
        z_q = Tensor("z_q", "float32", (BATCH, *shapes.latent))
        ops += [Operation("encode", (x,), (codes, z_q), (), encoder, _encode_plain),
                Operation("encode_params", (x,), shapes.params, (), encoder, _encode_params),
                Operation("decode", (z_q,), (x,), (), shapes.decoder, _decode),
                Operation("decode_codes", (codes,), (x,), (), shapes.decoder, _decode)]
    else:
        z = Tensor("z", "float32", (BATCH, *shapes.latent))
        noisy = latent_type != "deterministic"
        ops += [Operation("encode", (x,), (z,), NOISE if noisy else (), encoder,
                          _encode_noisy if noisy else _encode_plain),
                Operation("encode_params", (x,), shapes.params, (), encoder, _encode_params),
                Operation("decode", (z,), (x,), (), shapes.decoder, _decode)]
    ops.append(Operation("reconstruct", (x,), (x,), (), encoder + shapes.decoder, _reconstruct))
    if shapes.sampler is not None:
        # a hierarchical bundle's sampling graph gives the image itself; every other type decodes what it drew
        decoded = () if latent_type == "hierarchical" else shapes.decoder
        sizes = tuple(p.name for p in shapes.size)
        ops.append(Operation("sample", (), (x,), SAMPLING + sizes, shapes.sampler + decoded, _sample, shapes.size))
    if latent_type == "vq" and shapes.sampler is not None:
        ops.append(Operation("sample_codes", (), (codes,), SAMPLING, shapes.sampler, _sample_codes))
    return {op.name: op for op in ops}


def _dims(shape) -> tuple:
    """A manifest tensor's dims after the batch, with the table's letters for axes of any size."""
    return tuple(SYMBOLS[s] if isinstance(s, str) else int(s) for s in shape[1:])


def _shapes(bundle) -> Shapes:
    """The ``Shapes`` of a loaded bundle, from its manifest as the runtime reads it."""
    latent = bundle.latent
    kind, dim = latent["type"], int(bundle.latent_shape[0])
    prior = latent.get("prior")
    params = tuple(Tensor(o["name"], "float32", (BATCH, *_dims(o["shape"])))
                   for o in bundle.graph("encoder")["outputs"])
    decoder_input = bundle.graph(latent["graphs"]["decode"] if kind == "hierarchical" else "decoder")["inputs"][0]
    image = _dims(bundle.graph("encoder")["inputs"][0]["shape"])
    decoder = ("decoder",)
    if kind == "hierarchical":  # every layer's posterior, concatenated: N×Σd each
        params = tuple(Tensor(name, "float32", (BATCH, dim)) for name in ("mean", "logvar"))
        decoder = (latent["graphs"]["decode"],)
        sampler = (latent["graphs"]["sample"],)
    elif kind == "vq":  # the autoregressive prior runs once per code; a VQGAN has none
        sampler = (prior["graph"],) * int(prior["length"]) if prior else None
    elif kind == "gaussian":
        sampler = (prior["graph"],) if prior else ()
    else:
        sampler = None  # a deterministic latent has no prior to sample from
    if kind == "vq":  # the code grid is the latent's h×w: fixed under a prior, else of any size the bundle takes
        latent_dims = _dims(decoder_input["shape"])
        return Shapes(image, latent_dims, params, decoder, sampler, latent_dims[1:], int(latent["num_codes"]))
    sizes = bundle.sizes
    size = size_parameters(sizes) if sizes is not None and sampler is not None and kind == "gaussian" else ()
    return Shapes(image, _dims(decoder_input["shape"]), params, decoder, sampler, size=size)


def operations_of(runtime_or_bundle) -> dict[str, Operation]:
    """The operations of a ``Runtime``'s bundle (or of a loaded ``Bundle``), by name, in the table's order."""
    bundle = getattr(runtime_or_bundle, "bundle", runtime_or_bundle)
    return table(bundle.latent["type"], _shapes(bundle))


# ---- the docs table ---------------------------------------------------------------------------------------------

_IMAGE = ("C", "H", "W")
_PARAMS = tuple(Tensor(name, "float32", (BATCH, "d")) for name in ("mean", "logvar"))
_SPATIAL = tuple(Tensor(name, "float32", (BATCH, "c", "h", "w")) for name in ("mean", "logvar"))
_Z_E = Tensor("z_e", "float32", (BATCH, "D", "h", "w"))
# the latent types as docs/serving.md names them, with symbolic shapes
DOCS_TYPES = {
    "gaussian": ("gaussian", Shapes(_IMAGE, ("d",), _PARAMS, ("decoder",), ())),
    "gaussian, spatial, any size": ("gaussian", Shapes(_IMAGE, ("c", "h", "w"), _SPATIAL, ("decoder",), (),
                                                       size=tuple(PARAMETERS[p] for p in SIZE))),
    "gaussian, two-stage prior": ("gaussian", Shapes(_IMAGE, ("d",), _PARAMS, ("decoder",), ("prior.graph",))),
    "deterministic": ("deterministic", Shapes(_IMAGE, ("d",), (Tensor("z", "float32", (BATCH, "d")),),
                                              ("decoder",), None)),
    "vq": ("vq", Shapes(_IMAGE, ("D", "h", "w"), (_Z_E,), ("decoder",), ("prior.graph ×L",), ("h", "w"), "K")),
    "vq, no prior, any size": ("vq", Shapes(_IMAGE, ("D", "h", "w"), (_Z_E,), ("decoder",), None, ("h", "w"), "K")),
    "hierarchical": ("hierarchical", Shapes(_IMAGE, ("Σd",), tuple(Tensor(t.name, "float32", (BATCH, "Σd"))
                                                                  for t in _PARAMS), ("graphs.decode",),
                                            ("graphs.sample",))),
}
DOCS_BEGIN = "<!-- generated from vaedeploy.runtime.operations.docs_table -->"
DOCS_END = "<!-- end of the generated operations table -->"


def _tensors(tensors) -> str:
    return ", ".join(f"`{t.name}` {t.dtype} [{', '.join(map(str, t.shape))}]" for t in tensors) or "none"


def docs_table() -> str:
    """The Markdown table of every latent type's operations, as docs/serving.md holds it between its markers."""
    lines = ["| latent type | model | inputs | outputs | request parameters | graphs run |",
             "|---|---|---|---|---|---|"]
    for label, (latent_type, shapes) in DOCS_TYPES.items():
        for op in table(latent_type, shapes).values():
            parameters = ", ".join(f"`{p}`" for p in op.parameters) or "–"
            lines.append(f"| {label} | `NAME.{op.name}` | {_tensors(op.inputs)} | {_tensors(op.outputs)} | "
                         f"{parameters} | {' → '.join(op.graphs)} |")
    return "\n".join(lines) + "\n"


def render_docs(page: str) -> str:
    """``page`` (docs/serving.md's text) with ``docs_table()`` between its markers."""
    start, end = page.index(DOCS_BEGIN) + len(DOCS_BEGIN), page.index(DOCS_END)
    return page[:start] + "\n" + docs_table() + page[end:]
