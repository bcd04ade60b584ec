// RoPE's rotation speeds and magnitude for a model, from its RopeScaling and frequency factors
// (model/weights.h), as ggml's CPU rope computes them for llama.cpp (docs/rope-scaling.md):
// scaling changes, per pair, how fast its angle grows with the position and, for YaRN, the
// length of cos and sin, never the rotation itself (cpu/norm.h's rope).
#pragma once

#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace si {

struct RopeFrequencies {
    // Per pair i < rope_dim / 2: the angle at position p is p * inverse[i] (unscaled:
    // base^(-2i / rope_dim)).
    std::vector<double> inverse;
    // What cos and sin are multiplied by: attn_factor, times YaRN's 1 + 0.1 ln(factor).
    double magnitude = 1.0;
};

// base^(-2i / rope_dim) per pair i < rope_dim / 2: unscaled RoPE's speeds (and what the
// sliding layers of a model such as Gemma 3 turn by, with their own base).
std::vector<double> unscaled_rope_frequencies(double base, int64_t rope_dim);

// In double, as the engine computes the angles (ggml: float).
RopeFrequencies rope_frequencies(const ModelConfig& config, const std::vector<float>& freq_factors);

}  // namespace si
