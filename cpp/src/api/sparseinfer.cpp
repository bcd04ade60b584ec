// The public C++ API (cpp/include/sparseinfer/sparseinfer.h) over the engine's classes.
#include "sparseinfer/sparseinfer.h"

#include <string_view>

#include "model/model.h"
#include "session/session.h"
#include "sample/sampler.h"
#include "tokenizer/tokenizer.h"

namespace sparseinfer {

Model::Model(std::shared_ptr<const si::Model> engine) : engine_(std::move(engine)) {}
Model::~Model() = default;

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& options) {
    si::LoadOptions engine_options;
    switch (options.predictor_q8) {
        case PredictorQ8::Off: engine_options.predictor_q8 = si::PredictorQ8::off; break;
        case PredictorQ8::On: engine_options.predictor_q8 = si::PredictorQ8::on; break;
        case PredictorQ8::Auto: engine_options.predictor_q8 = si::PredictorQ8::automatic; break;
    }
    engine_options.sparse_threshold = options.sparse_threshold;
    return std::shared_ptr<const Model>(new Model(si::Model::load(path, engine_options)));
}

std::string Model::arch() const { return engine_->config().arch; }
int64_t Model::n_vocab() const { return engine_->config().n_vocab; }
int64_t Model::n_ctx_train() const { return engine_->config().n_ctx_train; }
bool Model::is_powerinfer() const { return engine_->config().has_predictors(); }

std::vector<int32_t> Model::tokenize(const std::string& text, bool add_bos, bool parse_special) const {
    const si::Tokenizer& tokenizer = engine_->tokenizer();
    return tokenizer.encode(text, add_bos && tokenizer.vocab().add_bos, parse_special);
}

std::string Model::detokenize(const std::vector<int32_t>& tokens) const {
    return engine_->tokenizer().decode(tokens, false);
}

bool Model::is_end_of_generation(int32_t token) const { return engine_->tokenizer().is_end_of_generation(token); }

Session::Session(std::shared_ptr<const Model> model, const SessionOptions& options) : model_(std::move(model)) {
    if (!model_) throw ArgumentError("Session needs a model");
    if (options.n_threads < 1) throw ArgumentError("n_threads must be at least 1");
    engine_ = std::make_unique<si::Session>(model_->engine_, options.n_ctx, options.n_threads, options.sparse);
}

Session::~Session() = default;

void Session::eval(const std::vector<int32_t>& tokens, bool all_logits) { engine_->eval(tokens, all_logits); }

const float* Session::logits() const { return engine_->logits().data(); }
int64_t Session::logit_rows() const { return engine_->logit_rows(); }
int64_t Session::n_past() const { return engine_->n_past(); }
int64_t Session::n_ctx() const { return engine_->n_ctx(); }
void Session::reset() { engine_->reset(); }
void Session::truncate(int64_t n_past) { engine_->truncate(n_past); }
void Session::cancel() { engine_->request_cancel(); }
void Session::clear_cancel() { engine_->clear_cancel(); }
std::vector<double> Session::active_fractions() const { return engine_->active_fractions(); }
void Session::reset_stats() { engine_->reset_stats(); }

std::string generate(Session& session, const std::string& prompt, int max_tokens, const SamplingParams& params,
                     const std::function<bool(const std::string&)>& on_text) {
    if (max_tokens < 0) throw ArgumentError("max_tokens must be >= 0");
    const si::Model& engine = *session.model().engine_;
    const std::shared_ptr<const si::Tokenizer> tokenizer = engine.shared_tokenizer();
    const si::VocabData& vocab = tokenizer->vocab();
    // BOS as the file asks, once, also when the prompt already starts with its text (as a
    // chat template's output does); special tokens' texts are parsed.
    const std::string bos_text = vocab.bos_id >= 0 ? tokenizer->token_to_bytes(vocab.bos_id, true) : "";
    const bool add_bos = vocab.add_bos && !(bos_text.size() && std::string_view(prompt).substr(0, bos_text.size()) == bos_text);
    const std::vector<int32_t> prompt_ids = tokenizer->encode(prompt, add_bos, true);
    if (prompt_ids.empty()) throw ArgumentError("the prompt is empty and this model adds no BOS token");

    si::SamplerParams sampler_params;
    sampler_params.temperature = params.temperature;
    sampler_params.top_k = params.top_k;
    sampler_params.top_p = params.top_p;
    sampler_params.min_p = params.min_p;
    sampler_params.repeat_penalty = params.repeat_penalty;
    sampler_params.seed = params.seed;
    si::Sampler sampler(sampler_params);
    for (int32_t id : prompt_ids) sampler.accept(id);

    session.eval(prompt_ids);
    si::StreamDecoder decoder(tokenizer);
    std::string text;
    auto emit = [&](const std::string& piece) {
        if (piece.empty()) return true;
        text += piece;
        return !on_text || on_text(piece);
    };
    const int64_t n_vocab = engine.config().n_vocab;
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
