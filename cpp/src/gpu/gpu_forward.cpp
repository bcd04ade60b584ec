#include "gpu/gpu_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/errors.h"

namespace si::gpu {

namespace {

size_t floats(int64_t n) { return static_cast<size_t>(n) * sizeof(float); }

// In a layer split between GPU and CPU the predictor's scores and the normed input come
// down together: one buffer (up_), the input starting at the first multiple of this many
// floats after the scores (aligned for the kernels' vector loads).
constexpr int64_t kHandoffAlignFloats = 64;

int64_t handoff_offset(int64_t n, int64_t n_ff) {
    return (n * n_ff + kHandoffAlignFloats - 1) / kHandoffAlignFloats * kHandoffAlignFloats;
}

}  // namespace

GpuForward::GpuForward(std::shared_ptr<const DeviceModel> weights, int64_t n_ctx)
    : weights_(std::move(weights)), ctx_(weights_->plugin(), weights_->device()), n_ctx_(n_ctx) {
    const ModelConfig& c = weights_->model().config();
    const size_t kv_bytes = static_cast<size_t>(kv_cache_bytes(c, n_ctx) / 2);
    for (int64_t il = weights_->first_gpu_layer(); il < c.n_layer; ++il) {
        caches_.push_back({Buffer(ctx_, kv_bytes, "the K cache"), Buffer(ctx_, kv_bytes, "the V cache")});
    }
}

std::vector<GpuForward::BatchBuffer> GpuForward::batch_buffers(const Model& model, int64_t n) {
    const ModelConfig& c = model.config();
    const size_t hidden = floats(n * c.n_embd);
    const size_t heads = floats(n * c.q_dim());  // Q and the attention's output: n_embd wide or not
    // PowerInfer files: room in up_ after the scores for the normed input (handoff_offset).
    const size_t up = floats(c.has_predictors() ? handoff_offset(n, c.n_ff) + n * c.n_embd : n * c.n_ff);
    std::vector<BatchBuffer> b = {
        {&GpuForward::x_, hidden, "activations"},
        {&GpuForward::xn_, hidden, "activations"},
        {&GpuForward::q_, heads, "activations"},
        {&GpuForward::attn_out_, std::max(heads, hidden), "activations"},  // also add_to_hidden's upload
        {&GpuForward::k_, floats(n * c.kv_dim()), "activations"},
        {&GpuForward::v_, floats(n * c.kv_dim()), "activations"},
        {&GpuForward::gate_, floats(n * c.n_ff), "activations"},
        {&GpuForward::up_, up, "activations"},
        {&GpuForward::logits_, floats(n * c.n_vocab), "logits"},
        {&GpuForward::positions_, static_cast<size_t>(n) * sizeof(int32_t), "positions"},
    };
    // Parallel blocks: the FFN reads the layer's input, kept before attention joins it.
    if (c.block.parallel_blocks) b.push_back({&GpuForward::layer_input_, hidden, "activations"});
    if (c.has_predictors()) {
        int64_t max_rank = 0;
        for (const LayerWeights& l : model.layers()) max_rank = std::max(max_rank, l.fc1.rows);
        b.push_back({&GpuForward::predictor_hidden_, floats(n * max_rank), "predictor activations"});
        b.push_back({&GpuForward::rows_, static_cast<size_t>(c.n_ff) * sizeof(int32_t), "active neuron lists"});
        b.push_back({&GpuForward::mask_, static_cast<size_t>(n * c.n_ff), "active neuron masks"});
        b.push_back({&GpuForward::rows_count_, sizeof(int32_t), "active neuron lists"});
        b.push_back({&GpuForward::active_counts_, static_cast<size_t>(c.n_layer) * sizeof(int32_t),
                     "active neuron counts"});
        // The plugin's own scratch for the down projection (plugin_api.h, si_cuda_ffn_down).
        const int64_t slices = (c.n_ff + SI_CUDA_DOWN_SLICE_ROWS - 1) / SI_CUDA_DOWN_SLICE_ROWS;
        if (slices > 1) b.push_back({nullptr, floats(SI_CUDA_DOWN_SLICE_TOKENS * c.n_embd * slices), "plugin scratch"});
    }
    return b;
}

uint64_t GpuForward::kv_cache_bytes(const ModelConfig& c, int64_t n_ctx) {
    return 2 * static_cast<uint64_t>(n_ctx) * static_cast<uint64_t>(c.kv_dim()) * 2;  // K and V halves
}

uint64_t GpuForward::batch_bytes(const Model& model, int64_t n) {
    uint64_t total = 0;
    for (const BatchBuffer& b : batch_buffers(model, n)) total += b.bytes;
    return total;
}

void GpuForward::ensure_batch_capacity(int64_t n) {
    if (n <= batch_capacity_) return;
    for (const BatchBuffer& b : batch_buffers(weights_->model(), n)) {
        if (b.buffer != nullptr) this->*b.buffer = Buffer(ctx_, b.bytes, b.what);
    }
    host_positions_.resize(static_cast<size_t>(n));
    batch_capacity_ = n;
}

void GpuForward::matmul(const DeviceModel::Matrix& w, const float* x, int64_t n, float* y) {
    ctx_.run("matmul", ctx_.api().si_cuda_matmul, w.type, static_cast<const void*>(w.data.data()), w.rows,
             w.cols, x, n, y);
}

void GpuForward::begin_batch(int64_t n, int64_t n_past) {
    ensure_batch_capacity(n);
    n_ = n;
    n_past_ = n_past;
    sparse_ran_ = false;
    for (int64_t t = 0; t < n; ++t) host_positions_[static_cast<size_t>(t)] = static_cast<int32_t>(n_past + t);
    ctx_.upload(positions_.data(), host_positions_.data(), static_cast<size_t>(n) * sizeof(int32_t));
}

void GpuForward::upload_hidden(const float* x) {
    ctx_.upload(x_.data(), x, floats(n_ * weights_->model().config().n_embd));
}

void GpuForward::normalize(const float* x, const Buffer& weight, const Buffer& bias, int64_t rows, float* out) {
    const ModelConfig& c = weights_->model().config();
    if (c.block.norm == NormKind::layer) {
        ctx_.run("layer_norm", ctx_.api().si_cuda_layer_norm, x, weight.as<const float>(), bias.as<const float>(),
                 rows, c.n_embd, c.norm_eps, out);
    } else {
        ctx_.run("rms_norm", ctx_.api().si_cuda_rms_norm, x, weight.as<const float>(), rows, c.n_embd, c.norm_eps,
                 out);
    }
}

void GpuForward::add_bias(float* rows, const Buffer& bias, int64_t width) {
    if (bias.data() == nullptr) return;  // the model has none
    ctx_.run("add_bias", ctx_.api().si_cuda_add_bias, rows, bias.as<const float>(), n_, width);
}

void GpuForward::add_residual(const Buffer& post_norm) {
    // x += residual_scale * post_norm(xn), the block's output in xn_ (Session::add_residual)
    const ModelConfig& c = weights_->model().config();
    const PluginApi& api = ctx_.api();
    float* xn = xn_.f32();
    if (c.block.post_norms) {
        ctx_.run("rms_norm", api.si_cuda_rms_norm, static_cast<const float*>(xn), post_norm.as<const float>(), n_,
                 c.n_embd, c.norm_eps, xn);
    }
    ctx_.run("add", api.si_cuda_add, x_.f32(), static_cast<const float*>(xn), n_ * c.n_embd, c.block.residual_scale);
}

const float* GpuForward::ffn_input() const {
    return weights_->model().config().block.parallel_blocks ? layer_input_.f32() : x_.f32();
}

void GpuForward::attention(int64_t il) {
    const ModelConfig& c = weights_->model().config();
    const PluginApi& api = ctx_.api();
    const DeviceModel::Layer& l = weights_->layer(il);
    Cache& cache = caches_[static_cast<size_t>(il - weights_->first_gpu_layer())];
    const int64_t n = n_;
    float* xd = x_.f32();
    float* xn = xn_.f32();
    if (c.block.parallel_blocks) {
        ctx_.run("copy", api.si_cuda_copy, static_cast<void*>(layer_input_.data()), static_cast<const void*>(xd),
                 floats(n * c.n_embd));
    }
    // x += residual_scale * post_norm(Wo attention(rope(norm(Wq xn + bq)), rope(norm(Wk xn + bk)), Wv xn + bv)
    // + bo), the biases and norms where the BlockSpec has them (Session::cpu_attention)
    normalize(xd, l.attn_norm, l.attn_norm_b, n, xn);
    matmul(l.wq, xn, n, q_.f32());
    matmul(l.wk, xn, n, k_.f32());
    matmul(l.wv, xn, n, v_.f32());
    add_bias(q_.f32(), l.bq, c.q_dim());
    add_bias(k_.f32(), l.bk, c.kv_dim());
    add_bias(v_.f32(), l.bv, c.kv_dim());
    if (c.block.qk_norm) {  // each head a row of head_dim values
        ctx_.run("rms_norm", api.si_cuda_rms_norm, static_cast<const float*>(q_.f32()), l.q_norm.as<const float>(),
                 n * c.n_head, c.head_dim, c.norm_eps, q_.f32());
        ctx_.run("rms_norm", api.si_cuda_rms_norm, static_cast<const float*>(k_.f32()), l.k_norm.as<const float>(),
                 n * c.n_head_kv, c.head_dim, c.norm_eps, k_.f32());
    }
    // A sliding-window layer turns by its own unscaled base and sees the last sliding_window positions.
    const bool local = c.slides(il);
    const double* frequencies = (local ? weights_->local_rope_inverse_frequencies()
                                       : weights_->rope_inverse_frequencies()).as<const double>();
    const double magnitude = local ? 1.0 : weights_->rope_magnitude();
    const int layout = c.block.rope_layout == RopeLayout::halves ? SI_CUDA_ROPE_HALVES : SI_CUDA_ROPE_ADJACENT_PAIRS;
    ctx_.run("rope", api.si_cuda_rope, q_.f32(), n, c.n_head, c.head_dim, c.rope_dim,
             positions_.as<const int32_t>(), frequencies, magnitude, layout);
    ctx_.run("rope", api.si_cuda_rope, k_.f32(), n, c.n_head_kv, c.head_dim, c.rope_dim,
             positions_.as<const int32_t>(), frequencies, magnitude, layout);
    const float scale = c.block.attention_scale > 0.0f ? c.block.attention_scale
                                                       : 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    ctx_.run("attention", api.si_cuda_attention, static_cast<const float*>(q_.f32()),
             static_cast<const float*>(k_.f32()), static_cast<const float*>(v_.f32()), cache.k.as<uint16_t>(),
             cache.v.as<uint16_t>(), n_ctx_, n_past_, n, c.n_head, c.n_head_kv, c.head_dim, scale,
             local ? c.sliding_window : int64_t{0}, attn_out_.f32());
    matmul(l.wo, attn_out_.f32(), n, xn);
    add_bias(xn, l.bo, c.n_embd);
    add_residual(l.attn_post_norm);
}

namespace {

int plugin_activation(Activation a) {
    switch (a) {
        case Activation::silu: return SI_CUDA_ACTIVATION_SILU;
        case Activation::gelu_tanh: return SI_CUDA_ACTIVATION_GELU_TANH;
        default: return SI_CUDA_ACTIVATION_RELU;  // the loader gives a dense FFN no other (identity is up's)
    }
}

}  // namespace

void GpuForward::dense_ffn(int64_t il) {
    const ModelConfig& c = weights_->model().config();
    const PluginApi& api = ctx_.api();
    const DeviceModel::Layer& l = weights_->layer(il);
    const int64_t n = n_;
    float* xd = x_.f32();
    float* xn = xn_.f32();
    normalize(ffn_input(), l.ffn_norm, l.ffn_norm_b, n, xn);
    if (!c.has_predictors()) {
        // x += residual_scale * post_norm(W_down (act(W_gate xn) * W_up xn) + b_down), or without a
        // gate W_down act(W_up xn + b_up) + b_down (Session::feed_forward)
        const int activation = plugin_activation(c.block.ffn_activation);
        if (c.block.ffn_gate) {
            matmul(l.ffn_gate, xn, n, gate_.f32());
            matmul(l.ffn_up, xn, n, up_.f32());
            ctx_.run("activate", api.si_cuda_activate, activation, gate_.f32(), static_cast<const float*>(up_.f32()),
                     n * c.n_ff);
        } else {
            matmul(l.ffn_up, xn, n, gate_.f32());
            add_bias(gate_.f32(), l.ffn_up_b, c.n_ff);
            ctx_.run("activate", api.si_cuda_activate, activation, gate_.f32(), static_cast<const float*>(nullptr),
                     n * c.n_ff);
        }
        matmul(l.ffn_down, gate_.f32(), n, xn);
        add_bias(xn, l.ffn_down_b, c.n_embd);
        add_residual(l.ffn_post_norm);
        return;
    }
    if (l.n_hot != c.n_ff) {
        throw ArgumentError("a dense FFN on the GPU needs every neuron of layer " + std::to_string(il) +
                            " there; the placement keeps " + std::to_string(c.n_ff - l.n_hot) + " on the CPU");
    }
    // Every neuron j: h_j = relu(gate_j . xn) * up_j . xn (relu(up) for bamboo; relu(up_j . xn + b_j)
    // without a gate), then x += sum_j h_j down_t[j] + b_down, the sum added by ffn_down straight
    // into the residual.
    const int32_t* all = nullptr;  // no row list and no count: every row, in order
    gate_up(l, all, all, c.n_ff, nullptr, xn);
    ctx_.run("ffn_down", api.si_cuda_ffn_down, l.ffn_down.type, static_cast<const void*>(l.ffn_down.data.data()),
             c.n_ff, c.n_embd, all, all, c.n_ff, static_cast<const float*>(gate_.f32()), n, xd);
    add_bias(xd, l.ffn_down_b, c.n_embd);
}

void GpuForward::gate_up(const DeviceModel::Layer& l, const int32_t* rows, const int32_t* count, int64_t max_count,
                         const uint8_t* mask, const float* xn) {
    const ModelConfig& c = weights_->model().config();
    // Without a gate, ffn_gate holds up's rows (the ReLU's projection) and there is no second one.
    ctx_.run("ffn_gate_up", ctx_.api().si_cuda_ffn_gate_up, l.ffn_gate.type,
             static_cast<const void*>(l.ffn_gate.data.data()), l.ffn_up_b.as<const float>(), l.ffn_up.type,
             static_cast<const void*>(l.ffn_up.data.data()), l.n_hot, c.n_embd, rows, count, max_count, mask, xn, n_,
             c.block.up_activation == Activation::relu ? 1 : 0, gate_.f32());
}

void GpuForward::sparse_ffn(int64_t il, float* scores, float* xn_host) {
    const ModelConfig& c = weights_->model().config();
    const PluginApi& api = ctx_.api();
    const DeviceModel::Layer& l = weights_->layer(il);
    const int64_t n = n_;
    float* xd = x_.f32();
    const float* input = ffn_input();
    const bool split = l.n_hot < c.n_ff;  // the CPU's cold neurons need the scores and xn
    const int64_t xn_offset = handoff_offset(n, c.n_ff);
    float* score_rows = up_.f32();
    float* xn = split ? up_.f32() + xn_offset : xn_.f32();
    // The predictor reads the FFN's input before the norm: score = fc2 relu(fc1 input).
    ctx_.run("ffn_predict", api.si_cuda_ffn_predict, l.fc1.type, static_cast<const void*>(l.fc1.data.data()),
             l.fc1.rows, c.n_embd, l.fc2.type, static_cast<const void*>(l.fc2.data.data()), c.n_ff, input, n,
             predictor_hidden_.f32(), score_rows);
    normalize(input, l.ffn_norm, l.ffn_norm_b, n, xn);
    if (split) {  // one copy (one wait for the device) for both
        host_handoff_.resize(static_cast<size_t>(xn_offset + n * c.n_embd));
        ctx_.download(host_handoff_.data(), score_rows, floats(xn_offset + n * c.n_embd));
        std::memcpy(scores, host_handoff_.data(), floats(n * c.n_ff));
        std::memcpy(xn_host, host_handoff_.data() + xn_offset, floats(n * c.n_embd));
    }
    add_bias(xd, l.ffn_down_b, c.n_embd);  // once, whichever neurons fire where
    if (l.n_hot == 0) return;
    // The hot neurons active for any token of the batch, as positions in the hot list (the
    // rows of the layer's hot matrices), with a mask of the tokens each is active for.
    int32_t* rows = rows_.as<int32_t>();
    int32_t* count = rows_count_.as<int32_t>();
    uint8_t* mask = mask_.as<uint8_t>();
    ctx_.run("ffn_select", api.si_cuda_ffn_select, static_cast<const float*>(score_rows), n, c.n_ff,
             c.sparse_threshold, l.hot_ids.as<const int32_t>(), l.n_hot, rows, count, mask,
             active_counts_.as<int32_t>() + il);
    gate_up(l, rows, count, l.n_hot, mask, xn);
    ctx_.run("ffn_down", api.si_cuda_ffn_down, l.ffn_down.type, static_cast<const void*>(l.ffn_down.data.data()),
             l.n_hot, c.n_embd, static_cast<const int32_t*>(rows), static_cast<const int32_t*>(count), l.n_hot,
             static_cast<const float*>(gate_.f32()), n, xd);
    sparse_ran_ = true;
}

void GpuForward::add_to_hidden(const float* y) {
    const int64_t values = n_ * weights_->model().config().n_embd;
    ctx_.upload(attn_out_.data(), y, floats(values));  // attn_out_ is free between layers
    // Only PowerInfer layers hand a part over, and their residual scale is 1 (blocks_the_gpu_lacks).
    ctx_.run("add", ctx_.api().si_cuda_add, x_.f32(), static_cast<const float*>(attn_out_.f32()), values, 1.0f);
}

void GpuForward::add_hot_active_counts(std::vector<int64_t>& active) {
    if (!sparse_ran_) return;
    const int64_t n_layer = weights_->model().config().n_layer;
    std::vector<int32_t> counts(static_cast<size_t>(n_layer), 0);
    ctx_.download(counts.data(), active_counts_.data(), counts.size() * sizeof(int32_t));
    for (int64_t il = weights_->first_gpu_layer(); il < n_layer; ++il) {
        if (weights_->layer(il).n_hot > 0) active[static_cast<size_t>(il)] += counts[static_cast<size_t>(il)];
    }
}

void GpuForward::output(int64_t first_kept, float* logits) {
    const ModelConfig& c = weights_->model().config();
    const int64_t kept = n_ - first_kept;
    if (kept == 0) return;
    normalize(x_.f32() + first_kept * c.n_embd, weights_->output_norm(), weights_->output_norm_b(), kept,
              xn_.f32());
    matmul(weights_->output(), xn_.f32(), kept, logits_.f32());
    ctx_.download(logits, logits_.data(), floats(kept * c.n_vocab));
    // MiniCPM's logit scale and Gemma's softcap, on the host as the CPU path applies them (Session).
    if (c.block.logit_scale != 1.0f) {
        const float inverse_logit_scale = 1.0f / c.block.logit_scale;
        for (int64_t i = 0; i < kept * c.n_vocab; ++i) logits[i] *= inverse_logit_scale;
    }
    if (const float cap = c.block.final_logit_softcap; cap > 0.0f) {
        for (int64_t i = 0; i < kept * c.n_vocab; ++i) logits[i] = cap * std::tanh(logits[i] / cap);
    }
}

}  // namespace si::gpu
