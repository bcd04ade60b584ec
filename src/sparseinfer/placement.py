"""The hot/cold placement plan: which FFN neurons of each layer live on the GPU.

PowerInfer keeps the neurons that fire most often ("hot") on the GPU under a VRAM budget
and computes the others ("cold") on the CPU (DESIGN.md, CUDA). Given per-layer firing
counts (sparseinfer.profile), what one neuron costs in VRAM in each layer (its gate row,
up row and down_t row in that layer's weight types), the fixed GPU cost of each layer
(attention weights, norms, predictor, its share of the KV cache) and a budget in bytes,
:func:`plan_placement` picks per layer the sorted ids of the hot neurons.

The rule: the fixed parts must fit (ValueError otherwise); then neurons are taken
greedily in order of firing count per byte, across all layers, each one that still fits.
A neuron's count is the number of profiled tokens for which it fired, so the plan
maximises the expected number of fired neurons that the GPU serves.

Why greedy is (close to) what PowerInfer solves: PowerInfer's solver (powerinfer-py,
solver.py; FACTS.md, GPU placement side file) is an integer program over the per-layer
count-sorted neurons in groups of 256, maximising the summed counts on the GPU subject
to a total neuron capacity derived from the budget with one cost per neuron (its extra
per-layer communication constraint is off by default). With one cost per neuron that is
a knapsack of equal weights, for which taking the largest counts first is optimal; the
greedy here is that, per neuron instead of per 256. When layers differ in bytes per
neuron (mixed weight types) it is the density greedy of a 0/1 knapsack: optimal for the
fractional relaxation, so it falls short of the integer optimum by less than one
neuron's count (a few profiled tokens' worth), and skipping to smaller neurons that still
fit only adds to it. Within a layer all neurons cost the same, so each layer's hot set
is always a prefix of its neurons sorted by count.

Without a profile every neuron is taken as equally likely to fire, and the budget is
shared equally: each layer gets the same fraction of its neurons (within one neuron),
lowest ids first.

:func:`place_on_device` carries a plan out for a Model: the GPU's free memory, the profile
next to the file, the plan, the upload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from . import _core
from .profile import NeuronProfile, find_profile

IntOrList = Union[int, Sequence[int]]

@dataclass(frozen=True)
class PlacementPlan:
    """hot[l]: sorted int32 ids of layer l's GPU neurons."""

    hot: tuple[np.ndarray, ...]
    n_neurons: tuple[int, ...]
    budget: int
    fixed_bytes: int           # per-layer fixed parts plus the shared ones
    neuron_bytes_used: int     # the hot neurons' rows
    gpu_share: float           # expected fraction of fired neurons served by the GPU
    layer_gpu_shares: tuple[float, ...]

    @property
    def bytes_used(self) -> int:
        return self.fixed_bytes + self.neuron_bytes_used

    @property
    def n_hot(self) -> list[int]:
        return [len(h) for h in self.hot]

    def gpu_masks(self) -> list[np.ndarray]:
        """Per layer, a bool array over the neurons: True on the GPU (PowerInfer's gpu_idx)."""
        masks = []
        for hot, n in zip(self.hot, self.n_neurons):
            m = np.zeros(n, dtype=bool)
            m[hot] = True
            masks.append(m)
        return masks


def plan_placement(counts: Union[NeuronProfile, Sequence[np.ndarray], None], *,
                   neuron_bytes: IntOrList, fixed_bytes: IntOrList, budget: int,
                   shared_bytes: int = 0, n_neurons: Optional[IntOrList] = None,
                   n_layer: Optional[int] = None,
                   model_path: Optional[Union[str, "os.PathLike[str]"]] = None) -> PlacementPlan:
    """Chooses the hot neurons of every layer (the rule is in the module docstring).

    counts: a NeuronProfile, per-layer 1-D arrays of firing counts (layers may differ in
    size), or None for no profile (an equal share per layer; then n_neurons says how many
    neurons each layer has).
    neuron_bytes: VRAM bytes of one neuron (gate + up + down_t rows), one int for every
    layer or one per layer. fixed_bytes: the fixed GPU cost of each layer (one int or one
    per layer). shared_bytes: fixed parts outside the layers (output head).
    budget: VRAM bytes. model_path: with a NeuronProfile, check that it was made for this
    file (StaleProfileError, a ValueError, if not).
    ValueError for mismatched shapes, negative or non-integer sizes, or a budget that
    cannot hold the fixed parts.
    """
    if isinstance(counts, NeuronProfile):
        if model_path is not None:
            counts.check_model(model_path)
        counts = list(counts.counts)
    layer_counts: Optional[list[np.ndarray]] = None
    if counts is not None:
        layer_counts = [_counts_array(c, i) for i, c in enumerate(counts)]
        if not layer_counts:
            raise ValueError("counts has no layers")
    elif n_neurons is None:
        raise ValueError("without counts, n_neurons must say how many neurons each layer has")
    n_layer = _layer_count(layer_counts, n_neurons, neuron_bytes, fixed_bytes, explicit=n_layer)
    if layer_counts is not None:
        sizes = [len(c) for c in layer_counts]
        if n_neurons is not None and _int_list(n_neurons, n_layer, "n_neurons", 1) != sizes:
            raise ValueError(f"n_neurons {n_neurons} does not match the counts' sizes {sizes}")
    else:
        sizes = _int_list(n_neurons, n_layer, "n_neurons", 1)
    per_neuron = _int_list(neuron_bytes, n_layer, "neuron_bytes", 1)
    per_layer_fixed = _int_list(fixed_bytes, n_layer, "fixed_bytes", 0)
    shared = _int_value(shared_bytes, "shared_bytes", 0)
    budget = _int_value(budget, "budget", 0)

    fixed_total = sum(per_layer_fixed) + shared
    if fixed_total > budget:
        raise ValueError(
            f"a VRAM budget of {budget} bytes ({budget / 2**20:.1f} MiB) cannot hold the fixed "
            f"GPU parts: {fixed_total} bytes ({fixed_total / 2**20:.1f} MiB: attention, norms, "
            f"predictors and KV cache of {n_layer} layers, plus {shared} shared); give at least "
            f"that much, or run on the CPU")

    # One entry per neuron of every layer, in the order the greedy takes them.
    layer_of = np.concatenate([np.full(n, l, dtype=np.int64) for l, n in enumerate(sizes)])
    cost = np.concatenate([np.full(n, per_neuron[l], dtype=np.int64) for l, n in enumerate(sizes)])
    if layer_counts is not None:
        # Within a layer: by count, most first, lower id first among equals.
        ids = np.concatenate([np.argsort(-c, kind="stable") for c in layer_counts])
        value = np.concatenate([c[np.argsort(-c, kind="stable")].astype(np.float64) for c in layer_counts])
        density = value / cost
        order = np.lexsort((ids, layer_of, -density))
    else:
        # Equal share: the j-th neuron of a layer of n comes at (j + 1) / n.
        ids = np.concatenate([np.arange(n, dtype=np.int64) for n in sizes])
        rank = (ids + 1) / np.array(sizes, dtype=np.float64)[layer_of]
        order = np.lexsort((layer_of, rank))

    taken = np.zeros(len(order), dtype=bool)
    remaining = budget - fixed_total
    queue = order
    while queue.size:
        queue = queue[cost[queue] <= remaining]  # drops whole layers: their neurons cost the same
        if not queue.size:
            break
        spent = np.cumsum(cost[queue])
        k = int(np.searchsorted(spent, remaining, side="right"))
        taken[queue[:k]] = True
        if k:
            remaining -= int(spent[k - 1])
        queue = queue[k:]

    hot = []
    for l in range(n_layer):
        in_layer = taken & (layer_of == l)
        hot.append(np.sort(ids[in_layer]).astype(np.int32))
    neuron_bytes_used = sum(len(h) * per_neuron[l] for l, h in enumerate(hot))
    assert fixed_total + neuron_bytes_used <= budget

    layer_shares, fired_total, fired_gpu = [], 0.0, 0.0
    for l, h in enumerate(hot):
        if layer_counts is not None and layer_counts[l].sum() > 0:
            total, on_gpu = float(layer_counts[l].sum()), float(layer_counts[l][h].sum())
        else:  # nothing known: every neuron equally likely
            total, on_gpu = float(sizes[l]), float(len(h))
        layer_shares.append(on_gpu / total)
        if layer_counts is not None:
            fired_total += float(layer_counts[l].sum())
            fired_gpu += float(layer_counts[l][h].sum())
    if fired_total > 0:
        share = fired_gpu / fired_total
    else:
        share = sum(len(h) for h in hot) / sum(sizes)
    return PlacementPlan(hot=tuple(hot), n_neurons=tuple(sizes), budget=budget,
                         fixed_bytes=fixed_total, neuron_bytes_used=neuron_bytes_used,
                         gpu_share=share, layer_gpu_shares=tuple(layer_shares))


@dataclass(frozen=True)
class ModelCosts:
    """GPU bytes of a model's parts, as the engine uploads and allocates them."""

    n_neurons: tuple[int, ...]     # FFN neurons per layer
    neuron_bytes: tuple[int, ...]  # per layer: one neuron's ffn_gate + ffn_up + ffn_down(_t) rows
    fixed_bytes: tuple[int, ...]   # per layer: its other weights + its KV cache
    shared_bytes: int              # output norm and output head
    batch_bytes: int = 0           # a session's activations on the GPU for a full batch


def model_costs(model: Union[str, "os.PathLike[str]", "_core.Model"], *, n_ctx: int) -> ModelCosts:
    """What each part of a model takes on a GPU, as the engine reports it (the types it
    uploads, a KV cache of n_ctx positions in halves, the activation buffers of a batch).

    model: a GGUF path (memory-mapped and read as stored, with no copies made: cheap for any
    size; its predictors priced as stored) or a loaded native model (sparseinfer._core.Model:
    what that model would upload, its predictor_q8 choice included). A PowerInfer file's
    neurons are rows of ffn_gate, ffn_up and ffn_down_t; a dense file's FFN is priced the same
    way (its ffn_down's columns), though it only moves to the GPU whole."""
    n_ctx = _int_value(n_ctx, "n_ctx", 1)
    native = (model if isinstance(model, _core.Model)
              else _core.Model(os.fspath(model), predictor_q8=False, prepare_weights=False))
    c = _core.device_costs(native, n_ctx)
    return ModelCosts(tuple(c["n_neurons"]), tuple(c["neuron_bytes"]), tuple(c["fixed_bytes"]),
                      c["shared_bytes"], c["batch_bytes"])


@dataclass(frozen=True)
class DevicePlan:
    """What a Model puts on its GPU: the last n_gpu_layers layers (attention, norms,
    predictors, KV cache), the output head, and in each GPU layer either its whole FFN
    (hot is None) or, for a sparse PowerInfer model, the hot neurons hot[l] (empty for the
    CPU layers). planned_bytes counts weights, the Model's own KV cache and one batch of
    activations; gpu_share is the expected fraction of fired FFN neurons the GPU serves."""

    n_gpu_layers: int
    hot: Optional[tuple[np.ndarray, ...]]
    budget: int
    planned_bytes: int
    gpu_share: float

    @property
    def n_hot(self) -> Optional[list[int]]:
        return None if self.hot is None else [len(h) for h in self.hot]


def plan_device(model: Union[str, "os.PathLike[str]", "_core.Model"], *, n_ctx: int, sparse: bool,
                budget: int, n_gpu_layers: int = -1,
                profile: Optional[NeuronProfile] = None) -> DevicePlan:
    """The placement of a model on a GPU with `budget` bytes.

    Layers go whole, from the last (llama.cpp's convention; the hidden state crosses to the
    GPU once per batch and the output head, which always goes, reads it there): with
    n_gpu_layers = -1 as many as fit, else that many (ValueError when they do not fit). A
    dense model (or a PowerInfer model run densely) places each layer's whole FFN. A sparse
    PowerInfer model places each GPU layer's dense parts (attention, norms, predictor: read
    for every token) first, then spends what is left on the hottest FFN neurons of those
    layers (plan_placement, with the profile's counts, or equal shares without one).
    """
    costs = model_costs(model, n_ctx=n_ctx)
    n_layer = len(costs.fixed_bytes)
    budget = _int_value(budget, "budget", 0)
    n_gpu_layers = _int_value(n_gpu_layers, "n_gpu_layers", -1)
    shared = costs.shared_bytes + costs.batch_bytes
    whole = [f + n * b for f, n, b in zip(costs.fixed_bytes, costs.n_neurons, costs.neuron_bytes)]
    layer_bytes = list(costs.fixed_bytes) if sparse else whole

    def cost_of_last(k: int) -> int:
        return shared + sum(layer_bytes[n_layer - k:]) if k else 0

    if n_gpu_layers == -1:
        n_gpu = 0
        while n_gpu < n_layer and cost_of_last(n_gpu + 1) <= budget:
            n_gpu += 1
        if n_gpu == 0:
            raise ValueError(
                f"a VRAM budget of {_mib(budget)} cannot hold one layer and the output head "
                f"({_mib(cost_of_last(1))} with the KV cache for n_ctx={n_ctx} and the activations "
                f"of a full batch); give more, lower n_ctx, or run on the CPU")
    else:
        n_gpu = min(n_gpu_layers, n_layer)
        if cost_of_last(n_gpu) > budget:
            raise ValueError(
                f"n_gpu_layers={n_gpu_layers} needs {_mib(cost_of_last(n_gpu))} of GPU memory "
                f"(with the KV cache for n_ctx={n_ctx}) and the VRAM budget is {_mib(budget)}; "
                f"use fewer layers or -1 (as many as fit)")
    first = n_layer - n_gpu
    if not sparse or n_gpu == 0:
        return DevicePlan(n_gpu, None, budget, cost_of_last(n_gpu), 1.0 if n_gpu == n_layer else 0.0)

    gpu_layers = range(first, n_layer)
    counts = None
    if profile is not None:
        profile.check_shape(n_layer, costs.n_neurons)
        counts = [profile.counts[l] for l in gpu_layers]
    plan = plan_placement(counts, neuron_bytes=[costs.neuron_bytes[l] for l in gpu_layers],
                          fixed_bytes=[costs.fixed_bytes[l] for l in gpu_layers], shared_bytes=shared,
                          budget=budget, n_neurons=[costs.n_neurons[l] for l in gpu_layers])
    hot = tuple([np.zeros(0, dtype=np.int32)] * first) + plan.hot
    # The share over every layer: CPU layers serve none of theirs.
    if profile is not None and sum(float(c.sum()) for c in profile.counts) > 0:
        total = sum(float(c.sum()) for c in profile.counts)
        share = sum(float(profile.counts[l][hot[l]].sum()) for l in gpu_layers) / total
    else:
        share = sum(len(h) for h in hot) / sum(costs.n_neurons)
    return DevicePlan(n_gpu, hot, budget, plan.bytes_used, share)


# GPU memory left free when no vram_budget is given: CUDA's own workspaces, other processes.
VRAM_RESERVE = 256 * 2**20


def place_on_device(model: "_core.Model", *, path: str, cuda_plugin: str, cuda_device: int, n_ctx: int,
                    sparse: bool, vram_budget: Optional[int],
                    n_gpu_layers: int) -> tuple[DevicePlan, "_core.DeviceModel"]:
    """Plans `model` (loaded from `path`) on GPU cuda_device under vram_budget (None: what the
    GPU has free, less VRAM_RESERVE), with the firing profile found next to the file for a
    sparse model, and uploads it through the plugin at cuda_plugin. MemoryError, before
    anything is uploaded, when the plan needs more than the GPU has free."""
    from ._cuda import plugin  # the plugin is loaded only for a GPU

    with plugin().context(cuda_device) as ctx:
        free, _ = ctx.memory_info()
    budget = max(0, free - VRAM_RESERVE) if vram_budget is None else vram_budget
    profile = find_profile(path) if sparse else None
    plan = plan_device(model, n_ctx=n_ctx, sparse=sparse, budget=budget, n_gpu_layers=n_gpu_layers,
                       profile=profile)
    if plan.planned_bytes > free:
        raise MemoryError(
            f"{path}: the GPU placement needs {_mib(plan.planned_bytes)} (vram_budget {_mib(budget)}, "
            f"{plan.n_gpu_layers} layers, KV cache for n_ctx={n_ctx}) and cuda:{cuda_device} has "
            f"{_mib(free)} free; lower vram_budget, n_gpu_layers or n_ctx")
    hot = None if plan.hot is None else list(plan.hot)
    device_model = _core.DeviceModel(model, cuda_plugin, cuda_device, n_gpu_layers=plan.n_gpu_layers,
                                     hot_neurons=hot)
    return plan, device_model


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---- argument checks ------------------------------------------------------------------------

def _counts_array(c, layer: int) -> np.ndarray:
    a = np.asarray(c)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf":
        raise ValueError(f"counts of layer {layer} must be a non-empty 1-D numeric array, got "
                         f"{a.dtype} {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or a.min() < 0:
        raise ValueError(f"counts of layer {layer} must be finite and non-negative")
    return a


def _layer_count(counts, *sized, explicit: Optional[int] = None) -> int:
    lengths = set()
    if counts is not None:
        lengths.add(len(counts))
    for value in sized:
        if value is not None and not _is_int(value):
            lengths.add(len(value))
    if explicit is not None:
        lengths.add(int(explicit))
    if len(lengths) > 1:
        raise ValueError(f"the per-layer arguments disagree on the number of layers: {sorted(lengths)}")
    if not lengths:
        raise ValueError("the number of layers is unknown: pass counts, per-layer sizes or n_layer")
    return lengths.pop()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int_value(value, name: str, minimum: int) -> int:
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer number of bytes, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _int_list(value, n_layer: int, name: str, minimum: int) -> list[int]:
    if _is_int(value):
        return [_int_value(value, name, minimum)] * n_layer
    values = list(value)
    if len(values) != n_layer:
        raise ValueError(f"{name} has {len(values)} entries for {n_layer} layers")
    return [_int_value(v, f"{name}[{i}]", minimum) for i, v in enumerate(values)]
