"""RoPE scaling as llama.cpp reads it from a file (docs/rope-scaling.md): linear, YaRN, the
attention factor and Llama 3's per-pair frequency factors (rope_freqs.weight).

Oracles:
- the NumPy float64 reference (tests/support/reference.py's rope_scaled_frequencies, written
  from ggml's formulas) against the engine, with test_forward.py's F32 tolerances. The engine's
  error there is the K and V half rounding: a value the engine's float32 and the reference's
  float64 round to neighbouring halves moves a few logits, and such flips grow with the prompt
  (the unscaled model reaches 3.7e-4 * std at 64 tokens on some seeds), so prompts are 48 tokens,
  16 past the original context, as test_forward's are 40;
- the reference against llama-cpp-python on the same files with an F32 KV cache, as
  test_forward.py's test_reference_matches_llama_cpp. Llama() is told nothing about RoPE: its
  defaults take everything from the file (rope_scaling_type unspecified, rope_freq_base and
  rope_freq_scale 0, yarn_ext_factor -1 and yarn_orig_ctx 0 mean "the model's"), and
  yarn_attn_factor 1, yarn_beta_fast 32 and yarn_beta_slow 1 are llama.cpp's own values for a
  llama file, whose loader reads no key for them;
- every scaled file's logits differ from the unscaled model's by far more than the tolerances
  (a scaling read and then ignored fails), and the YaRN configuration is checked to put pairs
  on both sides of its ramp and on it;
- bad values give a ModelFormatError naming the key or tensor, another type an
  UnsupportedModelError naming it. GPU layers take every scaling (their logits:
  tests/gpu/test_gpu_forward.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import ggufgen
import reference
import rope_cases
from logit_checks import assert_close
from rope_cases import CASES, CTX, FREQ_FACTORS, ORIGINAL, ROPE_DIM, YARN, write

import sparseinfer
from sparseinfer import _core, errors

N_THREADS = 2
N_TOKENS = 48


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> (path, weights, the reference's hparams) for CASES and the unscaled model."""
    return rope_cases.write_cases(tmp_path_factory.mktemp("rope"))


@pytest.fixture(scope="module")
def tokens():
    return ggufgen.random_tokens(N_TOKENS, seed=1)


def engine_logits(path, toks):
    with sparseinfer.Model(path, n_ctx=CTX, n_threads=N_THREADS) as m:
        return m.logits(toks).astype(np.float64)


def assert_far_from_unscaled(logits, files, toks, what):
    _, plain_w, _ = files["plain"]
    plain = reference.forward(plain_w, toks, kv_f16=False)
    past = np.abs(logits - plain)[ORIGINAL:]
    assert past.max() > 0.1 * plain.std(), f"{what}: as unscaled RoPE gives ({past.max() / plain.std():.3g} std)"


# ---- the reference's configuration ----------------------------------------------------

def test_yarn_keeps_mixes_and_interpolates_pairs():
    inv, magnitude = reference.rope_scaled_frequencies(
        ROPE_DIM, 10000.0, {"type": "yarn", "factor": 4.0, "original_context": ORIGINAL})
    unscaled = 10000.0 ** (-2.0 * np.arange(ROPE_DIM // 2) / ROPE_DIM)
    speed = inv / unscaled
    # the ramp runs from pair 0 (max(0, floor(-1.60))) to pair 2 (ceil(1.41)): pair 0 kept, pair 1
    # halfway, the others interpolated
    assert speed[0] == pytest.approx(1.0)
    assert speed[1] == pytest.approx(0.25 + 0.75 / 2)
    assert speed[2:] == pytest.approx(np.full(ROPE_DIM // 2 - 2, 0.25))
    assert magnitude == pytest.approx(1.0 + 0.1 * np.log(4.0))


# ---- the engine against the reference --------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_matches_the_reference(files, tokens, name):
    path, w, hparams = files[name]
    ref = reference.forward(w, tokens, hparams, kv_f16=True)
    got = engine_logits(path, tokens)
    assert_close(got, ref, "F32", name)
    assert_far_from_unscaled(got, files, tokens, name)


def test_prompt_at_once_equals_token_by_token(files, tokens):
    # The cos and sin tables are per position: how the tokens are batched changes no bit.
    path, _, _ = files["yarn_freq_factors"]
    at_once = engine_logits(path, tokens)
    s = _core.Session(_core.Model(path), CTX, N_THREADS)
    rows = []
    for t in tokens:
        s.eval([t])
        rows.append(s.logits())
    assert np.array_equal(np.concatenate(rows), at_once.astype(np.float32))


@pytest.mark.parametrize("kv", [
    {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 4.0},  # llama.cpp ignores the factor
    {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 1.0},
    {"llama.rope.scaling.type": "linear"},
], ids=["none_with_a_factor", "yarn_x1", "linear_without_a_factor"])
def test_what_scales_nothing_runs_as_unscaled_rope(tmp_path, files, tokens, kv):
    write(tmp_path / "m.gguf", kv)
    assert np.array_equal(engine_logits(str(tmp_path / "m.gguf"), tokens), engine_logits(files["plain"][0], tokens))


# ---- the reference against llama.cpp ---------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_matches_llama_cpp(files, tokens, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    path, w, hparams = files[name]
    # F32 KV cache (type 0 = GGML_TYPE_F32): nothing rounded on llama.cpp's side
    llm = llama_cpp.Llama(path, n_ctx=CTX, n_threads=N_THREADS, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(tokens)
    got = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    ref = reference.forward(w, tokens, hparams, kv_f16=False)
    assert np.abs(got - ref).max() <= 2e-5 * ref.std(), f"{np.abs(got - ref).max() / ref.std():.3g} std"
    assert_far_from_unscaled(got, files, tokens, name)


# ---- what is refused -------------------------------------------------------------------

BAD = {
    "longrope": (dict(kv={"llama.rope.scaling.type": "longrope"}), errors.UnsupportedModelError,
                 "RoPE scaling 'longrope' is not supported (supported: none, linear, yarn)"),
    "factor_zero": (dict(kv=dict(YARN, **{"llama.rope.scaling.factor": 0.0})), errors.ModelFormatError,
                    "llama.rope.scaling.factor must be a finite number > 0, got 0"),
    "factor_negative": (dict(kv={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": -2.0}),
                        errors.ModelFormatError, "llama.rope.scaling.factor must be a finite number > 0, got -2"),
    "factor_nan": (dict(kv=dict(YARN, **{"llama.rope.scaling.factor": float("nan")})), errors.ModelFormatError,
                   "llama.rope.scaling.factor must be a finite number > 0, got nan"),
    "factor_infinite": (dict(kv=dict(YARN, **{"llama.rope.scaling.factor": float("inf")})),
                        errors.ModelFormatError, "llama.rope.scaling.factor must be a finite number > 0, got inf"),
    "old_factor_key_negative": (dict(kv={"llama.rope.scale_linear": -1.0}), errors.ModelFormatError,
                                "llama.rope.scale_linear must be a finite number > 0, got -1"),
    "attn_factor_zero": (dict(kv=dict(YARN, **{"llama.rope.scaling.attn_factor": 0.0})), errors.ModelFormatError,
                         "llama.rope.scaling.attn_factor must be a finite number > 0, got 0"),
    "original_context_zero": (dict(kv=dict(YARN, **{"llama.rope.scaling.original_context_length": 0})),
                              errors.ModelFormatError,
                              "llama.rope.scaling.original_context_length must be > 0, got 0"),
    "freq_factors_short": (dict(freq_factors=FREQ_FACTORS[:7]), errors.ModelFormatError,
                           "tensor 'rope_freqs.weight' has shape [7], expected [8 x 1]"),
    "freq_factor_zero": (dict(freq_factors=np.where(np.arange(8) == 3, 0.0, FREQ_FACTORS)), errors.ModelFormatError,
                         "tensor 'rope_freqs.weight' holds 0 at 3; frequency factors must be finite numbers > 0"),
    "freq_factor_negative": (dict(freq_factors=-FREQ_FACTORS), errors.ModelFormatError,
                             "tensor 'rope_freqs.weight' holds -1 at 0; frequency factors must be finite "
                             "numbers > 0"),
    "freq_factor_nan": (dict(freq_factors=np.where(np.arange(8) == 7, np.nan, FREQ_FACTORS)),
                        errors.ModelFormatError,
                        "tensor 'rope_freqs.weight' holds nan at 7; frequency factors must be finite numbers > 0"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_scaling_is_refused_naming_the_key(tmp_path, name):
    kw, error, message = BAD[name]
    path = tmp_path / f"{name}.gguf"
    write(path, **kw)
    with pytest.raises(error, match=re.escape(f"{path}: {message}")):
        _core.Model(str(path))


@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_layers_take_scaled_rope(files, tmp_path, name):
    # The GPU turns by the CPU's frequencies (tests/gpu/test_gpu_forward.py checks its logits):
    # no scaling is refused before the plugin loads, so what stops these is the missing plugin.
    model = _core.Model(files[name][0])
    missing_plugin = str(tmp_path / "no-plugin.so")
    for n_gpu_layers in (-1, 0):
        with pytest.raises(errors.UnsupportedModelError, match="could not be loaded") as refused:
            _core.DeviceModel(model, missing_plugin, n_gpu_layers=n_gpu_layers)
        assert missing_plugin in str(refused.value) and "runs on the CPU only" not in str(refused.value)
