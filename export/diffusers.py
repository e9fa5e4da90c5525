"""diffusers' autoencoders as vaedeploy graphs (issue 29, docs/diffusers.md): loading a saved model, the bundle of
each class (its modules are ``vaedeploy/models/diffusers.py``'s, which the torch backend rebuilds too), and the
photographs they are validated on.

- **AutoencoderKL** (SD 1.x/2.x, SDXL, SD3, FLUX: 4 or 16 latent channels, with or without quant convs):
  ``encoder`` x → (mean, logvar), the posterior's parameters with diffusers' clamp of logvar to [-30, 20], so the
  runtime draws z with its own Philox noise as for our kinds; ``decoder`` z → image (post-quant conv, decoder).
- **AutoencoderTiny** (TAESD): deterministic latents, ``encoder`` x → z and ``decoder`` z → image.
- **VQModel** (VQGAN-style): ``encoder`` x → z_e (encoder, quant conv); the codebook is an array and the runtime
  finds each position's nearest code; ``decoder`` z_q → image. There is no learned prior over the codes, so such a
  bundle has no ``sample``.

Images are in the model's range, [-1, 1] for all three; latents are the model's own (unscaled). The latent scaling of
the config (``scaling_factor``, ``shift_factor``) is recorded in the manifest, and the runtime applies it by the
bundle's one rule (docs/bundle.md). The bundle also stores the model's config and weights (``model.safetensors``,
no pickle), so the torch backend runs it by rebuilding diffusers' class.

Validation inputs are photographs, not noise: the two that scikit-learn ships (``load_sample_images``), cropped at
several places and scales and resized to each size, so the graphs are checked on the images they will see.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vaedeploy.errors import ConfigError, FileFormatError, MissingDependency
from vaedeploy.io import read_json
from vaedeploy.models.diffusers import KIND_PREFIX, SUPPORTED, check_supported, diffusers_package, model_entry, modules

IMAGE_RANGE = (-1.0, 1.0)  # what every supported class takes and gives
# the files a hub download fetches: a model folder's, or a pipeline's vae/ subfolder (never a pipeline's other weights)
HUB_FILES = ["config.json", "diffusion_pytorch_model*.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model*.safetensors"]


def model_folder(source: str | Path) -> Path:
    """The folder holding the autoencoder's ``config.json``: ``source`` itself (written by ``save_pretrained``) or
    its ``vae/`` subfolder (a pipeline's); a ``source`` that is no folder here is a hub id, downloaded."""
    path = Path(source)
    if not path.exists():
        path = _download(str(source))
    if not path.is_dir():
        raise ConfigError(f"{source}: expected a folder written by save_pretrained (a model's, or a pipeline's with "
                          "a vae/ subfolder) or a hub id, got a file")
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(f"{source}: expected config.json of a diffusers autoencoder in it or in its vae/ subfolder, "
                      "found neither")


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingDependency("a hub id needs huggingface_hub: pip install 'vaedeploy[diffusers]'") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated repo: the hub client raises many types for one cause
        raise ConfigError(f"{repo}: not a folder here, and the hub could not give it ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None


def class_name(folder: Path) -> str:
    """The diffusers class the folder's ``config.json`` names, if it is one vaedeploy imports."""
    config = read_json(folder / "config.json")
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in SUPPORTED:
        raise ConfigError(f"{folder / 'config.json'}: vaedeploy imports diffusers' {', '.join(SUPPORTED)}; the "
                          f"config names {name!r}")
    return name


def load_vae(source: str | Path) -> nn.Module:
    """The autoencoder saved at ``source`` (see ``model_folder``) as float32 in eval mode."""
    folder = model_folder(source)
    cls = getattr(diffusers_package(), class_name(folder))
    try:
        vae = cls.from_pretrained(folder, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise FileFormatError(f"{folder}: diffusers could not load the {cls.__name__} saved there ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None
    return vae.eval()


def downsample(vae: nn.Module) -> int:
    """How many image pixels one latent position covers, measured on the encoder (the configs say it three ways)."""
    encoder = modules(vae)[0]
    with torch.no_grad():
        out = encoder(torch.zeros(1, vae.config.in_channels, 64, 64))
    height = (out[0] if isinstance(out, tuple) else out).shape[2]
    return 64 // height


def scaling(vae: nn.Module) -> dict | None:
    """diffusers' latent scaling of the config (``scaling_factor``, ``shift_factor``; None when it is the identity)."""
    factor = float(vae.config.get("scaling_factor", 1.0) or 1.0)
    shift = float(vae.config.get("shift_factor", 0.0) or 0.0)
    return None if (factor, shift) == (1.0, 0.0) else {"scaling_factor": factor, "shift_factor": shift}


# ---- validation inputs and figures ---------------------------------------------------------------------------------

def photographs(height: int, width: int, n: int) -> np.ndarray:
    """n photographs in [-1, 1] (N × 3 × height × width float32): scikit-learn's two sample photographs, cropped to
    the size's aspect ratio at a different place and scale for each row, then resized (antialiased bilinear)."""
    sources = _sample_photographs()
    rows = []
    for i in range(n):
        image = sources[i % len(sources)]
        rows.append(_crop_resized(image, height, width, step=i // len(sources)))
    return np.ascontiguousarray(torch.stack(rows).clamp(*IMAGE_RANGE).numpy())


@functools.cache
def _sample_photographs() -> tuple[torch.Tensor, ...]:
    """scikit-learn's two sample photographs (China, a flower; 427 × 640) as 3 × H × W tensors in [-1, 1]."""
    from sklearn.datasets import load_sample_images

    return tuple(torch.tensor(image).permute(2, 0, 1).float() / 127.5 - 1 for image in load_sample_images().images)


def _crop_resized(image: torch.Tensor, height: int, width: int, step: int) -> torch.Tensor:
    """The largest crop of ``image`` with the aspect ratio height:width, shrunk by 15% per ``step`` (down to a
    third) and moved along the diagonal, resized to height × width."""
    _, h, w = image.shape
    scale = max(1 / 3, 0.85 ** step) * min(h / height, w / width)
    ch, cw = max(1, round(height * scale)), max(1, round(width * scale))
    fraction = (step * 0.37) % 1  # where along the free room the crop sits
    top, left = round((h - ch) * fraction), round((w - cw) * (1 - fraction))
    crop = image[:, top:top + ch, left:left + cw]
    return nn.functional.interpolate(crop[None], size=(height, width), mode="bilinear", antialias=True,
                                     align_corners=False)[0]


def psnr(actual: np.ndarray, expected: np.ndarray, value_range: float = IMAGE_RANGE[1] - IMAGE_RANGE[0]) -> float:
    """Peak signal-to-noise ratio in dB of ``actual`` against ``expected`` for images spanning ``value_range``
    (inf when they are equal; NaN when either holds NaN)."""
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10 * math.log10(value_range ** 2 / mse)


# ---- the bundle ----------------------------------------------------------------------------------------------------

DEFAULT_SIZES = (256, 512)
DEFAULT_MAX_BATCH = 4  # full-size VAEs at 512×512: validation runs every batch size up to this at the first size
# An imported graph is a deep network of large convolutions: ONNX Runtime's and PyTorch's float32 sums differ by more
# than our small models' 1e-4 (measured: about 2e-4 on SD-VAE's decoder at 256×256), fp16 by a few 1e-2 in [-1, 1].
TOLERANCES = {"fp32": {"max_abs": 2e-3, "rel_l2": 1e-4}, "fp16": {"max_abs": 0.15, "rel_l2": 2e-2}}
LATENT_TYPES = {"AutoencoderKL": "gaussian", "AutoencoderTiny": "deterministic"}  # VQModel: _vq_spec
IDENTITY = {"kind": "identity", "outputs": ["x"]}  # the decoder returns the image itself


def check_sizes(sizes, factor: int) -> tuple[int, ...]:
    """``sizes`` (image sides to validate, the first the bundle's reference) as a tuple of multiples of ``factor``."""
    sizes = tuple(sizes)
    if len(set(sizes)) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < factor or s % factor
                                  for s in sizes):
        raise ConfigError(f"sizes: expected at least two image sides, positive multiples of the model's downsampling "
                          f"factor {factor} (the bundle takes every size between the smallest and the largest), got "
                          f"{list(sizes)}")
    return sizes


def export_spec(vae: nn.Module, sizes=DEFAULT_SIZES, max_batch: int = DEFAULT_MAX_BATCH):
    """The ``ExportSpec`` of a supported autoencoder: its encoder and decoder over any H, W from the smallest to the
    largest of ``sizes`` (multiples of the downsampling factor), validated on photographs at the first size (every
    batch size up to ``max_batch``), on their encodings and on prior draws (a VQModel's: drawn codes, ``_vq_spec``),
    and at the range's corners and two non-square sizes on photographs and their encodings."""
    from vaedeploy.models.spec import ExportSpec, GraphSpec, SpatialSize

    name = check_supported(vae)
    factor = downsample(vae)
    sizes = check_sizes(sizes, factor)
    encoder, decoder = modules(vae)
    reference = sizes[0]
    size = SpatialSize((min(sizes),) * 2, (max(sizes),) * 2, factor, factor)
    x = photographs(reference, reference, max(2, max_batch))  # export traces 2 rows, whatever the batch limit
    tolerances = {p: dict(t) for p, t in TOLERANCES.items()}
    if name == "VQModel":
        return _vq_spec(vae, encoder, decoder, x, size, tolerances)
    code = _code(encoder, x)
    latent = {"type": LATENT_TYPES[name], "shape": list(code.shape[1:]), "downsample": factor}
    if scale := scaling(vae):
        latent["scaling"] = scale
    outputs = ["mean", "logvar"] if latent["type"] == "gaussian" else ["z"]
    graphs = [
        GraphSpec("encoder", encoder, ["x"], {"photographs": [x]}, outputs, tolerances=tolerances,
                  spatial={"x": "image", **{o: "latent" for o in outputs}},
                  at_size=lambda h, w: [photographs(h, w, 2)]),
        GraphSpec("decoder", decoder, ["z"], {"encodings": [code], "prior": [_prior(code.shape, latent)]},
                  list(IDENTITY["outputs"]), tolerances=tolerances, spatial={"z": "latent", "x": "image"},
                  at_size=lambda h, w: [_code(encoder, photographs(h, w, 2))]),
    ]
    return ExportSpec(latent, IDENTITY, graphs, size=size, checks=(round_trip_check,))


def _vq_spec(vae: nn.Module, encoder: nn.Module, decoder: nn.Module, x: np.ndarray, size, tolerances: dict):
    """A VQModel's spec: ``encoder`` x → z_e and ``decoder`` z_q → image over any size, the codebook as an array
    (the runtime's nearest-code op quantizes, as for every ``vq`` bundle), no prior. The decoder is validated on the
    photographs' quantized encodings and on uniformly drawn codes (what ``decode_codes`` of any codes runs)."""
    from vaedeploy.models.spec import ExportSpec, GraphSpec

    codebook = vae.quantize.embedding.weight.detach().float().numpy().copy()
    z_q = quantize(_code(encoder, x), codebook)[1]
    drawn = np.random.default_rng(0).integers(0, len(codebook), (z_q.shape[0], *z_q.shape[2:]))
    latent = {"type": "vq", "shape": list(z_q.shape[1:]), "downsample": size.downsample, "num_codes": len(codebook),
              "codebook": "codebook"}
    graphs = [
        GraphSpec("encoder", encoder, ["x"], {"photographs": [x]}, ["z_e"], tolerances=tolerances,
                  spatial={"x": "image", "z_e": "latent"}, at_size=lambda h, w: [photographs(h, w, 2)]),
        GraphSpec("decoder", decoder, ["z_q"], {"encodings": [z_q], "codes": [_rows_of(codebook, drawn)]},
                  list(IDENTITY["outputs"]), tolerances=tolerances, spatial={"z_q": "latent", "x": "image"},
                  at_size=lambda h, w: [quantize(_code(encoder, photographs(h, w, 2)), codebook)[1]]),
    ]
    return ExportSpec(latent, IDENTITY, graphs, arrays={"codebook": codebook}, size=size, checks=(round_trip_check,))


def quantize(z_e: np.ndarray, codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes N×h×w, z_q N×D×h×w) of z_e N×D×h×w: each position's nearest codebook row by the kernels' rule, the
    runtime's (squared Euclidean distance; diffusers' ``VectorQuantizer`` takes the argmin of ``cdist``, the same
    code but for exact ties and rounding)."""
    from vaedeploy.kernels import vq_nearest_numpy

    n, d, h, w = z_e.shape
    codes = vq_nearest_numpy(np.ascontiguousarray(z_e.transpose(0, 2, 3, 1).reshape(-1, d)), codebook)[0]
    codes = codes.reshape(n, h, w)
    return codes, _rows_of(codebook, codes)


def _rows_of(codebook: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """z_q N×D×h×w of codes N×h×w."""
    return np.ascontiguousarray(codebook[codes].transpose(0, 3, 1, 2))


# The round trip photograph → encoder graph → decoder graph, against PyTorch float32's, must reach this PSNR (dB,
# images in [-1, 1]) in each precision: fp32 graphs differ from PyTorch by float rounding only (above 80 dB on the
# tiny test models), fp16 ones by half precision's 11 bits through every layer.
# bf16 keeps 8 significant bits, three fewer than fp16.
PSNR_FLOOR = {"fp32": 60.0, "fp16": 35.0, "bf16": 25.0}


def round_trip_check(spec, files: dict, root, max_batch: int) -> dict:
    """The check an imported bundle adds to its validation (``ExportSpec.checks``): photographs at the range's
    corners and two non-square sizes through the encoder graph and the decoder graph of each precision (posterior
    mean or code, no noise; a VQ bundle's nearest codes between them), their PSNR against the PyTorch modules' round
    trip, at least ``PSNR_FLOOR``; a VQ bundle's share of codes that agree with PyTorch's too (``VQ_AGREEMENT``)."""
    from .validate import PSNR_CAP, VQ_AGREEMENT, Bf16Module, cpu_session

    cases = {g.role: g for g in spec.graphs}
    encoder, decoder = cases["encoder"].module, cases["decoder"].module
    latent_name = cases["decoder"].input_names[0]
    codebook = spec.arrays.get("codebook")
    (h0, w0), (h1, w1) = spec.size.low, spec.size.high
    sizes = list(dict.fromkeys([(h0, w0), (h1, w1), (h0, w1), (h1, w0)]))
    results, agreement, failures = {}, {}, []
    for precision in files["encoder"]:
        graphs = [Bf16Module(cases[role].module, cases[role].input_names, cases[role].output_names)
                  if precision == "bf16" else cpu_session(Path(root) / files[role][precision])  # as validation does
                  for role in ("encoder", "decoder")]
        for h, w in sizes:
            x, where = photographs(h, w, 2), f"{precision}@{h}x{w}"
            expected_codes, expected_z = _most_likely(_code(encoder, x), codebook)
            with torch.no_grad():
                expected = decoder(torch.from_numpy(expected_z)).numpy()
            codes, z = _most_likely(graphs[0].run(None, {"x": x})[0], codebook)
            got = graphs[1].run(None, {latent_name: z})[0]
            results[where] = value = min(psnr(got, expected), PSNR_CAP)
            if not value >= PSNR_FLOOR[precision]:  # NaN fails too
                failures.append(f"round trip of photographs through the {precision} graphs at {h}×{w}: PSNR "
                                f"{value:.1f} dB against PyTorch float32, below {PSNR_FLOOR[precision]:g} dB")
            if codebook is not None:
                agreement[where] = rate = float((codes == expected_codes).mean())
                if rate < VQ_AGREEMENT[precision]:
                    failures.append(f"codes of photographs from the {precision} encoder at {h}×{w}: {rate:.4f} "
                                    f"agree with PyTorch float32's, below {VQ_AGREEMENT[precision]}")
    codes = {"code_agreement": agreement} if codebook is not None else {}
    return {"name": "round_trip_psnr", "passed": not failures, "thresholds": PSNR_FLOOR,
            "worst": min(results.values()), "by_precision_and_size": results, **codes, "failures": failures}


def _most_likely(code: np.ndarray, codebook: np.ndarray | None) -> tuple:
    """(codes, the decoder's input) of the encoder's most likely latents: a VQ bundle's nearest codes and their
    rows, else (None, the latents themselves)."""
    return (None, code) if codebook is None else quantize(code, codebook)


def _code(encoder: nn.Module, x: np.ndarray) -> np.ndarray:
    """The encoder's most likely latents of images ``x``: the posterior mean, or the deterministic code."""
    with torch.no_grad():
        out = encoder(torch.from_numpy(x))
    return np.ascontiguousarray((out[0] if isinstance(out, tuple) else out).numpy())


def _prior(shape: tuple, latent: dict) -> np.ndarray:
    """N(0, I) draws taken to the decoder's own space the way ``decode`` takes scaled latents there (z / s + t), so
    the decoder is validated where the runtime's ``decode`` of N(0, I) latents runs it."""
    from vaedeploy.models.spec import normal_draws

    eps = normal_draws(shape)
    scale = latent.get("scaling")
    if scale is None:
        return eps
    return (eps / np.float32(scale["scaling_factor"]) + np.float32(scale["shift_factor"])).astype(np.float32)


def input_spec(vae: nn.Module, reference: int, source: str) -> dict:
    """The manifest's ``input``: 3 × reference × reference float32 images in [-1, 1], and where they came from."""
    return {"shape": [int(vae.config.in_channels), reference, reference], "dtype": "float32",
            "range": list(IMAGE_RANGE), "preprocessing": "diffusers: RGB scaled to [-1, 1]",
            "source": {"diffusers": type(vae).__name__, "from": source}}


def from_diffusers(vae, *, out, precisions=("fp32",), sizes=DEFAULT_SIZES, max_batch: int = DEFAULT_MAX_BATCH,
                   force: bool = False, source: str | None = None):
    """Import a diffusers autoencoder (a model, or a folder or hub id ``load_vae`` reads) into the validated bundle
    ``out`` and return its path: the graphs over any size from the smallest to the largest of ``sizes``, each
    precision validated against PyTorch float32 on photographs (``export_spec``)."""
    from .bundle_writer import write_bundle

    if not isinstance(vae, nn.Module):
        source, vae = str(vae), load_vae(vae)
    spec = export_spec(vae, sizes, max_batch)
    reference = check_sizes(sizes, 1)[0]
    return write_bundle(spec, out=out, kind=KIND_PREFIX + type(vae).__name__,
                        input_spec=input_spec(vae, reference, source or "a module"), model=model_entry(vae),
                        precisions=tuple(precisions), max_batch=max_batch, force=force)
