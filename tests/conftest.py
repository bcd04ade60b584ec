"""Shared by every part of the suite: tests/support (the synthetic model builders, the NumPy
reference passes, the CUDA plugin builds) on sys.path, so that a test imports its helpers as
top-level modules (`import ggufgen`) from whichever folder it is in, and the model files that
tests in several folders read, each written once per run."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import ggufgen  # noqa: E402  (found through the line above)


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory):
    """ggufgen's default model: a tiny F32 llama with seed 0."""
    path = tmp_path_factory.mktemp("tiny-llama") / "tiny.gguf"
    ggufgen.write_llama_model(path)
    return str(path)


@pytest.fixture(scope="session")
def slow_model_path(tmp_path_factory):
    """A model whose 2000-token prompt takes about a second: long enough to cancel into."""
    path = tmp_path_factory.mktemp("slow") / "slow.gguf"
    ggufgen.write_llama_model(path, n_embd=256, n_layer=8, n_head=4, n_head_kv=4, n_ff=512,
                              n_ctx=4096, seed=1)
    return str(path)
