// One sequence being evaluated: its KV cache, scratch buffers and thread pool. The forward
// pass of the llama family lives here, top to bottom, over buffers allocated once.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "model/model.h"

namespace si {

namespace gpu {
class DeviceModel;
class GpuForward;
}  // namespace gpu

class Session {
public:
    // Allocates the KV cache for n_ctx positions (checked against sane bounds first).
    // sparse: compute only the FFN neurons the predictor marks active (PowerInfer files
    // only; UnsupportedError otherwise). With `device` (the model's weights on a GPU, shared
    // by its sessions) the GPU layers run there with their KV cache, and in a sparse
    // session the CPU computes the active cold neurons of each GPU layer (gpu/device_model.h);
    // a dense PowerInfer session needs every neuron of the GPU layers on the GPU.
    Session(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, bool sparse,
            std::shared_ptr<const gpu::DeviceModel> device = nullptr);
    ~Session();

    // The most tokens one forward batch holds: a longer eval goes in batches of this many,
    // which bounds the scratch (and a GPU session's activations) while each weight row still
    // serves many tokens.
    static constexpr int64_t kMaxBatch = 256;

    const Model& model() const { return *model_; }
    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }

    // Appends tokens to the sequence. all_logits keeps logits for every token, else only
    // the last. Throws ContextOverflowError / ArgumentError before touching any state, and
    // CancelledError (the sequence as it was before the call) once a cancel is requested.
    void eval(const std::vector<int32_t>& tokens, bool all_logits);

    // Safe from any thread, while eval runs or not: eval stops at its next layer boundary
    // and every eval fails until clear_cancel().
    void request_cancel() { cancel_requested_.store(true, std::memory_order_relaxed); }
    void clear_cancel() { cancel_requested_.store(false, std::memory_order_relaxed); }
    bool cancel_requested() const { return cancel_requested_.load(std::memory_order_relaxed); }
    // Logits of the last eval: rows() x n_vocab.
    const std::vector<float>& logits() const { return logits_; }
    int64_t logit_rows() const { return logit_rows_; }

    bool sparse() const { return sparse_; }
    bool on_gpu() const { return gpu_ != nullptr; }
    // Per layer, the fraction of FFN neurons computed for the tokens evaluated since the
    // last reset_stats() (1 for every layer when not sparse).
    std::vector<double> active_fractions() const;
    void reset_stats();

    void reset() { n_past_ = 0; logit_rows_ = 0; }
    void truncate(int64_t n_past);  // forget positions >= n_past

private:
    void ensure_batch_capacity(int64_t n_tokens);
    void forward(const std::vector<int32_t>& tokens, bool all_logits);
    void throw_if_cancelled() const;
    // y[t] = W x[t] for t < n for each (W, y), all in one job for the thread pool; the
    // matrices share the input length.
    struct MatmulOutput {
        const Matrix* w;
        float* y;
    };
    static constexpr int kMaxMatmulOutputs = 3;
    void matmul(std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n);
    // The query heads that one attention job serves (the four-row product takes four).
    static constexpr int64_t kAttentionHeads = 4;
    void attention(int layer, int64_t n_tokens);
    // x += FFN(x) for the batch: dense SiLU, dense ReLU, or the sparse PowerInfer path.
    void feed_forward(int layer, int64_t n_tokens);
    void cpu_attention(int layer, int64_t n_tokens);  // the attention block of a CPU layer
    // The FFN of a GPU layer, with the CPU's share of a sparse one.
    void gpu_feed_forward(int layer, int64_t n_tokens);
    // The active cold neurons of a GPU layer (is_hot: n_ff flags) from the scores and xn the
    // GPU left in up_ and xn_; their sum to xn_. False when none is active.
    bool cold_feed_forward(int layer, int64_t n_tokens, const uint8_t* is_hot);
    void predict_active_neurons(const LayerWeights& l, int64_t n_tokens);
    // active_[t] = the neurons j with scores[t][j] >= threshold, skipping those with skip[j].
    void select_active_neurons(const float* scores, int64_t n_tokens, const uint8_t* skip);

    // x in the dot format of w, one row of `stride` bytes per token, in scratch slot `slot`
    // (converted only when `convert`; a slot already holding that format is reused).
    struct PreparedInput {
        uint8_t* data;
        size_t stride;
    };
    PreparedInput prepare_input(const Matrix& w, const float* x, int64_t n, int slot, bool convert);

    // A PowerInfer FFN's sum over neurons is cut into this many fixed ranges of neuron ids,
    // summed one by one and then added in order (feed_forward.cpp), so that the threads can
    // share it out without the thread count or the batch changing a token's result.
    static constexpr int64_t kNeuronRanges = 16;
    static int64_t range_start(int64_t r, int64_t n_ff) { return r * n_ff / kNeuronRanges; }
    struct NeuronRows;
    // The dense mode of a PowerInfer file: lists in active_ the neurons each token needs, and
    // returns their gates for neuron_sum. Where the layer's gate matrix has an interleaved copy
    // (Model::dense_gate), every gate comes from one matrix product into up_ and the list is
    // the neurons with a positive one; otherwise every neuron is listed, and null returned.
    const float* list_dense_neurons(int layer, int64_t n_tokens);
    // A PowerInfer FFN from xn_ over each token's listed neurons (active_): their h into gate_
    // (zero elsewhere) and their sum xn_[t] = sum_j h[t][j] down_t[j]. known_gates: the gate
    // of every neuron, n_ff per token (list_dense_neurons), or null to compute the listed ones'.
    void neuron_sum(const LayerWeights& l, int64_t n_tokens, const float* known_gates);
    // The same for one token: the gate (unless known), up and down rows of each range in one pass.
    void neuron_sum_token(const LayerWeights& l, const NeuronRows& neurons, const float* known_gates,
                          const void* gate_act, const void* up_act);
    // A batch: h into gate_, then the down projection. Its threads take chunks of this many
    // neuron ids in turn.
    static constexpr int64_t kActivationChunk = 4 * kMaxGatherRows;
    void neuron_activations(const NeuronRows& neurons, int64_t n_tokens, const float* known_gates,
                            const PreparedInput& gate_in, const PreparedInput& up_in);
    void down_projection(const Matrix& down_t, int64_t n_tokens);

    std::shared_ptr<const Model> model_;
    const KernelTable& kernels_;
    ThreadPool pool_;
    int64_t n_ctx_;
    int64_t n_past_ = 0;

    // KV cache of the CPU layers, in IEEE halves (half the memory and bandwidth of floats, as
    // llama.cpp's default), per layer and KV head: the keys in transposed blocks of kKeyBlock
    // positions (kernels.h, KeyScoresFn), the values as rows of head_dim; cache_positions_ is
    // n_ctx rounded up to whole blocks.
    ZeroedBuffer k_cache_, v_cache_;  // memory held only as far as the context has grown
    int64_t cache_positions_ = 0;
    uint16_t* cached_keys(int64_t layer, int64_t kv_head) {
        return reinterpret_cast<uint16_t*>(k_cache_.data()) + cache_offset(layer, kv_head);
    }
    uint16_t* cached_values(int64_t layer, int64_t kv_head) {
        return reinterpret_cast<uint16_t*>(v_cache_.data()) + cache_offset(layer, kv_head);
    }
    size_t cache_offset(int64_t layer, int64_t kv_head) const {
        const ModelConfig& c = model_->config();
        return static_cast<size_t>((layer * c.n_head_kv + kv_head) * cache_positions_ * c.head_dim);
    }

    // Scratch for a batch of up to batch_capacity_ tokens.
    int64_t batch_capacity_ = 0;
    std::vector<float> x_, xn_, q_, k_, v_, attn_out_, gate_, up_, scores_;
    std::vector<float> rope_cos_, rope_sin_;  // per token of the batch, rope_dim / 2 each
    std::vector<double> rope_inv_freq_;       // base^(-2i / rope_dim)
    std::vector<uint8_t> activation_;  // activations in a weight type's dot format
    std::vector<float> down_rows_;     // per thread, one ffn_down_t row slice as floats
    // Tokens whose output slices a batched down projection keeps hot at once (16 tokens x a
    // thread's columns: tens of KiB, within L1/L2).
    static constexpr int64_t kDownTokenTile = 16;
    std::vector<float> down_tiles_;   // per thread, the ranges' sums of a tile of tokens
    std::vector<float> range_sums_;   // one token's sum per range of neurons

    // Sparse FFN state: predictor hidden layer, per-token active neuron ids, and the
    // number of neurons computed per layer over the last eval (for stats).
    bool sparse_ = false;
    int64_t max_rank_ = 0;
    std::vector<float> predictor_hidden_;
    std::vector<std::vector<int32_t>> active_;
    std::vector<int64_t> layer_active_;
    int64_t stats_tokens_ = 0;

    std::vector<float> logits_;
    int64_t logit_rows_ = 0;

    std::atomic<bool> cancel_requested_{false};

    // The GPU layers' work (gpu/gpu_forward.h) when the model has a device, and the first
    // of those layers (n_layer when none).
    std::unique_ptr<gpu::GpuForward> gpu_;
    int64_t first_gpu_layer_ = 0;

    // ---- Neuron firing counts, for hot/cold placement profiles (sparseinfer.profile) ----
public:
    // Off by default, so decoding pays nothing. While on, every evaluated token adds 1 to
    // the count of each FFN neuron whose computed activation h_j is nonzero: on the dense
    // ReLU path relu(gate_j) * up_j (relu(up_j) for bamboo) != 0; on the sparse path the
    // same for the predicted-active neurons (the others are not computed and do not
    // count). PowerInfer files only: a dense SiLU model has no sparsity, so turning it on
    // there throws UnsupportedError. A GPU session does not count yet: its eval throws
    // UnsupportedError while counting is on. Turning it off keeps the counts.
    void set_neuron_counting(bool on);
    bool neuron_counting() const { return count_neurons_; }
    // n_layer x n_ff, row-major (empty until counting was first turned on), and the number
    // of tokens counted. A batch is committed once its last layer ran, so an eval that is
    // cancelled midway adds nothing for the unfinished batch and every layer has seen the
    // same tokens.
    const std::vector<int64_t>& neuron_counts() const { return neuron_counts_; }
    int64_t neuron_count_tokens() const { return neuron_count_tokens_; }
    void reset_neuron_counts();

private:
    void count_fired_neurons(int layer, int64_t n_tokens);  // from gate_ after the activation
    bool count_neurons_ = false;
    std::vector<int64_t> neuron_counts_, batch_neuron_counts_;
    int64_t neuron_count_tokens_ = 0;
};

}  // namespace si
