// A C++ application of the public API (cpp/include/sparseinfer/sparseinfer.h), used by
// tests/api/test_embedding.py: its output is compared with the Python package's on the same file.
//
//   embed_check MODEL.gguf [sparse [THRESHOLD]]
//
// Prints, one per line: "info" and the file's architecture, tensor count and PWRI flag
// (read_gguf_info); "vocab" and the vocabulary size and BOS id (Tokenizer::open); "costs" and
// the batch and shared bytes of the model on a GPU (device_costs of a model loaded without
// preparing its weights); "tokens" and the ids of a text; "logits" and the first five logits
// after evaluating them; "text" and eight greedily generated tokens' text (hex, so any bytes
// survive); "streamed" and whether the callback saw the same text; "sampled" and the text of
// eight tokens drawn by a seeded Sampler and decoded by a StreamDecoder; "error" and the
// message of an out-of-vocabulary id; "cancelled" after a cancel; "n_past" after both.
#include <cstdio>
#include <string>
#include <vector>

#include "sparseinfer/sparseinfer.h"

namespace {

std::string hex(const std::string& bytes) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : bytes) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: embed_check MODEL.gguf [sparse [THRESHOLD]]\n");
        return 2;
    }
    try {
        const sparseinfer::GgufInfo info = sparseinfer::read_gguf_info(argv[1]);
        std::string arch = "?";
        for (const auto& [key, value] : info.metadata) {
            if (key == "general.architecture") arch = value.s;
        }
        std::printf("info %s %zu %d\n", arch.c_str(), info.tensors.size(), info.powerinfer ? 1 : 0);
        const auto tokenizer = sparseinfer::Tokenizer::open(argv[1]);
        std::printf("vocab %d %d\n", tokenizer->n_vocab(), tokenizer->bos_id());

        sparseinfer::LoadOptions load_options;
        if (argc > 3) load_options.sparse_threshold = std::stof(argv[3]);
        sparseinfer::LoadOptions priced = load_options;
        priced.prepare_weights = false;
        const auto costs = sparseinfer::device_costs(*sparseinfer::Model::load(argv[1], priced), 64);
        std::printf("costs %llu %llu\n", static_cast<unsigned long long>(costs.batch_bytes),
                    static_cast<unsigned long long>(costs.shared_bytes));
        auto model = sparseinfer::Model::load(argv[1], load_options);
        sparseinfer::SessionOptions options;
        options.n_ctx = 64;
        options.n_threads = 2;
        options.sparse = argc > 2 && std::string(argv[2]) == "sparse";
        sparseinfer::Session session(model, options);

        const std::vector<int32_t> ids = model->tokenize("Hello world, hello!");
        std::printf("tokens");
        for (int32_t id : ids) std::printf(" %d", id);
        std::printf("\n");
        session.eval(ids);
        std::printf("logits");
        for (int i = 0; i < 5; ++i) std::printf(" %.9g", session.logits()[i]);
        std::printf("\n");

        session.reset();
        sparseinfer::SamplingParams greedy;
        greedy.temperature = 0.0f;
        std::string streamed;
        const std::string text = sparseinfer::generate(session, "Once upon a time", 8, greedy,
                                                       [&](const std::string& piece) {
                                                           streamed += piece;
                                                           return true;
                                                       });
        std::printf("text %s\n", hex(text).c_str());
        std::printf("streamed %s\n", streamed == text ? "same" : "different");

        session.reset();
        sparseinfer::SamplingParams drawn;
        drawn.seed = 42;
        sparseinfer::Sampler sampler(drawn);
        sparseinfer::StreamDecoder decoder(model->tokenizer());
        const std::vector<int32_t> prompt = model->tokenize("Once upon a time");
        for (int32_t id : prompt) sampler.accept(id);
        session.eval(prompt);
        std::string sampled;
        for (int i = 0; i < 8; ++i) {
            const int32_t token = sampler.sample(session.logits(), static_cast<int32_t>(model->n_vocab()));
            sampler.accept(token);
            sampled += decoder.feed(token);
            session.eval({token});
        }
        sampled += decoder.flush();
        std::printf("sampled %s\n", hex(sampled).c_str());

        const int64_t n_past = session.n_past();
        try {
            session.eval({static_cast<int32_t>(model->n_vocab())});
            std::printf("error none\n");
        } catch (const sparseinfer::ArgumentError& e) {
            std::printf("error %s\n", e.what());
        }
        session.cancel();
        try {
            session.eval({1});
            std::printf("cancelled no\n");
        } catch (const sparseinfer::CancelledError&) {
            std::printf("cancelled yes\n");
        }
        session.clear_cancel();
        std::printf("n_past %lld %lld\n", static_cast<long long>(n_past), static_cast<long long>(session.n_past()));
    } catch (const sparseinfer::Error& e) {
        std::printf("failed %s\n", e.what());
        return 1;
    }
    return 0;
}
