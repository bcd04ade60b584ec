// RMSNorm, shared by the attention and feed-forward blocks.
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

}  // namespace si
