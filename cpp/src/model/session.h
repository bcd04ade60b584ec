// One sequence being evaluated: its KV cache, scratch buffers and thread pool. The forward
// pass of the llama family lives here, top to bottom, over buffers allocated once.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "model/model.h"

namespace si {

class Session {
public:
    // Allocates the KV cache for n_ctx positions (checked against sane bounds first).
    Session(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads);

    const Model& model() const { return *model_; }
    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }

    // Appends tokens to the sequence. all_logits keeps logits for every token, else only
    // the last. Throws ContextOverflowError / ArgumentError before touching any state.
    void eval(const std::vector<int32_t>& tokens, bool all_logits);
    // Logits of the last eval: rows() x n_vocab.
    const std::vector<float>& logits() const { return logits_; }
    int64_t logit_rows() const { return logit_rows_; }

    void reset() { n_past_ = 0; logit_rows_ = 0; }
    void truncate(int64_t n_past);  // forget positions >= n_past

private:
    void ensure_batch_capacity(int64_t n_tokens);
    // y[t] = W x[t] for t < n for each (W, y), all in one job for the thread pool; the
    // matrices share the input length.
    struct MatmulOutput {
        const Matrix* w;
        float* y;
    };
    static constexpr int kMaxMatmulOutputs = 3;
    void matmul(std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n);
    void attention(int layer, int64_t n_tokens);

    std::shared_ptr<const Model> model_;
    const KernelTable& kernels_;
    ThreadPool pool_;
    int64_t n_ctx_;
    int64_t n_past_ = 0;

    // KV cache: per layer, n_ctx rows of kv_dim IEEE halves for K and for V (half the
    // memory and bandwidth of floats, as llama.cpp's default).
    std::vector<uint16_t> k_cache_, v_cache_;

    // Scratch for a batch of up to batch_capacity_ tokens.
    int64_t batch_capacity_ = 0;
    std::vector<float> x_, xn_, q_, k_, v_, attn_out_, gate_, up_, scores_;
    std::vector<float> rope_cos_, rope_sin_;  // per token of the batch, rope_dim / 2 each
    std::vector<double> rope_inv_freq_;       // base^(-2i / rope_dim)
    std::vector<uint8_t> activation_;  // activations in a weight type's dot format

    std::vector<float> logits_;
    int64_t logit_rows_ = 0;
};

}  // namespace si
