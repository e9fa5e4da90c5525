"""``vaedeploy serve`` and ``vaedeploy triton-repo``: their options and what they do (``vaedeploy.cli`` registers
them through ``add_parser``). The batching options are Triton's, under the same names with dashes; both commands take
them, so a Triton repository batches as the server does.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..argtypes import COUNT, POSITIVE, POSITIVE_INT, comma_list, tcp_port
from ..errors import ConfigError
from ..runtime.backends import SERVER_SESSION_CONFIG as SESSION_CONFIG  # noqa: F401 - the server's session options
from .batcher import BatchPolicy

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a bundle's name; its models are NAME.operation


def add_batching_arguments(parser) -> None:
    group = parser.add_argument_group("dynamic batching (Triton's dynamic_batching fields)")
    group.add_argument("--max-batch-size", type=POSITIVE_INT, default=64,
                       help="the most rows one execution runs; 1 turns batching off (default 64)")
    group.add_argument("--preferred-batch-size", type=comma_list(POSITIVE_INT), default=(), metavar="N[,N...]",
                       help="batch sizes sent as soon as they are reached")
    group.add_argument("--max-queue-delay-us", type=COUNT, default=0,
                       help="how long the oldest request may wait for a better batch, µs (default 0)")
    group.add_argument("--max-queue-size", type=COUNT, default=1024,
                       help="queued requests beyond which a request gets 503 at once (default 1024; 0: unbounded)")
    group.add_argument("--timeout-us", type=COUNT, default=0,
                       help="queueing time after which a request is rejected, µs (default 0: none)")
    group.add_argument("--no-timeout-override", action="store_true",
                       help="ignore a request's own shorter 'timeout' parameter")
    group.add_argument("--priority-levels", type=COUNT, default=0,
                       help="priority levels a request's 'priority' parameter may name, 1 highest (default 0: one)")
    group.add_argument("--default-priority-level", type=COUNT, default=0,
                       help="the level of a request without 'priority' (default: the lowest)")
    group.add_argument("--instances", type=POSITIVE_INT, default=1,
                       help="model instances (worker threads) per model (default 1)")


def policy_from_args(args) -> BatchPolicy:
    return BatchPolicy(max_batch_size=args.max_batch_size, preferred_batch_size=tuple(args.preferred_batch_size),
                       max_queue_delay_microseconds=args.max_queue_delay_us, max_queue_size=args.max_queue_size,
                       default_timeout_microseconds=args.timeout_us,
                       allow_timeout_override=not args.no_timeout_override, priority_levels=args.priority_levels,
                       default_priority_level=args.default_priority_level, instances=args.instances)


def add_parser(subparsers) -> None:
    """The ``serve`` and ``triton-repo`` subcommands of the ``vaedeploy`` command."""
    serve_parser = subparsers.add_parser("serve", help="serve bundles on the Open Inference Protocol (KServe V2 / "
                                                       "Triton's HTTP) with dynamic batching (docs/serving.md)")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(func=serve)
    triton = subparsers.add_parser("triton-repo", help="write a Triton Inference Server model repository of a bundle")
    add_triton_repo_arguments(triton)
    triton.set_defaults(func=triton_repo)


def add_serve_arguments(parser) -> None:
    from ..runtime.operations import MAX_SAMPLE  # torch-free; imported here so `vaedeploy --help` stays light
    from .protocol import MAX_BODY_BYTES

    parser.add_argument("bundle", nargs="+", help="bundle directories (`vaedeploy export --out`)")
    parser.add_argument("--name", action="append", default=[],
                        help="the name each bundle is served as, in order (default: its directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=tcp_port, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--grpc-port", type=tcp_port, default=None,
                        help="also serve the V2 gRPC service (Triton's GRPCInferenceService) on this port of the same "
                             "host (default: HTTP only; 0: any free port)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--max-body-bytes", type=POSITIVE_INT, default=MAX_BODY_BYTES,
                        help=f"largest request body, bytes; larger ones get 413 (default {MAX_BODY_BYTES >> 20} MiB)")
    parser.add_argument("--max-sample", type=POSITIVE_INT, default=MAX_SAMPLE,
                        help=f"largest n of a sample request; larger ones get 400 (default {MAX_SAMPLE})")
    parser.add_argument("--shutdown-timeout", type=POSITIVE, default=30.0,
                        help="seconds the requests in flight may take to finish after SIGTERM (default 30)")
    parser.add_argument("--keep-alive-timeout", type=POSITIVE, default=5.0,
                        help="seconds an idle connection stays open, before its first request and between requests "
                             "(default 5)")
    parser.add_argument("--header-timeout", type=POSITIVE, default=20.0,
                        help="seconds a client has to send a request's headers once it began (default 20; then 408)")
    add_batching_arguments(parser)


def bundle_names(bundles: list[str], names: list[str]) -> list[str]:
    """The name of each bundle: ``--name`` in order, else its directory's name; each checked."""
    if len(names) > len(bundles):
        raise ConfigError(f"--name: given {len(names)} times for {len(bundles)} bundle(s); expected at most one each")
    chosen = names + [Path(b).resolve().name for b in bundles[len(names):]]
    for name in chosen:
        if not NAME.fullmatch(name):
            raise ConfigError(f"model name {name!r}: expected letters, digits, '-' and '_' (it becomes part of a "
                              "URL); choose one with --name")
    return chosen


def serve(args) -> int:
    from .. import load
    from . import InferenceServer, run  # the serve extra, or one line saying to install it

    policy = policy_from_args(args)
    loaded = []
    try:
        for name, bundle in zip(bundle_names(args.bundle, args.name), args.bundle):
            loaded.append((name, load(bundle, backend=args.backend, device=args.device, precision=args.precision,
                                      session_config=SESSION_CONFIG)))
        server = InferenceServer(loaded, policy, max_body_bytes=args.max_body_bytes, max_sample=args.max_sample)
    except BaseException:
        for _, runtime in loaded:
            runtime.close()
        raise
    run(server, args.host, args.port, args.shutdown_timeout, args.keep_alive_timeout, args.header_timeout,
        args.grpc_port)
    return 0


def add_triton_repo_arguments(parser) -> None:
    parser.add_argument("bundle", help="a bundle directory (`vaedeploy export --out`)")
    parser.add_argument("--out", required=True, help="the model repository to write (absent, empty, or one this "
                                                      "command wrote)")
    parser.add_argument("--name", help="the name the bundle is served as (default: its directory's name)")
    parser.add_argument("--graphs", choices=["onnxruntime", "python"], default="onnxruntime",
                        help="what runs the bundle's graphs: Triton's onnxruntime backend (default; GPU servers) or "
                             "its Python backend through ONNX Runtime (servers without the onnxruntime backend)")
    add_batching_arguments(parser)


def triton_repo(args) -> int:
    from ..deploy.triton_repo import write_repository

    name = bundle_names([args.bundle], [args.name] if args.name else [])[0]
    models = write_repository(args.bundle, args.out, name, policy_from_args(args).model_config(), args.graphs)
    print(f"wrote a Triton model repository for {args.bundle} to {args.out}: {', '.join(models)}")
    return 0
