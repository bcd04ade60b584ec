"""Predictors requantised to Q8_0 at load (Model(..., predictor_q8=True)).

Oracle: the same weights written to a file whose predictors the `gguf` package quantised to
Q8_0. Loading the F32-predictor file with predictor_q8 must then run exactly that model.
"""

import numpy as np
import pytest

import ggufgen
import sparsegen
import sparseinfer
from sparseinfer import _core

TOKENS = ggufgen.random_tokens(12, seed=3)


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


def test_predictor_q8_on_a_dense_file_is_refused(tiny_llama_path):
    with pytest.raises(ValueError, match="predictor_q8"):
        _core.Model(tiny_llama_path, predictor_q8=True)


# ---- predictor_q8="auto" (the default): per layer, by agreement on random probes ------------

def make_fragile(raw, layer):
    """Makes a layer's predictor one that an 8-bit copy breaks: each fc2 row gets one huge
    weight on a hidden unit that is always 0 (its fc1 row is zero), so the float scores are
    unchanged, but Q8_0's per-block scale then rounds every other weight of the row to 0."""
    p = f"blk.{layer}."
    raw[p + "fc1.weight"][0] = 0.0
    raw[p + "fc2.weight"][:, 0] = 1000.0
    return raw


def write(tmp_path, name, fragile_layers=(), **kw):
    raw = sparsegen.make_sparse_weights(n_vocab=320, n_embd=64, n_layer=3, n_head=4, n_head_kv=2,
                                        n_ff=128, predictor="random", rank=32, seed=11)
    for layer in fragile_layers:
        make_fragile(raw, layer)
    path = tmp_path / name
    sparsegen.write_pwri_model(path, raw=raw, n_layer=3, **kw)
    return path


@pytest.mark.parametrize("weight_type", ["F32", "F16"])
def test_auto_takes_every_layer_whose_decisions_agree(tmp_path, weight_type):
    path = write(tmp_path, "m.gguf", weight_type=weight_type)
    auto, auto_fractions = logits_and_fractions(path)  # the default
    on, on_fractions = logits_and_fractions(path, predictor_q8=True)
    np.testing.assert_array_equal(auto, on)
    assert auto_fractions == on_fractions
    with sparseinfer.Model(str(path), n_ctx=16) as m:
        assert m.predictor_q8_layers == [True, True, True]


def test_auto_keeps_the_stored_predictor_where_an_8_bit_copy_flips_decisions(tmp_path):
    path = write(tmp_path, "fragile.gguf", fragile_layers=(0, 1, 2))
    auto, auto_fractions = logits_and_fractions(path, predictor_q8="auto")
    off, off_fractions = logits_and_fractions(path, predictor_q8=False)
    np.testing.assert_array_equal(auto, off)
    assert auto_fractions == off_fractions
    # ... where forcing the copy really changes the model.
    on, on_fractions = logits_and_fractions(path, predictor_q8=True)
    assert on_fractions != off_fractions
    # Layer by layer.
    mixed = write(tmp_path, "mixed.gguf", fragile_layers=(1,))
    assert _core.Model(str(mixed)).predictor_q8_layers == [True, False, True]


def test_auto_leaves_predictors_stored_in_8_bits_or_fewer_and_dense_files(tmp_path, tiny_llama_path):
    for pred_type in ["Q8_0", "Q4_0"]:
        path = write(tmp_path, f"{pred_type}.gguf", weight_type="F32", pred_type=pred_type)
        assert _core.Model(str(path)).predictor_q8_layers == [False, False, False]
    with sparseinfer.Model(tiny_llama_path, n_ctx=16) as m:  # "auto" is no error on a dense file
        assert not any(m.predictor_q8_layers)


def test_predictor_q8_takes_only_true_false_or_auto(tmp_path):
    path = write(tmp_path, "m.gguf")
    for bad in ["yes", 1, None]:
        with pytest.raises(ValueError, match="predictor_q8"):
            sparseinfer.Model(str(path), predictor_q8=bad)
        with pytest.raises(ValueError, match="predictor_q8"):
            _core.Model(str(path), predictor_q8=bad)


def test_predictors_of_a_rank_below_one_block_stay_as_stored(tmp_path):
    """fc2's rows are `rank` values: a rank that is not whole 32-value blocks has no Q8_0 copy.
    "auto" keeps such predictors as stored (the model loads and runs as with predictor_q8=False);
    True refuses, naming the row length."""
    path = tmp_path / "rank8.gguf"
    sparsegen.write_pwri_model(path, n_vocab=320, n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128,
                               rank=8, threshold=0.05, seed=12)
    automatic, _ = logits_and_fractions(path, predictor_q8="auto")
    stored, _ = logits_and_fractions(path, predictor_q8=False)
    np.testing.assert_array_equal(automatic, stored)
    with pytest.raises(sparseinfer.UnsupportedModelError, match="rows of 8 values"):
        sparseinfer.Model(str(path), predictor_q8=True)
