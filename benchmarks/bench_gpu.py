#!/usr/bin/env python3
"""Decode speed with the GPU: full offload, hybrid (hot neurons on the GPU) at two VRAM
budgets, and the CPU alone, on synthetic models of two shapes, measured in one run.

Models (built once and cached, like benchmarks/bench_sparse.py, whose builder this uses):
  minicpm-s-1b   MiniCPM-S-1B's shape (52 layers, 1536 wide, 3840 FFN, 88% sparse)
  relu-llama-7b  a 7B ReLU-llama shape (32 layers, 4096 wide, 11008 FFN; ProSparse-like)
Engines, each a sparseinfer.Model decoding greedily with the same prompt:
  cpu sparse          device="cpu", sparse=True
  cpu dense           device="cpu", sparse=False
  cuda dense          device="cuda", sparse=False (every layer on the GPU)
  cuda sparse         device="cuda", sparse=True, what the GPU has free (every neuron on
                      the GPU when it fits: the predictor picks, nothing runs on the CPU)
  cuda hybrid <B>     device="cuda", sparse=True, vram_budget=B, for --budgets: the
                      hottest neurons on the GPU, the cold ones on the CPU
Each row also shows the placement: GPU layers, the share of firing neurons the GPU serves
(expected, from the profile or equal shares) and the bytes planned. A configuration this
build or machine cannot run is reported with the reason (no GPU, no CUDA plugin, a budget
too small) instead of a number. With SPARSEINFER_CUDA_PLUGIN naming the CPU emulator's
plugin (tests/support/cuda_build.py) the script runs end to end anywhere; its GPU figures
are then meaningless.

  python benchmarks/bench_gpu.py --shape minicpm-s-1b --budgets 0.5GiB 1GiB --save
  python benchmarks/bench_gpu.py --small                       # a smoke test of the script
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_sparse  # noqa: E402  (the synthetic model builder)
import benchutil  # noqa: E402  (quiet checks)

SHAPES = {
    "minicpm-s-1b": bench_sparse.FULL_SHAPE,
    "relu-llama-7b": dict(n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=32,
                          n_ff=11008, n_ctx=4096, rope_base=10000.0, rms_eps=1e-5),
}


def time_decode(path: Path, tokens: int, threads: int, **model_args) -> dict:
    """Greedy decoding of `tokens` tokens after a short prompt: tokens/s from Model.stats()."""
    import sparseinfer as si

    try:
        with si.Model(str(path), n_ctx=512, n_threads=threads, **model_args) as model:
            model.generate("Once upon a time", max_tokens=4, temperature=0, ignore_eos=True)  # warm up
            model.generate("Once upon a time", max_tokens=tokens, temperature=0, ignore_eos=True)
            stats = model.stats()
            plan = model.placement
    except (si.SparseInferError, MemoryError, ValueError) as error:
        return dict(error=f"{type(error).__name__}: {error}")
    placement = None if plan is None else dict(
        n_gpu_layers=plan.n_gpu_layers, gpu_share=plan.gpu_share, planned_bytes=plan.planned_bytes,
        budget=plan.budget, n_hot=plan.n_hot)
    return dict(tokens=stats["generated_tokens"], tokens_per_second=stats["decode_tokens_per_second"],
                active_fraction=stats["active_fraction"], placement=placement)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="minicpm-s-1b")
    ap.add_argument("--type", default="Q4_0", choices=["F16", "Q4_0", "Q8_0"])
    ap.add_argument("--budgets", nargs="+", default=["0.5GiB", "1GiB"], metavar="SIZE",
                    help="VRAM budgets for the hybrid runs (default: 0.5GiB 1GiB)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-n", "--tokens", type=int, default=64)
    ap.add_argument("--small", action="store_true", help="a tiny model: a quick smoke test of this script")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparseinfer-bench")
    ap.add_argument("--save", action="store_true", help="write JSON results to benchmarks/results/")
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even when the machine is not quiet (the results are marked unreliable)")
    ap.add_argument("--busy-limit", type=float, default=0.10,
                    help="share of all CPUs' time in use that still counts as quiet (default 0.10)")
    args = ap.parse_args(argv)

    import sparseinfer as si

    shape = dict(bench_sparse.SMALL_SHAPE if args.small else SHAPES[args.shape])
    rank = 32 if args.small else 256
    pwri, _, build = bench_sparse.build_models(shape, args.type, "F16", rank, 0.12, 0, args.cache_dir)

    runs = {
        "cpu sparse": dict(device="cpu", sparse=True),
        "cpu dense": dict(device="cpu", sparse=False),
        "cuda dense": dict(device="cuda", sparse=False),
        "cuda sparse": dict(device="cuda", sparse=True),
    }
    for budget in args.budgets:
        runs[f"cuda hybrid {budget}"] = dict(device="cuda", sparse=True, vram_budget=budget)
    # After the model is built (its workers use every core), before each engine: the CPU and
    # hybrid rows need idle cores, and the GPU rows a host thread that is not kept waiting.
    quiet = benchutil.Quiet(busy_limit=args.busy_limit, allow_busy=args.allow_busy)
    results = {}
    for name, kw in runs.items():
        quiet.check(f"before {name}")
        results[name] = time_decode(pwri, args.tokens, args.threads, **kw)
    checks = quiet.summary()

    cuda = si.cuda_info()
    print(f"\nmodel: {'small' if args.small else args.shape} ({args.type}), threads {args.threads}, "
          f"{args.tokens} tokens; GPU: {cuda.get('reason', '')}\n")
    base = results["cpu dense"].get("tokens_per_second")
    print("| engine | decode tok/s | vs cpu dense | active fraction | GPU layers | GPU share | planned |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | unavailable: {r['error'][:100]} | | | | | |")
            continue
        p = r["placement"]
        where = ("| | |" if p is None else
                 f"| {p['n_gpu_layers']} | {p['gpu_share']:.2f} | {p['planned_bytes'] / 2**20:.0f} MiB |")
        ratio = f"{r['tokens_per_second'] / base:.2f}x" if base else ""
        print(f"| {name} | {r['tokens_per_second']:.2f} | {ratio} | {r['active_fraction']:.3f} {where}")
    print(f"\nquiet machine: {'yes' if checks['all_quiet'] else 'NO: these numbers are not reliable'} "
          f"(CPU use under {args.busy_limit:.0%} before each engine; load average before the first "
          f"{checks['checks'][0]['load_average']:.2f})")

    if args.save:
        when = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = HERE / "results" / f"gpu-{'small' if args.small else args.shape}-{args.type}-{when}.json"
        out.write_text(json.dumps(dict(
            benchmark="bench_gpu", when=when, machine=platform.machine(), cpu_count=os.cpu_count(),
            cuda=cuda, shape=shape, weight_type=args.type, threads=args.threads, tokens=args.tokens,
            build=build, results=results, quiet_check=checks, load_before=checks["checks"][0]["load_average"],
        ), indent=2, default=str))
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
