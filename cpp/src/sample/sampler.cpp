#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "common/errors.h"

namespace si {

namespace {

// Best first: higher logit, and the lower id among equal logits. A strict total order, so
// nth_element and sort leave the same arrangement on every standard library.
bool better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}

[[noreturn]] void bad_param(const char* name, double value, const char* rule) {
    std::ostringstream message;
    message << "sampler parameter " << name << " must be " << rule << ", got " << value;
    throw ArgumentError(message.str());
}

void validate(const SamplerParams& p) {
    if (!std::isfinite(p.temperature)) bad_param("temperature", p.temperature, "finite");
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad_param("top_p", p.top_p, "in (0, 1]");
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) bad_param("min_p", p.min_p, "in [0, 1]");
    if (!(p.repeat_penalty > 0.0f && std::isfinite(p.repeat_penalty)))
        bad_param("repeat_penalty", p.repeat_penalty, "finite and > 0");
    if (p.repeat_last_n < 0) bad_param("repeat_last_n", p.repeat_last_n, ">= 0");
}

}  // namespace

Sampler::Sampler(const SamplerParams& params) : params_(params), rng_(params.seed) {
    validate(params_);
}

void Sampler::reset() {
    recent_.clear();
    rng_.seed(params_.seed);
}

void Sampler::accept(int32_t token) {
    if (token < 0) throw ArgumentError("Sampler.accept: token id must be >= 0, got " +
                                       std::to_string(token));
    if (params_.repeat_last_n == 0) return;
    recent_.push_back(token);
    while (recent_.size() > static_cast<size_t>(params_.repeat_last_n)) recent_.pop_front();
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
    if (logits == nullptr || n_vocab <= 0)
        throw ArgumentError("Sampler.sample: logits must be a non-empty vector, got " +
                            std::to_string(n_vocab) + " values");
    load_candidates(logits, n_vocab);
    if (params_.temperature <= 0.0f) return argmax();
    keep_top_k();
    keep_top_p();
    keep_min_p();
    return draw();
}

void Sampler::load_candidates(const float* logits, int32_t n_vocab) {
    candidates_.resize(static_cast<size_t>(n_vocab));
    for (int32_t id = 0; id < n_vocab; ++id) candidates_[id] = {logits[id], id};
    sorted_ = false;
    apply_repeat_penalty();

    // A NaN can never be chosen; +inf becomes the largest float so that subtracting the
    // maximum below stays finite (inf - inf would be NaN).
    bool any_finite = false;
    for (Candidate& c : candidates_) {
        if (std::isnan(c.first)) c.first = -std::numeric_limits<float>::infinity();
        else if (c.first == std::numeric_limits<float>::infinity())
            c.first = std::numeric_limits<float>::max();
        any_finite = any_finite || std::isfinite(c.first);
    }
    if (!any_finite)
        throw ArgumentError("Sampler.sample: logits hold no finite value (all NaN or -inf)");
}

// As llama.cpp's repetition penalty: each distinct recent token once, a positive logit
// divided by the penalty and a negative one multiplied, so a penalty > 1 never raises it.
void Sampler::apply_repeat_penalty() {
    if (params_.repeat_penalty == 1.0f || recent_.empty()) return;
    penalised_.assign(recent_.begin(), recent_.end());
    std::sort(penalised_.begin(), penalised_.end());
    penalised_.erase(std::unique(penalised_.begin(), penalised_.end()), penalised_.end());
    for (int32_t id : penalised_) {
        if (id >= static_cast<int32_t>(candidates_.size())) break;
        float& logit = candidates_[id].first;
        logit = logit > 0.0f ? logit / params_.repeat_penalty : logit * params_.repeat_penalty;
    }
}

int32_t Sampler::argmax() const {
    // candidates_ is in id order here, so the strict comparison keeps the lowest id on ties.
    size_t best = 0;
    for (size_t i = 1; i < candidates_.size(); ++i)
        if (candidates_[i].first > candidates_[best].first) best = i;
    return candidates_[best].second;
}

void Sampler::order_best(size_t from, size_t to) {
    const auto first = candidates_.begin() + static_cast<std::ptrdiff_t>(from);
    const auto last = candidates_.begin() + static_cast<std::ptrdiff_t>(to);
    if (last != candidates_.end()) std::nth_element(first, last, candidates_.end(), better);
    std::sort(first, last, better);
}

void Sampler::keep_top_k() {
    const auto k = static_cast<size_t>(params_.top_k);
    if (params_.top_k <= 0 || k >= candidates_.size()) return;
    order_best(0, k);
    candidates_.resize(k);
    sorted_ = true;
}

// Nucleus: the smallest best-first prefix whose probability (softmax at temperature 1 over
// the remaining candidates) reaches top_p.
void Sampler::keep_top_p() {
    if (params_.top_p >= 1.0f) return;
    double best = -std::numeric_limits<double>::infinity();
    for (const Candidate& c : candidates_) best = std::max(best, double(c.first));
    double total = 0.0;
    for (const Candidate& c : candidates_) total += std::exp(c.first - best);
    const double target = params_.top_p * total;

    // The nucleus is usually a handful of tokens: order a growing best-first prefix until it
    // holds top_p of the mass, rather than sorting the whole vocabulary.
    double cumulative = 0.0;
    size_t i = 0;
    for (size_t ordered = 64;; ordered *= 4) {
        ordered = std::min(ordered, candidates_.size());
        if (!sorted_) order_best(i, ordered);
        for (; i < ordered; ++i) {
            cumulative += std::exp(candidates_[i].first - best);
            if (cumulative >= target) {
                candidates_.resize(i + 1);
                sorted_ = true;
                return;
            }
        }
        if (ordered == candidates_.size()) break;  // rounding kept the sum just under target
    }
    sorted_ = true;
}

// p >= min_p * p_max  <=>  logit >= max_logit + log(min_p): no softmax needed.
void Sampler::keep_min_p() {
    if (params_.min_p <= 0.0f) return;
    double best = candidates_.front().first;
    if (!sorted_)
        for (const Candidate& c : candidates_) best = std::max(best, double(c.first));
    const double threshold = best + std::log(double(params_.min_p));
    candidates_.erase(std::remove_if(candidates_.begin(), candidates_.end(),
                                     [threshold](const Candidate& c) { return c.first < threshold; }),
                      candidates_.end());
}

// Softmax at the temperature over what the filters kept, then an inverse-CDF draw. Done by
// hand (not std::discrete_distribution) so a seed gives the same tokens on every platform.
int32_t Sampler::draw() {
    double best = candidates_.front().first;
    for (const Candidate& c : candidates_) best = std::max(best, double(c.first));
    weights_.resize(candidates_.size());
    double total = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
        weights_[i] = std::exp((candidates_[i].first - best) / params_.temperature);
        total += weights_[i];
    }
    const double target = uniform01() * total;
    double cumulative = 0.0;
    size_t last_possible = 0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
        if (weights_[i] == 0.0) continue;
        cumulative += weights_[i];
        last_possible = i;
        if (target < cumulative) return candidates_[i].second;
    }
    return candidates_[last_possible].second;  // rounding left target at the very top
}

// 53 random bits scaled into [0, 1): exact in a double and the same on every platform,
// unlike std::uniform_real_distribution whose algorithm each standard library picks.
double Sampler::uniform01() {
    return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

}  // namespace si
