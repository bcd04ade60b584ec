// The public C++ API (cpp/include/sparseinfer/sparseinfer.h) over the engine's classes: each
// public class holds the engine object it stands for; this file only translates.
#include "sparseinfer/sparseinfer.h"

#include <string_view>
#include <thread>

#include "cpu/bandwidth.h"
#include "cpu/kernels.h"
#include "gguf/gguf_file.h"
#include "gpu/device_costs.h"
#include "gpu/device_model.h"
#include "model/model.h"
#include "sample/sampler.h"
#include "session/session.h"
#include "tensor/dtype.h"
#include "tokenizer/tokenizer.h"

namespace sparseinfer {

struct Tokenizer::Impl {
    std::shared_ptr<const si::Tokenizer> engine;
};
struct StreamDecoder::Impl {
    si::StreamDecoder engine;
};
struct Sampler::Impl {
    si::Sampler engine;
};
struct Model::Impl {
    std::shared_ptr<const si::Model> engine;
};
struct DeviceModel::Impl {
    std::shared_ptr<const si::gpu::DeviceModel> engine;
};
struct Session::Impl {
    template <typename... Args>
    explicit Impl(Args&&... args) : engine(std::forward<Args>(args)...) {}
    si::Session engine;
};

namespace detail {

struct Access {
    static const si::Model& engine(const Model& model) { return *model.impl_->engine; }
    static std::shared_ptr<const si::Model> shared_engine(const Model& model) { return model.impl_->engine; }
    static const std::shared_ptr<const si::Tokenizer>& engine(const Tokenizer& t) { return t.impl_->engine; }
    static std::shared_ptr<const si::gpu::DeviceModel> engine(const DeviceModel& d) { return d.impl_->engine; }

    static std::shared_ptr<const Tokenizer> wrap(std::shared_ptr<const si::Tokenizer> engine) {
        return std::shared_ptr<const Tokenizer>(new Tokenizer(std::make_unique<Tokenizer::Impl>(Tokenizer::Impl{
            std::move(engine)})));
    }
    static std::shared_ptr<const Model> wrap(std::shared_ptr<const si::Model> engine) {
        auto model = std::shared_ptr<Model>(new Model(std::make_unique<Model::Impl>(Model::Impl{std::move(engine)})));
        model->tokenizer_ = wrap(model->impl_->engine->shared_tokenizer());
        return model;
    }
    static std::shared_ptr<const DeviceModel> wrap(std::shared_ptr<const si::gpu::DeviceModel> engine) {
        return std::shared_ptr<const DeviceModel>(
            new DeviceModel(std::make_unique<DeviceModel::Impl>(DeviceModel::Impl{std::move(engine)})));
    }
};

}  // namespace detail

using detail::Access;

namespace {

si::SamplerParams engine_params(const SamplingParams& params) {
    si::SamplerParams out;
    out.temperature = params.temperature;
    out.top_k = params.top_k;
    out.top_p = params.top_p;
    out.min_p = params.min_p;
    out.repeat_penalty = params.repeat_penalty;
    out.repeat_last_n = params.repeat_last_n;
    out.seed = params.seed;
    return out;
}

MetadataValue to_public(const si::GgufValue& v) {
    MetadataValue out;
    using si::GgufType;
    switch (v.type) {
        case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32: case GgufType::UINT64:
            out.kind = MetadataValue::Kind::unsigned_integer;
            out.u = v.u64;
            break;
        case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64:
            out.kind = MetadataValue::Kind::signed_integer;
            out.i = v.i64;
            break;
        case GgufType::FLOAT32: case GgufType::FLOAT64:
            out.kind = MetadataValue::Kind::floating;
            out.f = v.f64;
            break;
        case GgufType::BOOL:
            out.kind = MetadataValue::Kind::boolean;
            out.b = v.u64 != 0;
            break;
        case GgufType::STRING:
            out.kind = MetadataValue::Kind::string;
            out.s = std::string(v.str);
            break;
        case GgufType::ARRAY:
            out.kind = MetadataValue::Kind::array;
            out.items.reserve(static_cast<size_t>(v.count));
            if (v.elem_type == GgufType::STRING || v.elem_type == GgufType::ARRAY) {
                for (const si::GgufValue& item : v.items) out.items.push_back(to_public(item));
            } else {
                for (uint64_t i = 0; i < v.count; ++i) out.items.push_back(to_public(v.element(i)));
            }
            break;
    }
    return out;
}

Metadata metadata_of(const si::GgufFile& file) {
    Metadata out;
    out.reserve(file.metadata().size());
    for (const auto& [key, value] : file.metadata()) out.emplace_back(key, to_public(value));
    return out;
}

}  // namespace

// ---- the machine ------------------------------------------------------------------------

SystemInfo system_info() {
    SystemInfo info;
    info.isa = si::active_kernels().isa;
    info.available_isas = si::available_isas();
    info.hardware_threads = std::thread::hardware_concurrency();
    return info;
}

double measure_read_bandwidth(size_t bytes, int n_threads, int repeats) {
    return si::measure_read_bandwidth(bytes, n_threads, repeats);  // it checks its arguments
}

// ---- GGUF files ---------------------------------------------------------------------------

GgufInfo read_gguf_info(const std::string& path) {
    const std::shared_ptr<si::GgufFile> file = si::GgufFile::open(path);
    GgufInfo info;
    info.version = file->version();
    info.powerinfer = file->is_powerinfer();
    info.metadata = metadata_of(*file);
    for (const si::GgufTensor& t : file->tensors()) {
        info.tensors.push_back({t.name, si::dtype_name(t.ggml_type), t.shape});
    }
    return info;
}

// ---- text ---------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::open(const std::string& path) {
    const std::shared_ptr<si::GgufFile> file = si::GgufFile::open(path);
    return Access::wrap(si::Tokenizer::create(si::VocabData::from_gguf(*file)));
}

int32_t Tokenizer::n_vocab() const { return impl_->engine->n_vocab(); }
int32_t Tokenizer::bos_id() const { return impl_->engine->vocab().bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->engine->vocab().eos_id; }
bool Tokenizer::add_bos() const { return impl_->engine->vocab().add_bos; }

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
    return impl_->engine->encode(text, add_bos, parse_special);
}

std::string Tokenizer::token_to_bytes(int32_t token, bool render_special) const {
    return impl_->engine->token_to_bytes(token, render_special);
}

std::string Tokenizer::decode(const std::vector<int32_t>& tokens, bool render_special) const {
    return impl_->engine->decode(tokens, render_special);
}

bool Tokenizer::is_end_of_generation(int32_t token) const {
    impl_->engine->check_token_id(token);
    return impl_->engine->is_end_of_generation(token);
}

StreamDecoder::StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer) {
    if (!tokenizer) throw ArgumentError("StreamDecoder needs a tokenizer");
    impl_ = std::make_unique<Impl>(Impl{si::StreamDecoder(Access::engine(*tokenizer))});
}
StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;
std::string StreamDecoder::feed(int32_t token) { return impl_->engine.feed(token); }
std::string StreamDecoder::flush() { return impl_->engine.flush(); }

// ---- sampling -----------------------------------------------------------------------------

Sampler::Sampler(const SamplingParams& params)
    : impl_(std::make_unique<Impl>(Impl{si::Sampler(engine_params(params))})) {}
Sampler::~Sampler() = default;
Sampler::Sampler(Sampler&&) noexcept = default;
Sampler& Sampler::operator=(Sampler&&) noexcept = default;
int32_t Sampler::sample(const float* logits, int32_t n_vocab) { return impl_->engine.sample(logits, n_vocab); }
void Sampler::accept(int32_t token) { impl_->engine.accept(token); }
void Sampler::reset() { impl_->engine.reset(); }

// ---- models -------------------------------------------------------------------------------

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& options) {
    si::LoadOptions engine_options;
    switch (options.predictor_q8) {
        case PredictorQ8::Off: engine_options.predictor_q8 = si::PredictorQ8::off; break;
        case PredictorQ8::On: engine_options.predictor_q8 = si::PredictorQ8::on; break;
        case PredictorQ8::Auto: engine_options.predictor_q8 = si::PredictorQ8::automatic; break;
    }
    engine_options.sparse_threshold = options.sparse_threshold;
    engine_options.prepare_weights = options.prepare_weights;
    return Access::wrap(si::Model::load(path, engine_options));
}

std::string Model::path() const { return impl_->engine->file().path(); }
std::string Model::arch() const { return impl_->engine->config().arch; }
int64_t Model::n_vocab() const { return impl_->engine->config().n_vocab; }
int64_t Model::n_embd() const { return impl_->engine->config().n_embd; }
int64_t Model::n_layer() const { return impl_->engine->config().n_layer; }
int64_t Model::n_ff() const { return impl_->engine->config().n_ff; }
int64_t Model::n_ctx_train() const { return impl_->engine->config().n_ctx_train; }
bool Model::is_powerinfer() const { return impl_->engine->config().has_predictors(); }
float Model::sparse_threshold() const { return impl_->engine->config().sparse_threshold; }
std::vector<bool> Model::predictor_q8_layers() const { return impl_->engine->predictor_q8_layers(); }
Metadata Model::metadata() const { return metadata_of(impl_->engine->file()); }

std::vector<int32_t> Model::tokenize(const std::string& text, bool add_bos, bool parse_special) const {
    return tokenizer_->encode(text, add_bos && tokenizer_->add_bos(), parse_special);
}

std::string Model::detokenize(const std::vector<int32_t>& tokens) const { return tokenizer_->decode(tokens); }

bool Model::is_end_of_generation(int32_t token) const { return tokenizer_->is_end_of_generation(token); }

// ---- GPUs ---------------------------------------------------------------------------------

DeviceCosts device_costs(const Model& model, int64_t n_ctx) {
    if (n_ctx < 1) throw ArgumentError("n_ctx must be at least 1");
    si::gpu::DeviceCosts c = si::gpu::device_costs(Access::engine(model), n_ctx);
    return {std::move(c.n_neurons), std::move(c.neuron_bytes), std::move(c.fixed_bytes), c.shared_bytes,
            c.batch_bytes};
}

DeviceModel::DeviceModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceModel::~DeviceModel() = default;

std::shared_ptr<const DeviceModel> DeviceModel::upload(std::shared_ptr<const Model> model,
                                                       const std::string& cuda_plugin, int device,
                                                       const GpuPlacement& placement) {
    if (!model) throw ArgumentError("DeviceModel needs a model");
    if (device < 0) throw ArgumentError("the CUDA device must be >= 0, got " + std::to_string(device));
    si::gpu::Placement engine_placement;
    engine_placement.n_gpu_layers = placement.n_gpu_layers;
    engine_placement.hot_neurons = placement.hot_neurons;
    return Access::wrap(std::make_shared<const si::gpu::DeviceModel>(Access::shared_engine(*model), cuda_plugin,
                                                                         device, std::move(engine_placement)));
}

uint64_t DeviceModel::weight_bytes() const { return impl_->engine->weight_bytes(); }
int64_t DeviceModel::first_gpu_layer() const { return impl_->engine->first_gpu_layer(); }
std::vector<int64_t> DeviceModel::hot_counts() const { return impl_->engine->hot_counts(); }

// ---- sessions -----------------------------------------------------------------------------

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options) : model_(std::move(model)) {
    if (!model_) throw ArgumentError("Session needs a model");
    if (options.n_threads < 1) throw ArgumentError("n_threads must be at least 1");
    impl_ = std::make_unique<Impl>(Access::shared_engine(*model_), options.n_ctx, options.n_threads, options.sparse,
                                   options.device ? Access::engine(*options.device) : nullptr);
}

Session::~Session() = default;

void Session::eval(const std::vector<int32_t>& tokens, bool all_logits) { impl_->engine.eval(tokens, all_logits); }

const float* Session::logits() const { return impl_->engine.logits().data(); }
int64_t Session::logit_rows() const { return impl_->engine.logit_rows(); }
int64_t Session::n_past() const { return impl_->engine.n_past(); }
int64_t Session::n_ctx() const { return impl_->engine.n_ctx(); }
void Session::reset() { impl_->engine.reset(); }
void Session::truncate(int64_t n_past) { impl_->engine.truncate(n_past); }
void Session::cancel() { impl_->engine.request_cancel(); }
void Session::clear_cancel() { impl_->engine.clear_cancel(); }
bool Session::cancelled() const { return impl_->engine.cancel_requested(); }
bool Session::sparse() const { return impl_->engine.sparse(); }
bool Session::on_gpu() const { return impl_->engine.on_gpu(); }
std::vector<double> Session::active_fractions() const { return impl_->engine.active_fractions(); }
void Session::reset_stats() { impl_->engine.reset_stats(); }
void Session::set_neuron_counting(bool on) { impl_->engine.set_neuron_counting(on); }
bool Session::neuron_counting() const { return impl_->engine.neuron_counting(); }
const std::vector<int64_t>& Session::neuron_counts() const { return impl_->engine.neuron_counts(); }
int64_t Session::neuron_count_tokens() const { return impl_->engine.neuron_count_tokens(); }
void Session::reset_neuron_counts() { impl_->engine.reset_neuron_counts(); }
void Session::set_predictor_audit(bool on) { impl_->engine.set_predictor_audit(on); }
bool Session::predictor_auditing() const { return impl_->engine.predictor_auditing(); }
std::vector<std::array<int64_t, 3>> Session::predictor_audit() const {
    std::vector<std::array<int64_t, 3>> out;
    for (const si::Session::PredictorAudit& a : impl_->engine.predictor_audit()) {
        out.push_back({a.predicted, a.fired, a.predicted_and_fired});
    }
    return out;
}
void Session::reset_predictor_audit() { impl_->engine.reset_predictor_audit(); }

// ---- generation ---------------------------------------------------------------------------

std::string generate(Session& session, const std::string& prompt, int max_tokens, const SamplingParams& params,
                     const std::function<bool(const std::string&)>& on_text) {
    if (max_tokens < 0) throw ArgumentError("max_tokens must be >= 0");
    const std::shared_ptr<const Tokenizer>& tokenizer = session.model().tokenizer();
    // BOS as the file asks, once, also when the prompt already starts with its text (as a
    // chat template's output does); special tokens' texts are parsed.
    const std::string bos_text = tokenizer->bos_id() >= 0 ? tokenizer->token_to_bytes(tokenizer->bos_id(), true) : "";
    const bool add_bos = tokenizer->add_bos() &&
                         !(bos_text.size() && std::string_view(prompt).substr(0, bos_text.size()) == bos_text);
    const std::vector<int32_t> prompt_ids = tokenizer->encode(prompt, add_bos, true);
    if (prompt_ids.empty()) throw ArgumentError("the prompt is empty and this model adds no BOS token");

    Sampler sampler(params);
    for (int32_t id : prompt_ids) sampler.accept(id);

    session.eval(prompt_ids);
    StreamDecoder decoder(tokenizer);
    std::string text;
    auto emit = [&](const std::string& piece) {
        if (piece.empty()) return true;
        text += piece;
        return !on_text || on_text(piece);
    };
    const int64_t n_vocab = session.model().n_vocab();
    for (int i = 0; i < max_tokens; ++i) {
        const float* last = session.logits() + (session.logit_rows() - 1) * n_vocab;
        const int32_t token = sampler.sample(last, static_cast<int32_t>(n_vocab));
        if (tokenizer->is_end_of_generation(token)) break;
        sampler.accept(token);
        if (!emit(decoder.feed(token))) return text;
        if (i + 1 == max_tokens || session.n_past() >= session.n_ctx()) break;
        session.eval({token});
    }
    emit(decoder.flush());
    return text;
}

}  // namespace sparseinfer
