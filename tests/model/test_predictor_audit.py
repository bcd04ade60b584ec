"""The predictor audit (Session.set_predictor_audit): per layer, the neurons a PowerInfer file's
predictor marks active against those that really fire in a dense run, and both, checked
against the float64 reference's masks and gates (tests/support/sparse_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

import ggufgen
import sparse_reference as sref
import sparsegen

from sparseinfer import _core, errors

N_THREADS = 2
MIN_MARGIN = 3e-5  # no score or gate this close (x std) to its cut: exact counts are meaningful


def audited_session(path, n_ctx=64):
    session = _core.Session(_core.Model(str(path), predictor_q8=False), n_ctx, N_THREADS, sparse=False)
    session.set_predictor_audit(True)
    return session


def reference_counts(w, tokens):
    """Per layer (predicted, fired, both) from the dense reference: a llama neuron fires when its
    gate is positive (relu(gate) * up, up never exactly 0 in these random models)."""
    ref = sref.SparseReference(w, sparse=False)
    ref.eval(tokens)
    gates = np.concatenate([g.ravel() for g in ref.gates])
    assert ref.threshold_margin() > MIN_MARGIN and np.abs(gates).min() / gates.std() > MIN_MARGIN, \
        "a score or a gate sits at its cut: change the seed"
    return np.array([[m.sum(), (g > 0).sum(), (m & (g > 0)).sum()] for m, g in zip(ref.masks, ref.gates)])


@pytest.mark.parametrize("n_layer", [1, 3])
def test_counts_equal_the_references(tmp_path, n_layer):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", n_layer=n_layer, predictor="random", threshold=0.05, seed=3)
    tokens = ggufgen.random_tokens(24, seed=1)
    session = audited_session(w.path)
    session.eval(tokens, False)
    audit = session.predictor_audit()
    assert audit.dtype == np.int64 and audit.shape == (n_layer, 3)
    want = reference_counts(w, tokens)
    np.testing.assert_array_equal(audit, want)
    # a random predictor: clearly neither perfect recall nor perfect precision
    assert np.all(audit[:, 2] < audit[:, 0]) and np.all(audit[:, 2] < audit[:, 1])


def test_exact_predictor_has_full_recall_and_precision(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", predictor="exact", rank=8, seed=2)
    session = audited_session(w.path)
    session.eval(ggufgen.random_tokens(20, seed=4), False)
    audit = session.predictor_audit()
    assert np.all(audit[:, 1] > 0)
    np.testing.assert_array_equal(audit[:, 0], audit[:, 1])
    np.testing.assert_array_equal(audit[:, 2], audit[:, 1])


def test_counts_add_up_over_evals_and_reset(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", predictor="random", seed=5)
    tokens = ggufgen.random_tokens(30, seed=2)
    whole = audited_session(w.path)
    whole.eval(tokens, False)
    pieces = audited_session(w.path)
    for start in range(0, len(tokens), 7):
        pieces.eval(tokens[start:start + 7], True)
    np.testing.assert_array_equal(pieces.predictor_audit(), whole.predictor_audit())
    pieces.set_predictor_audit(False)  # off keeps the counts and stops counting
    assert not pieces.predictor_auditing
    before = pieces.predictor_audit()
    pieces.eval(tokens[:3], False)
    np.testing.assert_array_equal(pieces.predictor_audit(), before)
    pieces.reset_predictor_audit()
    assert not pieces.predictor_audit().any()


def test_refused_where_it_cannot_see(tmp_path, tiny_llama_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", seed=1)
    sparse = _core.Session(_core.Model(str(w.path)), 32, N_THREADS, sparse=True)
    with pytest.raises(ValueError, match="dense session"):
        sparse.set_predictor_audit(True)
    dense_file = _core.Session(_core.Model(str(tiny_llama_path)), 32, N_THREADS, sparse=False)
    with pytest.raises(errors.UnsupportedModelError, match="predictors"):
        dense_file.set_predictor_audit(True)
