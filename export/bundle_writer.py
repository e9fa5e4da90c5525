"""Export a model into a validated bundle, written atomically: a staging directory, then one swap (vaedeploy.owned).

``export_run`` exports a run directory of ``vaedeploy train``: the model says what it exports
(``Model.export_spec``: its graphs, validation inputs, latent entry and arrays), so this file never reads a kind's
name. ``export_bundle`` exports any pair of encoder and decoder modules (the user's own too) with the same checks:
vector latents, or spatial ones of convolutional modules (a bundle of one image size, or with ``size`` of any size in
a range, exported and validated as the ``klconv`` kind is, through ``models.spec.encoder_decoder_spec``).
``write_bundle`` does the work for both: every graph to ONNX in every precision, validation against PyTorch, the
latent type's own checks, the manifest (checked against the bundle schema), and the swap.
"""
from __future__ import annotations

import functools
import importlib.metadata
import io
import os
import secrets
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaedeploy import __version__
from vaedeploy.bundle import FORMAT_VERSION, MANIFEST, MAX_BATCH, PRECISIONS, ImageSizes, check_manifest, sha256_file
from vaedeploy.errors import ConfigError
from vaedeploy.io import atomic_write_bytes, save_tensors, write_json
from vaedeploy.models.spec import ExportSpec, GraphSpec, SpatialSize, encoder_decoder_spec
from vaedeploy.owned import MARKER, Staging

from .onnx_export import DEFAULT_OPSET, HalfPrecision, check_opset, export_graph
from .target import BUNDLE, check_target, failed_dir
from .validate import LATENT_CHECKS, ValidationError, summary, validate_graphs

# What each latent type's encoder returns: the names of its outputs, in order.
ENCODER_OUTPUTS = {"gaussian": ["mean", "logvar"], "deterministic": ["z"]}
# A decoder of one of our models ends in a likelihood; a user's decoder may return the image itself.
IDENTITY_LIKELIHOOD = {"kind": "identity", "outputs": ["x"]}
DEFAULT_MAX_BATCH = 1024


def _tool_versions() -> dict:
    versions = {"vaedeploy": __version__}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _outputs(module: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = module(*inputs)
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _latent_spec(latent: str | dict, encoder: nn.Module, example: torch.Tensor) -> dict:
    """The manifest's latent entry: the user's, with the ``shape`` of the encoder's outputs on ``example`` ([d], or
    [c, h, w] with the ``downsample`` factor H / h of spatial latents)."""
    spec = {"type": latent} if isinstance(latent, str) else dict(latent)
    if spec.get("type") not in ENCODER_OUTPUTS:
        raise ConfigError(f"latent type must be one of {sorted(ENCODER_OUTPUTS)}, got {spec.get('type')!r}")
    out = _outputs(encoder, example)
    names = ENCODER_OUTPUTS[spec["type"]]
    if len(out) != len(names) or any(o.shape != out[0].shape for o in out) or out[0].dim() not in (2, 4):
        raise ConfigError(f"a {spec['type']} encoder must return {len(names)} tensor(s) ({names}) shaped N×latent_dim, "
                          f"or N×c×h×w for spatial latents, got shapes {[list(o.shape) for o in out]}")
    spec["shape"] = [int(d) for d in out[0].shape[1:]]
    if out[0].dim() == 4:
        spec["downsample"] = _downsample(example, out[0])
    return spec


def _downsample(example: torch.Tensor, z: torch.Tensor) -> int:
    """H / h of spatial latents z of images ``example``: one integer factor for both axes."""
    (height, width), (h, w) = example.shape[-2:], z.shape[-2:]
    if example.dim() != 4 or height % h or width % w or height // h != width // w:
        raise ConfigError(f"spatial latents must be the images' H×W over one integer factor, got latents "
                          f"{'×'.join(map(str, z.shape[1:]))} for images {'×'.join(map(str, example.shape[1:]))}")
    return height // h


def _spatial_size(size: dict | None, latent: dict, example: torch.Tensor) -> SpatialSize | None:
    """``export_bundle``'s ``size`` as a ``SpatialSize``, checked before anything is exported: spatial latents, H and
    W from min to max multiples of ``multiple``, that a multiple of the latent's downsampling factor, the example's
    size among them."""
    if size is None:
        return None
    if "downsample" not in latent:
        raise ConfigError(f"size: a range of image sizes needs spatial latents (an encoder returning N×c×h×w), got "
                          f"latents of shape {latent['shape']}")
    f, reference = latent["downsample"], tuple(int(v) for v in example.shape[-2:])
    try:
        low, high = (tuple(int(v) for v in size[key]) for key in ("min", "max"))
        multiple = int(size["multiple"])
        sizes = ImageSizes(low, high, multiple, reference)
        fits = len(low) == len(high) == 2 and multiple > 0 and multiple % f == 0 and not any(
            sizes.refusal(pair) for pair in (low, high, reference))
    except (KeyError, TypeError, ValueError):
        fits = False
    if not fits:
        raise ConfigError(f"size: expected {{'min': [H, W], 'max': [H, W], 'multiple': m}} with m a multiple of the "
                          f"latent's downsampling factor {f}, min and max multiples of m and the example's "
                          f"{reference[0]}×{reference[1]} between them, got {size!r}")
    return SpatialSize(low, high, multiple, f)


def _check_decoder(decoder: nn.Module, z: torch.Tensor, likelihood: dict, image_shape: list[int]) -> None:
    """The decoder gives one N × image tensor per likelihood parameter, so ``decode`` returns images."""
    out = _outputs(decoder, z)
    expected = [len(z), *image_shape]
    if len(out) != len(likelihood["outputs"]) or any(list(o.shape) != expected for o in out):
        raise ConfigError(f"the decoder must return {len(likelihood['outputs'])} tensor(s) "
                          f"({likelihood['outputs']}) shaped like its images, N×{'×'.join(map(str, image_shape))}; got "
                          f"shapes {['×'.join(map(str, o.shape)) for o in out]} for N={len(z)}")


def _check_options(precisions: tuple[str, ...], max_batch: int, exporter: str, opset: int) -> None:
    if unknown := set(precisions) - set(PRECISIONS):
        raise ConfigError(f"precision must be among {PRECISIONS}, got {sorted(unknown)}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_BATCH:
        raise ConfigError(f"max_batch must be an integer from 1 to {MAX_BATCH} (bundle.MAX_BATCH), got {max_batch!r}")
    check_opset(exporter, opset)


def export_bundle(
    encoder: nn.Module,
    decoder: nn.Module,
    *,
    latent: str | dict,
    example: torch.Tensor,
    out: str | os.PathLike,
    likelihood: dict | None = None,
    kind: str = "custom",
    input_spec: dict | None = None,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    precisions: tuple[str, ...] = ("fp32",),
    max_batch: int = DEFAULT_MAX_BATCH,
    extra_graphs: tuple[GraphSpec, ...] = (),
    extra_arrays: dict[str, np.ndarray] | None = None,
    size: dict | None = None,
    force: bool = False,
) -> Path:
    """Export ``encoder`` and ``decoder`` to the bundle directory ``out``, validate it and return ``out``.

    Args:
        encoder: x (N × input shape) → ``(mean, logvar)`` for ``latent="gaussian"``, z for ``"deterministic"``: each
            N × d, or N × c × h × w for spatial latents of N × C × H × W images (h = H / f, w = W / f for one
            integer factor f, the manifest's ``latent.downsample``).
        decoder: z (N × latent shape) → likelihood parameters (a tensor or a tuple), each shaped like the images.
        latent: ``"gaussian"``, ``"deterministic"`` or a dict with ``type`` and any extra facts for the manifest
            (such as ``scaling``: ``{"scaling_factor", "shift_factor"}``, docs/bundle.md).
        example: real inputs, at least 2 rows: traced, and validated on (cycled up to ``max_batch`` rows); their
            size is the bundle's reference size.
        likelihood: ``{"kind": "gaussian" | "bernoulli" | "identity", "outputs": [names]}``; default identity.
        kind: the model kind written in the manifest (``custom`` for a user's modules).
        input_spec: shape, dtype, value range and preprocessing of x; default the example's shape, float32.
        exporter, opset: ``dynamo`` (default) or ``legacy``; ONNX opset, default 18.
        precisions: ``fp32`` always, plus ``fp16`` (half-precision graphs) and ``bf16`` (the fp32 graph computed in
            bfloat16 by the backend), each validated on its own.
        max_batch: the largest batch a graph is validated at; the runtime splits larger batches.
        extra_graphs: more graphs (``GraphSpec``), exported, validated and listed like the others.
        extra_arrays: name → array written as ``name.npy`` (no pickle) and checksummed.
        size: for spatial latents of fully convolutional modules, the image sizes the graphs take, as the
            manifest's ``input.size``: ``{"min": [H, W], "max": [H, W], "multiple": m}`` (m a multiple of f, the
            example's size in the range). The graphs are exported with dynamic H and W and validated at the corners
            and extremes of the range (``bundle.ImageSizes.validation_sizes``) on the example tiled to each size.
            Default None: the example's size only.
        force: replace a bundle of an older version (no marker) whose manifest cannot be read, when every file in
            it is one vaedeploy can tell it wrote (``target.check_target``); a run directory, a file or a folder of
            other files is never replaced.

    Raises ``ValidationError`` (after writing ``<out>.failed/validation.json``) when a graph disagrees with PyTorch,
    ``BundleError`` when ``out`` holds something export may not replace.
    """
    if not isinstance(example, torch.Tensor) or example.dim() < 2 or example.shape[0] < 2:
        raise ConfigError(f"example must be a tensor of at least 2 real inputs (N×...), got "
                          f"{getattr(example, 'shape', type(example).__name__)}")
    _check_options(precisions, max_batch, exporter, opset)
    check_target(Path(out), force=force)
    encoder, decoder = encoder.eval().float(), decoder.eval().float()
    example = example.float()
    latent = _latent_spec(latent, encoder, example)
    spatial_size = _spatial_size(size, latent, example)
    likelihood = likelihood or IDENTITY_LIKELIHOOD
    input_spec = input_spec or {"shape": list(example.shape[1:]), "dtype": "float32"}
    _check_decoder(decoder, _outputs(encoder, example[:2])[0], likelihood, input_spec["shape"])
    spec = encoder_decoder_spec(encoder, decoder, latent, likelihood, example.numpy(), max_batch, extra_graphs,
                                spatial_size)
    spec.arrays.update(extra_arrays or {})
    return write_bundle(spec, out=out, kind=kind, input_spec=input_spec, exporter=exporter, opset=opset,
                        precisions=precisions, max_batch=max_batch, force=force)


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    precisions: tuple[str, ...] = ("fp32",),
    max_batch: int = DEFAULT_MAX_BATCH,
    force: bool = False,
) -> Path:
    """Export the best weights of a ``vaedeploy train`` run into a validated bundle at ``out``."""
    from vaedeploy.data import load_from_spec
    from vaedeploy.runs import load_run

    _check_options(tuple(precisions), max_batch, exporter, opset)
    check_target(Path(out), force=force)  # before the work: a refused target should not cost an export
    model, config = load_run(run_dir)
    data = load_from_spec(config["data"])
    with torch.no_grad():
        spec = model.eval().export_spec(data.evaluation_inputs("test"), max_batch)
    weights = {"kind": config["kind"], "config": model.config_dict(), "state_dict": model.state_dict()}
    return write_bundle(spec, out=out, kind=config["kind"], input_spec=data.input_spec(), model=weights,
                        exporter=exporter, opset=opset, precisions=precisions, max_batch=max_batch, force=force)


def write_bundle(
    spec: ExportSpec,
    *,
    out: str | os.PathLike,
    kind: str,
    input_spec: dict,
    model: dict | None = None,
    exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    precisions: tuple[str, ...] = ("fp32",),
    max_batch: int = DEFAULT_MAX_BATCH,
    force: bool = False,
) -> Path:
    """Export every graph of ``spec``, validate them, and write the bundle ``out`` atomically; return ``out``.

    ``model`` (``{"kind", "config", "state_dict"}`` of a vaedeploy model) lets the torch backend rebuild it. The
    latent type's own checks (``validate.LATENT_CHECKS``: the VQ index agreement) and the spec's (``spec.checks``)
    join the validation report. The
    manifest is checked against the bundle schema (``vaedeploy.bundle.check_manifest``) before the bundle takes the
    place of whatever was at ``out``.
    """
    out = Path(out)
    precisions = tuple(dict.fromkeys(("fp32", *precisions)))
    _check_options(precisions, max_batch, exporter, opset)
    if spec.size is not None:
        input_spec = {**input_spec, "size": spec.size.manifest()}
    facts = {"format_version": FORMAT_VERSION, "kind": kind, "input": input_spec, "latent": spec.latent,
             "likelihood": spec.likelihood, "vaedeploy_version": __version__}
    with Staging(out, BUNDLE, check=functools.partial(check_target, force=force)) as staging:
        graphs, files = _export_graphs(spec, staging, facts, exporter, opset, precisions)
        tmp = staging.root
        sizes = ImageSizes.of(input_spec)
        report = validate_graphs(spec.graphs, files, tmp, max_batch,
                                 sizes.validation_sizes() if sizes is not None else ())
        latent_checks = [LATENT_CHECKS[spec.latent["type"]]] if spec.latent["type"] in LATENT_CHECKS else []
        for check in [*latent_checks, *spec.checks]:
            result = check(spec, files, tmp, max_batch)
            report["extra"][result["name"]] = result
            report["failures"] += result["failures"]
            report["passed"] = report["passed"] and result["passed"]
        write_json(tmp / "validation.json", report)
        if not report["passed"]:
            raise _failed(staging, out, report)
        for name, array in spec.arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
            atomic_write_bytes(staging.path(f"{name}.npy"), buffer.getvalue())
        model_doc = None
        if model is not None:
            save_tensors(tmp / "model.safetensors", model["state_dict"], {"format": str(FORMAT_VERSION)})
            model_doc = {"kind": model["kind"], "config": model["config"], "weights": "model.safetensors"}
        manifest = {
            **facts,
            "max_batch": max_batch,
            "graphs": graphs,
            "arrays": {name: f"{name}.npy" for name in spec.arrays},
            "model": model_doc,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MARKER},
            "tools": _tool_versions(),
            "validation": {**summary(report), "file": "validation.json"},
        }
        check_manifest(manifest, tmp / MANIFEST)
        write_json(tmp / MANIFEST, manifest)
        staging.commit()  # checks the target again: it may have changed while the graphs were exported
    return out


def _export_graphs(spec: ExportSpec, staging: Staging, facts: dict, exporter: str, opset: int,
                   precisions: tuple[str, ...]) -> tuple[dict, dict]:
    """Every graph in every precision into ``staging``: (manifest entries role → precision → entry, files
    likewise)."""
    graphs: dict[str, dict] = {}
    files: dict[str, dict[str, str]] = {}
    for graph in spec.graphs:
        first_set = next(iter(graph.input_sets.values()))
        example_inputs = tuple(torch.from_numpy(a[:2].copy()) for a in first_set)
        for precision in precisions:
            if precision == "bf16":  # the fp32 graph, lowered to bf16 by the backend that runs it (OpenVINO, torch)
                graphs[graph.role][precision] = dict(graphs[graph.role]["fp32"])
                files[graph.role][precision] = files[graph.role]["fp32"]
                continue
            file = f"{graph.role}.onnx" if precision == "fp32" else f"{graph.role}.{precision}.onnx"
            module = graph.module if precision == "fp32" else HalfPrecision(graph.module)
            entry = export_graph(
                module, example_inputs, graph.input_names, graph.output_names, staging.path(file), exporter=exporter,
                opset=opset, metadata={**facts, "role": graph.role, "precision": precision, "exporter": exporter},
                spatial=graph.spatial, size=spec.size,
            )
            entry["module"] = graph.module_path or graph.role  # what the torch backend runs for this graph
            graphs.setdefault(graph.role, {})[precision] = entry
            files.setdefault(graph.role, {})[precision] = file
    return graphs, files


def _failed(staging: Staging, out: Path, report: dict) -> ValidationError:
    """Keep the graphs that failed validation at ``OUT.failed`` (when nothing else is there) and say where."""
    failed = failed_dir(out)
    if failed is None:  # something not ours is at OUT.failed: keep this report under a name of its own
        failed = out.with_name(f"{out.name}.failed-{secrets.token_hex(4)}")
    staging.commit(to=failed)
    return ValidationError(
        f"validation failed, bundle not written; report in {failed / 'validation.json'}:\n  "
        + "\n  ".join(report["failures"][:10]), report)
