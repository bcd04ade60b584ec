"""The engine's logits checked against a float64 reference's, and evaluated in chunks (to check
that how a prompt is split changes nothing)."""

from __future__ import annotations

import numpy as np
import pytest

# The dense forward pass's tolerances (tests/model/test_forward.py says how they were set):
# weight type -> (max |diff| / std, mean |diff| / std)
DENSE_TOLERANCES = {
    "F32": (3e-4, 3e-5),
    "F16": (1e-2, 1.5e-3),
    "BF16": (6e-2, 1e-2),
    "Q8_0": (0.25, 0.035),
    "Q4_0": (0.25, 0.035),
    "Q4_1": (0.25, 0.035),
}
# quantised types: top-1 must agree wherever the reference's top-2 margin exceeds this
# (times std); llama.cpp's worst disagreement margin on these files was 0.04
ARGMAX_MARGIN = 0.15
ARGMAX_RATE = 0.85


def assert_close(got, ref, weight_type, what="", tolerances=DENSE_TOLERANCES):
    """Engine logits `got` against the reference's `ref`: max and mean |diff| within
    tolerances[weight_type] (relative to ref's std), and the same top-1 token wherever the
    reference's top two are clearly apart."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite logits"
    s = ref.std()
    d = np.abs(got - ref)
    max_tol, mean_tol = tolerances[weight_type]
    msg = (f"{what} [{weight_type}] max|diff|/std={d.max() / s:.3g} (tol {max_tol}), "
           f"mean|diff|/std={d.mean() / s:.3g} (tol {mean_tol}), worst at {np.unravel_index(d.argmax(), d.shape)}")
    assert d.max() <= max_tol * s and d.mean() <= mean_tol * s, msg
    agree = got.argmax(1) == ref.argmax(1)
    srt = np.sort(ref, axis=1)
    margin = (srt[:, -1] - srt[:, -2]) / s
    clear = margin > (ARGMAX_MARGIN if weight_type not in ("F32", "F16") else 0.01)
    assert agree[clear].all(), f"{what}: top-1 differs at clear positions {np.nonzero(clear & ~agree)[0]}"
    assert agree.mean() >= ARGMAX_RATE, f"{what}: top-1 agreement {agree.mean():.2f}"


def logits_in_chunks(session, tokens, sizes):
    """The logits of every position of `tokens`, evaluated by `session` (a native session,
    from where it stands) in chunks of the given sizes."""
    rows, start = [], 0
    for size in sizes:
        session.eval(tokens[start:start + size], all_logits=True)
        rows.append(session.logits())
        start += size
    return np.concatenate(rows)


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_kl(p_logits, q_logits):
    """Mean over positions of KL(p || q) of the softmaxes: the teacher-forced comparison with
    llama.cpp, next to its own KV-cache noise."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def llama_cpp_logits(path, tokens, f32_kv, n_ctx=128, n_threads=2):
    """llama-cpp-python's logits at every position of `tokens` on the file at path (skips the
    test where it is not installed), with an F32 KV cache or llama.cpp's default F16 one."""
    llama_cpp = pytest.importorskip("llama_cpp")
    kv = dict(type_k=0, type_v=0) if f32_kv else {}  # GGML_TYPE_F32, else llama.cpp's F16 default
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=n_threads, logits_all=True, verbose=False, **kv)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
