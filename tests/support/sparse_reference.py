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
RoPE, grouped-query attention, causal softmax): SparseReference is its ReferenceLlama with
this feed-forward block.

`emulate=True` (the default) rounds what the engine rounds, so that the predictor's
scores, and with them the masks, land within float32 noise of the engine's:
  - the input of each matrix-vector product with Q8_0 weights is quantised to Q8_0 blocks
    (d = amax / 127 in float32, q = rint(x / d), d stored as IEEE half), as with IQ4_NL
    weights; with Q4_0 / Q4_1 / Q5_0 / Q5_1 weights to Q8_1 blocks (d kept in float32), with
    K-quant and IQ4_XS weights to Q8_K blocks (the same over 256 values); F32 / F16 / BF16
    weights see float inputs;
  - K (after RoPE) and V are stored in the KV cache as IEEE halves;
  - the down projection is an axpy of float h over ffn_down_t rows: h is not rounded.
With emulate=False the reference is the plain float64 model.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from reference import ReferenceLlama, q8_blocks, relu, rms_norm

QK = 32
# Dot format of each quantised weight type: (block size, scale stored as an IEEE half).
ACTIVATION_BLOCKS = {"Q8_0": (32, True), "IQ4_NL": (32, True), "Q4_0": (32, False), "Q4_1": (32, False),
                     "Q5_0": (32, False), "Q5_1": (32, False),
                     "Q2_K": (256, False), "Q3_K": (256, False), "Q4_K": (256, False), "Q5_K": (256, False),
                     "Q6_K": (256, False), "IQ4_XS": (256, False)}


def round_activation(x: np.ndarray, weight_type: str) -> np.ndarray:
    """x (..., n) as the engine feeds it to a dot product with weights of `weight_type`."""
    if weight_type not in ACTIVATION_BLOCKS:
        return x
    block, scale_as_half = ACTIVATION_BLOCKS[weight_type]
    shape = x.shape
    if shape[-1] % block:
        raise ValueError(f"row length is not a multiple of {block}")
    scale, q = q8_blocks(x, scale_as_half=scale_as_half, block=block)
    return (q * scale[:, None]).reshape(shape)


class SparseReference(ReferenceLlama):
    """Keeps a KV cache (for incremental evaluation) and the masks of the last eval.

    After eval(): `masks[l]` (n_tokens, n_ff) bool, `scores[l]` (n_tokens, n_ff) float64,
    `gates[l]` (n_tokens, n_ff): the gate pre-activations, for the exactness checks.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], hparams: Optional[dict] = None, *,
                 sparse: bool = True, threshold: Optional[float] = None, emulate: bool = True):
        super().__init__(weights, hparams, kv_f16=emulate)
        hp = self.hp
        self.types = dict(hp.get("tensor_types") or {})
        self.sparse = sparse
        thr = hp.get("threshold", 0.0) if threshold is None else threshold
        self.threshold = float(np.float32(thr))  # the engine compares float32 scores with a float32
        self.emulate = emulate
        self.relu_up = bool(hp.get("relu_up", hp.get("arch") == "bamboo"))
        self.n_ff = hp["n_ff"]

    def reset(self) -> None:
        super().reset()
        self.masks: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.gates: list[np.ndarray] = []

    def _mv(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W.T with the engine's input rounding for W's stored type."""
        if self.emulate:
            x = round_activation(x, self.types.get(name, "F32"))
        return super()._mv(x, name)

    def _feed_forward(self, x: np.ndarray, prefix: str) -> np.ndarray:
        """The feed-forward block, PowerInfer style; records the layer's mask, scores and gates."""
        w = self.w
        ffn_inp = x
        score = self._mv(relu(self._mv(ffn_inp, prefix + "fc1.weight")), prefix + "fc2.weight")
        mask = score >= self.threshold
        cur = rms_norm(ffn_inp, w[prefix + "ffn_norm.weight"], self.eps)
        g = self._mv(cur, prefix + "ffn_gate.weight")
        u = self._mv(cur, prefix + "ffn_up.weight")
        hidden = relu(g) * (relu(u) if self.relu_up else u)
        if self.sparse:
            hidden = np.where(mask, hidden, 0.0)
        self.masks.append(mask)
        self.scores.append(score)
        self.gates.append(g)
        return ffn_inp + hidden @ w[prefix + "ffn_down_t.weight"]

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens; returns logits (len(tokens), n_vocab) in float64."""
        self.masks, self.scores, self.gates = [], [], []
        return super().eval(tokens)

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
