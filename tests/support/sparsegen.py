"""Builders of synthetic PowerInfer ("PWRI") GGUF models for the sparse FFN tests.

A PowerInfer file is a GGUF v3 file whose first four bytes are b"PWRI" instead of b"GGUF"
(FACTS.md, PowerInfer GGUF files). It is written here with the `gguf` package and the
magic is overwritten afterwards. Per layer it holds the dense llama attention tensors, then

    blk.N.ffn_gate.weight, blk.N.ffn_up.weight   numpy (n_ff, n_embd): row j = neuron j
    blk.N.ffn_down_t.weight                      numpy (n_ff, n_embd): the down projection
                                                 transposed (W_down = ffn_down_t.T)
    blk.N.fc1.weight                             numpy (rank, n_embd)
    blk.N.fc2.weight                             numpy (n_ff, rank)

and no blk.N.ffn_down.weight. The threshold lives in powerinfer.sparse_threshold (float32;
absent means 0.0).

Every builder returns the float32 weights exactly as the file holds them (quantised types
go through a quantise/dequantise round trip, tests/support/ggufgen.py's `roundtrip`), plus
`.hparams` for tests/support/sparse_reference.py, which records each tensor's stored type so
that the reference can round matrix-vector inputs the way the engine does.

Predictors:
  "random": fc1, fc2 random; which neurons fire has nothing to do with the gate, so the
            sparse result differs clearly from the dense one (the mask matters).
  "exact":  the gate is low rank, gate = B A diag(1/ffn_norm), and fc1 = [A; -A],
            fc2 = [B, -B], so that fc2 relu(fc1 x) = B A x (relu(z) - relu(-z) = z) and
            gate . rmsnorm(x) = s * (B A x)_j with s > 0 the RMS factor: the predictor marks
            (at threshold 0) exactly the neurons whose gate pre-activation is >= 0, and the
            sparse FFN equals the dense ReLU FFN. Exact in F32 up to rounding; quantised
            weights break the identity (F16 only slightly).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

import gguf

import ggufgen
from ggufgen import ModelWeights, RandomWeights, add_hparams, add_tensor, default_vocab, write_file

PWRI_MAGIC = b"PWRI"
GGUF_MAGIC = b"GGUF"
SPARSE_WEIGHT_TYPES = ("F32", "F16", "Q8_0", "Q4_0")
ARCHS = ("llama", "bamboo")


def set_magic(path: Union[str, os.PathLike], magic: bytes) -> None:
    """Overwrites the first four bytes of a file (b"PWRI" / b"GGUF")."""
    if len(magic) != 4:
        raise ValueError("magic must be 4 bytes")
    with open(path, "r+b") as f:
        f.write(magic)


def read_magic(path: Union[str, os.PathLike]) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def stored_type(name: str, arr: np.ndarray, weight_type: str, pred_type: str) -> str:
    """The type a PowerInfer file stores a tensor in: vectors F32, the predictor (fc1, fc2)
    pred_type, every other matrix weight_type."""
    if arr.ndim == 1:
        return "F32"
    return pred_type if name.endswith(("fc1.weight", "fc2.weight")) else weight_type


def _ranks(rank: Union[int, Sequence[int]], n_layer: int) -> list[int]:
    if isinstance(rank, (int, np.integer)):
        return [int(rank)] * n_layer
    ranks = [int(r) for r in rank]
    if len(ranks) != n_layer:
        raise ValueError(f"rank list has {len(ranks)} entries for {n_layer} layers")
    return ranks


def make_sparse_weights(
    *,
    n_vocab: int = 320,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    predictor: str = "random",
    rank: Union[int, Sequence[int]] = 32,
    pred_scale: float = 1.0,
    pred_offset: float = 0.0,
    zero_pred_rows: int = 0,
    logit_scale: float = 3.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Float32 weights of a random sparse llama model (before any type round trip).

    rank: the predictor's hidden size per layer (an int, or one per layer). For the "exact"
    predictor it is the rank r of the gate, and fc1 has 2r rows.
    pred_offset: subtracted from every fc2 element of the random predictor; relu(fc1 x) is
    nonnegative with a sum that grows with |x|, so a positive offset lowers every score
    about in proportion to |x| and makes fewer neurons active (the benchmark tunes sparsity
    with it, since the sign of a score does not depend on |x|).
    zero_pred_rows: the first this many fc2 rows are zero, so those neurons score exactly 0
    (active at threshold 0: "score >= threshold"; inactive at any positive threshold).
    """
    if predictor not in ("random", "exact"):
        raise ValueError("predictor must be 'random' or 'exact'")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("bad head counts")
    ranks = _ranks(rank, n_layer)
    draw = RandomWeights(seed)
    head_dim = n_embd // n_head
    n_kv = n_head_kv * head_dim

    raw: dict[str, np.ndarray] = {"token_embd.weight": draw.matrix(n_vocab, n_embd, 1.0)}
    for i in range(n_layer):
        p = f"blk.{i}."
        draw.add_attention(raw, p, n_embd, n_kv)
        ffn_norm = draw.norm(n_embd)
        raw[p + "ffn_norm.weight"] = ffn_norm
        r = ranks[i]
        if predictor == "exact":
            a = draw.rng.standard_normal((r, n_embd)) / np.sqrt(n_embd)
            b = draw.rng.standard_normal((n_ff, r)) / np.sqrt(r)
            # gate = B A diag(1/ffn_norm): gate . (x s w) = s (B A x)
            raw[p + "ffn_gate.weight"] = ((b @ a) / ffn_norm.astype(np.float64)[None, :]).astype(np.float32)
            raw[p + "fc1.weight"] = np.concatenate([a, -a], axis=0).astype(np.float32)
            raw[p + "fc2.weight"] = np.concatenate([b, -b], axis=1).astype(np.float32)
        else:
            raw[p + "ffn_gate.weight"] = draw.matrix(n_ff, n_embd, 1.0 / np.sqrt(n_embd))
            raw[p + "fc1.weight"] = draw.matrix(r, n_embd, 1.0 / np.sqrt(n_embd))
            fc2 = draw.matrix(n_ff, r, pred_scale / np.sqrt(r)) - np.float32(pred_offset / np.sqrt(r))
            raw[p + "fc2.weight"] = fc2.astype(np.float32)
        if zero_pred_rows:
            raw[p + "fc2.weight"][:zero_pred_rows] = 0.0
        raw[p + "ffn_up.weight"] = draw.matrix(n_ff, n_embd, 1.0 / np.sqrt(n_embd))
        # numpy (n_ff, n_embd): row j = neuron j's contribution (W_down = ffn_down_t.T)
        raw[p + "ffn_down_t.weight"] = draw.matrix(n_ff, n_embd, 1.5 / np.sqrt(n_ff))
    raw["output_norm.weight"] = draw.norm(n_embd)
    raw["output.weight"] = draw.matrix(n_vocab, n_embd, logit_scale / np.sqrt(n_embd))
    return raw


def write_pwri_model(
    path: Union[str, os.PathLike],
    *,
    n_vocab: int = 320,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx: int = 128,
    rope_base: float = 10000.0,
    rms_eps: float = 1e-5,
    weight_type: str = "F32",
    pred_type: Optional[str] = None,
    arch: str = "llama",
    predictor: str = "random",
    rank: Union[int, Sequence[int]] = 32,
    threshold: Optional[float] = None,
    pred_scale: float = 1.0,
    pred_offset: float = 0.0,
    zero_pred_rows: int = 0,
    seed: int = 0,
    magic: bytes = PWRI_MAGIC,
    raw: Optional[dict[str, np.ndarray]] = None,
) -> ModelWeights:
    """Writes a random tiny PowerInfer model and returns the weights it holds.

    weight_type: every 2-D matrix but the predictor; pred_type: fc1/fc2 (default:
    weight_type). arch "bamboo" writes general.architecture "bamboo" and bamboo.* keys
    (FFN relu(gate) * relu(up)). threshold None leaves powerinfer.sparse_threshold out of
    the file (the engine's default is 0.0). `raw` reuses weights from make_sparse_weights
    (to write one model with several thresholds or types); the other shape arguments must
    then match it.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}")
    pred_type = pred_type or weight_type
    for t in (weight_type, pred_type):
        if t not in ggufgen.WEIGHT_TYPES + ggufgen.STORAGE_TYPES:
            raise ValueError(f"unknown weight type {t!r}")
    if raw is None:
        raw = make_sparse_weights(
            n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
            n_ff=n_ff, predictor=predictor, rank=rank, pred_scale=pred_scale,
            pred_offset=pred_offset, zero_pred_rows=zero_pred_rows, seed=seed)
    n_vocab, n_embd = raw["token_embd.weight"].shape
    n_ff = raw["blk.0.ffn_up.weight"].shape[0]
    vocab = default_vocab(n_vocab)

    writer = gguf.GGUFWriter(str(path), arch)
    add_hparams(writer, arch + ".", name="sparseinfer-test-tiny-powerinfer", n_ctx=n_ctx, n_embd=n_embd,
                n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv, rope_base=rope_base,
                rope_dim=n_embd // n_head, rms_eps=rms_eps, n_vocab=n_vocab)
    if threshold is not None:
        writer.add_float32("powerinfer.sparse_threshold", float(threshold))
    ggufgen.add_spm_vocab(writer, vocab)

    w = ModelWeights()
    types: dict[str, str] = {}
    for name, arr in raw.items():
        t = stored_type(name, arr, weight_type, pred_type)
        w[name] = add_tensor(writer, name, arr, t)
        types[name] = t
    write_file(writer)
    set_magic(path, magic)

    w.hparams = dict(
        n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
        n_ff=n_ff, n_ctx=n_ctx, rope_base=rope_base, rope_dim=n_embd // n_head, rms_eps=rms_eps,
        arch=arch, relu_up=(arch == "bamboo"),
        threshold=float(np.float32(0.0 if threshold is None else threshold)),
        weight_type=weight_type, pred_type=pred_type, tensor_types=types,
        ranks=[raw[f"blk.{i}.fc1.weight"].shape[0] for i in range(n_layer)],
    )
    w.path = str(path)
    w.vocab = list(vocab)
    return w
