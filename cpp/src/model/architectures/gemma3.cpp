// Gemma 3 (llama.cpp's `gemma3`, text only): blocks of
//   x += post_attention_norm(attention(norm(x)))   with per-head Q and K norms before NeoX
//                                                  RoPE and q.k scaled by 1/sqrt(head_dim)
//   x += post_ffw_norm(down(gelu_tanh(gate(norm(x))) * up(norm(x))))
// embeddings multiplied by sqrt(n_embd), the output tied to them. Five layers in six attend
// through a sliding window of attention.sliding_window positions with RoPE base 10000; every
// sixth (il % 6 == 5) attends to every position with rope.freq_base.
//
// The converter stores Gemma's norm weights as 1 + w (convert_hf_to_gguf.py, Gemma3Model), so
// every norm is a plain RMS norm. Sources: llama.cpp src/models/gemma3.cpp (the graph),
// src/llama-model.cpp LLM_ARCH_GEMMA3 (n_swa_pattern 6, the local base 10000, the query scale:
// 1/sqrt(n_embd / n_head) for the 27B model of 62 layers, 1/sqrt(head_dim) otherwise),
// llama-hparams.cpp (set_swa_pattern, is_masked_swa: a key p0 is hidden from a query p1 when
// p1 - p0 >= window). Gemma 3's final-logit softcapping is not applied by llama.cpp's
// interleaved-window graph, nor here.
#include <cmath>

#include "common/errors.h"
#include "model/architectures/architectures.h"

namespace si {

namespace {

constexpr int64_t kSlidingPattern = 6;  // layers il % 6 < 5 slide
constexpr float kLocalRopeBase = 10000.0f;
constexpr int64_t kLayersOf27B = 62;

void read_gemma3_config(const GgufFile& file, ModelConfig& config) {
    require_dense_file(file);
    read_common_config(file, config);
    BlockSpec& block = config.block;
    block.rope_layout = RopeLayout::halves;
    block.qk_norm = true;
    block.post_norms = true;
    block.gate_activation = Activation::gelu_tanh;
    block.embedding_scale = std::sqrt(static_cast<float>(config.n_embd));
    const int64_t query_width = config.n_layer == kLayersOf27B ? config.n_embd / config.n_head : config.head_dim;
    block.attention_scale = 1.0f / std::sqrt(static_cast<float>(query_width));

    const std::string key = "gemma3.attention.sliding_window";
    if (!file.find(key)) throw FormatError(file.describe("metadata key '" + key + "' is missing"));
    config.sliding_window = file.get_int(key, 0);
    if (config.sliding_window <= 0) {
        throw FormatError(file.describe(key + " must be positive, got " + std::to_string(config.sliding_window)));
    }
    config.sliding_layers.resize(static_cast<size_t>(config.n_layer));
    for (int64_t il = 0; il < config.n_layer; ++il) {
        config.sliding_layers[static_cast<size_t>(il)] = il % kSlidingPattern < kSlidingPattern - 1;
    }
    config.local_rope_base = kLocalRopeBase;
}

}  // namespace

const Architecture kGemma3 = {"gemma3", read_gemma3_config, bind_llama_weights};

}  // namespace si
