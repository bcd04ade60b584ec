"""sparseinfer.Model, the public Python API, on tiny synthetic llama models.

Oracles: the model's own single-pass logits() (greedy generation must follow their argmax
chain token by token), the NumPy reference forward pass (tests/support/reference.py), plain
str.find for stop strings, and NumPy for everything numeric.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading

import numpy as np
import pytest

import sparseinfer as si
from sparseinfer._stops import StopStringFilter

import ggufgen
import reference

N_CTX_TRAIN = 4096
PROMPT = "the model is a small test"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny F32 llama model file and the weights it holds."""
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return ggufgen.write_llama_model(path, n_ctx=N_CTX_TRAIN, seed=11)


@pytest.fixture(scope="module")
def model(tiny):
    with si.Model(tiny.path, n_ctx=256, n_threads=2) as m:
        yield m


def greedy_chain(model: si.Model, prompt_ids: list[int], n: int) -> list[int]:
    """The greedy continuation, one fresh full forward pass (logits()) per token."""
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(np.argmax(model.logits(ids)[-1])))
    return ids[len(prompt_ids):]


def continuation_text(model: si.Model, prompt_ids: list[int], new_ids: list[int]) -> str:
    """What generate() should return: the detokenised whole minus the detokenised prompt."""
    whole = model.detokenize(prompt_ids + new_ids)
    head = model.detokenize(prompt_ids)
    assert whole.startswith(head)
    return whole[len(head):]


# ---- loading and properties -------------------------------------------------------------------

def test_properties_describe_the_file(model, tiny):
    assert model.arch == "llama"
    assert model.n_vocab == tiny.hparams["n_vocab"]
    assert model.n_ctx == 256
    assert model.n_threads == 2
    assert model.is_sparse is False
    assert model.path == tiny.path
    assert model.metadata["general.name"] == "sparseinfer-test-tiny-llama"
    assert model.metadata["llama.block_count"] == tiny.hparams["n_layer"]


def test_metadata_is_a_copy(model):
    model.metadata["general.name"] = "changed"
    assert model.metadata["general.name"] == "sparseinfer-test-tiny-llama"


def test_default_thread_count_is_sensible(tiny):
    with si.Model(tiny.path, n_ctx=32) as m:
        assert 1 <= m.n_threads <= max(1, os.cpu_count() or 1)


def test_missing_file_raises_oserror_naming_it(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(OSError, match="nope.gguf"):
        si.Model(missing)


def test_a_file_that_is_not_gguf_raises_model_format_error(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model" * 10)
    with pytest.raises(si.ModelFormatError):
        si.Model(junk)


def test_a_huge_prompt_is_refused_before_it_is_tokenized(model):
    # 10 MB of text: refused from its size and the vocabulary's longest token, not after
    # tokenizing it (a 100 MB prompt took 7 s and 2 GB before).
    prompt = PROMPT * 400_000
    with pytest.raises(si.ContextOverflowError,
                       match=rf"the prompt is {len(prompt)} bytes, so at least \d+ tokens \(no token of "
                             rf"this model is longer than \d+ bytes\), and n_ctx is {model.n_ctx}"):
        model.generate(prompt)
    # What might fit is tokenized and counted as before.
    n_ctx_of_prompt = len(model.tokenize(PROMPT * 40))
    with si.Model(model.path, n_ctx=n_ctx_of_prompt) as small:
        with pytest.raises(si.ContextOverflowError, match=rf"the prompt is {n_ctx_of_prompt} tokens"):
            small.generate(PROMPT * 40)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_ctx=0), ValueError, "n_ctx"),
        (dict(n_ctx=-5), ValueError, "n_ctx"),
        (dict(n_ctx="64"), TypeError, "n_ctx"),
        (dict(n_threads=0), ValueError, "n_threads"),
        (dict(n_threads=1.5), TypeError, "n_threads"),
        (dict(n_threads=10**6), ValueError, "n_threads"),
        (dict(device="tpu"), ValueError, "device"),
        (dict(device="cuda"), si.DeviceUnavailableError, "CUDA"),
        (dict(device="cuda:0"), si.DeviceUnavailableError, "CUDA"),
        (dict(sparse="yes"), ValueError, "sparse"),
        (dict(sparse=True), si.UnsupportedModelError, "PowerInfer"),
        (dict(vram_budget=-1.0), ValueError, "vram_budget"),
        (dict(vram_budget=float("nan")), ValueError, "vram_budget"),
        (dict(vram_budget="6 parsecs"), ValueError, "vram_budget"),
        (dict(vram_budget="-1GiB"), ValueError, "vram_budget"),
        (dict(vram_budget="1e400GB"), ValueError, "vram_budget"),
        (dict(vram_budget=[6]), TypeError, "vram_budget"),
        (dict(n_gpu_layers=-2), ValueError, "n_gpu_layers"),
        (dict(n_gpu_layers=1.0), TypeError, "n_gpu_layers"),
    ],
)
def test_bad_model_arguments_raise_clear_errors(tiny, kwargs, error, match):
    with pytest.raises(error, match=match):
        si.Model(tiny.path, **kwargs)


@pytest.mark.parametrize("text, expected", [
    (6, 6 * 2**30), (0.5, 2**29), ("6GiB", 6 * 2**30), ("512 MiB", 512 * 2**20),
    ("8GB", 8 * 10**9), ("1.5g", 1_500_000_000), ("2", 2 * 2**30), ("100b", 100), ("0", 0),
])
def test_memory_sizes_parse_to_bytes(text, expected):
    from sparseinfer._arguments import parse_memory_size
    assert parse_memory_size("vram_budget", text) == expected


@pytest.mark.parametrize("sparse", ["auto", False])
def test_dense_models_load_with_sparse_auto_or_false(tiny, sparse):
    with si.Model(tiny.path, n_ctx=32, sparse=sparse, device="cpu") as m:
        assert m.is_sparse is False


def test_closed_model_refuses_work_and_close_is_idempotent(tiny):
    m = si.Model(tiny.path, n_ctx=32)
    with m:
        pass
    m.close()
    assert "closed" in repr(m)
    with pytest.raises(ValueError, match="closed"):
        m.generate("hello")
    with pytest.raises(ValueError, match="closed"):
        m.logits([1, 2])


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_close_unmaps_the_file(tmp_path, tiny):
    path = tmp_path / "to_close.gguf"
    path.write_bytes(open(tiny.path, "rb").read())

    def mapped() -> bool:
        with open("/proc/self/maps") as maps:
            return str(path) in maps.read()

    m = si.Model(path, n_ctx=32)
    m.generate("hello", max_tokens=2)
    assert mapped()
    m.close()
    assert not mapped()


# ---- tokens -----------------------------------------------------------------------------------

def test_tokenize_adds_bos_only_when_asked(model):
    with_bos = model.tokenize("hello world")
    without = model.tokenize("hello world", add_bos=False)
    assert with_bos == [ggufgen.BOS_ID] + without
    assert all(isinstance(t, int) for t in with_bos)


def test_detokenize_round_trips_plain_text(model):
    for text in ["hello world", "the model is a small test.", "Sparse dense, layer 42!"]:
        assert model.detokenize(model.tokenize(text)) == text


def test_detokenize_replaces_invalid_utf8(model):
    lone_byte_0xe2 = 3 + 0xE2  # <0xE2> byte token: a UTF-8 lead byte with nothing after it
    assert model.detokenize([lone_byte_0xe2]) == "\ufffd"


def test_detokenize_accepts_numpy_ids_and_rejects_floats(model):
    ids = model.tokenize("hello world")
    assert model.detokenize(np.array(ids, dtype=np.int64)) == "hello world"
    with pytest.raises(TypeError, match="tokens"):
        model.detokenize([1.5])


# ---- logits -----------------------------------------------------------------------------------

def test_logits_match_the_numpy_reference(model, tiny):
    ids = model.tokenize(PROMPT)
    logits = model.logits(ids)
    assert logits.dtype == np.float32
    assert logits.shape == (len(ids), model.n_vocab)
    expected = reference.forward(tiny, ids)
    # Loose: the forward pass's precision is pinned by its own tests; this one checks that
    # row i holds the logits after tokens[: i + 1] (rows differ from each other by O(1)).
    np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-2)


def test_logits_start_from_a_fresh_context(model):
    ids = model.tokenize(PROMPT)
    before = model.logits(ids)
    model.generate("hello world", max_tokens=5, seed=1)
    np.testing.assert_array_equal(model.logits(ids), before)


def test_logits_reject_empty_and_oversized_input(model):
    with pytest.raises(ValueError, match="empty"):
        model.logits([])
    with pytest.raises(si.ContextOverflowError, match="256"):
        model.logits([5] * 257)


# ---- generate ---------------------------------------------------------------------------------

def test_greedy_generation_follows_the_argmax_of_logits(model):
    prompt_ids = model.tokenize(PROMPT)
    expected_ids = greedy_chain(model, prompt_ids, 12)
    text = model.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
    assert text == continuation_text(model, prompt_ids, expected_ids)


def test_an_empty_prompt_continues_from_bos(model):
    expected_ids = greedy_chain(model, [ggufgen.BOS_ID], 6)
    text = model.generate("", max_tokens=6, temperature=0, ignore_eos=True)
    assert text == continuation_text(model, [ggufgen.BOS_ID], expected_ids)


def test_streamed_pieces_join_to_the_whole_text(model):
    whole = model.generate(PROMPT, max_tokens=20, temperature=0.9, seed=3, ignore_eos=True)
    pieces = list(model.generate(PROMPT, max_tokens=20, temperature=0.9, seed=3,
                                 ignore_eos=True, stream=True))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole


def test_same_seed_same_text_other_seed_other_text(model):
    def run(seed):
        return model.generate(PROMPT, max_tokens=30, temperature=1.0, top_k=0, top_p=1.0,
                              min_p=0.0, seed=seed, ignore_eos=True)
    assert run(5) == run(5)
    assert run(5) != run(6)


def test_max_tokens_zero_gives_empty_text(model):
    assert model.generate(PROMPT, max_tokens=0) == ""
    assert model.stats()["generated_tokens"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_the_text_before_it(model, stream):
    full = model.generate(PROMPT, max_tokens=24, temperature=0, ignore_eos=True)
    assert len(full) > 12
    stop = full[6:10]
    expected = full[: full.find(stop)]

    def run(stops):
        out = model.generate(PROMPT, max_tokens=24, temperature=0, ignore_eos=True,
                             stop=stops, stream=stream)
        return "".join(out) if stream else out

    assert run(stop) == expected
    assert run(["never appears \u2603", stop]) == expected
    assert run("never appears \u2603") == full


def test_end_of_generation_token_ends_the_text(tiny, tmp_path, model):
    """A copy of the model (same weights) that names a token of its own greedy output as
    end-of-turn must stop right before that token, unless ignore_eos."""
    prompt_ids = model.tokenize(PROMPT)
    chain = greedy_chain(model, prompt_ids, 10)
    cut = next(i for i in range(2, len(chain)) if chain[i] not in chain[:i] and chain[i] > 2)
    stopper = ggufgen.write_llama_model(tmp_path / "eot.gguf", n_ctx=N_CTX_TRAIN, seed=11,
                                        extra_kv={"tokenizer.ggml.eot_token_id": chain[cut]})
    with si.Model(stopper.path, n_ctx=256) as m:
        assert m.generate(PROMPT, max_tokens=10, temperature=0) == \
            continuation_text(m, prompt_ids, chain[:cut])
        assert m.stats()["generated_tokens"] == cut
        assert m.generate(PROMPT, max_tokens=10, temperature=0, ignore_eos=True) == \
            continuation_text(m, prompt_ids, chain)


def test_a_full_context_ends_generation_cleanly(tiny, model):
    n_ctx = len(model.tokenize(PROMPT)) + 10
    with si.Model(tiny.path, n_ctx=n_ctx) as m:
        text = m.generate(PROMPT, max_tokens=100, temperature=0.7, seed=1, ignore_eos=True)
        # every slot of the context is evaluated, and the last logits give one more token
        assert m.stats()["generated_tokens"] == 11
        assert isinstance(text, str)


def test_a_prompt_that_leaves_no_room_raises_context_overflow(tiny):
    with si.Model(tiny.path, n_ctx=6) as m:
        n_prompt = len(m.tokenize(PROMPT))
        assert n_prompt >= 6
        with pytest.raises(si.ContextOverflowError, match=rf"{n_prompt} tokens.*n_ctx is 6"):
            m.generate(PROMPT)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_tokens=-1), ValueError, "max_tokens"),
        (dict(max_tokens=2.0), TypeError, "max_tokens"),
        (dict(temperature=float("nan")), ValueError, "temperature"),
        (dict(top_p=0.0), ValueError, "top_p"),
        (dict(top_p=1.5), ValueError, "top_p"),
        (dict(min_p=-0.1), ValueError, "min_p"),
        (dict(repeat_penalty=0.0), ValueError, "repeat_penalty"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(stop=""), ValueError, "stop"),
        (dict(stop=[3]), TypeError, "stop"),
        (dict(stop=5), TypeError, "stop must be a str or a sequence of str, got 5"),
    ],
)
def test_bad_generate_arguments_raise_clear_errors(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model.generate(PROMPT, **kwargs)


def test_sizes_and_ids_beyond_the_engines_range_are_named(tiny, model):
    # These reached the native layer as pybind's "incompatible function arguments".
    for n_ctx in (2**64, 2**31):
        with pytest.raises(ValueError, match=r"n_ctx must be <= 2147483647"):
            si.Model(tiny.path, n_ctx=n_ctx)
    with pytest.raises(ValueError, match=r"n_ctx must be <= 2147483647"):
        model.session(n_ctx=2**40)
    with pytest.raises(ValueError, match=r"token id 1099511627776 \(at 1\) is not a valid token id"):
        model.logits([1, 2**40])
    with pytest.raises(ValueError, match=r"token id -1 \(at 0\)"):
        model.logits([-1])


def test_bad_arguments_raise_before_a_stream_starts(model):
    with pytest.raises(ValueError, match="top_p"):
        model.generate(PROMPT, top_p=2.0, stream=True)


def test_repetition_penalty_covers_prompt_and_generated_tokens(model):
    """Greedy with a penalty follows the argmax of logits() penalised over the last 64
    tokens of prompt and output (llama.cpp's rule: positive / penalty, negative * penalty)."""
    penalty = np.float32(1.8)
    prompt_ids = model.tokenize(PROMPT)
    ids = list(prompt_ids)
    for _ in range(16):
        row = model.logits(ids)[-1]
        for token in set(ids[-64:]):
            row[token] = row[token] / penalty if row[token] > 0 else row[token] * penalty
        ids.append(int(np.argmax(row)))
    text = model.generate(PROMPT, max_tokens=16, temperature=0, ignore_eos=True,
                          repeat_penalty=float(penalty))
    assert text == continuation_text(model, prompt_ids, ids[len(prompt_ids):])
    assert text != model.generate(PROMPT, max_tokens=16, temperature=0, ignore_eos=True)


def test_a_later_call_ends_an_open_stream(model):
    stream = model.generate(PROMPT, max_tokens=50, temperature=0, ignore_eos=True, stream=True)
    next(stream)
    model.generate("hello", max_tokens=3, seed=0)
    with pytest.raises(RuntimeError, match="later call"):
        list(stream)


def test_stats_report_counts_and_speeds(model):
    model.generate(PROMPT, max_tokens=7, temperature=0, ignore_eos=True)
    stats = model.stats()
    assert stats["prompt_tokens"] == len(model.tokenize(PROMPT))
    assert stats["generated_tokens"] == 7
    assert stats["prompt_seconds"] > 0 and stats["decode_seconds"] > 0
    assert math.isclose(stats["decode_tokens_per_second"], 7 / stats["decode_seconds"])
    assert math.isclose(stats["prompt_tokens_per_second"],
                        (stats["prompt_tokens"] - stats["reused_tokens"]) / stats["prompt_seconds"])
    assert stats["active_fraction"] == 1.0
    assert stats["layers"] == [1.0] * model.metadata["llama.block_count"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_mid_generation_leaves_the_model_usable(tiny):
    with si.Model(tiny.path, n_ctx=N_CTX_TRAIN) as m:
        expected = m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
        # Ctrl-C arrives while thousands of tokens are still to come (n_ctx is large).
        timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        # Python raises KeyboardInterrupt only where SIGINT was not ignored at its start,
        # and a job started with `&` in a script (as CI may start this suite) ignores it.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                for _ in m.generate(PROMPT, max_tokens=None, temperature=0.8, seed=1,
                                    ignore_eos=True, stream=True):
                    if timer.ident is None:  # not started yet
                        timer.start()
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        assert 0 < m.stats()["generated_tokens"] < N_CTX_TRAIN
        assert m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True) == expected


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_long_prompt_cancels_it(tmp_path):
    # A prompt of ~6000 tokens that takes seconds: the main thread is in native code, where
    # Python cannot run its SIGINT handler, unless the evaluation runs in a helper thread.
    path = ggufgen.write_llama_model(tmp_path / "slow.gguf", n_vocab=300, n_embd=256, n_layer=8, n_head=4,
                                     n_head_kv=2, n_ff=768, n_ctx=8192, seed=3).path
    prompt = " ".join([PROMPT] * 230)
    with si.Model(path, n_ctx=8192) as m:
        n_prompt = len(m.tokenize(prompt))
        assert n_prompt > 5000
        expected = m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in the test above
        try:
            with pytest.raises(KeyboardInterrupt):
                timer.start()
                m.generate(prompt, max_tokens=8, temperature=0, ignore_eos=True)
        finally:
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        # Cancelled, not finished first: the context holds the batches evaluated before the
        # interrupt (256 tokens each), and the figures count those only.
        stats = m.stats()
        assert 0 < stats["prompt_tokens"] < n_prompt and stats["generated_tokens"] == 0, stats
        assert m.generate(PROMPT, max_tokens=8, temperature=0, ignore_eos=True) == expected


# ---- stop strings, without a model --------------------------------------------------------------

def expected_stop_cut(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    """Generation ends with the first piece after which some stop string is in the text;
    the text is cut where the earliest of the stop strings found by then begins."""
    text = ""
    for piece in pieces:
        text += piece
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False


def test_stop_filter_cuts_like_str_find_for_any_split():
    rng = random.Random(0)
    alphabet = "ab\u00e9 "
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        expected, stopped = expected_stop_cut(pieces, stops)
        stop_filter = StopStringFilter(stops)
        emitted = []
        for piece in pieces:
            emitted.append(stop_filter.feed(piece))
            # nothing emitted so far may contain a stop string or a part that completes one
            assert expected.startswith("".join(emitted))
            if stop_filter.stopped:
                break
        emitted.append(stop_filter.flush())
        assert "".join(emitted) == expected, (text, stops, pieces)
        assert stop_filter.stopped == stopped


def test_stop_filter_without_stops_passes_text_through():
    stop_filter = StopStringFilter([])
    assert stop_filter.feed("abc") == "abc" and stop_filter.flush() == ""


def test_cancel_from_another_thread_ends_generation_and_keeps_the_model_usable(tmp_path):
    path = tmp_path / "cancel.gguf"
    ggufgen.write_llama_model(path, n_ctx=4096, seed=5)
    with si.Model(str(path), n_ctx=4096, n_threads=1) as m:
        pieces = []
        first_piece = threading.Event()

        def consume():
            for piece in m.generate("hello", max_tokens=4000, temperature=0, ignore_eos=True, stream=True):
                pieces.append(piece)
                first_piece.set()

        worker = threading.Thread(target=consume)
        worker.start()
        assert first_piece.wait(timeout=60)
        m.cancel()
        worker.join(timeout=60)
        assert not worker.is_alive()
        generated = m.stats()["generated_tokens"]
        assert 0 < generated < 4000
        # The cancelled text is a prefix of the uncancelled one, and the model still works.
        full = m.generate("hello", max_tokens=generated, temperature=0, ignore_eos=True)
        assert full == "".join(pieces)
        assert m.generate("hello", max_tokens=4, temperature=0, ignore_eos=True)


# ---- the context length: a default from the model, a warning past it, memory as it grows -------


def test_default_n_ctx_is_the_training_length_at_most_4096(tmp_path):
    import warnings

    short, long = tmp_path / "short.gguf", tmp_path / "long.gguf"
    ggufgen.write_llama_model(short, n_ctx=256, seed=1)
    ggufgen.write_llama_model(long, n_ctx=32768, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults never warn
        with si.Model(str(short), n_threads=1) as m:
            assert m.n_ctx == 256
            with m.session() as s:
                assert s.n_ctx == 256
        with si.Model(str(long), n_threads=1) as m:
            assert m.n_ctx == 4096
        with si.Model(str(long), n_ctx=32768, n_threads=1) as m:  # as trained: no warning either
            assert m.n_ctx == 32768


def test_n_ctx_beyond_the_training_length_warns_at_the_callers_line(tmp_path, monkeypatch):
    path = tmp_path / "short.gguf"
    ggufgen.write_llama_model(path, n_ctx=256, seed=1)
    with pytest.warns(si.ContextLengthWarning, match="n_ctx=1000 is beyond the 256 tokens") as caught:
        m = si.Model(str(path), n_ctx=1000, n_threads=1)
    assert caught[0].filename == __file__
    with m:
        assert m.n_ctx == 1000
        with pytest.warns(si.ContextLengthWarning, match="n_ctx=300 is beyond the 256") as caught:
            s = m.session(n_ctx=300)
        assert caught[0].filename == __file__
        s.close()
    import sparseinfer.model

    monkeypatch.setattr(sparseinfer.model._fetch, "fetch_model", lambda *args, **kwargs: path)
    with pytest.warns(si.ContextLengthWarning) as caught:  # through from_pretrained too
        si.Model.from_pretrained("org/model", n_ctx=1000, n_threads=1).close()
    assert caught[0].filename == __file__


def test_cli_warns_in_one_line_about_a_long_context(tmp_path):
    import subprocess

    path = tmp_path / "short.gguf"
    ggufgen.write_llama_model(path, n_ctx=256, seed=1)
    command = [sys.executable, "-m", "sparseinfer", "generate", "-m", str(path), "-p", "hello", "-n", "2"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and plain.stderr == ""
    longer = subprocess.run(command + ["-c", "1000"], capture_output=True, text=True, timeout=120)
    assert longer.returncode == 0
    assert longer.stderr.splitlines() == [
        f"sparseinfer: warning: n_ctx=1000 is beyond the 256 tokens {path} was trained for: "
        f"text past them may lose coherence"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_the_kv_cache_holds_memory_only_as_far_as_the_context_has_grown(tmp_path):
    """A context of 200,000 tokens on a model whose KV cache then takes 781 MiB: in a fresh
    process the resident memory grows by a few MiB, not by the cache's size."""
    import subprocess
    import textwrap

    path = tmp_path / "kv.gguf"
    ggufgen.write_llama_model(path, n_embd=256, n_head=4, n_head_kv=4, n_layer=4, n_ctx=200000, seed=1)
    script = textwrap.dedent("""
        import sys
        from sparseinfer import _core

        def resident_mib():
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * 4096 / 2**20

        model = _core.Model(sys.argv[1])
        before = resident_mib()
        session = _core.Session(model, 200000, 1, sparse=False)
        session.eval(list(range(5, 100)), all_logits=False)
        print(resident_mib() - before)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 64, f"{float(done.stdout):.0f} MiB resident for a 781 MiB cache"
