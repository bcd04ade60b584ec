// One session's share of the GPU: its own context (stream), the F16 KV cache of the GPU
// layers and the activations of a batch, over the weights a DeviceModel holds for every
// session of the model. Session (session/session.cpp) drives it layer by layer and keeps the
// bookkeeping (n_past, chunks, cancel, the CPU layers and the CPU's cold neurons).
//
// Per batch: the hidden state goes up once (upload_hidden) before the first GPU layer; each
// GPU layer runs attention and its FFN on the device; the output head turns the kept rows
// into logits, which come down. In a PowerInfer layer with cold neurons the predictor's
// scores and the normed FFN input come down to the CPU, which computes the cold active
// neurons while the GPU computes the hot ones; its partial sum goes back up and is added
// (add_to_hidden). Per token that moves n_ff + 2 n_embd floats per such layer, in one copy
// down and one up.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "gpu/device_model.h"

namespace si::gpu {

class GpuForward {
public:
    // A context on the weights' device, and the KV cache of their GPU layers for n_ctx
    // positions.
    GpuForward(std::shared_ptr<const DeviceModel> weights, int64_t n_ctx);

    // Device bytes of one session's activations for a batch of n tokens, the plugin's scratch
    // included (what placement budgets for one full batch).
    static uint64_t batch_bytes(const Model& model, int64_t n);
    // Device bytes of one GPU layer's KV cache (K and V in IEEE halves) for n_ctx positions.
    static uint64_t kv_cache_bytes(const ModelConfig& c, int64_t n_ctx);

    const DeviceModel& weights() const { return *weights_; }

    // Starts a batch of n tokens at positions n_past..n_past + n - 1.
    void begin_batch(int64_t n, int64_t n_past);
    // The hidden state of the batch (n rows of n_embd) goes up: the CPU's embeddings (times
    // MiniCPM's embedding scale) or the output of its layers.
    void upload_hidden(const float* x);

    // Attention block of GPU layer il: x += residual_scale * Wo attention(...), the K and V
    // rows stored (Session::cpu_attention's block). With parallel blocks the layer's input is
    // kept first, for the FFN.
    void attention(int64_t il);
    // FFN of GPU layer il over every neuron: dense files (Session::feed_forward's forms), or a
    // PowerInfer layer whose neurons are all on the GPU, computed densely (ReLU).
    void dense_ffn(int64_t il);
    // Sparse FFN of a PowerInfer GPU layer: the predictor, then the active hot neurons' sum
    // added to x, enqueued so that it runs while the host computes the cold part. When the
    // layer has cold neurons, first copies to the host the predictor's scores (n rows of
    // n_ff) and the normed input (n rows of n_embd); scores and xn are ignored otherwise.
    void sparse_ffn(int64_t il, float* scores, float* xn);
    // x += y for the batch (y: n rows of n_embd on the host): the CPU's part of an FFN.
    void add_to_hidden(const float* y);
    // Per layer, the active hot neurons of the last batch, summed over its tokens, added
    // into active (n_layer entries; CPU layers and dense layers get nothing here).
    void add_hot_active_counts(std::vector<int64_t>& active);

    // Output head for rows first_kept..n - 1 of the batch: their logits (divided by MiniCPM's
    // logit scale) to `logits`.
    void output(int64_t first_kept, float* logits);

private:
    // The activation buffers of a batch of n tokens, each once: what ensure_batch_capacity
    // allocates and batch_bytes adds up. buffer null: the plugin's own scratch, kept by its
    // context (counted, not allocated here).
    struct BatchBuffer {
        Buffer GpuForward::*buffer;
        size_t bytes;
        const char* what;
    };
    static std::vector<BatchBuffer> batch_buffers(const Model& model, int64_t n);
    void matmul(const DeviceModel::Matrix& w, const float* x, int64_t n, float* y);
    // The BlockSpec's norm (RMS, or LayerNorm with its bias) of `rows` rows of n_embd.
    void normalize(const float* x, const Buffer& weight, const Buffer& bias, int64_t rows, float* out);
    // rows[t] += bias for the batch's rows of `width` values; nothing for a bias the model lacks.
    void add_bias(float* rows, const Buffer& bias, int64_t width);
    // x += residual_scale * post_norm(xn): a block's output, in xn_, joins the residual stream.
    void add_residual(const Buffer& post_norm);
    // What the FFN reads: x, or with parallel blocks the layer's input.
    const float* ffn_input() const;
    // h (gate_) of the listed neurons of a PowerInfer layer's GPU rows (si_cuda_ffn_gate_up).
    void gate_up(const DeviceModel::Layer& l, const int32_t* rows, const int32_t* count, int64_t max_count,
                 const uint8_t* mask, const float* xn);
    void ensure_batch_capacity(int64_t n);
    struct Cache {
        Buffer k, v;
    };

    std::shared_ptr<const DeviceModel> weights_;
    Context ctx_;
    int64_t n_ctx_;
    std::vector<Cache> caches_;  // GPU layers only

    int64_t n_ = 0, n_past_ = 0;  // the current batch
    bool sparse_ran_ = false;     // the current batch ran sparse_ffn (counts to read)
    // Activations of a batch of up to batch_capacity_ tokens.
    int64_t batch_capacity_ = 0;
    Buffer x_, xn_, q_, k_, v_, attn_out_, gate_, up_, logits_, positions_;
    Buffer layer_input_;  // BlockSpec::parallel_blocks
    Buffer predictor_hidden_, rows_, rows_count_, mask_;
    Buffer active_counts_;  // int32 per layer: active (token, hot neuron) pairs of the batch
    std::vector<int32_t> host_positions_;
    std::vector<float> host_handoff_;  // a split layer's scores and normed input, as they come down
};

}  // namespace si::gpu
