"""Command line: `python -m sparseinfer generate ...` and `python -m sparseinfer info ...`.

The generate flags follow PowerInfer's (llama.cpp's) `main` program where they fit.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from typing import Any, Optional, Sequence, TextIO

from . import _core
from .errors import SparseInferError
from .model import Model

_PROGRAM = "sparseinfer"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROGRAM, description="PowerInfer-style sparse LLM inference for GGUF models.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", help="continue a prompt, streaming the text to stdout",
        description="Continue a prompt with a GGUF model, streaming the text to stdout.")
    generate.set_defaults(run=_generate)
    generate.add_argument("-m", "--model", required=True, help="GGUF model file")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("-p", "--prompt", help="the prompt text")
    prompt.add_argument("-f", "--file", help="read the prompt from this file (UTF-8)")
    generate.add_argument("-n", "--n-predict", type=int, default=128, metavar="N",
                          help="tokens to generate; -1: until end of text or a full context "
                               "(default: %(default)s)")
    generate.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                          help="CPU threads (default: the physical cores)")
    generate.add_argument("-c", "--ctx-size", type=int, default=4096, metavar="N",
                          help="context window in tokens (default: %(default)s)")
    generate.add_argument("--temp", type=float, default=0.8,
                          help="temperature; 0: greedy (default: %(default)s)")
    generate.add_argument("--top-k", type=int, default=40,
                          help="top-k filter; 0: off (default: %(default)s)")
    generate.add_argument("--top-p", type=float, default=0.95,
                          help="top-p (nucleus) filter; 1: off (default: %(default)s)")
    generate.add_argument("--min-p", type=float, default=0.05,
                          help="min-p filter; 0: off (default: %(default)s)")
    generate.add_argument("--repeat-penalty", type=float, default=1.0,
                          help="penalty on the last 64 tokens; 1: off (default: %(default)s)")
    generate.add_argument("-s", "--seed", type=int, default=-1,
                          help="random seed; -1: a random one (default: %(default)s)")
    generate.add_argument("--ignore-eos", action="store_true",
                          help="keep generating past the end-of-text token")
    generate.add_argument("--stats", action="store_true",
                          help="print token counts and speeds to stderr at the end")

    info = commands.add_parser(
        "info", help="describe a GGUF file (without loading its weights) and the system",
        description="Describe a GGUF model file without loading its weights.")
    info.set_defaults(run=_info)
    info.add_argument("model", nargs="?", help="GGUF model file")
    info.add_argument("--system", action="store_true",
                      help="also print what the engine detected on this machine")
    return parser


# ---- generate -------------------------------------------------------------------------------

def _generate(args: argparse.Namespace) -> None:
    if args.file is not None:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    else:
        prompt = args.prompt
    if args.n_predict < -1:
        raise ValueError(f"-n/--n-predict must be -1 or >= 0, got {args.n_predict}")
    if args.seed < -1:
        raise ValueError(f"-s/--seed must be -1 or >= 0, got {args.seed}")
    out = _utf8(sys.stdout)
    with Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads) as model:
        pieces = model.generate(
            prompt,
            max_tokens=None if args.n_predict == -1 else args.n_predict,
            temperature=args.temp,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repeat_penalty=args.repeat_penalty,
            seed=None if args.seed == -1 else args.seed,
            ignore_eos=args.ignore_eos,
            stream=True,
        )
        for piece in pieces:
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        if args.stats:
            _print_stats(model.stats())


def _print_stats(stats: dict[str, Any]) -> None:
    print(f"prompt:    {stats['prompt_tokens']} tokens in {stats['prompt_seconds']:.3f} s "
          f"({stats['prompt_tokens_per_second']:.1f} tokens/s)", file=sys.stderr)
    print(f"generated: {stats['generated_tokens']} tokens in {stats['decode_seconds']:.3f} s "
          f"({stats['decode_tokens_per_second']:.1f} tokens/s)", file=sys.stderr)


def _utf8(stream: TextIO) -> TextIO:
    """Model text is UTF-8 whatever the locale says; never fail on a character mid-stream."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="replace")
    return stream


# ---- info -----------------------------------------------------------------------------------

def _info(args: argparse.Namespace) -> None:
    if args.model is None and not args.system:
        raise ValueError("info needs a MODEL file, --system, or both")
    out = _utf8(sys.stdout)
    if args.model is not None:
        for label, value in _describe_model(args.model, _core.read_gguf_info(args.model)):
            out.write(f"{label + ':':<16}{value}\n")
    if args.system:
        system = _core.system_info()
        if args.model is not None:
            out.write("\n")
        out.write(f"{'isa:':<16}{system['isa']}\n")
        out.write(f"{'available isas:':<16}{', '.join(map(str, system['available_isas']))}\n")
        out.write(f"{'hw threads:':<16}{system['hardware_threads']}\n")


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
        ("n_vocab", str(vocab_size)),
        ("tokenizer", str(metadata.get("tokenizer.ggml.model", "none"))),
        ("chat template", "present" if "tokenizer.chat_template" in metadata else "absent"),
        ("tensors", f"{len(tensors)} ({_human_count(parameters)} parameters)"),
        ("tensor types", ", ".join(f"{name} x{count}" for name, count in sorted(types.items()))),
    ]
    return lines


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
