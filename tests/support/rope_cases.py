"""Files with scaled RoPE (linear, YaRN, the attention factor, Llama 3's frequency factors
rope_freqs.weight) as llama.cpp reads them from a file (docs/rope-scaling.md), for the CPU's
tests (tests/model/test_rope_scaling.py) and the GPU's (tests/gpu/test_gpu_forward.py).

Each case is (metadata, the scaling as reference.rope_scaled_frequencies takes it, frequency
factors): write_cases writes one tiny F32 llama file per case, with the reference's hparams.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

import ggufgen

CTX = 128  # context_length: the extended context
ORIGINAL = 32  # rope.scaling.original_context_length
ROPE_DIM = 16  # ggufgen's default head size (n_embd 64, 4 heads)
# Llama 3's pattern: the fast pairs keep their frequency, the slow ones are divided by 8.
FREQ_FACTORS = np.array([1.0, 1.0, 1.0, 1.5, 2.5, 4.0, 8.0, 8.0], dtype=np.float32)

YARN = {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0,
        "llama.rope.scaling.original_context_length": ORIGINAL}
# name: (metadata, the reference's scaling, frequency factors)
CASES = {
    "linear": ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
               {"type": "linear", "factor": 4.0}, None),
    # no type: llama.cpp's default is "linear"; rope.scale_linear is the factor's older key
    "old_linear_key": ({"llama.rope.scale_linear": 2.0}, {"type": "linear", "factor": 2.0}, None),
    "linear_attn_factor": ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0,
                            "llama.rope.scaling.attn_factor": 1.25},
                           {"type": "linear", "factor": 2.0, "attn_factor": 1.25}, None),
    "yarn": (YARN, {"type": "yarn", "factor": 4.0, "original_context": ORIGINAL}, None),
    "yarn_attn_factor": (dict(YARN, **{"llama.rope.scaling.attn_factor": 0.8}),
                         {"type": "yarn", "factor": 4.0, "original_context": ORIGINAL, "attn_factor": 0.8}, None),
    # as Llama 3.1 files are converted: frequency factors and no scaling keys
    "freq_factors": ({}, None, FREQ_FACTORS),
    "yarn_freq_factors": (YARN, {"type": "yarn", "factor": 4.0, "original_context": ORIGINAL}, FREQ_FACTORS),
}


def write(path: Union[str, os.PathLike], kv: Optional[dict] = None, freq_factors=None, *,
          architecture: str = "llama", **kw) -> ggufgen.ModelWeights:
    """A tiny llama (or another architecture of llama's blocks) file of context CTX with the
    metadata kv (keys given under "llama.", renamed to the architecture's) and, where given,
    the frequency factors as rope_freqs.weight."""
    if kv is not None and architecture != "llama":
        kv = {architecture + key[len("llama"):] if key.startswith("llama.") else key: value
              for key, value in kv.items()}
    extra_tensors = None if freq_factors is None else {"rope_freqs.weight": freq_factors}
    return ggufgen.write_llama_model(path, n_ctx=CTX, seed=1, extra_kv=kv, extra_tensors=extra_tensors,
                                     architecture=architecture, **kw)


def write_cases(directory: Union[str, os.PathLike], names=None, **kw) -> dict:
    """name -> (path, weights, the reference's hparams) for CASES (or those of `names`) and the
    unscaled model "plain", written in `directory`; kw as write's."""
    out = {}
    cases = dict(CASES, plain=({}, None, None))
    for name in cases if names is None else names:
        kv, scaling, freq_factors = cases[name]
        path = os.path.join(str(directory), f"{name}.gguf")
        w = write(path, kv, freq_factors, **kw)
        out[name] = (path, w, dict(w.hparams, rope_scaling=scaling))
    return out
