#include "session/session.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>

#include "common/errors.h"
#include "common/memory.h"
#include "cpu/norm.h"
#include "gpu/device_model.h"
#include "gpu/gpu_forward.h"
#include "model/rope.h"

namespace si {

namespace {

// GELU's tanh approximation, as Gemma's gelu_pytorch_tanh, in float (llama.cpp's CPU kernel
// looks it up in a table of IEEE halves instead, a coarser value): 0.5 x (1 + tanh(u)), computed
// as x sigmoid(2u), the same function with one exp where tanh costs an expm1 and more (tanhf
// was a quarter of a Falcon prompt's time), and without 1 + tanh(u)'s cancellation for x < 0.
float gelu_tanh(float x) {
    constexpr float kTwoSqrt2OverPi = 1.5957691216f;
    return x / (1.0f + std::exp(-kTwoSqrt2OverPi * (x + 0.044715f * x * x * x)));
}

// Activations at least this many values (a batch's, not a decoded token's few thousand) are
// shared among the pool's threads.
constexpr int64_t kParallelActivations = 1 << 14;

// values[i] = act(values[i]), times factor[i] where factors are given (a gated FFN's up).
void activate(Activation act, float* values, const float* factor, int64_t n) {
    auto each = [&](auto f) {
        if (factor == nullptr) {
            for (int64_t i = 0; i < n; ++i) values[i] = f(values[i]);
        } else {
            for (int64_t i = 0; i < n; ++i) values[i] = f(values[i]) * factor[i];
        }
    };
    switch (act) {
        case Activation::identity: each([](float x) { return x; }); break;
        case Activation::relu: each([](float x) { return std::max(x, 0.0f); }); break;
        case Activation::silu: each([](float x) { return x / (1.0f + std::exp(-x)); }); break;
        case Activation::gelu_tanh: each(gelu_tanh); break;
    }
}

// rows[t] += bias for n rows of bias.size() values.
void add_bias(float* rows, const std::vector<float>& bias, int64_t n) {
    const int64_t width = static_cast<int64_t>(bias.size());
    for (int64_t t = 0; t < n; ++t) {
        for (int64_t i = 0; i < width; ++i) rows[t * width + i] += bias[static_cast<size_t>(i)];
    }
}

// Bound on a session's context: far above any model here, it stops absurd requests.
constexpr int64_t kMaxContext = 1 << 20;

}  // namespace

Session::Session(std::shared_ptr<const Model> model, int64_t n_ctx, int n_threads, bool sparse,
                 std::shared_ptr<const gpu::DeviceModel> device)
    : model_(std::move(model)), kernels_(active_kernels()), pool_(n_threads), n_ctx_(n_ctx),
      sparse_(sparse) {
    const ModelConfig& c = model_->config();
    if (!model_->prepared()) {
        throw ArgumentError(model_->file().describe("the model was loaded without preparing its weights "
                                                    "(prepare_weights=False), to price them; load it again to run it"));
    }
    if (sparse && !c.has_predictors()) {
        throw UnsupportedError(model_->file().describe(
            "sparse inference needs a PowerInfer file with activation predictors (magic PWRI)"));
    }
    for (const LayerWeights& l : model_->layers()) max_rank_ = std::max(max_rank_, l.fc1.rows);
    layer_active_.assign(static_cast<size_t>(c.n_layer), 0);
    if (n_ctx <= 0 || n_ctx > kMaxContext) {
        throw ArgumentError("n_ctx must be between 1 and " + std::to_string(kMaxContext) +
                            ", got " + std::to_string(n_ctx));
    }
    if (c.learned_positions && n_ctx > c.n_ctx_train) {
        throw ArgumentError(model_->file().describe(
            "n_ctx " + std::to_string(n_ctx) + " is beyond the " + std::to_string(c.n_ctx_train) +
            " positions its learned position embeddings (position_embd.weight) cover"));
    }
    first_gpu_layer_ = c.n_layer;
    if (device) {
        if (&device->model() != model_.get()) throw ArgumentError("the device weights belong to another model");
        for (int64_t il = device->first_gpu_layer(); il < c.n_layer && c.has_predictors() && !sparse; ++il) {
            if (device->layer(il).n_hot != c.n_ff) {
                throw ArgumentError("a dense session runs a GPU layer's whole FFN on the GPU, and layer " +
                                    std::to_string(il) + " keeps cold neurons on the CPU; use sparse=True");
            }
        }
        first_gpu_layer_ = device->first_gpu_layer();
        gpu_ = std::make_unique<gpu::GpuForward>(std::move(device), n_ctx);
    }
    if (c.has_predictors() && !sparse) model_->prepare_dense_gates(first_gpu_layer_);
    kv_cache_ = KvCache(first_gpu_layer_, c.n_head_kv, c.head_dim, n_ctx);
    const RopeFrequencies rope = rope_frequencies(c, model_->rope_freq_factors());
    rope_inv_freq_ = rope.inverse;
    rope_magnitude_ = rope.magnitude;
    // The sliding layers turn by their own base, unscaled (llama.cpp: rope_freq_scale_train_swa 1).
    if (!c.sliding_layers.empty()) local_rope_inv_freq_ = unscaled_rope_frequencies(c.local_rope_base, c.rope_dim);
}

Session::~Session() = default;

void Session::ensure_batch_capacity(int64_t n) {
    if (n <= batch_capacity_) return;
    const ModelConfig& c = model_->config();
    const int64_t widest = std::max({c.n_embd, c.q_dim(), c.n_ff, max_rank_});
    const int64_t attention_floats =
        static_cast<int64_t>(pool_.size()) * attention_scratch_floats(kv_cache_.positions());
    // Dimensions are at most 2^20 and n at most kMaxBatch, so these sums cannot overflow.
    // Per token: x, xn and the layer's input (parallel blocks); q, attn_out; k, v; gate, up and
    // the active list (n_ff int32s); the predictor's hidden layer and the rotation angles (two sets
    // with sliding layers). Per thread: attention scores.
    const uint64_t floats = static_cast<uint64_t>(n) *
        (3 * c.n_embd + 2 * c.q_dim() + 2 * c.kv_dim() + 3 * c.n_ff + max_rank_ + 2 * c.rope_dim) +
        static_cast<uint64_t>(attention_floats) +
        NeuronSum::scratch_floats(c.n_embd, pool_.size());
    require_memory("scratch buffers for a batch of " + std::to_string(n) + " tokens",
                   floats * 4 + ActivationSlots::bytes(n, widest));
    auto sized = [](std::vector<float>& v, int64_t count) { v.assign(static_cast<size_t>(count), 0.0f); };
    sized(x_, n * c.n_embd);
    sized(xn_, n * c.n_embd);
    if (c.block.parallel_blocks) sized(layer_input_, n * c.n_embd);
    sized(q_, n * c.q_dim());
    sized(k_, n * c.kv_dim());
    sized(v_, n * c.kv_dim());
    sized(attn_out_, n * c.q_dim());
    sized(gate_, n * c.n_ff);
    sized(predictor_hidden_, n * max_rank_);
    active_.resize(static_cast<size_t>(n));
    for (std::vector<int32_t>& a : active_) a.reserve(static_cast<size_t>(c.n_ff));
    sized(up_, n * c.n_ff);
    sized(rope_cos_, n * (c.rope_dim / 2));
    sized(rope_sin_, n * (c.rope_dim / 2));
    if (!c.sliding_layers.empty()) {
        sized(local_rope_cos_, n * (c.rope_dim / 2));
        sized(local_rope_sin_, n * (c.rope_dim / 2));
    }
    sized(attention_scratch_, attention_floats);
    neuron_sum_.reserve(c.n_embd, pool_.size());
    activations_.reserve(n, widest);
    batch_capacity_ = n;
}

void Session::truncate(int64_t n_past) {
    if (n_past < 0 || n_past > n_past_) {
        throw ArgumentError("truncate: n_past must be between 0 and " + std::to_string(n_past_));
    }
    n_past_ = n_past;
}

void Session::eval(const std::vector<int32_t>& tokens, bool all_logits) {
    const ModelConfig& c = model_->config();
    const int64_t n_total = static_cast<int64_t>(tokens.size());
    if (n_total == 0) throw ArgumentError("eval needs at least one token");
    if (n_past_ + n_total > n_ctx_) {
        throw ContextOverflowError("context overflow: " + std::to_string(n_past_) +
                                   " tokens in the cache + " + std::to_string(n_total) +
                                   " new > n_ctx " + std::to_string(n_ctx_));
    }
    for (int32_t id : tokens) {
        if (id < 0 || id >= c.n_vocab) {
            throw ArgumentError("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                std::to_string(c.n_vocab - 1) + ")");
        }
    }
    if (gpu_ && (count_neurons_ || audit_predictor_)) {
        throw UnsupportedError(std::string(count_neurons_ ? "neuron counting" : "the predictor audit") +
                               " runs on the CPU only in this version: use a session with device='cpu'");
    }
    throw_if_cancelled();
    const int64_t n_past_before = n_past_;
    try {
        forward(tokens, all_logits);
    } catch (const CancelledError&) {
        // The cache rows written past n_past_before are simply forgotten.
        n_past_ = n_past_before;
        logit_rows_ = 0;
        throw;
    }
}

void Session::throw_if_cancelled() const {
    if (cancel_requested()) throw CancelledError("the evaluation was cancelled");
}

void Session::forward(const std::vector<int32_t>& tokens, bool all_logits) {
    const ModelConfig& c = model_->config();
    const int64_t n_total = static_cast<int64_t>(tokens.size());
    logit_rows_ = all_logits ? n_total : 1;
    stats_tokens_ += n_total;
    logits_.assign(static_cast<size_t>(logit_rows_ * c.n_vocab), 0.0f);

    for (int64_t start = 0; start < n_total; start += kMaxBatch) {
        const int64_t n = std::min(kMaxBatch, n_total - start);
        ensure_batch_capacity(n);

        for (int64_t t = 0; t < n; ++t) {
            const Matrix& e = model_->token_embd();
            kernels_.dequantize_row(e.type, e.row(tokens[static_cast<size_t>(start + t)]),
                                    x_.data() + t * c.n_embd, c.n_embd);
        }
        for (int64_t i = 0; i < n * c.n_embd; ++i) x_[i] *= c.block.embedding_scale;
        if (c.learned_positions) {  // n_ctx <= n_ctx_train keeps every row inside the table
            const Matrix& positions = model_->position_embd();
            for (int64_t t = 0; t < n; ++t) {
                float* row = xn_.data() + t * c.n_embd;
                kernels_.dequantize_row(positions.type, positions.row(n_past_ + t + c.position_offset), row, c.n_embd);
                for (int64_t i = 0; i < c.n_embd; ++i) x_[t * c.n_embd + i] += row[i];
            }
        }

        // The rotation angles depend on the position alone: compute them once per token,
        // theta_i = pos * rope_inv_freq_[i] (base^(-2i / rope_dim) unscaled), in double for
        // large positions; cos and sin times the scaling's magnitude (model/rope.h). The sliding
        // layers, where the model has them, get a set of their own.
        const int64_t half_rope = c.rope_dim / 2;
        for (int64_t t = 0; t < n && first_gpu_layer_ > 0; ++t) {
            const double pos = static_cast<double>(n_past_ + t);
            for (int64_t i = 0; i < half_rope; ++i) {
                const size_t at = static_cast<size_t>(t * half_rope + i);
                const double theta = pos * rope_inv_freq_[static_cast<size_t>(i)];
                rope_cos_[at] = static_cast<float>(std::cos(theta) * rope_magnitude_);
                rope_sin_[at] = static_cast<float>(std::sin(theta) * rope_magnitude_);
                if (local_rope_inv_freq_.empty()) continue;
                const double local_theta = pos * local_rope_inv_freq_[static_cast<size_t>(i)];
                local_rope_cos_[at] = static_cast<float>(std::cos(local_theta));
                local_rope_sin_[at] = static_cast<float>(std::sin(local_theta));
            }
        }
        if (first_gpu_layer_ < c.n_layer) gpu_->begin_batch(n, n_past_);

        // The CPU layers come first; the hidden state then goes up once for the GPU layers.
        for (int64_t il = 0; il < c.n_layer; ++il) {
            throw_if_cancelled();  // a long prompt stops within one layer's work
            if (il < first_gpu_layer_) {
                const CoreShare cores(pool_);  // taken anew each layer, as other sessions come and go
                // Parallel blocks: the FFN reads the layer's input, kept before attention joins it.
                const float* ffn_input = x_.data();
                if (c.block.parallel_blocks) {
                    std::copy(x_.begin(), x_.begin() + n * c.n_embd, layer_input_.begin());
                    ffn_input = layer_input_.data();
                }
                cpu_attention(static_cast<int>(il), n);
                feed_forward(static_cast<int>(il), n, ffn_input);
                continue;
            }
            if (il == first_gpu_layer_) gpu_->upload_hidden(x_.data());
            gpu_->attention(il);
            gpu_feed_forward(static_cast<int>(il), n);
        }

        // Output head for the rows whose logits are kept (none for a chunk of a prompt
        // whose logits are dropped).
        const bool keep = all_logits || start + n == n_total;
        const int64_t first_kept = keep ? (all_logits ? 0 : n - 1) : n;
        float* dst = logits_.data() + (all_logits ? start * c.n_vocab : 0);
        if (first_gpu_layer_ < c.n_layer) {
            gpu_->output(first_kept, dst);
            gpu_->add_hot_active_counts(layer_active_);
        } else if (keep) {
            const CoreShare cores(pool_);
            normalize(x_.data() + first_kept * c.n_embd, model_->output_norm(), model_->output_norm_bias(),
                      n - first_kept, xn_.data());
            matmul({{&model_->output(), dst}}, xn_.data(), n - first_kept);
            const float inverse_logit_scale = 1.0f / c.block.logit_scale;  // as llama.cpp scales them
            for (int64_t i = 0; i < (n - first_kept) * c.n_vocab; ++i) dst[i] *= inverse_logit_scale;
            if (const float cap = c.block.final_logit_softcap; cap > 0.0f) {
                for (int64_t i = 0; i < (n - first_kept) * c.n_vocab; ++i) dst[i] = cap * std::tanh(dst[i] / cap);
            }
        }
        n_past_ += n;
    }
}

void Session::cpu_attention(int il, int64_t n) {
    // x += residual_scale * (Wo attention(rope(norm(Wq xn + bq)), rope(norm(Wk xn + bk)), Wv xn + bv)
    // + bo), K and V stored at n_past.. (the biases and the per-head norms where the BlockSpec has
    // them)
    const ModelConfig& c = model_->config();
    const BlockSpec& block = c.block;
    const LayerWeights& l = model_->layers()[static_cast<size_t>(il)];
    const int64_t q_dim = c.q_dim(), kv_dim = c.kv_dim(), half_rope = c.rope_dim / 2;
    const bool halves = block.rope_layout == RopeLayout::halves, local = c.slides(il);
    normalize(x_.data(), l.attn_norm, l.attn_norm_b, n, xn_.data());
    matmul({{&l.wq, q_.data()}, {&l.wk, k_.data()}, {&l.wv, v_.data()}}, xn_.data(), n);
    if (block.qkv_bias) {
        add_bias(q_.data(), l.bq, n);
        add_bias(k_.data(), l.bk, n);
        add_bias(v_.data(), l.bv, n);
    }
    for (int64_t t = 0; t < n; ++t) {
        float* q = q_.data() + t * q_dim;
        float* k = k_.data() + t * kv_dim;
        float* v = v_.data() + t * kv_dim;
        if (block.qk_norm) {
            rms_norm_rows(q, l.q_norm.data(), c.n_head, c.head_dim, c.norm_eps, q);
            rms_norm_rows(k, l.k_norm.data(), c.n_head_kv, c.head_dim, c.norm_eps, k);
        }
        const float* cos = (local ? local_rope_cos_ : rope_cos_).data() + t * half_rope;
        const float* sin = (local ? local_rope_sin_ : rope_sin_).data() + t * half_rope;
        for (int64_t h = 0; h < c.n_head; ++h) rope(q + h * c.head_dim, c.rope_dim, cos, sin, halves);
        for (int64_t h = 0; h < c.n_head_kv; ++h) rope(k + h * c.head_dim, c.rope_dim, cos, sin, halves);
        kv_cache_.store(il, n_past_ + t, k, v);
    }
    const float scale = block.attention_scale > 0.0f ? block.attention_scale
                                                     : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    const AttentionShape shape{c.n_head, c.n_head_kv, c.head_dim, scale, local ? c.sliding_window : 0};
    attention(pool_, kernels_, kv_cache_, il, shape, q_.data(), n, n_past_, attention_scratch_.data(),
              attn_out_.data());
    matmul({{&l.wo, xn_.data()}}, attn_out_.data(), n);
    if (block.output_bias) add_bias(xn_.data(), l.bo, n);
    add_residual(n, l.attn_post_norm);
}

void Session::activate_on_pool(Activation act, float* values, const float* factor, int64_t n) {
    if (n < kParallelActivations) {
        activate(act, values, factor, n);
        return;
    }
    pool_.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(n, ith, nth, &begin, &end);
        activate(act, values + begin, factor != nullptr ? factor + begin : nullptr, end - begin);
    });
}

void Session::normalize(const float* x, const std::vector<float>& weight, const std::vector<float>& bias, int64_t n,
                        float* out) const {
    const ModelConfig& c = model_->config();
    if (c.block.norm == NormKind::layer) {
        layer_norm_rows(x, weight.data(), bias.data(), n, c.n_embd, c.norm_eps, out);
    } else {
        rms_norm_rows(x, weight.data(), n, c.n_embd, c.norm_eps, out);
    }
}

void Session::add_residual(int64_t n, const std::vector<float>& post_norm) {
    const ModelConfig& c = model_->config();
    if (c.block.post_norms) rms_norm_rows(xn_.data(), post_norm.data(), n, c.n_embd, c.norm_eps, xn_.data());
    const float scale = c.block.residual_scale;
    for (int64_t i = 0; i < n * c.n_embd; ++i) x_[i] += scale * xn_[i];
}

// The feed-forward block of a layer, in its forms (BlockSpec::ffn), xn the norm of its input:
//   dense:           x += W_down (act(W_gate xn) * W_up xn), act = SiLU, GELU (tanh) or ReLU
//                    (BlockSpec::ffn_activation), or without a gate W_down act(W_up xn + b_up)
//                    + b_down (the biases where the BlockSpec has them; the sum post-normed and
//                    scaled where it says so, as for every block: add_residual)
//   relu_predicted:  h_j = relu(gate_j . xn) * up_j . xn (relu on up too for bamboo; without a
//                    gate relu(up_j . xn + b_up_j)), x += sum_j h_j down_t[j] + b_down
//                    (cpu/neuron_sum.h), over
//     - dense: every neuron; where the kernels have an eight-row product for the gate's
//       type, every gate in one matrix product (Model::dense_gate), and the neurons with a
//       positive one go on as the sparse form's active ones;
//     - sparse: the neurons the predictor marks active, score = fc2 relu(fc1 x) >= threshold,
//       x the input before ffn_norm; gate and up rows of the others are never read;
//     - a GPU layer: the GPU computes the predictor and its hot neurons, the CPU the active
//       cold ones (cold_feed_forward), whose partial sum is added on the GPU.
// (FACTS.md: PowerInfer's llm_build_ffn_sparse and its CPU kernels.)
void Session::feed_forward(int layer, int64_t n, const float* input) {
    const ModelConfig& c = model_->config();
    const BlockSpec& block = c.block;
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    const int64_t hidden = n * c.n_ff;

    if (!c.has_predictors()) {
        normalize(input, l.ffn_norm, l.ffn_norm_b, n, xn_.data());
        if (block.ffn_gate) {
            matmul({{&l.ffn_gate, gate_.data()}, {&l.ffn_up, up_.data()}}, xn_.data(), n);
            activate_on_pool(block.ffn_activation, gate_.data(), up_.data(), hidden);
        } else {
            matmul({{&l.ffn_up, gate_.data()}}, xn_.data(), n);
            if (block.ffn_bias) add_bias(gate_.data(), l.ffn_up_b, n);
            activate_on_pool(block.ffn_activation, gate_.data(), nullptr, hidden);
        }
        matmul({{&l.ffn_down, xn_.data()}}, gate_.data(), n);
        if (block.ffn_bias) add_bias(xn_.data(), l.ffn_down_b, n);
        add_residual(n, l.ffn_post_norm);
        layer_active_[static_cast<size_t>(layer)] += hidden;
        return;
    }

    // The predictor reads the input before the norm, so it runs first.
    if (sparse_) predict_active_neurons(l, n, input);
    normalize(input, l.ffn_norm, l.ffn_norm_b, n, xn_.data());
    neuron_sum(l, n, sparse_ ? nullptr : list_dense_neurons(layer, n));
    if (block.ffn_bias) add_bias(xn_.data(), l.ffn_down_b, n);
    if (sparse_) {
        for (int64_t t = 0; t < n; ++t) {
            layer_active_[static_cast<size_t>(layer)] += static_cast<int64_t>(active_[static_cast<size_t>(t)].size());
        }
    } else {
        layer_active_[static_cast<size_t>(layer)] += hidden;
    }
    if (count_neurons_) count_fired_neurons(layer, n);
    if (audit_predictor_) audit_predictor(layer, n, input);
    add_residual(n, l.ffn_post_norm);
}

void Session::predict_active_neurons(const LayerWeights& l, int64_t n, const float* input) {
    predictor_scores(l, n, input, up_.data());  // up_ is free until gate and up run
    select_active_neurons(up_.data(), n, nullptr);
}

void Session::predictor_scores(const LayerWeights& l, int64_t n, const float* input, float* scores) {
    const int64_t rank = l.fc1.rows;
    matmul({{&l.fc1, predictor_hidden_.data()}}, input, n);
    for (int64_t i = 0; i < n * rank; ++i) predictor_hidden_[i] = std::max(predictor_hidden_[i], 0.0f);
    matmul({{&l.fc2, scores}}, predictor_hidden_.data(), n);
}

void Session::select_active_neurons(const float* scores, int64_t n, const uint8_t* skip) {
    const ModelConfig& c = model_->config();
    for (int64_t t = 0; t < n; ++t) {
        std::vector<int32_t>& active = active_[static_cast<size_t>(t)];
        active.clear();
        const float* score = scores + t * c.n_ff;
        for (int64_t j = 0; j < c.n_ff; ++j) {
            if (score[j] >= c.sparse_threshold && (skip == nullptr || !skip[j])) {
                active.push_back(static_cast<int32_t>(j));
            }
        }
    }
}

const float* Session::list_dense_neurons(int layer, int64_t n) {
    const int64_t n_ff = model_->config().n_ff;
    const Matrix& gates = model_->dense_gate(layer);
    if (gates.interleaved == nullptr) {
        // Without an eight-row product the gates are best read with their up rows, as the
        // sparse form reads them (F16 dense decode: 16.7 tok/s so, 12.3 with the gates first
        // in one product over the bundled rows): every neuron is listed.
        for (int64_t t = 0; t < n; ++t) {
            std::vector<int32_t>& listed = active_[static_cast<size_t>(t)];
            listed.resize(static_cast<size_t>(n_ff));
            for (int64_t j = 0; j < n_ff; ++j) listed[static_cast<size_t>(j)] = static_cast<int32_t>(j);
        }
        return nullptr;
    }
    // up_ is free until the up rows are read: the gates land there, their bias added, and each
    // token's neurons with relu(gate) > 0 (the only ones whose up and down rows matter) become its
    // list.
    matmul({{&gates, up_.data()}}, xn_.data(), n);
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    if (relu_bias(l) != nullptr) add_bias(up_.data(), l.ffn_up_b, n);
    for (int64_t t = 0; t < n; ++t) {
        std::vector<int32_t>& positive = active_[static_cast<size_t>(t)];
        positive.clear();
        const float* gate = up_.data() + t * n_ff;
        for (int64_t j = 0; j < n_ff; ++j) {
            if (!(gate[j] <= 0.0f)) positive.push_back(static_cast<int32_t>(j));  // as cpu/neuron_sum.cpp: NaN goes on
        }
    }
    return up_.data();
}

void Session::neuron_sum(const LayerWeights& l, int64_t n, const float* known_gates) {
    const ModelConfig& c = model_->config();
    const NeuronMatrices neurons{relu_projection(c, l), c.block.ffn_gate ? &l.ffn_up : nullptr, l.ffn_down_t,
                                 c.block.up_activation == Activation::relu, relu_bias(l)};
    neuron_sum_.run(pool_, kernels_, activations_, neurons, active_, n, xn_.data(), known_gates, gate_.data(),
                    xn_.data());
}

const float* Session::relu_bias(const LayerWeights& l) const {
    return model_->config().block.ffn_gate || l.ffn_up_b.empty() ? nullptr : l.ffn_up_b.data();
}

void Session::gpu_feed_forward(int il, int64_t n) {
    const ModelConfig& c = model_->config();
    if (!sparse_) {
        gpu_->dense_ffn(il);
        layer_active_[static_cast<size_t>(il)] += n * c.n_ff;
        return;
    }
    // The GPU computes the predictor and the active hot neurons (their count comes with the
    // batch's logits); meanwhile the CPU computes the active cold ones, whose sum goes up.
    const gpu::DeviceModel::Layer& on_device = gpu_->weights().layer(il);
    const bool has_cold = on_device.n_hot < c.n_ff;
    gpu_->sparse_ffn(il, up_.data(), xn_.data());
    if (!has_cold) return;
    const CoreShare cores(pool_);  // the CPU's part of a GPU layer
    if (cold_feed_forward(il, n, on_device.is_hot.data())) gpu_->add_to_hidden(xn_.data());
}

bool Session::cold_feed_forward(int layer, int64_t n, const uint8_t* is_hot) {
    // The GPU left the predictor's scores in up_ and the normed input in xn_.
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    select_active_neurons(up_.data(), n, is_hot);
    int64_t computed = 0;
    for (int64_t t = 0; t < n; ++t) computed += static_cast<int64_t>(active_[static_cast<size_t>(t)].size());
    layer_active_[static_cast<size_t>(layer)] += computed;
    if (computed == 0) return false;
    neuron_sum(l, n, nullptr);
    return true;
}

void Session::reset_stats() {
    std::fill(layer_active_.begin(), layer_active_.end(), 0);
    stats_tokens_ = 0;
}

std::vector<double> Session::active_fractions() const {
    const ModelConfig& c = model_->config();
    std::vector<double> out;
    for (int64_t count : layer_active_) {
        const double total = static_cast<double>(stats_tokens_) * static_cast<double>(c.n_ff);
        out.push_back(total > 0 ? static_cast<double>(count) / total : 0.0);
    }
    return out;
}

void Session::set_neuron_counting(bool on) {
    const ModelConfig& c = model_->config();
    if (on && !c.has_predictors()) {
        throw UnsupportedError(model_->file().describe(
            "neuron counting needs a ReLU model (a PowerInfer file, magic PWRI): the SiLU of a "
            "dense model is almost never exactly zero, so every neuron would count as firing"));
    }
    if (on && neuron_counts_.empty()) {
        neuron_counts_.assign(static_cast<size_t>(c.n_layer * c.n_ff), 0);
        batch_neuron_counts_.assign(neuron_counts_.size(), 0);
    }
    count_neurons_ = on;
}

void Session::reset_neuron_counts() {
    std::fill(neuron_counts_.begin(), neuron_counts_.end(), 0);
    neuron_count_tokens_ = 0;
}

void Session::set_predictor_audit(bool on) {
    if (on && !model_->config().has_predictors()) {
        throw UnsupportedError(model_->file().describe(
            "the predictor audit needs a PowerInfer file with activation predictors (magic PWRI)"));
    }
    if (on && sparse_) {
        throw ArgumentError("the predictor audit needs a dense session (sparse=False): a sparse one never "
                            "computes the neurons its predictor leaves out, so it cannot see which of them fire");
    }
    if (on && predictor_audit_.empty()) {
        predictor_audit_.assign(static_cast<size_t>(model_->config().n_layer), PredictorAudit{});
    }
    audit_predictor_ = on;
}

void Session::reset_predictor_audit() {
    std::fill(predictor_audit_.begin(), predictor_audit_.end(), PredictorAudit{});
}

void Session::audit_predictor(int layer, int64_t n, const float* input) {
    // input is still the FFN's input (x_ before add_residual, or the kept layer input), and
    // gate_ holds each token's h; the predictor's scores go to a buffer of their own.
    const ModelConfig& c = model_->config();
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    audit_scores_.resize(static_cast<size_t>(n * c.n_ff));
    predictor_scores(l, n, input, audit_scores_.data());
    if (layer == 0) batch_predictor_audit_.assign(static_cast<size_t>(c.n_layer), {});
    PredictorAudit& counts = batch_predictor_audit_[static_cast<size_t>(layer)];
    for (int64_t i = 0; i < n * c.n_ff; ++i) {
        const bool predicted = audit_scores_[static_cast<size_t>(i)] >= c.sparse_threshold;
        const bool fired = gate_[static_cast<size_t>(i)] != 0.0f;
        counts.predicted += predicted;
        counts.fired += fired;
        counts.predicted_and_fired += predicted && fired;
    }
    if (layer == c.n_layer - 1) {  // the batch went through every layer: commit it
        for (size_t il = 0; il < predictor_audit_.size(); ++il) {
            predictor_audit_[il].predicted += batch_predictor_audit_[il].predicted;
            predictor_audit_[il].fired += batch_predictor_audit_[il].fired;
            predictor_audit_[il].predicted_and_fired += batch_predictor_audit_[il].predicted_and_fired;
        }
    }
}

void Session::count_fired_neurons(int layer, int64_t n) {
    // gate_ holds h for the batch, zero wherever the neuron was not computed or its
    // activation is zero. Each thread owns a range of neurons and walks every token, so each
    // count has one writer (and integer sums do not depend on the order anyway).
    const int64_t n_ff = model_->config().n_ff;
    const int64_t n_layer = model_->config().n_layer;
    if (layer == 0) std::fill(batch_neuron_counts_.begin(), batch_neuron_counts_.end(), 0);
    int64_t* counts = batch_neuron_counts_.data() + static_cast<size_t>(layer) * n_ff;
    pool_.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(n_ff, ith, nth, &begin, &end);
        for (int64_t t = 0; t < n; ++t) {
            const float* h = gate_.data() + t * n_ff;
            for (int64_t j = begin; j < end; ++j) counts[j] += h[j] != 0.0f ? 1 : 0;
        }
    });
    if (layer == n_layer - 1) {  // the batch went through every layer: commit it
        for (size_t i = 0; i < neuron_counts_.size(); ++i) neuron_counts_[i] += batch_neuron_counts_[i];
        neuron_count_tokens_ += n;
    }
}

}  // namespace si
