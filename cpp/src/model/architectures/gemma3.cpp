// Gemma 3 (llama.cpp's `gemma3`, text only): blocks of
//   x += post_attention_norm(attention(norm(x)))   with per-head Q and K norms before NeoX
//                                                  RoPE and q.k scaled by 1/sqrt(head_dim)
//   x += post_ffw_norm(down(gelu_tanh(gate(norm(x))) * up(norm(x))))
// embeddings multiplied by sqrt(n_embd), the output tied to them. Five layers in six
// (attention.sliding_window_pattern, default 6: layer il slides when il % 6 < 5) attend through
// a sliding window of attention.sliding_window positions (absent or 0: no layer slides) with
// RoPE base rope.freq_base_swa (default 10000), unscaled; the others attend to every position
// with rope.freq_base and the file's RoPE scaling. final_logit_softcapping, where a file has it,
// caps the logits as c tanh(logits / c).
//
// The converter stores Gemma's norm weights as 1 + w (convert_hf_to_gguf.py, Gemma3Model), so
// every norm is a plain RMS norm. Sources: llama.cpp src/models/gemma3.cpp (the graph),
// src/llama-model.cpp LLM_ARCH_GEMMA3 (n_swa_pattern 6, the local base 10000, the query scale:
// 1/sqrt(n_embd / n_head) for the 27B model of 62 layers, 1/sqrt(head_dim) otherwise),
// llama-hparams.cpp (set_swa_pattern, is_masked_swa: a key p0 is hidden from a query p1 when
// p1 - p0 >= window); the optional keys and the softcap as llama-cpp-python 0.3.36 reads them
// (docs/architecture-facts.md).
#include <cmath>
#include <string>

#include "common/errors.h"
#include "model/architectures/architectures.h"

namespace si {

namespace {

constexpr int64_t kSlidingPattern = 6;  // layers il % 6 < 5 slide
constexpr double kLocalRopeBase = 10000.0;
constexpr int64_t kLayersOf27B = 62;

void read_gemma3_config(const GgufFile& file, ModelConfig& config) {
    require_dense_file(file);
    read_common_config(file, config);
    BlockSpec& block = config.block;
    block.rope_layout = RopeLayout::halves;
    block.qk_norm = true;
    block.post_norms = true;
    block.ffn_activation = Activation::gelu_tanh;
    block.embedding_scale = std::sqrt(static_cast<float>(config.n_embd));
    const int64_t query_width = config.n_layer == kLayersOf27B ? config.n_embd / config.n_head : config.head_dim;
    block.attention_scale = 1.0f / std::sqrt(static_cast<float>(query_width));

    if (file.find("gemma3.final_logit_softcapping")) {
        block.final_logit_softcap = static_cast<float>(positive_number(file, "gemma3.final_logit_softcapping", {}));
    }
    config.sliding_window = file.get_int("gemma3.attention.sliding_window", 0);
    if (config.sliding_window < 0) {
        throw FormatError(file.describe("gemma3.attention.sliding_window must not be negative"));
    }
    if (config.sliding_window == 0) return;  // every layer global
    const int64_t pattern = file.get_int("gemma3.attention.sliding_window_pattern", kSlidingPattern);
    if (pattern <= 0) throw FormatError(file.describe("gemma3.attention.sliding_window_pattern must be positive"));
    config.sliding_layers.resize(static_cast<size_t>(config.n_layer));
    for (int64_t il = 0; il < config.n_layer; ++il) {
        config.sliding_layers[static_cast<size_t>(il)] = il % pattern < pattern - 1;
    }
    config.local_rope_base = static_cast<float>(positive_number(file, "gemma3.rope.freq_base_swa", kLocalRopeBase));
}

}  // namespace

const Architecture kGemma3 = {"gemma3", read_gemma3_config, bind_llama_weights};

}  // namespace si
