"""The `vaedeploy` command: a registry of the subcommands, each owned by its tool's command module (whose
``add_parser`` adds its options and names the function that runs it), and the one place that turns errors into exit
codes. A command module imports its library (torch, TensorRT, the web framework) only when its command runs, so
``--help`` and a refused option cost no import of them."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import JobFailed, VaedeployError

# the modules whose add_parser registers the commands, in the order --help lists them
COMMANDS = (
    "vaedeploy.run_commands",  # train, eval, plot
    "vaedeploy.bundle_commands",  # export, build
    "vaedeploy.import_command",  # import diffusers
    "vaedeploy.demo",
    "vaedeploy.web.command",
    "vaedeploy.serve.command",  # serve, triton-repo
    "vaedeploy.bench.command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaedeploy", description="Train, evaluate, export and serve VAEs.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


# packages of the extras, and the extra that brings each: a command that needs one says which to install
_OPTIONAL = {"torch": "train", "safetensors": "train", "sklearn": "train", "mlxtend": "train", "matplotlib": "train",
             "tqdm": "train", "onnx": "train", "onnxscript": "train", "onnx_tool": "bench"}


def _os_error(e: OSError) -> str:
    what = e.strerror or str(e)
    return f"{e.filename}: {what}" if e.filename and str(e.filename) not in what else what


def main(argv: list[str] | None = None) -> int:
    """Run a command; every expected failure is one line on stderr and exit code 2 (1 when the work ran and its own
    check failed: validation against PyTorch, a diverged loss). Anything else is a bug and keeps its traceback;
    ``--debug`` shows the traceback of every error."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, JobFailed):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(e, VaedeployError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):
            print(f"error: {_os_error(e)}", file=sys.stderr)
            return 2
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in _OPTIONAL:
            package = e.name.split(".")[0]
            print(f"error: vaedeploy {args.command} needs the {package!r} package: pip install "
                  f"'vaedeploy[{_OPTIONAL[package]}]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
