"""vaedeploy against what a user would pick instead, on the same bundles, interleaved in one run on this machine.

    python benchmarks/peers.py BUNDLE [BUNDLE…] [--budget-s 400] [--batch-sizes 1,4,16,64,256,1024] [--repeats 3]
    python benchmarks/peers.py --quick BUNDLE      # a few seconds, what the tests run
    python benchmarks/peers.py --full-size taesd,sd --work DIR --out benchmarks/results/bench_cpu_full.json

The providers, each doing the same work per op (``encode``: the encoder graph and z = mean + exp(logvar/2)·eps with
the provider's own normal noise; ``decode``: the decoder's mean image; ``sample``: N(0, I) latents decoded;
``reconstruct``: the decoder at the encoder's mean):

- ``vaedeploy``: the runtime (``vaedeploy.load(bundle, backend="onnxruntime")``), its Philox noise and checks;
  ``vaedeploy auto``: ``backend="auto"`` as it chooses on this CPU (docs/cpu.md); ``vaedeploy openvino``,
  ``vaedeploy torch``: the runtime on those backends, and ``… bf16`` at ``precision="bf16"`` where the bundle was
  validated for it (export ``--precision bf16``);
- ``ort session.run``: a session with the runtime's options called raw (the runtime's wrapper costs its time over
  this one); ``ort default``: ``InferenceSession(path).run`` with onnxruntime's default options, what a user writes
  first;
- ``pytorch eager``: the modules the graphs were exported from, rebuilt from the bundle's weights, under
  ``inference_mode`` with one torch thread per physical core; ``pytorch bf16 autocast``: the same under
  ``torch.autocast("cpu", bfloat16)``; ``torch.compile``: the same modules compiled (default mode; compiled for
  every batch size before timing starts);
- ``openvino``: the bundle's ONNX graphs compiled by OpenVINO for the CPU with its latency hint and its default
  precision (bf16 on a CPU with AMX, f32 elsewhere), ``openvino f32`` and ``openvino bf16`` with the hint set, when
  ``pip install openvino`` is present (``pip install "vaedeploy[peers]"``).

Beside the times, the document's ``errors`` hold each provider's error against PyTorch eager fp32 on ``decode`` and
``reconstruct`` of the same 16 rows (max-abs and PSNR over the reference's range).

Cases, windows, the stability rule, the floor and the JSON are `vaedeploy bench`'s own (``vaedeploy.bench``); the
result goes to ``benchmarks/results/bench_peers.json`` and ``bench_peers_latency.png``.

``--full-size``: the full-size TAESD and SD-VAE decoders instead of bundles, a few seconds a call, so min–median of
3 interleaved rounds rather than `vaedeploy bench`'s windows (``benchmarks/peers_full.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from benchmarks.common import RESULTS_DIR  # noqa: E402

OPS = ("encode", "decode", "sample", "reconstruct")


def eager_module(rt, role: str):
    """The PyTorch module graph ``role`` was exported from, rebuilt from the bundle's weights as a user would."""
    from vaedeploy.io import load_tensors
    from vaedeploy.models import build_model

    doc = rt.bundle.manifest["model"]
    module = build_model(doc["kind"], doc["config"])
    module.load_state_dict(load_tensors(rt.bundle.path(doc["weights"])))
    for name in rt.bundle.graph(role)["module"].split("."):
        module = getattr(module, name)
    return module.eval()


class Graphs:
    """One provider's encoder and decoder as two functions on numpy arrays: encoder(x) → its outputs,
    decoder(z) → the first output (the mean image's parameter)."""

    def __init__(self, encoder, decoder, normal, to_input=None):
        self.encoder, self.decoder, self.normal = encoder, decoder, normal
        self.to_input = to_input or (lambda a: a)


def _numpy_normal():
    rng = np.random.default_rng(0)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


def onnxruntime_graphs(rt, tuned: bool) -> Graphs:
    import onnxruntime as ort

    from vaedeploy.runtime.backends.onnxruntime import session_options

    def session(role):
        path = str(rt.bundle.graph(role)["path"])
        return ort.InferenceSession(path, session_options() if tuned else None, providers=["CPUExecutionProvider"])

    encoder, decoder = session("encoder"), session("decoder")
    encoder_outputs = [o.name for o in encoder.get_outputs()]
    decoder_output = [decoder.get_outputs()[0].name]
    x_name, z_name = encoder.get_inputs()[0].name, decoder.get_inputs()[0].name
    return Graphs(lambda x: encoder.run(encoder_outputs, {x_name: x}),
                  lambda z: decoder.run(decoder_output, {z_name: z})[0], _numpy_normal())


def torch_graphs(rt, compiled: bool, batches: list[int], autocast: bool = False) -> Graphs:
    import contextlib

    import torch

    from vaedeploy.runtime.backends.onnxruntime import physical_cores

    torch.set_num_threads(physical_cores())
    encoder, decoder = eager_module(rt, "encoder"), eager_module(rt, "decoder")
    if compiled:
        encoder, decoder = torch.compile(encoder), torch.compile(decoder)

    def first(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    def context():
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def run_encoder(x):
        with torch.inference_mode(), context():
            out = encoder(x)
            out = out if isinstance(out, (tuple, list)) else (out,)
            return [o.float() for o in out]

    def run_decoder(z):
        with torch.inference_mode(), context():
            return first(decoder(z)).float()

    graphs = Graphs(run_encoder, run_decoder, lambda shape: torch.randn(shape), torch.from_numpy)
    if compiled:  # compile every shape before timing: torch.compile recompiles per batch size at first
        for batch in batches:
            x = torch.rand((batch, *rt.input_shape))
            run_decoder(first(run_encoder(x)))
    return graphs


def openvino_graphs(rt, hint: str | None = None) -> Graphs | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    from vaedeploy.runtime.backends.onnxruntime import physical_cores

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": physical_cores(),
              **({"INFERENCE_PRECISION_HINT": hint} if hint else {})}
    encoder = core.compile_model(str(rt.bundle.graph("encoder")["path"]), "CPU", config)
    decoder = core.compile_model(str(rt.bundle.graph("decoder")["path"]), "CPU", config)
    encode_request, decode_request = encoder.create_infer_request(), decoder.create_infer_request()

    def run_encoder(x):
        results = encode_request.infer({0: x})
        return [results[output] for output in encoder.outputs]

    def run_decoder(z):
        return decode_request.infer({0: z})[decoder.outputs[0]]

    return Graphs(run_encoder, run_decoder, _numpy_normal())


def peer_call(graphs: Graphs, rt, op: str, batch: int, pool: list):
    """``call(i)`` of ``op`` at ``batch`` rows for a peer: the same work vaedeploy's op does, the peer's way."""
    gaussian, bernoulli = rt.latent_type == "gaussian", rt.likelihood == "bernoulli"
    inputs = [graphs.to_input(a) for a in pool]
    size = len(inputs)

    def image(params):
        return 1 / (1 + np.exp(-np.asarray(params))) if bernoulli else params

    if op == "decode":
        return lambda i: image(graphs.decoder(inputs[i % size]))
    if op == "sample":
        return lambda i: image(graphs.decoder(graphs.normal((batch, *rt.latent_shape))))
    if op == "reconstruct":
        return lambda i: image(graphs.decoder(graphs.encoder(inputs[i % size])[0]))

    def encode(i):
        out = graphs.encoder(inputs[i % size])
        if not gaussian:
            return out[0]
        mean, logvar = out[0], out[1]
        eps = graphs.normal(tuple(mean.shape))
        return mean + (np.exp(0.5 * logvar) if isinstance(mean, np.ndarray) else (0.5 * logvar).exp()) * eps

    return encode


def runtime_call(rt, op: str, batch: int, pool: list):
    size = len(pool)
    if op == "sample":
        return lambda i: rt.sample(batch, seed=i)
    if op == "encode":
        return lambda i: rt.encode(pool[i % size], seed=i)
    if op == "decode":  # the peers' latents in encode's space, which decode takes (a bundle's latent.scaling)
        from vaedeploy.runtime.latents import to_encoded

        scaled = [to_encoded(z, getattr(rt, "scaling", None)) for z in pool]
        return lambda i: rt.decode(scaled[i % size])
    method = getattr(rt, op)
    return lambda i: method(pool[i % size])


def runtimes_of(path: Path) -> dict:
    """vaedeploy's runtimes beside the onnxruntime one: auto, each other installed CPU backend, and bf16 on those
    that run it where the bundle was validated for it."""
    from vaedeploy import load
    from vaedeploy.runtime.backends import installed

    made = {"vaedeploy auto": load(path)}
    bf16 = all("bf16" in variants for variants in made["vaedeploy auto"].bundle.manifest["graphs"].values())
    for backend in ("openvino", "torch"):
        if installed(backend):
            made[f"vaedeploy {backend}"] = load(path, backend=backend)
            if bf16:
                made[f"vaedeploy {backend} bf16"] = load(path, backend=backend, precision="bf16")
    return made


def providers_of(rt, batches: list[int]) -> dict:
    """name → the provider: its graphs, or a vaedeploy runtime (``rt`` itself for ``vaedeploy``), built once
    (torch.compile compiles here)."""
    providers = {"vaedeploy": rt, **runtimes_of(rt.bundle.root),
                 "ort session.run": onnxruntime_graphs(rt, tuned=True),
                 "ort default": onnxruntime_graphs(rt, tuned=False),
                 "pytorch eager": torch_graphs(rt, compiled=False, batches=batches),
                 "pytorch bf16 autocast": torch_graphs(rt, compiled=False, batches=batches, autocast=True),
                 "torch.compile": torch_graphs(rt, compiled=True, batches=batches)}
    for name, hint in (("openvino", None), ("openvino f32", "f32"), ("openvino bf16", "bf16")):
        if (ov := openvino_graphs(rt, hint)) is not None:
            providers[name] = ov
    return providers


def call_of(provider, rt, op: str, batch: int, pool: list):
    """``call(i)`` of ``op`` on a provider: a vaedeploy runtime's own call, or a peer's graphs doing the same work."""
    return peer_call(provider, rt, op, batch, pool) if isinstance(provider, Graphs) else \
        runtime_call(provider, op, batch, pool)


def errors_of(rt, inputs, providers: dict, rows: int = 16) -> dict:
    """provider → op → its max-abs error and PSNR against PyTorch eager fp32 on the same ``rows`` of decode and
    reconstruct (the ops with no noise of their own)."""
    from vaedeploy.export.validate import errors

    found = {}
    for op, pool in (("decode", inputs.latents_of(rows)), ("reconstruct", inputs.images_of(rows))):
        expected = np.asarray(call_of(providers["pytorch eager"], rt, op, rows, pool)(0))
        for name, provider in providers.items():
            got = np.asarray(call_of(provider, rt, op, rows, pool)(0), dtype=np.float32)
            measured = errors(got, expected)
            found.setdefault(name, {})[op] = {k: measured[k] for k in ("max_abs", "psnr_db")}
    return found


def cases(entries: list[tuple], batches: list[int], ops: list[str], rates: dict) -> list:
    """Every provider × bundle × op × batch as `vaedeploy bench` cases, with the floor of the op's graphs."""
    from vaedeploy.bench import floor, local
    from vaedeploy.bench.loop import Case, host_timed

    made = []
    for path, rt, inputs, providers in entries:
        for op in ops:
            if not local.supports(rt, op):
                continue
            for batch in batches:
                op_floor = floor.op_floor(rt, op, batch, rates)
                pool = inputs.latents_of(batch) if op == "decode" else inputs.images_of(batch)
                for name, provider in providers.items():
                    call = call_of(provider, rt, op, batch, pool)
                    key = {"bundle": Path(path).resolve().name, "backend": name, "device": "cpu",
                           "precision": "bf16" if "bf16" in name else "fp32", "op": op, "batch": batch,
                           "copies": None, "cuda_graphs": None, "floor": op_floor}
                    made.append(Case(key, host_timed(call), batch))
    return made


def measure(bundles: list[Path], batches: list[int], ops: list[str], budget_s: float, repeats: int,
            notes: list[str]) -> dict:
    """The peers and vaedeploy on ``bundles``, interleaved, ``repeats`` times; the `vaedeploy bench` document."""
    from vaedeploy import load
    from vaedeploy.bench import floor, local
    from vaedeploy.bench.environment import environment
    from vaedeploy.bench.loop import Settings
    from vaedeploy.bench.loop import measure as measure_cases
    from vaedeploy.bench.output import SCHEMA_VERSION, annotate

    env = environment()
    rates = floor.measure_rates()
    entries, described, errors, chosen = [], [], {}, {}
    try:
        for path in bundles:
            rt = load(path, backend="onnxruntime")
            images, source = local.load_images(rt, None)
            inputs, providers = local.Inputs(rt, images), providers_of(rt, batches)
            entries.append((path, rt, inputs, providers))
            described.append(local.describe(local.Bundle(Path(path), Path(path).resolve().name, None, source), rt))
            errors[Path(path).resolve().name] = errors_of(rt, inputs, providers)
            chosen[Path(path).resolve().name] = providers["vaedeploy auto"].backend_reason
        rows, settings = [], None
        for repeat in range(repeats):
            made = cases(entries, batches, ops, rates)
            settings = Settings.fitted(len(made), budget_s / repeats)
            rows += [{**row, "repeat": repeat} for row in measure_cases(made, settings)]
    finally:
        for _, _, _, providers in entries:
            for provider in providers.values():  # vaedeploy's onnxruntime runtime among them
                if not isinstance(provider, Graphs):
                    provider.close()
    providers = list(entries[0][3])
    if "openvino" not in providers:
        notes = [*notes, "openvino: not installed (pip install openvino), so not measured"]
    env["load_average_at_end"] = environment()["load_average_at_start"]
    return {"benchmark": "vaedeploy bench peers", "schema_version": SCHEMA_VERSION, "environment": env,
            "settings": vars(settings), "rates": rates, "bundles": described, "server": None,
            "providers": providers, "notes": list(notes), "errors": errors, "auto": chosen,
            "rows": annotate(rows)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--batch-sizes", default="1,4,16,64,256,1024")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--budget-s", type=float, default=400.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="batch 1 and 16, decode and encode, a 6 s budget")
    parser.add_argument("--out", type=Path, help=f"default {RESULTS_DIR / 'bench_peers.json'} (--quick: none)")
    parser.add_argument("--full-size", help="taesd, sd or both: the full-size decoders (benchmarks/peers_full.py)")
    parser.add_argument("--work", type=Path, help="--full-size: where the imported bundles are kept and reused")
    parser.add_argument("--compile-limit-s", type=float, default=300.0,
                        help="--full-size: a model whose torch.compile took longer leaves the later ones uncompiled")
    args = parser.parse_args(argv)
    if args.full_size:
        return full_size(args)
    if not args.bundles:
        parser.error("give a bundle, or --full-size")
    from vaedeploy.bench import output

    batches = [1, 16] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    ops = ["encode", "decode"] if args.quick else args.ops.split(",")
    doc = measure(args.bundles, batches, ops, 6.0 if args.quick else args.budget_s, args.repeats, args.note)
    print(output.summary(doc))
    print(output.table(output.by_case(doc["rows"]) if args.repeats > 1 else doc["rows"]))
    out = args.out or (None if args.quick else RESULTS_DIR / "bench_peers.json")  # a quick run keeps the committed one
    for path in output.write(doc, out) if out else []:
        print(f"wrote {path}")
    return 0


def full_size(args) -> int:
    from benchmarks import peers_full
    from vaedeploy.io import write_json

    if args.work is None or args.out is None:
        raise SystemExit("--full-size needs --work (the bundles' folder) and --out (the JSON)")
    doc = peers_full.measure([n.strip() for n in args.full_size.split(",")], args.work, args.compile_limit_s,
                             args.note)
    write_json(args.out, doc)
    for model in doc["models"]:
        for row in model["rows"]:
            print(f"{model['model']} {row['provider']}: {row['min_ms']:.0f}–{row['median_ms']:.0f} ms, "
                  f"PSNR {row['psnr_db']:.0f} dB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
