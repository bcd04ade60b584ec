// RMSNorm, LayerNorm and RoPE over rows of floats, for the CPU's forward pass.
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

// out[t] = (x[t] - mean) / sqrt(var + eps) * weight + bias (LayerNorm, variance over n as
// PyTorch's and GGML's), for `rows` rows of n values; mean and variance in double.
inline void layer_norm_rows(const float* x, const float* weight, const float* bias, int64_t rows, int64_t n,
                            float eps, float* out) {
    for (int64_t t = 0; t < rows; ++t) {
        const float* xr = x + t * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += xr[i];
        const double mean = sum / static_cast<double>(n);
        double squares = 0.0;
        for (int64_t i = 0; i < n; ++i) squares += (xr[i] - mean) * (xr[i] - mean);
        const float scale = static_cast<float>(1.0 / std::sqrt(squares / static_cast<double>(n) + eps));
        const float shift = static_cast<float>(mean);
        for (int64_t i = 0; i < n; ++i) out[t * n + i] = (xr[i] - shift) * scale * weight[i] + bias[i];
    }
}

// RoPE over a head's first rope_dim values: pair i turns by the angle whose cosine and sine
// are cos[i], sin[i], i < rope_dim / 2. Which values make pair i is the layout's business:
//   adjacent_pairs: (x[2i], x[2i+1]), GGML's "normal" mode, for which llama files are converted;
//   halves:         (x[i], x[i + rope_dim/2]), GGML's NeoX mode (BlockSpec::rope_layout).
inline void rope(float* head, int64_t rope_dim, const float* cos, const float* sin, bool halves) {
    const int64_t half = rope_dim / 2;
    const int64_t step = halves ? 1 : 2, partner = halves ? half : 1;
    for (int64_t i = 0; i < half; ++i) {
        float* first = head + i * step;
        const float x0 = first[0], x1 = first[partner];
        first[0] = x0 * cos[i] - x1 * sin[i];
        first[partner] = x0 * sin[i] + x1 * cos[i];
    }
}

}  // namespace si
