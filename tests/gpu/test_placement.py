"""The hot/cold placement plan (sparseinfer.placement) against independent oracles: a
global sort of the counts when every neuron costs the same, a plain Python loop of the
density greedy and an exhaustive 0/1 knapsack when layers differ in bytes per neuron,
and the test's own weight arrays for the byte costs of a model file."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ggufgen
import sparsegen

import sparseinfer as si
from sparseinfer import _core, placement


def distinct_counts(rng, sizes, tokens=10_000):
    """Per layer, counts with no ties anywhere (so the best set is unique)."""
    total = sum(sizes)
    values = rng.choice(tokens, size=total, replace=False)
    return [values[a:b].astype(np.int64) for a, b in zip(np.cumsum([0] + sizes[:-1]), np.cumsum(sizes))]


@pytest.mark.parametrize("k", [0, 1, 7, 50, 199, 200])
def test_equal_costs_take_the_globally_most_frequent(k):
    rng = np.random.default_rng(k)
    sizes = [40, 40, 40, 40, 40]
    counts = distinct_counts(rng, sizes)
    b, fixed = 96, [1000, 1200, 1100, 1000, 900]
    slack = 0 if k == 200 else b - 1  # room for k neurons and not one more
    budget = sum(fixed) + 300 + k * b + slack
    plan = si.plan_placement(counts, neuron_bytes=b, fixed_bytes=fixed, shared_bytes=300,
                             budget=budget)
    assert plan.bytes_used <= budget and budget - plan.bytes_used == slack
    assert plan.neuron_bytes_used == k * b and plan.fixed_bytes == sum(fixed) + 300
    # Oracle: the k largest counts of all layers together.
    flat = np.concatenate(counts)
    layer_of = np.repeat(np.arange(5), sizes)
    index_in_layer = np.concatenate([np.arange(n) for n in sizes])
    best = np.argsort(-flat)[:k]
    for l in range(5):
        want = np.sort(index_in_layer[best[layer_of[best] == l]])
        np.testing.assert_array_equal(plan.hot[l], want)
        assert plan.hot[l].dtype == np.int32
    assert plan.gpu_share == pytest.approx(flat[best].sum() / flat.sum())
    for l in range(5):
        assert plan.layer_gpu_shares[l] == pytest.approx(counts[l][plan.hot[l]].sum() / counts[l].sum())
    masks = plan.gpu_masks()
    assert [int(m.sum()) for m in masks] == plan.n_hot


def greedy_oracle(counts, costs, room):
    """The density greedy as a plain loop: every neuron of every layer, best count per
    byte first (ties: lower layer, then higher count / lower id), taken if it still fits."""
    items = []
    for l, c in enumerate(counts):
        for j, v in enumerate(c):
            items.append((-v / costs[l], l, -v, j))
    items.sort()
    hot = [[] for _ in counts]
    for _, l, _, j in items:
        if costs[l] <= room:
            hot[l].append(j)
            room -= costs[l]
    return [sorted(h) for h in hot]


@pytest.mark.parametrize("seed", range(6))
def test_mixed_layer_sizes_follow_the_density_greedy(seed):
    rng = np.random.default_rng(seed)
    sizes = [int(n) for n in rng.integers(5, 30, 4)]
    costs = [int(c) for c in rng.choice([18 * 3, 34 * 3, 128 * 3, 256 * 3], 4)]  # Q4_0 .. F32 rows
    counts = [rng.integers(0, 500, n) for n in sizes]
    fixed = [int(f) for f in rng.integers(0, 5000, 4)]
    for room in (0, 100, 1000, 3000, int(sum(s * c for s, c in zip(sizes, costs)) * 0.6), 10**9):
        plan = si.plan_placement(counts, neuron_bytes=costs, fixed_bytes=fixed,
                                 budget=sum(fixed) + room)
        want = greedy_oracle(counts, costs, room)
        assert [list(h) for h in plan.hot] == want, room
        assert plan.bytes_used <= sum(fixed) + room
        # Nothing left out would still fit: the greedy skips to cheaper layers.
        left = sum(fixed) + room - plan.bytes_used
        for l in range(4):
            if len(plan.hot[l]) < sizes[l]:
                assert costs[l] > left


def test_greedy_is_within_one_neuron_of_the_knapsack_optimum():
    rng = np.random.default_rng(7)
    for trial in range(20):
        sizes = [3, 4, 3]
        costs = [int(c) for c in rng.integers(2, 9, 3)]
        counts = [rng.integers(0, 100, n) for n in sizes]
        room = int(rng.integers(5, 40))
        plan = si.plan_placement(counts, neuron_bytes=costs, fixed_bytes=0, budget=room)
        got = sum(counts[l][h].sum() for l, h in enumerate(plan.hot))
        items = [(int(counts[l][j]), costs[l]) for l in range(3) for j in range(sizes[l])]
        best = 0
        for pick in itertools.product((0, 1), repeat=len(items)):
            if sum(c for (v, c), p in zip(items, pick) if p) <= room:
                best = max(best, sum(v for (v, c), p in zip(items, pick) if p))
        assert best - max(v for v, _ in items) <= got <= best, trial


def test_without_a_profile_each_layer_gets_an_equal_share():
    sizes = [100, 100, 60, 100]
    plan = si.plan_placement(None, n_neurons=sizes, neuron_bytes=[10, 10, 10, 20],
                             fixed_bytes=0, budget=10 * 150)
    fractions = [len(h) / n for h, n in zip(plan.hot, sizes)]
    assert max(fractions) - min(fractions) <= 1 / 60 + 1e-12
    for h in plan.hot:
        np.testing.assert_array_equal(h, np.arange(len(h)))  # lowest ids, nothing known
    assert plan.bytes_used <= 1500 and 1500 - plan.bytes_used < 20
    assert plan.gpu_share == pytest.approx(sum(plan.n_hot) / sum(sizes))
    # Counts where nothing fired give the same expected share measure.
    zero = si.plan_placement([np.zeros(n) for n in sizes], neuron_bytes=10, fixed_bytes=0, budget=0)
    assert zero.gpu_share == 0 and zero.n_hot == [0, 0, 0, 0]


def test_a_budget_for_everything_puts_every_neuron_on_the_gpu():
    counts = [np.array([5, 0, 3]), np.array([1, 1])]
    plan = si.plan_placement(counts, neuron_bytes=[4, 8], fixed_bytes=[10, 10], budget=10**6)
    assert plan.n_hot == [3, 2] and plan.gpu_share == 1.0
    assert plan.bytes_used == 20 + 3 * 4 + 2 * 8


def test_budget_equal_to_the_fixed_parts_holds_no_neurons_and_one_byte_less_fails():
    counts = [np.array([5, 2]), np.array([1, 9])]
    plan = si.plan_placement(counts, neuron_bytes=4, fixed_bytes=[100, 50], shared_bytes=7, budget=157)
    assert plan.n_hot == [0, 0] and plan.bytes_used == 157 and plan.gpu_share == 0
    with pytest.raises(ValueError, match="cannot hold the fixed GPU parts: 157 bytes"):
        si.plan_placement(counts, neuron_bytes=4, fixed_bytes=[100, 50], shared_bytes=7, budget=156)


@pytest.mark.parametrize("kwargs, message", [
    (dict(neuron_bytes=[4, 4, 4]), "disagree on the number of layers"),
    (dict(fixed_bytes=[1]), "disagree on the number of layers"),
    (dict(budget=100.5), "budget must be an integer"),
    (dict(budget=-1), "budget must be at least 0"),
    (dict(neuron_bytes=0), "neuron_bytes must be at least 1"),
    (dict(n_neurons=[2, 3]), "does not match the counts' sizes"),
    (dict(counts=[np.array([1, -2]), np.array([1, 2])]), "non-negative"),
    (dict(counts=[np.array([[1, 2]]), np.array([1, 2])]), "1-D"),
    (dict(counts=[]), "no layers"),
    (dict(counts=None), "n_neurons must say"),
])
def test_bad_arguments_are_value_errors(kwargs, message):
    args = dict(counts=[np.array([1, 2]), np.array([3, 4])], neuron_bytes=4, fixed_bytes=0, budget=100)
    args.update(kwargs)
    counts = args.pop("counts")
    with pytest.raises(ValueError, match=message):
        si.plan_placement(counts, **args)


@pytest.mark.parametrize("weight_type, row_bytes", [
    ("F32", 64 * 4), ("F16", 64 * 2), ("Q4_0", 2 * 18),
    ("BF16", 2 * 34), ("Q5_0", 2 * 34),  # the plugin does not read them: Q8_0 rows are uploaded
])
def test_model_costs_price_the_file_tensors(tmp_path, weight_type, row_bytes):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", n_layer=3, n_embd=64, n_ff=96,
                                   rank=[16, 32, 8], weight_type=weight_type, pred_type="F16")
    costs = si.model_costs(w.path, n_ctx=50)
    assert costs.n_neurons == (96, 96, 96)
    assert costs.neuron_bytes == (3 * row_bytes + 4,) * 3  # gate, up and down_t rows of n_embd, its id
    kv = 2 * 50 * (2 * 16) * 2  # K and V, n_ctx x kv_dim halves (2 kv heads of 16)
    for l, rank in enumerate([16, 32, 8]):
        p = f"blk.{l}."
        matrices = sum(w[p + n].size for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight",
                                                "attn_output.weight")) * row_bytes // 64
        norms = 2 * 64 * 4
        predictor = (rank * 64 + 96 * rank) * 2
        assert costs.fixed_bytes[l] == matrices + norms + predictor + kv
    rope_frequencies = (16 // 2) * 8  # a double per pair of a 16-wide head
    assert costs.shared_bytes == 64 * 4 + w["output.weight"].size * row_bytes // 64 + rope_frequencies
    plan = si.plan_placement(None, n_neurons=costs.n_neurons, neuron_bytes=costs.neuron_bytes,
                             fixed_bytes=costs.fixed_bytes, shared_bytes=costs.shared_bytes,
                             budget=sum(costs.fixed_bytes) + costs.shared_bytes + 90 * (3 * row_bytes + 4))
    assert plan.n_hot == [30, 30, 30]


def test_a_profile_plans_for_its_model(tmp_path):
    w = sparsegen.write_pwri_model(tmp_path / "m.gguf", n_layer=2, seed=5)
    profile = si.profile_model(w.path, "a few words of text to count " * 5, n_ctx=32)
    costs = si.model_costs(w.path, n_ctx=32)
    budget = sum(costs.fixed_bytes) + costs.shared_bytes + 64 * costs.neuron_bytes[0]
    plan = si.plan_placement(profile, neuron_bytes=costs.neuron_bytes, fixed_bytes=costs.fixed_bytes,
                             shared_bytes=costs.shared_bytes, budget=budget, model_path=w.path)
    assert sum(plan.n_hot) == 64
    # Half the neurons, chosen by frequency, serve more than half of the firings.
    assert plan.gpu_share > 64 / 256
    hot_min = min(profile.counts[l][h].min() for l, h in enumerate(plan.hot) if len(h))
    cold_max = max(np.delete(profile.counts[l], h).max() for l, h in enumerate(plan.hot))
    assert hot_min >= cold_max


# ---- plan_device: what a Model(device="cuda") places --------------------------------------

def device_costs(path, n_ctx=64):
    c = si.model_costs(path, n_ctx=n_ctx)
    shared = c.shared_bytes + c.batch_bytes
    whole = [f + n * b for f, n, b in zip(c.fixed_bytes, c.n_neurons, c.neuron_bytes)]
    return c, shared, whole


def test_plan_device_places_whole_layers_from_the_last(tmp_path):
    path = str(tmp_path / "d.gguf")
    ggufgen.write_llama_model(path, n_layer=4)
    c, shared, whole = device_costs(path)
    assert c.batch_bytes > 0 and c.n_neurons == (96,) * 4
    for n in range(1, 5):
        budget = shared + sum(whole[4 - n:])
        for b in (budget, budget + sum(whole) // 8 if n < 4 else budget):  # between: the last that fit
            plan = si.plan_device(path, n_ctx=64, sparse=False, budget=b)
            assert plan.n_gpu_layers == n and plan.hot is None and plan.planned_bytes == budget <= b
    plan = si.plan_device(path, n_ctx=64, sparse=False, budget=shared + sum(whole) + 10**9)
    assert plan.n_gpu_layers == 4 and plan.gpu_share == 1.0
    with pytest.raises(ValueError, match="cannot hold one layer and the output head"):
        si.plan_device(path, n_ctx=64, sparse=False, budget=shared + whole[3] - 1)
    assert si.plan_device(path, n_ctx=64, sparse=False, budget=10**9, n_gpu_layers=2).n_gpu_layers == 2
    assert si.plan_device(path, n_ctx=64, sparse=False, budget=0, n_gpu_layers=0).n_gpu_layers == 0
    with pytest.raises(ValueError, match="n_gpu_layers=3 needs"):
        si.plan_device(path, n_ctx=64, sparse=False, budget=shared + sum(whole[2:]), n_gpu_layers=3)


def test_plan_device_sparse_puts_dense_parts_first_then_hot_neurons(tmp_path):
    path = str(tmp_path / "p.gguf")
    sparsegen.write_pwri_model(path, n_layer=3, n_ff=128, weight_type="Q8_0")
    c, shared, _ = device_costs(path)
    dense_parts = shared + sum(c.fixed_bytes)
    plan = si.plan_device(path, n_ctx=64, sparse=True, budget=dense_parts + 90 * c.neuron_bytes[0])
    assert plan.n_gpu_layers == 3 and plan.n_hot == [30, 30, 30]  # equal shares without a profile
    assert all(np.array_equal(h, np.arange(30)) for h in plan.hot)
    assert plan.planned_bytes == dense_parts + 90 * c.neuron_bytes[0]
    # two layers' dense parts fit, not three: the first layer runs on the CPU, no hot neurons
    plan = si.plan_device(path, n_ctx=64, sparse=True, budget=shared + sum(c.fixed_bytes[1:]) + 10)
    assert plan.n_gpu_layers == 2 and plan.n_hot == [0, 0, 0] and plan.gpu_share == 0.0
    # a profile: the GPU layers take their most frequent neurons; the share counts every layer
    counts = [np.arange(128)[::-1] * (l + 1) for l in range(3)]
    profile = si.profile.NeuronProfile(tuple(np.asarray(x, np.int64) for x in counts), tokens=200)
    plan = si.plan_device(path, n_ctx=64, sparse=True, n_gpu_layers=2, profile=profile,
                          budget=shared + sum(c.fixed_bytes[1:]) + 20 * c.neuron_bytes[0])
    assert plan.n_hot[0] == 0 and sum(plan.n_hot) == 20
    assert all(np.array_equal(h, np.arange(len(h))) for h in plan.hot)  # the lowest ids fire most
    served = sum(counts[l][plan.hot[l]].sum() for l in range(3))
    assert plan.gpu_share == pytest.approx(served / sum(x.sum() for x in counts))
    with pytest.raises(si.ProfileError, match="layers"):
        si.plan_device(path, n_ctx=64, sparse=True, budget=10**9, profile=si.profile.NeuronProfile(
            (np.zeros(128, np.int64),)))


@pytest.mark.parametrize("kind", ["dense Q5_0", "dense Q6_K", "sparse Q4_0"])
def test_a_path_is_priced_as_the_loaded_model_uploads_without_loading_it(tmp_path, kind):
    # model_costs(path) binds the file as stored (no copies) and prices it as a loaded model
    # uploads it (Q5_0 and Q6_K as Q8_0 rows: the plugin does not read them).
    path = tmp_path / "m.gguf"
    if kind.startswith("dense"):
        ggufgen.write_llama_model(path, weight_type=kind.split()[1], n_embd=256, n_ff=512, seed=3)
    else:
        sparsegen.write_pwri_model(path, weight_type="Q4_0", seed=3)
    loaded = _core.Model(str(path), predictor_q8=False)
    assert si.model_costs(path, n_ctx=40) == si.model_costs(loaded, n_ctx=40)
    unprepared = _core.Model(str(path), prepare_weights=False)
    with pytest.raises(ValueError, match="prepare_weights=False"):
        _core.Session(unprepared, 16, 1)
