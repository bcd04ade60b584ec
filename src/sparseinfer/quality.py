"""Measuring what a model (a sparse run, a quantisation, an 8-bit predictor, a threshold) costs
in quality: perplexity, KL divergence against a base run, and the log-likelihood of
continuations for multiple-choice tasks.

Model.perplexity, Model.kl_divergence and Model.score (Session's too) compute them; this module
holds their result types, the arithmetic, and the multiple-choice evaluation
(evaluate_choices, read_choices) behind `python -m sparseinfer choose`.

Perplexity follows llama.cpp's `llama-perplexity`: the text is tokenized once (BOS first when
the model's file asks for it), cut into windows of n_ctx tokens (a partial last window is
dropped), and each window is a fresh sequence whose first token is BOS (replacing the text's
token there). The first half of a window (n_ctx // 2 tokens) is context only; each later
token is scored by the logits of the position before it, n_ctx - n_ctx // 2 - 1 tokens per
window. The estimate is exp(mean negative log-likelihood), its standard error
perplexity * sqrt(var(nll) / (count - 1)) as llama.cpp computes it.

KL divergence is KL(base || model) per scored token, sum_v p_base(v) (log p_base(v) -
log p_model(v)) in nats, computed exactly in float64 over the whole vocabulary (llama.cpp
stores the base's log-probabilities in 16 bits and skips p < e^-16; the means agree to that
precision).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _arguments as _args
from . import _sequence as _seq
from .errors import CancelledError, ContextOverflowError

if TYPE_CHECKING:
    from .model import Model

Progress = Callable[[int, int], None]

# Rows of logits turned into float64 log-probabilities at a time: bounds the memory a large
# vocabulary takes (64 rows of 150k entries are 77 MB).
_ROW_BLOCK = 64


@dataclass(frozen=True)
class PerplexityResult:
    """Model.perplexity's answer (also each side of a KLDivergenceResult)."""

    perplexity: float
    standard_error: float  # of the perplexity, as llama.cpp reports it ("PPL = x +/- y")
    mean_nll: float  # mean negative log-likelihood of a scored token, nats: log(perplexity)
    n_tokens: int  # tokens scored
    n_windows: int
    n_ctx: int  # window length
    window_perplexities: tuple[float, ...]  # each window's own
    seconds: float  # evaluating (tokenizing and the log-softmax arithmetic not included)
    tokens_per_second: float  # tokens evaluated (n_ctx - 1 per window: the last needs no logits)


@dataclass(frozen=True)
class PredictorAudit:
    """A PowerInfer predictor against the neurons that really fire, from a dense run: per layer,
    neuron decisions summed over the tokens evaluated (every token of every window)."""

    predicted: np.ndarray  # int64 (n_layer,): neurons the predictor marks active
    fired: np.ndarray  # neurons whose activation is nonzero
    both: np.ndarray  # predicted and fired
    n_tokens: int

    @property
    def recall(self) -> np.ndarray:
        """Per layer, the share of the neurons that fired which the predictor marked (a
        missed one is left out of the sparse run: this is what costs quality). NaN where
        none fired."""
        return _ratio(self.both, self.fired)

    @property
    def precision(self) -> np.ndarray:
        """Per layer, the share of the marked neurons that fired (the rest are computed for
        nothing: this costs time only). NaN where none was marked."""
        return _ratio(self.both, self.predicted)


@dataclass(frozen=True)
class KLDivergenceResult:
    """Model.kl_divergence's answer: the model's run against a base run on the same windows."""

    kl: np.ndarray  # float64, KL(base || model) of each scored token, nats
    top1_agreement: float  # share of scored positions where both rank the same token first
    perplexity: PerplexityResult  # the model's
    base_perplexity: PerplexityResult
    predictor: Optional[PredictorAudit]  # base="dense" only: the predictor in the dense run

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean())

    @property
    def kl_standard_error(self) -> float:
        return _standard_error(self.kl)

    @property
    def max_kl(self) -> float:
        return float(self.kl.max())

    def kl_percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the per-token KL, interpolated linearly between
        ranks as llama.cpp's are."""
        return float(np.percentile(self.kl, q))


@dataclass(frozen=True)
class Score:
    """Model.score's answer for one continuation."""

    logprob: float  # summed log-likelihood of its tokens given the context (natural log)
    mean_logprob: float  # per token
    n_tokens: int
    tokens: tuple[int, ...]  # the tokens scored
    is_greedy: bool  # whether each was the model's top token (lm-eval-harness's is_greedy)


@dataclass(frozen=True)
class ChoiceResult:
    """evaluate_choices' answer: accuracies over the items, each with its standard error
    (sqrt(p (1 - p) / (n - 1)), lm-eval-harness's stderr of a mean)."""

    n_items: int
    acc: float  # the option with the highest summed log-likelihood is the answer
    acc_norm: float  # ... the highest log-likelihood per character of the option (lm-eval's acc_norm)
    acc_per_token: float  # ... the highest mean log-likelihood per token
    predictions: tuple[int, ...]  # per item, the option acc picked

    def standard_error(self, accuracy: float) -> float:
        """Standard error of one of the accuracies above over n_items items."""
        n = self.n_items
        return math.sqrt(accuracy * (1 - accuracy) / (n - 1)) if n > 1 else math.nan


# ---- perplexity and KL divergence ---------------------------------------------------------

def perplexity(seq: _seq.Sequence, model: "Model", text: str, *, n_ctx: int, n_batch: int,
               max_windows: Optional[int], progress: Optional[Progress]) -> PerplexityResult:
    windows = _windows(seq, model, text, n_ctx, n_batch, max_windows)
    run = _Run(seq, "perplexity()", windows, n_batch)
    nlls = []
    for i, window in enumerate(windows):
        nlls.append(np.concatenate([_target_nll(rows, targets) for rows, targets in run.window(window)]))
        if progress is not None:
            progress(i + 1, len(windows))
    run.finish()
    return _perplexity_result(nlls, n_ctx, run.seconds)


def kl_divergence(seq: _seq.Sequence, model: "Model", base_seq: _seq.Sequence, base_model: "Model",
                  text: str, *, n_ctx: int, n_batch: int, max_windows: Optional[int],
                  progress: Optional[Progress], audit: bool) -> KLDivergenceResult:
    """The model's run in `seq` against the base's in `base_seq`, window by window and batch
    by batch in turn (so that only a batch of each side's logits is held); with audit, the
    base (a dense session of a PowerInfer file) counts its predictor's decisions."""
    _check_same_vocabulary(model, base_model)
    windows = _windows(seq, model, text, n_ctx, n_batch, max_windows)
    _check_fits(base_seq, n_ctx)
    run = _Run(seq, "kl_divergence()", windows, n_batch)
    base_run = _Run(base_seq, "kl_divergence()", windows, n_batch)
    if audit:
        with base_run.session() as session:
            session.set_predictor_audit(True)
            session.reset_predictor_audit()
    nlls, base_nlls, kls, same_top = [], [], [], 0
    for i, window in enumerate(windows):
        nll, base_nll = [], []
        for (rows, targets), (base_rows, _) in zip(run.window(window), base_run.window(window)):
            nll.append(_target_nll(rows, targets))
            base_nll.append(_target_nll(base_rows, targets))
            kls.append(_kl_rows(base_rows, rows))
            same_top += int(np.count_nonzero(rows.argmax(axis=1) == base_rows.argmax(axis=1)))
        nlls.append(np.concatenate(nll))
        base_nlls.append(np.concatenate(base_nll))
        if progress is not None:
            progress(i + 1, len(windows))
    run.finish()
    base_run.finish()
    predictor = None
    if audit:
        with base_run.session() as session:
            counts = session.predictor_audit()
            session.set_predictor_audit(False)
        predictor = PredictorAudit(predicted=counts[:, 0].copy(), fired=counts[:, 1].copy(),
                                   both=counts[:, 2].copy(), n_tokens=base_run.evaluated)
    kl = np.concatenate(kls)
    return KLDivergenceResult(
        kl=kl, top1_agreement=same_top / len(kl), perplexity=_perplexity_result(nlls, n_ctx, run.seconds),
        base_perplexity=_perplexity_result(base_nlls, n_ctx, base_run.seconds), predictor=predictor)


def _check_same_vocabulary(model: "Model", base: "Model") -> None:
    """ValueError unless the two files have the same vocabulary (token texts and ids): their
    logits are compared entry by entry, for the model's own token ids of the text."""
    if model.n_vocab != base.n_vocab:
        raise ValueError(f"the vocabularies differ: {model.path} has {model.n_vocab} tokens, the base "
                         f"{base.path} has {base.n_vocab}; KL divergence needs two files of the same model")
    ours, theirs = (m._metadata.get("tokenizer.ggml.tokens") for m in (model, base))
    if isinstance(ours, list) and isinstance(theirs, list) and ours != theirs:
        at = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise ValueError(f"the vocabularies differ: token {at} is {ours[at]!r} in {model.path} and "
                         f"{theirs[at]!r} in the base {base.path}; KL divergence needs two files of the "
                         f"same model")


def _windows(seq: _seq.Sequence, model: "Model", text: str, n_ctx: int, n_batch: int,
             max_windows: Optional[int]) -> list[list[int]]:
    """The text's windows of n_ctx tokens, each starting with BOS where the file adds one."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    # Three tokens: one of context, one scored, and the last, which needs no logits.
    n_ctx = _args.require_int("n_ctx", n_ctx, minimum=3)
    _args.require_int("n_batch", n_batch, minimum=1)
    if max_windows is not None:
        _args.require_int("max_windows", max_windows, minimum=1)
    _check_fits(seq, n_ctx)
    if not text.strip():
        raise ValueError("the text is empty" if not text else "the text holds only white space")
    ids = model.tokenize(text)
    n_windows = len(ids) // n_ctx
    if n_windows == 0:
        raise ValueError(f"the text is {len(ids)} tokens long, shorter than one window of n_ctx={n_ctx} "
                         f"tokens: give a longer text or a smaller n_ctx")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    bos = model._tokenizer.bos_id if model._tokenizer.add_bos else -1
    windows = []
    for i in range(n_windows):
        window = ids[i * n_ctx:(i + 1) * n_ctx]
        if bos >= 0:
            window[0] = bos
        windows.append(window)
    return windows


def _check_fits(seq: _seq.Sequence, n_ctx: int) -> None:
    if n_ctx > seq.n_ctx:
        raise ContextOverflowError(
            f"windows of n_ctx={n_ctx} tokens do not fit the context of {seq.n_ctx} tokens of {seq.owner}; "
            f"open it with n_ctx={n_ctx} or more (or use Model.session(n_ctx={n_ctx}))")


class _Run:
    """One side's evaluation of the windows in one sequence: each window a fresh sequence, its
    first half evaluated without logits, then batches of n_batch tokens with theirs."""

    def __init__(self, seq: _seq.Sequence, what: str, windows: list[list[int]], n_batch: int) -> None:
        self.seq, self.what, self.n_batch = seq, what, n_batch
        self.evaluated = len(windows) * (len(windows[0]) - 1)
        self.call_id, self.stats = seq.start_call(prompt_tokens=self.evaluated)
        self.seconds = 0.0

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """The native session for one step; a cancel() turns into CancelledError naming the call."""
        try:
            with self.seq.exclusive(self.call_id) as session:
                yield session
        except CancelledError:
            self.seq.check_open(during_call=True)
            raise CancelledError(f"{self.what} was cancelled by cancel() before it finished") from None

    def window(self, window: list[int]) -> Iterator[tuple[np.ndarray, list[int]]]:
        """(logits rows, the tokens they predict) of the window's second half, batch by batch."""
        first, end = len(window) // 2, len(window) - 1
        for start in range(first, end, self.n_batch):
            stop = min(start + self.n_batch, end)
            began = time.perf_counter()
            with self.session() as session:
                if start == first:
                    session.reset()
                    self.seq.cached.clear()
                    self.seq.eval(session, window[:first])
                self.seq.eval(session, window[start:stop], all_logits=True)
                rows = session.logits()
            self.seconds += time.perf_counter() - began
            yield rows, window[start + 1:stop + 1]

    def finish(self) -> None:
        self.stats.prompt_seconds = self.seconds


def _perplexity_result(nlls: list[np.ndarray], n_ctx: int, seconds: float) -> PerplexityResult:
    values = np.concatenate(nlls)
    mean = float(values.mean())
    ppl = math.exp(mean)
    evaluated = len(nlls) * (n_ctx - 1)
    return PerplexityResult(
        perplexity=ppl, standard_error=ppl * _standard_error(values), mean_nll=mean, n_tokens=len(values),
        n_windows=len(nlls), n_ctx=n_ctx, window_perplexities=tuple(math.exp(float(v.mean())) for v in nlls),
        seconds=seconds, tokens_per_second=evaluated / seconds if seconds > 0 else 0.0)


def _standard_error(values: np.ndarray) -> float:
    """sqrt(var / (n - 1)) with the population variance: llama.cpp's uncertainty of a mean."""
    n = len(values)
    return math.sqrt(float(values.var()) / (n - 1)) if n > 1 else math.nan


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def _target_nll(rows: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """-log p(target) of each row."""
    out = np.empty(len(targets))
    for b in range(0, len(targets), _ROW_BLOCK):
        logp = _log_softmax(rows[b:b + _ROW_BLOCK])
        out[b:b + _ROW_BLOCK] = -logp[np.arange(len(logp)), targets[b:b + _ROW_BLOCK]]
    return out


def _kl_rows(base_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """KL(base || model) of each pair of rows of logits."""
    out = np.empty(len(rows))
    for b in range(0, len(rows), _ROW_BLOCK):
        base_logp = _log_softmax(base_rows[b:b + _ROW_BLOCK])
        logp = _log_softmax(rows[b:b + _ROW_BLOCK])
        # Identical rows give exactly 0; rounding never takes a KL below it otherwise.
        out[b:b + _ROW_BLOCK] = np.maximum((np.exp(base_logp) * (base_logp - logp)).sum(axis=1), 0.0)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(len(num), math.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ---- scoring continuations -----------------------------------------------------------------

def score(seq: _seq.Sequence, model: "Model", context: str, continuations: Sequence[str]) -> list[Score]:
    """See Model.score. As lm-eval-harness does, white space at the end of the context moves to
    the start of each continuation (a tokenizer joins a space to the word after it). Each
    continuation is then scored on the tokens of context + continuation after their longest
    common prefix with the context's own tokens (a word cut in two by the split is scored
    whole); that prefix stays in the KV cache from one continuation to the next."""
    if not isinstance(context, str):
        raise TypeError(f"context must be a str, got {type(context).__name__}")
    if isinstance(continuations, (str, bytes)) or not isinstance(continuations, Iterable):
        raise TypeError("continuations must be a list of str (put a single one in a list)")
    continuations = list(continuations)
    if not continuations:
        raise ValueError("continuations must not be empty")
    context_ids = model.tokenize(context.rstrip())
    plans = []
    for i, continuation in enumerate(continuations):
        if not isinstance(continuation, str):
            raise TypeError(f"continuation {i} must be a str, got {type(continuation).__name__}")
        whole = model.tokenize(context + continuation)
        shared = 0
        while shared < min(len(whole), len(context_ids)) and whole[shared] == context_ids[shared]:
            shared += 1
        if shared == len(whole):
            raise ValueError(f"continuation {i} ({continuation!r}) adds no tokens to the context")
        if shared == 0:
            raise ValueError("the context is empty and the model adds no BOS token: there is nothing to "
                             "condition the first token of a continuation on")
        if len(whole) - 1 > seq.n_ctx:
            raise ContextOverflowError(f"the context and continuation {i} are {len(whole)} tokens; scoring "
                                       f"them needs {len(whole) - 1} in the context of {seq.n_ctx} tokens")
        plans.append((whole, shared))
    call_id, stats = seq.start_call(prompt_tokens=sum(len(whole) - 1 for whole, _ in plans))
    results = []
    began = time.perf_counter()
    for whole, shared in plans:
        try:
            with seq.exclusive(call_id) as session:
                # Keeps at most shared - 1 tokens: the logits of the context's last token are needed.
                kept = seq.reuse_prefix(session, whole[:shared])
                stats.reused_tokens += kept
                seq.eval(session, whole[kept:-1], all_logits=True)
                rows = session.logits()[shared - 1 - kept:]
        except CancelledError:
            seq.check_open(during_call=True)
            raise CancelledError("score() was cancelled by cancel() before it finished") from None
        targets = whole[shared:]
        logprobs = -_target_nll(rows, targets)
        total = float(logprobs.sum())
        results.append(Score(logprob=total, mean_logprob=total / len(targets), n_tokens=len(targets),
                             tokens=tuple(targets), is_greedy=bool(np.all(rows.argmax(axis=1) == targets))))
    stats.prompt_seconds = time.perf_counter() - began
    return results


# ---- multiple choice -------------------------------------------------------------------------

def read_choices(path: Union[str, "os.PathLike[str]"]) -> list[dict[str, Any]]:
    """The items of a JSON-lines file, one object per line: {"context": str, "options": [str,
    ...] (two or more), "answer": index of the right option}. Blank lines are skipped; an error
    names the file and line."""
    where = os.fspath(path)
    items = []
    with open(where, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{where}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x})") from None
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}:{number}: not a JSON object ({error.msg} at column {error.colno})") from None
            items.append(_check_item(item, f"{where}:{number}"))
    if not items:
        raise ValueError(f"{where}: no items (one JSON object per line: context, options, answer)")
    return items


def _check_item(item: object, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object with context, options and answer, got "
                         f"{type(item).__name__}")
    missing = [key for key in ("context", "options", "answer") if key not in item]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    context, options, answer = item["context"], item["options"], item["answer"]
    if not isinstance(context, str):
        raise ValueError(f"{where}: context must be a string")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
        raise ValueError(f"{where}: options must be a list of two or more non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise ValueError(f"{where}: answer must be the index of an option, 0 to {len(options) - 1}, got {answer!r}")
    return {"context": context, "options": options, "answer": answer}


def evaluate_choices(model: Any, items: Iterable[dict[str, Any]], *,
                     progress: Optional[Progress] = None) -> ChoiceResult:
    """Accuracy of `model` (a Model or Session) on multiple-choice items ({"context", "options",
    "answer"} dicts, as read_choices returns), each option scored by model.score(context,
    options): acc picks by the summed log-likelihood, acc_norm by the log-likelihood per
    character of the option (lm-eval-harness's acc_norm, which PIQA and HellaSwag report),
    acc_per_token by the mean per token. Ties go to the first option."""
    items = [_check_item(item, f"item {i}") for i, item in enumerate(items)]
    if not items:
        raise ValueError("items must not be empty")
    correct = np.zeros(3)
    predictions = []
    for i, item in enumerate(items):
        scores = model.score(item["context"], item["options"])
        totals = np.array([s.logprob for s in scores])
        picks = (int(np.argmax(totals)),
                 int(np.argmax(totals / np.array([len(o) for o in item["options"]]))),
                 int(np.argmax([s.mean_logprob for s in scores])))
        correct += [pick == item["answer"] for pick in picks]
        predictions.append(picks[0])
        if progress is not None:
            progress(i + 1, len(items))
    acc, acc_norm, acc_per_token = (float(c) / len(items) for c in correct)
    return ChoiceResult(n_items=len(items), acc=acc, acc_norm=acc_norm, acc_per_token=acc_per_token,
                        predictions=tuple(predictions))
