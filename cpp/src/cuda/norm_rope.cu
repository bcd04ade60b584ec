// RMSNorm, LayerNorm and RoPE (GGML's "normal" and NeoX modes), as cpp/src/cpu/norm.h computes
// them on the CPU; and the element-wise steps of a layer (a bias, the residual add, an FFN's
// activation).
#include <cuda_runtime.h>

#include "device_common.cuh"
#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace {

using namespace si_cuda;

constexpr int kNormThreads = 256;
constexpr int kRopeThreads = 128;
constexpr int kElementThreads = 256;

// One block per row: the sum of squares in float, per thread then in a fixed tree (the CPU
// sums in double; the difference is far below the tests' tolerance for rows of thousands).
// Each thread rereads the values it scales, so out may be x.
__global__ void __launch_bounds__(kNormThreads)
rms_norm_kernel(const float* x, const float* weight, int64_t n, float eps, float* out) {
    __shared__ float warp_sums[kNormThreads / kWarp];
    __shared__ float scale;
    const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
    float* dst = out + static_cast<int64_t>(blockIdx.x) * n;
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum = fmaf(row[i], row[i], sum);
    sum = warp_sum(sum);
    if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < kNormThreads / kWarp; ++w) total += warp_sums[w];
        scale = 1.0f / sqrtf(total / static_cast<float>(n) + eps);
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * scale * weight[i];
}

// One block per row: mean, then the mean square about it, each summed in float per thread and
// then in a fixed tree (the CPU sums in double). Each thread rereads the values it writes, so
// out may be x.
__global__ void __launch_bounds__(kNormThreads)
layer_norm_kernel(const float* x, const float* weight, const float* bias, int64_t n, float eps, float* out) {
    __shared__ float warp_sums[kNormThreads / kWarp];
    __shared__ float mean, scale;
    const float* row = x + static_cast<int64_t>(blockIdx.x) * n;
    float* dst = out + static_cast<int64_t>(blockIdx.x) * n;
    auto block_sum = [&](float sum) {  // the block's total, to thread 0
        sum = warp_sum(sum);
        if (threadIdx.x % kWarp == 0) warp_sums[threadIdx.x / kWarp] = sum;
        __syncthreads();
        float total = 0.0f;
        if (threadIdx.x == 0) {
            for (int w = 0; w < kNormThreads / kWarp; ++w) total += warp_sums[w];
        }
        return total;
    };
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += row[i];
    const float total = block_sum(sum);
    if (threadIdx.x == 0) mean = total / static_cast<float>(n);
    __syncthreads();  // mean is set, and warp_sums free again
    float squares = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = row[i] - mean;
        squares = fmaf(d, d, squares);
    }
    const float total_squares = block_sum(squares);
    if (threadIdx.x == 0) scale = 1.0f / sqrtf(total_squares / static_cast<float>(n) + eps);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = (row[i] - mean) * scale * weight[i] + bias[i];
}

// One thread per (token, head, pair i): the angle theta = pos * inverse_frequencies[i] in
// double, as the CPU computes it (positions reach thousands, where a float angle would be off
// by far more than the rounding of its cosine), then the pair turns. (A thread per pair
// looping over the heads took 9 us per call on an H200: one head's load after another.)
__global__ void __launch_bounds__(kRopeThreads)
rope_kernel(float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rope_dim,
            const int32_t* positions, const double* inverse_frequencies, double magnitude, bool halves) {
    const int64_t half = rope_dim / 2;
    const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (index >= n_tokens * n_heads * half) return;
    const int64_t i = index % half, head = index / half;  // head: token t's head h, t * n_heads + h
    const int64_t t = head / n_heads;
    const double theta = static_cast<double>(positions[t]) * inverse_frequencies[i];
    double s, c;
    sincos(theta, &s, &c);
    const float sin_f = static_cast<float>(s * magnitude), cos_f = static_cast<float>(c * magnitude);
    // Pair i: (2i, 2i + 1) in the normal mode, (i, i + half) in NeoX's.
    float* first = x + head * head_dim + (halves ? i : 2 * i);
    const int64_t partner = halves ? half : 1;
    const float x0 = first[0], x1 = first[partner];
    first[0] = x0 * cos_f - x1 * sin_f;
    first[partner] = x0 * sin_f + x1 * cos_f;
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t n_rows, int64_t n) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_rows * n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        y[i] += bias[i % n];
    }
}

__global__ void add_kernel(float* y, const float* x, int64_t n, float scale) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        y[i] += scale * x[i];
    }
}

// The CPU's formulas (session.cpp): GELU's tanh form as x sigmoid(2u).
__device__ __forceinline__ float activation_of(int activation, float x) {
    switch (activation) {
        case SI_CUDA_ACTIVATION_SILU: return x / (1.0f + expf(-x));
        case SI_CUDA_ACTIVATION_GELU_TANH: {
            constexpr float kTwoSqrt2OverPi = 1.5957691216f;
            return x / (1.0f + expf(-kTwoSqrt2OverPi * (x + 0.044715f * x * x * x)));
        }
        default: return fmaxf(x, 0.0f);  // SI_CUDA_ACTIVATION_RELU
    }
}

__global__ void activate_kernel(int activation, float* x, const float* factor, int64_t n) {
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const float a = activation_of(activation, x[i]);
        x[i] = factor != nullptr ? a * factor[i] : a;
    }
}

// Grid-stride kernels need no more blocks than fill the GPU a few times over.
unsigned int element_blocks(int64_t n) {
    const int64_t blocks = (n + kElementThreads - 1) / kElementThreads;
    return static_cast<unsigned int>(blocks < 65536 ? blocks : 65536);
}

// The checks and launch of both norms: LayerNorm where there is a bias, RMSNorm otherwise.
int normalize_rows(si_cuda_context* ctx, const char* what, const float* x, const float* weight, const float* bias,
                   int64_t n_rows, int64_t n, float eps, float* out, char* err, size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (n_rows < 0 || n_rows > INT32_MAX || n <= 0) {
        return invalid(err, err_len, "%s: %lld rows of %lld values", what, static_cast<long long>(n_rows),
                       static_cast<long long>(n));
    }
    if (n_rows == 0) return 0;
    if (x == nullptr || weight == nullptr || out == nullptr) {
        return invalid(err, err_len, "%s: x, weight and out must not be null", what);
    }
    const unsigned int blocks = static_cast<unsigned int>(n_rows);
    if (bias != nullptr) {
        layer_norm_kernel<<<blocks, kNormThreads, 0, ctx->stream>>>(x, weight, bias, n, eps, out);
    } else {
        rms_norm_kernel<<<blocks, kNormThreads, 0, ctx->stream>>>(x, weight, n, eps, out);
    }
    return launched(what, err, err_len);
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_rms_norm(si_cuda_context* ctx, const float* x, const float* weight, int64_t n_rows,
                                 int64_t n, float eps, float* out, char* err, size_t err_len) {
    return normalize_rows(ctx, "si_cuda_rms_norm", x, weight, nullptr, n_rows, n, eps, out, err, err_len);
}

SI_CUDA_API int si_cuda_layer_norm(si_cuda_context* ctx, const float* x, const float* weight, const float* bias,
                                   int64_t n_rows, int64_t n, float eps, float* out, char* err, size_t err_len) {
    if (bias == nullptr) return invalid(err, err_len, "si_cuda_layer_norm: bias must not be null");
    return normalize_rows(ctx, "si_cuda_layer_norm", x, weight, bias, n_rows, n, eps, out, err, err_len);
}

SI_CUDA_API int si_cuda_rope(si_cuda_context* ctx, float* x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                             int64_t rope_dim, const int32_t* positions, const double* inverse_frequencies,
                             double magnitude, int layout, char* err, size_t err_len) {
    const char* what = "si_cuda_rope";
    int rc = enter(ctx, err, err_len);
    if (rc == 0) rc = check_tokens(what, n_tokens, err, err_len);
    if (rc != 0) return rc;
    if (n_heads <= 0 || head_dim <= 0 || rope_dim < 0 || rope_dim > head_dim || rope_dim % 2 != 0) {
        return invalid(err, err_len, "%s: %lld heads of %lld values, rope_dim %lld (even, <= head_dim)", what,
                       static_cast<long long>(n_heads), static_cast<long long>(head_dim),
                       static_cast<long long>(rope_dim));
    }
    if (layout != SI_CUDA_ROPE_ADJACENT_PAIRS && layout != SI_CUDA_ROPE_HALVES) {
        return invalid(err, err_len, "%s: layout %d (SI_CUDA_ROPE_ADJACENT_PAIRS or SI_CUDA_ROPE_HALVES)", what,
                       layout);
    }
    const int64_t pairs = n_tokens * n_heads * (rope_dim / 2);
    if (pairs == 0) return 0;
    if (x == nullptr || positions == nullptr || inverse_frequencies == nullptr) {
        return invalid(err, err_len, "%s: x, positions and inverse_frequencies must not be null", what);
    }
    if (!aligned(inverse_frequencies, alignof(double))) {
        return invalid(err, err_len, "%s: inverse_frequencies misaligned for doubles", what);
    }
    rope_kernel<<<blocks_for(pairs, kRopeThreads), kRopeThreads, 0, ctx->stream>>>(
        x, n_tokens, n_heads, head_dim, rope_dim, positions, inverse_frequencies, magnitude,
        layout == SI_CUDA_ROPE_HALVES);
    return launched(what, err, err_len);
}

SI_CUDA_API int si_cuda_add_bias(si_cuda_context* ctx, float* y, const float* bias, int64_t n_rows, int64_t n,
                                 char* err, size_t err_len) {
    const char* what = "si_cuda_add_bias";
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (n_rows < 0 || n <= 0) {
        return invalid(err, err_len, "%s: %lld rows of %lld values", what, static_cast<long long>(n_rows),
                       static_cast<long long>(n));
    }
    if (n_rows == 0) return 0;
    if (y == nullptr || bias == nullptr) return invalid(err, err_len, "%s: a null buffer", what);
    add_bias_kernel<<<element_blocks(n_rows * n), kElementThreads, 0, ctx->stream>>>(y, bias, n_rows, n);
    return launched(what, err, err_len);
}

SI_CUDA_API int si_cuda_add(si_cuda_context* ctx, float* y, const float* x, int64_t n, float scale, char* err,
                            size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (n < 0) return invalid(err, err_len, "si_cuda_add: n = %lld", static_cast<long long>(n));
    if (n == 0) return 0;
    if (y == nullptr || x == nullptr) return invalid(err, err_len, "si_cuda_add: a null buffer");
    add_kernel<<<element_blocks(n), kElementThreads, 0, ctx->stream>>>(y, x, n, scale);
    return launched("si_cuda_add", err, err_len);
}

SI_CUDA_API int si_cuda_activate(si_cuda_context* ctx, int activation, float* x, const float* factor, int64_t n,
                                 char* err, size_t err_len) {
    const char* what = "si_cuda_activate";
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (activation != SI_CUDA_ACTIVATION_SILU && activation != SI_CUDA_ACTIVATION_GELU_TANH &&
        activation != SI_CUDA_ACTIVATION_RELU) {
        return invalid(err, err_len, "%s: activation %d (SI_CUDA_ACTIVATION_SILU, _GELU_TANH or _RELU)", what,
                       activation);
    }
    if (n < 0) return invalid(err, err_len, "%s: n = %lld", what, static_cast<long long>(n));
    if (n == 0) return 0;
    if (x == nullptr) return invalid(err, err_len, "%s: x must not be null", what);
    activate_kernel<<<element_blocks(n), kElementThreads, 0, ctx->stream>>>(activation, x, factor, n);
    return launched(what, err, err_len);
}

}  // extern "C"
