"""falcon and opt (docs/architecture-facts.md section 4), as plain GGUF files and as PowerInfer
(PWRI) files with activation predictors.

Synthetic files in the real keys and tensor names (tests/support/archgen.py) are checked
against the NumPy float64 reference (tests/support/arch_reference.py), which rounds what the
engine rounds; the dense falcon reference is itself checked against llama-cpp-python, which
runs upstream llama.cpp's falcon (GELU FFN) and neither PowerInfer's ReLU falcon nor OPT.

Tolerances are the other tests' (relative to the reference logits' std): GGUF files the dense
forward pass's (logit_checks.DENSE_TOLERANCES), PWRI files test_sparse.py's, where masks
are compared exactly for F32 / F16 (after checking that no score lies within MIN_MARGIN std of
the threshold) and within 0.01 for quantised types, whose activations may round a score
near the threshold to the other side.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import archgen
import arch_reference
import ggufgen
import reference
from arch_reference import ArchReference
from logit_checks import DENSE_TOLERANCES, assert_close, llama_cpp_logits, mean_kl

import sparseinfer
from sparseinfer import _core, errors

N_THREADS = 2
N_CTX = 64
ARCHS = ("falcon", "opt")
WRITERS = {"falcon": archgen.write_falcon_model, "opt": archgen.write_opt_model}
WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")
QUANTISED = ("Q8_0", "Q4_0", "Q4_K")
SPARSE_TOL = {"F32": (1e-3, 1e-4), "F16": (1e-3, 1e-4), **{t: (0.25, 0.035) for t in QUANTISED}}
TOLERANCES = {"gguf": {**DENSE_TOLERANCES, "Q4_K": DENSE_TOLERANCES["Q4_0"]}, "pwri": SPARSE_TOL}
FRACTION_TOL = {"F32": 1e-12, "F16": 1e-12, **{t: 0.01 for t in QUANTISED}}
MIN_MARGIN = 3e-5

# Falcon's attention variants: GQA; Falcon-40B's second norm; MQA (Falcon-7B's one KV head)
# with the output tied to token_embd; MHA with both and RoPE base 5000 (falcon.rope.freq_base).
FALCON_VARIANTS = {
    "gqa": dict(n_head_kv=2),
    "two-norms": dict(n_head_kv=2, attn_norm_2=True),
    "mqa-tied": dict(n_head_kv=1, tie_embeddings=True),
    "mha-two-norms-tied-base": dict(n_head_kv=4, attn_norm_2=True, tie_embeddings=True, rope_base=5000.0),
}


def write(tmp_path, arch, flavour, **kw):
    """A file of the architecture and flavour; K-quant rows need 256 values, so those files
    are wider (and keep their predictors, whose fc2 rows are the rank long, in F16)."""
    if kw.get("weight_type", "F32").endswith("_K"):
        kw = dict(kw, n_embd=256, n_ff=256, pred_type="F16")
    return WRITERS[arch](tmp_path / f"{arch}-{flavour}.gguf", flavour=flavour, **kw)


def run_engine(path, tokens, *, sparse="auto", n_ctx=N_CTX):
    """(logits, stats, is_sparse) of one logits() call through the public API."""
    with sparseinfer.Model(str(path), n_ctx=n_ctx, n_threads=N_THREADS, sparse=sparse, predictor_q8=False) as m:
        out = m.logits(tokens)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        assert out.shape == (len(tokens), m.n_vocab)
        return out, m.stats(), m.is_sparse


def assert_fractions(stats, ref: ArchReference, weight_type, what=""):
    want, tol = ref.layer_fractions(), FRACTION_TOL[weight_type]
    assert np.allclose(stats["layers"], want, rtol=0, atol=tol), f"{what}: layers {stats['layers']} vs {want}"
    assert abs(stats["active_fraction"] - ref.active_fraction()) <= tol, (
        f"{what}: active_fraction {stats['active_fraction']} vs reference {ref.active_fraction()}")


def check_against_reference(w, tokens, *, sparse=None, what=""):
    """The engine's logits and per-layer active fractions for w's file against the reference
    (sparse None: the file's own mode); returns the reference, evaluated."""
    flavour, weight_type = w.hparams["flavour"], w.hparams["weight_type"]
    ref = ArchReference(w, sparse=sparse)
    want = ref.eval(tokens)
    if ref.sparse and weight_type not in QUANTISED:
        assert ref.threshold_margin() > MIN_MARGIN, "test model has a score at the threshold: change the seed"
    got, stats, is_sparse = run_engine(w.path, tokens, sparse="auto" if sparse is None else sparse)
    assert is_sparse == ref.sparse
    assert_close(got, want, weight_type, what, tolerances=TOLERANCES[flavour])
    assert_fractions(stats, ref, weight_type, what)
    return ref


# ---- the builders and the reference on their own (no engine) ----------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
def test_builders_write_the_layout_of_the_facts(tmp_path, arch, flavour):
    pwri = dict(pred_type="F16", threshold=0.25) if flavour == "pwri" else {}
    w = write(tmp_path, arch, flavour, weight_type="Q4_0", seed=1, **pwri)
    info = _core.read_gguf_info(w.path)
    assert info["powerinfer"] == (flavour == "pwri")
    assert info["metadata"]["general.architecture"] == arch
    shapes = {name: (dtype, tuple(shape)) for name, dtype, shape in info["tensors"]}  # ggml order
    n_embd, n_ff, kv_dim = 64, 128, 32
    if arch == "falcon":
        assert shapes["blk.0.attn_qkv.weight"] == ("Q4_0", (n_embd, n_embd + 2 * kv_dim))
        assert shapes["blk.0.attn_norm.bias"] == ("F32", (n_embd,))
        assert info["metadata"]["falcon.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
        assert "output.weight" in shapes
    else:
        assert shapes["position_embd.weight"] == ("Q4_0", (n_embd, 128 + 2))
        assert shapes["blk.1.ffn_up.bias"] == ("F32", (n_ff,))
        assert "opt.attention.head_count_kv" not in info["metadata"]
        assert "opt.attention.layer_norm_epsilon" not in info["metadata"]  # as PowerInfer's converter
        assert "output.weight" not in shapes
    if flavour == "pwri":
        assert shapes["blk.1.ffn_down_t.weight"] == ("Q4_0", (n_embd, n_ff))
        assert shapes["blk.1.fc1.weight"] == ("F16", (n_embd, 32)) and shapes["blk.1.fc2.weight"] == ("F16", (32, n_ff))
        assert ("blk.1.ffn_down_t.bias" in shapes) == (arch == "opt")
        assert info["metadata"]["powerinfer.sparse_threshold"] == pytest.approx(0.25)
    else:
        assert shapes["blk.1.ffn_down.weight"] == ("Q4_0", (n_ff, n_embd))
        assert not any("fc1" in name or "ffn_down_t" in name for name in shapes)


@pytest.mark.parametrize("variant", sorted(FALCON_VARIANTS))
def test_falcon_reference_matches_llama_cpp(tmp_path, variant):
    """The oracle's own check: on dense falcon files in F32, the reference (no rounding but
    ggml's half-table GELU) reproduces llama-cpp-python 0.3.36 with an F32 KV cache.
    Measured: within 6e-5 of max|logit| (2e-4 to 3e-4 with the float GELU); swapping the two
    norms, adjacent-pair RoPE, ReLU, a sequential block, HF's per-KV-head grouped QKV rows
    or ignoring falcon.rope.freq_base each missed by 11% to 64%."""
    w = write(tmp_path, "falcon", "gguf", seed=7, **FALCON_VARIANTS[variant])
    tokens = ggufgen.random_tokens(40, seed=7)
    got = llama_cpp_logits(w.path, tokens, f32_kv=True)
    exact = arch_reference.forward(w, tokens, emulate=False, gelu="table")
    scale = np.abs(exact).max()
    assert np.abs(got - exact).max() <= 3e-4 * scale, f"{variant}: {np.abs(got - exact).max() / scale:.2e}"


def test_falcon_features_each_matter(tmp_path, monkeypatch):
    """Each of falcon's features changes the reference's logits by far more than the checks'
    tolerances, so that agreeing with the reference (and the reference with llama.cpp) checks it."""
    w = write(tmp_path, "falcon", "gguf", seed=8, attn_norm_2=True, rope_base=5000.0)
    tokens = ggufgen.random_tokens(30, seed=8)
    full = arch_reference.forward(w, tokens)
    swapped = dict(w)
    for name in [n for n in w if ".attn_norm." in n]:
        second = name.replace("attn_norm", "attn_norm_2")
        swapped[name], swapped[second] = w[second], w[name]
    changed = {
        "norms swapped": arch_reference.forward(swapped, tokens, w.hparams),
        "default RoPE base": arch_reference.forward(w, tokens, dict(w.hparams, rope_base=10000.0)),
        "no second norm": arch_reference.forward({k: v for k, v in w.items() if "attn_norm_2" not in k},
                                                 tokens, w.hparams),
    }
    relu_ffn = ArchReference(w)
    relu_ffn.gelu = arch_reference.relu
    changed["ReLU"] = relu_ffn.eval(tokens)
    monkeypatch.setattr(arch_reference, "rope_neox", reference.rope_normal)
    changed["adjacent-pair RoPE"] = arch_reference.forward(w, tokens)
    for feature, logits in changed.items():
        assert np.abs(logits - full).max() > 0.05 * full.std(), feature


def test_opt_features_each_matter(tmp_path):
    """OPT's learned positions (read 2 rows down the table) and each group of its biases
    change the reference's logits by far more than the checks' tolerances."""
    w = write(tmp_path, "opt", "gguf", seed=9)
    tokens = ggufgen.random_tokens(30, seed=9)
    full = arch_reference.forward(w, tokens)
    shifted = dict(w, **{"position_embd.weight": np.roll(w["position_embd.weight"], 2, axis=0)})
    changed = {"positions from row 0": arch_reference.forward(shifted, tokens, w.hparams)}
    # no attn_k bias: it adds q . b_k to all of a query's scores alike, which the softmax cancels
    for group in ("attn_q", "attn_v", "attn_output", "ffn_up", "ffn_down", "norm"):
        zeroed = {k: (np.zeros_like(v) if k.endswith(".bias") and group in k else v) for k, v in w.items()}
        changed[f"no {group} bias"] = arch_reference.forward(zeroed, tokens, w.hparams)
    for feature, logits in changed.items():
        assert np.abs(logits - full).max() > 0.05 * full.std(), feature


# ---- the engine against the reference ---------------------------------------------------


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
@pytest.mark.parametrize("arch", ARCHS)
def test_dense_logits_match_reference(tmp_path, arch, flavour, weight_type):
    """GGUF files dense as they are (falcon's GELU FFN, opt's ReLU one), PWRI files with
    sparse=False: every neuron of the ReLU FFN, and active fractions of 1.0."""
    w = write(tmp_path, arch, flavour, weight_type=weight_type, seed=11)
    tokens = ggufgen.random_tokens(40, seed=11)
    check_against_reference(w, tokens, sparse=False if flavour == "pwri" else None,
                            what=f"{arch} {flavour} dense")


@pytest.mark.parametrize("weight_type", WEIGHT_TYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_random_predictor_matches_reference(tmp_path, arch, weight_type):
    """A mask unrelated to the up projection: the sparse logits and the per-layer active
    fractions are the reference's, and far from the dense FFN's."""
    w = write(tmp_path, arch, "pwri", predictor="random", threshold=0.15, weight_type=weight_type, seed=12)
    tokens = ggufgen.random_tokens(24, seed=12)
    ref = check_against_reference(w, tokens, what=f"{arch} random predictor")
    assert 0.25 < ref.active_fraction() < 0.6
    want = ArchReference(w).eval(tokens)
    dense = arch_reference.forward(w, tokens, sparse=False)
    assert np.abs(dense - want).max() > 0.5 * want.std()


@pytest.mark.parametrize("weight_type", ["F32", "F16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_exact_predictor_sparse_equals_dense(tmp_path, arch, weight_type):
    """archgen's exact predictors: falcon's marks exactly the neurons whose ReLU fires, opt's
    (up biases <= 0) a superset of them; either way the sparse FFN is the dense one."""
    w = write(tmp_path, arch, "pwri", predictor="exact", weight_type=weight_type, seed=14)
    tokens = ggufgen.random_tokens(24, seed=14)
    ref = ArchReference(w)
    sparse_ref = ref.eval(tokens)
    assert ref.threshold_margin() > MIN_MARGIN, "test model has a score at the threshold: change the seed"
    for mask, up in zip(ref.masks, ref.ups):
        # F16 rounds the up rows and the predictor apart: only neurons with |up| ~ 0 may differ
        near_zero = 0.0 if weight_type == "F32" else 2e-3
        assert np.abs(up[(up > 0) & ~mask]).max(initial=0) <= near_zero, "a firing neuron left out"
        if arch == "falcon":
            assert np.abs(up[mask & (up < 0)]).max(initial=0) <= near_zero, "a silent neuron marked"
        else:
            assert mask.mean() > (up > 0).mean() + 0.05, "the opt superset is not a strict one"
        assert 0.3 < mask.mean() < 0.7
    dense_ref = arch_reference.forward(w, tokens, sparse=False)
    s = dense_ref.std()
    assert np.abs(sparse_ref - dense_ref).max() <= (1e-12 if weight_type == "F32" else 1e-3) * s

    sparse_out, stats, is_sparse = run_engine(w.path, tokens, sparse=True)
    dense_out, dense_stats, dense_is_sparse = run_engine(w.path, tokens, sparse=False)
    assert is_sparse and not dense_is_sparse
    # F32: only neurons with |up| ~ 1e-7 can differ, and the two paths sum in different orders;
    # F16: neurons with |up| < 2e-3. One wrongly dropped neuron with a typical up moves logits ~1e-2.
    d = np.abs(sparse_out.astype(np.float64) - dense_out).max() / s
    assert d <= (1e-4 if weight_type == "F32" else 3e-3), f"sparse vs dense engine: max|diff|/std = {d:.3g}"
    assert_close(sparse_out, dense_ref, weight_type, "sparse vs dense reference", tolerances=SPARSE_TOL)
    assert_close(dense_out, dense_ref, weight_type, "dense vs dense reference", tolerances=SPARSE_TOL)
    assert_fractions(stats, ref, weight_type, "exact predictor")
    assert dense_stats["active_fraction"] == 1.0 and dense_stats["layers"] == [1.0] * w.hparams["n_layer"]


@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
@pytest.mark.parametrize("variant", sorted(FALCON_VARIANTS))
def test_falcon_variants_match_reference(tmp_path, variant, flavour):
    """The attention variants, in both flavours (PWRI files run sparse)."""
    w = write(tmp_path, "falcon", flavour, threshold=0.15 if flavour == "pwri" else None, seed=15,
              **FALCON_VARIANTS[variant])
    check_against_reference(w, ggufgen.random_tokens(30, seed=15), what=f"falcon {variant} {flavour}")


def test_opt_layer_norm_epsilon_key(tmp_path):
    """opt.attention.layer_norm_epsilon, where a file has it, replaces the default 1e-5."""
    w = write(tmp_path, "opt", "gguf", ln_eps=1e-2, seed=15)
    tokens = ggufgen.random_tokens(30, seed=15)
    ref = check_against_reference(w, tokens, what="opt eps 1e-2")
    assert ref.eps == pytest.approx(1e-2)
    want, default = ArchReference(w).eval(tokens), ArchReference(w, dict(w.hparams, ln_eps=1e-5)).eval(tokens)
    assert np.abs(want - default).max() > 0.01 * want.std()  # ~30x the F32 tolerance


@pytest.mark.parametrize("weight_type", ["F16", "Q4_0", "Q4_K"])
def test_falcon_teacher_forced_within_llama_cpps_own_noise(tmp_path, weight_type):
    """300 tokens of a dense falcon file teacher-forced: mean KL and top-1 agreement against
    llama-cpp-python's logits, next to llama.cpp's own F16-against-F32 KV cache noise (or the
    engine closer to the exact reference than llama.cpp, whose GELU table and F16 matrix
    inputs it does not share; see test_architectures.py)."""
    w = write(tmp_path, "falcon", "gguf", weight_type=weight_type, n_ctx=512, n_head_kv=1, attn_norm_2=True,
              seed=16)
    tokens = ggufgen.random_tokens(300, seed=16)
    base = llama_cpp_logits(w.path, tokens, f32_kv=False, n_ctx=512)
    noise = llama_cpp_logits(w.path, tokens, f32_kv=True, n_ctx=512)
    ours, _, _ = run_engine(w.path, tokens, n_ctx=512)
    own_kl, our_kl = mean_kl(base, noise), mean_kl(base, ours)
    own_top1, our_top1 = np.mean(base.argmax(1) == noise.argmax(1)), np.mean(base.argmax(1) == ours.argmax(1))
    assert 0 < own_kl < 0.05, own_kl  # the yardstick itself is sane
    exact = arch_reference.forward(w, tokens)
    closer_to_exact = mean_kl(exact, ours) <= mean_kl(exact, base)
    assert our_kl <= 1.5 * own_kl or closer_to_exact, f"mean KL {our_kl:.2e} against llama.cpp's own {own_kl:.2e}"
    assert our_top1 >= own_top1 - 0.02, f"top-1 agreement {our_top1:.3f} against llama.cpp's own {own_top1:.3f}"


# ---- positions, chunks, info, bad files ----------------------------------------------------


@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_in_chunks_equals_whole(tmp_path, arch, flavour):
    """A prompt in pieces gives the bits of the whole: each piece's positions (opt's rows of
    the position table, falcon's RoPE angles) continue where the last one stopped."""
    w = write(tmp_path, arch, flavour, threshold=0.15 if flavour == "pwri" else None, seed=17)
    tokens = ggufgen.random_tokens(50, seed=17)
    model = _core.Model(w.path, predictor_q8=False)
    sparse = flavour == "pwri"
    whole = _core.Session(model, 128, N_THREADS, sparse=sparse)
    whole.eval(tokens, all_logits=True)
    pieces = _core.Session(model, 128, N_THREADS, sparse=sparse)
    rows = []
    for start, end in ((0, 1), (1, 17), (17, 50)):
        pieces.eval(tokens[start:end], all_logits=True)
        rows.append(pieces.logits())
    np.testing.assert_array_equal(np.concatenate(rows), whole.logits())
    assert_close(whole.logits(), ArchReference(w).eval(tokens), w.hparams["weight_type"], f"{arch} {flavour}",
                 tolerances=TOLERANCES[flavour])


@pytest.mark.filterwarnings("ignore::sparseinfer.ContextLengthWarning")
@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
def test_opt_positions_past_the_table_are_refused(tmp_path, flavour):
    """position_embd has n_ctx_train + 2 rows: a context of n_ctx_train positions runs to its
    last row, a longer one is refused naming the position embeddings (no row to read)."""
    w = write(tmp_path, "opt", flavour, n_ctx=64, seed=18)
    n_ctx = w.hparams["n_ctx"]
    assert w["position_embd.weight"].shape[0] == n_ctx + 2
    tokens = ggufgen.random_tokens(n_ctx, seed=18)
    with sparseinfer.Model(w.path, n_ctx=n_ctx, n_threads=N_THREADS, predictor_q8=False) as m:
        assert_close(m.logits(tokens), ArchReference(w).eval(tokens), "F32", "every position",
                     tolerances=TOLERANCES[flavour])
        with pytest.raises((ValueError, errors.SparseInferError), match="(?i)position"):
            with m.session(n_ctx=n_ctx + 1) as s:
                s.logits(tokens[:3])
    with pytest.raises((ValueError, errors.SparseInferError), match="(?i)position"):
        with sparseinfer.Model(w.path, n_ctx=2 * n_ctx, n_threads=N_THREADS, predictor_q8=False) as m:
            m.logits(tokens[:3])


@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
@pytest.mark.parametrize("arch", ARCHS)
def test_info_names_the_architecture(tmp_path, arch, flavour):
    w = write(tmp_path, arch, flavour, seed=19)
    result = subprocess.run([sys.executable, "-m", "sparseinfer", "info", w.path], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)}
    assert fields["architecture"] == arch
    assert fields["magic"].startswith("PWRI" if flavour == "pwri" else "GGUF")
    assert fields["n_head"] == ("4 (kv 2)" if arch == "falcon" else "4")  # opt: no head_count_kv key
    assert fields["runs"] == "yes"


@pytest.mark.parametrize("flavour", archgen.FLAVOURS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gpu_layers_take_the_blocks(tmp_path, arch, flavour):
    """Past the check of the blocks (LayerNorm, falcon's parallel blocks and second norm, the
    gate-less FFN, opt's biases and learned positions all run on the GPU; their logits:
    tests/gpu/test_gpu_forward.py): what stops these is the missing plugin itself."""
    falcon_40b = dict(attn_norm_2=True) if arch == "falcon" else {}  # the second norm too
    w = write(tmp_path, arch, flavour, seed=20, **falcon_40b)
    missing_plugin = str(tmp_path / "no-such-plugin.so")
    with pytest.raises(errors.UnsupportedModelError, match="could not be loaded") as refused:
        _core.DeviceModel(_core.Model(w.path), missing_plugin)
    assert missing_plugin in str(refused.value) and "runs on the CPU only" not in str(refused.value)


@pytest.mark.parametrize("arch, flavour, kw, name", [
    ("falcon", "gguf", dict(skip_tensors=["blk.0.attn_norm.bias"]), "blk.0.attn_norm.bias"),
    ("falcon", "pwri", dict(skip_tensors=["blk.1.attn_norm.bias"]), "blk.1.attn_norm.bias"),
    ("falcon", "gguf", dict(skip_tensors=["output_norm.bias"]), "output_norm.bias"),
    ("falcon", "gguf", dict(attn_norm_2=True, skip_tensors=["blk.1.attn_norm_2.bias"]), "blk.1.attn_norm_2.bias"),
    # transposed: {n_embd + 2 kv_dim, n_embd} where {n_embd, n_embd + 2 kv_dim} belongs
    ("falcon", "gguf", dict(reshape_tensors={"blk.1.attn_qkv.weight": (64, 128)}), "blk.1.attn_qkv.weight"),
    ("falcon", "pwri", dict(reshape_tensors={"blk.0.attn_qkv.weight": (64, 128)}), "blk.0.attn_qkv.weight"),
    ("falcon", "gguf", dict(skip_keys=["falcon.attention.layer_norm_epsilon"]), "falcon.attention.layer_norm_epsilon"),
    ("opt", "gguf", dict(skip_tensors=["position_embd.weight"]), "position_embd.weight"),
    ("opt", "pwri", dict(skip_tensors=["position_embd.weight"]), "position_embd.weight"),
    ("opt", "pwri", dict(skip_tensors=["blk.1.ffn_down_t.bias"]), "blk.1.ffn_down_t.bias"),
    ("opt", "gguf", dict(skip_tensors=["blk.0.attn_v.bias"]), "blk.0.attn_v.bias"),
])
def test_bad_files_are_refused_naming_the_tensor(tmp_path, arch, flavour, kw, name):
    w = write(tmp_path, arch, flavour, **kw)
    with pytest.raises(errors.ModelFormatError, match=re.escape(name)):
        _core.Model(w.path, predictor_q8=False)
