// RMSNorm and RoPE over rows of floats, for the CPU's forward pass.
#pragma once

#include <cmath>
#include <cstdint>

namespace si {

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, for `rows` rows of n values; the sum of
// squares in double so long rows lose nothing.
inline void rms_norm_rows(const float* x, const float* weight, int64_t rows, int64_t n, float eps,
                          float* out) {
    for (int64_t t = 0; t < rows; ++t) {
        const float* xr = x + t * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(xr[i]) * xr[i];
        const float scale = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(n) + eps));
        for (int64_t i = 0; i < n; ++i) out[t * n + i] = xr[i] * scale * weight[i];
    }
}

// RoPE as GGML's "normal" mode, which llama GGUF files are converted for: each adjacent pair
// (x[2i], x[2i+1]) of a head's first rope_dim values turns by the angle whose cosine and sine
// are cos[i], sin[i].
inline void rope(float* head, int64_t rope_dim, const float* cos, const float* sin) {
    for (int64_t i = 0; i < rope_dim / 2; ++i) {
        const float x0 = head[2 * i], x1 = head[2 * i + 1];
        head[2 * i] = x0 * cos[i] - x1 * sin[i];
        head[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
    }
}

}  // namespace si
