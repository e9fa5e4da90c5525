"""A bundle served as NAME is a set of V2 models, one per operation of its runtime (docs/serving.md):

==================  =========================================  ===================  ==========================
model               inputs                                     outputs              request parameters
==================  =========================================  ===================  ==========================
NAME.encode         x FP32 [-1, C, H, W]                       z (VQ: codes, z_q)   seed, offset (noisy latents)
NAME.encode_params  x                                          the encoder's:       -
                                                               mean, logvar | z | z_e
NAME.decode         z FP32 [-1, d] (VQ: z_q [-1, D, h, w])     x                    -
NAME.decode_codes   codes INT64 [-1, h, w] (VQ only)           x                    -
NAME.reconstruct    x                                          x                    -
NAME.sample         none                                       x                    n, seed, temperature, offset
NAME.sample_codes   none (VQ only)                             codes                n, seed, temperature, offset
==================  =========================================  ===================  ==========================

The table is the runtime's (``vaedeploy.runtime.operations``), chosen by the manifest's latent type alone. A spatial
bundle that takes any image size has -1 in its metadata for H, W (and a latent's h, w), takes inputs of any size the
runtime takes (checked by ``Runtime.image_dims`` and ``Runtime.latent_dims``), and its ``sample`` also reads
``height`` and ``width`` (the bundle's own range and multiple), which its pieces carry, so only samples of one size
share a batch.
``sample`` exists where the runtime can sample (every latent type but ``deterministic``); its ``n`` may also come as
a one-element INT64 input tensor ``n``, the request shape ``vaedeploy triton-repo``'s ensembles take, so client code
moves between the two unchanged. A request's rows keep the
noise of their own call: a request with seed s and first stream row o (``offset``, default 0) contributes seeds
[s]*n and offsets o..o+n-1 to the batch it lands in, so its result is ``Runtime.encode(x, seed=s, offset=o)`` or
``Runtime.sample(n, seed=s, offset=o)`` whatever else shares the batch (equal to about 1e-7: BLAS picks kernels by
batch size). Without a seed the server draws one per request.

Every number of a request is checked before it is queued: each request parameter against the runtime's table
(``PARAMETERS``: the operation table's ``Parameter`` entries, plus the schedule policy's) by ``protocol.check``, each
float input by the runtime's own array check (``arrays.take``, with the bundle's input range for images), integer
inputs (codes) against their range. The batch's call then tells the runtime so (``check_inputs=False``): the
values are read once. An output with NaN or Inf (a finite input far outside what the model was trained on) is refused
with a sentence naming what came in.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from ..runtime.arrays import FINITE, NumpyArrays, Values, shape_text
from ..runtime.base import input_values
from ..runtime.noise import STREAM_LIMIT  # the runtime's bound on seeds and stream rows: 2**63
from ..runtime.operations import MAX_SAMPLE, SIZE, Parameter, Run, Tensor, operations_of
from ..runtime.operations import PARAMETERS as RUNTIME_PARAMETERS
from .protocol import DATATYPES, DTYPE_NAMES, INT64_MAX, ProtocolError, bounds, check, finite

SCHEDULE_PARAMETERS = ("priority", "timeout")  # Triton's schedule-policy parameters, read by the batcher
TRITON_RESERVED = "triton_"  # the prefix of request parameters Triton reserves for itself (tritonclient's word)
# The longest queueing time a request or the batching options may name, µs (an hour): threading's waits overflow
# past about 292 years, and an hour in a queue is already a mistake.
MAX_WAIT_US = 3_600_000_000
# Every request parameter a model may read, with its type and range (docs/serving.md, "Limits of every number"): the
# operations' own from the runtime's table; n's upper bound is set per server (--max-sample); the schedule policy's,
# priority's by the batcher's levels.
PARAMETERS = {
    **RUNTIME_PARAMETERS,
    "priority": Parameter("priority", True, 0, INT64_MAX, 0),
    "timeout": Parameter("timeout", True, 0, MAX_WAIT_US, 0),
}
ARRAYS = NumpyArrays()  # the runtime's own check of an input array (dtype, rows, values), run before queueing


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a V2 model: its name, V2 datatype, dims after the batch axis, and the numbers an input
    may hold: the runtime's ``Values`` for floats (an image's range, finite latents), a range for integers (codes)."""

    name: str
    datatype: str
    dims: tuple  # the table's: integers, or letters for axes of any size (a spatial bundle's H, W, h, w)
    values: Values = FINITE
    limit: Parameter | None = None

    @property
    def v2_dims(self) -> list[int]:
        """The dims as the Open Inference Protocol writes them: -1 for every axis of any size (gRPC's dims are
        int64, so a letter would break its metadata reply)."""
        return Tensor(self.name, "float32", ("N", *self.dims)).v2_shape[1:]

    @property
    def sized(self) -> bool:
        """Whether some axis after the batch takes any size the bundle allows (checked by the runtime itself)."""
        return any(isinstance(d, str) for d in self.dims)

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.v2_dims]}


@dataclass
class Piece:
    """Rows of one request as the batcher queues them: at most ``max_batch_size`` rows, the request's inputs for those
    rows, the noise they draw (rows ``offset``.. of ``seed``'s stream) and, for a spatial sample, the image size
    (H, W) it draws at."""

    inputs: tuple
    rows: int
    seed: int
    offset: int
    temperature: float
    size: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple:
        """The per-row shape of each input, and the size of a sample: only pieces of one shape share a batch."""
        return (*(a.shape[1:] for a in self.inputs), self.size)

    def split(self, size: int) -> list["Piece"]:
        """Pieces of at most ``size`` rows, in order, each keeping its rows' noise."""
        return [Piece(tuple(a[start:start + size] for a in self.inputs), min(size, self.rows - start), self.seed,
                      self.offset + start, self.temperature, self.size) for start in range(0, self.rows, size)]


class Operation:
    """One V2 model: an operation of a bundle's runtime, with its tensors and the request parameters it reads.

    Args:
        name: the V2 model name, ``NAME.operation``.
        runtime: the loaded ``Runtime`` (shared by every operation of the bundle).
        inputs, outputs: ``TensorSpec`` lists.
        parameters: the request parameters the operation reads besides the schedule policy's.
        call: runs one batch (``runtime.operations.Run``).
        max_sample: the largest ``n`` a sampling request may ask for.
        own: the parameters whose bounds are the bundle's (``runtime.operations.Operation.bounds``: a spatial
            sample's ``height`` and ``width``).
    """

    def __init__(self, name: str, runtime, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 parameters: tuple[str, ...], call: Run, max_sample: int, own: tuple[Parameter, ...] = ()):
        self.name, self.runtime, self.inputs, self.outputs = name, runtime, inputs, outputs
        self.parameters, self.call, self.max_sample = parameters, call, max_sample
        self.output_names = [o.name for o in outputs]
        self.samples = "n" in parameters  # rows come from ``n``, not from an input's batch axis
        self.sized = all(p in parameters for p in SIZE)  # a spatial sample: it draws at a requested size
        self.limits = {name: PARAMETERS[name] for name in (*parameters, *SCHEDULE_PARAMETERS)}
        self.limits.update((p.name, p) for p in own)
        if self.samples:
            self.limits["n"] = replace(PARAMETERS["n"], high=max_sample)

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": f"vaedeploy_{self.runtime.backend}",
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}

    # ---- a request, checked before it is queued (one bad request must not fail the batch it would join) ----------

    def check_outputs(self, requested: list[str] | None) -> None:
        """Refuse a request that asks for outputs this model does not have (None: every output)."""
        if requested is not None and (unknown := sorted(set(requested) - set(self.output_names))):
            raise ProtocolError(f"{self.name}: unknown output(s) {unknown}; expected some of {self.output_names}")

    def checked_parameters(self, parameters: dict) -> dict:
        """The request's parameters, each checked against the table (``PARAMETERS``); else a ``ProtocolError``.
        Names beginning ``triton_`` are Triton's own, for its server (perf_analyzer sends
        ``triton_enable_empty_final_response``, which only decoupled models read): ignored, as Triton's models do."""
        parameters = {k: v for k, v in parameters.items() if not k.startswith(TRITON_RESERVED)}
        if unknown := sorted(set(parameters) - set(self.limits)):
            raise ProtocolError(f"{self.name}: unknown request parameter(s) {unknown}; expected some of: "
                                f"{', '.join(self.limits)}")
        return {name: check(f"parameter {name}", value, self.limits[name]) for name, value in parameters.items()}

    def piece(self, inputs: dict[str, np.ndarray], parameters: dict) -> Piece:
        """The request's rows as one ``Piece``, every input checked; ``parameters`` are ``checked_parameters``."""
        if self.samples and "n" in inputs:  # n as a tensor: the request shape a Triton ensemble takes
            inputs = dict(inputs)
            parameters = {**parameters, "n": self._rows(inputs.pop("n"), parameters)}
        names = [s.name for s in self.inputs]
        if sorted(inputs) != sorted(names):
            raise ProtocolError(f"{self.name}: expected input(s) {names}, got {sorted(inputs)}")
        arrays = tuple(self._tensor(spec, inputs[spec.name]) for spec in self.inputs)
        if len({len(a) for a in arrays}) > 1:
            raise ProtocolError(f"{self.name}: expected the inputs to have the same batch size, got "
                                f"{[len(a) for a in arrays]}")
        rows = parameters.get("n", 1) if self.samples else len(arrays[0])
        seed, offset = parameters.get("seed"), parameters.get("offset", 0)
        if offset + rows > STREAM_LIMIT:
            raise ProtocolError(f"parameter offset: rows {offset}..{offset + rows - 1} are past 2**63")
        if seed is None:  # a fresh seed where the op draws noise (2.6% of the loop's time under load where it did not)
            seed = secrets.randbits(63) if "seed" in self.parameters else 0
        return Piece(arrays, rows, seed, offset, parameters.get("temperature", 1.0), self._size(parameters))

    def _size(self, parameters: dict) -> tuple[int, int] | None:
        """A spatial sample's image size (H, W): the request's ``height`` and ``width``, each defaulting to the
        bundle's reference size, checked by the runtime itself (its range and multiple, per axis or together)."""
        if not self.sized:
            return None
        size = tuple(int(parameters.get(p, self.limits[p].default)) for p in SIZE)
        try:
            self.runtime.latent_shape_at(size)
        except InputError as e:
            raise ProtocolError(f"{self.name}: parameters height, width: {e}") from None
        return size

    def _rows(self, array: np.ndarray, parameters: dict) -> int:
        """A sample's ``n`` given as one INT64 element (shape [1]), as ``vaedeploy triton-repo``'s ensembles take it
        (Triton refuses an ensemble step without an input tensor; docs/serving.md)."""
        if array.dtype != DATATYPES["INT64"] or array.shape != (1,):
            raise ProtocolError(f"{self.name}: input 'n': expected datatype INT64 and shape [1], got "
                                f"{DTYPE_NAMES[array.dtype]} {list(array.shape)}")
        n = check(f"{self.name}: input 'n'", int(array[0]), self.limits["n"])
        if parameters.get("n", n) != n:
            raise ProtocolError(f"{self.name}: n is {n} as an input and {parameters['n']} as a parameter; expected "
                                "one of the two")
        return n

    def _tensor(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        """The input as the runtime will take it, checked as the runtime checks it (``arrays.take``: shape, rows,
        values), so a request the runtime would refuse never takes a place in a batch."""
        where = f"{self.name}: input {spec.name!r}"
        floats = spec.datatype == "FP32"
        if array.dtype != DATATYPES[spec.datatype] and not (floats and array.dtype == DATATYPES["FP16"]):
            got = DTYPE_NAMES[array.dtype]
            raise ProtocolError(f"{where}: expected datatype {spec.datatype}{' (or FP16)' if floats else ''}, got "
                                f"{got}")
        if floats:
            return ARRAYS.take(array, self._dims(spec, array, where), where, spec.values)[0]
        dims = self._dims(spec, array, where)
        if array.ndim != len(dims) + 1 or tuple(array.shape[1:]) != dims or len(array) == 0:
            raise ProtocolError(f"{where}: expected shape N×{shape_text(spec.dims)} with N ≥ 1, got "
                                f"{shape_text(array.shape)}")
        return check(where, array, spec.limit)

    def _dims(self, spec: TensorSpec, array: np.ndarray, where: str) -> tuple:
        """The per-row shape an input must have: the table's, or for axes of any size the runtime's own rule (an
        image of a size the bundle takes, a latent of the matching shape), so a wrong size is refused here."""
        if not spec.sized:
            return spec.dims
        try:
            if spec.name == "x":
                return self.runtime.image_dims(array, where)
            if spec.name == "codes":  # a VQ code grid of any size (a VQGAN's)
                return self.runtime.code_dims(array, where)
            return self.runtime.latent_dims(array, where)
        except InputError as e:
            raise ProtocolError(str(e)) from None

    def _refusal(self, piece: Piece, outputs: tuple) -> ProtocolError | None:
        """A 400 when the model produced NaN or Inf for this request (a finite input far outside the data it was
        trained on), naming what came in; JSON cannot carry such values, and a client should not get them."""
        bad = next((spec.name for spec, a in zip(self.outputs, outputs) if a.dtype.kind == "f" and not finite(a)),
                   None)
        if bad is None:
            return None
        given = [f"input {s.name} holds values from {a.min():.3g} to {a.max():.3g}"
                 for s, a in zip(self.inputs, piece.inputs)]
        if self.samples:
            given.append(f"temperature is {piece.temperature:g}")
        return ProtocolError(f"{self.name}: the model produced non-finite values (NaN or Inf) in output {bad!r} for "
                             f"this request, whose {' and '.join(given)}; expected inputs like the data the model "
                             "was trained on")

    # ---- a batch -------------------------------------------------------------------------------------------------

    def run(self, pieces: list[Piece], phases_ns: list[int] | None = None) -> list[tuple]:
        """Every piece's outputs, computed in as few runtime calls as the pieces allow (one per temperature); a
        piece whose outputs hold NaN or Inf gets a ``ProtocolError`` instead. ``phases_ns`` (input, infer, output)
        gets the nanoseconds spent stacking the pieces, in the runtime, and splitting and checking the outputs."""
        phases_ns = [0, 0, 0] if phases_ns is None else phases_ns
        groups: dict[tuple, list[int]] = {}
        for i, piece in enumerate(pieces):  # the batcher sends one shape; the key keeps this true for any caller
            groups.setdefault((piece.temperature if self.samples else 0.0, piece.shape), []).append(i)
        results: list = [None] * len(pieces)
        for indices in groups.values():
            group = [pieces[i] for i in indices]
            outputs = self._run_group(group, phases_ns)
            started = time.monotonic_ns()
            for i, piece_outputs in zip(indices, outputs):
                results[i] = self._refusal(pieces[i], piece_outputs) or piece_outputs
            phases_ns[2] += time.monotonic_ns() - started
        return results

    def _run_group(self, group: list[Piece], phases_ns: list[int]) -> list[tuple]:
        first = group[0]
        if len(group) == 1:  # the unbatched path: no copies, one noise stream
            started = time.monotonic_ns()
            outputs = self.call(self.runtime, first.inputs, first.rows, first.seed, first.offset, first.temperature,
                                check_inputs=False, **self._size_argument(first))
            phases_ns[1] += time.monotonic_ns() - started
            return [outputs]
        started = time.monotonic_ns()
        sizes = [p.rows for p in group]
        inputs = tuple(np.concatenate([p.inputs[i] for p in group]) for i in range(len(self.inputs)))
        seeds = np.repeat(np.array([p.seed for p in group], np.int64), sizes)
        offsets = np.concatenate([np.arange(p.offset, p.offset + p.rows, dtype=np.int64) for p in group])
        stacked = time.monotonic_ns()
        outputs = self.call(self.runtime, inputs, sum(sizes), seeds, offsets, first.temperature,
                            check_inputs=False, **self._size_argument(first))
        ran = time.monotonic_ns()
        bounds = np.cumsum([0, *sizes])
        split = [tuple(o[a:b] for o in outputs) for a, b in zip(bounds[:-1], bounds[1:])]
        phases_ns[0] += stacked - started
        phases_ns[1] += ran - stacked
        phases_ns[2] += time.monotonic_ns() - ran
        return split

    def _size_argument(self, piece: Piece) -> dict:
        """``size=(H, W)`` for a spatial sample (``runtime.operations.Run``), nothing for every other operation."""
        return {"size": piece.size} if self.sized else {}


# ---- the operations of a bundle, from the runtime's table ------------------------------------------------------

def _spec(tensor: Tensor, images: Values) -> TensorSpec:
    """A tensor of the table as the server checks it: an image (``x``) against the bundle's input range, other
    floats finite, integers in their range."""
    if tensor.low is not None:
        return TensorSpec(tensor.name, tensor.datatype, tuple(tensor.dims),
                          limit=bounds(tensor.name, True, tensor.low, tensor.high))
    return TensorSpec(tensor.name, tensor.datatype, tuple(tensor.dims), images if tensor.name == "x" else FINITE)


def operations(name: str, runtime, max_sample: int = MAX_SAMPLE) -> list[Operation]:
    """The V2 models of a runtime served as ``name``, in the table's order (``runtime.operations``)."""
    images = input_values(runtime.bundle)
    return [Operation(f"{name}.{op.name}", runtime, [_spec(t, images) for t in op.inputs],
                      [_spec(t, images) for t in op.outputs], op.parameters, op.run, max_sample, op.bounds)
            for op in operations_of(runtime).values()]


def describe(operation: Operation) -> str:
    """One line per model for the server's start-up message."""
    inputs = ", ".join(f"{s.name} {s.datatype} {shape_text(('N', *s.dims))}" for s in operation.inputs) or "-"
    outputs = ", ".join(s.name for s in operation.outputs)
    return f"{operation.name}: {inputs} → {outputs}" + (f" (parameters {', '.join(operation.parameters)})"
                                                         if operation.parameters else "")
