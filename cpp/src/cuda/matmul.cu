// Weight matrix times a few tokens, dense or over a list of rows, and the sparse FFN's
// predictor (fc2 . relu(fc1 . x)) built from them.
//
// One warp per output row: at one to eight tokens a product reads each weight once and is
// bound by memory, so the kernel's job is to stream the row with wide, coalesced loads
// (device_common.cuh: row_dot) and reuse each dequantised weight for every token. x stays
// float32 and is read through the cache (every warp reads the same x).
#include <cuda_runtime.h>

#include "device_common.cuh"
#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace {

using namespace si_cuda;

constexpr int kRowsPerBlock = 4;  // warps (rows) per block of 128 threads

// y[t * ldy + k] = dot(row ids[k] (row k without ids) of w, x[t]) for k < the list's count,
// t < n_tokens <= kMaxTokens; relu: y = max(y, 0) (NaN stays NaN, as on the CPU).
__global__ void __launch_bounds__(kRowsPerBlock * kWarp)
matmul_kernel(int type, const uint8_t* w, size_t row_bytes, int64_t n_rows, int64_t cols,
              const int32_t* ids, const int32_t* count, int64_t capacity, const float* x,
              int n_tokens, bool vec, bool relu, float* y, int64_t ldy, int* flags) {
    const int64_t k = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
    const int lane = static_cast<int>(threadIdx.x % kWarp);
    // Whole warps leave together, so the shuffles below always see 32 lanes.
    if (k >= listed_count(count, capacity, flags)) return;
    const int64_t r = ids != nullptr ? ids[k] : k;
    if (r < 0 || r >= n_rows) {
        if (lane == 0) atomicOr(flags, kFlagRowId);
        return;
    }
    float acc[kMaxTokens];
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;
    row_dot(type, w + r * row_bytes, cols, x, n_tokens, vec, acc);
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
        if (t < n_tokens) {
            float s = warp_sum(acc[t]);
            if (relu && s < 0.0f) s = 0.0f;
            if (lane == 0) y[t * ldy + k] = s;
        }
    }
}

// The launches of one product, eight tokens at a time. Arguments are checked by the caller.
int launch_matmul(si_cuda_context* ctx, const char* what, int type, const void* w, size_t row_bytes,
                  int64_t n_rows, int64_t cols, const int32_t* ids, const int32_t* count,
                  int64_t capacity, const float* x, int64_t n_tokens, bool relu, float* y,
                  int64_t ldy, char* err, size_t err_len) {
    if (capacity == 0) return 0;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
        const int nt = static_cast<int>(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
        const float* xt = x + t0 * cols;
        matmul_kernel<<<blocks_for(capacity, kRowsPerBlock), kRowsPerBlock * kWarp, 0, ctx->stream>>>(
            type, static_cast<const uint8_t*>(w), row_bytes, n_rows, cols, ids, count, capacity, xt, nt,
            vector_loads(type, w, cols, xt), relu, y + t0 * ldy, ldy, ctx->flags);
    }
    return launched(what, err, err_len);
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_matmul(si_cuda_context* ctx, int type, const void* w, int64_t rows, int64_t cols,
                               const float* x, int64_t n_tokens, float* y, char* err, size_t err_len) {
    const char* what = "si_cuda_matmul";
    size_t row_bytes = 0;
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_matrix(what, type, w, rows, cols, &row_bytes, err, err_len);
    if (rc == 0) rc = check_input(what, type, x, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0 && rows > INT32_MAX) rc = invalid(err, err_len, "%s: too many rows", what);
    if (rc == 0 && y == nullptr) rc = invalid(err, err_len, "%s: the output is null", what);
    if (rc != 0) return rc;
    return launch_matmul(ctx, what, type, w, row_bytes, rows, cols, nullptr, nullptr, rows, x, n_tokens,
                         false, y, rows, err, err_len);
}

SI_CUDA_API int si_cuda_matmul_rows(si_cuda_context* ctx, int type, const void* w, int64_t rows, int64_t cols,
                                    const int32_t* row_ids, const int32_t* count, int64_t max_count,
                                    const float* x, int64_t n_tokens, float* y, char* err, size_t err_len) {
    const char* what = "si_cuda_matmul_rows";
    size_t row_bytes = 0;
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_matrix(what, type, w, rows, cols, &row_bytes, err, err_len);
    if (rc == 0) rc = check_input(what, type, x, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0) rc = check_list(what, max_count, err, err_len);
    if (rc == 0 && y == nullptr) rc = invalid(err, err_len, "%s: the output is null", what);
    if (rc != 0) return rc;
    return launch_matmul(ctx, what, type, w, row_bytes, rows, cols, row_ids, count, max_count, x, n_tokens,
                         false, y, max_count, err, err_len);
}

SI_CUDA_API int si_cuda_ffn_predict(si_cuda_context* ctx, int fc1_type, const void* fc1, int64_t rank,
                                    int64_t n_embd, int fc2_type, const void* fc2, int64_t n_ff,
                                    const float* x, int64_t n_tokens, float* hidden, float* scores,
                                    char* err, size_t err_len) {
    const char* what = "si_cuda_ffn_predict";
    size_t fc1_row_bytes = 0, fc2_row_bytes = 0;
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_matrix("si_cuda_ffn_predict (fc1)", fc1_type, fc1, rank, n_embd, &fc1_row_bytes, err, err_len);
    if (rc == 0) rc = check_matrix("si_cuda_ffn_predict (fc2)", fc2_type, fc2, n_ff, rank, &fc2_row_bytes, err, err_len);
    if (rc == 0) rc = check_input(what, fc1_type, x, err, err_len);
    if (rc == 0) rc = check_input("si_cuda_ffn_predict (hidden)", fc2_type, hidden, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0 && (rank > INT32_MAX || n_ff > INT32_MAX)) rc = invalid(err, err_len, "%s: too many rows", what);
    if (rc == 0 && scores == nullptr) rc = invalid(err, err_len, "%s: the output is null", what);
    if (rc != 0) return rc;
    // hidden = relu(fc1 . x), then scores = fc2 . hidden: in stream order, no wait between.
    rc = launch_matmul(ctx, what, fc1_type, fc1, fc1_row_bytes, rank, n_embd, nullptr, nullptr, rank, x,
                       n_tokens, true, hidden, rank, err, err_len);
    if (rc != 0) return rc;
    return launch_matmul(ctx, what, fc2_type, fc2, fc2_row_bytes, n_ff, rank, nullptr, nullptr, n_ff, hidden,
                         n_tokens, false, scores, n_ff, err, err_len);
}

}  // extern "C"
