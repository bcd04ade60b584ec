// Causal grouped-query attention of a batch of new tokens over an F16 KV cache, with the
// semantics of the CPU's attention (cpp/src/cpu/attention.cpp): token t at position
// n_past + t sees the cache rows 0..n_past + t (or, in a sliding window of w positions, the
// last w of them); query head h reads KV head h / (n_head / n_head_kv); scores are
// scale * q . k, softmaxed in float.
#include <cuda_runtime.h>

#include "device_common.cuh"
#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace {

using namespace si_cuda;

constexpr int kAttentionWarps = 8;
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / kWarp;  // head values a lane holds
constexpr int kStoreThreads = 256;

// K and V rows of the new tokens into the cache at rows n_past.., rounded to half (nearest
// even, as fp32_to_fp16 on the CPU).
// offset: n_past * kv_dim, the first value of row n_past.
__global__ void store_kv_kernel(const float* k, const float* v, uint16_t* k_cache, uint16_t* v_cache,
                                int64_t offset, int64_t n_values) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_values) return;
    k_cache[offset + i] = float_to_half(k[i]);
    v_cache[offset + i] = float_to_half(v[i]);
}

// One block per (query head, token). Each warp walks every kAttentionWarps-th key with an
// online softmax (a running maximum m, a running sum l of exp(score - m) and the output
// accumulator rescaled whenever m grows), so the scores need no buffer of the context's
// length; lane j holds head values j, j + 32, ... Then the warps' (m, l, acc) are merged in
// warp order. Warp 0 always has the first key the token sees, so the merged maximum is finite.
__global__ void __launch_bounds__(kAttentionWarps * kWarp)
attention_kernel(const float* q, const uint16_t* k_cache, const uint16_t* v_cache, int64_t n_past, int n_head,
                 int n_head_kv, int head_dim, float scale, int64_t window, float* out) {
    __shared__ float warp_max_s[kAttentionWarps];
    __shared__ float warp_sum_s[kAttentionWarps];
    __shared__ float warp_acc[kAttentionWarps][kMaxHeadDim];
    const int h = static_cast<int>(blockIdx.x);
    const int64_t t = blockIdx.y;
    const int lane = static_cast<int>(threadIdx.x % kWarp), warp = static_cast<int>(threadIdx.x / kWarp);
    const int kv_head = h / (n_head / n_head_kv);
    const int64_t kv_dim = static_cast<int64_t>(n_head_kv) * head_dim;
    const float* q_row = q + (t * n_head + h) * head_dim;

    float qv[kPerLane], acc[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        const int j = lane + i * kWarp;
        qv[i] = j < head_dim ? q_row[j] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = minus_infinity(), l = 0.0f;
    const int64_t n_keys = n_past + t + 1;  // causal: up to this token's own position
    const int64_t first_key = window > 0 && n_keys > window ? n_keys - window : 0;
    for (int64_t p = first_key + warp; p < n_keys; p += kAttentionWarps) {
        const uint16_t* k_row = k_cache + p * kv_dim + static_cast<int64_t>(kv_head) * head_dim;
        const uint16_t* v_row = v_cache + p * kv_dim + static_cast<int64_t>(kv_head) * head_dim;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
            const int j = lane + i * kWarp;
            if (j < head_dim) dot = fmaf(qv[i], half_to_float(k_row[j]), dot);
        }
        const float score = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, score);
        const float rescale = expf(m - m_new);  // 0 for the first key (m = -inf)
        const float weight = expf(score - m_new);
        l = l * rescale + weight;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) {
            const int j = lane + i * kWarp;
            if (j < head_dim) acc[i] = fmaf(weight, half_to_float(v_row[j]), acc[i] * rescale);
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_max_s[warp] = m;
        warp_sum_s[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
        const int j = lane + i * kWarp;
        if (j < head_dim) warp_acc[warp][j] = acc[i];
    }
    __syncthreads();
    for (int j = static_cast<int>(threadIdx.x); j < head_dim; j += blockDim.x) {
        float m_all = minus_infinity();
        for (int w = 0; w < kAttentionWarps; ++w) m_all = fmaxf(m_all, warp_max_s[w]);
        float total = 0.0f, value = 0.0f;
        for (int w = 0; w < kAttentionWarps; ++w) {
            // A warp that saw no key has m = -inf, l = 0 and acc = 0: factor 0, adds nothing.
            const float factor = expf(warp_max_s[w] - m_all);
            total += warp_sum_s[w] * factor;
            value += warp_acc[w][j] * factor;
        }
        out[(t * n_head + h) * head_dim + j] = value / total;
    }
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_attention(si_cuda_context* ctx, const float* q, const float* k, const float* v,
                                  uint16_t* k_cache, uint16_t* v_cache, int64_t n_ctx, int64_t n_past,
                                  int64_t n_tokens, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                  float scale, int64_t window, float* out, char* err, size_t err_len) {
    const char* what = "si_cuda_attention";
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc != 0) return rc;
    if (n_head <= 0 || n_head_kv <= 0 || n_head > 65535 || n_head % n_head_kv != 0) {
        return invalid(err, err_len, "%s: %lld query heads cannot share %lld KV heads", what,
                       static_cast<long long>(n_head), static_cast<long long>(n_head_kv));
    }
    if (head_dim <= 0 || head_dim > kMaxHeadDim) {
        return invalid(err, err_len, "%s: head_dim %lld (the kernel takes 1..%d)", what,
                       static_cast<long long>(head_dim), kMaxHeadDim);
    }
    if (window < 0) return invalid(err, err_len, "%s: window %lld", what, static_cast<long long>(window));
    if (n_past < 0 || n_tokens > 65535 || n_past + n_tokens > n_ctx) {
        return invalid(err, err_len, "%s: %lld cached + %lld new tokens do not fit n_ctx %lld", what,
                       static_cast<long long>(n_past), static_cast<long long>(n_tokens),
                       static_cast<long long>(n_ctx));
    }
    if (q == nullptr || out == nullptr || k_cache == nullptr || v_cache == nullptr || ((k == nullptr) != (v == nullptr))) {
        return invalid(err, err_len, "%s: q, out and the caches must not be null; k and v come together", what);
    }
    if (!aligned(k_cache, 2) || !aligned(v_cache, 2) || !aligned(q, 4) || !aligned(out, 4) ||
        !aligned(k, 4) || !aligned(v, 4)) {
        return invalid(err, err_len, "%s: a misaligned buffer (halves at even addresses, floats at multiples of 4)",
                       what);
    }
    const int64_t kv_dim = n_head_kv * head_dim;
    if (k != nullptr) {
        const int64_t n_values = n_tokens * kv_dim;
        store_kv_kernel<<<blocks_for(n_values, kStoreThreads), kStoreThreads, 0, ctx->stream>>>(
            k, v, k_cache, v_cache, n_past * kv_dim, n_values);
    }
    const dim3 grid(static_cast<unsigned int>(n_head), static_cast<unsigned int>(n_tokens));
    attention_kernel<<<grid, kAttentionWarps * kWarp, 0, ctx->stream>>>(
        q, k_cache, v_cache, n_past, static_cast<int>(n_head), static_cast<int>(n_head_kv),
        static_cast<int>(head_dim), scale, window, out);
    return launched(what, err, err_len);
}

}  // extern "C"
