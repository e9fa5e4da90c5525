"""``vaedeploy web``: its options, and writing (and optionally serving) the latent explorer page of a bundle."""
from __future__ import annotations

from ..argtypes import number


def add_parser(subparsers) -> None:
    """The ``web`` subcommand of the ``vaedeploy`` command."""
    web = subparsers.add_parser("web", help="write a browser page decoding the bundle on onnxruntime-web")
    web.add_argument("bundle")
    web.add_argument("--out", required=True, help="new or empty directory, or a previous output")
    web.add_argument("--data", help="training data for the pad's principal directions: digits, mnist5k or .npy/.npz "
                                    "(default: the data the bundle's manifest names)")
    web.add_argument("--latents", metavar="FILE.npy", help="a spatial bundle's latent (c×h×w or 1×c×h×w floats) "
                                                            "to write beside the page and decode when it opens")
    web.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 with COOP/COEP headers")
    web.add_argument("--port", type=number(int, 1), default=8080)
    web.set_defaults(func=run)


def run(args) -> int:
    from . import serve, write_site

    out = write_site(args.bundle, args.out, data=args.data, latents=args.latents)
    print(f"wrote the latent explorer for {args.bundle} to {out}")
    if args.serve:
        serve(out, port=args.port)
    return 0
