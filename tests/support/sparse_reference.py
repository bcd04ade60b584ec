"""A NumPy float64 reference forward pass for PowerInfer (sparse ReLU) llama models.

The rules (FACTS.md, PowerInfer GGUF files), per layer, after the attention residual:

    ffn_inp = x
    cur     = rmsnorm(ffn_inp) * ffn_norm
    score   = fc2 @ relu(fc1 @ ffn_inp)          (ffn_inp, not cur; no bias, no sigmoid)
    active  = score >= threshold                 (a score of exactly 0 is active at 0.0)
    h_j     = relu(gate_j . cur) * (up_j . cur)          llama
            = relu(gate_j . cur) * relu(up_j . cur)      bamboo
    h_j     = 0 for inactive neurons (sparse mode only; dense mode computes every neuron)
    x       = ffn_inp + sum_j h_j * ffn_down_t[j]

Attention, RoPE and the output head are those of tests/support/reference.py (GGML "normal"
RoPE, grouped-query attention, causal softmax), reused from there.

`emulate=True` (the default) rounds what the engine rounds, so that the predictor's
scores, and with them the masks, land within float32 noise of the engine's:
  - the input of each matrix-vector product with Q8_0 weights is quantised to Q8_0 blocks
    (d = amax / 127 in float32, q = rint(x / d), d stored as IEEE half), with Q4_0 / Q4_1
    weights to Q8_1 blocks (d kept in float32); F32 / F16 / BF16 weights see float inputs;
  - K (after RoPE) and V are stored in the KV cache as IEEE halves;
  - the down projection is an axpy of float h over ffn_down_t rows: h is not rounded.
With emulate=False the reference is the plain float64 model.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from reference import relu, rms_norm, rope_normal

QK = 32


def round_activation(x: np.ndarray, weight_type: str) -> np.ndarray:
    """x (..., n) as the engine feeds it to a dot product with weights of `weight_type`."""
    if weight_type not in ("Q4_0", "Q8_0", "Q4_1"):
        return x
    shape = x.shape
    if shape[-1] % QK:
        raise ValueError("row length is not a multiple of 32")
    x32 = np.asarray(x, dtype=np.float32).reshape(-1, shape[-1] // QK, QK)
    amax = np.abs(x32).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / np.where(d != 0, d, np.float32(1.0)), np.float32(0.0)).astype(np.float32)
    q = np.rint((x32 * inv).astype(np.float32))
    if weight_type in ("Q4_0", "Q4_1"):  # Q8_1 blocks: the scale stays a float
        scale = d.astype(np.float64)
    else:
        scale = d.astype(np.float16).astype(np.float64)
    return (q.astype(np.float64) * scale).reshape(shape)


class SparseReference:
    """Keeps a KV cache (for incremental evaluation) and the masks of the last eval.

    After eval(): `masks[l]` (n_tokens, n_ff) bool, `scores[l]` (n_tokens, n_ff) float64,
    `gates[l]` (n_tokens, n_ff): the gate pre-activations, for the exactness checks.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], hparams: Optional[dict] = None, *,
                 sparse: bool = True, threshold: Optional[float] = None, emulate: bool = True):
        hp = dict(hparams if hparams is not None else getattr(weights, "hparams"))
        self.hp = hp
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.types = dict(hp.get("tensor_types") or {})
        self.sparse = sparse
        thr = hp.get("threshold", 0.0) if threshold is None else threshold
        self.threshold = float(np.float32(thr))  # the engine compares float32 scores with a float32
        self.emulate = emulate
        self.relu_up = bool(hp.get("relu_up", hp.get("arch") == "bamboo"))
        self.n_head, self.n_head_kv, self.n_embd = hp["n_head"], hp["n_head_kv"], hp["n_embd"]
        self.head_dim = self.n_embd // self.n_head
        self.rope_dim = hp.get("rope_dim") or self.head_dim
        self.rope_base = hp.get("rope_base", 10000.0)
        self.eps = hp.get("rms_eps", 1e-5)
        self.n_layer = hp["n_layer"]
        self.n_ff = hp["n_ff"]
        self.reset()

    def reset(self) -> None:
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.n_past = 0
        self.masks: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.gates: list[np.ndarray] = []

    def _mv(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W.T with the engine's input rounding for W's stored type."""
        if self.emulate:
            x = round_activation(x, self.types.get(name, "F32"))
        return x @ self.w[name].T

    def _kv(self, a: np.ndarray) -> np.ndarray:
        return a.astype(np.float16).astype(np.float64) if self.emulate else a

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens; returns logits (len(tokens), n_vocab) in float64."""
        w = self.w
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        group = nh // nkv
        pos = np.arange(self.n_past, self.n_past + n)
        x = w["token_embd.weight"][tokens]
        scale = 1.0 / np.sqrt(hd)
        self.masks, self.scores, self.gates = [], [], []
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, w[p + "attn_norm.weight"], self.eps)
            q = self._mv(h, p + "attn_q.weight").reshape(n, nh, hd)
            k = self._mv(h, p + "attn_k.weight").reshape(n, nkv, hd)
            v = self._mv(h, p + "attn_v.weight").reshape(n, nkv, hd)
            q = rope_normal(q, pos, self.rope_dim, self.rope_base)
            k = rope_normal(k, pos, self.rope_dim, self.rope_base)
            K = np.concatenate([self.k_cache[il], self._kv(k)], axis=0)
            V = np.concatenate([self.v_cache[il], self._kv(v)], axis=0)
            self.k_cache[il], self.v_cache[il] = K, V
            causal = np.arange(K.shape[0])[None, :] > pos[:, None]
            attn = np.empty((n, nh, hd))
            for hh in range(nh):
                kh = hh // group
                s = (q[:, hh, :] @ K[:, kh, :].T) * scale
                s = np.where(causal, -np.inf, s)
                e = np.exp(s - s.max(axis=1, keepdims=True))
                attn[:, hh, :] = (e / e.sum(axis=1, keepdims=True)) @ V[:, kh, :]
            x = x + self._mv(attn.reshape(n, nh * hd), p + "attn_output.weight")

            # the feed-forward block, PowerInfer style
            ffn_inp = x
            score = self._mv(relu(self._mv(ffn_inp, p + "fc1.weight")), p + "fc2.weight")
            mask = score >= self.threshold
            cur = rms_norm(ffn_inp, w[p + "ffn_norm.weight"], self.eps)
            g = self._mv(cur, p + "ffn_gate.weight")
            u = self._mv(cur, p + "ffn_up.weight")
            hidden = relu(g) * (relu(u) if self.relu_up else u)
            if self.sparse:
                hidden = np.where(mask, hidden, 0.0)
            x = ffn_inp + hidden @ w[p + "ffn_down_t.weight"]
            self.masks.append(mask)
            self.scores.append(score)
            self.gates.append(g)
        h = rms_norm(x, w["output_norm.weight"], self.eps)
        out_name = "output.weight" if "output.weight" in w else "token_embd.weight"
        self.n_past += n
        return self._mv(h, out_name)

    # ---- statistics of the last eval ----------------------------------------------------

    def layer_fractions(self) -> list[float]:
        """Per layer, the fraction of neurons predicted active over the last eval's tokens
        (1.0 everywhere in dense mode, as the engine reports)."""
        if not self.sparse:
            return [1.0] * self.n_layer
        return [float(m.mean()) for m in self.masks]

    def active_fraction(self) -> float:
        if not self.sparse:
            return 1.0
        return float(np.mean([m.mean() for m in self.masks]))

    def threshold_margin(self, skip_exact: bool = True) -> float:
        """The smallest |score - threshold| of the last eval, relative to the scores' std:
        how far the closest neuron is from flipping. Scores that equal the threshold
        exactly (zero fc2 rows at threshold 0) are skipped when skip_exact."""
        s = np.concatenate([x.ravel() for x in self.scores])
        d = np.abs(s - self.threshold)
        if skip_exact:
            d = d[s != self.threshold]
        return float(d.min() / s.std())


def forward(weights, tokens, hparams=None, **kw) -> np.ndarray:
    return SparseReference(weights, hparams, **kw).eval(tokens)


def greedy(weights, prompt: Sequence[int], n: int, hparams=None, **kw) -> tuple[list[int], float]:
    """Greedy continuation of n tokens, evaluated token by token after the prompt, and the
    smallest top-1 / top-2 logit gap met on the way (relative to the logits' std)."""
    ref = SparseReference(weights, hparams, **kw)
    logits = ref.eval(prompt)
    out, gap = [], np.inf
    for _ in range(n):
        row = logits[-1]
        srt = np.sort(row)
        gap = min(gap, (srt[-1] - srt[-2]) / row.std())
        t = int(np.argmax(row))
        out.append(t)
        logits = ref.eval([t])
    return out, float(gap)
