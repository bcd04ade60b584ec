"""K-quant and IQ4 files as llama.cpp's own quantiser writes them (llama_cpp.llama_model_quantize):
every type mix of the common presets (Q4_K_M keeps output.weight in Q6_K and some ffn_down /
attn_v in Q6_K or Q5_K, ...) loads and runs. These types are storage only for now
(tensor/dtype.cpp): the engine dequantises them with its reference code and runs them as
Q8_0 copies made at load; native kernels are the next step.

Oracle: the NumPy reference forward pass over the values the quantised file holds (the
`gguf` package's dequantisation; tests/cpu/test_storage_types.py checks the engine's against
it block by block).
"""

from __future__ import annotations

import ctypes
import re
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader
from gguf import quants

import ggufgen
import reference
from logit_checks import assert_close
import sparseinfer
from sparseinfer import _core

PRESETS = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "IQ4_NL", "IQ4_XS"]


def quantize(source, target, preset):
    llama_cpp = pytest.importorskip("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize {preset} failed ({status})"


def file_weights(path, hparams):
    """The values a GGUF file holds, as the reference forward pass takes them."""
    weights = ggufgen.ModelWeights()
    types = set()
    for t in GGUFReader(str(path)).tensors:
        values = quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.asarray(values, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        types.add(t.tensor_type.name)
    weights.hparams = hparams
    return weights, types


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    # Rows of 256 and 512 values: whole K-quant blocks, so the quantiser keeps every preset's types.
    path = tmp_path_factory.mktemp("kquants") / "f32.gguf"
    w = ggufgen.write_llama_model(path, n_vocab=512, n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2,
                                  seed=11)
    return path, w.hparams


@pytest.mark.parametrize("preset", PRESETS)
def test_quantised_files_match_the_reference(tmp_path, f32_model, preset):
    source, hparams = f32_model
    path = tmp_path / f"{preset}.gguf"
    quantize(source, path, preset)
    weights, types = file_weights(path, hparams)
    assert types - {"F32"}, f"{preset}: the quantiser wrote no quantised tensor"
    tokens = ggufgen.random_tokens(40, n_vocab=512, seed=4)
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=2) as m:
        got = m.logits(tokens)
    assert_close(got, reference.forward(weights, tokens), "Q8_0", f"{preset} ({', '.join(sorted(types))})")


def test_a_type_the_engine_cannot_run_is_named_with_its_tensor(tmp_path, f32_model):
    source, _ = f32_model
    path = tmp_path / "TQ2_0.gguf"
    quantize(source, path, "TQ2_0")  # ternary weights: not a type this version runs
    ternary = {t.name for t in GGUFReader(str(path)).tensors if t.tensor_type.name == "TQ2_0"}
    pattern = r"tensor '([^']+)' has type TQ2_0, which this version cannot run \(it runs F32, F16, .*Q4_K.*\)"
    with pytest.raises(sparseinfer.errors.UnsupportedModelError, match=pattern) as refused:
        sparseinfer.Model(str(path))
    assert re.search(pattern, str(refused.value)).group(1) in ternary
    # The file is still read and described, and `info` says what stops it.
    info = _core.read_gguf_info(str(path))
    assert "TQ2_0" in {type_name for _, type_name, _ in info["tensors"]}
    result = subprocess.run([sys.executable, "-m", "sparseinfer", "info", str(path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    runs = next(line for line in result.stdout.splitlines() if line.startswith("runs:"))
    assert re.fullmatch(r"runs:\s+no: tensor '[^']+' has type TQ2_0, which this version cannot run .*", runs), runs
