"""Types stored in real files that the kernels do not implement (Q5_0, Q5_1, the K-quants,
IQ4_NL, IQ4_XS; PowerInfer's Q4_0 files keep output.weight and the predictors in Q6_K). The
engine dequantises them with its reference code and runs them as Q8_0 copies made at load.

Oracles: the `gguf` package's dequantisation of the same bytes, and the NumPy reference
forward pass over the values the file holds.
"""

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants

import ggufgen
import reference
from logit_checks import assert_close
from sparseinfer import _core
import sparseinfer


@pytest.mark.parametrize("qtype", [T.Q5_0, T.Q5_1, T.Q6_K], ids=lambda t: t.name)
def test_reference_dequantisation_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    x = (rng.standard_normal((1, 1024)) * rng.uniform(0.01, 10)).astype(np.float32)
    raw = ggufgen.quantize_q6_k(x) if qtype == T.Q6_K else quants.quantize(x, qtype)
    want = quants.dequantize(raw, qtype).reshape(-1)
    got = _core.testing.dequantize_row(int(qtype), raw.tobytes(), x.size)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


# The block bytes of each type that hold float16 scales (d, and dmin where it has one): set to
# finite values (random bytes there could be NaN or inf), the rest of a block left random.
SCALE_OFFSETS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
                 T.IQ4_NL: (0,), T.IQ4_XS: (0,), T.Q5_0: (0,), T.Q5_1: (0, 2)}


def random_blocks(qtype, n_blocks, rng):
    """n_blocks random blocks of qtype with finite scales: tiny, zero, the largest halves of
    either sign and everything between."""
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = np.concatenate([rng.standard_normal(n_blocks - 4) * 10 ** rng.uniform(-4, 2, n_blocks - 4),
                                 [0.0, 65504.0, -65504.0, 6e-8]])
        raw[:, offset:offset + 2] = rng.permutation(scales).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS), ids=lambda t: t.name)
def test_dequantisation_of_random_blocks_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    block_elems, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 64, rng)
    want = quants.dequantize(raw, qtype).reshape(-1)
    got = _core.testing.dequantize_row(int(qtype), raw.tobytes(), 64 * block_elems)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("types", [
    dict(weight_type="Q4_0", output_type="Q6_K"),               # PowerInfer's Q4_0 files
    dict(weight_type="Q5_0", embd_type="Q5_1", output_type="Q6_K"),
    dict(weight_type="Q4_K", embd_type="IQ4_NL", output_type="Q5_K"),   # written by our own quantisers
], ids=["q4_0+q6_k", "q5", "k-quants"])
def test_models_with_storage_types_match_the_reference(tmp_path, types):
    path = tmp_path / "m.gguf"
    w = ggufgen.write_llama_model(path, n_embd=256, n_head=4, n_head_kv=2, n_ff=256, seed=3, **types)
    toks = [1] + list(range(10, 33))
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=2) as m:
        got = m.logits(toks)
    assert_close(got, reference.forward(w, toks), "Q8_0", "storage types")

