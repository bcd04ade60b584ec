"""Builders of synthetic tiny falcon and opt models, as plain GGUF files and as PowerInfer
(magic PWRI) files, in the keys and tensor names of docs/architecture-facts.md section 4.

Like ggufgen's and sparsegen's writers, each returns ModelWeights: the float32 values the
file holds (quantised types round-tripped), `.hparams` for tests/support/arch_reference.py
(with each tensor's stored type, so that the reference rounds matrix inputs as the engine
does), `.path` and `.vocab`. numpy arrays are (out, in); 1-D tensors are always F32.

falcon (upstream llama.cpp's dense files and PowerInfer's ReluFalcon files):
    token_embd, output_norm.weight/.bias, output (absent: tied to token_embd);
    blk.N.attn_norm.weight/.bias, blk.N.attn_norm_2.weight/.bias (Falcon-40B's second norm,
    optional), blk.N.attn_qkv.weight (n_embd + 2 kv_dim, n_embd): rows all Q heads, then all
    K heads, then all V heads; blk.N.attn_output.weight, blk.N.ffn_up.weight (n_ff, n_embd);
    GGUF: blk.N.ffn_down.weight (n_embd, n_ff); PWRI: blk.N.ffn_down_t.weight (n_ff, n_embd),
    fc1 (rank, n_embd), fc2 (n_ff, rank). No biases on linear layers.
opt (PowerInfer's):
    token_embd, position_embd (n_ctx + 2, n_embd), output_norm.weight/.bias, no output
    (logits from token_embd); per layer attn_norm, attn_q/k/v, attn_output, ffn_norm and
    ffn_up each with .weight and .bias; GGUF: ffn_down.weight + .bias; PWRI:
    ffn_down_t.weight (n_ff, n_embd) + ffn_down_t.bias (n_embd), fc1, fc2.

Predictors of the PWRI files (the score of neuron j is fc2_j . relu(fc1 x), x the
predictor's input: falcon's layer input, opt's residual after attention):
  "random": fc1, fc2 random; the mask has nothing to do with the up projection, so the
            sparse result differs clearly from the dense one.
  "exact":  fc1 = [A; -A], fc2 = [B, -B] give the score (B A x)_j (relu(z) - relu(-z) = z),
            and the up projection is B A diag(1 / w) for the LayerNorm (weight w, bias b) in
            front of it. The LayerNorm subtracts the mean and adds b, so A's rows are made
            mean-free (A 1 = 0) and b / w is drawn orthogonal to them (A (b / w) = 0); then
            up_j . LN(x) = (B A x)_j / sqrt(var(x) + eps): the same sign as the score.
            falcon (no up bias): the predictor at threshold 0 marks exactly the neurons whose
            ReLU fires, and the sparse FFN equals the dense one.
            opt adds the up bias c_j, which no bias-free predictor of x can follow (the
            LayerNorm's 1 / sqrt(var) scales the projection, not the bias); its exact files
            draw c <= 0, so that a neuron whose pre-activation is positive has a positive
            score: the mask is a superset of the firing neurons and the sparse FFN still
            equals the dense one (the extra neurons compute relu(<= 0) = 0).
  Exact in F32 up to rounding; quantised weights break the identity (F16 only slightly).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Union

import numpy as np

import gguf

import ggufgen
from ggufgen import ModelWeights, RandomWeights, add_tensor, default_vocab, write_file
from sparsegen import GGUF_MAGIC, PWRI_MAGIC, set_magic, stored_type

FLAVOURS = ("gguf", "pwri")
PREDICTORS = ("random", "exact")


def _mean_free_projection(draw: RandomWeights, rank: int, n_embd: int) -> np.ndarray:
    """A (rank, n_embd) with rows of zero mean: A x ignores the mean a LayerNorm removes."""
    a = draw.rng.standard_normal((rank, n_embd)) / np.sqrt(n_embd)
    return a - a.mean(axis=1, keepdims=True)


def _orthogonal_to_rows(draw: RandomWeights, a: np.ndarray, std: float) -> np.ndarray:
    """A random vector z with a z = 0 (its projection off a's row space)."""
    z = draw.rng.standard_normal(a.shape[1]) * std
    return z - a.T @ np.linalg.solve(a @ a.T, a @ z)


def _predictor(draw: RandomWeights, raw: dict, p: str, *, kind: str, n_embd: int, n_ff: int, rank: int,
               norm: str) -> None:
    """blk.N.fc1/fc2 and ffn_up into raw; for the exact predictor also the bias of the norm
    `norm` (whose weight is already in raw) in front of ffn_up (see the module docstring)."""
    if kind == "exact":
        a = _mean_free_projection(draw, rank, n_embd)
        b = draw.rng.standard_normal((n_ff, rank)) / np.sqrt(rank)
        w = raw[p + norm + ".weight"].astype(np.float64)
        raw[p + norm + ".bias"] = (w * _orthogonal_to_rows(draw, a, 0.2)).astype(np.float32)
        raw[p + "ffn_up.weight"] = ((b @ a) / w[None, :]).astype(np.float32)
        raw[p + "fc1.weight"] = np.concatenate([a, -a], axis=0).astype(np.float32)
        raw[p + "fc2.weight"] = np.concatenate([b, -b], axis=1).astype(np.float32)
    else:
        raw[p + norm + ".bias"] = draw.vector(n_embd, 0.2)
        raw[p + "ffn_up.weight"] = draw.matrix(n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        raw[p + "fc1.weight"] = draw.matrix(rank, n_embd, 1.0 / np.sqrt(n_embd))
        raw[p + "fc2.weight"] = draw.matrix(n_ff, rank, 1.0 / np.sqrt(rank))


def falcon_weights(*, n_vocab: int = 320, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                   n_head_kv: int = 2, n_ff: int = 128, flavour: str = "gguf", predictor: str = "random",
                   rank: int = 32, attn_norm_2: bool = False,
                   tie_embeddings: bool = False, logit_scale: float = 3.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights of a random falcon model (before any type round trip)."""
    _check(flavour, predictor, n_embd, n_head, n_head_kv)
    draw = RandomWeights(seed)
    kv_dim = n_head_kv * (n_embd // n_head)
    raw: dict[str, np.ndarray] = {"token_embd.weight": draw.matrix(n_vocab, n_embd, 1.0)}
    for i in range(n_layer):
        p = f"blk.{i}."
        raw[p + "attn_norm.weight"] = draw.norm(n_embd)
        if attn_norm_2:
            raw[p + "attn_norm_2.weight"] = draw.norm(n_embd)
            raw[p + "attn_norm_2.bias"] = draw.vector(n_embd, 0.2)
        # Q and K a little larger so that attention is not uniform
        raw[p + "attn_qkv.weight"] = np.concatenate([
            draw.matrix(n_embd + kv_dim, n_embd, 1.5 / np.sqrt(n_embd)),
            draw.matrix(kv_dim, n_embd, 1.0 / np.sqrt(n_embd))])
        raw[p + "attn_output.weight"] = draw.matrix(n_embd, n_embd, 0.7 / np.sqrt(n_embd))
        if flavour == "pwri":
            _predictor(draw, raw, p, kind=predictor, n_embd=n_embd, n_ff=n_ff, rank=rank, norm="attn_norm")
            raw[p + "ffn_down_t.weight"] = draw.matrix(n_ff, n_embd, 1.5 / np.sqrt(n_ff))
        else:
            raw[p + "attn_norm.bias"] = draw.vector(n_embd, 0.2)
            raw[p + "ffn_up.weight"] = draw.matrix(n_ff, n_embd, 1.0 / np.sqrt(n_embd))
            raw[p + "ffn_down.weight"] = draw.matrix(n_embd, n_ff, 1.5 / np.sqrt(n_ff))
    _add_output(draw, raw, n_vocab, n_embd, tie_embeddings, logit_scale)
    return raw


def opt_weights(*, n_vocab: int = 320, n_embd: int = 64, n_layer: int = 2, n_head: int = 4, n_ff: int = 128,
                n_ctx: int = 128, flavour: str = "gguf", predictor: str = "random", rank: int = 32,
                logit_scale: float = 3.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights of a random opt model (before any type round trip); position_embd has
    n_ctx + 2 rows (OPT's learned positions start at row 2)."""
    _check(flavour, predictor, n_embd, n_head, n_head)
    draw = RandomWeights(seed)
    raw: dict[str, np.ndarray] = {"token_embd.weight": draw.matrix(n_vocab, n_embd, 1.0),
                                  "position_embd.weight": draw.matrix(n_ctx + 2, n_embd, 0.5)}
    for i in range(n_layer):
        p = f"blk.{i}."
        raw[p + "attn_norm.weight"] = draw.norm(n_embd)
        raw[p + "attn_norm.bias"] = draw.vector(n_embd, 0.2)
        for name, std in (("q", 1.5), ("k", 1.5), ("v", 1.0)):
            raw[p + f"attn_{name}.weight"] = draw.matrix(n_embd, n_embd, std / np.sqrt(n_embd))
            raw[p + f"attn_{name}.bias"] = draw.vector(n_embd, 0.5)
        raw[p + "attn_output.weight"] = draw.matrix(n_embd, n_embd, 0.7 / np.sqrt(n_embd))
        raw[p + "attn_output.bias"] = draw.vector(n_embd, 0.2)
        raw[p + "ffn_norm.weight"] = draw.norm(n_embd)
        down = "ffn_down_t" if flavour == "pwri" else "ffn_down"
        if flavour == "pwri":
            _predictor(draw, raw, p, kind=predictor, n_embd=n_embd, n_ff=n_ff, rank=rank, norm="ffn_norm")
        else:
            raw[p + "ffn_norm.bias"] = draw.vector(n_embd, 0.2)
            raw[p + "ffn_up.weight"] = draw.matrix(n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        # exact predictor: up biases <= 0 keep its mask a superset of the firing neurons
        bias = draw.vector(n_ff, 0.3)
        raw[p + "ffn_up.bias"] = -np.abs(bias) if predictor == "exact" and flavour == "pwri" else bias
        if flavour == "pwri":
            raw[p + "ffn_down_t.weight"] = draw.matrix(n_ff, n_embd, 1.5 / np.sqrt(n_ff))
        else:
            raw[p + "ffn_down.weight"] = draw.matrix(n_embd, n_ff, 1.5 / np.sqrt(n_ff))
        raw[p + down + ".bias"] = draw.vector(n_embd, 0.2)
    _add_output(draw, raw, n_vocab, n_embd, True, logit_scale)
    return raw


def _check(flavour: str, predictor: str, n_embd: int, n_head: int, n_head_kv: int) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}")
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("bad head counts")


def _add_output(draw: RandomWeights, raw: dict, n_vocab: int, n_embd: int, tie: bool, logit_scale: float) -> None:
    """The final norm and, untied, the output matrix: logits of std about logit_scale (tied,
    the norm's weight and bias carry the scale, since token_embd's rows have std 1)."""
    raw["output_norm.weight"] = draw.norm(n_embd)
    raw["output_norm.bias"] = draw.vector(n_embd, 0.2)
    if tie:
        for name in ("output_norm.weight", "output_norm.bias"):
            raw[name] = (raw[name] * logit_scale / np.sqrt(n_embd)).astype(np.float32)
    else:
        raw["output.weight"] = draw.matrix(n_vocab, n_embd, logit_scale / np.sqrt(n_embd))


def write_falcon_model(
    path: Union[str, os.PathLike], *, n_vocab: int = 320, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
    n_head_kv: int = 2, n_ff: int = 128, n_ctx: int = 128, rope_base: Optional[float] = None,
    ln_eps: float = 1e-5, weight_type: str = "F32", pred_type: Optional[str] = None, flavour: str = "gguf",
    predictor: str = "random", rank: int = 32, threshold: Optional[float] = None,
    attn_norm_2: bool = False, tie_embeddings: bool = False, seed: int = 0,
    skip_keys: Iterable[str] = (), skip_tensors: Iterable[str] = (), reshape_tensors: Optional[dict] = None,
) -> ModelWeights:
    """Writes a random tiny falcon model: flavour "gguf" (magic GGUF, upstream llama.cpp's
    dense GELU falcon) or "pwri" (magic PWRI, PowerInfer's sparse ReLU falcon).

    rope_base None leaves falcon.rope.freq_base out (llama.cpp's default 10000 applies).
    threshold None leaves powerinfer.sparse_threshold out (PWRI only). For broken-file tests:
    skip_keys / skip_tensors are left out, reshape_tensors maps a name to a numpy shape
    (same element count) written instead.
    """
    raw = falcon_weights(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                         n_ff=n_ff, flavour=flavour, predictor=predictor, rank=rank, attn_norm_2=attn_norm_2,
                         tie_embeddings=tie_embeddings, seed=seed)
    keys = _common_keys(n_ctx, n_embd, n_layer, n_ff, n_head)
    keys["attention.head_count_kv"] = n_head_kv
    keys["attention.layer_norm_epsilon"] = float(ln_eps)
    if rope_base is not None:
        keys["rope.freq_base"] = float(rope_base)
    w = _write(path, "falcon", keys, raw, flavour=flavour, weight_type=weight_type, pred_type=pred_type,
               threshold=threshold, skip_keys=skip_keys, skip_tensors=skip_tensors, reshape_tensors=reshape_tensors)
    w.hparams.update(n_head_kv=n_head_kv, ln_eps=float(np.float32(ln_eps)),
                     rope_base=10000.0 if rope_base is None else float(np.float32(rope_base)))
    return w


def write_opt_model(
    path: Union[str, os.PathLike], *, n_vocab: int = 320, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
    n_ff: int = 128, n_ctx: int = 128, ln_eps: Optional[float] = None, weight_type: str = "F32",
    pred_type: Optional[str] = None, flavour: str = "gguf", predictor: str = "random", rank: int = 32,
    threshold: Optional[float] = None, seed: int = 0,
    skip_keys: Iterable[str] = (), skip_tensors: Iterable[str] = (), reshape_tensors: Optional[dict] = None,
) -> ModelWeights:
    """Writes a random tiny opt model (flavour "gguf": dense, ffn_down; "pwri": PowerInfer's
    sparse file). ln_eps None leaves opt.attention.layer_norm_epsilon out, as PowerInfer's
    converter does (the engine's default 1e-5 applies); n_ctx is opt.context_length, and
    position_embd has n_ctx + 2 rows. Other arguments as write_falcon_model's."""
    raw = opt_weights(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_ff=n_ff, n_ctx=n_ctx,
                      flavour=flavour, predictor=predictor, rank=rank, seed=seed)
    keys = _common_keys(n_ctx, n_embd, n_layer, n_ff, n_head)
    if ln_eps is not None:
        keys["attention.layer_norm_epsilon"] = float(ln_eps)
    w = _write(path, "opt", keys, raw, flavour=flavour, weight_type=weight_type, pred_type=pred_type,
               threshold=threshold, skip_keys=skip_keys, skip_tensors=skip_tensors, reshape_tensors=reshape_tensors)
    w.hparams.update(n_head_kv=n_head, ln_eps=1e-5 if ln_eps is None else float(np.float32(ln_eps)))
    return w


def _common_keys(n_ctx: int, n_embd: int, n_layer: int, n_ff: int, n_head: int) -> dict:
    return {"context_length": n_ctx, "embedding_length": n_embd, "feed_forward_length": n_ff,
            "block_count": n_layer, "attention.head_count": n_head}


def _write(path, arch: str, keys: dict, raw: dict, *, flavour: str, weight_type: str, pred_type: Optional[str],
           threshold: Optional[float], skip_keys: Iterable[str], skip_tensors: Iterable[str],
           reshape_tensors: Optional[dict]) -> ModelWeights:
    """Writes keys (under "<arch>."), the SPM test vocabulary and raw's tensors; sets the
    magic of the flavour. Returns the weights with the hparams both architectures share."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}")
    pred_type = pred_type or weight_type
    for t in (weight_type, pred_type):
        if t not in ggufgen.WEIGHT_TYPES + ggufgen.STORAGE_TYPES:
            raise ValueError(f"unknown weight type {t!r}")
    if flavour == "gguf" and (threshold is not None or any(k.endswith("fc1.weight") for k in raw)):
        raise ValueError("a threshold or predictor weights in a GGUF-flavour file: write it with flavour='pwri'")
    skip_keys, skip_tensors = set(skip_keys), set(skip_tensors)
    reshape_tensors = dict(reshape_tensors or {})
    n_vocab, n_embd = raw["token_embd.weight"].shape
    vocab = default_vocab(n_vocab)

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.name", f"sparseinfer-test-tiny-{arch}-{flavour}")
    for key, value in keys.items():
        if arch + "." + key in skip_keys:
            continue
        if isinstance(value, float):
            writer.add_float32(arch + "." + key, value)
        else:
            writer.add_uint32(arch + "." + key, value)
    if threshold is not None:
        writer.add_float32("powerinfer.sparse_threshold", float(threshold))
    ggufgen.add_spm_vocab(writer, vocab)

    w = ModelWeights()
    types: dict[str, str] = {}
    for name, arr in raw.items():
        if name in skip_tensors:
            continue
        if name in reshape_tensors:
            arr = arr.reshape(reshape_tensors[name])
        t = stored_type(name, arr, weight_type, pred_type)
        w[name] = add_tensor(writer, name, arr, t)
        types[name] = t
    write_file(writer)
    set_magic(path, PWRI_MAGIC if flavour == "pwri" else GGUF_MAGIC)

    n_layer = keys["block_count"]
    w.hparams = dict(
        arch=arch, flavour=flavour, n_vocab=int(n_vocab), n_embd=int(n_embd), n_layer=n_layer,
        n_head=keys["attention.head_count"], n_ff=keys["feed_forward_length"], n_ctx=keys["context_length"],
        weight_type=weight_type, tensor_types=types,
        threshold=float(np.float32(0.0 if threshold is None else threshold)),
    )
    w.path = str(path)
    w.vocab = list(vocab)
    return w
