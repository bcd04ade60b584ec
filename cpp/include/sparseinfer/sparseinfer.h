// sparseinfer for C++ applications that embed the engine: load a GGUF model (dense llama
// family or PowerInfer), place it on a GPU or not, open sessions over it, evaluate tokens,
// read logits, sample and generate. The Python package is built on this header alone
// (cpp/python/), so everything it does an application can do too.
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
// A Model is immutable and shared by any number of sessions (shared_ptr), as are a
// Tokenizer and a DeviceModel. A Session owns a KV cache and a thread pool and is used by one
// thread at a time; cancel() is the exception. A Sampler and a StreamDecoder belong to one
// sequence.
// Failures throw sparseinfer::Error subclasses (errors.h) with a message naming the cause.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sparseinfer/errors.h"

namespace sparseinfer {

// Each class below holds the engine object it stands for in an Impl of its own, defined in
// the implementation (cpp/src/api/), so that no engine name reaches this header.
namespace detail {
struct Access;  // the implementation's way to those objects; not for applications
}  // namespace detail

// ---- the machine ------------------------------------------------------------------------

struct SystemInfo {
    std::string isa;                          // the CPU kernels' level in use ("avx512", "neon", ...)
    std::vector<std::string> available_isas;  // the levels this CPU runs
    unsigned hardware_threads = 0;            // std::thread::hardware_concurrency()
};
SystemInfo system_info();

// Bytes per second at which n_threads threads read a buffer of `bytes`, each streaming its
// own share, the best of `repeats` passes: the ceiling of decoding.
double measure_read_bandwidth(size_t bytes, int n_threads = 1, int repeats = 3);

// ---- GGUF files ---------------------------------------------------------------------------

// A metadata value as the file holds it.
struct MetadataValue {
    enum class Kind { signed_integer, unsigned_integer, floating, boolean, string, array };
    Kind kind = Kind::signed_integer;
    int64_t i = 0;     // signed_integer
    uint64_t u = 0;    // unsigned_integer
    double f = 0.0;    // floating
    bool b = false;    // boolean
    std::string s;     // string: the file's bytes (meant to be UTF-8, not checked)
    std::vector<MetadataValue> items;  // array
};
using Metadata = std::vector<std::pair<std::string, MetadataValue>>;  // in the file's order

struct TensorInfo {
    std::string name;
    std::string type;            // "F16", "Q4_0", ...
    std::vector<int64_t> shape;  // GGUF order: the row length first
};

struct GgufInfo {
    uint32_t version = 0;
    bool powerinfer = false;  // magic PWRI
    Metadata metadata;
    std::vector<TensorInfo> tensors;
};
// The header of a GGUF file, without loading its weights (FormatError for a broken one).
GgufInfo read_gguf_info(const std::string& path);

// ---- text ---------------------------------------------------------------------------------

// A GGUF file's vocabulary (SentencePiece or GPT-2 byte-level BPE). Ids outside
// [0, n_vocab()) are refused with ArgumentError.
class Tokenizer {
public:
    // The vocabulary of the file at path, without its weights.
    static std::shared_ptr<const Tokenizer> open(const std::string& path);
    ~Tokenizer();

    int32_t n_vocab() const;
    int32_t bos_id() const;  // -1 when the vocabulary has none
    int32_t eos_id() const;
    bool add_bos() const;    // whether the vocabulary asks for BOS in front of a text
    // Token ids of UTF-8 text (invalid bytes are tokenised as bytes, never refused). add_bos
    // prepends BOS when the vocabulary has one; parse_special turns the text of control
    // tokens ("<|im_start|>") into those tokens.
    std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;
    // The bytes a token stands for (render_special: control tokens as their text, else "").
    std::string token_to_bytes(int32_t token, bool render_special = false) const;
    std::string decode(const std::vector<int32_t>& tokens, bool render_special = false) const;
    // EOS, EOT and the tokens the vocabulary marks as ending a turn.
    bool is_end_of_generation(int32_t token) const;

    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

private:
    friend struct detail::Access;
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Token ids to text as they come, holding back the bytes of an unfinished UTF-8 character.
// (As with the Sampler, a moved-from one may only be assigned to or destroyed.)
class StreamDecoder {
public:
    explicit StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer);
    ~StreamDecoder();
    StreamDecoder(StreamDecoder&&) noexcept;
    StreamDecoder& operator=(StreamDecoder&&) noexcept;
    std::string feed(int32_t token);  // the complete characters this token finishes (may be "")
    std::string flush();              // whatever is held back, an unfinished character as U+FFFD

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// ---- sampling -----------------------------------------------------------------------------

struct SamplingParams {
    float temperature = 0.8f;  // <= 0: greedy
    int32_t top_k = 40;        // <= 0: off
    float top_p = 0.95f;       // >= 1: off
    float min_p = 0.05f;       // <= 0: off
    float repeat_penalty = 1.0f;
    uint64_t seed = 0;
    int32_t repeat_last_n = 64;  // how many recent tokens the penalty looks at
};

// Repetition penalty, top-k, top-p, min-p, temperature, then a seeded draw (ArgumentError for
// parameters out of range). One sampler per sequence: it is not thread-safe. A moved-from
// one may only be assigned to or destroyed.
class Sampler {
public:
    explicit Sampler(const SamplingParams& params = {});
    ~Sampler();
    Sampler(Sampler&&) noexcept;
    Sampler& operator=(Sampler&&) noexcept;
    int32_t sample(const float* logits, int32_t n_vocab);  // the logits are not modified
    void accept(int32_t token);  // a token of the sequence, for the repetition penalty
    void reset();                // forgets the accepted tokens and reseeds

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

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
    // False: the weights are bound as stored, without the copies the CPU kernels need: enough
    // to read and price them (device_costs) at the cost of a memory mapping; a session or a
    // DeviceModel refuses such a model.
    bool prepare_weights = true;
};

// ---- models -------------------------------------------------------------------------------

class Model {
public:
    // Maps and validates the file (every tensor's shape and type, the tokenizer).
    static std::shared_ptr<const Model> load(const std::string& path, const LoadOptions& options = {});
    ~Model();

    std::string path() const;
    std::string arch() const;
    int64_t n_vocab() const;
    int64_t n_embd() const;
    int64_t n_layer() const;
    int64_t n_ff() const;  // FFN neurons per layer
    int64_t n_ctx_train() const;
    // A PowerInfer file (magic PWRI) with activation predictors: it can run sparse.
    bool is_powerinfer() const;
    // A PowerInfer file's neuron threshold in use (LoadOptions::sparse_threshold or the file's).
    float sparse_threshold() const;
    // Per layer, whether its predictor runs as an 8-bit copy (LoadOptions::predictor_q8).
    std::vector<bool> predictor_q8_layers() const;
    const std::shared_ptr<const Tokenizer>& tokenizer() const { return tokenizer_; }
    Metadata metadata() const;

    // add_bos: prepend BOS when the vocabulary asks for it; parse_special: recognise the
    // text of special tokens ("<|im_start|>") as those tokens.
    std::vector<int32_t> tokenize(const std::string& text, bool add_bos = true, bool parse_special = false) const;
    std::string detokenize(const std::vector<int32_t>& tokens) const;
    // EOS, EOT and the tokens the vocabulary marks as ending a turn (ArgumentError for an id
    // outside the vocabulary).
    bool is_end_of_generation(int32_t token) const;

    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

private:
    friend struct detail::Access;
    struct Impl;
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
    std::shared_ptr<const Tokenizer> tokenizer_;
};

// ---- GPUs ---------------------------------------------------------------------------------

// What each part of a model takes on a GPU, in the bytes DeviceModel uploads and a GPU
// session allocates: what a placement policy decides from.
struct DeviceCosts {
    std::vector<int64_t> n_neurons;      // FFN neurons per layer
    std::vector<uint64_t> neuron_bytes;  // per layer: one neuron's gate, up and down rows
    std::vector<uint64_t> fixed_bytes;   // per layer: its other weights and a KV cache of n_ctx positions
    uint64_t shared_bytes = 0;           // the output norm and head
    uint64_t batch_bytes = 0;            // one session's activations for a full batch
};
DeviceCosts device_costs(const Model& model, int64_t n_ctx);

// Which layers run on the GPU and, for a PowerInfer file, which FFN neurons of each GPU layer
// are "hot" there (the others stay on the CPU).
struct GpuPlacement {
    int64_t n_gpu_layers = -1;  // the last n layers (llama.cpp's convention); -1: every layer
    // Per layer (n_layer entries, those of CPU layers empty), the hot neuron ids, ascending
    // and distinct; none at all: every neuron of a GPU layer.
    std::vector<std::vector<int32_t>> hot_neurons;
};

// A model's weights on a GPU for one placement, uploaded once and shared by the sessions that
// name it (each adds its own KV cache and activations there).
class DeviceModel {
public:
    // Through the CUDA plugin library at cuda_plugin (the Python package's sparseinfer._cuda
    // finds the one installed), on device `device`. ArgumentError for a placement that does
    // not fit the model, UnsupportedError for a weight type the GPU kernels do not read, a
    // plugin of another ABI or scaled RoPE (linear, YaRN, frequency factors) on GPU layers,
    // OutOfMemoryError when the device is full.
    static std::shared_ptr<const DeviceModel> upload(std::shared_ptr<const Model> model, const std::string& cuda_plugin,
                                                     int device, const GpuPlacement& placement = {});
    ~DeviceModel();

    uint64_t weight_bytes() const;      // on the device
    int64_t first_gpu_layer() const;    // n_layer: none
    std::vector<int64_t> hot_counts() const;  // per layer, its neurons on the GPU

    DeviceModel(const DeviceModel&) = delete;
    DeviceModel& operator=(const DeviceModel&) = delete;

private:
    friend struct detail::Access;
    struct Impl;
    explicit DeviceModel(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// ---- sessions -----------------------------------------------------------------------------

struct SessionOptions {
    int64_t n_ctx = 4096;  // context window in tokens
    int n_threads = 4;     // CPU threads of the session's pool
    // Compute only the FFN neurons the predictor marks active (PowerInfer files only:
    // UnsupportedError otherwise). Off: every neuron.
    bool sparse = false;
    // The model's weights on a GPU: its GPU layers run there (a dense session of a PowerInfer
    // file needs every neuron of them hot). None: the CPU.
    std::shared_ptr<const DeviceModel> device;
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
    bool cancelled() const;
    bool sparse() const;
    bool on_gpu() const;
    // Per layer, the fraction of FFN neurons computed since the last reset_stats().
    std::vector<double> active_fractions() const;
    void reset_stats();

    // Neuron firing counts, for hot/cold placement profiles: off by default (decoding pays
    // nothing). While on, each evaluated token adds 1 to every FFN neuron whose activation it
    // computed nonzero. PowerInfer files on the CPU only (UnsupportedError otherwise).
    void set_neuron_counting(bool on);
    bool neuron_counting() const;
    // n_layer x n_ff, row-major (empty until counting was first turned on).
    const std::vector<int64_t>& neuron_counts() const;
    int64_t neuron_count_tokens() const;  // tokens counted since the last reset
    void reset_neuron_counts();

    // The predictor against the neurons that fire, for quality reports: off by default. While
    // on, each evaluated token also runs every layer's predictor and counts the neurons it
    // predicts active, those whose computed activation is nonzero, and both. A dense session
    // (sparse=false: ArgumentError otherwise) of a PowerInfer file (UnsupportedError otherwise),
    // on the CPU only.
    void set_predictor_audit(bool on);
    bool predictor_auditing() const;
    // Per layer {predicted, fired, predicted_and_fired}, summed since the last reset (empty
    // until the audit was first turned on).
    std::vector<std::array<int64_t, 3>> predictor_audit() const;
    void reset_predictor_audit();

    const Model& model() const { return *model_; }

    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

private:
    std::shared_ptr<const Model> model_;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// ---- generation ---------------------------------------------------------------------------

// Evaluates the prompt (tokenised with BOS as the vocabulary asks, special tokens parsed)
// after what the session holds, then samples up to max_tokens tokens, stopping at the end
// of generation or a full context. on_text, if given, receives the text as it comes
// (never a partial UTF-8 character) and may return false to stop. Returns the text.
std::string generate(Session& session, const std::string& prompt, int max_tokens,
                     const SamplingParams& params = {},
                     const std::function<bool(const std::string&)>& on_text = nullptr);

}  // namespace sparseinfer
