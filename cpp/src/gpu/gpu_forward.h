// The llama-family forward pass on a GPU through the CUDA plugin (ABI 2): the weights of
// every layer, the F16 KV cache and the activations of a batch live on the device; only
// the embeddings go up and the kept logits come down. Used by Session when it is asked for
// a device (model/session.h); Session keeps the bookkeeping (n_past, chunks, cancel).
//
// Everything runs densely: a PowerInfer file computes every neuron (relu(gate) * up, relu
// on up too for bamboo) and its down projection over all rows of ffn_down_t.
//
// Where the hybrid split goes next: upload only the hot neurons' gate/up/down_t rows
// (chosen under a VRAM budget), run si_cuda_ffn_predict / ffn_select over them here, and
// let the CPU add the cold neurons' part to the same residual before the next layer.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gpu/plugin.h"
#include "model/model.h"

namespace si::gpu {

class GpuForward {
public:
    // Opens a context on `device` of the plugin at `plugin_path`, uploads the weights (types
    // F32, F16, Q8_0, Q4_0, Q4_1; UnsupportedError naming a tensor of another type) and
    // allocates the KV cache for n_ctx positions.
    GpuForward(const Model& model, const std::string& plugin_path, int device, int64_t n_ctx);

    // One batch of n tokens at positions n_past..n_past + n - 1: x holds their embeddings
    // (n rows of n_embd). Writes the logits of rows first_kept..n - 1 to `logits`.
    // check_cancel runs before every layer (it throws to stop).
    void eval_batch(const float* x, int64_t n, int64_t n_past, int64_t first_kept, float* logits,
                    const std::function<void()>& check_cancel);

private:
    struct DeviceMatrix {
        int type = 0;  // SI_CUDA_TYPE_*
        int64_t rows = 0, cols = 0;
        Buffer data;
    };
    struct DeviceLayer {
        Buffer attn_norm, ffn_norm;
        DeviceMatrix wq, wk, wv, wo;
        DeviceMatrix ffn_gate, ffn_up;
        DeviceMatrix ffn_down;  // dense files; PowerInfer files: ffn_down_t
        Buffer k_cache, v_cache;
    };
    DeviceMatrix upload_matrix(const Matrix& m, const std::string& name);
    Buffer upload_floats(const std::vector<float>& v, const char* what);
    void ensure_batch_capacity(int64_t n);
    void matmul(const DeviceMatrix& w, const float* x, int64_t n, float* y);

    const Model& model_;
    Context ctx_;
    int64_t n_ctx_;
    std::vector<DeviceLayer> layers_;
    Buffer output_norm_;
    DeviceMatrix output_;

    // Activations of a batch of up to batch_capacity_ tokens.
    int64_t batch_capacity_ = 0;
    Buffer x_, xn_, q_, k_, v_, attn_out_, gate_, up_, logits_, positions_;
    std::vector<int32_t> host_positions_;
};

}  // namespace si::gpu
