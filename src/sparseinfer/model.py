"""sparseinfer.Model: load a GGUF model once, then tokenize, score and generate text."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from . import _arguments as _args
from . import _core
from . import _generation as _gen
from . import _sequence as _seq
from . import fetch as _fetch
from . import placement as _placement
from . import prompt as _prompt
from . import quality as _quality
from .errors import CancelledError, ContextLengthWarning, ContextOverflowError, UnsupportedModelError

PathLike = Union[str, "os.PathLike[str]"]

# A Model's n_ctx when none is given: the model's training length, at most this.
DEFAULT_N_CTX = 4096


class _Inference:
    """generate / chat / logits / cancel / stats over one _seq.Sequence: shared by Model (its
    own session) and Session (one of several over the same weights)."""

    def _sequence(self) -> _seq.Sequence:
        raise NotImplementedError

    def _loaded(self) -> "Model":
        raise NotImplementedError

    def logits(self, tokens: Iterable[int]) -> np.ndarray:
        """Logits of every position from one forward pass over `tokens` in a fresh context.

        Returns a float32 array of shape (len(tokens), n_vocab); row i scores the token
        that would follow tokens[: i + 1]. Raises CancelledError when cancel() ends it.
        """
        seq = self._sequence()
        ids = _args.token_ids(tokens)
        if not ids:
            raise ValueError("tokens must not be empty")
        if len(ids) > seq.n_ctx:
            raise ContextOverflowError(f"{len(ids)} tokens do not fit in n_ctx={seq.n_ctx}")
        call_id, stats = seq.start_call(prompt_tokens=len(ids))
        started = time.perf_counter()
        with seq.exclusive(call_id) as session:
            session.reset()
            seq.cached.clear()
            try:
                seq.eval(session, ids, all_logits=True)
            except CancelledError:
                seq.check_open(during_call=True)
                raise CancelledError("logits() was cancelled by cancel() before it finished") from None
            out = session.logits()
        stats.prompt_seconds = time.perf_counter() - started
        return out

    def perplexity(self, text: str, n_ctx: int = 512, *, n_batch: int = 512, max_windows: Optional[int] = None,
                   progress: Optional[Callable[[int, int], None]] = None) -> _quality.PerplexityResult:
        """Perplexity of the model on `text`, as llama.cpp's llama-perplexity computes it.

        >>> r = model.perplexity(open("wiki.test.raw").read(), n_ctx=512)
        >>> print(f"{r.perplexity:.4f} +/- {r.standard_error:.5f}")

        The text's tokens (BOS first where the file adds one) are cut into windows of n_ctx
        tokens (a partial last one is dropped; max_windows takes the first ones only), each a
        fresh sequence starting with BOS; the second half of each window is scored, each
        token given every one before it in the window. The model runs as it was opened
        (sparse or dense, predictor_q8, sparse_threshold). n_batch tokens are evaluated per
        call (it bounds the logits held at once, n_batch x n_vocab floats, and changes no
        result); progress(windows_done, n_windows) is called after each window.
        Returns a sparseinfer.quality.PerplexityResult (perplexity, standard_error,
        n_tokens, window_perplexities, tokens_per_second, ...). ValueError for an empty
        text or one shorter than a window; ContextOverflowError when n_ctx exceeds this
        context window.
        """
        return _quality.perplexity(self._sequence(), self._loaded(), text, n_ctx=n_ctx, n_batch=n_batch,
                                   max_windows=max_windows, progress=progress)

    def kl_divergence(self, text: str, base: Union[str, "_Inference"] = "dense", *, n_ctx: int = 512,
                      n_batch: int = 512, max_windows: Optional[int] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> _quality.KLDivergenceResult:
        """How far this model's next-token distributions are from a base's on `text`: the
        windows and scored tokens of perplexity(), KL(base || this) at each scored token.

        >>> sparse = si.Model("model.powerinfer.gguf")
        >>> r = sparse.kl_divergence(text)                  # against every neuron computed
        >>> r.mean_kl, r.kl_percentile(99), r.top1_agreement, r.predictor.recall
        >>> r = si.Model("q4_k.gguf").kl_divergence(text, base=si.Model("f16.gguf"))

        base: "dense", this PowerInfer model computing every neuron of its FFN (a dense
        session over the same weights, with the same predictor and threshold), which also
        counts the predictor's decisions against the neurons that fire (result.predictor:
        recall and precision per layer); or another Model or Session of the same model (the
        same vocabulary; ValueError otherwise), run as it was opened. Returns a
        sparseinfer.quality.KLDivergenceResult: per-token KL, its mean, percentiles and
        maximum, top-1 agreement, and both perplexities. Other arguments as in perplexity().
        """
        seq, model = self._sequence(), self._loaded()
        if isinstance(base, _Inference):
            base_seq = base._sequence()
            if base_seq is seq:
                raise ValueError("base is this same context window: open another Model or a session")
            return _quality.kl_divergence(seq, model, base_seq, base._loaded(), text, n_ctx=n_ctx,
                                          n_batch=n_batch, max_windows=max_windows, progress=progress,
                                          audit=False)
        if not (isinstance(base, str) and base == "dense"):
            raise ValueError(f"base must be 'dense', a Model or a Session, got {base!r}")
        if not model._native.is_powerinfer:
            raise UnsupportedModelError(
                f"{model.path}: base='dense' compares a PowerInfer file's sparse run with its dense one, and "
                f"this file has no predictors; compare it with another file of the model instead")
        if not seq.sparse:
            raise ValueError(f"base='dense' compares the sparse run with the dense one, and {seq.owner} runs "
                             f"dense (sparse=False)")
        n_ctx = _args.require_int("n_ctx", n_ctx, minimum=3)
        dense = model._open_sequence(n_ctx, seq.n_threads, f"the dense run of {model.path}", sparse=False)
        try:
            return _quality.kl_divergence(seq, model, dense, model, text, n_ctx=n_ctx, n_batch=n_batch,
                                          max_windows=max_windows, progress=progress, audit=True)
        finally:
            dense.close()

    def score(self, context: str, continuations: Sequence[str]) -> list[_quality.Score]:
        """The log-likelihood of each continuation of `context`, for multiple-choice tasks.

        >>> a, b = model.score("The capital of France is", [" Paris", " Rome"])
        >>> a.logprob > b.logprob

        Each continuation's tokens are those of context + continuation after the tokens it
        shares with the context alone (BOS first where the file adds one); each is scored
        given all before it. The context is evaluated once and stays in the KV cache for
        every continuation (a later call with the same context reuses it too); the numbers
        are the same as scoring each continuation alone. Returns one
        sparseinfer.quality.Score per continuation: logprob (summed, natural log),
        mean_logprob (per token), n_tokens, tokens, is_greedy.
        """
        return _quality.score(self._sequence(), self._loaded(), context, continuations)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: Optional[int] = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        ignore_eos: bool = False,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """Continues `prompt` and returns the new text (or, with stream=True, an iterator
        of text pieces as they are generated).

        The prompt gets BOS when the model's tokenizer asks for it (and does not start with
        the BOS token's text already), and the text of special tokens in it (a chat
        template's "<|im_start|>") becomes those tokens.

        Generation ends at an end-of-generation token (unless ignore_eos), after
        max_tokens tokens (None: no limit), when the context window is full, at the first
        of the `stop` strings (which is not included in the text), or at cancel().

        Sampling: repetition penalty over the last 64 tokens, then top-k (<= 0: off),
        top-p (1: off), min-p (0: off), then temperature; temperature <= 0 is greedy.
        The same seed (and arguments) gives the same text; None picks a random seed.
        """
        seq = self._sequence()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if max_tokens is not None:
            _args.require_int("max_tokens", max_tokens, minimum=0, maximum=None)
        stops = _args.stop_strings(stop)
        sampler = _gen.make_sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, seed=seed)
        model = self._loaded()
        pieces = _gen.pieces(seq, model._tokenizer, model._prompts.encode(prompt, seq.n_ctx), sampler,
                             max_tokens, stops, ignore_eos=bool(ignore_eos))
        return pieces if stream else "".join(pieces)

    def chat(
        self,
        messages: _prompt.Conversation,
        *,
        template: str = "auto",
        max_tokens: Optional[int] = None,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Union[str, Sequence[str], None] = None,
        stream: bool = False,
    ) -> Union[str, Iterator[str]]:
        """The assistant's reply to a conversation (or, with stream=True, an iterator of
        its pieces).

        >>> model.chat([{"role": "user", "content": "Name three colours."}], temperature=0)

        `messages` is a str (one user message) or a list of {"role": "system" | "user" |
        "assistant", "content": str} dicts; `template` picks the chat format as in
        sparseinfer.format_prompt ("auto": the model's own). The reply ends where the
        template's turn ends (e.g. "<|im_end|>", "<|eot_id|>", "</s>", MiniCPM's "<用户>"),
        at a `stop` string, after max_tokens tokens (None: no limit), when the context is
        full or at cancel(). Sampling arguments as in generate().
        """
        seq = self._sequence()
        model = self._loaded()
        if max_tokens is not None:
            _args.require_int("max_tokens", max_tokens, minimum=0, maximum=None)
        chat_template = _prompt.resolve_template(template, model._metadata)
        text = chat_template.render(messages, add_generation_prompt=True)
        end_ids = set()
        for end in chat_template.end_of_turn:
            ids = model._tokenizer.encode(end, add_bos=False, parse_special=True)
            if len(ids) == 1:  # a token of its own, which may not render as text
                end_ids.add(ids[0])
        sampler = _gen.make_sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, seed=seed)
        pieces = _gen.pieces(seq, model._tokenizer, model._prompts.encode(text, seq.n_ctx), sampler, max_tokens,
                             list(chat_template.end_of_turn) + _args.stop_strings(stop),
                             ignore_eos=False, end_ids=frozenset(end_ids))
        return pieces if stream else "".join(pieces)

    def cancel(self) -> None:
        """Ends the generate(), chat(), logits(), perplexity(), kl_divergence() or score() in
        progress, from any thread: a prompt being evaluated stops within one layer, a
        generation before its next token. generate() and chat() then return (or their stream
        yields) the text so far; the others raise CancelledError. Nothing else is affected:
        the next call runs normally.
        """
        self._sequence().cancel()

    def stats(self) -> dict[str, Any]:
        """Timings of the last generate() or logits() call (so far, while it streams).

        Keys: prompt_tokens, reused_tokens (how many of the prompt's first tokens were
        already in the context from earlier calls, and so not evaluated again: a chat's
        earlier turns), prompt_seconds, prompt_tokens_per_second (over the tokens
        evaluated), generated_tokens, decode_seconds, decode_tokens_per_second, and
        active_fraction / layers: the share
        of FFN neurons computed, overall and per layer (predicted active on the sparse
        path; 1.0 on the dense path). Never waits: asked while a prompt is being evaluated,
        the layer figures are those of the last finished step.
        """
        seq = self._sequence()
        s = seq.last_stats
        # Without waiting for a step in progress (a long prompt): its layers come next time.
        if seq.lock.acquire(blocking=False):
            try:
                if seq.native is not None:
                    seq.last_layers = seq.native.active_fractions()
            finally:
                seq.lock.release()
        layers = seq.last_layers
        return {
            "prompt_tokens": s.prompt_tokens,
            "reused_tokens": s.reused_tokens,
            "prompt_seconds": s.prompt_seconds,
            "prompt_tokens_per_second": _gen.rate(s.prompt_tokens - s.reused_tokens, s.prompt_seconds),
            "generated_tokens": s.generated_tokens,
            "decode_seconds": s.decode_seconds,
            "decode_tokens_per_second": _gen.rate(s.generated_tokens, s.decode_seconds),
            "active_fraction": sum(layers) / len(layers) if layers else 0.0,
            "layers": layers,
        }


class Model(_Inference):
    """A GGUF model loaded for inference, with one context window (KV cache) of n_ctx tokens.

    >>> with Model("SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048) as model:
    ...     print(model.generate("The capital of France is", max_tokens=16, temperature=0))

    The Model's own generate(), chat() and logits() run one sequence at a time: a call keeps
    the part of the context that its prompt starts with (generate, chat) and evaluates the
    rest, and a call made while a stream is open ends that stream.
    For several sequences at once (one per thread), open sessions with Model.session(): they
    share the weights and each has its own context window.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        n_ctx: Optional[int] = None,
        n_threads: Optional[int] = None,
        device: str = "auto",
        sparse: Union[str, bool] = "auto",
        n_gpu_layers: int = -1,
        vram_budget: Union[float, str, None] = None,
        predictor_q8: Union[bool, str] = "auto",
        sparse_threshold: Optional[float] = None,
    ) -> None:
        """Loads the model file (memory-mapped; the weights are not copied).

        Args:
            path: a GGUF file (dense llama-family or PowerInfer). A path that does not exist
                and looks like a repository id ("org/name") or a short name
                ("minicpm-s-1b") is fetched first: see fetch_model and from_pretrained.
            n_ctx: context window in tokens: prompt plus generated text. None: the length
                the model was trained for (its file's context_length), at most 4096. A
                longer n_ctx than the model was trained for gives a warning. The KV cache
                holds memory only as far as the context has grown.
            n_threads: CPU threads; None uses the physical cores (at most 16).
            device: "auto" or "cpu" (the CPU), or "cuda" / "cuda:N": that GPU through the
                CUDA plugin, placed under vram_budget and n_gpu_layers (Model.placement says
                what went there). Without a plugin or a GPU, "cuda" raises
                DeviceUnavailableError saying why. "auto" stays on the CPU in this version.
            sparse: "auto" (sparse FFN when the file supports it), True (require it) or False
                (always dense; a PowerInfer file then computes every neuron with its ReLU
                FFN). True on a dense file raises UnsupportedModelError. On a GPU a sparse
                model is split as PowerInfer does: attention, predictors and the hottest FFN
                neurons of each GPU layer on the GPU, the other (cold) neurons on the CPU,
                the two partial sums added. The hot neurons are chosen by firing frequency
                from the model's profile (MODEL.profile.npz from `python -m sparseinfer
                profile`, or PowerInfer's activation/ folder next to the file); without
                one, every layer gets the same share of its neurons.
            n_gpu_layers: with a GPU, how many layers to place there, counted from the last
                (-1: as many as fit the budget); the others run on the CPU.
            vram_budget: GPU memory the model may use (weights, the Model's own KV cache and
                one batch of activations; each extra session adds its KV cache and
                activations): a number of GiB or a string such as "6GiB", "512MiB" or
                "8GB"; None: what the GPU has free, less 256 MiB. A budget that cannot hold
                one layer and the output head raises ValueError; a placement larger than
                the GPU's free memory raises MemoryError before anything is uploaded.
            predictor_q8: run a PowerInfer file's predictors as 8-bit (Q8_0) copies made at
                load. They are read in full for every token, so this speeds up sparse
                decoding at the cost of a few flipped near-threshold decisions. "auto": each
                layer whose F32/F16/BF16 predictor agrees with its 8-bit copy on at least
                99.5% of the neuron decisions for random probe inputs (predictor_q8_layers
                says which); True: every layer; False: as stored.
            sparse_threshold: a PowerInfer file's neuron threshold: a neuron is computed
                when its predictor's score is at least this. None: PowerInfer's environment
                variable LLAMA_SPARSE_PRED_THRESHOLD when set, else the file's
                powerinfer.sparse_threshold (0 when absent). A file without predictors
                refuses a number here (and ignores the variable).
        """
        self._path = _fetch.resolve_path(os.fspath(path))
        explicit_n_ctx = None if n_ctx is None else _args.require_int("n_ctx", n_ctx, minimum=1)
        self._n_threads = _args.thread_count(n_threads)
        if sparse != "auto" and not isinstance(sparse, bool):
            raise ValueError(f"sparse must be 'auto', True or False, got {sparse!r}")
        self._cuda = _args.cuda_device(device)
        self._n_gpu_layers = _args.require_int("n_gpu_layers", n_gpu_layers, minimum=-1)
        self._vram_budget = None if vram_budget is None else _args.parse_memory_size("vram_budget", vram_budget)

        if predictor_q8 != "auto" and not isinstance(predictor_q8, bool):
            raise ValueError(f"predictor_q8 must be 'auto', True or False, got {predictor_q8!r}")
        threshold = _args.sparse_threshold(sparse_threshold, self._path)
        self._native: Optional[_core.Model] = _core.Model(self._path, predictor_q8=predictor_q8,
                                                          sparse_threshold=threshold)
        if sparse is True and not self._native.is_powerinfer:
            raise UnsupportedModelError(
                f"{self._path}: sparse=True needs a PowerInfer model (file magic PWRI, with "
                f"activation predictors) and this file is a dense model; use sparse='auto' or False")
        self._sparse = bool(self._native.is_powerinfer) if sparse == "auto" else sparse
        self._metadata = self._native.metadata()
        trained = self._metadata.get(f"{self._native.arch}.context_length")
        self._n_ctx_train = trained if isinstance(trained, int) and trained > 0 else None
        if explicit_n_ctx is None:
            self._n_ctx = min(self._n_ctx_train or DEFAULT_N_CTX, DEFAULT_N_CTX)
        else:
            self._n_ctx = explicit_n_ctx
            self._warn_beyond_training(explicit_n_ctx)
        self._placement: Optional[_placement.DevicePlan] = None
        self._device_model: Optional[_core.DeviceModel] = None
        if self._cuda is not None:
            plugin_path, index = self._cuda
            self._placement, self._device_model = _placement.place_on_device(
                self._native, path=self._path, cuda_plugin=plugin_path, cuda_device=index, n_ctx=self._n_ctx,
                sparse=self._sparse, vram_budget=self._vram_budget, n_gpu_layers=self._n_gpu_layers)
        self._tokenizer = self._native.tokenizer
        self._predictor_q8_layers = list(self._native.predictor_q8_layers)
        self._sparse_threshold = self._native.sparse_threshold if self._native.is_powerinfer else None
        self._arch, self._n_vocab, self._n_layer = (
            self._native.arch, self._native.n_vocab, self._native.n_layer)
        self._sessions_lock = threading.Lock()
        self._sessions: "weakref.WeakSet[_seq.Sequence]" = weakref.WeakSet()
        _seq.fork_aware.add(self)
        self._prompts = _gen.PromptEncoder(self._tokenizer, self._n_vocab)
        self._own = self._open_sequence(self._n_ctx, self._n_threads, f"the Model for {self._path}")

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        filename: Optional[str] = None,
        *,
        revision: Optional[str] = None,
        source: str = "huggingface",
        cache_dir: Optional[PathLike] = None,
        token: Optional[str] = None,
        **kwargs: Any,
    ) -> "Model":
        """Fetches a model file (see sparseinfer.fetch_model) and loads it.

        >>> model = Model.from_pretrained("minicpm-s-1b", n_ctx=2048)
        >>> model = Model.from_pretrained("org/repo-gguf", "*Q4_0.gguf")

        The keyword arguments after the fetch's own go to Model().
        """
        path = _fetch.fetch_model(repo_id, filename, revision=revision, source=source,
                                  cache_dir=cache_dir, token=token)
        return cls(path, **kwargs)

    # ---- properties ---------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The model file."""
        return self._path

    @property
    def n_ctx(self) -> int:
        """Context window in tokens (of the Model's own generate(); sessions may differ)."""
        return self._n_ctx

    @property
    def n_threads(self) -> int:
        """CPU threads the Model's own generate() uses."""
        return self._n_threads

    @property
    def n_vocab(self) -> int:
        """Vocabulary size: the width of a row of logits."""
        return self._n_vocab

    @property
    def arch(self) -> str:
        """general.architecture of the file, e.g. "llama"."""
        return self._arch

    @property
    def device(self) -> str:
        """Where the model runs: "cpu" or "cuda:N" (its sessions too)."""
        return "cpu" if self._cuda is None else f"cuda:{self._cuda[1]}"

    @property
    def placement(self) -> Optional[_placement.DevicePlan]:
        """What went to the GPU (sparseinfer.placement.DevicePlan: GPU layers, hot neurons
        per layer, budget, planned bytes), or None on the CPU."""
        return self._placement

    @property
    def gpu_weight_bytes(self) -> int:
        """Bytes of weights held on the GPU (0 on the CPU): uploaded once, shared by every
        session of the Model."""
        return 0 if self._device_model is None else int(self._device_model.weight_bytes)

    @property
    def predictor_q8_layers(self) -> list[bool]:
        """Per layer, whether its predictor runs as an 8-bit copy (the predictor_q8 argument);
        all False for a dense file."""
        return list(self._predictor_q8_layers)

    @property
    def is_sparse(self) -> bool:
        """Whether the sparse (PowerInfer) FFN path is in use: only predicted-active FFN
        neurons are computed."""
        return self._sparse

    @property
    def sparse_threshold(self) -> Optional[float]:
        """A PowerInfer file's neuron threshold in use (the sparse_threshold argument); None
        for a file without predictors."""
        return self._sparse_threshold

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's GGUF metadata (key -> value); a copy, so changing it changes nothing."""
        return dict(self._metadata)

    # ---- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: Union[str, bytes], *, add_bos: bool = True,
                 special: bool = False) -> list[int]:
        """Token ids of `text` (UTF-8 bytes or str).

        add_bos prepends the BOS token when the model's file asks for one
        (tokenizer.ggml.add_bos_token, as llama-cpp-python's tokenize does), so the ids are
        what generate() feeds the model; special recognises the text of control tokens such
        as "<|im_start|>" as those tokens.
        """
        self._check_open()
        if not isinstance(text, (str, bytes)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_bos=bool(add_bos) and self._tokenizer.add_bos,
                                      parse_special=bool(special))

    def detokenize(self, tokens: Iterable[int]) -> str:
        """The text of `tokens`; bytes that are not valid UTF-8 become U+FFFD."""
        self._check_open()
        return self._tokenizer.decode(_args.token_ids(tokens)).decode("utf-8", errors="replace")

    # ---- sessions -------------------------------------------------------------------------

    def session(self, *, n_ctx: Optional[int] = None, n_threads: Optional[int] = None) -> "Session":
        """A new context window over this model's weights, for one more sequence at a time.

        >>> with model.session() as s:          # e.g. one per worker thread
        ...     s.generate("Once upon a time", max_tokens=32, temperature=0)

        Each session has its own KV cache (n_ctx tokens; default the Model's) and thread
        pool (n_threads; default the Model's) and the same generate / chat / logits /
        cancel / stats as the Model. Sessions on different threads run at the same time and
        give exactly the tokens they give alone. Closing the Model closes its sessions.
        """
        self._check_open()
        if n_ctx is None:
            n_ctx = self._n_ctx
        else:
            n_ctx = _args.require_int("n_ctx", n_ctx, minimum=1)
            self._warn_beyond_training(n_ctx)
        n_threads = self._n_threads if n_threads is None else _args.thread_count(n_threads)
        return Session(self, self._open_sequence(n_ctx, n_threads,
                                                 f"a session of the Model for {self._path}"))

    def _warn_beyond_training(self, n_ctx: int) -> None:
        if self._n_ctx_train is not None and n_ctx > self._n_ctx_train:
            warnings.warn(f"n_ctx={n_ctx} is beyond the {self._n_ctx_train} tokens {self._path} was "
                          f"trained for: text past them may lose coherence", ContextLengthWarning,
                          stacklevel=_stack_level_outside_package())

    def _open_sequence(self, n_ctx: int, n_threads: int, owner: str, *,
                       sparse: Optional[bool] = None) -> _seq.Sequence:
        with self._sessions_lock:
            self._check_open()
            seq = _seq.Sequence(self._native, n_ctx=n_ctx, n_threads=n_threads,
                                sparse=self._sparse if sparse is None else sparse, owner=owner,
                                device=self._device_model)
            self._sessions.add(seq)
            return seq

    # ---- lifetime -------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Part of fork() support (_sequence.fork_aware): the sessions renew themselves; the GPU's
        weights belong to the parent's CUDA context, so they are never freed here."""
        self._sessions_lock = threading.Lock()
        if self._device_model is not None:
            _seq.orphaned_by_fork.append(self._device_model)

    def close(self) -> None:
        """Closes the Model and its sessions: frees the contexts and unmaps the file. A
        call running in another thread stops within a layer and raises ValueError; the
        Model cannot be used afterwards."""
        with self._sessions_lock:
            sequences, self._sessions = list(self._sessions), weakref.WeakSet()
            # The native objects free the KV caches, the GPU's weights and the mapping when
            # the last reference goes.
            self._native = None
            self._device_model = None
        for seq in sequences:
            seq.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._native is None else f"n_ctx={self._n_ctx}"
        return f"<sparseinfer.Model {self._path!r} arch={self.arch!r} {state}>"

    # ---- helpers --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._native is None:
            raise ValueError(f"the Model for {self._path} is closed")

    def _sequence(self) -> _seq.Sequence:
        self._check_open()
        return self._own

    def _loaded(self) -> "Model":
        return self


class Session(_Inference):
    """One more context window over a Model's weights: made by Model.session().

    Same generate / chat / logits / cancel / stats as Model; one sequence at a time per
    session, any number of sessions at once (each on its own thread).
    """

    def __init__(self, model: Model, sequence: _seq.Sequence) -> None:
        self._model = model
        self._seq = sequence

    @property
    def model(self) -> Model:
        """The Model whose weights this session runs."""
        return self._model

    @property
    def n_ctx(self) -> int:
        """Context window in tokens."""
        return self._seq.n_ctx

    @property
    def n_threads(self) -> int:
        """CPU threads this session computes with."""
        return self._seq.n_threads

    def close(self) -> None:
        """Frees this session's context; the Model and its other sessions are unaffected."""
        self._seq.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._seq.closed else f"n_ctx={self.n_ctx}"
        return f"<sparseinfer.Session of {self._model.path!r} {state}>"

    def _sequence(self) -> _seq.Sequence:
        self._seq.check_open()
        return self._seq

    def _loaded(self) -> Model:
        self._model._check_open()
        return self._model


# ---- helpers (the argument checks are in _arguments.py) -----------------------------------

def _stack_level_outside_package() -> int:
    """The warnings.warn stacklevel of the nearest caller outside this package (the user's
    line, through Model(), Model.from_pretrained(), session() or the CLI)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package:
        frame, level = frame.f_back, level + 1
    return level
