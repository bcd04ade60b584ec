// What each part of a model costs on a GPU, in the bytes DeviceModel uploads and GpuForward
// allocates: the facts placement (src/sparseinfer/placement.py) decides from, so that the
// policy there never mirrors the engine's types, names or buffer sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace si::gpu {

struct DeviceCosts {
    std::vector<int64_t> n_neurons;      // FFN neurons per layer
    std::vector<uint64_t> neuron_bytes;  // per layer: one neuron's gate, up and down rows
    std::vector<uint64_t> fixed_bytes;   // per layer: its other weights and a KV cache of n_ctx positions
    uint64_t shared_bytes = 0;           // the output norm and head
    uint64_t batch_bytes = 0;            // one session's activations for a full batch (kMaxBatch)
};

DeviceCosts device_costs(const Model& model, int64_t n_ctx);

}  // namespace si::gpu
