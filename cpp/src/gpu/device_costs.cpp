#include "gpu/device_costs.h"

#include "gpu/device_model.h"
#include "gpu/gpu_forward.h"

namespace si::gpu {

namespace {

uint64_t floats(const std::vector<float>& v) { return static_cast<uint64_t>(v.size()) * sizeof(float); }

// A matrix as a model uploads it (Q8_0 rows for the types the plugin does not read).
uint64_t priced_bytes(const Matrix& m) { return DeviceModel::uploaded_bytes(m); }

}  // namespace

DeviceCosts device_costs(const Model& model, int64_t n_ctx) {
    const ModelConfig& c = model.config();
    DeviceCosts costs;
    const uint64_t kv = GpuForward::kv_cache_bytes(c, n_ctx);
    for (const LayerWeights& l : model.layers()) {
        // A dense layer's neuron j is row j of gate and up and column j of ffn_down.
        const Matrix& down = c.has_predictors() ? l.ffn_down_t : l.ffn_down;
        const uint64_t ffn = priced_bytes(l.ffn_gate) + priced_bytes(l.ffn_up) + priced_bytes(down);
        costs.n_neurons.push_back(c.n_ff);
        // A PowerInfer layer's GPU neurons also keep their ids there (DeviceModel::Layer::hot_ids),
        // and each neuron its up bias where the FFN has one.
        const uint64_t id_bytes = c.has_predictors() ? sizeof(int32_t) : 0;
        const uint64_t bias_bytes = l.ffn_up_b.empty() ? 0 : sizeof(float);
        costs.neuron_bytes.push_back(ffn / static_cast<uint64_t>(c.n_ff) + id_bytes + bias_bytes);
        uint64_t fixed = kv;
        for (const std::vector<float>* v : {&l.attn_norm, &l.attn_norm_b, &l.ffn_norm, &l.ffn_norm_b, &l.bq, &l.bk,
                                            &l.bv, &l.bo, &l.q_norm, &l.k_norm, &l.attn_post_norm, &l.ffn_post_norm,
                                            &l.ffn_down_b}) {
            fixed += floats(*v);
        }
        for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.fc1, &l.fc2}) fixed += priced_bytes(*m);
        costs.fixed_bytes.push_back(fixed);
    }
    // The output head, and RoPE's frequencies (doubles; a second set for sliding-window layers).
    const uint64_t rope_tables = c.sliding_layers.empty() ? 1 : 2;
    costs.shared_bytes = floats(model.output_norm()) + floats(model.output_norm_bias()) + priced_bytes(model.output()) +
                         rope_tables * static_cast<uint64_t>(c.rope_dim / 2) * sizeof(double);
    costs.batch_bytes = GpuForward::batch_bytes(model, kMaxBatch);
    return costs;
}

}  // namespace si::gpu
