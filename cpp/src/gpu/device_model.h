// The weights a GPU holds for one model and one placement, uploaded once and shared by every
// session of that model (each session adds its own KV cache and activations: gpu_forward.h).
//
// A placement says which layers run on the GPU and, for PowerInfer files, which FFN neurons
// of each GPU layer are "hot" (their gate, up and ffn_down_t rows uploaded) while the
// others stay "cold" on the CPU (PowerInfer's hot/cold split; DESIGN.md, CUDA):
// - GPU layers are the last n_gpu_layers ones (llama.cpp's convention), so the hidden state
//   crosses to the GPU once per batch and the output head, uploaded whenever any layer is
//   on the GPU, reads it there.
// - A GPU layer uploads its norms, attention and (PowerInfer files) predictor. Its FFN:
//   dense files upload all of it; PowerInfer files upload the rows of the hot neurons,
//   gathered into matrices of n_hot rows in ascending id order (every neuron when the
//   placement lists none).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpu/plugin.h"
#include "model/model.h"

namespace si::gpu {

struct Placement {
    int64_t n_gpu_layers = -1;  // -1: every layer
    // Per layer (n_layer entries, or none for "every neuron hot"): the hot neuron ids of a
    // PowerInfer file, ascending and distinct. Entries of CPU layers must be empty.
    std::vector<std::vector<int32_t>> hot_neurons;
    bool all_hot() const { return hot_neurons.empty(); }
};

class DeviceModel {
public:
    struct Matrix {
        int type = 0;  // SI_CUDA_TYPE_*
        int64_t rows = 0, cols = 0;
        Buffer data;
    };
    // A vector the model lacks (a bias or norm its BlockSpec has not) is an empty Buffer.
    struct Layer {
        Buffer attn_norm, attn_norm_b, ffn_norm, ffn_norm_b;  // the biases: LayerNorm's
        Matrix wq, wk, wv, wo;
        Buffer bq, bk, bv, bo;  // BlockSpec::qkv_bias, output_bias
        Buffer q_norm, k_norm;  // BlockSpec::qk_norm: head_dim each
        Buffer attn_post_norm, ffn_post_norm;  // BlockSpec::post_norms
        Matrix fc1, fc2;  // PowerInfer predictor
        // Dense files: the whole FFN (ffn_down of n_embd rows; no ffn_gate without a gate).
        // PowerInfer files: the hot neurons' rows (ffn_down_t layout), row k holding neuron
        // hot_ids[k]; ffn_gate holds the rows of the projection the ReLU reads (the gate, or up
        // in a gate-less FFN, which then has no ffn_up here).
        Matrix ffn_gate, ffn_up, ffn_down;
        // BlockSpec::ffn_bias: up's bias (of a PowerInfer file: the hot neurons', in hot order)
        // and the down projection's.
        Buffer ffn_up_b, ffn_down_b;
        int64_t n_hot = 0;
        Buffer hot_ids;               // device int32[n_hot] (PowerInfer files)
        std::vector<uint8_t> is_hot;  // host, n_ff flags (PowerInfer files)
    };

    // Opens a context on `device` of the plugin at `plugin_path` and uploads what the
    // placement puts on the GPU. Throws ArgumentError for a placement that does not fit the
    // model, UnsupportedError for a weight type the kernels do not read (naming the tensor)
    // or, before loading the plugin, for blocks the GPU layers lack (device_model.cpp),
    // OutOfMemoryError when the device is full.
    DeviceModel(std::shared_ptr<const Model> model, const std::string& plugin_path, int device,
                Placement placement);

    const Model& model() const { return *model_; }
    const std::shared_ptr<const Plugin>& plugin() const { return plugin_; }
    int device() const { return ctx_.device(); }
    int64_t first_gpu_layer() const { return first_gpu_layer_; }
    bool on_gpu(int64_t layer) const { return layer >= first_gpu_layer_; }
    bool any_on_gpu() const { return first_gpu_layer_ < model_->config().n_layer; }
    const Layer& layer(int64_t il) const { return layers_[static_cast<size_t>(il - first_gpu_layer_)]; }
    const Buffer& output_norm() const { return output_norm_; }
    const Buffer& output_norm_b() const { return output_norm_b_; }  // LayerNorm's
    // RoPE's inverse frequencies (rope_dim / 2 doubles; the CPU's, model/rope.h) and the
    // magnitude of cos and sin; the sliding-window layers' own (unscaled, magnitude 1) where the
    // model has them.
    const Buffer& rope_inverse_frequencies() const { return rope_inverse_frequencies_; }
    double rope_magnitude() const { return rope_magnitude_; }
    const Buffer& local_rope_inverse_frequencies() const { return local_rope_inverse_frequencies_; }
    const Matrix& output() const { return output_; }
    // Device bytes the weights take (the sessions' KV caches and activations come on top).
    uint64_t weight_bytes() const { return weight_bytes_; }
    // Device bytes a host matrix takes once uploaded: its rows packed, in its type, or as Q8_0
    // rows for a type the plugin does not read (upload_typed).
    static uint64_t uploaded_bytes(const si::Matrix& m);
    // Hot neurons per layer (n_ff for dense GPU layers, 0 for CPU layers).
    std::vector<int64_t> hot_counts() const;

private:
    Matrix upload_matrix(const si::Matrix& m);
    // The rows `ids` of m, gathered in order into one device matrix.
    Matrix upload_rows(const si::Matrix& m, const std::vector<int32_t>& ids);
    // `rows` rows of m's type and width from host memory at `data`.
    Matrix upload_typed(const si::Matrix& m, int64_t rows, const void* data);
    Buffer upload_bytes(const void* data, size_t bytes, const char* what);
    Buffer upload_vector(const std::vector<float>& v, const char* what);

    std::shared_ptr<const Model> model_;
    std::shared_ptr<const Plugin> plugin_;
    Context ctx_;  // owns the weight buffers; sessions compute on contexts of their own
    int64_t first_gpu_layer_ = 0;
    std::vector<Layer> layers_;  // GPU layers only
    Buffer output_norm_, output_norm_b_;
    Matrix output_;
    Buffer rope_inverse_frequencies_, local_rope_inverse_frequencies_;
    double rope_magnitude_ = 1.0;
    uint64_t weight_bytes_ = 0;
};

}  // namespace si::gpu
