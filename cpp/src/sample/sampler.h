// Token sampling: repetition penalty, then top-k, top-p, min-p filters, then temperature,
// then a draw from a seeded RNG. temperature <= 0 is greedy (argmax of the penalised logits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace si {

struct SamplerParams {
    float temperature = 0.8f;
    int32_t top_k = 40;          // <= 0: off
    float top_p = 0.95f;         // >= 1: off
    float min_p = 0.05f;         // <= 0: off
    float repeat_penalty = 1.0f; // 1: off
    int32_t repeat_last_n = 64;  // how many recent tokens the penalty looks at
    uint64_t seed = 0;
};

class Sampler {
public:
    explicit Sampler(const SamplerParams& params);  // ArgumentError for bad parameters
    // Picks a token from n_vocab logits (not modified).
    int32_t sample(const float* logits, int32_t n_vocab);
    // Records a token of the sequence (prompt or generated) for the repetition penalty.
    void accept(int32_t token);
    void reset();  // forgets history, reseeds
    const SamplerParams& params() const { return params_; }

private:
    using Candidate = std::pair<float, int32_t>;  // (logit, token id)

    void load_candidates(const float* logits, int32_t n_vocab);
    void apply_repeat_penalty();
    int32_t argmax() const;
    // Given candidates_[0, from) are the best, sorted, puts the next best in [from, to),
    // sorted best first (ties: lower id first); the rest follow in no particular order.
    void order_best(size_t from, size_t to);
    void keep_top_k();
    void keep_top_p();
    void keep_min_p();
    int32_t draw();
    double uniform01();

    SamplerParams params_;
    std::mt19937_64 rng_;
    std::deque<int32_t> recent_;
    std::vector<Candidate> candidates_;  // scratch, reused
    std::vector<int32_t> penalised_;     // scratch: distinct recent tokens
    std::vector<double> weights_;        // scratch: unnormalised probabilities
    bool sorted_ = false;                // candidates_ is in best-first order
};

}  // namespace si
