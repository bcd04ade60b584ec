// The sparse FFN of PowerInfer files on the GPU (cpp/src/session/session.cpp and
// cpp/src/cpu/neuron_sum.cpp are the CPU's): which neurons are active, gate and up of those neurons only, and the down projection as a
// sum of the active neurons' ffn_down_t rows scaled by their activations.
//
// Every result is computed in a fixed order (the active list in ascending order, each
// output value summed by one thread in list order, partial sums combined in warp order), so
// a run gives the same bits as the last; no atomics on data.
#include <cuda_runtime.h>

#include "device_common.cuh"
#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace {

using namespace si_cuda;

constexpr int kSelectThreads = 1024;  // one block compacts the whole list
constexpr int kGateUpRowsPerBlock = 4;
constexpr int kDownWarps = 8;  // warps sharing one 32-column tile of the output
constexpr int kDownWarpRows = kWarp;  // row ids per warp in the down projection
constexpr int kDownSliceRows = kDownWarps * kDownWarpRows;
static_assert(kDownSliceRows == SI_CUDA_DOWN_SLICE_ROWS && kMaxTokens == SI_CUDA_DOWN_SLICE_TOKENS,
              "the scratch of si_cuda_ffn_down as plugin_api.h states it");
constexpr int kSumThreads = 256;

// One block walks the candidates 1024 at a time: each thread decides one candidate, a
// ballot and a scan over the warps' counts give its place, so the list comes out in
// ascending order (as the CPU's per-token lists do).
__global__ void __launch_bounds__(kSelectThreads)
select_kernel(const float* scores, int n_tokens, int64_t n_ff, float threshold, const int32_t* candidates,
              int64_t n_candidates, int32_t* rows, int32_t* count, uint8_t* mask, int32_t* n_active,
              int* flags) {
    __shared__ int warp_offset[kSelectThreads / kWarp];
    __shared__ int chunk_total;
    const int lane = static_cast<int>(threadIdx.x % kWarp), warp = static_cast<int>(threadIdx.x / kWarp);
    const int n_warps = static_cast<int>(blockDim.x / kWarp);
    int64_t base = 0;
    int own_active = 0;  // (token, candidate) pairs this thread found active
    for (int64_t start = 0; start < n_candidates; start += blockDim.x) {
        const int64_t k = start + threadIdx.x;
        int64_t id = -1;
        bool active = false;
        if (k < n_candidates) {
            id = candidates != nullptr ? candidates[k] : k;
            if (id < 0 || id >= n_ff) {
                atomicOr(flags, kFlagCandidate);
                id = -1;
            } else {
                for (int t = 0; t < n_tokens && !active; ++t) active = scores[t * n_ff + id] >= threshold;
            }
        }
        const unsigned int ballot = __ballot_sync(kFullMask, active);
        if (lane == 0) warp_offset[warp] = __popc(ballot);
        __syncthreads();
        if (warp == 0) {
            // Exclusive scan of the warps' counts (at most 32 warps: one lane each).
            const int own = lane < n_warps ? warp_offset[lane] : 0;
            int inclusive = own;
#pragma unroll
            for (int offset = 1; offset < kWarp; offset <<= 1) {
                const int other = __shfl_up_sync(kFullMask, inclusive, offset);
                if (lane >= offset) inclusive += other;
            }
            if (lane < n_warps) warp_offset[lane] = inclusive - own;
            if (lane == kWarp - 1) chunk_total = inclusive;
        }
        __syncthreads();
        if (active) {
            const int64_t pos = base + warp_offset[warp] + __popc(ballot & ((1u << lane) - 1u));
            rows[pos] = static_cast<int32_t>(k);
            if (mask != nullptr || n_active != nullptr) {
                for (int t = 0; t < n_tokens; ++t) {
                    const bool on = scores[t * n_ff + id] >= threshold;
                    if (mask != nullptr) mask[t * n_candidates + pos] = on ? 1 : 0;
                    own_active += on ? 1 : 0;
                }
            }
        }
        base += chunk_total;
        __syncthreads();  // warp_offset and chunk_total are rewritten by the next chunk
    }
    if (threadIdx.x == 0) *count = static_cast<int32_t>(base);
    if (n_active != nullptr) {  // the same for every thread: the barrier below is safe
        int sum = own_active;
#pragma unroll
        for (int offset = kWarp / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(kFullMask, sum, offset);
        if (lane == 0) warp_offset[warp] = sum;  // free since the loop's last barrier
        __syncthreads();
        if (threadIdx.x == 0) {
            int total = 0;
            for (int w = 0; w < n_warps; ++w) total += warp_offset[w];
            *n_active = total;
        }
    }
}

// One warp per listed neuron: g = gate row . x[t] (+ its bias), u = up row . x[t] for every
// token, then h = relu(g) * u (or * relu(u)), or relu(g) without an up; the CPU skips up when
// g <= 0, which gives the same 0.
__global__ void __launch_bounds__(kGateUpRowsPerBlock * kWarp)
gate_up_kernel(int gate_type, const uint8_t* gate, size_t gate_row_bytes, bool gate_vec, const float* relu_bias,
               int up_type, const uint8_t* up, size_t up_row_bytes, bool up_vec, int64_t n_rows, int64_t n_embd,
               const int32_t* ids, const int32_t* count, int64_t capacity, const uint8_t* mask,
               const float* x, int n_tokens, bool relu_up, float* h, int* flags) {
    const int64_t k = static_cast<int64_t>(blockIdx.x) * kGateUpRowsPerBlock + threadIdx.x / kWarp;
    const int lane = static_cast<int>(threadIdx.x % kWarp);
    if (k >= listed_count(count, capacity, flags)) return;  // whole warps leave together
    const int64_t r = ids != nullptr ? ids[k] : k;
    if (r < 0 || r >= n_rows) {
        if (lane == 0) atomicOr(flags, kFlagRowId);
        return;
    }
    float g[kMaxTokens], u[kMaxTokens];
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) g[t] = u[t] = 0.0f;
    row_dot(gate_type, gate + r * gate_row_bytes, n_embd, x, n_tokens, gate_vec, g);
    if (up != nullptr) row_dot(up_type, up + r * up_row_bytes, n_embd, x, n_tokens, up_vec, u);
    const float bias = relu_bias != nullptr ? relu_bias[r] : 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
        if (t < n_tokens) {
            const float gs = relu_bias != nullptr ? warp_sum(g[t]) + bias : warp_sum(g[t]);
            float us = up != nullptr ? warp_sum(u[t]) : 1.0f;
            if (relu_up && us < 0.0f) us = 0.0f;
            const bool active = mask == nullptr || mask[t * capacity + k] != 0;
            if (lane == 0) h[t * capacity + k] = active && gs > 0.0f ? gs * us : 0.0f;
        }
    }
}

// y[t][c] += sum over listed k, in order, of h[t][k] * down_t[rows[k]][c], in two launches.
// down_kernel: a block owns 32 output columns (one quantised block of every row; a warp reads
// a row's 32 values) and a slice of kDownSliceRows row ids; warp w of it sums, per column and
// token, the listed entries whose row falls in the w-th kDownWarpRows of the slice, in list
// order; the warps' sums are added in warp order. Rows are assigned by id, not by place in
// the list, so a token's sum depends only on its own nonzero h: the same bits whether the
// list is its own or a batch's union (batch invariance, as on the CPU: cpp/src/cpu/kernels.h).
// With one slice the block adds into y; otherwise it writes the slice's sums to the
// context's scratch and down_sum_kernel adds the slices into y in slice order. Any list
// works (any order, repeats): each warp scans it, 32 entries per load, for its rows.
// (One block per 32 columns summing every row, as before, left most of the GPU idle: a
// dense MiniCPM-S layer's down projection took longer than all its other kernels together.)
__global__ void __launch_bounds__(kDownWarps * kWarp)
down_kernel(int type, const uint8_t* down_t, size_t row_bytes, int64_t n_rows, int64_t n_embd,
            const int32_t* ids, const int32_t* count, int64_t capacity, const float* h, int n_tokens,
            float* y, float* slice_sums, int* flags) {
    __shared__ float partial[kDownWarps][kMaxTokens][kWarp];
    const int lane = static_cast<int>(threadIdx.x % kWarp), warp = static_cast<int>(threadIdx.x / kWarp);
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarp + lane;
    const bool in_range = col < n_embd;  // F32/F16 rows need not be a multiple of 32 long
    const int64_t n = listed_count(count, capacity, flags);
    const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kDownSliceRows + warp * kDownWarpRows;
    // Lists are checked for bad ids by one warp of the grid only: each warp reads all of it.
    const bool reports = blockIdx.x == 0 && blockIdx.y == 0 && warp == 0;
    float acc[kMaxTokens];
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.0f;
    // Without a list, entry k is row k: only this warp's own 32 entries can be its rows.
    const int64_t scan_begin = ids != nullptr ? 0 : first_row;
    const int64_t scan_end = ids != nullptr ? n : (first_row + kDownWarpRows < n ? first_row + kDownWarpRows : n);
    for (int64_t k0 = scan_begin; k0 < scan_end; k0 += kWarp) {
        const int64_t k = k0 + lane;
        int64_t r = -1;
        if (k < scan_end) {
            r = ids != nullptr ? ids[k] : k;
            if (r < 0 || r >= n_rows) {
                if (reports) atomicOr(flags, kFlagRowId);
                r = -1;
            }
        }
        unsigned int mine = __ballot_sync(kFullMask, r >= first_row && r < first_row + kDownWarpRows);
        if (mine == 0) continue;  // the same in every lane: the warp stays together
        float hk[kMaxTokens];  // lane i holds entry k0 + i's h for every token
#pragma unroll
        for (int t = 0; t < kMaxTokens; ++t) hk[t] = (t < n_tokens && (mine >> lane & 1u)) ? h[t * capacity + k] : 0.0f;
        // Four entries at a time: their loads are in flight together, then the sums in list order.
        while (mine != 0) {
            int src[4];
            float w[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                src[u] = mine != 0 ? __ffs(mine) - 1 : -1;
                if (mine != 0) mine &= mine - 1;
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                w[u] = 0.0f;
                if (src[u] >= 0) {  // the same in every lane
                    const long long r_u = __shfl_sync(kFullMask, static_cast<long long>(r), src[u]);
                    if (in_range) w[u] = row_element(type, down_t + r_u * row_bytes, col);
                }
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                if (src[u] < 0) continue;
#pragma unroll
                for (int t = 0; t < kMaxTokens; ++t) {
                    const float ht = __shfl_sync(kFullMask, hk[t], src[u]);
                    if (t < n_tokens && ht != 0.0f) acc[t] = fmaf(ht, w[u], acc[t]);  // as the CPU: zero h is skipped
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) partial[warp][t][lane] = acc[t];
    __syncthreads();
    if (warp == 0 && in_range) {
        for (int t = 0; t < n_tokens; ++t) {
            float s = 0.0f;
            for (int w = 0; w < kDownWarps; ++w) s += partial[w][t][lane];
            if (gridDim.y == 1) {
                y[t * n_embd + col] += s;
            } else {
                slice_sums[(static_cast<int64_t>(blockIdx.y) * kMaxTokens + t) * n_embd + col] = s;
            }
        }
    }
}

// y[t][c] += the slices' sums for (t, c), added in slice order. One thread per value.
__global__ void down_sum_kernel(const float* slice_sums, int n_slices, int64_t n_embd, int n_tokens, float* y) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_tokens * n_embd) return;
    const int64_t t = i / n_embd, col = i % n_embd;
    float s = 0.0f;
    for (int slice = 0; slice < n_slices; ++slice) s += slice_sums[(slice * kMaxTokens + t) * n_embd + col];
    y[i] += s;
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_ffn_select(si_cuda_context* ctx, const float* scores, int64_t n_tokens, int64_t n_ff,
                                   float threshold, const int32_t* candidates, int64_t n_candidates,
                                   int32_t* rows, int32_t* count, uint8_t* mask, int32_t* n_active, char* err,
                                   size_t err_len) {
    const char* what = "si_cuda_ffn_select";
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0) rc = check_list(what, n_candidates, err, err_len);
    if (rc == 0 && (n_ff <= 0 || n_ff > INT32_MAX)) {
        rc = invalid(err, err_len, "%s: n_ff must be between 1 and 2^31 - 1, got %lld", what,
                     static_cast<long long>(n_ff));
    }
    if (rc == 0 && candidates == nullptr && n_candidates != n_ff) {
        rc = invalid(err, err_len, "%s: without a candidate list n_candidates must be n_ff (%lld), got %lld",
                     what, static_cast<long long>(n_ff), static_cast<long long>(n_candidates));
    }
    if (rc == 0 && (scores == nullptr || rows == nullptr || count == nullptr)) {
        rc = invalid(err, err_len, "%s: scores, rows and count must not be null", what);
    }
    if (rc == 0 && n_active != nullptr && n_tokens * n_candidates > INT32_MAX) {
        rc = invalid(err, err_len, "%s: n_tokens x n_candidates must fit an int32 when n_active is asked for", what);
    }
    if (rc != 0) return rc;
    select_kernel<<<1, kSelectThreads, 0, ctx->stream>>>(scores, static_cast<int>(n_tokens), n_ff, threshold,
                                                         candidates, n_candidates, rows, count, mask, n_active,
                                                         ctx->flags);
    return launched(what, err, err_len);
}

SI_CUDA_API int si_cuda_ffn_gate_up(si_cuda_context* ctx, int gate_type, const void* gate, const float* relu_bias,
                                    int up_type, const void* up, int64_t n_rows, int64_t n_embd, const int32_t* rows,
                                    const int32_t* count, int64_t max_count, const uint8_t* mask,
                                    const float* x, int64_t n_tokens, int relu_up, float* h, char* err,
                                    size_t err_len) {
    const char* what = "si_cuda_ffn_gate_up";
    size_t gate_row_bytes = 0, up_row_bytes = 0;
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_matrix("si_cuda_ffn_gate_up (gate)", gate_type, gate, n_rows, n_embd, &gate_row_bytes, err, err_len);
    if (rc == 0 && up != nullptr) {
        rc = check_matrix("si_cuda_ffn_gate_up (up)", up_type, up, n_rows, n_embd, &up_row_bytes, err, err_len);
    }
    if (rc == 0) rc = check_input(what, gate_type, x, err, err_len);
    if (rc == 0 && up != nullptr) rc = check_input(what, up_type, x, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0) rc = check_list(what, max_count, err, err_len);
    if (rc == 0 && h == nullptr) rc = invalid(err, err_len, "%s: the output is null", what);
    if (rc != 0 || max_count == 0) return rc;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
        const int nt = static_cast<int>(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
        const float* xt = x + t0 * n_embd;
        gate_up_kernel<<<blocks_for(max_count, kGateUpRowsPerBlock), kGateUpRowsPerBlock * kWarp, 0, ctx->stream>>>(
            gate_type, static_cast<const uint8_t*>(gate), gate_row_bytes, vector_loads(gate_type, gate, n_embd, xt),
            relu_bias, up_type, static_cast<const uint8_t*>(up), up_row_bytes,
            up != nullptr && vector_loads(up_type, up, n_embd, xt), n_rows,
            n_embd, rows, count, max_count, mask != nullptr ? mask + t0 * max_count : nullptr, xt, nt,
            relu_up != 0, h + t0 * max_count, ctx->flags);
    }
    return launched(what, err, err_len);
}

SI_CUDA_API int si_cuda_ffn_down(si_cuda_context* ctx, int down_type, const void* down_t, int64_t n_rows,
                                 int64_t n_embd, const int32_t* rows, const int32_t* count, int64_t max_count,
                                 const float* h, int64_t n_tokens, float* y, char* err, size_t err_len) {
    const char* what = "si_cuda_ffn_down";
    size_t row_bytes = 0;
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_matrix(what, down_type, down_t, n_rows, n_embd, &row_bytes, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc == 0) rc = check_list(what, max_count, err, err_len);
    if (rc == 0 && (y == nullptr || (h == nullptr && max_count > 0))) {
        rc = invalid(err, err_len, "%s: h and y must not be null", what);
    }
    if (rc == 0 && n_rows > 65535LL * kDownSliceRows) {  // slices are the grid's second dimension
        rc = invalid(err, err_len, "%s: too many rows (%lld)", what, static_cast<long long>(n_rows));
    }
    if (rc != 0 || max_count == 0) return rc;
    const int64_t n_slices = (n_rows + kDownSliceRows - 1) / kDownSliceRows;
    float* slice_sums = nullptr;
    if (n_slices > 1) {
        rc = reserve_scratch(ctx, static_cast<size_t>(n_slices) * kMaxTokens * n_embd * sizeof(float), err, err_len);
        if (rc != 0) return rc;
        slice_sums = static_cast<float*>(ctx->scratch);
    }
    for (int64_t t0 = 0; t0 < n_tokens; t0 += kMaxTokens) {
        const int nt = static_cast<int>(n_tokens - t0 < kMaxTokens ? n_tokens - t0 : kMaxTokens);
        down_kernel<<<dim3(blocks_for(n_embd, kWarp), static_cast<unsigned int>(n_slices)), kDownWarps * kWarp, 0,
                      ctx->stream>>>(down_type, static_cast<const uint8_t*>(down_t), row_bytes, n_rows, n_embd, rows,
                                     count, max_count, h + t0 * max_count, nt, y + t0 * n_embd, slice_sums,
                                     ctx->flags);
        if (n_slices > 1) {
            down_sum_kernel<<<blocks_for(nt * n_embd, kSumThreads), kSumThreads, 0, ctx->stream>>>(
                slice_sums, static_cast<int>(n_slices), n_embd, nt, y + t0 * n_embd);
        }
    }
    return launched(what, err, err_len);
}

}  // extern "C"
