"""The runner interface every backend implements, shaped like Polygraphy's ``BaseRunner``.

A runner serves one graph of a bundle. Public methods check state and inputs and time the call; subclasses
implement the ``*_impl`` methods. Its lifecycle: built (cheap), ``activate()`` (loads the session or module), calls,
``deactivate()`` (frees it); ``with runner:`` does both. ``run(*inputs)`` is the runtime's hot path (positional, in
the graph's input order, returning the outputs chosen at construction); ``infer(feed)`` takes and returns dicts by
name, as a user or a benchmark reads them.
"""
from __future__ import annotations

from ...errors import InputError


class Runner:
    """One graph of a bundle on one backend and device.

    Args:
        bundle: the loaded ``Bundle``.
        role: the graph's role in the manifest (``encoder``, ``decoder``, ``prior``, ...).
        precision: ``fp32``, ``fp16`` or ``bf16`` (the graph variant; inputs and outputs stay float32).
        device: ``cpu`` or ``cuda[:N]``.
        outputs: the output names ``run`` returns, in order (default: all of the graph's).
    """

    backend: str  # the name ``vaedeploy.load(backend=...)`` takes

    def __init__(self, bundle, role: str, precision: str, device: str, outputs: list[str] | None = None):
        self.graph = bundle.graph(role, precision)
        self.role, self.precision, self.device = role, precision, device
        self.input_names = [spec["name"] for spec in self.graph["inputs"]]
        all_outputs = [spec["name"] for spec in self.graph["outputs"]]
        self.output_names = list(outputs) if outputs is not None else all_outputs
        if unknown := [o for o in self.output_names if o not in all_outputs]:
            raise InputError(f"{self.graph['file']} has outputs {all_outputs}; asked for {unknown}")
        self.is_active = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.graph['file']}, {self.precision}, {self.device})"

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # ---- metadata and calls ----------------------------------------------------------------------------------

    def get_input_metadata(self) -> dict[str, tuple[str, list]]:
        """name → (dtype, shape) of every input, the batch axis by name (from the bundle, checked against the graph)."""
        return {spec["name"]: (spec["dtype"], spec["shape"]) for spec in self.graph["inputs"]}

    def run(self, *inputs) -> list:
        """The chosen outputs for inputs given in the graph's input order, already checked by the caller."""
        if not self.is_active:
            raise InputError(f"{self!r} is not active; call activate() (or use `with runner:`) first")
        return self.run_impl(inputs)

    def signature(self) -> dict | None:
        """The graph's inputs and outputs (name, shape, dtype) as this runner read them from the graph file, which
        ``vaedeploy.load`` checks against the manifest instead of reading the file again; None where the backend does
        not run the ONNX file itself (then load reads it for the check)."""
        return None

    def infer(self, feed: dict) -> dict:
        """``{output name: array}`` for ``{input name: array}`` (every input, by name)."""
        if set(feed) != set(self.input_names):
            raise InputError(f"{self.graph['file']}: expected inputs {self.input_names}, got {sorted(feed)}")
        return dict(zip(self.output_names, self.run(*(feed[name] for name in self.input_names))))

    # ---- what a backend implements ---------------------------------------------------------------------------

    def activate_impl(self) -> None:
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        raise NotImplementedError

    def run_impl(self, inputs: tuple) -> list:
        raise NotImplementedError
