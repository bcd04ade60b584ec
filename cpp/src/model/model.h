// A loaded model: hyperparameters, typed views of the weights inside the file mapping, and
// the tokenizer. Immutable after load, so any number of sessions can share one.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/memory.h"
#include "gguf/gguf_file.h"
#include "model/architecture.h"
#include "model/weights.h"
#include "tensor/dtype.h"
#include "tokenizer/tokenizer.h"

namespace si {

// Whether a PowerInfer file's predictors (fc1, fc2) run as Q8_0 copies made at load. They are
// read in full for every token, so 8 bits instead of 16 speed up sparse decoding, at the cost
// of flipping a few near-threshold decisions.
enum class PredictorQ8 {
    off,        // as stored
    on,         // every layer's (an error for a file without predictors)
    automatic,  // each layer whose float predictor agrees with its Q8_0 copy on at least
                // kPredictorQ8Agreement of the decisions for random probe inputs
};
constexpr double kPredictorQ8Agreement = 0.995;

struct LoadOptions {
    PredictorQ8 predictor_q8 = PredictorQ8::automatic;
    // A PowerInfer file's threshold in place of its powerinfer.sparse_threshold (ArgumentError
    // for a file without predictors, or a value that is not finite).
    std::optional<float> sparse_threshold;
    // False: the weights are bound as stored, without the copies the CPU kernels need
    // (Q8_0 copies, interleaving, bundling): enough to read and price them (gpu/device_costs.h)
    // at the cost of a memory mapping, not to run (a session refuses such a model).
    bool prepare_weights = true;
};

// The most tokens one forward batch holds: a longer eval goes in batches of this many, which
// bounds the scratch (and a GPU session's activations) while each weight row still serves
// many tokens. The session (session/) and the GPU's batch buffers (gpu/) are sized for it.
constexpr int64_t kMaxBatch = 256;

// The file's architecture (model/architecture.h) reads the config and binds the weights
// through the model, which serves them as WeightSource.
class Model : private WeightSource {
public:
    // Loads and validates every tensor the architecture needs (shapes, types) from `path`.
    static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& options = {});

    const GgufFile& file() const override { return *file_; }
    // Whether the weights were prepared for the CPU kernels (LoadOptions::prepare_weights).
    bool prepared() const { return prepared_; }
    const ModelConfig& config() const { return config_; }
    const Tokenizer& tokenizer() const { return *tokenizer_; }
    std::shared_ptr<const Tokenizer> shared_tokenizer() const { return tokenizer_; }

    const Matrix& token_embd() const { return weights_.token_embd; }
    const Matrix& position_embd() const { return weights_.position_embd; }  // ModelConfig::learned_positions
    const std::vector<float>& output_norm() const { return weights_.output_norm; }
    const std::vector<float>& output_norm_bias() const { return weights_.output_norm_b; }  // of a LayerNorm
    const Matrix& output() const { return weights_.output; }  // token_embd when tied
    const std::vector<float>& rope_freq_factors() const { return weights_.rope_freq_factors; }  // may be empty
    const std::vector<LayerWeights>& layers() const { return weights_.layers; }
    // Per layer, whether its predictor runs as a Q8_0 copy (LoadOptions::predictor_q8).
    const std::vector<bool>& predictor_q8_layers() const { return predictor_q8_layers_; }

    // The dense mode of a PowerInfer file computes every neuron's gate in one matrix product
    // (a third of the FFN's bytes, streamed) and gathers only the up and down rows of the
    // neurons whose gate is positive: gathered 4-bit rows cost more to compute than they take
    // to read. dense_gate(il) is layer il's gate matrix for that product (its up matrix where
    // the FFN has no gate: relu_projection): the bundled rows, with an interleaved copy where
    // the kernels have an eight-row product for its type. The copies cost memory only a dense
    // session uses, so they are made by prepare_dense_gates(n_layers), which a dense session
    // calls for its CPU layers [0, n_layers) before reading them (thread-safe; a layer is
    // copied once).
    void prepare_dense_gates(int64_t n_layers) const;
    const Matrix& dense_gate(int64_t il) const { return dense_gates_[static_cast<size_t>(il)]; }

private:
    Model() = default;
    void read_config(const LoadOptions& options);
    void bind_weights();
    Matrix matrix(const std::string& name, int64_t cols, int64_t rows) const;
    // WeightSource: matrix() (every type the file index can bind has kernels); a float copy of
    // a vector.
    Matrix weight(const std::string& name, int64_t cols, int64_t rows) override;
    std::vector<float> vector(const std::string& name, int64_t n) override;
    // A copy of m requantised to Q8_0, owned by the model (m's mapped pages stay).
    Matrix requantize_q8_0(const Matrix& m);
    // The predictors as LoadOptions::predictor_q8 asks.
    void requantize_predictors(PredictorQ8 mode);
    // Interleaved copies of the quantised matrices that only matrix products read (cpu/kernels.h).
    void interleave_matrices();
    // PowerInfer files: each layer's ffn_gate (where it has one), ffn_up and ffn_down_t rows
    // bundled per neuron.
    void bundle_neurons();
    uint8_t* owned_copy(uint64_t bytes, const std::string& what);
    // Drops the mapped pages of m's stored rows once a copy replaces them: without this the
    // process would hold both (a dense Q4_0 model's resident size was twice its file). A GPU
    // upload or a tied embedding's lookups read them again from the page cache. Rows outside
    // the mapping (an earlier copy) are left alone.
    void release_stored_rows(const Matrix& m) const;

    std::shared_ptr<GgufFile> file_;
    const Architecture* architecture_ = nullptr;
    bool prepared_ = true;
    ModelConfig config_;
    std::shared_ptr<const Tokenizer> tokenizer_;
    ModelWeights weights_;
    std::vector<bool> predictor_q8_layers_;
    std::vector<WeightBuffer> owned_weights_;  // weights converted at load
    uint64_t owned_bytes_ = 0;
    // prepare_dense_gates' results: sized at load, a layer's interleaved copy set once under the
    // mutex.
    mutable std::mutex dense_gates_mutex_;
    mutable std::vector<Matrix> dense_gates_;
    mutable std::vector<WeightBuffer> dense_gate_copies_;
    mutable uint64_t dense_gate_bytes_ = 0;
};

}  // namespace si
