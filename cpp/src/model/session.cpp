#include "model/session.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <string>

#include "common/errors.h"
#include "common/memory.h"
#include "gpu/device_model.h"
#include "gpu/gpu_forward.h"
#include "model/norm.h"

namespace si {

namespace {

// Weight bytes a batched matrix product keeps hot while every token group passes over them
// (about half a core's L2 on current x86 and Arm cores).
constexpr size_t kMatmulChunkBytes = 256 * 1024;
// Chunks per thread a matrix product is cut into at least, so that the threads finish together.
constexpr uint64_t kMatmulChunksPerThread = 4;
// Bound on a session's context: far above any model here, it stops absurd requests.
constexpr int64_t kMaxContext = 1 << 20;

// RoPE as GGML's "normal" mode, which llama GGUF files are converted for: each adjacent
// pair (x[2i], x[2i+1]) of a head's first rope_dim values turns by the angle whose cosine
// and sine are cos[i], sin[i] (computed once per token in Session::eval).
void rope(float* head, int64_t rope_dim, const float* cos, const float* sin) {
    for (int64_t i = 0; i < rope_dim / 2; ++i) {
        const float x0 = head[2 * i], x1 = head[2 * i + 1];
        head[2 * i] = x0 * cos[i] - x1 * sin[i];
        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
    }
}

// One matrix of a Session::matmul call: its rows times the batch's prepared activations.
struct MatmulJob {
    const Matrix* w;
    float* y;
    const uint8_t* act;
    size_t stride;
    RowDotFn dot;
    RowDot4Fn dot4;
    Rows8DotFn rows8;   // set for an interleaved matrix (model.h) split in groups of eight
    Rows4DotFn rows4;   // four float rows at a time, where the level has it
};

// y[t][r] for rows [r0, r1) of the job and tokens [0, n): token groups of four pass over the
// rows in turn, with the fastest kernel the matrix has. No software prefetching: every kernel
// here reads its rows in address order, which the hardware prefetchers follow, and prefetch
// instructions on top measured slower (a matrix-vector product from DRAM, 2 threads, Zen 4:
// interleaved Q4_0 26.7 GB/s without against 15.6 with, Q4_0 rows one by one 21.0 against 19.2).
void multiply_rows(const MatmulJob& job, int64_t r0, int64_t r1, int64_t n) {
    const Matrix& w = *job.w;
    auto tokens_from = [n](int64_t t) { return static_cast<int>(std::min<int64_t>(4, n - t)); };
    if (job.rows8 != nullptr) {
        for (int64_t t = 0; t < n; t += 4) {
            for (int64_t r = r0; r < r1; r += 8) {
                job.rows8(w.cols, w.interleaved + static_cast<size_t>(r) * w.row_bytes, job.act + t * job.stride,
                          job.stride, tokens_from(t), job.y + t * w.rows + r, w.rows);
            }
        }
        return;
    }
    if (job.rows4 != nullptr) {
        // One token goes row by row (the four-row kernel gives a row what it gives it alone):
        // four adjacent rows at a time are four short interleaved streams, which the hardware
        // prefetchers follow badly (an F16 matrix-vector product from DRAM: 18.6 GB/s against
        // 30.2 row by row). A batch takes four rows at a time, from L2 after its first pass.
        const int64_t rows_per_call = n == 1 ? 1 : 4;
        for (int64_t t = 0; t < n; t += 4) {
            for (int64_t r = r0; r < r1; r += rows_per_call) {
                job.rows4(w.cols, w.row(r), w.stride, static_cast<int>(std::min(rows_per_call, r1 - r)),
                          job.act + t * job.stride, job.stride, tokens_from(t), job.y + t * w.rows + r, w.rows);
            }
        }
        return;
    }
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        for (int64_t r = r0; r < r1; ++r) {
            float out[4];
            job.dot4(w.cols, w.row(r), job.act + t * job.stride, job.stride, out);
            for (int k = 0; k < 4; ++k) job.y[(t + k) * w.rows + r] = out[k];
        }
    }
    for (; t < n; ++t) {
        for (int64_t r = r0; r < r1; ++r) job.y[t * w.rows + r] = job.dot(w.cols, w.row(r), job.act + t * job.stride);
    }
}

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
    // Two caches of 2-byte halves for the CPU layers: n_ctx is at most 2^20 and the config's
    // sizes are bounded at load, so the product cannot overflow; refuse before allocating
    // what cannot fit.
    const uint64_t kv_dim = static_cast<uint64_t>(c.n_head_kv * c.head_dim);
    cache_positions_ = (n_ctx + kKeyBlock - 1) / kKeyBlock * kKeyBlock;
    const uint64_t cache_floats =
        static_cast<uint64_t>(first_gpu_layer_) * static_cast<uint64_t>(cache_positions_) * kv_dim;
    const std::string cache = "a KV cache of " + std::to_string(first_gpu_layer_) + " layers x n_ctx=" +
                              std::to_string(n_ctx) + " x " + std::to_string(kv_dim) + " K and V values";
    require_memory(cache, cache_floats * 4);
    k_cache_ = ZeroedBuffer(static_cast<size_t>(cache_floats) * 2, cache);
    v_cache_ = ZeroedBuffer(static_cast<size_t>(cache_floats) * 2, cache);
    for (int64_t i = 0; i < c.rope_dim / 2; ++i) {
        rope_inv_freq_.push_back(std::pow(static_cast<double>(c.rope_base),
                                          -2.0 * static_cast<double>(i) / static_cast<double>(c.rope_dim)));
    }
}

Session::~Session() = default;

void Session::ensure_batch_capacity(int64_t n) {
    if (n <= batch_capacity_) return;
    const ModelConfig& c = model_->config();
    const int64_t kv_dim = c.n_head_kv * c.head_dim;
    const int64_t widest = std::max({c.n_embd, c.n_ff, max_rank_});
    // Dimensions are at most 2^20 and n at most kMaxBatch, so these sums cannot overflow.
    // Per token: x, xn, q, attn_out; k, v; gate, up and the active list (n_ff int32s). Per
    // thread: attention scores, a down row and a tile's range sums. One token's range sums.
    const uint64_t per_thread = static_cast<uint64_t>(kAttentionHeads * cache_positions_ +
                                                      (1 + kDownTokenTile) * c.n_embd);
    const uint64_t floats = static_cast<uint64_t>(n) *
        (4 * c.n_embd + 2 * kv_dim + 3 * c.n_ff + max_rank_ + c.rope_dim) +
        static_cast<uint64_t>(pool_.size()) * per_thread + static_cast<uint64_t>(kNeuronRanges * c.n_embd);
    const uint64_t activation_bytes = static_cast<uint64_t>(kMaxMatmulOutputs) * n * widest * 4;
    require_memory("scratch buffers for a batch of " + std::to_string(n) + " tokens",
                   floats * 4 + activation_bytes);
    auto sized = [](std::vector<float>& v, int64_t count) { v.assign(static_cast<size_t>(count), 0.0f); };
    sized(x_, n * c.n_embd);
    sized(xn_, n * c.n_embd);
    sized(q_, n * c.n_embd);
    sized(k_, n * kv_dim);
    sized(v_, n * kv_dim);
    sized(attn_out_, n * c.n_embd);
    sized(gate_, n * c.n_ff);
    sized(predictor_hidden_, n * max_rank_);
    active_.resize(static_cast<size_t>(n));
    for (std::vector<int32_t>& a : active_) a.reserve(static_cast<size_t>(c.n_ff));
    sized(up_, n * c.n_ff);
    sized(rope_cos_, n * (c.rope_dim / 2));
    sized(rope_sin_, n * (c.rope_dim / 2));
    sized(scores_, static_cast<int64_t>(pool_.size()) * kAttentionHeads * cache_positions_);
    sized(down_rows_, static_cast<int64_t>(pool_.size()) * c.n_embd);
    sized(down_tiles_, static_cast<int64_t>(pool_.size()) * kDownTokenTile * c.n_embd);
    sized(range_sums_, kNeuronRanges * c.n_embd);
    // One slot per dot format a matmul may need at once; F32 (4 bytes) is the widest.
    activation_.assign(static_cast<size_t>(kMaxMatmulOutputs * n * widest * 4), 0);
    batch_capacity_ = n;
}

void Session::truncate(int64_t n_past) {
    if (n_past < 0 || n_past > n_past_) {
        throw ArgumentError("truncate: n_past must be between 0 and " + std::to_string(n_past_));
    }
    n_past_ = n_past;
}

Session::PreparedInput Session::prepare_input(const Matrix& w, const float* x, int64_t n, int slot,
                                              bool convert) {
    const size_t slot_bytes = activation_.size() / kMaxMatmulOutputs;
    PreparedInput in{activation_.data() + static_cast<size_t>(slot) * slot_bytes,
                     activation_bytes(w.type, w.cols)};
    if (convert) {
        for (int64_t t = 0; t < n; ++t) {
            prepare_activation(kernels_, w.type, x + t * w.cols, in.data + t * in.stride, w.cols);
        }
    }
    return in;
}

void Session::matmul(std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n) {
    // Quantise x once per dot format the weights need (the formats differ only when the
    // matrices' types do), then cut the matrices' rows into chunks, each dotted with every
    // group of four tokens before the next: the chunk stays in L2 and a token group's
    // activations in L1, instead of every row streaming all the batch's activations. The
    // threads take the next chunk left, so a thread that memory serves more slowly holds no
    // other up at the end; interleaved matrices (model.h) go in groups of eight rows.
    MatmulJob jobs[kMaxMatmulOutputs];
    DType prepared_formats[kMaxMatmulOutputs];
    int n_jobs = 0, n_formats = 0;
    uint64_t total_bytes = 0;
    for (const MatmulOutput& out : outputs) {
        const DType format = activation_format(out.w->type);
        int slot = 0;
        while (slot < n_formats && prepared_formats[slot] != format) ++slot;
        const bool fresh = slot == n_formats;
        if (fresh) prepared_formats[n_formats++] = format;
        const PreparedInput in = prepare_input(*out.w, x, n, slot, fresh);
        MatmulJob& job = jobs[n_jobs++];
        job.w = out.w;
        job.y = out.y;
        job.act = in.data;
        job.stride = in.stride;
        job.dot = row_dot(kernels_, out.w->type);
        job.dot4 = row_dot4(kernels_, out.w->type);
        job.rows8 = out.w->interleaved != nullptr && out.w->rows % 8 == 0 ? rows8_dot(kernels_, out.w->type) : nullptr;
        // Decoding too: a token's result must not depend on the batch (kernels.h).
        job.rows4 = rows4_dot(kernels_, out.w->type);
        total_bytes += static_cast<uint64_t>(out.w->rows) * out.w->row_bytes;
    }
    // Chunks of at most kMatmulChunkBytes, and at least kMatmulChunksPerThread per thread.
    const uint64_t least_chunks = static_cast<uint64_t>(pool_.width()) * kMatmulChunksPerThread;
    const uint64_t chunk_bytes =
        std::max<uint64_t>(1, std::min<uint64_t>(kMatmulChunkBytes, total_bytes / least_chunks));
    int64_t chunk_rows[kMaxMatmulOutputs], first_chunk[kMaxMatmulOutputs + 1] = {0};
    for (int j = 0; j < n_jobs; ++j) {
        const int64_t unit = jobs[j].rows8 != nullptr ? 8 : 1;
        chunk_rows[j] = std::max<int64_t>(unit, static_cast<int64_t>(chunk_bytes / jobs[j].w->row_bytes) / unit * unit);
        first_chunk[j + 1] = first_chunk[j] + (jobs[j].w->rows + chunk_rows[j] - 1) / chunk_rows[j];
    }
    std::atomic<int64_t> next_chunk{0};
    pool_.run([&](int, int) {
        for (int64_t c; (c = next_chunk.fetch_add(1, std::memory_order_relaxed)) < first_chunk[n_jobs];) {
            int j = 0;
            while (c >= first_chunk[j + 1]) ++j;
            const int64_t r0 = (c - first_chunk[j]) * chunk_rows[j];
            multiply_rows(jobs[j], r0, std::min(jobs[j].w->rows, r0 + chunk_rows[j]), n);
        }
    });
}

void Session::attention(int layer, int64_t n_tokens) {
    // A job is one token and up to kAttentionHeads of the query heads that share a KV head
    // (grouped-query attention): each cached key and value, read once, serves them all. The
    // scores come from the keys' transposed blocks (kernels.h, KeyScoresFn), the values go in
    // through the gathered axpy (what one axpy per key gives), so that a head's result does
    // not depend on its company or the batch.
    const ModelConfig& c = model_->config();
    const int64_t hd = c.head_dim, group = c.n_head / c.n_head_kv;
    const int64_t head_sets = (group + kAttentionHeads - 1) / kAttentionHeads;  // per KV head
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const GatherAxpyFn value_rows = gather_axpy(kernels_, DType::F16);
    const int64_t jobs = n_tokens * c.n_head_kv * head_sets;
    pool_.run([&](int ith, int nth) {
        float* scores = scores_.data() + static_cast<size_t>(ith) * kAttentionHeads * cache_positions_;  // [head][key]
        int64_t begin, end;
        ThreadPool::split(jobs, ith, nth, &begin, &end);
        for (int64_t job = begin; job < end; ++job) {
            const int64_t t = job / (c.n_head_kv * head_sets), kvh = job / head_sets % c.n_head_kv;
            const int64_t h0 = kvh * group + job % head_sets * kAttentionHeads;  // first query head
            const int heads = static_cast<int>(std::min(kAttentionHeads, (kvh + 1) * group - h0));
            const int64_t n_keys = n_past_ + t + 1;  // causal: positions up to this token's own
            kernels_.key_scores(hd, n_keys, cached_keys(layer, kvh), q_.data() + t * c.n_embd + h0 * hd, hd, heads,
                                scores, cache_positions_);
            const uint16_t* values = cached_values(layer, kvh);
            for (int g = 0; g < heads; ++g) {
                float* score = scores + g * cache_positions_;
                float max_score = -std::numeric_limits<float>::infinity();
                for (int64_t p = 0; p < n_keys; ++p) {
                    score[p] *= scale;
                    max_score = std::max(max_score, score[p]);
                }
                float total = 0.0f;
                for (int64_t p = 0; p < n_keys; ++p) {
                    score[p] = std::exp(score[p] - max_score);
                    total += score[p];
                }
                float* out = attn_out_.data() + t * c.n_embd + (h0 + g) * hd;
                std::fill(out, out + hd, 0.0f);
                const float inv_total = 1.0f / total;
                float weights[kMaxGatherRows];
                const void* value_ptrs[kMaxGatherRows];
                for (int64_t p = 0; p < n_keys; p += kMaxGatherRows) {
                    const int rows = static_cast<int>(std::min<int64_t>(kMaxGatherRows, n_keys - p));
                    for (int r = 0; r < rows; ++r) {
                        weights[r] = score[p + r] * inv_total;
                        value_ptrs[r] = values + (p + r) * hd;
                    }
                    value_rows(hd, weights, value_ptrs, rows, out);
                }
            }
        }
    });
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
    if (gpu_ && count_neurons_) {
        throw UnsupportedError("neuron counting runs on the CPU only in this version: use a "
                               "session with device='cpu' to profile");
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

        // The rotation angles depend on the position alone: compute them once per token,
        // theta_i = pos * base^(-2i / rope_dim), in double for large positions.
        const int64_t half_rope = c.rope_dim / 2;
        for (int64_t t = 0; t < n && first_gpu_layer_ > 0; ++t) {
            const double pos = static_cast<double>(n_past_ + t);
            for (int64_t i = 0; i < half_rope; ++i) {
                const double theta = pos * rope_inv_freq_[static_cast<size_t>(i)];
                rope_cos_[static_cast<size_t>(t * half_rope + i)] = static_cast<float>(std::cos(theta));
                rope_sin_[static_cast<size_t>(t * half_rope + i)] = static_cast<float>(std::sin(theta));
            }
        }
        if (first_gpu_layer_ < c.n_layer) gpu_->begin_batch(n, n_past_);

        // The CPU layers come first; the hidden state then goes up once for the GPU layers.
        for (int64_t il = 0; il < c.n_layer; ++il) {
            throw_if_cancelled();  // a long prompt stops within one layer's work
            if (il < first_gpu_layer_) {
                const CoreShare cores(pool_);  // taken anew each layer, as other sessions come and go
                cpu_attention(static_cast<int>(il), n);
                feed_forward(static_cast<int>(il), n);
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
            rms_norm_rows(x_.data() + first_kept * c.n_embd, model_->output_norm().data(),
                          n - first_kept, c.n_embd, c.rms_eps, xn_.data());
            matmul({{&model_->output(), dst}}, xn_.data(), n - first_kept);
        }
        n_past_ += n;
    }
}

void Session::cpu_attention(int il, int64_t n) {
    // x += Wo * attention(rope(Wq xn), rope(Wk xn), Wv xn), K and V stored at n_past..
    const ModelConfig& c = model_->config();
    const LayerWeights& l = model_->layers()[static_cast<size_t>(il)];
    const int64_t kv_dim = c.n_head_kv * c.head_dim, half_rope = c.rope_dim / 2;
    rms_norm_rows(x_.data(), l.attn_norm.data(), n, c.n_embd, c.rms_eps, xn_.data());
    matmul({{&l.wq, q_.data()}, {&l.wk, k_.data()}, {&l.wv, v_.data()}}, xn_.data(), n);
    const int64_t hd = c.head_dim;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t pos = n_past_ + t;
        const float* cos = rope_cos_.data() + t * half_rope;
        const float* sin = rope_sin_.data() + t * half_rope;
        for (int64_t h = 0; h < c.n_head; ++h) rope(q_.data() + t * c.n_embd + h * c.head_dim, c.rope_dim, cos, sin);
        for (int64_t h = 0; h < c.n_head_kv; ++h) rope(k_.data() + t * kv_dim + h * c.head_dim, c.rope_dim, cos, sin);
        for (int64_t h = 0; h < c.n_head_kv; ++h) {
            // The key into its block's lane (kernels.h, KeyScoresFn), the value as a row.
            uint16_t* key = cached_keys(il, h) + pos / kKeyBlock * hd * kKeyBlock + pos % kKeyBlock;
            uint16_t* value = cached_values(il, h) + pos * hd;
            for (int64_t d = 0; d < hd; ++d) {
                key[d * kKeyBlock] = fp32_to_fp16(k_[static_cast<size_t>(t * kv_dim + h * hd + d)]);
                value[d] = fp32_to_fp16(v_[static_cast<size_t>(t * kv_dim + h * hd + d)]);
            }
        }
    }
    attention(il, n);
    matmul({{&l.wo, xn_.data()}}, attn_out_.data(), n);
    for (int64_t i = 0; i < n * c.n_embd; ++i) x_[i] += xn_[i];
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

}  // namespace si
