"""Command line: `python -m sparseinfer generate | chat | perplexity | choose | fetch | profile | info ...`.

The generate flags follow PowerInfer's (llama.cpp's) `main` program where they fit.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Optional, Sequence, TextIO

from . import _core
from ._cuda import cuda_info
from .errors import ContextOverflowError, SparseInferError
from .fetch import SOURCES, fetch_model, is_model_reference
from .model import Model
from .profile import (ProfileError, StaleProfileError, default_profile_path, load_profile,
                      powerinfer_activation_dir, profile_model)
from .prompt import resolve_template
from .quality import KLDivergenceResult, PerplexityResult, evaluate_choices, read_choices

_PROGRAM = "sparseinfer"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as other Unix tools do.
        sys.stderr.close()
        return 1
    except (SparseInferError, OSError, ValueError) as error:
        print(f"{_PROGRAM}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    # One line, as the errors are: a user of the command line has no use for our source lines.
    print(f"{_PROGRAM}: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    from . import __version__  # the package is whole by the time the parser is made

    parser = argparse.ArgumentParser(
        prog=_PROGRAM, description="PowerInfer-style sparse LLM inference for GGUF models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", help="continue a prompt, streaming the text to stdout",
        description="Continue a prompt with a GGUF model, streaming the text to stdout.")
    generate.set_defaults(run=_generate)
    _add_model_arguments(generate)
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="the prompt text")
    prompt.add_argument("-f", "--file", help="read the prompt from this file (UTF-8)")
    _add_sampling_arguments(generate, n_predict=128)
    generate.add_argument("--ignore-eos", action="store_true",
                          help="keep generating past the end-of-text token")
    generate.add_argument("--stats", action="store_true",
                          help="print token counts and speeds to stderr at the end")

    chat = commands.add_parser(
        "chat", help="talk with a chat model (an interactive, streaming conversation)",
        description="Talk with a chat model: each line you type is a message, the reply "
                    "streams back. End a line with \\ to continue the message on the next "
                    "line; Ctrl-C stops a reply, Ctrl-D quits. Reads messages from a pipe too.")
    chat.set_defaults(run=_chat)
    _add_model_arguments(chat)
    chat.add_argument("--chat-template", default="auto", metavar="NAME",
                      help="auto (the model's own), gguf, minicpm, chatml, llama-2, llama-3, "
                           "zephyr, gemma, or Jinja2 source (default: %(default)s)")
    chat.add_argument("--system", default=None, metavar="TEXT",
                      help="a system message that starts the conversation")
    chat.add_argument("-f", "--file", default=None, metavar="FILE",
                      help="read the system message from this file (UTF-8)")
    _add_sampling_arguments(chat, n_predict=-1)
    chat.add_argument("--stats", action="store_true",
                      help="print token counts and speeds to stderr after each reply (the "
                           "prompt line says how many tokens the earlier turns left in the context)")
    chat.add_argument("--keep-history", action="store_true",
                      help="never drop earlier turns: a message that does not fit the context is "
                           "refused (by default the oldest turns go, the system message stays)")

    perplexity = commands.add_parser(
        "perplexity", help="perplexity of a model on a text, or its KL divergence from a base run",
        description="Perplexity of a model on a UTF-8 text as llama.cpp's llama-perplexity computes it: "
                    "windows of -c tokens, each a fresh sequence starting with BOS, the second half of "
                    "each scored. With --kl-base, also the KL divergence of the model's next-token "
                    "distributions from a base run on the same windows.")
    perplexity.set_defaults(run=_perplexity)
    _add_model_arguments(perplexity, n_ctx=512, n_ctx_help="window length in tokens (default: %(default)s)")
    perplexity.add_argument("-f", "--file", required=True, metavar="TEXT", help="the text (a UTF-8 file)")
    perplexity.add_argument("-b", "--batch-size", type=int, default=512, metavar="N",
                            help="tokens per evaluation call; bounds the logits held at once and changes no "
                                 "result (default: %(default)s)")
    perplexity.add_argument("--chunks", type=int, default=None, metavar="N",
                            help="score the first N windows only (default: every whole window)")
    perplexity.add_argument("--kl-base", default=None, metavar="BASE",
                            help="'dense': compare a PowerInfer file's sparse run with the same file computing "
                                 "every neuron (also reports the predictor's recall and precision per layer); "
                                 "or another GGUF file of the same model (e.g. F16 against a K-quant), run "
                                 "with its defaults")
    perplexity.add_argument("--json", action="store_true", help="print the results as one JSON object")

    choose = commands.add_parser(
        "choose", help="multiple-choice accuracy: pick each item's most likely option",
        description="Score each option of multiple-choice items by its log-likelihood after the context "
                    "and report accuracies: acc (highest summed log-likelihood), acc_norm (highest per "
                    "character of the option, lm-eval-harness's acc_norm) and acc_per_token (highest mean "
                    "per token). FILE holds one JSON object per line: "
                    "{\"context\": str, \"options\": [str, ...], \"answer\": index}.")
    choose.set_defaults(run=_choose)
    _add_model_arguments(choose)
    choose.add_argument("-f", "--file", required=True, metavar="FILE", help="the items, JSON lines (UTF-8)")
    choose.add_argument("--json", action="store_true",
                        help="print the results as one JSON object (with each item's pick)")

    fetch = commands.add_parser(
        "fetch", help="download a model file into the local cache and print its path",
        description="Download a model file from Hugging Face (or ModelScope) into the local "
                    "cache, unless it is there already, and print its path.")
    fetch.set_defaults(run=_fetch)
    fetch.add_argument("repo", metavar="REPO",
                       help="repository id (org/name) or a short name such as minicpm-s-1b")
    fetch.add_argument("file", metavar="FILE", nargs="?", default=None,
                       help="file in the repository, or a glob such as '*Q4_0.gguf' "
                            "(default: the repository's one .gguf file)")
    fetch.add_argument("--revision", default=None, help="branch, tag or commit")
    fetch.add_argument("--source", choices=SOURCES, default="huggingface",
                       help="where to download from (default: %(default)s)")
    fetch.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="cache folder (default: the source's own, e.g. $HF_HOME/hub)")

    profile = commands.add_parser(
        "profile", help="count how often each FFN neuron fires over some text (GPU placement)",
        description="Run a PowerInfer (ReLU, magic PWRI) model densely over UTF-8 text files, "
                    "in windows of N tokens, and write how many tokens fired each FFN neuron of "
                    "each layer to MODEL.profile.npz (model.gguf -> model.gguf.profile.npz): "
                    "the hot/cold GPU placement reads it.")
    profile.set_defaults(run=_profile)
    profile.add_argument("model", metavar="MODEL", help="PowerInfer GGUF model file")
    profile.add_argument("--text", action="append", required=True, metavar="FILE",
                         help="a UTF-8 text file to read; repeat for several")
    profile.add_argument("-c", "--ctx-size", type=int, default=512, metavar="N",
                         help="window length in tokens; each window is a fresh sequence "
                              "(default: %(default)s)")
    profile.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                         help="CPU threads (default: the physical cores, at most 16)")
    profile.add_argument("-o", "--output", default=None, metavar="OUT",
                         help="where to write the profile (default: MODEL.profile.npz, the model "
                              "file's whole name and .profile.npz)")

    info = commands.add_parser(
        "info", help="describe a GGUF file (without loading its weights) and the system",
        description="Describe a GGUF model file without loading its weights.")
    info.set_defaults(run=_info)
    info.add_argument("model", nargs="?", help="GGUF model file")
    info.add_argument("--system", action="store_true",
                      help="also print what the engine detected on this machine")
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser, *, n_ctx: Optional[int] = None,
                         n_ctx_help: str = "context window in tokens (default: the length the model was "
                                           "trained for, at most 4096)") -> None:
    parser.add_argument("-m", "--model", required=True,
                        help="GGUF model file, or a repository id (org/name) or short name "
                             "(minicpm-s-1b) to fetch")
    parser.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: the physical cores, at most 16)")
    parser.add_argument("-c", "--ctx-size", type=int, default=n_ctx, metavar="N", help=n_ctx_help)
    parser.add_argument("--sparse", choices=["auto", "on", "off"], default="auto",
                        help="sparse FFN: auto (when the file has predictors), on, or off "
                             "(default: %(default)s)")
    parser.add_argument("--predictor-q8", choices=["auto", "on", "off"], default="auto",
                        help="a sparse model's predictors as 8-bit copies: auto (each layer whose "
                             "decisions agree on 99.5%% of random probes), on or off "
                             "(default: %(default)s)")
    parser.add_argument("--sparse-threshold", type=float, default=None, metavar="X",
                        help="a sparse model's neuron threshold: a neuron is computed when its predictor's "
                             "score is at least X (default: LLAMA_SPARSE_PRED_THRESHOLD when set, else the "
                             "file's)")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto, cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("-ngl", "--n-gpu-layers", type=int, default=-1, metavar="N",
                        help="with a GPU: layers to place there, -1 as many as fit "
                             "(default: %(default)s)")
    parser.add_argument("--vram-budget", default=None, metavar="SIZE",
                        help="with a GPU: memory to use, GiB or a size such as 6GiB or 512MiB "
                             "(default: what is free)")


def _open_model(args: argparse.Namespace) -> Model:
    sparse = {"auto": "auto", "on": True, "off": False}[args.sparse]
    return Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads, sparse=sparse,
                 predictor_q8={"auto": "auto", "on": True, "off": False}[args.predictor_q8],
                 sparse_threshold=args.sparse_threshold, device=args.device,
                 n_gpu_layers=args.n_gpu_layers, vram_budget=args.vram_budget)


def _add_sampling_arguments(parser: argparse.ArgumentParser, *, n_predict: int) -> None:
    parser.add_argument("-n", "--n-predict", type=int, default=n_predict, metavar="N",
                        help="tokens to generate; -1: until end of text or a full context "
                             "(default: %(default)s)")
    parser.add_argument("--temp", type=float, default=0.8,
                        help="temperature; 0: greedy (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=40,
                        help="top-k filter; 0: off (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="top-p (nucleus) filter; 1: off (default: %(default)s)")
    parser.add_argument("--min-p", type=float, default=0.05,
                        help="min-p filter; 0: off (default: %(default)s)")
    parser.add_argument("--repeat-penalty", type=float, default=1.0,
                        help="penalty on the last 64 tokens; 1: off (default: %(default)s)")
    parser.add_argument("-s", "--seed", type=int, default=-1,
                        help="random seed; -1: a random one (default: %(default)s)")


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    """Model.generate / Model.chat keyword arguments from the sampling flags."""
    if args.n_predict < -1:
        raise ValueError(f"-n/--n-predict must be -1 or >= 0, got {args.n_predict}")
    if args.seed < -1:
        raise ValueError(f"-s/--seed must be -1 or >= 0, got {args.seed}")
    return {"max_tokens": None if args.n_predict == -1 else args.n_predict,
            "temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p,
            "min_p": args.min_p, "repeat_penalty": args.repeat_penalty,
            "seed": None if args.seed == -1 else args.seed}


# ---- generate -------------------------------------------------------------------------------

def _read_text_file(path: str) -> str:
    """A UTF-8 text file's contents, or an error naming the file and its first bad byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                         f"{error.start})") from None


def _argument_text(text: str, option: str) -> str:
    """A command-line argument as text, or an error naming the option and its first byte
    that is not UTF-8 (Python keeps such bytes of argv as lone surrogates, U+DC80..U+DCFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ValueError(f"{option} is not UTF-8 text ({what} at character {error.start})") from None
    return text


def _generate(args: argparse.Namespace) -> None:
    if args.file is not None:
        prompt = _read_text_file(args.file)
    else:
        prompt = _argument_text(args.prompt, "-p/--prompt")
    sampling = _sampling(args)
    out = _utf8(sys.stdout)
    with _open_model(args) as model:
        pieces = model.generate(prompt, ignore_eos=args.ignore_eos, stream=True, **sampling)
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        if args.stats:
            _print_stats(model.stats(), model.is_sparse)
            if model.placement is not None:
                _print_placement(model.placement, model.device)


def _print_placement(plan: Any, device: str) -> None:
    n_layer = len(plan.hot) if plan.hot is not None else None
    neurons = ("every FFN neuron of those layers" if plan.hot is None
               else f"{sum(plan.n_hot)} hot FFN neurons (expected to serve {plan.gpu_share:.0%} of "
                    f"those that fire; the rest on the CPU)")
    layers = f"{plan.n_gpu_layers} layers" + (f" of {n_layer}" if n_layer else "")
    print(f"{device}:    {layers}, {neurons}; {plan.planned_bytes / 2**20:.0f} MiB planned of a "
          f"{plan.budget / 2**20:.0f} MiB budget", file=sys.stderr)


def _print_stats(stats: dict[str, Any], sparse: bool) -> None:
    reused = f" ({stats['reused_tokens']} already in the context)" if stats["reused_tokens"] else ""
    print(f"prompt:    {stats['prompt_tokens']} tokens{reused} in {stats['prompt_seconds']:.3f} s "
          f"({stats['prompt_tokens_per_second']:.1f} tokens/s)", file=sys.stderr)
    print(f"generated: {stats['generated_tokens']} tokens in {stats['decode_seconds']:.3f} s "
          f"({stats['decode_tokens_per_second']:.1f} tokens/s)", file=sys.stderr)
    if sparse:
        layers = stats["layers"]
        print(f"sparse:    {stats['active_fraction']:.1%} of FFN neurons computed "
              f"(layers {min(layers):.1%} to {max(layers):.1%})", file=sys.stderr)


def _utf8(stream: TextIO) -> TextIO:
    """Model text is UTF-8 whatever the locale says; never fail on a character mid-stream."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="replace")
    return stream


# ---- chat -----------------------------------------------------------------------------------

def _chat(args: argparse.Namespace) -> None:
    sampling = _sampling(args)
    system = None if args.system is None else _argument_text(args.system, "--system")
    if args.file is not None:
        system = _read_text_file(args.file)
    interactive = sys.stdin.isatty()
    if interactive:
        _use_readline()
    out = _utf8(sys.stdout)
    with _open_model(args) as model:
        template = resolve_template(args.chat_template, model)  # a bad name fails here
        messages = [{"role": "system", "content": system}] if system else []
        if interactive:
            print(f"chatting with {model.path} (template {template.name}): end a line with \\ "
                  f"to go on, Ctrl-C stops a reply, Ctrl-D quits", file=sys.stderr)
        while True:
            text = _read_message(interactive)
            if text is None:
                break
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            if not args.keep_history:
                dropped = _drop_oldest_turns(model, template, messages)
                if dropped:
                    print(f"{_PROGRAM}: the context is full: dropped the {dropped} oldest "
                          f"message{'s' if dropped > 1 else ''}", file=sys.stderr)
            try:
                pieces = model.chat(messages, template=args.chat_template, stream=True,
                                    **sampling)
            except ContextOverflowError as error:
                messages.pop()
                print(f"{_PROGRAM}: {error}; this message was dropped", file=sys.stderr)
                continue
            reply = []
            try:
                for piece in pieces:
                    out.write(piece)
                    out.flush()
                    reply.append(piece)
            except KeyboardInterrupt:  # stops this reply only; what was shown is kept
                if not interactive:
                    raise
            finally:
                pieces.close()
            out.write("\n")
            out.flush()
            messages.append({"role": "assistant", "content": "".join(reply)})
            stats = model.stats()
            if stats["prompt_tokens"] + stats["generated_tokens"] > model.n_ctx:  # sampled past a full one
                print(f"{_PROGRAM}: the reply was cut: the context ({model.n_ctx} tokens) is full"
                      + ("" if args.keep_history else "; the next message drops the oldest turns"),
                      file=sys.stderr)
            if args.stats:
                _print_stats(stats, model.is_sparse)


def _use_readline() -> None:
    """Line editing and history for input(), where Python has readline (not on Windows). It
    also reads in raw mode, so a pasted line is no longer cut at the terminal's 4095 bytes."""
    try:
        import readline  # noqa: F401  (importing it is what makes input() use it)
    except ImportError:
        pass


def _drop_oldest_turns(model: Model, template: Any, messages: list[dict[str, str]]) -> int:
    """Drops the oldest turns (a user message and the replies after it) after the system
    message until the conversation leaves a quarter of the context for the reply, or only
    the newest message is left; returns how many messages went."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    room = model.n_ctx // 4  # kept for the reply
    dropped = 0
    while len(messages) - first > 1:
        text = template.render(messages, add_generation_prompt=True)
        if len(model.tokenize(text, special=True)) + room <= model.n_ctx:
            break
        del messages[first]
        dropped += 1
        while len(messages) - first > 1 and messages[first]["role"] == "assistant":
            del messages[first]  # a conversation goes on with a user's message
            dropped += 1
    return dropped


def _read_message(interactive: bool) -> Optional[str]:
    """One message from stdin: lines that end with a backslash go on on the next line.
    None at the end of input (Ctrl-D); Ctrl-C at the prompt starts the message anew."""
    lines: list[str] = []
    while True:
        try:
            line = input(("... " if lines else "> ") if interactive else "")
        except EOFError:
            if interactive:
                print(file=sys.stderr)
            return "\n".join(lines) if lines else None
        except KeyboardInterrupt:
            if not interactive:
                raise
            print(file=sys.stderr)
            lines = []
            continue
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        return "\n".join(lines)


# ---- perplexity -----------------------------------------------------------------------------

class _Progress:
    """A progress line redrawn in place on a terminal (nothing when stderr is a file or a
    pipe, whose readers want the results only): done/total, elapsed time and what is left."""

    def __init__(self, what: str, stream: TextIO) -> None:
        self.what, self.stream = what, stream
        self.active = stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.active:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / done * (total - done)
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        self.stream.write(f"\r{self.what} [{bar}] {done}/{total}, {elapsed:.0f} s, {left:.0f} s left ")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _perplexity(args: argparse.Namespace) -> None:
    if args.ctx_size < 3:
        raise ValueError(f"-c/--ctx-size must be at least 3 (context, a scored token and the last), "
                         f"got {args.ctx_size}")
    if args.batch_size < 1:
        raise ValueError(f"-b/--batch-size must be at least 1, got {args.batch_size}")
    if args.chunks is not None and args.chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {args.chunks}")
    kl_base = args.kl_base
    if kl_base not in (None, "dense") and not os.path.exists(kl_base) and not is_model_reference(kl_base):
        raise ValueError(f"--kl-base must be 'dense', a GGUF file or a repository to fetch; {kl_base!r} is "
                         f"none of them")
    text = _read_text_file(args.file)
    options = {"n_ctx": args.ctx_size, "n_batch": args.batch_size, "max_windows": args.chunks}
    out = _utf8(sys.stdout)
    with _open_model(args) as model:
        if kl_base is None:
            result = model.perplexity(text, progress=_Progress("windows", sys.stderr), **options)
            _print_perplexity(out, args, model, result)
            return
        if kl_base == "dense":
            kl = model.kl_divergence(text, "dense", progress=_Progress("windows", sys.stderr), **options)
            _print_kl(out, args, model, kl, "dense")
            return
        with Model(kl_base, n_ctx=args.ctx_size, n_threads=args.threads, device=args.device) as base:
            kl = model.kl_divergence(text, base, progress=_Progress("windows", sys.stderr), **options)
            _print_kl(out, args, model, kl, base.path)


def _run_description(model: Model, *, active: bool = True) -> dict[str, Any]:
    """How the model ran: what the sparse options chose, and with `active`, the share of FFN
    neurons its last call computed."""
    described: dict[str, Any] = {"model": model.path, "sparse": model.is_sparse}
    if model.sparse_threshold is not None:
        described["sparse_threshold"] = model.sparse_threshold
        described["predictor_q8_layers"] = sum(model.predictor_q8_layers)
    if model.is_sparse and active:
        described["active_fraction"] = model.stats()["active_fraction"]
    return described


def _perplexity_fields(r: PerplexityResult) -> dict[str, Any]:
    return {"perplexity": r.perplexity, "standard_error": r.standard_error, "mean_nll": r.mean_nll,
            "n_tokens": r.n_tokens, "n_windows": r.n_windows, "n_ctx": r.n_ctx,
            "window_perplexities": list(r.window_perplexities), "seconds": r.seconds,
            "tokens_per_second": r.tokens_per_second}


def _describe_run(model: Model, *, active: bool = True) -> str:
    run = _run_description(model, active=active)
    if not run["sparse"]:
        return "dense"
    return (f"sparse, threshold {run['sparse_threshold']:g}, {run['predictor_q8_layers']} of "
            f"{len(model.predictor_q8_layers)} predictors 8-bit"
            + (f", {run['active_fraction']:.1%} of FFN neurons computed" if active else ""))


def _print_perplexity(out: TextIO, args: argparse.Namespace, model: Model, r: PerplexityResult) -> None:
    if args.json:
        out.write(json.dumps({**_run_description(model), **_perplexity_fields(r)}) + "\n")
        return
    out.write(f"perplexity: {r.perplexity:.4f} +/- {r.standard_error:.5f} ({r.n_windows} windows of {r.n_ctx} "
              f"tokens, {r.n_tokens} tokens scored; {model.path}, {_describe_run(model)})\n")
    out.write(f"speed:      {r.tokens_per_second:.1f} tokens/s ({r.n_windows * (r.n_ctx - 1)} tokens in "
              f"{r.seconds:.2f} s)\n")


_KL_PERCENTILES = (("median", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def _print_kl(out: TextIO, args: argparse.Namespace, model: Model, r: KLDivergenceResult, base: str) -> None:
    """base: "dense" (the model's own file computing every neuron) or the base file's path."""
    audit = r.predictor
    if args.json:
        fields = {**_run_description(model), "base": base, "perplexity": _perplexity_fields(r.perplexity),
                  "base_perplexity": _perplexity_fields(r.base_perplexity),
                  "kl": {"mean": r.mean_kl, "standard_error": r.kl_standard_error, "max": r.max_kl,
                         **{name: r.kl_percentile(q) for name, q in _KL_PERCENTILES}},
                  "top1_agreement": r.top1_agreement}
        if audit is not None:
            fields["predictor"] = {
                "n_tokens": audit.n_tokens,
                "layers": [{"predicted": int(p), "fired": int(f), "both": int(b),
                            "recall": None if math.isnan(rc) else float(rc),
                            "precision": None if math.isnan(pr) else float(pr)}
                           for p, f, b, rc, pr in zip(audit.predicted, audit.fired, audit.both,
                                                      audit.recall, audit.precision)]}
        out.write(json.dumps(fields) + "\n")
        return
    ppl, base_ppl = r.perplexity, r.base_perplexity
    out.write(f"model:  PPL {ppl.perplexity:.4f} +/- {ppl.standard_error:.5f} ({model.path}, "
              f"{_describe_run(model)})\n")
    described = f"{model.path}, every neuron computed" if base == "dense" else base
    out.write(f"base:   PPL {base_ppl.perplexity:.4f} +/- {base_ppl.standard_error:.5f} ({described})\n")
    out.write(f"tokens: {ppl.n_tokens} scored in {ppl.n_windows} windows of {ppl.n_ctx}; model "
              f"{ppl.tokens_per_second:.1f} tokens/s, base {base_ppl.tokens_per_second:.1f} tokens/s\n")
    out.write(f"KL divergence (base || model, nats per token): mean {r.mean_kl:.6f} +/- {r.kl_standard_error:.6f}, "
              + ", ".join(f"{name} {r.kl_percentile(q):.6f}" for name, q in _KL_PERCENTILES)
              + f", max {r.max_kl:.6f}\n")
    top1_error = math.sqrt(r.top1_agreement * (1 - r.top1_agreement) / max(len(r.kl) - 1, 1))
    out.write(f"top-1 agreement: {r.top1_agreement:.3%} +/- {top1_error:.3%}\n")
    if audit is not None:
        out.write(f"predictor, per layer over {audit.n_tokens} tokens of the dense run (recall: of the neurons "
                  f"that fired, the share predicted; precision: of those predicted, the share that fired):\n")
        out.write("layer   recall  precision  fired/token  predicted/token\n")
        for il, (rc, pr, f, p) in enumerate(zip(audit.recall, audit.precision, audit.fired, audit.predicted)):
            out.write(f"{il:5d}  {rc:7.2%}  {pr:9.2%}  {f / audit.n_tokens:11.1f}  {p / audit.n_tokens:15.1f}\n")
        recall, precision = (float(audit.both.sum() / d) if d else math.nan
                             for d in (audit.fired.sum(), audit.predicted.sum()))
        out.write(f"  all  {recall:7.2%}  {precision:9.2%}\n")


# ---- choose ---------------------------------------------------------------------------------

def _choose(args: argparse.Namespace) -> None:
    items = read_choices(args.file)
    out = _utf8(sys.stdout)
    with _open_model(args) as model:
        r = evaluate_choices(model, items, progress=_Progress("items", sys.stderr))
        metrics = (("acc", r.acc, "the option with the highest summed log-likelihood"),
                   ("acc_norm", r.acc_norm, "the highest log-likelihood per character of the option, "
                                            "lm-eval-harness's acc_norm"),
                   ("acc_per_token", r.acc_per_token, "the highest mean log-likelihood per token"))
        if args.json:
            # Each item is a call of its own: the model's stats hold the last one only.
            out.write(json.dumps({**_run_description(model, active=False), "n_items": r.n_items,
                                  **{name: value for name, value, _ in metrics},
                                  **{f"{name}_stderr": r.standard_error(value) for name, value, _ in metrics},
                                  "predictions": list(r.predictions)}) + "\n")
            return
        out.write(f"items: {r.n_items} ({model.path}, {_describe_run(model, active=False)})\n")
        for name, value, meaning in metrics:
            out.write(f"{name + ':':<15}{value:.4f} +/- {r.standard_error(value):.4f}  ({meaning})\n")


# ---- fetch ----------------------------------------------------------------------------------

def _fetch(args: argparse.Namespace) -> None:
    path = fetch_model(args.repo, args.file, revision=args.revision, source=args.source,
                       cache_dir=args.cache_dir)
    print(path)


# ---- profile --------------------------------------------------------------------------------

def _profile(args: argparse.Namespace) -> None:
    if args.ctx_size < 1:
        raise ValueError(f"-c/--ctx-size must be at least 1, got {args.ctx_size}")
    texts = []
    for name in args.text:
        texts.append(_read_text_file(name))
    output = args.output if args.output is not None else default_profile_path(args.model)
    result = profile_model(args.model, texts, n_ctx=args.ctx_size, n_threads=args.threads,
                           output=output)
    rates = [float(c.sum()) / (result.tokens * len(c)) for c in result.counts]
    print(f"{output}: {result.tokens} tokens, {result.n_layer} layers; FFN neurons firing per "
          f"token {min(rates):.1%} to {max(rates):.1%} (mean {sum(rates) / len(rates):.1%})")


def _profile_status(model: str) -> str:
    """The `profile:` line of `info` for a PowerInfer file."""
    own = default_profile_path(model)
    if own.exists():
        try:
            found = load_profile(own, model_path=model)
        except StaleProfileError:
            return f"{own.name} is stale (made for another file): run `{_PROGRAM} profile` again"
        except ProfileError as error:
            return f"{own.name} is unreadable ({error})"
        return f"{own.name} ({found.tokens} tokens)"
    if powerinfer_activation_dir(model).is_dir():
        return "PowerInfer's activation/ folder"
    return f"none (`{_PROGRAM} profile MODEL --text FILE` makes one)"


# ---- info -----------------------------------------------------------------------------------

def _info(args: argparse.Namespace) -> None:
    if args.model is None and not args.system:
        raise ValueError("info needs a MODEL file, --system, or both")
    out = _utf8(sys.stdout)
    if args.model is not None:
        info = _core.read_gguf_info(args.model)
        for label, value in _describe_model(args.model, info):
            out.write(f"{label + ':':<16}{value}\n")
        out.write(f"{'runs:':<16}{_run_status(args.model)}\n")
        if info["powerinfer"]:
            out.write(f"{'profile:':<16}{_profile_status(args.model)}\n")
    if args.system:
        system = _core.system_info()
        if args.model is not None:
            out.write("\n")
        out.write(f"{'isa:':<16}{system['isa']}\n")
        out.write(f"{'available isas:':<16}{', '.join(map(str, system['available_isas']))}\n")
        out.write(f"{'hw threads:':<16}{system['hardware_threads']}\n")
        _write_cuda(out)


def _write_cuda(out: TextIO) -> None:
    """The CUDA part of `info --system`: the plugin, runtime, driver and GPUs, or why not."""
    info = cuda_info()
    fallback = "" if info["available"] else "; the CPU is used"
    out.write(f"{'cuda:':<16}{info['reason']}{fallback}\n")
    for label, key in (("cuda plugin:", "plugin"), ("cuda build:", "build"),
                       ("cuda runtime:", "runtime_version"), ("cudart loaded:", "runtime"),
                       ("cuda driver:", "driver_version")):
        if info[key]:
            out.write(f"{label:<16}{info[key]}\n")
    for device in info["devices"]:
        if "error" in device:
            out.write(f"{'gpu ' + str(device['index']) + ':':<16}{device['error']}\n")
        else:
            out.write(f"{'gpu ' + str(device['index']) + ':':<16}{device['name']} (compute "
                      f"{device['compute_capability']}, {device['total_memory'] / 2**30:.1f} GiB)\n")


def _describe_model(path: str, info: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines for `info`: the header, the shape, the tokenizer, the tensors."""
    metadata = info["metadata"]
    arch = str(metadata.get("general.architecture", "?"))

    def hparam(key: str) -> str:
        return str(metadata.get(f"{arch}.{key}", "?"))

    n_heads, n_heads_kv = hparam("attention.head_count"), hparam("attention.head_count_kv")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab_size = len(tokens) if isinstance(tokens, (list, tuple)) else hparam("vocab_size")
    tensors = info["tensors"]
    types = collections.Counter(type_name for _, type_name, _ in tensors)
    parameters = sum(math.prod(shape) for _, _, shape in tensors)
    lines = [
        ("file", path),
        ("magic", "PWRI (PowerInfer, sparse-capable)" if info["powerinfer"] else "GGUF"),
        ("gguf version", str(info["version"])),
        ("architecture", arch),
    ]
    if "general.name" in metadata:
        lines.append(("name", str(metadata["general.name"])))
    lines += [
        ("n_embd", hparam("embedding_length")),
        ("n_layer", hparam("block_count")),
        ("n_head", n_heads if n_heads_kv in ("?", n_heads) else f"{n_heads} (kv {n_heads_kv})"),
        ("n_ff", hparam("feed_forward_length")),
        ("n_ctx_train", hparam("context_length")),
        ("rope scaling", _rope_scaling(metadata, arch, {name for name, _, _ in tensors})),
        ("n_vocab", str(vocab_size)),
        ("tokenizer", str(metadata.get("tokenizer.ggml.model", "none"))),
        ("chat template", "present" if "tokenizer.chat_template" in metadata else "absent"),
        ("tensors", f"{len(tensors)} ({_human_count(parameters)} parameters)"),
        ("tensor types", ", ".join(f"{name} x{count}" for name, count in sorted(types.items()))),
    ]
    return lines


def _rope_scaling(metadata: dict[str, Any], arch: str, tensor_names: set[str]) -> str:
    """RoPE scaling as the engine reads it (docs/rope-scaling.md): "none", "linear x2", "yarn x4
    from 8192 positions" (a type it refuses by its name), then the attention factor and the
    frequency factors where the file has them."""
    def scaling(key: str, default: Any = None) -> Any:
        return metadata.get(f"{arch}.rope.scaling.{key}", default)

    def number(x: Any) -> str:
        return f"{x:g}" if isinstance(x, (int, float)) else str(x)

    kind = scaling("type", "linear")
    factor = scaling("factor", metadata.get(f"{arch}.rope.scale_linear", 1.0))
    if kind not in ("none", "linear", "yarn"):
        parts = [str(kind)]  # one the engine refuses: the runs: line says so
    elif kind == "none" or factor == 1.0:
        parts = ["none"]
    elif kind == "yarn":
        original = scaling("original_context_length", metadata.get(f"{arch}.context_length", "?"))
        parts = [f"yarn x{number(factor)} from {original} positions"]
    else:
        parts = [f"linear x{number(factor)}"]
    if scaling("attn_factor", 1.0) != 1.0:
        parts.append(f"attn_factor {number(scaling('attn_factor'))}")
    if "rope_freqs.weight" in tensor_names:
        parts.append("frequency factors (rope_freqs.weight)")
    return ", ".join(parts)


def _run_status(path: str) -> str:
    """Whether this version runs the file ("yes"), else what stops it (a tensor's type, the
    architecture, a missing tensor...), found by binding its weights as stored: a mapping of
    the file, no copies."""
    try:
        _core.Model(path, predictor_q8=False, prepare_weights=False)
    except (SparseInferError, ValueError) as error:
        reason = str(error)
        return "no: " + (reason[len(path) + 2:] if reason.startswith(f"{path}: ") else reason)
    return "yes"


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
