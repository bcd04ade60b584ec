// Causal self-attention on the CPU over a KV cache of IEEE halves: the cache's layout and how
// the work is shared among a pool's threads, next to the kernels it calls (kernels.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/memory.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"

namespace si {

// The keys and values of `n_layers` layers for up to n_ctx positions, in IEEE halves (half
// the memory and bandwidth of floats, as llama.cpp's default), per layer and KV head: the
// keys in transposed blocks of kKeyBlock positions (kernels.h, KeyScoresFn), the values as
// rows of head_dim. Memory is held only as far as the context has grown (ZeroedBuffer).
class KvCache {
public:
    KvCache() = default;
    // OutOfMemoryError, naming the cache, when it cannot fit.
    KvCache(int64_t n_layers, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx);

    // n_ctx rounded up to whole key blocks.
    int64_t positions() const { return positions_; }
    // Stores the K and V rows (n_head_kv x head_dim floats each) of position `pos` of `layer`.
    void store(int64_t layer, int64_t pos, const float* k, const float* v);
    const uint16_t* keys(int64_t layer, int64_t kv_head) const {
        return reinterpret_cast<const uint16_t*>(k_.data()) + offset(layer, kv_head);
    }
    const uint16_t* values(int64_t layer, int64_t kv_head) const {
        return reinterpret_cast<const uint16_t*>(v_.data()) + offset(layer, kv_head);
    }

private:
    size_t offset(int64_t layer, int64_t kv_head) const {
        return static_cast<size_t>((layer * n_head_kv_ + kv_head) * positions_ * head_dim_);
    }
    int64_t n_head_kv_ = 0, head_dim_ = 0, positions_ = 0;
    ZeroedBuffer k_, v_;
};

struct AttentionShape {
    int64_t n_head, n_head_kv, head_dim;
    float scale;         // of q.k: 1 / sqrt(head_dim) in most models
    int64_t window = 0;  // > 0: each token sees the last `window` positions, its own included
};

// The query heads one attention job serves (the four-row key product takes four).
constexpr int64_t kAttentionHeads = 4;
// The scratch floats attention needs per thread of the pool, for a cache of `positions`.
inline int64_t attention_scratch_floats(int64_t positions) { return kAttentionHeads * positions; }

// out[t] = softmax(scale q[t] K^T) V per query head, for the n tokens at positions n_past.. of
// `layer` (each sees the positions up to its own, which the cache holds already, or the last
// `window` of them);
// q and out are n rows of n_head x head_dim. scratch: pool.size() x attention_scratch_floats.
void attention(ThreadPool& pool, const KernelTable& kernels, const KvCache& cache, int64_t layer,
               const AttentionShape& shape, const float* q, int64_t n, int64_t n_past, float* scratch, float* out);

}  // namespace si
