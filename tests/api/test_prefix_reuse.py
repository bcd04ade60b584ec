"""Reusing the context between calls: generate() and chat() evaluate only what follows the
longest prefix of the prompt already in the KV cache, and that changes no result.

It can change none because the engine is batch invariant (cpp/src/cpu/kernels.h): a token's
logits are the same bits whichever evaluation it came in, alone while decoding or inside a
prompt of any length. The first tests check that property of the engine directly, for every
weight type, dense and sparse, at every kernel level this CPU runs (kernel_check checks the
kernels one by one); the others check that a Model reuses what it can and answers exactly as
a fresh Model does.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import ggufgen
import sparsegen
from logit_checks import logits_in_chunks
from paths import SUPPORT
import sparseinfer as si
from sparseinfer import _core

N_THREADS = 2
LEVELS = _core.system_info()["available_isas"]
# Ways to cut 37 tokens into evaluations: one batch, prefix + one at a time, uneven chunks
# (a chunk of 1, tails of 1..3 after groups of four).
SPLITS = [[37], [9] + [1] * 28, [5, 8, 17, 1, 6], [1, 2, 3, 31]]


def _split_logits(path, tokens, splits, sparse):
    """For each split: the logits of every position, evaluated chunk by chunk."""
    model = _core.Model(path)
    return [logits_in_chunks(_core.Session(model, 64, N_THREADS, sparse=sparse), tokens, split)
            for split in splits]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    paths = {}
    for weight_type in ggufgen.WEIGHT_TYPES:
        path = root / f"dense-{weight_type}.gguf"
        # n_vocab 324 is no multiple of 8: the output head takes the one-row kernels (dot4 and
        # dot), the other matrices the eight-row ones (row tails: cpp/tests/kernel_check.cpp).
        ggufgen.write_llama_model(path, weight_type=weight_type, n_embd=96, n_ff=160, n_vocab=324, n_ctx=256,
                                  seed=11)
        paths["dense", weight_type] = str(path)
    for weight_type in sparsegen.SPARSE_WEIGHT_TYPES:
        path = root / f"sparse-{weight_type}.gguf"
        sparsegen.write_pwri_model(path, weight_type=weight_type, n_embd=96, n_ff=192, seed=11)
        paths["sparse", weight_type] = str(path)
    return paths


TOKENS = [int(t) for t in np.random.default_rng(5).integers(3, 320, 37)]


@pytest.mark.parametrize("level", LEVELS)
def test_logits_do_not_depend_on_how_the_tokens_were_split(level, models):
    """Each kernel level in a child process (SPARSEINFER_ISA is read once per process)."""
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        sys.path[:0] = json.loads(sys.argv[1])  # this file's folder and tests/support
        import test_prefix_reuse as t
        paths = json.loads(sys.argv[2])
        report = {}
        for key, path in paths.items():
            kind, _, weight_type = key.partition(":")
            # a PowerInfer file dense too: its gates come from the eight-row products
            sparse_modes = [True, False] if kind == "sparse" else [False]
            for sparse in sparse_modes:
                results = t._split_logits(path, t.TOKENS, t.SPLITS, sparse)
                report[f"{key} sparse={sparse}"] = [
                    float(np.abs(r - results[0]).max()) for r in results[1:]]
        print(json.dumps(report))
    """)
    env = dict(os.environ, SPARSEINFER_ISA=level)
    paths = {f"{kind}:{weight_type}": path for (kind, weight_type), path in models.items()}
    search_path = json.dumps([os.path.dirname(os.path.abspath(__file__)), SUPPORT])
    done = subprocess.run([sys.executable, "-c", script, search_path, json.dumps(paths)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == len(models) + len(sparsegen.SPARSE_WEIGHT_TYPES)
    differing = {key: diffs for key, diffs in report.items() if any(diffs)}
    assert not differing, f"{level}: logits differ between splits (max |diff| per split): {differing}"


@pytest.fixture(scope="module")
def dense_q4(models):
    return models["dense", "Q4_0"]


def _fresh_generate(path, prompt, **kwargs):
    with si.Model(path, n_ctx=128, n_threads=N_THREADS) as fresh:
        text = fresh.generate(prompt, **kwargs)
        assert fresh.stats()["reused_tokens"] == 0
        return text


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_generate_reuses_the_prompt_it_shares_and_answers_as_a_fresh_model(kind, models):
    path = models[kind, "Q4_0"]
    first = "the cat sat on the mat and then"
    second = "the cat sat on the mat and looked"
    sampled = dict(max_tokens=12, temperature=0.9, seed=3, ignore_eos=True)
    with si.Model(path, n_ctx=128, n_threads=N_THREADS) as model:
        ids = model.tokenize(first)
        a = model.generate(first, **sampled)
        assert model.stats()["reused_tokens"] == 0
        # The same prompt again: everything but its last token comes from the cache, which
        # by then also holds the 11 tokens generated and evaluated after it.
        again = model.generate(first, **sampled)
        assert model.stats()["reused_tokens"] == len(ids) - 1
        assert again == a
        # A prompt that parts from it: reused up to the first token that differs.
        b = model.generate(second, **sampled)
        ids_b = model.tokenize(second)
        common = next(i for i, (x, y) in enumerate(zip(ids, ids_b)) if x != y)
        assert model.stats()["reused_tokens"] == common
        assert model.stats()["prompt_tokens"] == len(ids_b)
        # The generated text extends the cache too: prompt + reply reuses both.
        c = model.generate(second + b, max_tokens=6, temperature=0, ignore_eos=True)
        assert model.stats()["reused_tokens"] >= len(ids_b)
    assert a == _fresh_generate(path, first, **sampled)
    assert b == _fresh_generate(path, second, **sampled)
    assert c == _fresh_generate(path, second + b, max_tokens=6, temperature=0, ignore_eos=True)


def test_prompt_speed_counts_only_the_tokens_evaluated(dense_q4):
    with si.Model(dense_q4, n_ctx=128, n_threads=N_THREADS) as model:
        model.generate("one two three four five six", max_tokens=2, temperature=0)
        model.generate("one two three four five six seven", max_tokens=2, temperature=0)
        stats = model.stats()
        evaluated = stats["prompt_tokens"] - stats["reused_tokens"]
        assert 0 < evaluated < stats["prompt_tokens"]
        assert stats["prompt_tokens_per_second"] == pytest.approx(evaluated / stats["prompt_seconds"])


def test_chat_turns_reuse_the_conversation(models):
    path = models["dense", "Q4_0"]
    conversation = [{"role": "user", "content": "Name a colour."}]
    turns = []
    with si.Model(path, n_ctx=256, n_threads=N_THREADS) as model:
        for question in ["And another?", "One more?"]:
            reply = model.chat(conversation, template="chatml", max_tokens=8, temperature=0)
            turns.append((model.stats()["reused_tokens"], reply))
            conversation = conversation + [{"role": "assistant", "content": reply},
                                           {"role": "user", "content": question}]
        reply = model.chat(conversation, template="chatml", max_tokens=8, temperature=0)
        turns.append((model.stats()["reused_tokens"], reply))
    # Each later turn reuses the turns before it (how far into the last reply depends on
    # whether its text tokenises back into the tokens generated).
    assert turns[0][0] == 0 < turns[1][0] < turns[2][0]
    with si.Model(path, n_ctx=256, n_threads=N_THREADS) as fresh:
        assert fresh.chat(conversation, template="chatml", max_tokens=8, temperature=0) == turns[2][1]


def test_logits_evaluate_everything_and_leave_a_cache_generate_reuses(dense_q4):
    with si.Model(dense_q4, n_ctx=128, n_threads=N_THREADS) as model:
        ids = model.tokenize("a b c d e f g")
        first = model.logits(ids)
        np.testing.assert_array_equal(model.logits(ids), first)  # every row: nothing reused
        assert model.stats()["reused_tokens"] == 0
        text = model.generate("a b c d e f g", max_tokens=5, temperature=0, ignore_eos=True)
        assert model.stats()["reused_tokens"] == len(ids) - 1
    assert text == _fresh_generate(dense_q4, "a b c d e f g", max_tokens=5, temperature=0, ignore_eos=True)


def test_a_full_context_then_another_prompt(dense_q4):
    """The cache holds n_ctx tokens after a generation that filled it; the next prompt keeps
    only its shared prefix and fits."""
    with si.Model(dense_q4, n_ctx=24, n_threads=N_THREADS) as model:
        model.generate("x y z", max_tokens=None, temperature=0, ignore_eos=True)
        assert model._own.native.n_past == 24
        text = model.generate("x y w", max_tokens=4, temperature=0, ignore_eos=True)
        first, second = model.tokenize("x y z"), model.tokenize("x y w")
        common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        assert model.stats()["reused_tokens"] == common > 0
    with si.Model(dense_q4, n_ctx=24, n_threads=N_THREADS) as fresh:
        assert text == fresh.generate("x y w", max_tokens=4, temperature=0, ignore_eos=True)


def test_a_cancelled_prompt_leaves_only_what_was_evaluated_before_it(slow_model_path):
    short = "hello world " * 3
    long = short + "hello world " * 165  # about a second to evaluate
    with si.Model(slow_model_path, n_ctx=4096, n_threads=1) as model:
        model.generate(short, max_tokens=2, temperature=0, ignore_eos=True)
        cached = list(model._own.cached)
        n_long = len(model.tokenize(long))
        assert 1500 < n_long < 4096
        result = []
        worker = threading.Thread(target=lambda: result.append(
            model.generate(long, max_tokens=2, temperature=0, ignore_eos=True)))
        worker.start()
        deadline = time.monotonic() + 60
        while model.stats()["prompt_tokens"] != n_long and time.monotonic() < deadline:
            time.sleep(0.001)
        model.cancel()
        worker.join(timeout=60)
        assert result == [""]
        # The shared prefix was kept, the cancelled part forgotten: cache and list agree.
        assert model._own.native.n_past == len(model._own.cached) <= len(cached)
        assert model._own.cached == cached[:len(model._own.cached)]
        text = model.generate(short + "again", max_tokens=4, temperature=0, ignore_eos=True)
        assert model.stats()["reused_tokens"] > 0
    with si.Model(slow_model_path, n_ctx=4096, n_threads=1) as fresh:
        assert text == fresh.generate(short + "again", max_tokens=4, temperature=0, ignore_eos=True)
