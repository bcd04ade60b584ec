// One sequence being evaluated: its KV cache, scratch buffers and thread pool. The forward
// pass lives here (session.cpp), top to bottom, over buffers allocated once: it says what
// each layer computes, as the model's BlockSpec describes it, and asks cpu/ for the matrix
// products, the attention and the neuron sums (how those are cut up among the threads is
// cpu/'s business) and gpu/ for the layers placed on a GPU.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "cpu/attention.h"
#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/neuron_sum.h"
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
    void matmul(std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n) {
        si::matmul(pool_, kernels_, activations_, outputs, x, n);
    }
    // The blocks of a CPU layer for the batch: x += attention(x), then x += FFN(input), input x
    // itself or, for parallel blocks, the layer's input kept before attention (dense, or
    // PowerInfer's dense or sparse path).
    void cpu_attention(int layer, int64_t n_tokens);
    // values[i] = act(values[i]) (times factor[i] where given), a batch's on the pool's threads.
    void activate_on_pool(Activation act, float* values, const float* factor, int64_t n);
    // The BlockSpec's norm (RMS, or LayerNorm with its bias) of n_tokens rows of n_embd.
    void normalize(const float* x, const std::vector<float>& weight, const std::vector<float>& bias, int64_t n_tokens,
                   float* out) const;
    // x_ += residual_scale * xn_: a block's output (in xn_) joins the residual stream, RMS-normed
    // by post_norm first where the BlockSpec has post_norms.
    void add_residual(int64_t n_tokens, const std::vector<float>& post_norm);
    void feed_forward(int layer, int64_t n_tokens, const float* input);
    // The FFN of a GPU layer, with the CPU's share of a sparse one.
    void gpu_feed_forward(int layer, int64_t n_tokens);
    // The active cold neurons of a GPU layer (is_hot: n_ff flags) from the scores and xn the
    // GPU left in up_ and xn_; their sum to xn_. False when none is active.
    bool cold_feed_forward(int layer, int64_t n_tokens, const uint8_t* is_hot);
    void predict_active_neurons(const LayerWeights& l, int64_t n_tokens, const float* input);
    // The predictor's scores fc2 relu(fc1 input) for n_tokens rows, n_ff each.
    void predictor_scores(const LayerWeights& l, int64_t n_tokens, const float* input, float* scores);
    // The bias of the projection a PowerInfer FFN's ReLU reads (OPT's up bias), or null.
    const float* relu_bias(const LayerWeights& l) const;
    // active_[t] = the neurons j with scores[t][j] >= threshold, skipping those with skip[j].
    void select_active_neurons(const float* scores, int64_t n_tokens, const uint8_t* skip);

    // The dense mode of a PowerInfer file: lists in active_ the neurons each token needs, and
    // returns their gates for neuron_sum. Where the layer's gate matrix has an interleaved copy
    // (Model::dense_gate), every gate comes from one matrix product into up_ and the list is
    // the neurons with a positive one; otherwise every neuron is listed, and null returned.
    const float* list_dense_neurons(int layer, int64_t n_tokens);
    // A PowerInfer FFN from xn_ over each token's listed neurons (active_): their h into gate_
    // (zero elsewhere) and their sum into xn_. known_gates: the gate of every neuron, n_ff per
    // token (list_dense_neurons), or null to compute the listed ones'.
    void neuron_sum(const LayerWeights& l, int64_t n_tokens, const float* known_gates);

    std::shared_ptr<const Model> model_;
    const KernelTable& kernels_;
    ThreadPool pool_;
    int64_t n_ctx_;
    int64_t n_past_ = 0;

    KvCache kv_cache_;  // of the CPU layers

    // Scratch for a batch of up to batch_capacity_ tokens.
    int64_t batch_capacity_ = 0;
    std::vector<float> x_, xn_, q_, k_, v_, attn_out_, gate_, up_;
    std::vector<float> layer_input_;  // BlockSpec::parallel_blocks: the FFN's input
    std::vector<float> attention_scratch_;  // per thread of the pool
    std::vector<float> rope_cos_, rope_sin_;  // per token of the batch, rope_dim / 2 each
    std::vector<double> rope_inv_freq_;       // base^(-2i / rope_dim), as the RoPE scaling changes it
    double rope_magnitude_ = 1.0;             // cos and sin times this (YaRN)
    // The same for the sliding-window layers' base (ModelConfig::local_rope_base, unscaled), when
    // the model has such layers.
    std::vector<float> local_rope_cos_, local_rope_sin_;
    std::vector<double> local_rope_inv_freq_;
    ActivationSlots activations_;  // the input of a matrix product in its weights' dot formats
    NeuronSum neuron_sum_;

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

    // ---- The predictor against the neurons that fire, for quality reports ----
public:
    struct PredictorAudit {
        int64_t predicted = 0;            // neurons the predictor marks active (score >= threshold)
        int64_t fired = 0;                // neurons whose computed activation is nonzero
        int64_t predicted_and_fired = 0;  // both: recall = this / fired, precision = this / predicted
    };
    // Off by default. While on, every evaluated token also runs each layer's predictor and
    // counts, per layer, the neurons it predicts against those that fire (as counted for
    // set_neuron_counting), summed over tokens. It needs every neuron computed: a dense session
    // (ArgumentError for a sparse one) of a PowerInfer file (UnsupportedError for another) on
    // the CPU (a GPU session's eval throws UnsupportedError while it is on). A batch is
    // committed once its last layer ran, as the neuron counts are. Turning it off keeps the
    // counts.
    void set_predictor_audit(bool on);
    bool predictor_auditing() const { return audit_predictor_; }
    const std::vector<PredictorAudit>& predictor_audit() const { return predictor_audit_; }  // per layer
    void reset_predictor_audit();

private:
    // After a dense PowerInfer FFN: its predictor's scores for the same input against h in gate_.
    void audit_predictor(int layer, int64_t n_tokens, const float* input);
    bool audit_predictor_ = false;
    std::vector<PredictorAudit> predictor_audit_, batch_predictor_audit_;
    std::vector<float> audit_scores_;
};

}  // namespace si
