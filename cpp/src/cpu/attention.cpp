#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace si {

KvCache::KvCache(int64_t n_layers, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx)
    : n_head_kv_(n_head_kv), head_dim_(head_dim), positions_((n_ctx + kKeyBlock - 1) / kKeyBlock * kKeyBlock) {
    // The callers bound n_ctx (2^20) and the config's sizes, so the product cannot overflow;
    // refuse before allocating what cannot fit.
    const uint64_t values = static_cast<uint64_t>(n_layers) * static_cast<uint64_t>(positions_) *
                            static_cast<uint64_t>(n_head_kv * head_dim);
    const std::string what = "a KV cache of " + std::to_string(n_layers) + " layers x n_ctx=" +
                             std::to_string(n_ctx) + " x " + std::to_string(n_head_kv * head_dim) + " K and V values";
    require_memory(what, values * 4);
    k_ = ZeroedBuffer(static_cast<size_t>(values) * 2, what);
    v_ = ZeroedBuffer(static_cast<size_t>(values) * 2, what);
}

void KvCache::store(int64_t layer, int64_t pos, const float* k, const float* v) {
    const int64_t hd = head_dim_;
    for (int64_t h = 0; h < n_head_kv_; ++h) {
        // The key into its block's lane (kernels.h, KeyScoresFn), the value as a row.
        uint16_t* key = reinterpret_cast<uint16_t*>(k_.data()) + offset(layer, h) + pos / kKeyBlock * hd * kKeyBlock +
                        pos % kKeyBlock;
        uint16_t* value = reinterpret_cast<uint16_t*>(v_.data()) + offset(layer, h) + pos * hd;
        for (int64_t d = 0; d < hd; ++d) {
            key[d * kKeyBlock] = fp32_to_fp16(k[h * hd + d]);
            value[d] = fp32_to_fp16(v[h * hd + d]);
        }
    }
}

void attention(ThreadPool& pool, const KernelTable& kernels, const KvCache& cache, int64_t layer,
               const AttentionShape& shape, const float* q, int64_t n, int64_t n_past, float* scratch, float* out) {
    // A job is one token and up to kAttentionHeads of the query heads that share a KV head
    // (grouped-query attention): each cached key and value, read once, serves them all. The
    // scores come from the keys' transposed blocks (kernels.h, KeyScoresFn), the values go in
    // through the gathered axpy (what one axpy per key gives), so that a head's result does
    // not depend on its company or the batch.
    const int64_t hd = shape.head_dim, n_head_kv = shape.n_head_kv, group = shape.n_head / n_head_kv;
    const int64_t row = shape.n_head * hd;  // of q and out
    const int64_t head_sets = (group + kAttentionHeads - 1) / kAttentionHeads;  // per KV head
    const int64_t positions = cache.positions();
    const float scale = shape.scale;
    const GatherAxpyFn value_rows = gather_axpy(kernels, DType::F16);
    const int64_t jobs = n * n_head_kv * head_sets;
    pool.run([&](int ith, int nth) {
        float* scores = scratch + static_cast<size_t>(ith) * attention_scratch_floats(positions);  // [head][key]
        int64_t begin, end;
        ThreadPool::split(jobs, ith, nth, &begin, &end);
        for (int64_t job = begin; job < end; ++job) {
            const int64_t t = job / (n_head_kv * head_sets), kvh = job / head_sets % n_head_kv;
            const int64_t h0 = kvh * group + job % head_sets * kAttentionHeads;  // first query head
            const int heads = static_cast<int>(std::min(kAttentionHeads, (kvh + 1) * group - h0));
            const int64_t n_keys = n_past + t + 1;  // causal: positions up to this token's own
            // A sliding window starts at `first`; the scores start at its key block, whose
            // keys before `first` are left out of the softmax. scores[p] is position base + p.
            const int64_t first = shape.window > 0 ? std::max<int64_t>(0, n_keys - shape.window) : 0;
            const int64_t base = first / kKeyBlock * kKeyBlock;
            kernels.key_scores(hd, n_keys - base, cache.keys(layer, kvh) + base * hd, q + t * row + h0 * hd, hd, heads,
                               scores, positions);
            const uint16_t* values = cache.values(layer, kvh) + base * hd;
            for (int g = 0; g < heads; ++g) {
                float* score = scores + g * positions;
                float max_score = -std::numeric_limits<float>::infinity();
                for (int64_t p = first - base; p < n_keys - base; ++p) {
                    score[p] *= scale;
                    max_score = std::max(max_score, score[p]);
                }
                float total = 0.0f;
                for (int64_t p = first - base; p < n_keys - base; ++p) {
                    score[p] = std::exp(score[p] - max_score);
                    total += score[p];
                }
                float* head_out = out + t * row + (h0 + g) * hd;
                std::fill(head_out, head_out + hd, 0.0f);
                const float inv_total = 1.0f / total;
                float weights[kMaxGatherRows];
                const void* value_ptrs[kMaxGatherRows];
                for (int64_t p = first - base; p < n_keys - base; p += kMaxGatherRows) {
                    const int rows = static_cast<int>(std::min<int64_t>(kMaxGatherRows, n_keys - base - p));
                    for (int r = 0; r < rows; ++r) {
                        weights[r] = score[p + r] * inv_total;
                        value_ptrs[r] = values + (p + r) * hd;
                    }
                    value_rows(hd, weights, value_ptrs, rows, head_out);
                }
            }
        }
    });
}

}  // namespace si
