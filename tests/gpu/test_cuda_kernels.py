"""The CUDA plugin's kernels (cpp/src/cuda), driven through its C ABI with ctypes.

The plugin is built from the sources by tests/support/cuda_build.py (every kernel, one GPU
architecture): where nvcc exists the build always runs, so a machine without a GPU still
compiles every kernel. Without nvcc everything here skips; without a GPU (or driver) the
kernel tests skip with the reason CUDA gives. test_cuda_emulated.py runs this file again
against the kernels built for a CPU emulator (tests/support/cuda_emulator), so their logic
is tested on every machine.

Oracles are NumPy in float64: weights dequantised by the `gguf` package (the same values
the kernels compute: d * (q - 8), d * q + m and d * q are exact or rounded once in float32
on both sides), activations as given. The kernels keep activations in float32 (no 8-bit
quantisation of x) and sum in float32, so the tolerances are float32 summation bounds:
a dot product of n terms summed by one lane over n/32 of them and then a 32-lane tree is
within 4 * 2^-24 * (n/32 + 8) * sum|w_i x_i| of the exact value (twice the textbook bound).
Index lists and masks must match exactly.
"""

from __future__ import annotations

import ctypes
import os
import zlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

import reference

from sparseinfer import _cuda

U = 2.0 ** -24  # float32's unit roundoff
TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
QUANTISED = ("Q4_0", "Q4_1", "Q8_0")
TYPE_ID = _cuda.WEIGHT_TYPES


# ---- the plugin and a device ---------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin(request):
    """The plugin built from this checkout and loaded into this process (the toolkit's CUDA
    runtime first, as the loader preloads NVIDIA's from site-packages)."""
    emulated = os.environ.get("SPARSEINFER_TEST_EMULATED_CUDA_PLUGIN")
    if emulated:  # test_cuda_emulated.py: the kernels on the CPU emulator, no CUDA runtime
        return _cuda.Plugin(ctypes.CDLL(emulated))
    built = request.getfixturevalue("nvcc_plugin")
    if built.runtime is not None:
        _cuda._load_runtime(built.runtime)
    return _cuda.Plugin(ctypes.CDLL(built.path))


def open_device(plugin) -> _cuda.Context:
    """A context on device 0, or a skip saying why there is none."""
    try:
        count = plugin.device_count()
    except _cuda.CudaError as error:
        pytest.skip(f"no CUDA device or driver: {error}")
    if count == 0:
        pytest.skip("no CUDA device visible")
    # The probe kernel must run: a plugin without code for this GPU is a failure, not a skip.
    plugin.self_test(0)
    return plugin.context(0)


@pytest.fixture(scope="module")
def device(plugin):
    with open_device(plugin) as ctx:
        yield ctx


class Gpu:
    """One test's view of the device: NumPy arrays in, device addresses out, and every buffer
    freed when the test ends."""

    def __init__(self, ctx: _cuda.Context) -> None:
        self.ctx = ctx
        self.buffers: list[int] = []

    def put(self, array: np.ndarray) -> int:
        address = self.ctx.to_device(np.ascontiguousarray(array))
        self.buffers.append(address)
        return address

    def alloc(self, nbytes: int) -> int:
        address = self.ctx.alloc(nbytes)
        self.buffers.append(address)
        return address

    def get(self, address: int, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self.ctx.download(address, out)
        return out

    def run(self, name: str, *args) -> None:
        self.ctx.run(name, *args)

    def release(self) -> None:
        for address in self.buffers:
            self.ctx.free(address)
        self.buffers.clear()


@pytest.fixture
def gpu(device):
    g = Gpu(device)
    yield g
    try:
        device.synchronize()  # nothing a test left behind may leak into the next one
    finally:
        g.release()


# ---- weights and bounds ----------------------------------------------------------------------

def encode(w: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(the GGUF rows as bytes, shape (rows, row_bytes); the values they hold, float64)."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if type_name == "F32":
        return w.view(np.uint8).reshape(w.shape[0], -1), w.astype(np.float64)
    if type_name == "F16":
        h = w.astype(np.float16)
        return h.view(np.uint8).reshape(w.shape[0], -1), h.astype(np.float64)
    q = quants.quantize(w, QT[type_name])
    return q, quants.dequantize(q, QT[type_name]).astype(np.float64).reshape(w.shape)


def dot_bound(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The bound on |computed - exact| of x @ w.T as the kernels sum it (module docstring)."""
    cols = w.shape[1]
    return 4 * U * (cols / 32 + 8) * (np.abs(x) @ np.abs(w).T)


def assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= bound + 1e-30)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), got.shape)
        pytest.fail(f"{what}: {int(bad.sum())} of {got.size} values off; worst at {i}: "
                    f"got {got[i]!r}, want {want[i]!r}, bound {bound[i]!r}")


def rng_for(*key) -> np.random.Generator:
    """A generator seeded by the test's name and parameters (the same data on every run)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---- without a GPU ---------------------------------------------------------------------------

def test_plugin_exports_the_whole_abi(plugin):
    """The build has every entry point of plugin_api.h (Plugin() binds them all) and speaks
    the loader's ABI."""
    assert plugin.abi_version() == _cuda.ABI_VERSION
    assert plugin.build_info().startswith("cuda ")


def test_null_context_is_an_argument_error(plugin):
    with pytest.raises(_cuda.CudaError, match="no CUDA context") as info:
        plugin.call("si_cuda_synchronize", None)
    assert info.value.status == _cuda.ERROR_ARGUMENT
    plugin.lib.si_cuda_context_destroy(None)  # a no-op


def test_context_fails_cleanly_without_a_device(plugin):
    try:
        count = plugin.device_count()
    except _cuda.CudaError:
        count = 0
    if count > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(_cuda.CudaError) as info:
        plugin.context(0)
    assert info.value.status != 0 and str(info.value)


# ---- memory ----------------------------------------------------------------------------------

def test_upload_download_memset(gpu):
    data = np.arange(1000, dtype=np.float32) * 0.5
    address = gpu.put(data)
    assert address % 256 == 0
    np.testing.assert_array_equal(gpu.get(address, data.shape, np.float32), data)
    gpu.ctx.memset(address + 400, 0, 400)
    want = data.copy()
    want[100:200] = 0
    np.testing.assert_array_equal(gpu.get(address, data.shape, np.float32), want)
    copy = gpu.alloc(data.nbytes)
    gpu.run("si_cuda_copy", copy + 40, address + 40, 800)  # device to device, at offsets
    np.testing.assert_array_equal(gpu.get(copy, data.shape, np.float32)[10:210], want[10:210])
    assert gpu.ctx.alloc(0) == 0
    free, total = gpu.ctx.memory_info()
    assert 0 < free <= total


def test_out_of_memory_names_the_sizes(gpu):
    _, total = gpu.ctx.memory_info()
    asked = total * 4
    with pytest.raises(_cuda.CudaError) as info:
        gpu.alloc(asked)
    assert info.value.status == 2  # cudaErrorMemoryAllocation
    message = str(info.value)
    assert "out of GPU memory" in message and f"asked for {asked} bytes" in message
    assert f"of {total}" in message
    gpu.ctx.synchronize()  # the context is still usable


# ---- matrix times a few tokens -----------------------------------------------------------------

MATMUL_SHAPES = [(t, cols) for t in TYPES for cols in (256, 96)] + [
    ("F32", 100), ("F32", 7),   # F32 rows not a multiple of 4 floats: scalar loads
    ("F16", 260), ("F16", 33),  # F16 rows not a multiple of 8 halves: scalar loads
]


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 8, 11])
@pytest.mark.parametrize("type_name,cols", MATMUL_SHAPES)
def test_matmul(gpu, type_name, cols, n_tokens):
    rng = rng_for("matmul", type_name, cols, n_tokens)
    rows = 37  # not a multiple of the 4 rows a block takes
    raw, w = encode(rng.standard_normal((rows, cols)) * 0.5, type_name)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    y = gpu.alloc(n_tokens * rows * 4)
    gpu.run("si_cuda_matmul", TYPE_ID[type_name], gpu.put(raw), rows, cols, gpu.put(x), n_tokens, y)
    got = gpu.get(y, (n_tokens, rows), np.float32)
    x64 = x.astype(np.float64)
    assert_within(got, x64 @ w.T, dot_bound(w, x64), f"{type_name} {rows}x{cols}, {n_tokens} tokens")


@pytest.mark.parametrize("type_name", ["F32", "F16"])
def test_matmul_unaligned_input(gpu, type_name):
    """x one float past an aligned address: the float types fall back to scalar loads."""
    rng = rng_for("unaligned", type_name)
    rows, cols, n_tokens = 9, 64, 3
    raw, w = encode(rng.standard_normal((rows, cols)), type_name)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    x_buffer = gpu.put(np.concatenate([[0.0], x.ravel()]).astype(np.float32))
    y = gpu.alloc(n_tokens * rows * 4)
    gpu.run("si_cuda_matmul", TYPE_ID[type_name], gpu.put(raw), rows, cols, x_buffer + 4, n_tokens, y)
    x64 = x.astype(np.float64)
    assert_within(gpu.get(y, (n_tokens, rows), np.float32), x64 @ w.T, dot_bound(w, x64), type_name)


@pytest.mark.parametrize("n_tokens", [1, 5, 9])
@pytest.mark.parametrize("type_name", TYPES)
def test_matmul_rows(gpu, type_name, n_tokens):
    """Only the listed rows, in list order (repeats allowed), only up to the device count."""
    rng = rng_for("rows", type_name, n_tokens)
    rows, cols, capacity, count = 50, 128, 24, 19
    raw, w = encode(rng.standard_normal((rows, cols)), type_name)
    ids = rng.integers(0, rows, capacity).astype(np.int32)
    x = rng.standard_normal((n_tokens, cols)).astype(np.float32)
    sentinel = np.full((n_tokens, capacity), 12345.0, np.float32)
    y = gpu.put(sentinel)
    gpu.run("si_cuda_matmul_rows", TYPE_ID[type_name], gpu.put(raw), rows, cols, gpu.put(ids),
            gpu.put(np.array([count], np.int32)), capacity, gpu.put(x), n_tokens, y)
    got = gpu.get(y, (n_tokens, capacity), np.float32)
    x64 = x.astype(np.float64)
    ws = w[ids[:count]]
    assert_within(got[:, :count], x64 @ ws.T, dot_bound(ws, x64), type_name)
    np.testing.assert_array_equal(got[:, count:], sentinel[:, count:])  # not written

    # No list and no count: every row, as si_cuda_matmul.
    y_all = gpu.alloc(n_tokens * rows * 4)
    gpu.run("si_cuda_matmul_rows", TYPE_ID[type_name], gpu.put(raw), rows, cols, None, None, rows,
            gpu.put(x), n_tokens, y_all)
    assert_within(gpu.get(y_all, (n_tokens, rows), np.float32), x64 @ w.T, dot_bound(w, x64), type_name)


def test_bad_row_id_and_count_are_reported_at_sync(gpu):
    rows, cols = 8, 32
    raw, _ = encode(np.ones((rows, cols)), "F32")
    w, x = gpu.put(raw), gpu.put(np.ones((1, cols), np.float32))
    y = gpu.alloc(4 * 4)
    gpu.run("si_cuda_matmul_rows", TYPE_ID["F32"], w, rows, cols, gpu.put(np.array([0, 8, 1, -1], np.int32)),
            None, 4, x, 1, y)
    with pytest.raises(_cuda.CudaError, match="row id") as info:
        gpu.ctx.synchronize()
    assert info.value.status == _cuda.ERROR_INDEX
    gpu.ctx.synchronize()  # reported once, then clear
    gpu.run("si_cuda_matmul_rows", TYPE_ID["F32"], w, rows, cols, gpu.put(np.arange(4, dtype=np.int32)),
            gpu.put(np.array([5], np.int32)), 4, x, 1, y)
    with pytest.raises(_cuda.CudaError, match="count") as info:
        gpu.get(y, 4, np.float32)  # a download reports it too
    assert info.value.status == _cuda.ERROR_INDEX


def test_argument_errors(gpu):
    x = gpu.put(np.ones((1, 64), np.float32))
    y = gpu.alloc(64 * 4)
    w = gpu.alloc(64 * 64 * 4)
    cases = [
        ((6, w, 2, 64, x, 1, y), "weight type 6"),                        # Q5_0: no kernels
        ((TYPE_ID["Q4_0"], w, 2, 48, x, 1, y), "whole number of 32-value blocks"),
        ((TYPE_ID["Q8_0"], w, 2, 64, x + 4, 1, y), "16-byte aligned"),
        ((TYPE_ID["Q4_1"], w + 1, 2, 64, x, 1, y), "2-byte aligned"),
        ((TYPE_ID["F32"], w + 2, 2, 64, x, 1, y), "4-byte aligned"),
        ((TYPE_ID["F32"], w, 2, 64, x, 0, y), "n_tokens"),
        ((TYPE_ID["F32"], None, 2, 64, x, 1, y), "null"),
    ]
    for args, message in cases:
        with pytest.raises(_cuda.CudaError, match=message) as info:
            gpu.run("si_cuda_matmul", *args)
        assert info.value.status == _cuda.ERROR_ARGUMENT


# ---- attention block -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1000, 4096, 7])
def test_rms_norm(gpu, n):
    rng = rng_for("norm", n)
    rows = 5
    x = (rng.standard_normal((rows, n)) * 3).astype(np.float32)
    weight = rng.standard_normal(n).astype(np.float32)
    want = reference.rms_norm(x.astype(np.float64), weight.astype(np.float64), 1e-5)
    xd, out = gpu.put(x), gpu.alloc(x.nbytes)
    gpu.run("si_cuda_rms_norm", xd, gpu.put(weight), rows, n, 1e-5, out)
    # The scale is rounded a few times in float32: a relative error of ~1e-6 everywhere.
    bound = 1e-5 * np.abs(want) + 1e-30
    assert_within(gpu.get(out, x.shape, np.float32), want, bound, "rms_norm")
    gpu.run("si_cuda_rms_norm", xd, gpu.put(weight), rows, n, 1e-5, xd)  # in place
    assert_within(gpu.get(xd, x.shape, np.float32), want, bound, "rms_norm in place")


def test_per_head_rms_norm(gpu):
    # Qwen3's Q and K norms: each head of each token a row of head_dim values, one weight vector.
    rng = rng_for("head norm")
    n_tokens, n_heads, head_dim = 3, 6, 32
    x = (rng.standard_normal((n_tokens, n_heads, head_dim)) * 3).astype(np.float32)
    weight = rng.standard_normal(head_dim).astype(np.float32)
    want = reference.rms_norm(x.astype(np.float64), weight.astype(np.float64), 1e-6)
    xd = gpu.put(x)
    gpu.run("si_cuda_rms_norm", xd, gpu.put(weight), n_tokens * n_heads, head_dim, 1e-6, xd)
    assert_within(gpu.get(xd, x.shape, np.float32), want, 1e-5 * np.abs(want) + 1e-30, "per-head rms_norm")


@pytest.mark.parametrize("n", [1000, 4096, 7])
def test_layer_norm(gpu, n):
    rng = rng_for("layer norm", n)
    rows = 5
    x = (rng.standard_normal((rows, n)) * 3 + 2).astype(np.float32)  # a mean far from 0
    weight = rng.standard_normal(n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x64 = x.astype(np.float64)
    centred = x64 - x64.mean(axis=1, keepdims=True)
    normed = centred / np.sqrt((centred ** 2).mean(axis=1, keepdims=True) + 1e-5)
    want = normed * weight + bias
    xd, out = gpu.put(x), gpu.alloc(x.nbytes)
    gpu.run("si_cuda_layer_norm", xd, gpu.put(weight), gpu.put(bias), rows, n, 1e-5, out)
    # The mean and the scale in float32: each normed value within ~1e-5 of its size (and of the
    # row's, where x sits near the mean), then one product and one sum.
    bound = 1e-5 * (np.abs(normed) + 1) * np.abs(weight) + 2 * U * np.abs(want) + 1e-30
    assert_within(gpu.get(out, x.shape, np.float32), want, bound, "layer_norm")
    gpu.run("si_cuda_layer_norm", xd, gpu.put(weight), gpu.put(bias), rows, n, 1e-5, xd)  # in place
    assert_within(gpu.get(xd, x.shape, np.float32), want, bound, "layer_norm in place")
    with pytest.raises(_cuda.CudaError, match="must not be null") as info:
        gpu.run("si_cuda_layer_norm", xd, gpu.put(weight), None, rows, n, 1e-5, xd)
    assert info.value.status == _cuda.ERROR_ARGUMENT


def rope_reference(x, positions, inverse_frequencies, magnitude, rope_dim, halves):
    """RoPE in float64 with any speeds: pair i of a head turns by positions[t] * inverse[i],
    cos and sin times magnitude (model/rope.h's scaled RoPE)."""
    half = rope_dim // 2
    theta = positions[:, None].astype(np.float64) * inverse_frequencies[None, :]  # (tokens, half)
    cos, sin = (np.cos(theta) * magnitude)[:, None, :], (np.sin(theta) * magnitude)[:, None, :]
    out = x.astype(np.float64).copy()
    first = np.arange(half) if halves else 2 * np.arange(half)
    second = first + (half if halves else 1)
    x0, x1 = out[:, :, first].copy(), out[:, :, second].copy()
    out[:, :, first] = x0 * cos - x1 * sin
    out[:, :, second] = x0 * sin + x1 * cos
    return out


@pytest.mark.parametrize("layout", ["adjacent pairs", "halves"])
@pytest.mark.parametrize("rope_dim", [64, 32])
@pytest.mark.parametrize("scaled", [False, True])
def test_rope(gpu, rope_dim, layout, scaled):
    """Unscaled speeds against the reference's RoPE; scaled ones (per-pair factors, a magnitude
    as YaRN's) against the same rotation with those speeds."""
    rng = rng_for("rope", rope_dim, layout, scaled)
    n_tokens, n_heads, head_dim, base = 6, 4, 64, 10000.0
    positions = np.array([0, 1, 2, 17, 1000, 4095], np.int32)
    x = rng.standard_normal((n_tokens, n_heads, head_dim)).astype(np.float32)
    xd = gpu.put(x)
    halves = layout == "halves"
    inverse = base ** (-2.0 * np.arange(rope_dim // 2) / rope_dim)
    magnitude = 1.0
    if scaled:
        inverse = inverse / np.linspace(1.0, 8.0, rope_dim // 2)
        magnitude = 1.1386
    gpu.run("si_cuda_rope", xd, n_tokens, n_heads, head_dim, rope_dim, gpu.put(positions), gpu.put(inverse),
            magnitude, _cuda.ROPE_HALVES if halves else _cuda.ROPE_ADJACENT_PAIRS)
    got = gpu.get(xd, x.shape, np.float32)
    if scaled:
        want = rope_reference(x, positions, inverse, magnitude, rope_dim, halves)
    else:
        want = (reference.rope_neox if halves else reference.rope_normal)(x.astype(np.float64), positions,
                                                                           rope_dim, base)
    # cos and sin rounded to float, then two products and a sum in float32; a value's partner
    # is its neighbour (adjacent pairs) or the value rope_dim / 2 away (halves).
    partners = (rope_dim // 2,) if halves else (1, -1)
    bound = 4 * U * magnitude * (np.abs(x) + sum(np.abs(np.roll(x, p, axis=2)) for p in partners)) * 2
    assert_within(got, want, bound, "rope")
    np.testing.assert_array_equal(got[:, :, rope_dim:], x[:, :, rope_dim:])  # passed through


def test_rope_refuses_an_unknown_layout_and_no_frequencies(gpu):
    buf = gpu.alloc(4096)
    with pytest.raises(_cuda.CudaError, match="layout 2") as info:
        gpu.run("si_cuda_rope", buf, 1, 1, 8, 8, buf, buf, 1.0, 2)
    assert info.value.status == _cuda.ERROR_ARGUMENT
    with pytest.raises(_cuda.CudaError, match="inverse_frequencies") as info:
        gpu.run("si_cuda_rope", buf, 1, 1, 8, 8, buf, None, 1.0, _cuda.ROPE_HALVES)
    assert info.value.status == _cuda.ERROR_ARGUMENT


def attention_reference(q, k_cache, v_cache, n_past, n_head, n_head_kv, head_dim, scale=None, window=0):
    """(out, bound): Session::attention in float64 over the (half-rounded) cache, each token
    seeing the last `window` positions (all for 0), scores times scale (1 / sqrt(head_dim) for
    None). Bound: a
    score off by at most e moves each softmax weight by a factor within exp(+-2e), so the
    output by at most ~2e * sum p|v| (doubled here); plus the float32 sums of the weighted
    values (a warp sums n_keys / 8 of them, then 8 warps merge)."""
    n_tokens = q.shape[0]
    group = n_head // n_head_kv
    scale = 1 / np.sqrt(head_dim) if scale is None else scale
    out = np.zeros((n_tokens, n_head, head_dim))
    bound = np.zeros_like(out)
    for t in range(n_tokens):
        n_keys = n_past + t + 1
        first = max(0, n_keys - window) if window else 0
        for h in range(n_head):
            kv = h // group
            keys = k_cache[first:n_keys, kv].astype(np.float64)
            values = v_cache[first:n_keys, kv].astype(np.float64)
            qh = q[t, h].astype(np.float64)
            scores = keys @ qh * scale
            p = np.exp(scores - scores.max())
            p /= p.sum()
            out[t, h] = p @ values
            score_err = (4 * U * (head_dim / 32 + 8) * (np.abs(keys) @ np.abs(qh)) * scale).max()
            bound[t, h] = (4 * score_err + 4 * U * (n_keys / 8 + 16)) * (p @ np.abs(values) + np.abs(out[t, h]))
    return out, bound


@pytest.mark.parametrize("n_head,n_head_kv,head_dim,scale,window", [
    (8, 2, 64, None, 0), (4, 4, 128, None, 0), (6, 1, 100, None, 0), (2, 1, 256, None, 0),
    # Gemma 3's local layers: a query scale of their own, a window the second call runs past
    (8, 2, 64, 0.0625, 4), (4, 1, 32, None, 6),
])
def test_attention(gpu, n_head, n_head_kv, head_dim, scale, window):
    """Three calls as a session makes them: a prompt of 5, one token, then 3 more; K and V
    stored as halves at their positions, causal, grouped heads."""
    rng = rng_for("attention", n_head, n_head_kv, head_dim, scale, window)
    kernel_scale = 1 / np.sqrt(np.float32(head_dim)) if scale is None else scale
    n_ctx = 40
    kv_shape = (n_ctx, n_head_kv, head_dim)
    untouched = np.float16(7.0)
    k_cache = gpu.put(np.full(kv_shape, untouched, np.float16))
    v_cache = gpu.put(np.full(kv_shape, untouched, np.float16))
    k_all = np.zeros(kv_shape, np.float16)
    v_all = np.zeros(kv_shape, np.float16)
    n_past = 0
    for n_tokens in (5, 1, 3):
        q = rng.standard_normal((n_tokens, n_head, head_dim)).astype(np.float32)
        k = rng.standard_normal((n_tokens, n_head_kv, head_dim)).astype(np.float32)
        v = rng.standard_normal((n_tokens, n_head_kv, head_dim)).astype(np.float32)
        k_all[n_past:n_past + n_tokens] = k.astype(np.float16)
        v_all[n_past:n_past + n_tokens] = v.astype(np.float16)
        out = gpu.alloc(q.nbytes)
        gpu.run("si_cuda_attention", gpu.put(q), gpu.put(k), gpu.put(v), k_cache, v_cache, n_ctx, n_past,
                n_tokens, n_head, n_head_kv, head_dim, kernel_scale, window, out)
        got = gpu.get(out, q.shape, np.float32)
        want, bound = attention_reference(q, k_all, v_all, n_past, n_head, n_head_kv, head_dim, scale, window)
        assert_within(got, want, bound, f"attention at n_past={n_past}")
        n_past += n_tokens
        cache = gpu.get(k_cache, kv_shape, np.float16)
        np.testing.assert_array_equal(cache[:n_past].view(np.uint16), k_all[:n_past].view(np.uint16))
        assert (cache[n_past:] == untouched).all()
        np.testing.assert_array_equal(gpu.get(v_cache, kv_shape, np.float16)[:n_past].view(np.uint16),
                                      v_all[:n_past].view(np.uint16))
    # Without new K and V: attention over what the cache holds (the last 3 tokens again).
    out = gpu.alloc(q.nbytes)
    gpu.run("si_cuda_attention", gpu.put(q), None, None, k_cache, v_cache, n_ctx, n_past - 3, 3, n_head,
            n_head_kv, head_dim, kernel_scale, window, out)
    np.testing.assert_array_equal(gpu.get(out, q.shape, np.float32), got)


def test_attention_rejects_overflow_wide_heads_and_a_negative_window(gpu):
    buf = gpu.alloc(4096)
    with pytest.raises(_cuda.CudaError, match="n_ctx"):
        gpu.run("si_cuda_attention", buf, None, None, buf, buf, 4, 3, 2, 1, 1, 8, 0.5, 0, buf)
    with pytest.raises(_cuda.CudaError, match="head_dim"):
        gpu.run("si_cuda_attention", buf, None, None, buf, buf, 4, 0, 1, 1, 1, 512, 0.5, 0, buf)
    with pytest.raises(_cuda.CudaError, match="KV heads"):
        gpu.run("si_cuda_attention", buf, None, None, buf, buf, 4, 0, 1, 6, 4, 8, 0.5, 0, buf)
    with pytest.raises(_cuda.CudaError, match="window -1"):
        gpu.run("si_cuda_attention", buf, None, None, buf, buf, 4, 0, 1, 1, 1, 8, 0.5, -1, buf)


def test_add_bias(gpu):
    rng = rng_for("bias")
    y = rng.standard_normal((5, 96)).astype(np.float32)
    bias = rng.standard_normal(96).astype(np.float32)
    yd = gpu.put(y)
    gpu.run("si_cuda_add_bias", yd, gpu.put(bias), 5, 96)
    np.testing.assert_array_equal(gpu.get(yd, y.shape, np.float32), y + bias)  # one rounding each, as NumPy's
    with pytest.raises(_cuda.CudaError, match="rows") as info:
        gpu.run("si_cuda_add_bias", yd, gpu.put(bias), 5, 0)
    assert info.value.status == _cuda.ERROR_ARGUMENT


def test_add_and_activate(gpu):
    rng = rng_for("elementwise")
    a = rng.standard_normal(3001).astype(np.float32)
    b = rng.standard_normal(3001).astype(np.float32)
    ad, bd = gpu.put(a), gpu.put(b)
    gpu.run("si_cuda_add", ad, bd, a.size, 1.0)
    np.testing.assert_array_equal(gpu.get(ad, a.shape, np.float32), a + b)  # a scale of 1 adds b exactly
    scaled = gpu.put(a)
    gpu.run("si_cuda_add", scaled, bd, a.size, 0.75)
    want = a.astype(np.float64) + 0.75 * b.astype(np.float64)
    assert_within(gpu.get(scaled, a.shape, np.float32), want, 2 * U * (np.abs(a) + np.abs(b)), "scaled add")
    s = gpu.get(ad, a.shape, np.float32).astype(np.float64)  # a + b
    gelu = 0.5 * s * (1 + np.tanh(np.sqrt(2 / np.pi) * (s + 0.044715 * s ** 3)))
    for name, factor, want in [("silu", bd, s / (1 + np.exp(-s)) * b), ("gelu_tanh", bd, gelu * b),
                               ("gelu_tanh", None, gelu), ("relu", None, np.maximum(s, 0))]:
        x = gpu.put(s.astype(np.float32))
        gpu.run("si_cuda_activate", _cuda.ACTIVATIONS[name], x, factor, a.size)
        # a few roundings of the value; GELU (as x sigmoid(2u)) also of u, whose error reaches
        # the result through the sigmoid's slope, at most |x| / 4 per unit of u
        bound = 16 * U * np.abs(want)
        if name == "gelu_tanh":
            bound += 16 * U * np.abs(s) * (np.abs(s) + 0.1 * np.abs(s) ** 3) * (np.abs(b) if factor else 1)
        assert_within(gpu.get(x, a.shape, np.float32), want, bound, f"{name} {'* up' if factor else 'alone'}")
    with pytest.raises(_cuda.CudaError, match="activation 3") as info:
        gpu.run("si_cuda_activate", 3, ad, None, a.size)
    assert info.value.status == _cuda.ERROR_ARGUMENT


# ---- the sparse FFN --------------------------------------------------------------------------

@pytest.mark.parametrize("fc1_type,fc2_type", [("F16", "F16"), ("Q8_0", "F16"), ("Q4_0", "Q4_0"), ("F32", "Q4_1")])
@pytest.mark.parametrize("n_tokens", [1, 4, 10])
def test_ffn_predict(gpu, fc1_type, fc2_type, n_tokens):
    rng = rng_for("predict", fc1_type, fc2_type, n_tokens)
    n_embd, rank, n_ff = 256, 64, 300
    fc1_raw, fc1 = encode(rng.standard_normal((rank, n_embd)) * 0.2, fc1_type)
    fc2_raw, fc2 = encode(rng.standard_normal((n_ff, rank)) * 0.2, fc2_type)
    x = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)
    hidden, scores = gpu.alloc(n_tokens * rank * 4), gpu.alloc(n_tokens * n_ff * 4)
    gpu.run("si_cuda_ffn_predict", TYPE_ID[fc1_type], gpu.put(fc1_raw), rank, n_embd, TYPE_ID[fc2_type],
            gpu.put(fc2_raw), n_ff, gpu.put(x), n_tokens, hidden, scores)
    x64 = x.astype(np.float64)
    h_exact = x64 @ fc1.T
    h_bound = dot_bound(fc1, x64)
    h_want = np.maximum(h_exact, 0)
    assert_within(gpu.get(hidden, (n_tokens, rank), np.float32), h_want, h_bound, "predictor hidden")
    s_want = h_want @ fc2.T
    s_bound = dot_bound(fc2, np.abs(h_want) + h_bound) + h_bound @ np.abs(fc2).T
    assert_within(gpu.get(scores, (n_tokens, n_ff), np.float32), s_want, s_bound, "predictor scores")


def select_reference(scores, threshold, candidates):
    ids = np.arange(scores.shape[1]) if candidates is None else candidates
    active = scores[:, ids] >= threshold  # (n_tokens, n_candidates); NaN is inactive
    rows = np.nonzero(active.any(axis=0))[0]
    return rows.astype(np.int32), active[:, rows]


@pytest.mark.parametrize("n_tokens", [1, 3])
@pytest.mark.parametrize("hot", [False, True])
def test_ffn_select(gpu, n_tokens, hot):
    """Ascending positions of the candidates active for some token, the per-token mask, and
    the count; across several 1024-candidate chunks, with ties at the threshold (active) and
    NaN scores (inactive)."""
    rng = rng_for("select", n_tokens, hot)
    n_ff, threshold = 3000, 0.25
    scores = rng.standard_normal((n_tokens, n_ff)).astype(np.float32)
    scores[:, ::97] = threshold
    scores[:, 5::89] = np.nan
    candidates = rng.permutation(n_ff)[:2100].astype(np.int32) if hot else None
    n_candidates = n_ff if candidates is None else candidates.size
    rows, count, n_active = gpu.alloc(n_candidates * 4), gpu.alloc(4), gpu.alloc(4)
    mask = gpu.alloc(n_tokens * n_candidates)
    gpu.run("si_cuda_ffn_select", gpu.put(scores), n_tokens, n_ff, threshold,
            None if candidates is None else gpu.put(candidates), n_candidates, rows, count, mask, n_active)
    want_rows, want_mask = select_reference(scores, threshold, candidates)
    n = int(gpu.get(count, 1, np.int32)[0])
    assert n == want_rows.size
    assert int(gpu.get(n_active, 1, np.int32)[0]) == want_mask.sum()  # per token, summed
    if n_tokens > 1:
        assert want_mask.sum() < n_tokens * n  # so the union would not pass
    np.testing.assert_array_equal(gpu.get(rows, n_candidates, np.int32)[:n], want_rows)
    got_mask = gpu.get(mask, (n_tokens, n_candidates), np.uint8)[:, :n]
    np.testing.assert_array_equal(got_mask, want_mask.astype(np.uint8))


def test_ffn_select_threshold_zero_and_bad_candidate(gpu):
    scores = np.array([[0.0, -0.0, -1e-30, 1e-30, -1.0]], np.float32)
    rows, count = gpu.alloc(5 * 4), gpu.alloc(4)
    gpu.run("si_cuda_ffn_select", gpu.put(scores), 1, 5, 0.0, None, 5, rows, count, None, None)
    n = int(gpu.get(count, 1, np.int32)[0])
    np.testing.assert_array_equal(gpu.get(rows, 5, np.int32)[:n], [0, 1, 3])  # -0.0 >= 0 too
    gpu.run("si_cuda_ffn_select", gpu.put(scores), 1, 5, 0.0, gpu.put(np.array([4, 5, 0], np.int32)), 3,
            rows, count, None, None)
    with pytest.raises(_cuda.CudaError, match="candidate") as info:
        gpu.ctx.synchronize()
    assert info.value.status == _cuda.ERROR_INDEX


def gate_up_reference(gate, up, x, rows, mask, relu_up, relu_bias=None):
    """(h, bound): feed_forward.cpp's h = relu(g) * u (relu(u) for bamboo), masked; without an up
    (None) relu(g), g with its bias where there is one (the gate-less FFN: g is up's)."""
    x64 = x.astype(np.float64)
    g = x64 @ gate[rows].T
    g_bound = dot_bound(gate[rows], x64)
    if relu_bias is not None:
        g = g + relu_bias[rows]
        g_bound = g_bound + 2 * U * np.abs(g)
    if up is None:
        u, u_bound = np.ones_like(g), np.zeros_like(g)
    else:
        u, u_bound = x64 @ up[rows].T, dot_bound(up[rows], x64)
    u_act = np.maximum(u, 0) if relu_up else u
    h = np.where(mask & (g > 0), g * u_act, 0.0)
    # Where g is within its error of 0 the kernel may or may not zero h: both are within
    # g_bound * |u|.
    bound = g_bound * (np.abs(u_act) + u_bound) + np.abs(g) * u_bound
    return h, bound


@pytest.mark.parametrize("n_tokens", [1, 3, 8, 11])
@pytest.mark.parametrize("gate_type,up_type", [(t, t) for t in TYPES] + [("Q4_0", "F16")])
@pytest.mark.parametrize("relu_up", [0, 1])
def test_ffn_gate_up(gpu, gate_type, up_type, n_tokens, relu_up):
    rng = rng_for("gate_up", gate_type, up_type, n_tokens, relu_up)
    n_rows, n_embd, capacity, count = 300, 256, 90, 77
    gate_raw, gate = encode(rng.standard_normal((n_rows, n_embd)) * 0.1, gate_type)
    up_raw, up = encode(rng.standard_normal((n_rows, n_embd)) * 0.1, up_type)
    x = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)
    rows = np.sort(rng.choice(n_rows, capacity, replace=False)).astype(np.int32)
    mask = (rng.random((n_tokens, capacity)) < 0.7).astype(np.uint8)
    h = gpu.alloc(n_tokens * capacity * 4)
    gpu.run("si_cuda_ffn_gate_up", TYPE_ID[gate_type], gpu.put(gate_raw), None, TYPE_ID[up_type], gpu.put(up_raw),
            n_rows, n_embd, gpu.put(rows), gpu.put(np.array([count], np.int32)), capacity, gpu.put(mask),
            gpu.put(x), n_tokens, relu_up, h)
    got = gpu.get(h, (n_tokens, capacity), np.float32)[:, :count]
    want, bound = gate_up_reference(gate, up, x, rows[:count], mask[:, :count].astype(bool), relu_up)
    assert_within(got, want, bound, f"gate/up {gate_type}/{up_type}")
    assert (got[mask[:, :count] == 0] == 0).all()  # masked entries are exactly 0

    # No list, no count, no mask: every row, every token (the dense ReLU FFN).
    h_all = gpu.alloc(n_tokens * n_rows * 4)
    gpu.run("si_cuda_ffn_gate_up", TYPE_ID[gate_type], gpu.put(gate_raw), None, TYPE_ID[up_type], gpu.put(up_raw),
            n_rows, n_embd, None, None, n_rows, None, gpu.put(x), n_tokens, relu_up, h_all)
    want, bound = gate_up_reference(gate, up, x, np.arange(n_rows), np.ones((n_tokens, n_rows), bool), relu_up)
    assert_within(gpu.get(h_all, (n_tokens, n_rows), np.float32), want, bound, "gate/up, all rows")


@pytest.mark.parametrize("n_tokens", [1, 3, 11])
@pytest.mark.parametrize("weight_type", ["F16", "Q8_0"])
def test_ffn_gate_up_without_a_gate(gpu, weight_type, n_tokens):
    """Falcon's and OPT's FFN: h = relu(up . x + b) of the listed rows (the matrix and bias in
    the gate's place, no up), masked."""
    rng = rng_for("gate-less", weight_type, n_tokens)
    n_rows, n_embd, capacity, count = 300, 256, 90, 77
    up_raw, up = encode(rng.standard_normal((n_rows, n_embd)) * 0.1, weight_type)
    bias = (rng.standard_normal(n_rows) * 0.5).astype(np.float32)
    x = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)
    rows = np.sort(rng.choice(n_rows, capacity, replace=False)).astype(np.int32)
    mask = (rng.random((n_tokens, capacity)) < 0.7).astype(np.uint8)
    h = gpu.alloc(n_tokens * capacity * 4)
    gpu.run("si_cuda_ffn_gate_up", TYPE_ID[weight_type], gpu.put(up_raw), gpu.put(bias), TYPE_ID["F32"], None,
            n_rows, n_embd, gpu.put(rows), gpu.put(np.array([count], np.int32)), capacity, gpu.put(mask),
            gpu.put(x), n_tokens, 0, h)
    got = gpu.get(h, (n_tokens, capacity), np.float32)[:, :count]
    want, bound = gate_up_reference(up, None, x, rows[:count], mask[:, :count].astype(bool), 0,
                                    bias.astype(np.float64))
    assert_within(got, want, bound, f"relu(up x + b) {weight_type}")
    assert 0 < (got > 0).sum() < got.size  # the bias moved some neurons across 0 either way


def down_reference(y0, h, down, rows):
    """(y0 + h @ down[rows], bound): each output summed by one thread over count / 8 terms,
    then 8 partial sums, then added to y0."""
    terms = np.abs(h) @ np.abs(down[rows])
    want = y0.astype(np.float64) + h.astype(np.float64) @ down[rows]
    bound = 4 * U * (len(rows) / 8 + 12) * (np.abs(y0) + terms)
    return want, bound


@pytest.mark.parametrize("n_tokens", [1, 3, 8, 11])
@pytest.mark.parametrize("type_name,n_embd", [(t, 256) for t in TYPES] + [("F32", 100), ("F16", 70)])
def test_ffn_down(gpu, type_name, n_embd, n_tokens):
    """y += the listed neurons' down_t rows scaled by h, in a fixed order: the same bits twice."""
    rng = rng_for("down", type_name, n_embd, n_tokens)
    n_rows, capacity, count = 300, 130, 117
    raw, down = encode(rng.standard_normal((n_rows, n_embd)) * 0.1, type_name)
    rows = rng.integers(0, n_rows, capacity).astype(np.int32)  # any order, repeats allowed
    h = rng.standard_normal((n_tokens, capacity)).astype(np.float32)
    h[rng.random(h.shape) < 0.4] = 0.0
    y0 = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)
    args = (TYPE_ID[type_name], gpu.put(raw), n_rows, n_embd, gpu.put(rows), gpu.put(np.array([count], np.int32)),
            capacity, gpu.put(h))
    y = gpu.put(y0)
    gpu.run("si_cuda_ffn_down", *args, n_tokens, y)
    got = gpu.get(y, y0.shape, np.float32)
    want, bound = down_reference(y0, h[:, :count], down, rows[:count])
    assert_within(got, want, bound, f"down {type_name}")
    y_again = gpu.put(y0)
    gpu.run("si_cuda_ffn_down", *args, n_tokens, y_again)
    np.testing.assert_array_equal(gpu.get(y_again, y0.shape, np.float32), got)


@pytest.mark.parametrize("relu_up", [0, 1])
@pytest.mark.parametrize("weight_type", ["F16", "Q4_0"])
def test_sparse_ffn_on_hot_neurons(gpu, weight_type, relu_up):
    """The GPU's part of a hybrid sparse FFN, put together from the entry points: the
    predictor scores all n_ff neurons; the GPU holds the gate, up and down_t rows of a set of
    hot neurons (in the order of their ids list, as PowerInfer's gpu_bucket); select keeps the
    active hot ones; gate/up and down add their share to the residual. Oracle: feed_forward.cpp's
    sparse path restricted to the hot neurons, in float64, with the activity decided by the
    GPU's own scores (a score within rounding of the threshold may go either way)."""
    rng = rng_for("hybrid", weight_type, relu_up)
    n_embd, n_ff, rank, n_tokens, threshold = 256, 640, 64, 3, 0.1
    hot = np.sort(rng.choice(n_ff, 400, replace=False)).astype(np.int32)
    fc1_raw, fc1 = encode(rng.standard_normal((rank, n_embd)) * 0.1, "F16")
    fc2_raw, fc2 = encode(rng.standard_normal((n_ff, rank)) * 0.1, "F16")
    gate_raw, gate = encode(rng.standard_normal((n_ff, n_embd)) * 0.1, weight_type)
    up_raw, up = encode(rng.standard_normal((n_ff, n_embd)) * 0.1, weight_type)
    down_raw, down = encode(rng.standard_normal((n_ff, n_embd)) * 0.1, weight_type)
    x = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)  # the residual (predictor input)
    xn = rng.standard_normal((n_tokens, n_embd)).astype(np.float32)  # its norm (gate/up input)

    hidden, scores = gpu.alloc(n_tokens * rank * 4), gpu.alloc(n_tokens * n_ff * 4)
    gpu.run("si_cuda_ffn_predict", TYPE_ID["F16"], gpu.put(fc1_raw), rank, n_embd, TYPE_ID["F16"],
            gpu.put(fc2_raw), n_ff, gpu.put(x), n_tokens, hidden, scores)
    rows, count, mask = gpu.alloc(hot.size * 4), gpu.alloc(4), gpu.alloc(n_tokens * hot.size)
    gpu.run("si_cuda_ffn_select", scores, n_tokens, n_ff, threshold, gpu.put(hot), hot.size, rows, count, mask,
            None)
    h = gpu.alloc(n_tokens * hot.size * 4)
    gpu.run("si_cuda_ffn_gate_up", TYPE_ID[weight_type], gpu.put(gate_raw[hot]), None, TYPE_ID[weight_type],
            gpu.put(up_raw[hot]), hot.size, n_embd, rows, count, hot.size, mask, gpu.put(xn), n_tokens, relu_up, h)
    y = gpu.put(x)
    gpu.run("si_cuda_ffn_down", TYPE_ID[weight_type], gpu.put(down_raw[hot]), hot.size, n_embd, rows, count,
            hot.size, h, n_tokens, y)

    got_scores = gpu.get(scores, (n_tokens, n_ff), np.float32)
    active = got_scores[:, hot] >= threshold  # (n_tokens, hot)
    assert 0 < active.sum() < active.size
    xn64 = xn.astype(np.float64)
    g, u = xn64 @ gate[hot].T, xn64 @ up[hot].T
    u_act = np.maximum(u, 0) if relu_up else u
    h_want = np.where(active & (g > 0), g * u_act, 0.0)
    want = x.astype(np.float64) + h_want @ down[hot]
    # h errs by its gate/up bound; the sum adds its own rounding.
    _, h_bound = gate_up_reference(gate[hot], up[hot], xn, np.arange(hot.size), active, relu_up)
    _, sum_bound = down_reference(x, h_want, down[hot], np.arange(hot.size))
    bound = sum_bound + h_bound @ np.abs(down[hot])
    assert_within(gpu.get(y, x.shape, np.float32), want, bound, "hybrid sparse FFN")
