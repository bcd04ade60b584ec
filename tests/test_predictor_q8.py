"""Predictors requantised to Q8_0 at load (Model(..., predictor_q8=True)).

Oracle: the same weights written to a file whose predictors the `gguf` package quantised to
Q8_0. Loading the F32-predictor file with predictor_q8 must then run exactly that model.
"""

import numpy as np
import pytest

import sparsegen
import sparseinfer
from sparseinfer import _core

TOKENS = sparsegen.tokens(12, seed=3)


def logits_and_fractions(path, **kw):
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=2, **kw) as m:
        out = m.logits(TOKENS)
        return out, m.stats()["layers"]


@pytest.mark.parametrize("weight_type", ["F32", "F16"])
def test_requantised_predictor_equals_a_q8_0_predictor_file(tmp_path, weight_type):
    raw = sparsegen.make_sparse_weights(n_vocab=320, n_embd=64, n_layer=2, n_head=4, n_head_kv=2,
                                        n_ff=128, predictor="random", rank=32, seed=7)
    # Both files must quantise the same values: round the predictors to the weight type
    # first, as the float file stores them.
    for name in [k for k in raw if k.endswith(("fc1.weight", "fc2.weight"))]:
        if weight_type == "F16":
            raw[name] = raw[name].astype(np.float16).astype(np.float32)
    a = tmp_path / "float_pred.gguf"
    b = tmp_path / "q8_pred.gguf"
    sparsegen.write_pwri_model(a, weight_type=weight_type, raw=raw, threshold=0.05)
    sparsegen.write_pwri_model(b, weight_type=weight_type, pred_type="Q8_0", raw=raw, threshold=0.05)

    requantised, fractions = logits_and_fractions(a, predictor_q8=True)
    from_file, file_fractions = logits_and_fractions(b)
    np.testing.assert_allclose(requantised, from_file, rtol=0, atol=1e-5)
    assert fractions == file_fractions

    # And the option really changes something: the float predictor gives other decisions.
    original, original_fractions = logits_and_fractions(a)
    assert original_fractions != fractions or not np.allclose(original, requantised, atol=1e-5)


def test_predictor_q8_on_a_dense_file_is_refused(tmp_path):
    import ggufgen
    path = tmp_path / "dense.gguf"
    ggufgen.write_llama_model(path)
    with pytest.raises(ValueError, match="predictor_q8"):
        _core.Model(str(path), predictor_q8=True)
