"""Text generation on one sequence: the prompt's token ids, the sampler, and the loop that
samples, decodes and stops (end of generation, max_tokens, stop strings, a full context,
cancel()). Model and Session's generate() and chat() are built on it."""

from __future__ import annotations

import time
from typing import Iterator, Optional

from . import _arguments as _args
from . import _core
from . import _sequence as _seq
from ._stops import StopStringFilter
from .errors import CancelledError, ContextOverflowError

# How many recent tokens the repetition penalty looks at (llama.cpp's default).
REPEAT_LAST_N = 64


def make_sampler(*, temperature: float, top_k: int, top_p: float, min_p: float,
                 repeat_penalty: float, seed: Optional[int]) -> _core.Sampler:
    """A sampler from generate()'s arguments, each checked (the error names it)."""
    return _core.Sampler(
        temperature=_args.require_real("temperature", temperature),
        top_k=max(0, min(_args.require_int("top_k", top_k, maximum=None), _args.INT32_MAX)),
        top_p=_args.require_real("top_p", top_p),
        min_p=_args.require_real("min_p", min_p),
        repeat_penalty=_args.require_real("repeat_penalty", repeat_penalty),
        repeat_last_n=REPEAT_LAST_N,
        seed=_args.resolve_seed(seed),
    )


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


class PromptEncoder:
    """A model's prompts as token ids, refused early when they cannot fit a context."""

    def __init__(self, tokenizer: _core.Tokenizer, n_vocab: int) -> None:
        self._tokenizer = tokenizer
        self._n_vocab = n_vocab
        self._longest_token: Optional[int] = None

    def encode(self, prompt: str, n_ctx: int) -> list[int]:
        """Token ids of a prompt, special-token texts parsed: BOS first when the file asks
        for it, once, also when the text starts with the BOS text (a chat template's)."""
        tokenizer = self._tokenizer
        bos_id = tokenizer.bos_id
        bos_text = (tokenizer.token_to_bytes(bos_id, render_special=True)
                    .decode("utf-8", errors="replace") if bos_id >= 0 else "")
        add_bos = tokenizer.add_bos and not (bos_text and prompt.startswith(bos_text))
        if len(prompt) >= n_ctx:  # long enough to be refused before it is tokenized
            n_bytes = len(prompt.encode("utf-8", errors="surrogatepass"))
            longest = self._longest_token_bytes()
            at_least = -(-n_bytes // longest)
            if at_least >= n_ctx:
                raise ContextOverflowError(
                    f"the prompt is {n_bytes} bytes, so at least {at_least} tokens (no token of "
                    f"this model is longer than {longest} bytes), and n_ctx is {n_ctx}: shorten "
                    f"the prompt or use a larger n_ctx")
        prompt_ids = tokenizer.encode(prompt, add_bos=add_bos, parse_special=True)
        if not prompt_ids:
            raise ValueError("the prompt is empty and this model adds no BOS token: "
                             "there is nothing to continue")
        if len(prompt_ids) >= n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(prompt_ids)} tokens and n_ctx is {n_ctx}: no room "
                f"left to generate; shorten the prompt or use a larger n_ctx")
        return prompt_ids

    def _longest_token_bytes(self) -> int:
        """The most bytes of text one token stands for (special tokens' texts included): a
        text of B bytes is at least B / this many tokens. Found once, when first needed."""
        if self._longest_token is None:
            token_bytes = self._tokenizer.token_to_bytes
            self._longest_token = max([1] + [len(token_bytes(t, render_special=True))
                                             for t in range(self._n_vocab)])
        return self._longest_token


def pieces(seq: _seq.Sequence, tokenizer: _core.Tokenizer, prompt_ids: list[int], sampler: _core.Sampler,
           max_tokens: Optional[int], stops: list[str], *,
           ignore_eos: bool, end_ids: frozenset[int] = frozenset()) -> Iterator[str]:
    """The text generated after prompt_ids on seq, piece by piece as it comes; the call's
    figures go to its CallStats. end_ids: tokens that end a turn besides the vocabulary's."""
    call_id, stats = seq.start_call(prompt_tokens=len(prompt_ids))
    decoder = _core.StreamDecoder(tokenizer)
    if prompt_ids == [tokenizer.bos_id]:
        # Text right after BOS drops SentencePiece's leading space, as detokenize() does.
        decoder.feed(prompt_ids[0])
    stop_filter = StopStringFilter(stops)

    started = time.perf_counter()
    with seq.exclusive(call_id) as session:
        stats.reused_tokens = seq.reuse_prefix(session, prompt_ids)
        try:
            seq.eval(session, prompt_ids[stats.reused_tokens:])
        except CancelledError:
            seq.check_open(during_call=True)  # closed rather than cancelled: say so
            return
        finally:
            # True figures for a prompt cancelled or interrupted (Ctrl-C) too: the
            # context then holds the batches it finished, and no more.
            stats.prompt_seconds = time.perf_counter() - started
            stats.prompt_tokens = min(stats.prompt_tokens, session.n_past)
    for token in prompt_ids[-REPEAT_LAST_N:]:
        sampler.accept(token)

    while max_tokens is None or stats.generated_tokens < max_tokens:
        if seq.cancel_requested():
            break
        started = time.perf_counter()
        with seq.exclusive(call_id) as session:
            token = session.sample(sampler)
            if not ignore_eos and (tokenizer.is_end_of_generation(token) or token in end_ids):
                break
            sampler.accept(token)
            stats.generated_tokens += 1
            text = stop_filter.feed(decoder.feed(token))
            go_on = ((max_tokens is None or stats.generated_tokens < max_tokens)
                     and not stop_filter.stopped
                     and session.n_past < seq.n_ctx)  # a full context stops cleanly
            if go_on:
                try:
                    seq.eval(session, [token])
                except CancelledError:
                    go_on = False
        stats.decode_seconds += time.perf_counter() - started
        if text:
            yield text
        if not go_on:
            break
    seq.check_open(during_call=True)
    tail = stop_filter.feed(decoder.flush()) + stop_filter.flush()
    if tail:
        yield tail
