// Where each architecture's knowledge lives. A file under model/architectures/ defines an
// Architecture: how its hyperparameters are read from a GGUF file's metadata, which
// BlockSpec its layers are, and which tensors, by name, bind to the weights. Nothing else
// in the engine knows an architecture's name or its tensors' names; architecture.cpp lists
// the architectures there are.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gguf/gguf_file.h"
#include "model/weights.h"

namespace si {

// The tensors of a file, as the model loading it serves them to an architecture.
class WeightSource {
public:
    // A weight of `rows` rows of `cols` values (FormatError naming it when it is missing or
    // has another shape; UnsupportedError when its type does not run).
    virtual Matrix weight(const std::string& name, int64_t cols, int64_t rows) = 0;
    // A vector of n values (norm weights), as floats.
    virtual std::vector<float> vector(const std::string& name, int64_t n) = 0;
    virtual const GgufFile& file() const = 0;

protected:
    ~WeightSource() = default;
};

struct Architecture {
    const char* name;  // general.architecture
    // Hyperparameters and the BlockSpec from the file's metadata (FormatError for a missing or
    // absurd value, UnsupportedError for what the engine cannot run).
    void (*read_config)(const GgufFile& file, ModelConfig& config);
    // Every weight the BlockSpec needs.
    void (*bind_weights)(WeightSource& source, const ModelConfig& config, ModelWeights& weights);
};

// The architecture of the file's general.architecture; FormatError when the key is missing,
// UnsupportedError naming the architectures there are when it is none of them.
const Architecture& find_architecture(const GgufFile& file);

// The hyperparameters every architecture in GGUF shares, under the prefix "<arch>.":
// embedding_length, block_count, attention.head_count(_kv), attention.key_length /
// value_length, feed_forward_length, context_length, rope.dimension_count, rope.freq_base,
// rope.scaling.* (linear and YaRN; UnsupportedError for another type),
// attention.layer_norm_rms_epsilon (an architecture with LayerNorms reads its own epsilon after);
// n_vocab from token_embd.weight.
void read_common_config(const GgufFile& file, ModelConfig& config);

// The metadata value `key` as a finite number > 0 (FormatError naming the key otherwise); when
// the file lacks the key, `fallback`, or FormatError where there is none (a required key).
double positive_number(const GgufFile& file, const std::string& key, std::optional<double> fallback);

// output.weight, or token_embd where the file has none (tied embeddings).
Matrix output_or_tied(WeightSource& source, const ModelConfig& config, const Matrix& token_embd);

// RoPE's per-pair frequency factors from the tensor `name` (n = rope_dim / 2 values), for
// ModelWeights::rope_freq_factors: none when the file has no such tensor, FormatError naming
// it for another shape or a value that is not a finite number > 0.
std::vector<float> read_rope_freq_factors(WeightSource& source, const std::string& name, int64_t n);

}  // namespace si
