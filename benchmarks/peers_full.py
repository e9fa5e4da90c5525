"""The full-size decoders of issue 30 in benchmarks/peers.py's run: TAESD at 512×512 and SD-VAE at 256×256.

    python benchmarks/peers.py --full-size taesd,sd --work /tmp/peers_full --out benchmarks/results/bench_cpu_full.json

The architectures are diffusers' own at full size with random weights, seeded (``benchmarks/diffusers_vae.py``'s
``build``: ``AutoencoderTiny``'s defaults and SD-1.5's ``AutoencoderKL`` config, written in code, no download),
imported with ``from_diffusers`` (max batch 1, the measured size the bundle's reference) into ``--work`` once and
reused from there. One latent (a photograph's encoding) is decoded at batch 1 by every provider, interleaved: each
provider's first call (shapes, compilation) gives its image, compared with PyTorch eager fp32's (max abs, PSNR), then
``ROUNDS`` rounds of one call each, the providers' order rotating; a row keeps the min and median of its rounds.

Providers: vaedeploy ``auto`` (as it chooses here), vaedeploy on each CPU backend, raw ONNX Runtime (the runtime's
session options, and onnxruntime's defaults), PyTorch eager fp32 and bf16 autocast on the module the graph was
exported from, ``torch.compile`` of it, and OpenVINO called directly with ``INFERENCE_PRECISION_HINT`` f32 and bf16.
Where a CPU has no bfloat16 unit, torch's bfloat16 convolutions run a reference path thousands of times slower than
fp32: ``bf16_probe`` measures that rate on one convolution, and a bf16 provider (and the bf16 export, which
validates on the module run in bfloat16) whose one decode would take over ``SLOW_CALL_S`` at it is left out with
that figure as the reason. ``torch.compile`` is left out of a model when compiling an earlier one took over
``--compile-limit-s`` (of every model where it is 0).

Beside each row: the decoder's FLOPs at the size (onnx-tool) over the machine's fp32 matmul rate (the floor of
``vaedeploy bench``) and over its bf16 matmul rate (torch's, measured in the same run).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

SIDES = {"taesd": 512, "sd": 256}  # the image side each decoder is measured at (issue 30's table)
ROUNDS = 3
SLOW_CALL_S = 120.0


def bf16_probe() -> dict:
    """torch's fp32 and bf16 FLOP/s here: a 3×3 64-channel convolution at 64×64 (bf16 autocast, as the peers run
    it) and a 512² matrix product in each (the floor's rates); the best of 3 calls each."""
    import torch

    conv, x = torch.nn.Conv2d(64, 64, 3, padding=1).eval(), torch.randn(1, 64, 64, 64)
    conv_flops, matmul_flops = 2 * 64 * 64 * 9 * 64 * 64, 2 * 512**3
    a = torch.randn(512, 512)

    def best(run) -> float:
        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        rates = {"conv_fp32": conv_flops / best(lambda: conv(x)), "matmul_fp32": matmul_flops / best(lambda: a @ a)}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rates["conv_bf16"] = conv_flops / best(lambda: conv(x))
        b = a.bfloat16()
        rates["matmul_bf16"] = matmul_flops / best(lambda: b @ b)
    return rates


def bundle_of(name: str, work: Path, bf16: bool):
    """(the diffusers model, its bundle): imported into ``work/name`` once (fp32, and bf16 where ``bf16``)."""
    from vaedeploy.export.diffusers import from_diffusers

    from benchmarks.diffusers_vae import build

    vae, side = build(name), SIDES[name]
    out = work / f"{name}{'_bf16' * bf16}"
    if not (out / "manifest.json").exists():
        from_diffusers(vae, out=out, precisions=("fp32", "bf16") if bf16 else ("fp32",), sizes=(side, side // 2),
                       max_batch=1)
    return vae, out


def torch_decoder(vae, autocast: bool = False, compiled: bool = False):
    """The decoder module the bundle's graph was exported from, called on numpy: eager, under bf16 autocast, or
    compiled (torch.compile's default mode)."""
    import torch
    from vaedeploy.export.diffusers import modules

    from vaedeploy.runtime.backends.onnxruntime import physical_cores

    torch.set_num_threads(physical_cores())
    decoder = modules(vae)[1]
    decoder = torch.compile(decoder) if compiled else decoder

    def decode(z):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), context:
            return decoder(torch.from_numpy(z)).float().numpy()

    return decode


def torch_flops(vae, latent_shape) -> float:
    """The decoder module's FLOPs on one latent of ``latent_shape``, by torch's own counter (one fp32 call)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from vaedeploy.export.diffusers import modules

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        modules(vae)[1](torch.zeros((1, *latent_shape)))
    return float(counter.get_total_flops())


def providers_of(vae, bundle: Path, bf16: bool, compile_torch: bool, notes: list[str]) -> tuple[dict, dict]:
    """(name → decode(z) on numpy, name → the vaedeploy runtimes, to close): every provider that can run here (the
    bf16 ones where ``bf16``); a sentence in ``notes`` for each left out otherwise."""
    from benchmarks.peers import onnxruntime_graphs, openvino_graphs
    from vaedeploy import load
    from vaedeploy.errors import VaedeployError
    from vaedeploy.runtime.backends import installed
    from vaedeploy.runtime.latents import from_encoded

    runtimes = {"vaedeploy auto": load(bundle), "vaedeploy": load(bundle, backend="onnxruntime")}
    validated_bf16 = all("bf16" in v for v in runtimes["vaedeploy"].bundle.manifest["graphs"].values())
    if validated_bf16:  # the user's permission to lower the precision where measured faster (docs/cpu.md)
        runtimes["vaedeploy auto, precision auto"] = load(bundle, precision="auto")
    for backend in ("openvino", "torch"):
        for precision in ("fp32", "bf16"):
            label = f"vaedeploy {backend}{' bf16' * (precision == 'bf16')}"
            if not installed(backend) or (precision == "bf16" and not validated_bf16):
                continue
            try:
                runtimes[label] = load(bundle, backend=backend, precision=precision)
            except VaedeployError as e:  # e.g. torch without the model's weights in the bundle
                notes.append(f"{label}: not measured ({e})")
    calls = {name: rt.decode for name, rt in runtimes.items()}  # auto among them, at the precision it chose
    reference = runtimes["vaedeploy"]
    peers = {"ort session.run": onnxruntime_graphs(reference, tuned=True).decoder,
             "ort default": onnxruntime_graphs(reference, tuned=False).decoder, "pytorch eager": torch_decoder(vae)}
    if bf16:
        peers["pytorch bf16 autocast"] = torch_decoder(vae, autocast=True)
    if compile_torch:
        peers["torch.compile"] = torch_decoder(vae, compiled=True)
    for label, hint in (("openvino f32", "f32"), ("openvino bf16", "bf16")):
        if (graphs := openvino_graphs(reference, hint)) is not None:
            peers[label] = graphs.decoder
    # decode takes latents as encode gives them (scaled, as a pipeline holds them); a graph takes them unscaled
    scaling = getattr(reference, "scaling", None)
    for label, graph in peers.items():
        calls[label] = lambda z, graph=graph: graph(from_encoded(z, scaling))
    return calls, runtimes


def time_rounds(calls: dict, z: np.ndarray, rounds: int = ROUNDS) -> tuple[dict, dict, dict]:
    """(name → its first call's image, name → seconds of that first call, name → the seconds of each round's call),
    the providers' order rotating from round to round so a slow moment of the machine hits each in turn."""
    images, first, times = {}, {}, {name: [] for name in calls}
    for name, call in calls.items():
        start = time.perf_counter()
        images[name] = np.asarray(call(z), dtype=np.float32)
        first[name] = time.perf_counter() - start
        print(f"  {name}: first call {first[name]:.1f} s", flush=True)
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            calls[name](z)
            times[name].append(time.perf_counter() - start)
    return images, first, times


def measure_model(name: str, work: Path, rates: dict, probe: dict, compile_torch: bool, notes: list[str]) -> dict:
    """One decoder's rows: every provider's min and median of ``ROUNDS``, its error against eager fp32, the floor."""
    from vaedeploy.export.diffusers import photographs
    from vaedeploy.export.validate import errors

    from vaedeploy import load
    from vaedeploy.bench import floor

    side = SIDES[name]
    vae, bundle = bundle_of(name, work, bf16=False)
    with load(bundle, backend="onnxruntime") as rt:
        try:
            flops = floor.floor(floor.op_cost(rt, "decode", 1, (side, side)), rates)["flops"]
        except ValueError as e:  # onnx-tool's shape inference fails on some graphs (SD-VAE's attention)
            notes.append(f"{name}: FLOPs counted by torch's FlopCounterMode on the module (onnx-tool: {e})")
            flops = torch_flops(vae, rt.latent_shape_at((side, side)))
    bf16_s = flops / probe["conv_bf16"]
    if bf16_s > SLOW_CALL_S:
        notes.append(f"{name}: pytorch bf16 autocast and vaedeploy's bf16 (whose export validates the module run in "
                     f"bfloat16) not measured: torch's bfloat16 convolution runs at {probe['conv_bf16'] / 1e9:.2g} "
                     f"GFLOP/s on this CPU against {probe['conv_fp32'] / 1e9:.3g} in fp32, so one decode of "
                     f"{flops / 1e9:.0f} GFLOP would take about {bf16_s / 60:.0f} min")
    else:
        vae, bundle = bundle_of(name, work, bf16=True)
    model_notes = []
    calls, runtimes = providers_of(vae, bundle, bf16_s <= SLOW_CALL_S, compile_torch, model_notes)
    try:
        z = runtimes["vaedeploy"].encode(photographs(side, side, 1), seed=0)  # a photograph's latent, as a pipeline
        print(f"{name} {side}×{side}: {len(calls)} providers", flush=True)
        images, first, times = time_rounds(calls, z)
        auto = runtimes["vaedeploy auto"].backend_reason
    finally:
        for rt in runtimes.values():
            rt.close()
    rows = []
    for provider, seconds in times.items():
        measured = errors(images[provider], images["pytorch eager"])
        rows.append({"provider": provider, "times_ms": [t * 1e3 for t in seconds],
                     "min_ms": min(seconds) * 1e3, "median_ms": float(np.median(seconds)) * 1e3,
                     "first_call_s": first[provider], "max_abs": measured["max_abs"], "psnr_db": measured["psnr_db"]})
    notes += [f"{name}: {note}" for note in model_notes]
    return {"model": name, "side": side, "gflop": flops / 1e9, "floor_fp32_ms": flops / rates["matmul"][
        "flops_per_s"] * 1e3, "floor_bf16_ms": flops / probe["matmul_bf16"] * 1e3, "auto": auto, "rows": rows}


def measure(names: list[str], work: Path, compile_limit_s: float, notes: list[str]) -> dict:
    """Every decoder of ``names`` in turn (the providers interleaved within each), the document peers.py writes."""
    from vaedeploy.bench import floor
    from vaedeploy.bench.environment import environment

    env = environment()
    rates, probe = floor.measure_rates(), bf16_probe()
    work.mkdir(parents=True, exist_ok=True)
    models, compile_torch = [], compile_limit_s > 0
    if not compile_torch:
        notes.append("torch.compile: not measured (--compile-limit-s 0)")
    for name in names:
        model = measure_model(name, work, rates, probe, compile_torch, notes)
        models.append(model)
        compiled = next((r for r in model["rows"] if r["provider"] == "torch.compile"), None)
        if compiled and compiled["first_call_s"] > compile_limit_s:
            compile_torch = False
            notes.append(f"torch.compile: compiling {name}'s decoder took {compiled['first_call_s']:.0f} s (limit "
                         f"{compile_limit_s:g} s), so the later models are not compiled")
    env["load_average_at_end"] = environment()["load_average_at_start"]
    return {"benchmark": "vaedeploy peers full-size", "environment": env, "rates": rates, "torch_rates": probe,
            "rounds": ROUNDS, "notes": notes, "models": models}
