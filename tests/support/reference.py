"""A NumPy float64 reference forward pass for llama-architecture models.

Conventions (llama.cpp for arch "llama", read for facts only):
- RMSNorm: x / sqrt(mean(x^2) + eps) * w.
- RoPE in GGML "normal" mode (mode 0): rotates ADJACENT pairs (x[2i], x[2i+1]) of each head
  by theta_i = pos * base^(-2i/rope_dim), i < rope_dim/2; dims >= rope_dim pass through.
  With RoPE scaling (hparams["rope_scaling"]) or frequency factors (a "rope_freqs.weight"
  weight) the speeds and the length of cos and sin change: rope_scaled_frequencies.
- Grouped-query attention: query head h reads kv head h // (n_head // n_head_kv).
- Causal softmax with scale 1/sqrt(head_dim).
- FFN: down(act(gate(x)) * up(x)), act = SiLU (or ReLU for ReLU models).
- Output: final RMSNorm, then output.weight (or token_embd.weight when tied).
Weights are numpy (out, in) arrays as returned by tests/support/ggufgen.py.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_normal(x: np.ndarray, positions: np.ndarray, rope_dim: int, base: float) -> np.ndarray:
    """x: (n_tokens, n_heads, head_dim). GGML mode 0: adjacent pairs."""
    out = x.copy()
    half = rope_dim // 2
    inv_freq = base ** (-2.0 * np.arange(half, dtype=np.float64) / rope_dim)  # (half,)
    theta = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (n, half)
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    x0 = x[:, :, 0:rope_dim:2]
    x1 = x[:, :, 1:rope_dim:2]
    out[:, :, 0:rope_dim:2] = x0 * cos - x1 * sin
    out[:, :, 1:rope_dim:2] = x0 * sin + x1 * cos
    return out


def rope_scaled_frequencies(rope_dim: int, base: float, scaling: Optional[dict] = None,
                            freq_factors: Optional[np.ndarray] = None) -> tuple[np.ndarray, float]:
    """(per pair the angle per position, the factor on cos and sin) of RoPE as llama.cpp scales
    it (docs/rope-scaling.md). scaling: {"type": "none" | "linear" | "yarn", "factor",
    "original_context" (yarn), "attn_factor" (default 1), "beta_fast" (32), "beta_slow" (1)};
    freq_factors: rope_dim/2 divisors of the pairs' frequencies (Llama 3's rope_freqs).

    ggml (ggml-cpu/ops.cpp ggml_rope_cache_init, rope_yarn, rope_yarn_ramp; ggml.c
    ggml_rope_yarn_corr_dims): theta_extrap = pos base^(-2i/d) / ff_i, theta_interp =
    theta_extrap / factor; YaRN mixes theta = theta_interp (1 - mix) + theta_extrap mix with
    mix = 1 - clamp((i - low) / max(0.001, high - low), 0, 1) (ext_factor 1), low =
    max(0, floor(c(beta_fast))), high = min(d - 1, ceil(c(beta_slow))), c(b) =
    d ln(n_orig / (2 pi b)) / (2 ln base). cos and sin are multiplied by attn_factor, and by
    1 + 0.1 ln(factor) for YaRN with a factor > 1 (llama.cpp's llama_context: for a factor <= 1
    it divides ggml's multiplier out)."""
    s = {"type": "none", "factor": 1.0, "attn_factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}
    s.update(scaling or {})
    factor = 1.0 if s["type"] == "none" else float(s["factor"])
    i = np.arange(rope_dim // 2, dtype=np.float64)
    extrap = base ** (-2.0 * i / rope_dim)
    if freq_factors is not None:
        extrap = extrap / np.asarray(freq_factors, dtype=np.float64)
    interp = extrap / factor
    magnitude = float(s["attn_factor"])
    if s["type"] != "yarn":
        return interp, magnitude

    def corr_dim(turns: float) -> float:
        return rope_dim * np.log(s["original_context"] / (turns * 2.0 * np.pi)) / (2.0 * np.log(base))

    low = max(0.0, np.floor(corr_dim(s["beta_fast"])))
    high = min(rope_dim - 1.0, np.ceil(corr_dim(s["beta_slow"])))
    mix = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
    if factor > 1.0:
        magnitude *= 1.0 + 0.1 * np.log(factor)
    return interp * (1.0 - mix) + extrap * mix, magnitude


def rope_normal_scaled(x: np.ndarray, positions: np.ndarray, rope_dim: int, base: float,
                       scaling: Optional[dict] = None, freq_factors: Optional[np.ndarray] = None) -> np.ndarray:
    """rope_normal with the speeds and magnitude of rope_scaled_frequencies."""
    inv_freq, magnitude = rope_scaled_frequencies(rope_dim, base, scaling, freq_factors)
    theta = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (n, half)
    cos = magnitude * np.cos(theta)[:, None, :]
    sin = magnitude * np.sin(theta)[:, None, :]
    out = x.copy()
    x0 = x[:, :, 0:rope_dim:2]
    x1 = x[:, :, 1:rope_dim:2]
    out[:, :, 0:rope_dim:2] = x0 * cos - x1 * sin
    out[:, :, 1:rope_dim:2] = x0 * sin + x1 * cos
    return out


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def q8_blocks(x: np.ndarray, scale_as_half: bool, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """x (a multiple of `block` values) in the 8-bit blocks the engine quantises activations
    to: per block a scale d = max|x| / 127 in float32 and q = rint(x / d), round half to even.
    The scale is stored as an IEEE half when scale_as_half (Q8_0 blocks, for Q8_0 weights),
    else kept (Q8_1 blocks, for Q4_0 / Q4_1 weights; Q8_K blocks of 256, for the K-quants).
    Returns (scales (blocks,) float64, q (blocks, block): whole numbers in float32)."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, block)
    d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[:, None])
    scale = d.astype(np.float16).astype(np.float64) if scale_as_half else d.astype(np.float64)
    return scale, q


class ReferenceLlama:
    """Keeps a KV cache so that incremental evaluation can be checked too.

    A subclass may change how a matrix product rounds its input (_mv) and the feed-forward
    block (_feed_forward): sparse_reference.py's PowerInfer model is one."""

    def __init__(self, weights: Mapping[str, np.ndarray], hparams: Optional[dict] = None,
                 kv_f16: bool = False):
        """kv_f16: round K (after RoPE) and V to IEEE half precision as they enter the KV
        cache, as an engine with an F16 cache does (queries and softmax stay exact)."""
        hp = dict(hparams if hparams is not None else getattr(weights, "hparams"))
        self.kv_f16 = kv_f16
        self.hp = hp
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.n_head = hp["n_head"]
        self.n_head_kv = hp["n_head_kv"]
        self.n_embd = hp["n_embd"]
        self.head_dim = self.n_embd // self.n_head
        self.rope_dim = hp.get("rope_dim") or self.head_dim
        self.rope_base = hp.get("rope_base", 10000.0)
        self.rope_scaling = hp.get("rope_scaling")  # rope_scaled_frequencies' `scaling`
        self.rope_freq_factors = self.w.get("rope_freqs.weight")
        self.eps = hp.get("rms_eps", 1e-5)
        self.act = relu if hp.get("activation", "silu") == "relu" else silu
        self.n_layer = hp["n_layer"]
        self.reset()

    def reset(self) -> None:
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.n_past = 0

    def _mv(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W.T for the weight matrix `name`."""
        return x @ self.w[name].T

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.rope_scaling is None and self.rope_freq_factors is None:
            return rope_normal(x, positions, self.rope_dim, self.rope_base)
        return rope_normal_scaled(x, positions, self.rope_dim, self.rope_base, self.rope_scaling,
                                  self.rope_freq_factors)

    def _kv(self, a: np.ndarray) -> np.ndarray:
        """K or V as the KV cache holds them."""
        return a.astype(np.float16).astype(np.float64) if self.kv_f16 else a

    def _feed_forward(self, x: np.ndarray, prefix: str) -> np.ndarray:
        """The residual after the FFN block of the layer whose tensors start with `prefix`."""
        h = rms_norm(x, self.w[prefix + "ffn_norm.weight"], self.eps)
        g = self._mv(h, prefix + "ffn_gate.weight")
        u = self._mv(h, prefix + "ffn_up.weight")
        return x + self._mv(self.act(g) * u, prefix + "ffn_down.weight")

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens; returns logits (len(tokens), n_vocab) in float64."""
        w = self.w
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        group = nh // nkv
        pos = np.arange(self.n_past, self.n_past + n)
        x = w["token_embd.weight"][tokens]  # (n, n_embd)
        scale = 1.0 / np.sqrt(hd)
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, w[p + "attn_norm.weight"], self.eps)
            q = self._mv(h, p + "attn_q.weight").reshape(n, nh, hd)
            k = self._mv(h, p + "attn_k.weight").reshape(n, nkv, hd)
            v = self._mv(h, p + "attn_v.weight").reshape(n, nkv, hd)
            q = self._rope(q, pos)
            k = self._rope(k, pos)
            K = np.concatenate([self.k_cache[il], self._kv(k)], axis=0)  # (n_past+n, nkv, hd)
            V = np.concatenate([self.v_cache[il], self._kv(v)], axis=0)
            self.k_cache[il], self.v_cache[il] = K, V
            n_kv_tok = K.shape[0]
            # causal mask: query i (absolute pos n_past+i) sees keys j <= n_past+i
            mask = np.arange(n_kv_tok)[None, :] > pos[:, None]  # (n, n_kv_tok)
            attn = np.empty((n, nh, hd))
            for hh in range(nh):
                kh = hh // group
                s = (q[:, hh, :] @ K[:, kh, :].T) * scale
                s = np.where(mask, -np.inf, s)
                s = s - s.max(axis=1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=1, keepdims=True)
                attn[:, hh, :] = pr @ V[:, kh, :]
            x = x + self._mv(attn.reshape(n, nh * hd), p + "attn_output.weight")
            x = self._feed_forward(x, p)
        h = rms_norm(x, w["output_norm.weight"], self.eps)
        out_name = "output.weight" if "output.weight" in w else "token_embd.weight"
        self.n_past += n
        return self._mv(h, out_name)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def forward(weights: Mapping[str, np.ndarray], tokens: Sequence[int], hparams: Optional[dict] = None,
            kv_f16: bool = False) -> np.ndarray:
    """Logits (len(tokens), n_vocab), float64, for a fresh sequence."""
    return ReferenceLlama(weights, hparams, kv_f16=kv_f16).eval(tokens)


def greedy(weights: Mapping[str, np.ndarray], prompt: Sequence[int], n: int, hparams: Optional[dict] = None,
           kv_f16: bool = False) -> list[int]:
    ref = ReferenceLlama(weights, hparams, kv_f16=kv_f16)
    logits = ref.eval(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(logits[-1]))
        out.append(t)
        logits = ref.eval([t])
    return out
