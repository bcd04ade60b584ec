"""The dense llama forward pass against the NumPy float64 reference
(tests/support/reference.py).

Models are tiny random llama GGUF files built in tmp_path by tests/support/ggufgen.py; the
reference runs over the exact weights the file holds (after quantisation round trips).

Tolerances are relative to the reference logits' standard deviation (about 3 here) and were
set at roughly 3x the error llama.cpp itself (llama-cpp-python 0.3.36, F16 KV cache) shows
on the same files against the same reference: the engine may round activations (F16/BF16
inputs for 16-bit weights, Q8 blocks for quantised weights) the way ggml does, but must not
be less accurate than that. F32 is held tighter: the reference rounds K and V to IEEE half
as they enter the KV cache (the engine's cache is F16, as llama.cpp's default), and nothing
else is rounded for F32 weights, so a float32 engine lands within ~1e-5 (llama.cpp with an
F32 cache against the exact reference: 1.2e-6).
"""

from __future__ import annotations

import numpy as np
import pytest

import ggufgen
import reference
from logit_checks import DENSE_TOLERANCES, assert_close

import sparseinfer
from sparseinfer import errors

N_THREADS = 2
# the engine's KV cache holds IEEE half floats (K after RoPE, V)
KV_F16 = True


def ref_forward(w, tokens):
    return reference.forward(w, tokens, kv_f16=KV_F16)


def engine_logits(path, tokens, n_ctx=128, n_threads=N_THREADS):
    m = sparseinfer.Model(str(path), n_ctx=n_ctx, n_threads=n_threads)
    out = m.logits(tokens)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float32
    assert out.shape == (len(tokens), m.n_vocab)
    return out


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_type", ggufgen.WEIGHT_TYPES)
def test_logits_match_reference(tmp_path, weight_type):
    p = tmp_path / f"m_{weight_type}.gguf"
    w = ggufgen.write_llama_model(p, weight_type=weight_type, seed=1)
    toks = ggufgen.random_tokens(40, seed=1)
    ref = ref_forward(w, toks)
    got = engine_logits(p, toks)
    assert_close(got, ref, weight_type, "prompt of 40")


@pytest.mark.parametrize("weight_type", ["F32", "Q8_0", "Q4_0"])
def test_single_token(tmp_path, weight_type):
    """A one-token prompt: attention over a single position (softmax of one)."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type=weight_type, seed=2)
    for t in (ggufgen.BOS_ID, 300):
        assert_close(engine_logits(p, [t]), ref_forward(w, [t]), weight_type, f"token {t}")


@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q4_1"])
def test_threads_bitwise_identical(tmp_path, weight_type):
    p = tmp_path / "m.gguf"
    ggufgen.write_llama_model(p, weight_type=weight_type, seed=3)
    toks = ggufgen.random_tokens(33, seed=3)
    a = engine_logits(p, toks, n_threads=1)
    b = engine_logits(p, toks, n_threads=2)
    c = engine_logits(p, toks, n_threads=3)  # more threads than this machine's cores, uneven split
    assert np.array_equal(a, b), f"1 vs 2 threads differ by {np.abs(a - b).max()}"
    assert np.array_equal(a, c), f"1 vs 3 threads differ by {np.abs(a - c).max()}"
    # and a second run is the same too
    assert np.array_equal(a, engine_logits(p, toks, n_threads=1))


@pytest.mark.parametrize("weight_type", ["F32", "Q8_0"])
def test_kv_cache_incremental(tmp_path, weight_type):
    """Prompt at once == prefix + token by token + chunks (KV cache), and both == reference."""
    from sparseinfer import _core

    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type=weight_type, seed=4)
    toks = ggufgen.random_tokens(30, seed=4)
    ref = ref_forward(w, toks)
    full = engine_logits(p, toks)

    cm = _core.Model(str(p))
    s = _core.Session(cm, 64, N_THREADS)
    rows = []
    s.eval(toks[:9], all_logits=True)
    rows.append(s.logits())
    assert rows[0].shape == (9, w.hparams["n_vocab"])
    assert s.n_past == 9
    for t in toks[9:20]:
        s.eval([t])
        lg = s.logits()
        assert lg.shape == (1, w.hparams["n_vocab"])
        rows.append(lg)
    s.eval(toks[20:27], all_logits=True)
    rows.append(s.logits())
    s.eval(toks[27:30], all_logits=False)  # only the last row comes back
    last = s.logits()
    assert last.shape == (1, w.hparams["n_vocab"])
    rows.append(np.full((2, w.hparams["n_vocab"]), np.nan, np.float32))
    rows.append(last)
    assert s.n_past == 30
    inc = np.concatenate(rows)

    mask = np.ones(30, bool)
    mask[27:29] = False
    assert_close(inc[mask], ref[mask], weight_type, "incremental vs reference")
    # incremental vs all-at-once: the same engine, so much closer than either to the reference
    s_ref = ref.std()
    assert np.abs(inc[mask] - full[mask]).max() <= DENSE_TOLERANCES[weight_type][0] * s_ref

    # truncate: roll back to 12 and re-evaluate the same tokens
    s.truncate(12)
    assert s.n_past == 12
    s.eval(toks[12:16], all_logits=True)
    again = s.logits()
    assert_close(again, ref[12:16], weight_type, "after truncate")

    # reset: a fresh sequence gives the first chunk again, bit for bit
    s.reset()
    assert s.n_past == 0
    s.eval(toks[:9], all_logits=True)
    assert np.array_equal(s.logits(), rows[0])


def test_generate_greedy_matches_reference(tmp_path):
    """generate(temperature=0) follows the reference's argmax chain (F32: no near-ties)."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type="F32", seed=5)
    m = sparseinfer.Model(str(p), n_ctx=128, n_threads=N_THREADS)
    prompt = "hello world the model"
    ptoks = m.tokenize(prompt)
    assert ptoks[0] == ggufgen.BOS_ID
    n = 16
    exp = reference.greedy(w, ptoks, n, kv_f16=KV_F16)
    # check the chain has no near-ties, else the test itself would be fragile
    ref = ref_forward(w, ptoks + exp[:-1])
    srt = np.sort(ref[len(ptoks) - 1:], axis=1)
    assert ((srt[:, -1] - srt[:, -2]) > 1e-3 * ref.std()).all()
    text = m.generate(prompt, max_tokens=n, temperature=0, ignore_eos=True)
    assert isinstance(text, str)
    assert text == m.detokenize(exp), (text, exp)


@pytest.mark.parametrize("n_head_kv", [4, 2, 1])
def test_gqa_variants(tmp_path, n_head_kv):
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, n_head=4, n_head_kv=n_head_kv, seed=6)
    toks = ggufgen.random_tokens(24, seed=6)
    assert_close(engine_logits(p, toks), ref_forward(w, toks), "F32", f"n_head_kv={n_head_kv}")


@pytest.mark.parametrize("weight_type", ["F32", "Q4_0"])
def test_tied_embeddings(tmp_path, weight_type):
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type=weight_type, tie_embeddings=True, seed=7)
    assert "output.weight" not in w
    toks = ggufgen.random_tokens(24, seed=7)
    assert_close(engine_logits(p, toks), ref_forward(w, toks), weight_type, "tied")


def test_mixed_types(tmp_path):
    """Q4_0 layers with an F16 embedding and a Q8_0 output (as real files mix types)."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type="Q4_0", embd_type="F16", output_type="Q8_0", seed=8)
    toks = ggufgen.random_tokens(24, seed=8)
    assert_close(engine_logits(p, toks), ref_forward(w, toks), "Q4_0", "mixed")


def test_other_shapes(tmp_path):
    """Another geometry: head_dim 32, 3 layers, wider FFN, rope base 500 and a large eps
    (0.05: an engine that ignores the file's eps is off by ~1e-2 here)."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, n_embd=128, n_head=4, n_head_kv=2, n_layer=3, n_ff=160,
                                  rope_base=500.0, rms_eps=0.05, n_vocab=300, seed=9)
    toks = ggufgen.random_tokens(20, seed=9, n_vocab=300)
    assert_close(engine_logits(p, toks), ref_forward(w, toks), "F32", "other shapes")


def test_partial_rope(tmp_path):
    """rope.dimension_count < head_dim: only the first rope_dim dims of each head rotate.
    (llama.cpp refuses such llama files; the engine must either be right or refuse.)"""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, rope_dim=8, seed=10)
    toks = ggufgen.random_tokens(24, seed=10)
    try:
        got = engine_logits(p, toks)
    except errors.UnsupportedModelError as e:
        assert str(p) in str(e)
        return
    assert_close(got, ref_forward(w, toks), "F32", "rope_dim=8")


def test_full_context(tmp_path):
    """Exactly n_ctx tokens (the file's context, 128): the last position sees them all."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type="F32", n_ctx=128, seed=11)
    toks = ggufgen.random_tokens(128, seed=11)
    got = engine_logits(p, toks, n_ctx=128)
    ref = ref_forward(w, toks)
    assert_close(got, ref, "F32", "128 tokens")


def test_long_prompt_batches(tmp_path):
    """A 300-token prompt: longer than one internal batch (the engine evaluates prompts in
    chunks), so later chunks must attend to the earlier ones through the cache."""
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, weight_type="Q8_0", n_ctx=512, seed=16)
    toks = ggufgen.random_tokens(300, seed=16)
    got = engine_logits(p, toks, n_ctx=512)
    assert_close(got, ref_forward(w, toks), "Q8_0", "300 tokens")


def test_context_overflow(tmp_path):
    p = tmp_path / "m.gguf"
    ggufgen.write_llama_model(p, seed=12)
    m = sparseinfer.Model(str(p), n_ctx=32, n_threads=N_THREADS)
    with pytest.raises(errors.ContextOverflowError):
        m.logits(ggufgen.random_tokens(33, seed=12))
    assert issubclass(errors.ContextOverflowError, ValueError)
    # exactly n_ctx is fine
    assert m.logits(ggufgen.random_tokens(32, seed=12)).shape == (32, 320)

    from sparseinfer import _core

    s = _core.Session(_core.Model(str(p)), 16, 1)
    s.eval(ggufgen.random_tokens(10))
    with pytest.raises(errors.ContextOverflowError):
        s.eval(list(range(3, 10)))  # 10 + 7 > 16
    s.eval(list(range(3, 9)))  # 10 + 6 == 16 still fits
    assert s.n_past == 16
    with pytest.raises(errors.ContextOverflowError):
        s.eval([5])


def test_bad_token_ids(tmp_path):
    p = tmp_path / "m.gguf"
    ggufgen.write_llama_model(p, seed=13)
    m = sparseinfer.Model(str(p), n_ctx=32, n_threads=1)
    for bad in ([1, 320], [1, -1], [10**9]):
        with pytest.raises(ValueError):
            m.logits(bad)


def test_relu_reference_differs_from_silu(tmp_path):
    """The ReLU variant of the reference is a different function (sanity of the oracle)."""
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", seed=14)
    toks = ggufgen.random_tokens(10, seed=14)
    a = reference.forward(w, toks, dict(w.hparams, activation="silu"))
    b = reference.forward(w, toks, dict(w.hparams, activation="relu"))
    assert np.abs(a - b).max() > 0.1 * a.std()


# ---------------------------------------------------------------------------------------
# The oracle's own check: the reference reproduces llama.cpp on the same files


@pytest.mark.parametrize("kw", [dict(), dict(n_head_kv=1), dict(tie_embeddings=True),
                                dict(rope_base=500.0, seed=3)], ids=["gqa2", "gqa1", "tied", "base500"])
def test_reference_matches_llama_cpp(tmp_path, kw):
    llama_cpp = pytest.importorskip("llama_cpp")
    p = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(p, **kw)
    toks = ggufgen.random_tokens(40, seed=15)
    # F32 KV cache (type 0 = GGML_TYPE_F32) so that nothing is rounded on llama.cpp's side
    llm = llama_cpp.Llama(str(p), n_ctx=128, n_threads=N_THREADS, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(toks)
    got = np.array(llm.scores[: len(toks)], dtype=np.float64)
    ref = reference.forward(w, toks, kv_f16=False)
    assert np.abs(got - ref).max() <= 2e-5 * ref.std()
