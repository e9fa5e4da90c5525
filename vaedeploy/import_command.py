"""``vaedeploy import diffusers``: a diffusers autoencoder (AutoencoderKL, AutoencoderTiny) saved with
``save_pretrained``, or a hub id, into a validated bundle (docs/diffusers.md). torch and diffusers are imported only
when the command runs."""
from __future__ import annotations

import json

from .argtypes import BATCH_LIMIT, POSITIVE_INT, comma_list

PRECISIONS = comma_list(str, "precisions separated by commas (fp32, fp16)", unique=True)
SIZES = comma_list(POSITIVE_INT, "image sides ≥ 1 separated by commas (e.g. 256,512)", unique=True)


def add_parser(subparsers) -> None:
    """The ``import`` subcommand of the ``vaedeploy`` command."""
    parser = subparsers.add_parser("import", help="import a diffusers autoencoder into a validated bundle "
                                                  "(exit 1 when validation fails)")
    parser.add_argument("library", choices=["diffusers"], help="where the model comes from")
    parser.add_argument("source", help="a folder written by save_pretrained (a model's, or a pipeline's with vae/), "
                                       "or a hub id where this machine is online")
    parser.add_argument("--out", required=True, help="bundle directory to write (absent, empty, or a bundle)")
    parser.add_argument("--precision", type=PRECISIONS, default=["fp32"],
                        help="fp32 always, fp16 adds half-precision graphs validated on their own (e.g. fp32,fp16)")
    parser.add_argument("--sizes", type=SIZES, default=[256, 512],
                        help="image sides the graphs are validated at; the bundle takes every size between the "
                             "smallest and the largest, the first is its reference (default 256,512)")
    parser.add_argument("--max-batch", type=BATCH_LIMIT, default=4,
                        help="largest batch validated (default 4); the runtime splits larger ones")
    parser.add_argument("--force", action="store_true",
                        help="replace a bundle whose manifest cannot be read (never a run or other files)")
    parser.set_defaults(func=run_import)


def run_import(args) -> int:
    from .export.diffusers import from_diffusers

    out = from_diffusers(args.source, out=args.out, precisions=tuple(args.precision), sizes=args.sizes,
                         max_batch=args.max_batch, force=args.force)
    manifest = json.loads((out / "manifest.json").read_text())
    validation, latent = manifest["validation"], manifest["latent"]
    worst = max(w["rel_l2"] for w in validation["worst"].values())
    sizes = ", ".join(f"{h}×{w}" for h, w in validation.get("sizes", []))
    print(f"imported {manifest['kind']} to {out}: {latent['type']} latents of {latent['shape'][0]} channels at 1/"
          f"{latent['downsample']} of the image, graphs {sorted(manifest['graphs'])} in "
          f"{sorted({p for g in manifest['graphs'].values() for p in g})}; validated against PyTorch on photographs "
          f"at {sizes}, batch sizes {validation['batch_sizes']}, worst rel-L2 error {worst:.2g}")
    return 0
