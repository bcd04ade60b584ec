"""The architectures built from llama's blocks: minicpm (embedding, residual and logit scales),
qwen2 (Q, K, V biases, NeoX RoPE), qwen3 (per-head Q and K norms, NeoX RoPE, heads of
attention.key_length) and gemma3 (qwen3's attention plus post-norms, a GELU FFN, scaled
embeddings and five sliding-window layers in six with their own RoPE base).

Synthetic files in each architecture's real keys and tensor names (tests/support/ggufgen.py)
are checked three ways: the engine against the NumPy float64 reference
(tests/support/reference.py), the reference against llama-cpp-python on the same file (so
that the reference holds llama.cpp's facts, not ours), and the engine's logits teacher-forced
against llama-cpp-python's next to the noise llama.cpp shows against itself when only its KV
cache changes from F16 to F32.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import ggufgen
import reference
from logit_checks import assert_close, llama_cpp_logits, mean_kl

import sparseinfer
from sparseinfer import _core, errors

N_THREADS = 2

# architecture -> the keyword arguments of a file of it (GQA everywhere; qwen3 with heads wider
# than n_embd / n_head, as Qwen3's are; minicpm with explicit scales)
SHAPES = {
    "minicpm": dict(architecture="minicpm", n_head_kv=2,
                    minicpm_scales=dict(embedding_scale=12.0, residual_scale=0.99, logit_scale=0.5)),
    "qwen2": dict(architecture="qwen2", n_head_kv=2),
    "qwen3": dict(architecture="qwen3", n_head_kv=2, head_dim=32),
    # seven layers: six sliding ones (0-4, 6) and a global one (5); a window of 16 positions,
    # which the 40 and 300-token sequences below run past
    "gemma3": dict(architecture="gemma3", n_head_kv=1, head_dim=32, n_layer=7, sliding_window=16,
                   rope_base=1_000_000.0),  # the global layers' base, as Gemma 3's; the local ones take 10000
}


def write(tmp_path, arch, **kw):
    """A file of the architecture; K-quant rows need 256 values, so those files are wider."""
    shape = dict(SHAPES[arch])
    if kw.get("weight_type", "F32").endswith("_K"):
        shape.update(n_embd=256, n_ff=256, head_dim=128 if arch in ("qwen3", "gemma3") else None)
    path = tmp_path / f"{arch}.gguf"
    return path, ggufgen.write_llama_model(path, **{**shape, **kw})


def engine_logits(path, tokens, n_ctx=128):
    return sparseinfer.Model(str(path), n_ctx=n_ctx, n_threads=N_THREADS).logits(tokens)


@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q8_0", "Q4_0", "Q4_K"])
@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_logits_match_reference(tmp_path, arch, weight_type):
    path, w = write(tmp_path, arch, weight_type=weight_type, seed=21)
    tokens = ggufgen.random_tokens(40, seed=21)
    ref = reference.forward(w, tokens, kv_f16=True)
    tolerance_type = "Q4_0" if weight_type == "Q4_K" else weight_type
    assert_close(engine_logits(path, tokens), ref, tolerance_type, f"{arch} {weight_type}")


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_reference_matches_llama_cpp(tmp_path, arch):
    """The oracle's own check: the reference reproduces llama.cpp (F32 KV cache) on the file.
    llama.cpp's CPU GELU looks its values up in a table of IEEE halves, which puts its gemma3
    logits ~4e-4 std from the exact reference's (one layer: 1.6e-4, or 1.5e-5 when the
    reference rounds as the table does); every feature of gemma3 moves them by over 5e-2 std
    (test_gemma3_features_each_matter)."""
    path, w = write(tmp_path, arch, seed=22)
    tokens = ggufgen.random_tokens(40, seed=22)
    got = llama_cpp_logits(path, tokens, f32_kv=True)
    ref = reference.forward(w, tokens)
    tolerance = 1e-3 if arch == "gemma3" else 2e-5
    assert np.abs(got - ref).max() <= tolerance * ref.std()


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_each_feature_changes_the_reference(tmp_path, arch):
    """The reference with the architecture's feature taken away is a different function, so
    that the checks above can fail."""
    _, w = write(tmp_path, arch, seed=23)
    tokens = ggufgen.random_tokens(20, seed=23)
    full = reference.forward(w, tokens)
    plain = {k: v for k, v in w.items() if not re.search(r"\.bias$|_norm\.weight$", k) or "attn_norm" in k
             or "ffn_norm" in k or k == "output_norm.weight"}
    hparams = dict(w.hparams, rope_layout="normal", embedding_scale=1.0, residual_scale=1.0, logit_scale=1.0)
    if arch in ("qwen2", "qwen3"):  # the biases or the norms only (keep the NeoX layout)
        hparams["rope_layout"] = "neox"
    if arch == "gemma3":  # every gemma3 feature: the norms, embedding scale, GELU, window, local base
        hparams.update(activation="silu", attention_scale=None, sliding_layers=[])
    assert np.abs(reference.forward(plain, tokens, hparams) - full).max() > 0.1 * full.std()
    if arch != "minicpm":  # the RoPE layout on its own
        adjacent = reference.forward(w, tokens, dict(w.hparams, rope_layout="normal"))
        assert np.abs(adjacent - full).max() > 0.1 * full.std()


@pytest.mark.parametrize("weight_type", ["F16", "Q4_0", "Q4_K"])
@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_teacher_forced_within_llama_cpps_own_noise(tmp_path, arch, weight_type):
    """300 tokens teacher-forced: mean KL and top-1 agreement against llama-cpp-python's logits
    on the same file, next to llama.cpp's own F16-against-F32 KV cache noise.

    On F16 files llama.cpp rounds every matrix product's input to F16 and the engine does not:
    its logits sit ~1e-11 (KL) from the float64 reference and llama.cpp's ~4e-7, which on
    these tiny models can exceed llama.cpp's KV noise (~1e-7). There the gap is llama.cpp's,
    so a file passes when the engine is at least as close to the reference as llama.cpp is."""
    path, w = write(tmp_path, arch, weight_type=weight_type, n_ctx=512, seed=24)
    tokens = ggufgen.random_tokens(300, seed=24)
    base = llama_cpp_logits(path, tokens, f32_kv=False, n_ctx=512)
    noise = llama_cpp_logits(path, tokens, f32_kv=True, n_ctx=512)
    ours = engine_logits(path, tokens, n_ctx=512)
    own_kl, our_kl = mean_kl(base, noise), mean_kl(base, ours)
    own_top1, our_top1 = np.mean(base.argmax(1) == noise.argmax(1)), np.mean(base.argmax(1) == ours.argmax(1))
    assert 0 < own_kl < 0.05, own_kl  # the yardstick itself is sane
    exact = reference.forward(w, tokens, kv_f16=True)
    closer_to_exact = mean_kl(exact, ours) <= mean_kl(exact, base)
    assert our_kl <= 1.5 * own_kl or closer_to_exact, f"mean KL {our_kl:.2e} against llama.cpp's own {own_kl:.2e}"
    assert our_top1 >= own_top1 - 0.02, f"top-1 agreement {our_top1:.3f} against llama.cpp's own {own_top1:.3f}"


@pytest.mark.parametrize("kw", [dict(head_dim=8), dict(head_dim=16, n_head_kv=1), dict(rope_dim=8)],
                         ids=["narrow-heads", "mqa", "partial-rope"])
def test_qwen3_shapes(tmp_path, kw):
    """Heads narrower than n_embd / n_head, one KV head, RoPE on part of each head (NeoX pairs
    the halves of the rotated part)."""
    path, w = write(tmp_path, "qwen3", seed=25, **kw)
    tokens = ggufgen.random_tokens(30, seed=25)
    assert_close(engine_logits(path, tokens), reference.forward(w, tokens, kv_f16=True), "F32", str(kw))


def test_minicpm_without_scale_keys_uses_minicpms_constants(tmp_path):
    """A file converted before the keys existed runs with MiniCPM's published scales:
    scale_emb 12, scale_depth 1.4 / sqrt(n_layer), n_embd / dim_model_base 256."""
    path, w = write(tmp_path, "minicpm", minicpm_scales=None, seed=26)
    assert w.hparams["embedding_scale"] == 12.0 and w.hparams["logit_scale"] == 64 / 256
    tokens = ggufgen.random_tokens(30, seed=26)
    assert_close(engine_logits(path, tokens), reference.forward(w, tokens, kv_f16=True), "F32", "defaults")


@pytest.mark.parametrize("feature, change", [
    ("window", dict(sliding_window=10_000)), ("local RoPE base", dict(local_rope_base=10_000.0 * 7)),
    ("GELU", dict(activation="silu")), ("query scale", dict(attention_scale=0.5)),
])
def test_gemma3_features_each_matter(tmp_path, feature, change):
    """Each of Gemma 3's features on its own changes the reference's logits past the window, so
    the engine's agreement with it (and the reference's with llama.cpp) checks each one."""
    _, w = write(tmp_path, "gemma3", seed=29)
    tokens = ggufgen.random_tokens(40, seed=29)
    full = reference.forward(w, tokens)
    changed = reference.forward(w, tokens, dict(w.hparams, **change))
    assert np.abs(changed - full)[20:].max() > 0.05 * full.std(), feature


def test_gemma3_window_over_a_long_context(tmp_path):
    """A context many windows long, token by token after a prompt: the sliding layers drop the
    keys behind their window (and the key blocks those start in) exactly as the reference."""
    path, w = write(tmp_path, "gemma3", seed=30, sliding_window=20, n_ctx=256)
    tokens = ggufgen.random_tokens(150, seed=30)
    ref = reference.forward(w, tokens, kv_f16=True)
    model = _core.Model(str(path))
    session = _core.Session(model, 256, N_THREADS)
    session.eval(tokens[:100], all_logits=True)
    rows = [session.logits()]
    for token in tokens[100:]:
        session.eval([token], all_logits=True)
        rows.append(session.logits())
    assert_close(np.concatenate(rows), ref, "F32", "gemma3 window 20")


@pytest.mark.parametrize("case, kw, hparams", [
    ("no window key: every layer global", dict(sliding_window=None), {}),
    ("window pattern 3, local base 500", dict(extra_kv={"gemma3.attention.sliding_window_pattern": 3,
                                                       "gemma3.rope.freq_base_swa": 500.0}),
     dict(sliding_layers=[il % 3 < 2 for il in range(7)], local_rope_base=500.0)),
    ("final logit softcap", dict(extra_kv={"gemma3.final_logit_softcapping": 2.5}), dict(final_logit_softcap=2.5)),
])
def test_gemma3_optional_keys(tmp_path, case, kw, hparams):
    """The keys a Gemma 3 file may carry, as llama-cpp-python 0.3.36 reads them: the engine
    against the reference, and the reference against llama.cpp."""
    path, w = write(tmp_path, "gemma3", seed=31, **kw)
    w.hparams.update(hparams)
    tokens = ggufgen.random_tokens(40, seed=31)
    ref = reference.forward(w, tokens, kv_f16=True)
    assert_close(engine_logits(path, tokens), ref, "F32", case)
    exact = reference.forward(w, tokens)
    assert np.abs(llama_cpp_logits(path, tokens, f32_kv=True) - exact).max() <= 1e-3 * exact.std(), case
    usual = dict(w.hparams, sliding_window=16, sliding_layers=[il % 6 < 5 for il in range(7)],
                 local_rope_base=10000.0, final_logit_softcap=None)
    assert np.abs(reference.forward(w, tokens, usual) - exact).max() > 0.05 * exact.std(), case


def test_qwen2_biases_are_read_where_the_file_has_them(tmp_path):
    """Q, K, V biases are optional, as llama.cpp reads them: a qwen2 file without any runs as
    the reference without them, and as llama.cpp does."""
    biases = [f"blk.{il}.attn_{name}.bias" for il in range(2) for name in "qkv"]
    path, w = write(tmp_path, "qwen2", seed=32, skip_tensors=biases)
    plain = {k: v for k, v in w.items() if k not in biases}
    tokens = ggufgen.random_tokens(30, seed=32)
    exact = reference.forward(plain, tokens, w.hparams)
    assert_close(engine_logits(path, tokens), reference.forward(plain, tokens, w.hparams, kv_f16=True), "F32")
    assert np.abs(llama_cpp_logits(path, tokens, f32_kv=True) - exact).max() <= 2e-5 * exact.std()


def test_prompt_in_chunks_equals_whole(tmp_path):
    """Batches and the KV cache: a qwen2 prompt in pieces gives the bits of the whole."""
    path, _ = write(tmp_path, "qwen2", seed=27)
    tokens = ggufgen.random_tokens(50, seed=27)
    model = _core.Model(str(path))
    whole = _core.Session(model, 128, N_THREADS)
    whole.eval(tokens, all_logits=True)
    pieces = _core.Session(model, 128, N_THREADS)
    rows = []
    for start, end in ((0, 1), (1, 17), (17, 50)):
        pieces.eval(tokens[start:end], all_logits=True)
        rows.append(pieces.logits())
    np.testing.assert_array_equal(np.concatenate(rows), whole.logits())


@pytest.mark.parametrize("case, kw, error, message", [
    ("missing bias", dict(architecture="qwen2", skip_tensors=["blk.1.attn_k.bias"]), errors.ModelFormatError,
     "tensor 'blk.1.attn_k.bias' is missing"),
    ("missing q norm", dict(architecture="qwen3", skip_tensors=["blk.0.attn_q_norm.weight"]),
     errors.ModelFormatError, "tensor 'blk.0.attn_q_norm.weight' is missing"),
    ("bad scale", dict(architecture="minicpm", minicpm_scales=dict(residual_scale=-1.0)), errors.ModelFormatError,
     "minicpm.residual_scale must be a finite number > 0"),
    ("value heads", dict(architecture="qwen3", head_dim=16, extra_kv={"qwen3.attention.value_length": 8}),
     errors.UnsupportedModelError, "attention.value_length 8 differs from key_length 16"),
    ("bad softcap", dict(architecture="gemma3", extra_kv={"gemma3.final_logit_softcapping": -3.0}),
     errors.ModelFormatError, "gemma3.final_logit_softcapping must be a finite number > 0"),
    ("no post norm", dict(architecture="gemma3", skip_tensors=["blk.0.post_ffw_norm.weight"]),
     errors.ModelFormatError, "tensor 'blk.0.post_ffw_norm.weight' is missing"),
])
def test_bad_files_are_named(tmp_path, case, kw, error, message):
    path = tmp_path / "m.gguf"
    ggufgen.write_llama_model(path, **kw)
    with pytest.raises(error, match=re.escape(message)):
        _core.Model(str(path))


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_gpu_layers_take_the_blocks_they_compute(tmp_path, arch):
    """Past the check of the blocks (gemma3's post-norms, GELU, query scale, sliding windows
    and local RoPE base run on the GPU too; their logits: tests/gpu/test_gpu_forward.py): what
    stops these is the missing plugin itself."""
    softcap = {"gemma3.final_logit_softcapping": 2.5} if arch == "gemma3" else None  # the logit softcap too
    path, _ = write(tmp_path, arch, seed=28, extra_kv=softcap)
    with pytest.raises(errors.UnsupportedModelError, match="no-such-plugin") as refused:
        _core.DeviceModel(_core.Model(str(path)), str(tmp_path / "no-such-plugin.so"))
    assert "could not be loaded" in str(refused.value) and "runs on the CPU only" not in str(refused.value)
