"""A NumPy float64 reference forward pass for llama-architecture models and those built from
llama's blocks (minicpm, qwen2, qwen3).

Conventions (llama.cpp for arch "llama", read for facts only):
- RMSNorm: x / sqrt(mean(x^2) + eps) * w.
- RoPE in GGML "normal" mode (mode 0): rotates ADJACENT pairs (x[2i], x[2i+1]) of each head
  by theta_i = pos * base^(-2i/rope_dim), i < rope_dim/2; dims >= rope_dim pass through.
  NeoX mode (hparams rope_layout "neox"; qwen2, qwen3): the pairs are (x[i], x[i + rope_dim/2]).
- Heads are hparams["head_dim"] wide when given (qwen3), else n_embd / n_head.
- Present in the weights, they apply: attn_q/k/v.bias added after the projections (qwen2);
  attn_q_norm / attn_k_norm, an RMS norm of each head of Q and K before RoPE (qwen3).
- hparams embedding_scale, residual_scale, logit_scale (minicpm): embeddings times the
  first, each attention and FFN output times the second, logits divided by the third.
- gemma3: post_attention_norm / post_ffw_norm (present in the weights) RMS-norm each block's
  output before it is added; activation "gelu_tanh"; attention_scale in place of
  1/sqrt(head_dim); the layers flagged in sliding_layers see the last sliding_window
  positions (their own included) and turn RoPE by local_rope_base, unscaled;
  final_logit_softcap c caps the logits as c tanh(logits / c).
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


def to_neox(rope):
    """A RoPE of adjacent pairs turned into GGML's NeoX mode, whose pairs are
    (x[i], x[i + rope_dim/2]): the same rotation, on the values rearranged into adjacent pairs."""
    def neox(x: np.ndarray, positions: np.ndarray, rope_dim: int, *args) -> np.ndarray:
        half = rope_dim // 2
        order = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
        out = x.copy()
        out[:, :, order] = rope(x[:, :, order], positions, rope_dim, *args)
        return out
    return neox


rope_neox = to_neox(rope_normal)


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
        self.head_dim = hp.get("head_dim") or self.n_embd // self.n_head
        self.rope_layout = hp.get("rope_layout", "normal")
        self.embedding_scale = hp.get("embedding_scale", 1.0)
        self.residual_scale = hp.get("residual_scale", 1.0)
        self.logit_scale = hp.get("logit_scale", 1.0)
        self.rope_dim = hp.get("rope_dim") or self.head_dim
        self.rope_base = hp.get("rope_base", 10000.0)
        self.rope_scaling = hp.get("rope_scaling")  # rope_scaled_frequencies' `scaling`
        self.rope_freq_factors = self.w.get("rope_freqs.weight")
        self.eps = hp.get("rms_eps", 1e-5)
        self.act = {"relu": relu, "silu": silu, "gelu_tanh": gelu_tanh}[hp.get("activation", "silu")]
        self.attention_scale = hp.get("attention_scale") or 1.0 / np.sqrt(self.head_dim)
        self.sliding_window = hp.get("sliding_window", 0)
        self.sliding_layers = hp.get("sliding_layers") or []
        self.local_rope_base = hp.get("local_rope_base", self.rope_base)
        self.n_layer = hp["n_layer"]
        self.reset()

    def reset(self) -> None:
        self.k_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.v_cache = [np.zeros((0, self.n_head_kv, self.head_dim)) for _ in range(self.n_layer)]
        self.n_past = 0

    def _mv(self, x: np.ndarray, name: str) -> np.ndarray:
        """x (n, in) @ W.T for the weight matrix `name`."""
        return x @ self.w[name].T

    def _rope(self, x: np.ndarray, positions: np.ndarray, sliding: bool = False) -> np.ndarray:
        """RoPE in the model's layout; a sliding layer's turns by local_rope_base, unscaled."""
        neox = self.rope_layout == "neox"
        if sliding:
            return (rope_neox if neox else rope_normal)(x, positions, self.rope_dim, self.local_rope_base)
        if self.rope_scaling is None and self.rope_freq_factors is None:
            return (rope_neox if neox else rope_normal)(x, positions, self.rope_dim, self.rope_base)
        rope = to_neox(rope_normal_scaled) if neox else rope_normal_scaled
        return rope(x, positions, self.rope_dim, self.rope_base, self.rope_scaling, self.rope_freq_factors)

    def _kv(self, a: np.ndarray) -> np.ndarray:
        """K or V as the KV cache holds them."""
        return a.astype(np.float16).astype(np.float64) if self.kv_f16 else a

    def _feed_forward(self, x: np.ndarray, prefix: str) -> np.ndarray:
        """The residual after the FFN block of the layer whose tensors start with `prefix`."""
        h = rms_norm(x, self.w[prefix + "ffn_norm.weight"], self.eps)
        g = self._mv(h, prefix + "ffn_gate.weight")
        u = self._mv(h, prefix + "ffn_up.weight")
        return x + self._branch(self._mv(self.act(g) * u, prefix + "ffn_down.weight"), prefix + "post_ffw_norm.weight")

    def _branch(self, out: np.ndarray, post_norm: str) -> np.ndarray:
        """A block's output as it joins the residual stream: post-normed where the weights
        have the norm, times residual_scale."""
        if post_norm in self.w:
            out = rms_norm(out, self.w[post_norm], self.eps)
        return self.residual_scale * out

    def eval(self, tokens: Sequence[int]) -> np.ndarray:
        """Appends tokens; returns logits (len(tokens), n_vocab) in float64."""
        w = self.w
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        group = nh // nkv
        pos = np.arange(self.n_past, self.n_past + n)
        x = w["token_embd.weight"][tokens] * self.embedding_scale  # (n, n_embd)
        scale = self.attention_scale
        for il in range(self.n_layer):
            p = f"blk.{il}."
            sliding = il < len(self.sliding_layers) and self.sliding_layers[il]
            h = rms_norm(x, w[p + "attn_norm.weight"], self.eps)
            q, k, v = (self._mv(h, p + f"attn_{name}.weight") for name in "qkv")
            if p + "attn_q.bias" in w:
                q, k, v = (a + w[p + f"attn_{name}.bias"] for a, name in zip((q, k, v), "qkv"))
            q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
            if p + "attn_q_norm.weight" in w:
                q = rms_norm(q, w[p + "attn_q_norm.weight"], self.eps)
                k = rms_norm(k, w[p + "attn_k_norm.weight"], self.eps)
            q = self._rope(q, pos, sliding)
            k = self._rope(k, pos, sliding)
            K = np.concatenate([self.k_cache[il], self._kv(k)], axis=0)  # (n_past+n, nkv, hd)
            V = np.concatenate([self.v_cache[il], self._kv(v)], axis=0)
            self.k_cache[il], self.v_cache[il] = K, V
            n_kv_tok = K.shape[0]
            # causal mask: query i (absolute pos n_past+i) sees keys j <= n_past+i
            mask = np.arange(n_kv_tok)[None, :] > pos[:, None]  # (n, n_kv_tok)
            if sliding:  # a key p0 is hidden from the query at p1 when p1 - p0 >= window
                mask |= pos[:, None] - np.arange(n_kv_tok)[None, :] >= self.sliding_window
            attn = np.empty((n, nh, hd))
            for hh in range(nh):
                kh = hh // group
                s = (q[:, hh, :] @ K[:, kh, :].T) * scale
                s = np.where(mask, -np.inf, s)
                s = s - s.max(axis=1, keepdims=True)
                e = np.exp(s)
                pr = e / e.sum(axis=1, keepdims=True)
                attn[:, hh, :] = pr @ V[:, kh, :]
            x = x + self._branch(self._mv(attn.reshape(n, nh * hd), p + "attn_output.weight"),
                                 p + "post_attention_norm.weight")
            x = self._feed_forward(x, p)
        h = rms_norm(x, w["output_norm.weight"], self.eps)
        out_name = "output.weight" if "output.weight" in w else "token_embd.weight"
        self.n_past += n
        logits = self._mv(h, out_name) / self.logit_scale
        cap = self.hp.get("final_logit_softcap")
        return cap * np.tanh(logits / cap) if cap else logits


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation (Gemma's gelu_pytorch_tanh)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


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
