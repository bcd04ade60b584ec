// sparseinfer for C++ applications that embed the engine: load a GGUF model (dense llama
// family or PowerInfer), open sessions over it, evaluate tokens, read logits, sample and
// generate. The Python package is built on the same engine.
//
// Build: add the repository with add_subdirectory (set SPARSEINFER_PYTHON=OFF to skip the
// Python module), link the target sparseinfer_engine, include <sparseinfer/sparseinfer.h>.
//
//   auto model = sparseinfer::Model::load("model.gguf");
//   sparseinfer::Session session(model, {2048, 4});        // n_ctx, threads
//   sparseinfer::SamplingParams greedy;
//   greedy.temperature = 0.0f;
//   std::string text = sparseinfer::generate(session, "Once upon a time", 64, greedy);
//
// A Model is immutable and shared by any number of sessions (shared_ptr). A Session owns a
// KV cache and a thread pool and is used by one thread at a time; cancel() is the exception.
// Failures throw sparseinfer::Error subclasses (errors.h) with a message naming the cause.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sparseinfer/errors.h"

namespace si {
class Model;
class Session;
}  // namespace si

namespace sparseinfer {

struct SamplingParams {
    float temperature = 0.8f;  // <= 0: greedy
    int32_t top_k = 40;        // <= 0: off
    float top_p = 0.95f;       // >= 1: off
    float min_p = 0.05f;       // <= 0: off
    float repeat_penalty = 1.0f;
    uint64_t seed = 0;
};

class Session;

// Evaluates the prompt (tokenised with BOS as the vocabulary asks, special tokens parsed)
// after what the session holds, then samples up to max_tokens tokens, stopping at the end
// of generation or a full context. on_text, if given, receives the text as it comes
// (never a partial UTF-8 character) and may return false to stop. Returns the text.
std::string generate(Session& session, const std::string& prompt, int max_tokens,
                     const SamplingParams& params = {},
                     const std::function<bool(const std::string&)>& on_text = nullptr);

// Whether a PowerInfer file's predictors run as 8-bit copies made at load: they are read in
// full for every token, so sparse decoding gets faster; a few near-threshold decisions flip.
enum class PredictorQ8 {
    Off,   // as stored
    On,    // every layer's (ArgumentError for a file without predictors)
    Auto,  // each layer whose F32/F16/BF16 predictor agrees with its 8-bit copy on at least
           // 99.5% of the decisions for random probe inputs
};

struct LoadOptions {
    PredictorQ8 predictor_q8 = PredictorQ8::Auto;
    // A PowerInfer file's neuron threshold (a neuron is computed when its predictor's score
    // is at least this) in place of the file's powerinfer.sparse_threshold; ArgumentError for
    // a file without predictors or a value that is not finite. (PowerInfer's environment
    // variable LLAMA_SPARSE_PRED_THRESHOLD is read by the Python package only; an application
    // that wants it reads it and sets this.)
    std::optional<float> sparse_threshold;
};

class Model {
public:
    // Maps and validates the file (every tensor's shape and type, the tokenizer).
    static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& options = {});
    ~Model();

    std::string arch() const;
    int64_t n_vocab() const;
    int64_t n_ctx_train() const;
    // A PowerInfer file (magic PWRI) with activation predictors: it can run sparse.
    bool is_powerinfer() const;

    // add_bos: prepend BOS when the vocabulary asks for it; parse_special: recognise the
    // text of special tokens ("<|im_start|>") as those tokens.
    std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true, bool parse_special = false) const;
    std::string detokenize(const std::vector<int32_t>& tokens) const;
    // EOS, EOT and the tokens the vocabulary marks as ending a turn.
    bool is_end_of_generation(int32_t token) const;

    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

private:
    friend class Session;
    friend std::string generate(Session&, const std::string&, int, const SamplingParams&,
                                const std::function<bool(const std::string&)>&);
    explicit Model(std::shared_ptr<const si::Model> engine);
    std::shared_ptr<const si::Model> engine_;
};

struct SessionOptions {
    int64_t n_ctx = 4096;  // context window in tokens
    int n_threads = 4;     // CPU threads of the session's pool
    // Compute only the FFN neurons the predictor marks active (PowerInfer files only:
    // UnsupportedError otherwise). Off: every neuron.
    bool sparse = false;
};

class Session {
public:
    // Allocates the KV cache (OutOfMemoryError when it cannot fit).
    explicit Session(std::shared_ptr<const Model> model, const SessionOptions& options = {});
    ~Session();

    // Appends tokens to the sequence (a prompt at once, or one generated token). all_logits
    // keeps every row's logits, else only the last one's. ContextOverflowError past n_ctx
    // and ArgumentError for an id outside the vocabulary leave the session as it was;
    // CancelledError when cancel() stopped it (the sequence as it was before the call).
    void eval(const std::vector<int32_t>& tokens, bool all_logits = false);
    // Logits of the last eval: logit_rows() rows of n_vocab floats, the last token's last.
    const float* logits() const;
    int64_t logit_rows() const;

    int64_t n_past() const;
    int64_t n_ctx() const;
    void reset();                  // forget the sequence
    void truncate(int64_t n_past); // forget the positions from n_past on
    // From any thread: the running eval stops at its next layer and throws CancelledError,
    // as does every later one until clear_cancel().
    void cancel();
    void clear_cancel();
    // Per layer, the fraction of FFN neurons computed since the last reset_stats().
    std::vector<double> active_fractions() const;
    void reset_stats();

    const Model& model() const { return *model_; }

    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

private:
    std::shared_ptr<const Model> model_;
    std::unique_ptr<si::Session> engine_;
};


}  // namespace sparseinfer
