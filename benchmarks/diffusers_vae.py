"""The autoencoders people deploy, at full size, through vaedeploy and through diffusers eager, in one run on this
machine (issue 29; docs/diffusers.md).

    python benchmarks/diffusers_vae.py [--iters 5] [--models taesd,sd] [--out benchmarks/results/diffusers_vae.json]

The architectures are diffusers' full-size ones with random weights (seeded): TAESD (``AutoencoderTiny``'s
defaults) and Stable Diffusion 1.5's VAE (``AutoencoderKL``, 128/256/512/512 channels, 2 layers per block). Weights
change nothing of what is exported or how fast it runs. Each is imported with ``from_diffusers`` (fp32, sizes 256
and 512, max batch 1: the import validates it as a user's would be), then each case, one image at batch 1, is timed
interleaved between

- ``vaedeploy``: the runtime on ONNX Runtime, ``decode(z)`` (scaled latents, as a pipeline holds them) and
  ``encode(x, seed=0)`` (the posterior's parameters, then the Philox draw, scaled);
- ``diffusers eager``: the same model's ``decode(z / scaling_factor)`` and ``encode(x).latent_dist.sample()`` (or
  TAESD's ``encode(x).latents``) under ``torch.inference_mode``, torch's default threads.

Cases: TAESD encode and decode at 512×512, SD-VAE encode and decode at 256×256 and 512×512. The JSON rows carry the
machine (CPU model, flags, cores, the load average at the start and the end: the machine may be shared) and versions;
``make docs`` renders docs/diffusers.md's tables from them (one JSON per model: ``--models taesd --out
benchmarks/results/diffusers_vae_taesd.json`` and ``--models sd --out benchmarks/results/diffusers_vae_sd.json``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from benchmarks.common import RESULTS_DIR, time_interleaved  # noqa: E402

SD15 = {"down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
        "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}
CASES = {"taesd": [("decode", 512), ("encode", 512)],
         "sd": [("decode", 256), ("decode", 512), ("encode", 256), ("encode", 512)]}
NAMES = {"taesd": "TAESD (AutoencoderTiny)", "sd": "SD-1.5 VAE (AutoencoderKL)"}


def build(name: str):
    import diffusers
    import torch

    torch.manual_seed(0)
    if name == "taesd":
        return diffusers.AutoencoderTiny().eval()
    return diffusers.AutoencoderKL(**SD15).eval()


def providers(vae, rt, op: str):
    """name → a call on one numpy input, for both providers of ``op``."""
    import torch

    scale = float(vae.config.get("scaling_factor", 1.0) or 1.0)

    def eager_decode(z):
        with torch.inference_mode():
            return vae.decode(torch.from_numpy(z) / scale).sample

    def eager_encode(x):
        with torch.inference_mode():
            out = vae.encode(torch.from_numpy(x))
            return out.latents if hasattr(out, "latents") else out.latent_dist.sample() * scale

    if op == "decode":
        return {"vaedeploy": rt.decode, "diffusers eager": eager_decode}
    return {"vaedeploy": lambda x: rt.encode(x, seed=0), "diffusers eager": eager_encode}


def inputs(rt, op: str, size: int) -> list[np.ndarray]:
    """Two real inputs of one image: photographs, or their (scaled) latents for decode."""
    from vaedeploy.export.diffusers import photographs

    x = photographs(size, size, 2)
    return [x[i:i + 1] for i in range(2)] if op == "encode" else [rt.encode(x[i:i + 1], seed=i) for i in range(2)]


def measure(name: str, iters: int, root: Path) -> list[dict]:
    from vaedeploy.export.diffusers import from_diffusers

    import vaedeploy

    vae = build(name)
    bundle = from_diffusers(vae, out=root / name, sizes=(256, 512), max_batch=1)
    rows = []
    with vaedeploy.load(bundle, backend="onnxruntime") as rt:
        for op, size in CASES[name]:
            calls = providers(vae, rt, op)
            pool = inputs(rt, op, size)
            figures = time_interleaved(calls, {p: pool for p in calls}, block=1, warmup=1, iters=iters)
            for provider, figure in figures.items():
                rows.append({"model": NAMES[name], "op": op, "size": size, "batch": 1, "provider": provider,
                             **figure})
                print(f"{NAMES[name]} {op} {size}×{size} {provider}: p50 {figure['p50_ms']:.0f} ms", flush=True)
    return rows


def main(argv=None) -> int:
    import torch

    from vaedeploy.bench.environment import environment
    from vaedeploy.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=5, help="timed calls per provider and case (default 5)")
    parser.add_argument("--models", default="taesd,sd", help="taesd, sd or both (default both)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "diffusers_vae.json")
    args = parser.parse_args(argv)
    machine = {**environment(), "torch_threads": torch.get_num_threads()}  # at the start
    with tempfile.TemporaryDirectory() as root:
        rows = [row for name in args.models.split(",") for row in measure(name.strip(), args.iters, Path(root))]
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]  # the machine is shared: both ends
    write_json(args.out, {"machine": machine, "iters": args.iters, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
