"""The sparse (PowerInfer) FFN path against NumPy oracles.

Models are tiny PowerInfer files (magic PWRI) built by tests/support/sparsegen.py; the
oracle is tests/support/sparse_reference.py, a float64 model that applies the predictor's mask
the way FACTS.md says (score = fc2 relu(fc1 ffn_inp) >= threshold; relu(gate) * up, or
relu(gate) * relu(up) for bamboo; down projection from ffn_down_t) and rounds what the
engine rounds (8-bit block inputs for quantised weights, the IEEE-half KV cache), so that its
scores, and with them its masks, sit within float32 noise of the engine's.

Tolerances (relative to the reference logits' std, about 3):
  F32, F16: the emulating reference lands within ~1e-5 of the engine; 1e-3 leaves room for
    a K/V element rounding to the other neighbouring half. Masks are compared exactly,
    after checking that no score lies within 3e-5 std of the threshold.
  Q8_0, Q4_0: one activation that rounds to the other neighbouring Q8 step moves every
    later score a little, so a few near-threshold neurons may flip and logits move by a
    few percent: the dense tests' tolerances (max 0.25, mean 0.035, top-1 agreement), and
    active fractions within 0.01 of the reference's.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import numpy as np
import pytest

import ggufgen
import logit_checks
import sparse_reference as sref
import sparsegen

import sparseinfer
from sparseinfer import _core

N_THREADS = 2
N_CTX = 64
TOL = {  # weight type -> (max |diff| / std, mean |diff| / std)
    "F32": (1e-3, 1e-4),
    "F16": (1e-3, 1e-4),
    "Q8_0": (0.25, 0.035),
    "Q4_0": (0.25, 0.035),
}
# The reference quantises activations as the engine does for every quantised type (the
# masks agree exactly): Q8_0's tolerances cover the float rounding left.
MORE_TYPES = ("Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ4_NL")
TOL.update({t: TOL["Q8_0"] for t in MORE_TYPES})
QUANTISED = ("Q8_0", "Q4_0") + MORE_TYPES
FRACTION_TOL = {"F32": 1e-12, "F16": 1e-12, **{t: 0.01 for t in QUANTISED}}
MIN_MARGIN = 3e-5  # no score this close (x std) to the threshold in exact-mask tests
# the dense tests' logit check with these tolerances
assert_close = functools.partial(logit_checks.assert_close, tolerances=TOL)


def run_engine(path, tokens, *, sparse="auto", n_threads=N_THREADS, n_ctx=N_CTX):
    """(logits, stats, is_sparse) of one logits() call through the public API."""
    m = sparseinfer.Model(str(path), n_ctx=n_ctx, n_threads=n_threads, sparse=sparse, predictor_q8=False)
    try:
        out = m.logits(tokens)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (len(tokens), m.n_vocab)
        return out, m.stats(), m.is_sparse
    finally:
        m.close()


def assert_fractions(stats, ref: sref.SparseReference, weight_type, what=""):
    layers = stats["layers"]
    assert len(layers) == ref.n_layer, f"{what}: {len(layers)} layer fractions for {ref.n_layer} layers"
    tol = FRACTION_TOL[weight_type]
    want = ref.layer_fractions()
    assert np.allclose(layers, want, rtol=0, atol=tol), f"{what}: layers {layers} vs reference {want}"
    assert abs(stats["active_fraction"] - ref.active_fraction()) <= tol, (
        f"{what}: active_fraction {stats['active_fraction']} vs reference {ref.active_fraction()}")


def check_against_reference(w, toks, weight_type, *, sparse=True, what=""):
    """Engine logits and stats for w's file against the reference; returns both logits."""
    ref = sref.SparseReference(w, sparse=sparse)
    want = ref.eval(toks)
    if sparse and weight_type not in QUANTISED:
        assert ref.threshold_margin() > MIN_MARGIN, "test model has a score at the threshold: change the seed"
    got, stats, is_sparse = run_engine(w.path, toks, sparse=sparse)
    assert is_sparse == sparse
    assert_close(got, want, weight_type, what)
    assert_fractions(stats, ref, weight_type, what)
    return got, want, ref


# ---- 1. exact predictor: sparse == dense ReLU -------------------------------------------


@pytest.mark.parametrize("weight_type", ["F32", "F16"])
def test_exact_predictor_sparse_equals_dense(tmp_path, weight_type):
    w = sparsegen.write_pwri_model(tmp_path / "exact.gguf", predictor="exact", rank=16,
                                   weight_type=weight_type, seed=1)
    toks = ggufgen.random_tokens(24, seed=1)
    # The oracle itself: the predictor marks exactly the neurons with gate pre-activation
    # >= 0, up to neurons whose gate is ~0 (F16 rounds gate and predictor apart).
    ref = sref.SparseReference(w, sparse=True)
    ref.eval(toks)
    for mask, g in zip(ref.masks, ref.gates):
        off = mask != (g >= 0)
        assert not off.any() if weight_type == "F32" else np.abs(g[off]).max(initial=0) < 2e-3
        assert 0.3 < mask.mean() < 0.7
    dense_ref = sref.forward(w, toks, sparse=False)

    sparse_out, stats, is_sparse = run_engine(w.path, toks, sparse=True)
    dense_out, dstats, is_dense_sparse = run_engine(w.path, toks, sparse=False)
    assert is_sparse and not is_dense_sparse
    s = dense_ref.std()
    d = np.abs(sparse_out.astype(np.float64) - dense_out).max() / s
    # F32: only neurons with |gate| ~ 1e-7 can differ, and the two paths' dot kernels sum in
    # different orders (a K/V value may then round to the other neighbouring half: ~1e-5
    # seen); F16: neurons with |gate| < 2e-3 (~1e-3 seen). One wrongly dropped neuron
    # with a typical gate moves logits by ~1e-2.
    assert d <= (1e-4 if weight_type == "F32" else 3e-3), f"sparse vs dense engine: max|diff|/std = {d:.3g}"
    assert_close(sparse_out, dense_ref, weight_type, "sparse vs dense ReLU reference")
    assert_close(dense_out, dense_ref, weight_type, "dense vs dense ReLU reference")
    assert_fractions(stats, ref, weight_type, "exact predictor")
    assert dstats["active_fraction"] == 1.0 and dstats["layers"] == [1.0] * w.hparams["n_layer"]


# ---- 2. random predictor: the mask matters ----------------------------------------------


@pytest.mark.parametrize("weight_type,pred_type", [
    ("F32", "F32"), ("F16", "F16"), ("Q8_0", "Q8_0"), ("Q4_0", "Q4_0"), ("Q4_0", "F16"),
])
def test_random_predictor_matches_reference(tmp_path, weight_type, pred_type):
    w = sparsegen.write_pwri_model(tmp_path / "rand.gguf", predictor="random", weight_type=weight_type,
                                   pred_type=pred_type, threshold=0.15, seed=4)
    toks = ggufgen.random_tokens(24, seed=4)
    got, want, ref = check_against_reference(w, toks, weight_type, what="random predictor")
    assert 0.25 < ref.active_fraction() < 0.5
    # the mask must matter: the dense ReLU result is far from the sparse one
    dense = sref.forward(w, toks, sparse=False)
    assert np.abs(dense - want).max() > 0.5 * want.std()


@pytest.mark.parametrize("weight_type,pred_type,seed", [
    ("Q5_0", "Q5_0", 8), ("Q5_1", "Q5_1", 6), ("Q2_K", "F16", 4), ("Q3_K", "F16", 5), ("Q4_K", "F16", 4),
    ("Q5_K", "F16", 7), ("Q6_K", "F16", 5), ("IQ4_XS", "F16", 4), ("IQ4_NL", "IQ4_NL", 4),
])
def test_more_types_run_sparse(tmp_path, weight_type, pred_type, seed):
    # PowerInfer files in the 5-bit, K-quant and IQ4 types (K-quant rows are whole blocks of
    # 256: n_embd 256; fc2's rows are the predictor's rank, 32, so the K-quant files keep their
    # predictors in F16, as PowerInfer's converter does): the gathered dots and axpys of each.
    # A score within ~3e-4 std of the threshold can flip its neuron when an activation value
    # rounds to the other side of a quantisation step: each seed gives a model whose masks
    # agree (measured on x86 for seeds 4-8; most seeds do).
    w = sparsegen.write_pwri_model(tmp_path / "more.gguf", predictor="random", weight_type=weight_type,
                                   pred_type=pred_type, n_embd=256, n_ff=256, threshold=0.15, seed=seed)
    toks = ggufgen.random_tokens(24, seed=seed)
    got, want, ref = check_against_reference(w, toks, weight_type, what=f"{weight_type} sparse")
    assert 0.2 < ref.active_fraction() < 0.6
    dense = sref.forward(w, toks, sparse=False)
    assert np.abs(dense - want).max() > 0.5 * want.std()


# ---- 3. bamboo: relu(gate) * relu(up) -----------------------------------------------------


@pytest.mark.parametrize("weight_type", ["F32", "Q4_0"])
@pytest.mark.parametrize("sparse", [True, False])
def test_bamboo(tmp_path, weight_type, sparse):
    w = sparsegen.write_pwri_model(tmp_path / "bamboo.gguf", arch="bamboo", weight_type=weight_type, seed=5)
    assert w.hparams["relu_up"]
    toks = ggufgen.random_tokens(20, seed=5)
    got, want, _ = check_against_reference(w, toks, weight_type, sparse=sparse, what="bamboo")
    # and the llama rule (up without relu) would be clearly different
    as_llama = sref.SparseReference(w, sparse=sparse)
    as_llama.relu_up = False
    assert np.abs(as_llama.eval(toks) - want).max() > 0.3 * want.std()


# ---- 4. the threshold comes from the metadata -------------------------------------------


def test_threshold_from_metadata(tmp_path):
    raw = sparsegen.make_sparse_weights(seed=4, zero_pred_rows=8)
    toks = ggufgen.random_tokens(20, seed=4)
    fractions = {}
    for thr in (None, 0.3, -0.2):
        w = sparsegen.write_pwri_model(tmp_path / f"t{thr}.gguf", raw=raw, threshold=thr)
        got, want, ref = check_against_reference(w, toks, "F32", what=f"threshold {thr}")
        fractions[thr] = ref.active_fraction()
        m = sparseinfer.Model(w.path, n_ctx=N_CTX, n_threads=N_THREADS, predictor_q8=False)
        if thr is None:
            assert "powerinfer.sparse_threshold" not in m.metadata
        else:
            assert m.metadata["powerinfer.sparse_threshold"] == pytest.approx(thr)
        m.close()
        # neurons 0..7 score exactly 0: active at threshold 0 ("score >= threshold")
        zero_active = np.concatenate([mk[:, :8] for mk in ref.masks])
        assert zero_active.all() if thr in (None, -0.2) else not zero_active.any()
    assert fractions[0.3] < fractions[None] < fractions[-0.2]


# ---- 5. KV cache: prompt at once == token by token -------------------------------------


@pytest.mark.parametrize("weight_type", ["F32", "Q4_0"])
def test_incremental_equals_batch(tmp_path, weight_type):
    w = sparsegen.write_pwri_model(tmp_path / "inc.gguf", weight_type=weight_type, threshold=0.1, seed=5)
    toks = ggufgen.random_tokens(24, seed=5)
    model = _core.Model(w.path, predictor_q8=False)

    s = _core.Session(model, N_CTX, N_THREADS, sparse=True)
    assert s.sparse
    s.eval(toks, all_logits=True)
    full = s.logits().astype(np.float64)
    full_fracs = s.active_fractions()

    s.reset()
    s.reset_stats()
    rows = []
    s.eval(toks[:7], all_logits=True)
    rows.append(s.logits())
    for t in toks[7:]:
        s.eval([t], all_logits=True)
        rows.append(s.logits())
    inc = np.concatenate(rows).astype(np.float64)
    # per-token masks: the fractions accumulated over the pieces since reset_stats() equal
    # the whole's (up to a near-threshold flip for quantised types)
    assert np.allclose(s.active_fractions(), full_fracs, atol=FRACTION_TOL[weight_type])

    ref = sref.SparseReference(w)
    want = ref.eval(toks[:7])
    want = np.concatenate([want] + [ref.eval([t]) for t in toks[7:]])
    assert_close(inc, want, weight_type, "token by token vs reference")
    assert_close(full, want, weight_type, "all at once vs reference (token by token)")
    # one engine, two paths (batched and one-token kernels sum in different orders, and the
    # half KV cache can round a value either way): within the reference tolerance
    assert np.abs(inc - full).max() <= TOL[weight_type][0] * want.std()


def test_prompt_longer_than_a_batch(tmp_path):
    """300 tokens: the engine evaluates them in more than one batch; masks stay per token."""
    w = sparsegen.write_pwri_model(tmp_path / "long.gguf", n_ctx=512, seed=6)
    toks = ggufgen.random_tokens(300, seed=6)
    ref = sref.SparseReference(w)
    want = ref.eval(toks)
    got, stats, _ = run_engine(w.path, toks, n_ctx=320)
    assert_close(got, want, "F32", "300-token prompt")
    if ref.threshold_margin() > MIN_MARGIN:
        assert_fractions(stats, ref, "F32")


def test_generate_greedy_follows_reference(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "gen.gguf", threshold=0.1, seed=7)
    m = sparseinfer.Model(w.path, n_ctx=N_CTX, n_threads=N_THREADS, predictor_q8=False)
    assert m.is_sparse
    prompt = "hello world the model"
    ptoks = m.tokenize(prompt)
    exp, gap = sref.greedy(w, ptoks, 12)
    assert gap > 1e-3, "near-tie in the reference chain: change the seed"
    text = m.generate(prompt, max_tokens=12, temperature=0, ignore_eos=True)
    assert text == m.detokenize(ptoks + exp)[len(m.detokenize(ptoks)):], (text, exp)
    m.close()


def test_predictor_rank_per_layer(tmp_path):
    """The rank is read from fc1's shape and may differ between layers."""
    w = sparsegen.write_pwri_model(tmp_path / "ranks.gguf", rank=[32, 96, 64], n_layer=3,
                                   weight_type="F16", seed=8)
    assert w.hparams["ranks"] == [32, 96, 64]
    check_against_reference(w, ggufgen.random_tokens(16, seed=8), "F16", what="per-layer ranks")


# ---- 6. the sparse flag ------------------------------------------------------------------


def test_sparse_flag(tmp_path):
    dense = ggufgen.write_llama_model(tmp_path / "dense.gguf", seed=9)
    with pytest.raises((sparseinfer.errors.UnsupportedModelError, ValueError)):
        sparseinfer.Model(dense.path, n_ctx=N_CTX, sparse=True)
    with sparseinfer.Model(dense.path, n_ctx=N_CTX) as m:
        assert not m.is_sparse
        m.logits([1, 5, 9])
        assert m.stats()["active_fraction"] == 1.0

    w = sparsegen.write_pwri_model(tmp_path / "pwri.gguf", weight_type="F16", seed=9)
    toks = ggufgen.random_tokens(16, seed=9)
    for sparse in ("auto", True):
        with sparseinfer.Model(w.path, n_ctx=N_CTX, sparse=sparse, predictor_q8=False) as m:
            assert m.is_sparse
    # sparse=False on a PowerInfer file: dense ReLU over every neuron
    got, stats, is_sparse = run_engine(w.path, toks, sparse=False)
    assert not is_sparse
    assert_close(got, sref.forward(w, toks, sparse=False), "F16", "sparse=False")
    assert stats["active_fraction"] == 1.0
    assert stats["layers"] == [1.0] * w.hparams["n_layer"]


def test_pwri_tensors_under_gguf_magic_is_an_error(tmp_path):
    """Sparse inference is keyed on the magic: the same tensors in a plain GGUF file are a
    llama file without ffn_down, which must be refused with an error, not a crash."""
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", magic=sparsegen.GGUF_MAGIC, seed=10)
    assert sparsegen.read_magic(w.path) == b"GGUF"
    with pytest.raises((ValueError, OSError)):
        sparseinfer.Model(w.path, n_ctx=N_CTX)


# ---- 7. every ISA level, and the threshold override, in fresh processes -----------------

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from sparseinfer import _core
    path, out, toks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    s = _core.Session(_core.Model(path, predictor_q8=False), 64, 2, sparse=True)
    s.eval(toks, all_logits=True)
    np.save(out, s.logits())
    print(json.dumps({"isa": _core.system_info()["isa"], "layers": s.active_fractions()}))
""")


def run_child(path, toks, out, **env):
    e = dict(os.environ)
    for k in ("SPARSEINFER_ISA", "LLAMA_SPARSE_PRED_THRESHOLD"):
        e.pop(k, None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out), json.dumps(toks)],
                       env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return np.load(out).astype(np.float64), json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("weight_type", ["F32", "Q4_0"])
def test_isa_levels_agree(tmp_path, weight_type):
    w = sparsegen.write_pwri_model(tmp_path / "isa.gguf", weight_type=weight_type, threshold=0.1, seed=5)
    toks = ggufgen.random_tokens(20, seed=5)
    want = sref.SparseReference(w)
    want_logits = want.eval(toks)
    base, info = run_child(w.path, toks, tmp_path / "generic.npy", SPARSEINFER_ISA="generic")
    assert info["isa"] == "generic"
    levels = [lv for lv in _core.system_info()["available_isas"] if lv != "generic"]
    results = {"default": run_child(w.path, toks, tmp_path / "default.npy")}
    for lv in levels:
        results[lv] = run_child(w.path, toks, tmp_path / f"{lv}.npy", SPARSEINFER_ISA=lv)
    assert_close(base, want_logits, weight_type, "generic vs reference")
    for name, (got, got_info) in results.items():
        assert_close(got, base, weight_type, f"{name} ({got_info['isa']}) vs generic")
        assert np.allclose(got_info["layers"], info["layers"], atol=FRACTION_TOL[weight_type], rtol=0)


_THRESHOLD_CHILD = textwrap.dedent("""
    import json, sys
    import sparseinfer as si
    path, toks = sys.argv[1], json.loads(sys.argv[2])
    try:
        with si.Model(path, n_ctx=64, n_threads=2, predictor_q8=False) as m:
            print(json.dumps({"threshold": m.sparse_threshold, "logits": m.logits(toks).tolist()}))
    except ValueError as error:
        print(json.dumps({"error": str(error)}))
""")


def _threshold_in_child(path, toks, variable):
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_SPARSE_PRED_THRESHOLD"}
    if variable is not None:
        env["LLAMA_SPARSE_PRED_THRESHOLD"] = variable
    r = subprocess.run([sys.executable, "-c", _THRESHOLD_CHILD, str(path), json.dumps(toks)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_threshold_option_then_powerinfer_variable_then_the_file(tmp_path):
    """sparse_threshold=X replaces the file's threshold; without it PowerInfer's variable
    LLAMA_SPARSE_PRED_THRESHOLD does, read by the Python front (not the native loader)."""
    raw = sparsegen.make_sparse_weights(seed=12)
    toks = ggufgen.random_tokens(16, seed=12)
    w0 = sparsegen.write_pwri_model(tmp_path / "t0.gguf", raw=raw)
    w3 = sparsegen.write_pwri_model(tmp_path / "t3.gguf", raw=raw, threshold=0.3)
    want = sref.SparseReference(w3)
    want_logits = want.eval(toks)
    with sparseinfer.Model(w0.path, n_ctx=64, n_threads=2, predictor_q8=False, sparse_threshold=0.3) as m:
        assert m.sparse_threshold == pytest.approx(0.3)
        explicit = m.logits(toks)
        assert np.allclose(m.stats()["layers"], want.layer_fractions(), atol=1e-12, rtol=0)
    assert_close(explicit.astype(np.float64), want_logits, "F32", "sparse_threshold=0.3")
    by_variable = _threshold_in_child(w0.path, toks, "0.3")
    assert by_variable["threshold"] == pytest.approx(0.3)
    np.testing.assert_array_equal(np.array(by_variable["logits"], dtype=np.float32), explicit)
    assert _threshold_in_child(w3.path, toks, None)["threshold"] == pytest.approx(0.3)  # the file's
    assert _threshold_in_child(w3.path, toks, "0")["threshold"] == 0.0  # the variable over the file's
    # The native loader itself reads no environment variable.
    with mock.patch.dict(os.environ, {"LLAMA_SPARSE_PRED_THRESHOLD": "0.3"}):
        assert _core.Model(str(w0.path), predictor_q8=False).sparse_threshold == 0.0
    bad = _threshold_in_child(w0.path, toks, "abc")["error"]
    assert bad == "the environment variable LLAMA_SPARSE_PRED_THRESHOLD='abc' is not a finite number"


def test_a_threshold_for_a_file_without_predictors_or_not_finite_is_refused(tmp_path):
    dense = tmp_path / "dense.gguf"
    ggufgen.write_llama_model(dense, seed=1)
    with pytest.raises(ValueError, match="sparse_threshold applies to PowerInfer files"):
        sparseinfer.Model(str(dense), n_ctx=32, sparse_threshold=0.1)
    with mock.patch.dict(os.environ, {"LLAMA_SPARSE_PRED_THRESHOLD": "0.3"}):  # not PowerInfer's: ignored
        with sparseinfer.Model(str(dense), n_ctx=32) as m:
            assert m.sparse_threshold is None
    w = sparsegen.write_pwri_model(tmp_path / "s.gguf", seed=1)
    for value, error in [(float("nan"), ValueError), (float("inf"), ValueError), ("0.1", TypeError)]:
        with pytest.raises(error, match="sparse_threshold must be a"):
            sparseinfer.Model(w.path, n_ctx=32, sparse_threshold=value)
    with pytest.raises(ValueError, match="sparse_threshold must be a finite number"):
        _core.Model(w.path, sparse_threshold=1e300)  # inf as the engine's float


# ---- 8. determinism -----------------------------------------------------------------------


@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q4_0"])
@pytest.mark.parametrize("sparse", [True, False])
def test_deterministic_across_runs_and_threads(tmp_path, weight_type, sparse):
    w = sparsegen.write_pwri_model(tmp_path / "det.gguf", weight_type=weight_type, seed=13)
    toks = ggufgen.random_tokens(24, seed=13)
    a, sa, is_sparse = run_engine(w.path, toks, sparse=sparse, n_threads=1)
    assert is_sparse == sparse
    b, sb, _ = run_engine(w.path, toks, sparse=sparse, n_threads=2)
    c, sc, _ = run_engine(w.path, toks, sparse=sparse, n_threads=3)  # more threads than cores, uneven split
    a2, _, _ = run_engine(w.path, toks, sparse=sparse, n_threads=1)
    b2, _, _ = run_engine(w.path, toks, sparse=sparse, n_threads=2)
    assert np.array_equal(a, a2), "two runs with 1 thread differ"
    assert np.array_equal(b, b2), "two runs with 2 threads differ"
    assert np.array_equal(a, b), f"1 vs 2 threads differ by {np.abs(a - b).max()}"
    assert np.array_equal(a, c), f"1 vs 3 threads differ by {np.abs(a - c).max()}"
    assert sa["layers"] == sb["layers"] == sc["layers"]
    # and the one-token (decode) path
    model = _core.Model(w.path, predictor_q8=False)
    rows = {}
    for nt in (1, 2, 3):
        s = _core.Session(model, N_CTX, nt, sparse=sparse)
        s.eval(toks[:4], all_logits=False)
        rows[nt] = []
        for t in toks[4:12]:
            s.eval([t], all_logits=False)
            rows[nt].append(s.logits())
        rows[nt] = np.concatenate(rows[nt])
    assert np.array_equal(rows[1], rows[2]) and np.array_equal(rows[1], rows[3]), "decode differs by thread count"


# ---- the builders themselves (no engine) -------------------------------------------------


def test_builder_writes_powerinfer_layout(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", weight_type="Q4_0", pred_type="F16",
                                   threshold=0.25, rank=[32, 64], seed=14)
    assert sparsegen.read_magic(w.path) == b"PWRI"
    info = _core.read_gguf_info(w.path)
    assert info["powerinfer"] and info["version"] == 3
    shapes = {name: (dtype, tuple(shape)) for name, dtype, shape in info["tensors"]}
    n_embd, n_ff = 64, 128
    for i, r in enumerate((32, 64)):
        assert f"blk.{i}.ffn_down.weight" not in shapes
        assert shapes[f"blk.{i}.ffn_down_t.weight"] == ("Q4_0", (n_embd, n_ff))  # ggml order
        assert shapes[f"blk.{i}.fc1.weight"] == ("F16", (n_embd, r))
        assert shapes[f"blk.{i}.fc2.weight"] == ("F16", (r, n_ff))
        assert w[f"blk.{i}.ffn_down_t.weight"].shape == (n_ff, n_embd)
    assert "output.weight" in shapes
    assert info["metadata"]["powerinfer.sparse_threshold"] == pytest.approx(0.25)


# ---- 9. Command line ------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sparseinfer", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_stats_report_the_same_fraction_as_the_api(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "cli.gguf", weight_type="F32", threshold=0.1, seed=4)
    common = ["-p", "hello world", "-n", 6, "--temp", 0, "--ignore-eos", "-t", 2, "-c", 64]
    run = _cli("generate", "-m", w.path, *common, "--stats")
    assert run.returncode == 0, run.stderr
    line = next(l for l in run.stderr.splitlines() if l.startswith("sparse:"))

    with sparseinfer.Model(str(w.path), n_ctx=64, n_threads=2) as m:
        text = m.generate("hello world", max_tokens=6, temperature=0, ignore_eos=True)
        fraction = m.stats()["active_fraction"]
    assert run.stdout.rstrip("\n") == text
    assert f"{fraction:.1%} of FFN neurons computed" in line

    dense = _cli("generate", "-m", w.path, *common, "--stats", "--sparse", "off")
    assert dense.returncode == 0 and "sparse:" not in dense.stderr


def test_cli_sparse_on_a_dense_file_is_a_clean_error(tiny_llama_path):
    run = _cli("generate", "-m", tiny_llama_path, "-p", "hi", "-n", 2, "--sparse", "on")
    assert run.returncode == 1
    assert "PowerInfer" in run.stderr and "Traceback" not in run.stderr
