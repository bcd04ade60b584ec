"""NumPy float64 reference forward passes for falcon and opt (docs/architecture-facts.md
section 4), dense and PowerInfer-sparse, for the files tests/support/archgen.py writes.

Both use LayerNorm, `(x - mean) / sqrt(var + eps) * w + b` with the biased variance, and
causal softmax attention with scale 1/sqrt(head_dim) where query head h reads KV head
h // (n_head / n_head_kv).

falcon, per layer (parallel block):
    N  = LN(x; attn_norm);  Na = LN(x; attn_norm_2) if the layer has it, else N
    q, k, v = rows [0, n_embd), [n_embd, n_embd + kv_dim), the rest of attn_qkv . Na
    NeoX RoPE on the whole head (pairs (i, i + head_dim / 2)), base rope_base
    x' = x + attn_output . attention + FFN(N)
    GGUF file: FFN(N) = ffn_down . gelu_tanh(ffn_up . N)
    PWRI file: FFN(N) = sum_j relu(ffn_up_j . N) ffn_down_t[j], and in sparse mode only over
               the neurons with fc2_j . relu(fc1 x) >= threshold, x the layer's input
    logits = output (or token_embd) . LN(x; output_norm)
opt, per layer (sequential, pre-LN; no RoPE: positions come from a learned table):
    x0 = token_embd[t] + position_embd[p + 2]            (p: 0-based position)
    h  = LN(x; attn_norm);  q, k, v = W h + b;  x += attn_output . attention + attn_output.bias
    u  = relu(ffn_up . LN(x; ffn_norm) + ffn_up.bias)
    GGUF: x += ffn_down . u + ffn_down.bias
    PWRI: x += sum_j u_j ffn_down_t[j] + ffn_down_t.bias, sparse mode over the neurons with
          fc2_j . relu(fc1 x) >= threshold, x the residual after attention (before ffn_norm)
    logits = token_embd . LN(x; output_norm)

`emulate=True` (the default) rounds as SparseReference does what the engine rounds: each
matrix-vector input to the dot format of the weight's stored type (round_activation), K
(after RoPE) and V to IEEE halves as they enter the KV cache; the axpy over ffn_down_t rows
takes float h. emulate=False is the plain float64 model (llama-cpp-python with an F32 KV
cache and F32 weights computes that).
`gelu="table"` computes GELU as ggml's CPU does, through a table of IEEE halves (section 5:
input rounded to a half, the tanh formula's value rounded to a half, x <= -10 -> 0,
x >= 10 -> x); `gelu="exact"` (the default) is the float formula the engine uses.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from reference import gelu_tanh, relu, rope_neox
from sparse_reference import round_activation


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu_half_table(x: np.ndarray) -> np.ndarray:
    """ggml's CPU GELU: the tanh formula looked up at x rounded to a half, as a half."""
    looked_up = gelu_tanh(x.astype(np.float16).astype(np.float64)).astype(np.float16).astype(np.float64)
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, looked_up))


class ArchReference:
    """A falcon or opt model (from weights.hparams["arch"]) with a KV cache, for incremental
    evaluation, and the predictor's record of the last eval: per layer `masks[l]` (n_tokens,
    n_ff) bool, `scores[l]` and `ups[l]` (the up projection's pre-activations) float64, for
    PowerInfer files (in dense mode too; empty lists for GGUF files).

    sparse: None follows the file (PWRI files sparse, GGUF files dense); True on a GGUF file
    is refused. threshold: None takes the file's (hparams["threshold"]).
    """

    def __init__(self, weights: Mapping[str, np.ndarray], hparams: Optional[dict] = None, *,
                 sparse: Optional[bool] = None, threshold: Optional[float] = None, emulate: bool = True,
                 gelu: str = "exact"):
        hp = dict(hparams if hparams is not None else getattr(weights, "hparams"))
        self.hp = hp
        self.arch = hp["arch"]
        if self.arch not in ("falcon", "opt"):
            raise ValueError(f"not a falcon or opt model: {self.arch!r}")
        self.pwri = hp["flavour"] == "pwri"
        self.sparse = self.pwri if sparse is None else sparse
        if self.sparse and not self.pwri:
            raise ValueError("a GGUF-flavour file has no predictor to run sparse")
        if gelu not in ("exact", "table"):
            raise ValueError("gelu must be 'exact' or 'table'")
        self.gelu = gelu_half_table if gelu == "table" else gelu_tanh
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.types = dict(hp.get("tensor_types") or {})
        self.emulate = emulate
        # the engine compares float32 scores with a float32 threshold
        self.threshold = float(np.float32(hp.get("threshold", 0.0) if threshold is None else threshold))
        self.n_layer, self.n_head, self.n_head_kv = hp["n_layer"], hp["n_head"], hp["n_head_kv"]
        self.n_embd, self.n_ff = hp["n_embd"], hp["n_ff"]
        self.head_dim = self.n_embd // self.n_head
        self.eps = hp["ln_eps"]
        self.rope_base = hp.get("rope_base", 10000.0)
        self.reset()

    def reset(self) -> None:
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.n_past = 0
        self.masks: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.ups: list[np.ndarray] = []

    def _mv(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W.T with the engine's input rounding for W's stored type."""
        if self.emulate:
            x = round_activation(x, self.types.get(name, "F32"))
        return x @ self.w[name].T

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return layer_norm(x, self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def _attention(self, il: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """q (n, n_head, hd), k and v (n, n_head_kv, hd) of the new tokens at positions pos:
        appends k, v to the layer's cache and returns the heads' outputs (n, n_head * hd)."""
        if self.emulate:
            k, v = (a.astype(np.float16).astype(np.float64) for a in (k, v))
        K = self.k_cache[il] = np.concatenate([self.k_cache[il], k])
        V = self.v_cache[il] = np.concatenate([self.v_cache[il], v])
        hidden = np.arange(K.shape[0])[None, :] > pos[:, None]  # causal: keys after the query
        group = self.n_head // self.n_head_kv
        out = np.empty((len(pos), self.n_head, self.head_dim))
        for h in range(self.n_head):
            s = q[:, h] @ K[:, h // group].T / np.sqrt(self.head_dim)
            s = np.where(hidden, -np.inf, s)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            out[:, h] = (e / e.sum(axis=1, keepdims=True)) @ V[:, h // group]
        return out.reshape(len(pos), -1)

    def _powerinfer_ffn(self, x_pred: np.ndarray, h: np.ndarray, p: str) -> np.ndarray:
        """sum_j relu(up_j . h + bias_j) ffn_down_t[j] over the neurons the predictor marks
        (every neuron in dense mode); records the layer's mask, scores and pre-activations."""
        score = self._mv(relu(self._mv(x_pred, p + "fc1.weight")), p + "fc2.weight")
        mask = score >= self.threshold
        up = self._mv(h, p + "ffn_up.weight") + self.w.get(p + "ffn_up.bias", 0.0)
        hidden = relu(up)
        if self.sparse:
            hidden = np.where(mask, hidden, 0.0)
        self.masks.append(mask)
        self.scores.append(score)
        self.ups.append(up)
        return hidden @ self.w[p + "ffn_down_t.weight"] + self.w.get(p + "ffn_down_t.bias", 0.0)

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens; returns logits (len(tokens), n_vocab) in float64."""
        self.masks, self.scores, self.ups = [], [], []
        tokens = np.asarray(tokens, dtype=np.int64)
        pos = np.arange(self.n_past, self.n_past + len(tokens))
        x = self.w["token_embd.weight"][tokens]
        if self.arch == "opt":
            x = x + self.w["position_embd.weight"][pos + 2]
        for il in range(self.n_layer):
            x = (self._falcon_layer if self.arch == "falcon" else self._opt_layer)(x, il, pos)
        self.n_past += len(tokens)
        out = "output.weight" if "output.weight" in self.w else "token_embd.weight"
        return self._mv(self._norm(x, "output_norm"), out)

    def _split_heads(self, a: np.ndarray, n_heads: int) -> np.ndarray:
        return a.reshape(len(a), n_heads, self.head_dim)

    def _falcon_layer(self, x: np.ndarray, il: int, pos: np.ndarray) -> np.ndarray:
        p = f"blk.{il}."
        n = self._norm(x, p + "attn_norm")
        n_attn = self._norm(x, p + "attn_norm_2") if p + "attn_norm_2.weight" in self.w else n
        qkv = self._mv(n_attn, p + "attn_qkv.weight")
        kv_dim = self.n_head_kv * self.head_dim
        q = self._split_heads(qkv[:, :self.n_embd], self.n_head)
        k = self._split_heads(qkv[:, self.n_embd:self.n_embd + kv_dim], self.n_head_kv)
        v = self._split_heads(qkv[:, self.n_embd + kv_dim:], self.n_head_kv)
        q, k = (rope_neox(a, pos, self.head_dim, self.rope_base) for a in (q, k))
        attn = self._mv(self._attention(il, q, k, v, pos), p + "attn_output.weight")
        if self.pwri:
            ffn = self._powerinfer_ffn(x, n, p)
        else:
            ffn = self._mv(self.gelu(self._mv(n, p + "ffn_up.weight")), p + "ffn_down.weight")
        return x + attn + ffn

    def _opt_layer(self, x: np.ndarray, il: int, pos: np.ndarray) -> np.ndarray:
        p = f"blk.{il}."
        h = self._norm(x, p + "attn_norm")
        q, k, v = (self._mv(h, p + f"attn_{a}.weight") + self.w[p + f"attn_{a}.bias"] for a in "qkv")
        heads = [self._split_heads(a, self.n_head) for a in (q, k, v)]
        x = x + self._mv(self._attention(il, *heads, pos), p + "attn_output.weight") + self.w[p + "attn_output.bias"]
        h2 = self._norm(x, p + "ffn_norm")
        if self.pwri:
            return x + self._powerinfer_ffn(x, h2, p)
        u = relu(self._mv(h2, p + "ffn_up.weight") + self.w[p + "ffn_up.bias"])
        return x + self._mv(u, p + "ffn_down.weight") + self.w[p + "ffn_down.bias"]

    # ---- statistics of the last eval, as SparseReference's ----------------------------------

    def layer_fractions(self) -> list[float]:
        """Per layer, the fraction of neurons predicted active over the last eval's tokens
        (1.0 everywhere in dense mode, as the engine reports)."""
        if not self.sparse:
            return [1.0] * self.n_layer
        return [float(m.mean()) for m in self.masks]

    def active_fraction(self) -> float:
        return float(np.mean(self.layer_fractions()))

    def threshold_margin(self) -> float:
        """The smallest |score - threshold| of the last eval relative to the scores' std: how
        far the closest neuron is from flipping."""
        s = np.concatenate([a.ravel() for a in self.scores])
        return float(np.abs(s - self.threshold).min() / s.std())


def forward(weights, tokens: Sequence[int], hparams: Optional[dict] = None, **kw) -> np.ndarray:
    """Logits (len(tokens), n_vocab), float64, for a fresh sequence."""
    return ArchReference(weights, hparams, **kw).eval(tokens)
