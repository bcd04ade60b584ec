#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace si {

namespace {

constexpr double kPi = 3.14159265358979323846;

// The pair index, as a real number, whose rotation makes `turns` full turns over the original
// context: solving original_context / (2 pi base^(2i / rope_dim)) = turns for i (ggml's
// ggml_rope_yarn_corr_dim).
double yarn_pair_for_turns(const ModelConfig& c, double turns) {
    return static_cast<double>(c.rope_dim) *
           std::log(static_cast<double>(c.rope_scaling.original_context) / (turns * 2.0 * kPi)) /
           (2.0 * std::log(static_cast<double>(c.rope_base)));
}

}  // namespace

std::vector<double> unscaled_rope_frequencies(double base, int64_t rope_dim) {
    std::vector<double> inverse;
    for (int64_t i = 0; i < rope_dim / 2; ++i) {
        inverse.push_back(std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim)));
    }
    return inverse;
}

RopeFrequencies rope_frequencies(const ModelConfig& c, const std::vector<float>& freq_factors) {
    const RopeScaling& s = c.rope_scaling;
    const bool yarn = s.type == RopeScalingType::yarn;
    // Linear scaling and YaRN's interpolated pairs turn 1 / factor times as fast.
    const double interpolated = 1.0 / static_cast<double>(s.factor);
    // YaRN keeps the speed of the pairs that turn more than beta_fast times over the original
    // context (those up to pair `low`), interpolates those that turn less than beta_slow times
    // (from pair `high` on), and mixes the two on a linear ramp between (ggml's
    // ggml_rope_yarn_corr_dims and rope_yarn_ramp, with llama.cpp's ext_factor of 1 for YaRN).
    double low = 0.0, high = 0.0;
    if (yarn) {
        low = std::max(0.0, std::floor(yarn_pair_for_turns(c, s.beta_fast)));
        high = std::min(static_cast<double>(c.rope_dim - 1), std::ceil(yarn_pair_for_turns(c, s.beta_slow)));
    }
    RopeFrequencies r;
    const std::vector<double> unscaled = unscaled_rope_frequencies(c.rope_base, c.rope_dim);
    for (int64_t i = 0; i < c.rope_dim / 2; ++i) {
        double inverse = unscaled[static_cast<size_t>(i)];
        if (!freq_factors.empty()) inverse /= freq_factors[static_cast<size_t>(i)];
        double speed = interpolated;
        if (yarn) {
            const double ramp = (static_cast<double>(i) - low) / std::max(0.001, high - low);
            const double kept = 1.0 - std::clamp(ramp, 0.0, 1.0);
            speed = interpolated * (1.0 - kept) + kept;
        }
        r.inverse.push_back(inverse * speed);
    }
    // YaRN lengthens cos and sin by 1 + 0.1 ln(factor) (ggml's rope_yarn) for a factor > 1;
    // llama.cpp's context cancels it for a factor <= 1 (llama_context's yarn_attn_factor).
    r.magnitude = s.attn_factor;
    if (yarn && s.factor > 1.0f) r.magnitude *= 1.0 + 0.1 * std::log(static_cast<double>(s.factor));
    return r;
}

}  // namespace si
