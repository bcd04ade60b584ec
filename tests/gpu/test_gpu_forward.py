"""The whole forward pass on a GPU (cpp/src/gpu: the plugin loader and GpuForward) against the
NumPy float64 references, through Model(device="cuda"); for the architectures of other blocks
(qwen2, qwen3, minicpm, gemma3, falcon, opt) and scaled RoPE also against the CPU engine's
logits of the same F32 file.

The GPU tests run in a child process whose sparseinfer loads a given plugin library (the
SPARSEINFER_CUDA_PLUGIN variable of src/sparseinfer/_cuda.py; a plugin, once loaded, stays
loaded, so the parent cannot switch):
- test_gpu_forward_on_the_cpu_emulator: the plugin's sources built for the CPU emulator
  (tests/support/cuda_emulator), on every Linux machine with a C++ compiler;
- test_gpu_forward_on_a_gpu: the plugin built with nvcc (tests/support/cuda_build.py), where
  a GPU answers; skipped otherwise.
In the parent the GPU cases skip (they need SPARSEINFER_TEST_GPU_CHILD); the loader's failure
paths (another ABI, no device, a missing file) run here directly with a stand-in plugin.

Tolerances: the GPU keeps activations in float32 (the CPU quantises them to 8 bits for
quantised weights), sums in float32 and keeps K and V as IEEE halves. The references run on
the exact weights the file holds, in float64, with K and V rounded to half and no activation
rounding, so every weight type is held near float32 summation error: max |diff| <= 2e-4 * std
and mean |diff| <= 2e-5 * std of the reference logits (std about 3). Measured on the
emulator: max 7e-7 for F32, Q8_0 and Q4_0, 4.2e-5 for F16 (the CPU engine: 0.05 for the
quantised types), so a GPU's other summation order has room. Prompt at once and token by
token must agree within 2e-5 * std.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import archgen
import cuda_build
import ggufgen
import reference
import rope_cases
import sparse_reference
import sparsegen
from arch_reference import ArchReference
from logit_checks import logits_in_chunks

import sparseinfer
from sparseinfer import _core

CHILD = os.environ.get("SPARSEINFER_TEST_GPU_CHILD")  # "emulated" or "gpu" in the child

MAX_TOL, MEAN_TOL = 2e-4, 2e-5  # relative to the reference logits' std
SPLIT_TOL = 2e-5

in_child = pytest.mark.skipif(not CHILD, reason="runs in the child process of "
                              "test_gpu_forward_on_the_cpu_emulator / test_gpu_forward_on_a_gpu")


def assert_close(got, want, max_tol=MAX_TOL, mean_tol=MEAN_TOL):
    assert got.shape == want.shape
    std = want.std()
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max() / std <= max_tol, f"max |diff| / std = {diff.max() / std:.3g}"
    assert diff.mean() / std <= mean_tol, f"mean |diff| / std = {diff.mean() / std:.3g}"


class Float32Reference(sparse_reference.SparseReference):
    """The PowerInfer reference, dense, with the GPU's rounding: K and V to half, activations
    not rounded (float32 on the GPU, exact here)."""

    def _mv(self, x, name):
        return x @ self.w[name].T


def assert_token_by_token_equals_at_once(model, ids):
    """Decoding ids one by one gives, bit for bit, the logits of the prompt at once."""
    native = model._sequence().native
    at_once = logits_in_chunks(native, ids, [len(ids)])
    native.reset()
    np.testing.assert_array_equal(logits_in_chunks(native, ids, [1] * len(ids)), at_once)


def gpu_model(path, **kw):
    kw.setdefault("n_ctx", 128)
    kw.setdefault("n_threads", 1)
    return sparseinfer.Model(str(path), device="cuda", predictor_q8=False, **kw)


def cpu_logits(path, ids, **kw):
    """The CPU engine's logits (float64) and stats for the file; F32 weights keep its
    activations in float32, as the GPU's."""
    with sparseinfer.Model(str(path), device="cpu", n_ctx=128, n_threads=1, predictor_q8=False, **kw) as m:
        return m.logits(ids).astype(np.float64), m.stats()


# ---- the parent: children over each plugin ---------------------------------------------

def run_child(plugin, kind, extra_env=None):
    env = dict(extra_env or {}, SPARSEINFER_CUDA_PLUGIN=plugin, SPARSEINFER_TEST_GPU_CHILD=kind)
    cuda_build.run_tests_in_child(os.path.abspath(__file__), env, min_passed=15)  # the GPU cases ran


@pytest.mark.skipif(bool(CHILD), reason="the parent's test")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="the child needs the uninstrumented engine (the kernels have no ASan build)")
def test_gpu_forward_on_the_cpu_emulator(emulated_plugin):
    run_child(emulated_plugin, "emulated")


@pytest.mark.skipif(bool(CHILD), reason="the parent's test")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="the child needs the uninstrumented engine")
def test_gpu_forward_on_a_gpu(nvcc_plugin):
    probe = subprocess.run(
        [sys.executable, "-c", "from sparseinfer import _cuda; i = _cuda.cuda_info(); "
         "print(i['status']); print(i['reason'])"],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, SPARSEINFER_CUDA_PLUGIN=nvcc_plugin.path, **runtime_env(nvcc_plugin)))
    status, _, reason = probe.stdout.partition("\n")
    if status != "ok":
        pytest.skip(f"no GPU: {reason.strip() or probe.stderr[-500:]}")
    run_child(nvcc_plugin.path, "gpu", runtime_env(nvcc_plugin))


def runtime_env(built):
    """The toolkit's runtime on the library path: the plugin links libcudart.so.N."""
    if built.runtime is None:
        return {}
    dirs = [os.path.dirname(built.runtime)] + [d for d in [os.environ.get("LD_LIBRARY_PATH")] if d]
    return {"LD_LIBRARY_PATH": os.pathsep.join(dirs)}


# ---- the loader's failure paths, in the parent -----------------------------------------

@pytest.fixture(scope="module")
def stub_plugins(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("stub"))
    try:
        return {abi: cuda_build.build_stub_plugin(out, abi)
                for abi in (cuda_build.header_defines()["SI_CUDA_ABI_VERSION"], 99)}
    except FileNotFoundError as error:
        pytest.skip(str(error))


def test_engine_refuses_a_plugin_of_another_abi(tiny_llama_path, stub_plugins):
    model = _core.Model(tiny_llama_path, predictor_q8=False)
    with pytest.raises(sparseinfer.UnsupportedModelError, match="speaks ABI 99"):
        _core.DeviceModel(model, stub_plugins[99])


def test_engine_reports_no_device_in_cudas_words(tiny_llama_path, stub_plugins):
    model = _core.Model(tiny_llama_path, predictor_q8=False)
    current = cuda_build.header_defines()["SI_CUDA_ABI_VERSION"]
    with pytest.raises(sparseinfer.SparseInferError, match="no CUDA-capable device is detected"):
        _core.DeviceModel(model, stub_plugins[current])


def test_engine_reports_a_plugin_that_cannot_be_loaded(tiny_llama_path, tmp_path):
    model = _core.Model(tiny_llama_path, predictor_q8=False)
    missing = str(tmp_path / "nothing-here.so")
    with pytest.raises(sparseinfer.UnsupportedModelError, match="could not be loaded"):
        _core.DeviceModel(model, missing)


def test_model_without_a_device_raises_device_unavailable(tiny_llama_path, stub_plugins):
    current = cuda_build.header_defines()["SI_CUDA_ABI_VERSION"]
    script = ("import sys, sparseinfer\n"
              "try:\n"
              "    sparseinfer.Model(sys.argv[1], n_ctx=16, device='cuda')\n"
              "except sparseinfer.DeviceUnavailableError as e:\n"
              "    print('unavailable:', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "SPARSEINFER_TEST_GPU_CHILD"}
    for plugin, reason in ((stub_plugins[current], "no GPU or driver"), (stub_plugins[99], "ABI 99")):
        env["SPARSEINFER_CUDA_PLUGIN"] = plugin
        proc = subprocess.run([sys.executable, "-c", script, tiny_llama_path], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("unavailable:") and reason in proc.stdout, proc.stdout


# ---- the GPU cases (in the child) ------------------------------------------------------

@in_child
@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"])
def test_dense_logits_match_the_reference(tmp_path, weight_type):
    # GQA: 4 query heads over 2 KV heads
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", weight_type=weight_type, n_head=4, n_head_kv=2)
    ids = ggufgen.random_tokens(8)
    with gpu_model(tmp_path / "m.gguf") as m:
        assert m.device == "cuda:0" and not m.is_sparse
        got = m.logits(ids)
    assert_close(got, reference.forward(w, ids, kv_f16=True))


@in_child
@pytest.mark.parametrize("weight_type", ["Q8_0"])
def test_tied_embeddings(tmp_path, weight_type):
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", weight_type=weight_type, tie_embeddings=True,
                                  n_head_kv=1)
    ids = ggufgen.random_tokens(6, seed=3)
    with gpu_model(tmp_path / "m.gguf") as m:
        got = m.logits(ids)
    assert_close(got, reference.forward(w, ids, kv_f16=True))


@in_child
@pytest.mark.parametrize("arch, weight_type", [("llama", "F32"), ("llama", "Q4_0"), ("bamboo", "Q8_0")])
def test_powerinfer_file_runs_densely(tmp_path, arch, weight_type):
    w = sparsegen.write_pwri_model(tmp_path / "p.gguf", arch=arch, weight_type=weight_type)
    ids = ggufgen.random_tokens(8, seed=1)
    with gpu_model(tmp_path / "p.gguf", sparse=False) as m:
        assert not m.is_sparse and m.placement.hot is None
        got = m.logits(ids)
        assert m.stats()["active_fraction"] == 1.0
    ref = Float32Reference(w, sparse=False).eval(ids)
    assert_close(got, ref)


# ---- PowerInfer's hot/cold split: GPU layers with hot neurons, the CPU the cold ones ------

class HybridReference(sparse_reference.SparseReference):
    """The sparse reference placed as the engine places it: CPU layers round the inputs of
    quantised matrices to 8 bits as the CPU engine does; GPU layers and the output head (on
    the GPU when any layer is) keep them exact, except the gate and up products of the cold
    neurons, which the CPU computes."""

    def __init__(self, w, first_gpu_layer, hot):
        super().__init__(w, sparse=True)
        self.first_gpu_layer = first_gpu_layer
        self.hot_masks = [np.isin(np.arange(self.n_ff), h) for h in hot]

    def _mv(self, x, name):
        layer = int(name.split(".")[1]) if name.startswith("blk.") else None
        on_gpu = (layer if layer is not None else self.n_layer) >= self.first_gpu_layer
        if not on_gpu:
            return super()._mv(x, name)
        exact = x @ self.w[name].T
        if name.endswith(("ffn_gate.weight", "ffn_up.weight")):
            return np.where(self.hot_masks[layer], exact, super()._mv(x, name))
        return exact


def budget_for(path, hot_share, n_gpu_layers, n_ctx=128):
    """A VRAM budget that holds the last n_gpu_layers layers' fixed parts, the output head
    and hot_share of those layers' neurons."""
    costs = sparseinfer.model_costs(path, n_ctx=n_ctx)
    layers = range(len(costs.fixed_bytes) - n_gpu_layers, len(costs.fixed_bytes))
    fixed = costs.shared_bytes + costs.batch_bytes + sum(costs.fixed_bytes[l] for l in layers)
    neurons = sum(costs.n_neurons[l] * costs.neuron_bytes[l] for l in layers)
    return int(fixed + hot_share * neurons)


def checked_reference(m, w, ids):
    """The hybrid reference's logits for the placement of Model m."""
    plan = m.placement
    ref = HybridReference(w, len(plan.hot) - plan.n_gpu_layers, plan.hot)
    want = ref.eval(ids)
    # float32 in the engine against float64 here: no neuron may sit close enough to flip
    assert ref.threshold_margin() > 1e-5
    return ref, want


@in_child
@pytest.mark.parametrize("arch, weight_type, hot_share, n_gpu_layers", [
    ("llama", "F32", 1.0, 2),     # every neuron on the GPU: no CPU part
    ("llama", "F32", 0.0, 2),     # no neuron on the GPU: every active one on the CPU
    ("llama", "F32", 0.5, 2),     # split
    ("llama", "Q4_0", 0.5, 2),    # split, quantised
    ("bamboo", "Q8_0", 0.3, 2),   # split, relu(up) too
    ("llama", "Q4_1", 0.5, 1),    # layer 0 on the CPU, layer 1 split
])
def test_hybrid_sparse_logits_match_the_reference(tmp_path, arch, weight_type, hot_share, n_gpu_layers):
    path = tmp_path / "p.gguf"
    w = sparsegen.write_pwri_model(path, arch=arch, weight_type=weight_type, n_layer=2, seed=7)
    budget = budget_for(path, hot_share, n_gpu_layers)
    ids = ggufgen.random_tokens(8, seed=1)
    with gpu_model(path, sparse=True, vram_budget=f"{budget}B") as m:  # n_gpu_layers: as many as fit
        plan = m.placement
        assert m.is_sparse and plan.planned_bytes <= budget and plan.n_gpu_layers == n_gpu_layers
        gpu_layers = range(2 - n_gpu_layers, 2)
        share = sum(plan.n_hot[l] for l in gpu_layers) / (128 * n_gpu_layers)
        assert abs(share - hot_share) < 0.02, plan.n_hot
        assert all(plan.n_hot[l] == 0 for l in range(2 - n_gpu_layers))
        got = m.logits(ids)
        _, want = checked_reference(m, w, ids)
    assert_close(got, want)


@in_child
def test_hybrid_decoding_matches_the_cpu_and_counts_the_active_neurons(tmp_path):
    path = tmp_path / "p.gguf"
    w = sparsegen.write_pwri_model(path, weight_type="F32", n_layer=2, seed=3)
    budget = budget_for(path, 0.5, 2)
    ids = ggufgen.random_tokens(6, seed=5)
    with gpu_model(path, sparse=True, vram_budget=f"{budget}B") as m:
        ref, want = checked_reference(m, w, ids)
        native = m._sequence().native
        rows, fractions = [], []
        for t in ids:  # one token at a time: the GPU's count is then exactly the active hot ones
            native.reset_stats()
            native.eval([t])
            rows.append(native.logits()[0])
            fractions.append(native.active_fractions())
        native.reset()
        native.reset_stats()
        native.eval(ids)  # a batch: each token's own active neurons count, not the batch's union
        prompt_fractions = native.active_fractions()
    assert_close(np.stack(rows), want)
    ref.reset()
    want_fractions = []
    for t in ids:
        ref.eval([t])
        want_fractions.append(ref.layer_fractions())
    np.testing.assert_allclose(fractions, want_fractions, atol=1e-12)
    np.testing.assert_allclose(prompt_fractions, np.mean(want_fractions, axis=0), atol=1e-12)
    args = dict(max_tokens=5, temperature=0, ignore_eos=True)
    with sparseinfer.Model(str(path), n_ctx=64, n_threads=1, sparse=True, predictor_q8=False) as cpu:
        greedy = cpu.generate("hello world", **args)
    with gpu_model(path, n_ctx=64, vram_budget=f"{budget}B") as m:  # sparse="auto"
        assert m.is_sparse and m.generate("hello world", **args) == greedy


@in_child
def test_hybrid_placement_follows_the_profile(tmp_path):
    # A profile that makes the odd neurons hot: the GPU gets exactly those it has room for.
    from sparseinfer.profile import NeuronProfile, default_profile_path
    path = tmp_path / "p.gguf"
    w = sparsegen.write_pwri_model(path, weight_type="Q8_0", n_layer=2, seed=11)
    counts = [np.where(np.arange(128) % 2 == 1, 1000 - np.arange(128), 0) for _ in range(2)]
    NeuronProfile(tuple(np.asarray(c, dtype=np.int64) for c in counts), tokens=1000).save(
        default_profile_path(path))
    ids = ggufgen.random_tokens(8, seed=2)
    with gpu_model(path, sparse=True, vram_budget=f"{budget_for(path, 0.25, 2)}B") as m:
        for hot in m.placement.hot:  # room for 32 of each layer's 128 neurons
            assert list(hot) == list(range(1, 64, 2))
        got = m.logits(ids)
        _, want = checked_reference(m, w, ids)
    assert_close(got, want)


@in_child
def test_vram_budget_is_respected_and_weights_are_shared(tmp_path):
    # Measured: the device's free memory before the Model and while it runs.
    from sparseinfer import _cuda
    path = tmp_path / "p.gguf"
    if CHILD == "emulated":
        sparsegen.write_pwri_model(path, weight_type="Q4_0", n_layer=4, n_ff=256, seed=1)
    else:  # a budget of ~180 MiB: a GPU's free memory moves in steps of its own (not at all for
        # the 1.5 MB budget of the model above, seen on an H200)
        sparsegen.write_pwri_model(path, weight_type="F16", n_layer=4, n_embd=1024, n_head=8, n_ff=16384, seed=1)
    budget = budget_for(path, 0.3, 4, n_ctx=96)
    # Allocations round up: to 256 bytes on the emulator, to pages of its own on a GPU.
    slack = 64 * 2**10 if CHILD == "emulated" else 64 * 2**20
    with _cuda.plugin().context(0) as probe:
        free_before, _ = probe.memory_info()
        with gpu_model(path, n_ctx=96, sparse=True, vram_budget=f"{budget}B") as m:
            m.logits(ggufgen.random_tokens(20, seed=3))
            used = free_before - probe.memory_info()[0]
            assert m.placement.planned_bytes <= budget
            assert 0 < used <= budget + slack, (used, budget)
            assert m.gpu_weight_bytes <= used
            with m.session(n_ctx=96) as s:  # a session adds its KV cache and activations only
                s.logits(ggufgen.random_tokens(20, seed=3))
                added = free_before - probe.memory_info()[0] - used
                assert 0 < added <= used - m.gpu_weight_bytes + slack, (added, used)
        assert free_before - probe.memory_info()[0] <= slack  # all freed with the Model


@in_child
@pytest.mark.parametrize("sparse", [False, True])
def test_the_priced_weights_are_what_the_model_uploads(tmp_path, sparse):
    # The engine prices a model's parts (model_costs, gpu/device_costs.cpp) as it uploads
    # them: a placement's weights, less the KV caches and a batch's activations, are exactly
    # the bytes the device model holds.
    path = tmp_path / "p.gguf"
    sparsegen.write_pwri_model(path, weight_type="Q4_0", n_layer=3, n_ff=256, seed=2)
    n_ctx = 64
    costs = sparseinfer.model_costs(path, n_ctx=n_ctx)
    kv = costs.fixed_bytes[0] - sparseinfer.model_costs(path, n_ctx=n_ctx - 1).fixed_bytes[0]
    budget = budget_for(path, 0.5, 2, n_ctx=n_ctx)
    with gpu_model(path, n_ctx=n_ctx, sparse=sparse, n_gpu_layers=2,
                   vram_budget=f"{budget if sparse else 10**9}B") as m:
        plan = m.placement
        assert plan.n_gpu_layers == 2 and (plan.hot is not None) == sparse
        assert m.gpu_weight_bytes == plan.planned_bytes - costs.batch_bytes - 2 * n_ctx * kv


@in_child
def test_budget_errors_name_the_sizes(tmp_path):
    path = tmp_path / "p.gguf"
    sparsegen.write_pwri_model(path, weight_type="F32", n_layer=2)
    with pytest.raises(ValueError, match="cannot hold one layer and the output head"):
        gpu_model(path, sparse=True, vram_budget="1KiB")
    with pytest.raises(ValueError, match="n_gpu_layers=2 needs"):
        gpu_model(path, sparse=True, vram_budget=f"{budget_for(path, 0, 2) - 1}B", n_gpu_layers=2)
    # run densely, a layer goes to the GPU with all its neurons: fewer layers fit
    with gpu_model(path, sparse=False, vram_budget=f"{budget_for(path, 0.5, 2)}B") as m:
        assert m.placement.n_gpu_layers == 1 and m.placement.hot is None


@in_child
def test_dense_model_with_some_layers_on_the_cpu(tmp_path):
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", weight_type="F32", n_layer=3)
    ids = ggufgen.random_tokens(7)
    want = reference.forward(w, ids, kv_f16=True)
    for n_gpu_layers in (0, 1, 2):
        with gpu_model(tmp_path / "m.gguf", n_gpu_layers=n_gpu_layers) as m:
            assert m.placement.n_gpu_layers == n_gpu_layers
            assert_close(m.logits(ids), want)


# Architectures of llama's block with BlockSpec fields the GPU computes: qwen2 (Q, K, V biases,
# NeoX RoPE), qwen3 (per-head Q and K norms, NeoX RoPE, heads 32 wide where n_embd / n_head is
# 16), minicpm (embedding, residual and logit scales) and gemma3 (qwen3's attention with a query
# scale of 1/sqrt(head_dim), norms after attention and FFN, a GELU-tanh FFN, the embedding
# scale, a logit softcap, and every other layer attending through a window of 4 positions, which
# the prompts below run past, with a RoPE base of its own). GQA in each.
GEMMA3_KEYS = {"gemma3.attention.sliding_window_pattern": 2, "gemma3.rope.freq_base_swa": 500.0,
               "gemma3.final_logit_softcapping": 10.0}
ARCHITECTURES = {
    "qwen2": dict(architecture="qwen2", n_head_kv=2),
    "qwen3": dict(architecture="qwen3", n_head_kv=2, head_dim=32),
    "minicpm": dict(architecture="minicpm", n_head_kv=2,
                    minicpm_scales=dict(embedding_scale=12.0, residual_scale=0.99, logit_scale=0.5)),
    "gemma3": dict(architecture="gemma3", n_head_kv=1, head_dim=32, sliding_window=4, rope_base=1e6,
                   extra_kv=GEMMA3_KEYS),
}


def write_architecture(path, arch, **kw):
    """A file of ARCHITECTURES[arch]; its weights' hparams hold what the reference needs of
    the keys ggufgen writes as given (gemma3's window pattern, local base and softcap)."""
    w = ggufgen.write_llama_model(path, **ARCHITECTURES[arch], **kw)
    if arch == "gemma3":
        w.hparams.update(sliding_layers=[il % 2 == 0 for il in range(w.hparams["n_layer"])],
                         local_rope_base=500.0, final_logit_softcap=10.0)
    return w


@in_child
@pytest.mark.parametrize("weight_type", ["F32", "Q8_0"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_match_the_reference_and_the_cpu(tmp_path, arch, weight_type):
    """Every layer on the GPU, and (F32, whose CPU layers compute without rounding the
    activations) the first layers on the CPU: the reference's tolerances as for llama, and the
    CPU engine's logits of the same file as close as the reference's where the CPU keeps
    float32 activations. (Not seed 31: its qwen2 file is one where the CPU engine itself sits
    2e-4 * std from the reference, a file whose logits hang on the rounding of a value.)"""
    path = tmp_path / f"{arch}.gguf"
    w = write_architecture(path, arch, weight_type=weight_type, n_layer=3, seed=1)
    ids = ggufgen.random_tokens(9, seed=31)
    want = reference.forward(w, ids, kv_f16=True)
    with sparseinfer.Model(str(path), device="cpu", n_ctx=128, n_threads=1) as m:
        on_the_cpu = m.logits(ids)
    for n_gpu_layers in (-1, 2, 1) if weight_type == "F32" else (-1,):
        with gpu_model(path, n_gpu_layers=n_gpu_layers) as m:
            assert m.placement.n_gpu_layers == (3 if n_gpu_layers == -1 else n_gpu_layers)
            got = m.logits(ids)
        assert_close(got, want)
        if weight_type == "F32":
            assert_close(got, on_the_cpu.astype(np.float64))


@in_child
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_token_by_token_equal_the_prompt_at_once(tmp_path, arch):
    """The KV cache of the GPU layers (heads of head_dim, not n_embd / n_head; gemma3's windows
    over it) read back as the prompt wrote it: decoding token by token gives the prompt's
    logits."""
    path = tmp_path / f"{arch}.gguf"
    write_architecture(path, arch, weight_type="Q8_0", seed=32)
    with gpu_model(path) as m:
        assert_token_by_token_equals_at_once(m, ggufgen.random_tokens(7, seed=32))


@in_child
def test_gemma3_27b_query_scale(tmp_path):
    """Gemma 3 27B (62 layers) scales its queries by 1/sqrt(n_embd / n_head), not
    1/sqrt(head_dim): the GPU's layer takes the model's scale, as the CPU's. Against the CPU
    engine (62 layers of K and V halves put the float64 reference 5e-4 std from both engines;
    the other scale moves the logits by 0.7 std)."""
    path = tmp_path / "gemma3-27b.gguf"
    w = write_architecture(path, "gemma3", n_layer=62, seed=3)
    ids = ggufgen.random_tokens(6, seed=3)
    on_the_cpu, _ = cpu_logits(path, ids)
    want = reference.forward(w, ids, dict(w.hparams, attention_scale=1 / np.sqrt(64 / 4)), kv_f16=True)
    other_scale = reference.forward(w, ids, kv_f16=True)  # 1/sqrt(head_dim 32)
    assert np.abs(on_the_cpu - want).max() < 2e-3 * want.std()
    assert np.abs(on_the_cpu - other_scale).max() > 0.1 * want.std()
    with gpu_model(path, n_gpu_layers=1) as m:  # one layer on the GPU: the emulator's time
        got = m.logits(ids)
    assert_close(got, on_the_cpu)


# falcon and opt (tests/support/archgen.py, checked by tests/support/arch_reference.py):
# LayerNorm with biases and a gate-less FFN (falcon's files: GELU-tanh, PowerInfer's: ReLU);
# falcon's parallel attention and FFN from one fused QKV projection, NeoX RoPE (the second
# variant with Falcon-40B's second norm, one KV head, the output tied to token_embd and a RoPE
# base of its own); opt's biases on Q, K, V, the attention output and the FFN's up and down, and
# its learned positions (added to the embeddings on the CPU).
FALCON_OPT = {
    "falcon": (archgen.write_falcon_model, dict(n_head_kv=2)),
    "falcon-two-norms": (archgen.write_falcon_model,
                         dict(n_head_kv=1, attn_norm_2=True, tie_embeddings=True, rope_base=5000.0)),
    "opt": (archgen.write_opt_model, {}),
}


def write_falcon_opt(tmp_path, variant, flavour, **kw):
    """An F32 (unless kw says otherwise) file of FALCON_OPT[variant], 2 layers of 128 neurons.
    The seeds below give files where no K or V value sits within float32 noise (1.3e-7 of
    itself) of the midpoint between two halves: such a value rounds to the other half on one
    side and moves the logits by up to 1e-4 std (seed 11's falcon-two-norms file, one KV head)."""
    writer, shape = FALCON_OPT[variant]
    return writer(tmp_path / f"{variant}-{flavour}.gguf", flavour=flavour, **shape, **kw)


@in_child
@pytest.mark.parametrize("variant", sorted(FALCON_OPT))
def test_falcon_and_opt_match_the_reference_and_the_cpu(tmp_path, variant):
    """Dense files, every layer on the GPU (and opt's layer 0 on the CPU): the float64 reference
    (F32 weights: K and V rounded to half, nothing else) and the CPU engine's logits."""
    w = write_falcon_opt(tmp_path, variant, "gguf", seed=19)
    ids = ggufgen.random_tokens(8, seed=19)
    want = ArchReference(w).eval(ids)
    on_the_cpu, _ = cpu_logits(w.path, ids)
    for n_gpu_layers in (-1, 1) if variant == "opt" else (-1,):
        with gpu_model(w.path, n_gpu_layers=n_gpu_layers) as m:
            assert m.placement.n_gpu_layers == (2 if n_gpu_layers == -1 else 1)
            got = m.logits(ids)
        assert_close(got, want)
        assert_close(got, on_the_cpu)


@in_child
@pytest.mark.parametrize("arch", ["falcon", "opt"])
def test_falcon_and_opt_powerinfer_files_run_densely(tmp_path, arch):
    # sparse=False: every neuron of the ReLU FFN (opt's with its biases) on the GPU
    w = write_falcon_opt(tmp_path, arch, "pwri", threshold=0.15, seed=27)
    ids = ggufgen.random_tokens(8, seed=27)
    want = ArchReference(w, sparse=False).eval(ids)
    on_the_cpu, _ = cpu_logits(w.path, ids, sparse=False)
    with gpu_model(w.path, sparse=False) as m:
        assert not m.is_sparse and m.placement.hot is None and m.placement.n_gpu_layers == 2
        got = m.logits(ids)
        assert m.stats()["active_fraction"] == 1.0
    assert_close(got, want)
    assert_close(got, on_the_cpu)


@in_child
@pytest.mark.parametrize("arch, predictor, hot_share, n_gpu_layers", [
    ("falcon", "random", 0.5, 2),
    ("falcon", "exact", 0.3, 1),  # layer 0 on the CPU, layer 1 split
    ("opt", "random", 0.5, 1),
    ("opt", "exact", 0.7, 2),     # opt's exact predictor marks neurons whose ReLU gives 0 too
])
def test_falcon_and_opt_hybrid_sparse_match_the_cpu_and_the_reference(tmp_path, arch, predictor, hot_share,
                                                                       n_gpu_layers):
    """PowerInfer's split: the hot neurons on the GPU (with opt's up biases, in hot order), the
    cold ones on the CPU. The CPU engine runs the same file sparse: the same predictor picks the
    same neurons (no score within float32 noise of the threshold), so both give the sparse
    reference's logits, and the GPU counts each token's active neurons as the reference."""
    w = write_falcon_opt(tmp_path, arch, "pwri", predictor=predictor, seed=27,
                         threshold=0.15 if predictor == "random" else None)
    budget = budget_for(w.path, hot_share, n_gpu_layers)
    ids = ggufgen.random_tokens(8, seed=27)
    ref = ArchReference(w)
    want = ref.eval(ids)
    assert ref.threshold_margin() > 1e-5
    on_the_cpu, _ = cpu_logits(w.path, ids, sparse=True)
    with gpu_model(w.path, sparse=True, n_gpu_layers=n_gpu_layers, vram_budget=f"{budget}B") as m:
        plan = m.placement
        assert m.is_sparse and plan.n_gpu_layers == n_gpu_layers
        gpu_layers = range(2 - n_gpu_layers, 2)
        assert abs(sum(plan.n_hot[l] for l in gpu_layers) / (128 * n_gpu_layers) - hot_share) < 0.02, plan.n_hot
        assert all(0 < plan.n_hot[l] < 128 for l in gpu_layers)
        got = m.logits(ids)
        fractions = m.stats()["layers"]
    assert_close(got, want)
    assert_close(got, on_the_cpu)
    np.testing.assert_allclose(fractions, ref.layer_fractions(), atol=1e-12)


@in_child
@pytest.mark.parametrize("arch", ["falcon", "opt"])
def test_falcon_and_opt_token_by_token_equal_the_prompt_at_once(tmp_path, arch):
    # Hybrid, both layers split: each token's RoPE angles (falcon) or position row (opt)
    # continue where the last eval stopped, and the same bits come out.
    w = write_falcon_opt(tmp_path, arch, "pwri", threshold=0.15, seed=14)
    budget = budget_for(w.path, 0.5, 2)
    with gpu_model(w.path, sparse=True, n_gpu_layers=2, vram_budget=f"{budget}B") as m:
        assert all(0 < n < 128 for n in m.placement.n_hot)
        assert_token_by_token_equals_at_once(m, ggufgen.random_tokens(6, seed=14))


@in_child
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "gemma3", "falcon", "falcon-two-norms", "opt", "opt-pwri"])
def test_the_priced_weights_of_the_new_blocks_are_what_the_model_uploads(tmp_path, arch):
    # The biases and the norms go up with each GPU layer and are priced with it (gemma3: with
    # its sliding layers' RoPE frequencies; a PowerInfer file: with its hot neurons' up biases).
    path = tmp_path / f"{arch}.gguf"
    args = {}
    if arch == "opt-pwri":
        path = write_falcon_opt(tmp_path, "opt", "pwri", weight_type="Q8_0").path
        args = dict(sparse=True, vram_budget=f"{budget_for(path, 0.5, 2, n_ctx=64)}B")
    elif arch in FALCON_OPT:
        path = write_falcon_opt(tmp_path, arch, "gguf", weight_type="Q8_0").path
    else:
        write_architecture(path, arch, weight_type="Q8_0")
    n_ctx = 64
    costs = sparseinfer.model_costs(path, n_ctx=n_ctx)
    kv = costs.fixed_bytes[0] - sparseinfer.model_costs(path, n_ctx=n_ctx - 1).fixed_bytes[0]
    with gpu_model(path, n_ctx=n_ctx, **args) as m:
        plan = m.placement
        assert plan.hot is None or 0 < plan.n_hot[1] < 128
        assert m.gpu_weight_bytes == plan.planned_bytes - costs.batch_bytes - plan.n_gpu_layers * n_ctx * kv


# Scaled RoPE (tests/support/rope_cases.py) turns on the GPU by the CPU's frequencies and
# magnitude: linear with an attn_factor; YaRN's ramp with frequency factors; YaRN with an
# attn_factor in NeoX pairs (qwen2).
ROPE_CASES = [("linear_attn_factor", "llama"), ("yarn_freq_factors", "llama"), ("yarn_attn_factor", "qwen2")]


@in_child
@pytest.mark.parametrize("name, architecture", ROPE_CASES)
def test_scaled_rope_matches_the_cpu_and_the_reference(tmp_path, name, architecture):
    # 16 tokens (the emulator's time; the K and V halves of longer prompts flip apart in the
    # CPU's and GPU's float32 sums, test_rope_scaling.py), far enough for the scaling to show
    path, w, hparams = rope_cases.write_cases(tmp_path, [name], architecture=architecture)[name]
    ids = ggufgen.random_tokens(16, seed=1)
    want = reference.forward(w, ids, hparams, kv_f16=True)
    unscaled = reference.forward({k: v for k, v in w.items() if k != "rope_freqs.weight"}, ids,
                                 dict(hparams, rope_scaling=None), kv_f16=True)
    assert np.abs(unscaled - want).max() > 0.05 * want.std()
    on_the_cpu, _ = cpu_logits(path, ids)
    with gpu_model(path, n_ctx=rope_cases.CTX) as m:
        got = m.logits(ids)
    assert_close(got, want)
    assert_close(got, on_the_cpu)


def as_uploaded(w, plan):
    """The weights w (of a file in a type the plugin does not read) as a Model placed by
    `plan` computes with them: on the GPU, Q8_0 rows made from the file's values (the GPU
    layers' matrices, of a sparse placement's FFN only its hot neurons' rows, and the output
    head); elsewhere (the token embeddings, the CPU's layers and cold neurons) the values as
    stored."""
    out = ggufgen.ModelWeights(w)
    out.hparams = w.hparams
    first_gpu_layer = w.hparams["n_layer"] - plan.n_gpu_layers
    for name, values in w.items():
        layer = int(name.split(".")[1]) if name.startswith("blk.") else w.hparams["n_layer"]
        if values.ndim != 2 or name == "token_embd.weight" or layer < first_gpu_layer:
            continue
        rows = np.arange(len(values))
        if plan.hot is not None and name.endswith(("ffn_gate.weight", "ffn_up.weight", "ffn_down_t.weight")):
            rows = plan.hot[layer]
        scale, q = reference.q8_blocks(values[rows], scale_as_half=True)
        out[name] = values.copy()
        out[name][rows] = (q * scale[:, None]).reshape(len(rows), -1)
    return out


@in_child
@pytest.mark.parametrize("weight_type", ["BF16", "Q5_0", "Q4_K", "Q6_K"])
def test_types_without_gpu_kernels_go_as_q8_0_rows(tmp_path, weight_type):
    # The plugin reads F32, F16, Q8_0, Q4_0 and Q4_1; a matrix in another type goes to the
    # device as Q8_0 rows made from its values (the embedding table stays on the host).
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", weight_type=weight_type, n_embd=256, n_ff=256,
                                  n_head=4, n_head_kv=2)
    ids = ggufgen.random_tokens(8)
    path, n_ctx = tmp_path / "m.gguf", 128
    costs = sparseinfer.model_costs(path, n_ctx=n_ctx)
    kv = costs.fixed_bytes[0] - sparseinfer.model_costs(path, n_ctx=n_ctx - 1).fixed_bytes[0]
    with gpu_model(path, n_ctx=n_ctx, vram_budget=f"{10**9}B") as m:
        got = m.logits(ids)
        plan = m.placement
        # priced as uploaded: Q8_0 rows
        assert m.gpu_weight_bytes == plan.planned_bytes - costs.batch_bytes - 2 * n_ctx * kv
    assert_close(got, reference.forward(as_uploaded(w, plan), ids, kv_f16=True))
    # and the Q8_0 rounding shows: the file's own values give other logits
    assert np.abs(got - reference.forward(w, ids, kv_f16=True)).max() > 10 * MAX_TOL * got.std()


@in_child
@pytest.mark.parametrize("n_gpu_layers", [2, 1])
def test_hybrid_sparse_with_a_type_the_plugin_does_not_read(tmp_path, n_gpu_layers):
    # The hot neurons' rows, gathered, go as Q8_0 rows; the CPU computes the cold ones from
    # the stored BF16 rows (and layer 0, with n_gpu_layers=1). The predictor is BF16 too.
    from sparseinfer.profile import NeuronProfile, default_profile_path
    path = tmp_path / "p.gguf"
    w = sparsegen.write_pwri_model(path, weight_type="BF16", n_layer=2, seed=7)
    # a profile that scatters the hot neurons, so that each gathered row must be the right one
    rng = np.random.default_rng(3)
    NeuronProfile(tuple(rng.permutation(128).astype(np.int64) for _ in range(2)), tokens=128).save(
        default_profile_path(path))
    budget = budget_for(path, 0.5, n_gpu_layers)
    ids = ggufgen.random_tokens(8, seed=1)
    with gpu_model(path, sparse=True, vram_budget=f"{budget}B") as m:
        plan = m.placement
        assert m.is_sparse and plan.n_gpu_layers == n_gpu_layers and 0 < plan.n_hot[1] < 128
        assert plan.hot[1][-1] > plan.n_hot[1]  # not the first n_hot neurons
        got = m.logits(ids)
    ref = HybridReference(as_uploaded(w, plan), 2 - n_gpu_layers, plan.hot)
    want = ref.eval(ids)
    assert ref.threshold_margin() > 1e-5
    assert_close(got, want)


@in_child
def test_rows_that_cannot_be_q8_0_name_the_tensor(tmp_path):
    # BF16 rows of 48 values are not whole 32-value blocks: neither the plugin nor Q8_0 takes them.
    ggufgen.write_llama_model(tmp_path / "b.gguf", weight_type="BF16", n_embd=48, n_head=4, n_head_kv=2)
    with pytest.raises(sparseinfer.UnsupportedModelError, match=r"attn_q\.weight.*BF16.*48 values"):
        gpu_model(tmp_path / "b.gguf")


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("q4") / "q4.gguf"
    w = ggufgen.write_llama_model(path, weight_type="Q4_0")
    return str(path), w


@in_child
@pytest.mark.parametrize("kind", ["dense", "hybrid"])
def test_logits_do_not_depend_on_how_the_tokens_were_split(tmp_path, q4_model, kind):
    """A prompt at once, token by token, or in uneven chunks: the same bits (batch
    invariance, cpp/src/cpu/kernels.h; on the GPU too), so a Model reuses the prefix of a
    prompt already in its cache without changing any result."""
    if kind == "dense":
        path, args = q4_model[0], {}
    else:  # layer 0 on the CPU, layer 1 split: hot neurons on the GPU, cold on the CPU
        path = tmp_path / "p.gguf"
        sparsegen.write_pwri_model(path, weight_type="Q4_0", n_layer=2, seed=7)
        args = dict(sparse=True, vram_budget=f"{budget_for(path, 0.5, 1)}B")
    ids = ggufgen.random_tokens(11, seed=2)
    results = []
    with gpu_model(path, **args) as m:
        assert kind == "dense" or 0 < m.placement.n_hot[1] < 128
        native = m._sequence().native
        assert native.on_gpu
        for split in ([11], [1] * 11, [3, 1, 5, 2]):
            native.reset()
            results.append(logits_in_chunks(native, ids, split))
        # generate() reuses the cached prompt and answers as a fresh model does
        sampled = dict(max_tokens=6, temperature=0.9, seed=1, ignore_eos=True)
        first = m.generate("hello world", **sampled)
        again = m.generate("hello world", **sampled)
        assert m.stats()["reused_tokens"] > 0
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    assert again == first


@in_child
@pytest.mark.skipif(CHILD == "emulated", reason="about 3 minutes on the CPU emulator: run on a GPU")
def test_long_prompt_runs_in_chunks(tmp_path):
    # more than one batch of 256 tokens (Session's chunks): the second chunk attends to the first
    w = ggufgen.write_llama_model(tmp_path / "m.gguf", n_ctx=320)
    ids = ggufgen.random_tokens(270, seed=4)
    with gpu_model(tmp_path / "m.gguf", n_ctx=300) as m:
        got = m.logits(ids)
        native = m._sequence().native
        native.reset()
        native.eval(ids)  # only the last row kept
        last = native.logits()
    want = reference.forward(w, ids, kv_f16=True)
    assert_close(got, want)
    assert_close(last, want[-1:])


@in_child
def test_greedy_generation_matches_the_cpu(tmp_path):
    ggufgen.write_llama_model(tmp_path / "m.gguf")
    args = dict(max_tokens=4, temperature=0, ignore_eos=True)
    with sparseinfer.Model(str(tmp_path / "m.gguf"), n_ctx=64, n_threads=1, predictor_q8=False) as cpu:
        want = cpu.generate("hello world", **args)
    with gpu_model(tmp_path / "m.gguf", n_ctx=64) as m:
        assert m.generate("hello world", **args) == want
        with m.session() as s:  # sessions follow the model's device
            assert s._sequence().native.on_gpu
            assert s.generate("hello world", **args) == want


@in_child
def test_context_overflow_and_truncate(q4_model):
    path, w = q4_model
    ids = ggufgen.random_tokens(10, seed=5)
    with gpu_model(path, n_ctx=10) as m:
        native = m._sequence().native
        native.eval(ids[:6])
        with pytest.raises(sparseinfer.ContextOverflowError):
            native.eval(ids[6:] + [5])
        assert native.n_past == 6
        native.eval(ids[6:], all_logits=True)  # exactly full
        full = native.logits()
        native.truncate(8)
        native.eval(ids[8:], all_logits=True)  # the same rows again over the kept cache
        assert_close(native.logits(), full[2:].astype(np.float64), SPLIT_TOL, SPLIT_TOL)
    ref = reference.forward(w, ids, kv_f16=True)
    assert_close(full, ref[6:])


@in_child
def test_cancel(q4_model):
    path, w = q4_model
    ids = ggufgen.random_tokens(8, seed=6)
    want = reference.forward(w, ids, kv_f16=True)
    with gpu_model(path) as m:
        native = m._sequence().native
        native.eval(ids[:4])
        native.request_cancel()
        with pytest.raises(sparseinfer.CancelledError):
            native.eval(ids[4:])
        assert native.n_past == 4
        native.clear_cancel()
        native.eval(ids[4:], all_logits=True)
        assert_close(native.logits(), want[4:])

        # From another thread while a prompt runs: it stops between layers (on the emulator
        # this prompt takes seconds; a fast GPU may finish first). Either way the sequence is
        # as before the cancelled eval, or one eval longer.
        outcome = {}

        def run():
            try:
                native.eval(ggufgen.random_tokens(48, seed=7))
                outcome["done"] = True
            except sparseinfer.CancelledError:
                outcome["cancelled"] = True

        native.reset()
        worker = threading.Thread(target=run)
        worker.start()
        threading.Event().wait(0.05)
        native.request_cancel()
        worker.join()
        assert native.n_past == (48 if "done" in outcome else 0), outcome
        native.clear_cancel()
        assert_close(m.logits(ids), want)


@in_child
def test_cli_prints_the_placement(tmp_path, capsys):
    from sparseinfer import cli
    path = tmp_path / "p.gguf"
    sparsegen.write_pwri_model(path, weight_type="Q8_0", n_layer=2, seed=1)
    budget = budget_for(path, 0.5, 2, n_ctx=64)
    assert cli.main(["generate", "-m", str(path), "-p", "hello", "-n", "3", "--temp", "0", "-c", "64",
                     "-t", "1", "--device", "cuda", "--vram-budget", f"{budget}B", "--stats"]) == 0
    err = capsys.readouterr().err
    assert "cuda:0:    2 layers of 2, 128 hot FFN neurons" in err, err


@in_child
def test_a_budget_beyond_free_memory_is_refused_before_uploading(tmp_path, monkeypatch):
    from sparseinfer import _cuda
    path = tmp_path / "p.gguf"
    sparsegen.write_pwri_model(path, weight_type="Q8_0", n_layer=2)
    needed = budget_for(path, 1.0, 2)
    monkeypatch.setattr(_cuda.Context, "memory_info", lambda self: (needed - 1, 8 << 30))
    with pytest.raises(MemoryError, match=r"needs .* MiB .* has .* MiB free; lower vram_budget"):
        gpu_model(path, sparse=True, vram_budget="1GiB")
    # no budget: what is free, less 256 MiB; one neuron short of everything here
    monkeypatch.setattr(_cuda.Context, "memory_info", lambda self: (needed - 1 + 256 * 2**20, 8 << 30))
    with gpu_model(path, sparse=True) as m:
        assert m.placement.budget == needed - 1 and sum(m.placement.n_hot) == 2 * 128 - 1
