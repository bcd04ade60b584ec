#include "model/architecture.h"

#include <cmath>
#include <sstream>

#include "common/errors.h"
#include "model/architectures/architectures.h"

namespace si {

namespace {

// Bounds on hyperparameters; far beyond any real model, they stop absurd values before
// they size an allocation.
constexpr int64_t kMaxDimension = 1 << 20;
constexpr int64_t kMaxLayers = 4096;

// The architectures there are (model/architectures/).
const Architecture* const kArchitectures[] = {&kLlama, &kBamboo, &kMiniCpm, &kQwen2, &kQwen3, &kGemma3,
                                               &kFalcon, &kOpt};

std::string number_text(double x) {
    std::ostringstream text;
    text << x;
    return text.str();
}

// "<arch>.rope.scaling.*" as llama.cpp's load_hparams (src/llama-model.cpp) reads it for every
// architecture (docs/rope-scaling.md): the type defaults to "linear", which without a factor
// changes nothing; "none" ignores the factor; the factor's older key is rope.scale_linear.
RopeScaling read_rope_scaling(const GgufFile& f, const std::string& p, int64_t n_ctx_train) {
    RopeScaling s;
    const std::string type = f.get_string(p + "rope.scaling.type", "linear");
    if (type == "none") {
        s.type = RopeScalingType::none;
    } else if (type == "linear") {
        s.type = RopeScalingType::linear;
    } else if (type == "yarn") {
        s.type = RopeScalingType::yarn;
    } else {
        throw UnsupportedError(
            f.describe("RoPE scaling '" + type + "' is not supported (supported: none, linear, yarn)"));
    }
    // Read as float (the engine's and llama.cpp's width), then checked: a double beyond the
    // float range is as absurd as a negative factor.
    const std::string factor_key =
        f.find(p + "rope.scaling.factor") ? p + "rope.scaling.factor" : p + "rope.scale_linear";
    s.factor = static_cast<float>(f.get_float(factor_key, 1.0));
    if (!(s.factor > 0.0f) || !std::isfinite(s.factor)) {
        throw FormatError(f.describe(factor_key + " must be a finite number > 0, got " + number_text(s.factor)));
    }
    const std::string attn_factor_key = p + "rope.scaling.attn_factor";
    s.attn_factor = static_cast<float>(f.get_float(attn_factor_key, 1.0));
    if (!(s.attn_factor > 0.0f) || !std::isfinite(s.attn_factor)) {
        throw FormatError(
            f.describe(attn_factor_key + " must be a finite number > 0, got " + number_text(s.attn_factor)));
    }
    const std::string original_key = p + "rope.scaling.original_context_length";
    s.original_context = f.get_int(original_key, n_ctx_train);
    if (s.original_context <= 0) {
        throw FormatError(f.describe(original_key + " must be > 0, got " + std::to_string(s.original_context)));
    }
    // A factor of 1 scales nothing, whatever the type: such a model runs as an unscaled one.
    if (s.type == RopeScalingType::none || s.factor == 1.0f) {
        s.type = RopeScalingType::none;
        s.factor = 1.0f;
    }
    return s;
}

}  // namespace

const Architecture& find_architecture(const GgufFile& file) {
    const std::string name = file.get_string("general.architecture", "");
    if (name.empty()) throw FormatError(file.describe("general.architecture is missing"));
    std::string known;
    for (const Architecture* arch : kArchitectures) {
        if (name == arch->name) return *arch;
        known += std::string(known.empty() ? "" : ", ") + arch->name;
    }
    throw UnsupportedError(file.describe("architecture '" + name + "' is not supported (supported: " + known + ")"));
}

void read_common_config(const GgufFile& f, ModelConfig& c) {
    c.arch = f.get_string("general.architecture", "");
    const std::string p = c.arch + ".";
    auto required = [&](const std::string& key) {
        const GgufValue* v = f.find(key);
        if (!v) throw FormatError(f.describe("metadata key '" + key + "' is missing"));
        int64_t x = f.get_int(key, 0);
        if (x <= 0 || x > kMaxDimension) {
            throw FormatError(f.describe("metadata key '" + key + "' has a bad value " +
                                         std::to_string(x)));
        }
        return x;
    };
    c.n_embd = required(p + "embedding_length");
    c.n_layer = required(p + "block_count");
    if (c.n_layer > kMaxLayers) throw FormatError(f.describe("absurd block_count"));
    c.n_head = required(p + "attention.head_count");
    c.n_head_kv = f.find(p + "attention.head_count_kv") ? required(p + "attention.head_count_kv")
                                                         : c.n_head;
    c.n_ff = required(p + "feed_forward_length");
    c.n_ctx_train = f.find(p + "context_length") ? required(p + "context_length") : 4096;
    if (!f.find(p + "attention.key_length") && c.n_embd % c.n_head != 0) {
        throw FormatError(f.describe("embedding_length " + std::to_string(c.n_embd) +
                                     " is not a multiple of head_count " + std::to_string(c.n_head)));
    }
    if (c.n_head % c.n_head_kv != 0) {
        throw FormatError(f.describe("head_count " + std::to_string(c.n_head) +
                                     " is not a multiple of head_count_kv " +
                                     std::to_string(c.n_head_kv)));
    }
    // A head's width is n_embd / n_head unless the file says otherwise (Qwen3, Gemma 3); K and
    // V heads of different widths (value_length) are not supported.
    c.head_dim = f.find(p + "attention.key_length") ? required(p + "attention.key_length") : c.n_embd / c.n_head;
    if (c.q_dim() > kMaxDimension) throw FormatError(f.describe("absurd attention.key_length"));
    if (f.find(p + "attention.value_length") && required(p + "attention.value_length") != c.head_dim) {
        throw UnsupportedError(f.describe("attention.value_length " +
                                          std::to_string(f.get_int(p + "attention.value_length", 0)) +
                                          " differs from key_length " + std::to_string(c.head_dim) +
                                          ", which this version does not run"));
    }
    c.rope_dim = f.find(p + "rope.dimension_count") ? required(p + "rope.dimension_count")
                                                     : c.head_dim;
    if (c.rope_dim > c.head_dim || c.rope_dim % 2 != 0) {
        throw FormatError(f.describe("rope.dimension_count " + std::to_string(c.rope_dim) +
                                     " does not fit head size " + std::to_string(c.head_dim)));
    }
    c.rope_base = static_cast<float>(f.get_float(p + "rope.freq_base", 10000.0));
    if (!(c.rope_base > 0.0f) || !std::isfinite(c.rope_base)) {
        throw FormatError(f.describe("rope.freq_base must be a positive number"));
    }
    c.norm_eps = static_cast<float>(positive_number(f, p + "attention.layer_norm_rms_epsilon", 1e-5));
    c.rope_scaling = read_rope_scaling(f, p, c.n_ctx_train);
    // Biases on Q, K and V where the file has them (Qwen2's; llama.cpp reads them wherever present).
    c.block.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
    const GgufTensor* embd = f.find_tensor("token_embd.weight");
    if (!embd || embd->shape.size() != 2) {
        throw FormatError(f.describe("tensor 'token_embd.weight' is missing or not 2-D"));
    }
    c.n_vocab = embd->shape[1];
}

double positive_number(const GgufFile& file, const std::string& key, std::optional<double> fallback) {
    if (!file.find(key)) {
        if (!fallback) throw FormatError(file.describe("metadata key '" + key + "' is missing"));
        return *fallback;
    }
    const double value = file.get_float(key, 0.0);
    // Read as a double and used as a float: a value beyond the float range is as absurd as 0.
    if (!(value > 0.0) || !std::isfinite(static_cast<float>(value))) {
        throw FormatError(file.describe(key + " must be a finite number > 0, got " + number_text(value)));
    }
    return value;
}

Matrix output_or_tied(WeightSource& source, const ModelConfig& c, const Matrix& token_embd) {
    if (!source.file().find_tensor("output.weight")) return token_embd;
    return source.weight("output.weight", c.n_embd, c.n_vocab);
}

std::vector<float> read_rope_freq_factors(WeightSource& source, const std::string& name, int64_t n) {
    if (!source.file().find_tensor(name)) return {};
    std::vector<float> factors = source.vector(name, n);
    for (size_t i = 0; i < factors.size(); ++i) {
        if (!(factors[i] > 0.0f) || !std::isfinite(factors[i])) {
            throw FormatError(source.file().describe("tensor '" + name + "' holds " + number_text(factors[i]) +
                                                     " at " + std::to_string(i) +
                                                     "; frequency factors must be finite numbers > 0"));
        }
    }
    return factors;
}

}  // namespace si
