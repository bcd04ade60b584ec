"""Every CPU kernel level this machine runs, against NumPy and against the generic level.

The oracle for quantised rows emulates the engine's documented arithmetic exactly: the
activation is quantised to 8-bit blocks (scale max|x|/127, round half to even; the
references' q8_blocks; blocks of 256 for the K-quants and IQ4_XS), the weights are
dequantised by the `gguf` package, and the integer block sums are scaled in float64. K-quant
and IQ4 rows are random bytes (every scale and minimum pattern, Q6_K's negative scales) with
finite block scales.
"""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from reference import q8_blocks
from sparseinfer import _core

ISAS = _core.system_info()["available_isas"]
BLOCK_32 = [T.Q4_0, T.Q4_1, T.Q8_0, T.Q5_0, T.Q5_1, T.IQ4_NL]
K_QUANTS = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_XS]  # blocks of 256, Q8_K activations
QUANTISED = BLOCK_32 + K_QUANTS
FLOATS = [T.F32, T.F16, T.BF16]
# The types whose test rows are random bytes: (bytes per block, where the block's IEEE half
# scales lie: d, and dmin for Q2_K / Q4_K / Q5_K), the scales set to small finite values.
RANDOM_BLOCKS = {T.Q2_K: (84, (80, 82)), T.Q3_K: (110, (108,)), T.Q4_K: (144, (0, 2)), T.Q5_K: (176, (0, 2)),
                 T.Q6_K: (210, (208,)), T.IQ4_XS: (136, (0,)),
                 T.IQ4_NL: (18, (0,))}
# Activations in Q8_0 blocks (the scale an IEEE half): for Q8_0 and IQ4_NL weights.
HALF_SCALED = (T.Q8_0, T.IQ4_NL)


def block_elems(qtype) -> int:
    return 256 if qtype in K_QUANTS else 32


def quantised_lengths(qtype, blocks) -> list[int]:
    return [block_elems(qtype) * b for b in blocks]


def weight_bytes(w: np.ndarray, qtype) -> bytes:
    if qtype == T.F32:
        return w.astype(np.float32).tobytes()
    if qtype == T.F16:
        return w.astype(np.float16).tobytes()
    return quants.quantize(w.reshape(1, -1).astype(np.float32), qtype).tobytes()


def dequantised(raw: bytes, qtype, n: int) -> np.ndarray:
    data = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    return quants.dequantize(data, qtype).reshape(-1)[:n].astype(np.float64)


def expected_dot(raw: bytes, qtype, x: np.ndarray) -> float:
    n = x.size
    w = dequantised(raw, qtype, n)
    if qtype in FLOATS:
        return float(w @ x.astype(np.float64))
    scale, q = q8_blocks(x, scale_as_half=qtype in HALF_SCALED, block=block_elems(qtype))
    # Dequantised weights times dequantised activation: equal to the engine's integer
    # block sums up to float rounding.
    return float(np.sum(w.reshape(scale.size, -1) * (scale[:, None] * q)))


def random_blocks(rng, qtype, n) -> bytes:
    block_bytes, scale_offsets = RANDOM_BLOCKS[qtype]
    blocks = n // block_elems(qtype)
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    for offset in scale_offsets:
        raw[:, offset:offset + 2] = rng.uniform(1e-4, 1e-2, blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def make_row(rng, qtype, n):
    if qtype in RANDOM_BLOCKS:
        return random_blocks(rng, qtype, n)
    w = rng.standard_normal(n).astype(np.float32)
    if qtype == T.BF16:
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bfloat16
        return bits.tobytes()
    return weight_bytes(w, qtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANTISED + FLOATS, ids=lambda t: t.name)
def test_row_dot_matches_numpy_for_every_length(isa, qtype):
    rng = np.random.default_rng(int(qtype) + 7)
    lengths = quantised_lengths(qtype, range(1, 10)) if qtype in QUANTISED else list(range(1, 70)) + [576, 1000]
    for n in lengths:
        raw = make_row(rng, qtype, n)
        x = rng.standard_normal(n).astype(np.float32)
        got = float(_core.testing.kernel_row_dot(isa, int(qtype), raw, x)[0])
        want = expected_dot(raw, qtype, x)
        bound = 1e-5 * (np.sqrt(n) * 4 + 1) * (1 + np.abs(dequantised(raw, qtype, n)).max() * np.abs(x).max())
        assert abs(got - want) <= bound, (isa, qtype.name, n, got, want)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != "generic"])
@pytest.mark.parametrize("qtype", QUANTISED + FLOATS, ids=lambda t: t.name)
def test_simd_level_agrees_with_generic(isa, qtype):
    rng = np.random.default_rng(1234)
    for n in [256, 512, 1536] if qtype in K_QUANTS else [32, 64, 96, 576, 1536]:
        raw = make_row(rng, qtype, n)
        x = (rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(np.float32)
        a = float(_core.testing.kernel_row_dot(isa, int(qtype), raw, x)[0])
        b = float(_core.testing.kernel_row_dot("generic", int(qtype), raw, x)[0])
        assert a == pytest.approx(b, rel=1e-4, abs=float(1e-4 * np.abs(x).max())), (n, a, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANTISED + FLOATS, ids=lambda t: t.name)
def test_four_token_dot_equals_four_single_dots(isa, qtype):
    rng = np.random.default_rng(int(qtype) + 21)
    lengths = quantised_lengths(qtype, [1, 3, 18]) if qtype in QUANTISED else [1, 7, 8, 9, 33, 576]
    for n in lengths:
        raw = make_row(rng, qtype, n)
        x4 = rng.standard_normal((4, n)).astype(np.float32)
        got = _core.testing.kernel_row_dot(isa, int(qtype), raw, x4)
        for k in range(4):
            single = float(_core.testing.kernel_row_dot(isa, int(qtype), raw, x4[k])[0])
            assert got[k] == pytest.approx(single, rel=1e-5, abs=1e-5), (isa, n, k)
            assert got[k] == pytest.approx(expected_dot(raw, qtype, x4[k]), rel=1e-4, abs=1e-3), (isa, n, k)


def test_zero_activation_block_gives_zero():
    rng = np.random.default_rng(3)
    raw = make_row(rng, T.Q4_0, 64)
    for isa in ISAS:
        assert _core.testing.kernel_row_dot(isa, int(T.Q4_0), raw, np.zeros(64, np.float32))[0] == 0.0


def test_unknown_isa_and_bad_lengths_raise():
    with pytest.raises(ValueError):
        _core.testing.kernel_row_dot("no-such-isa", int(T.F32), b"\0" * 4, np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        _core.testing.kernel_row_dot("generic", int(T.Q4_0), b"\0" * 18, np.zeros(31, np.float32))
    with pytest.raises(ValueError):
        _core.testing.kernel_row_dot("generic", int(T.F32), b"\0" * 3, np.zeros(1, np.float32))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", QUANTISED + FLOATS, ids=lambda t: t.name)
def test_row_axpy_matches_numpy(isa, qtype):
    rng = np.random.default_rng(int(qtype) + 11)
    lengths = quantised_lengths(qtype, range(1, 10)) if qtype in QUANTISED else list(range(1, 70)) + [576]
    for n in lengths:
        raw = make_row(rng, qtype, n)
        y = rng.standard_normal(n).astype(np.float32)
        a = float(rng.uniform(-2, 2))
        got = _core.testing.kernel_row_axpy(isa, int(qtype), raw, a, y)
        want = y.astype(np.float64) + a * dequantised(raw, qtype, n)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{isa} {qtype.name} n={n}")


def test_memory_read_bandwidth_is_a_rate_and_checks_its_arguments():
    # A plausible rate for any machine that runs this suite: between 100 MB/s and 10 TB/s.
    rate = _core.memory_read_bandwidth(1 << 24, 2, 2)
    assert 1e8 < rate < 1e13
    for bad in [dict(bytes=1000), dict(n_threads=0), dict(repeats=0)]:
        with pytest.raises(ValueError, match="measure_read_bandwidth"):
            _core.memory_read_bandwidth(**{"bytes": 1 << 24, **bad})
