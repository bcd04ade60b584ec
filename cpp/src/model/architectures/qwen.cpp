// Qwen2 and Qwen3 (llama.cpp's `qwen2`, `qwen3`): llama blocks whose RoPE turns the two halves
// of each head (GGML's NeoX mode), with
//   - qwen2: biases on Q, K and V (attn_q.bias, attn_k.bias, attn_v.bias; read where the file
//     has them, as llama.cpp does: read_common_config);
//   - qwen3: no biases; each head of Q and K RMS-normed (attn_q_norm, attn_k_norm, with the
//     model's eps) after the projection and before RoPE; heads attention.key_length wide,
//     which need not be n_embd / n_head (Qwen3-0.6B: 16 heads of 128 on 1024).
// Small models tie the output to token_embd (no output.weight). Source: llama.cpp
// src/models/qwen2.cpp, qwen3.cpp and llama_model_rope_type (QWEN2 and QWEN3 are NEOX).
#include "model/architectures/architectures.h"

namespace si {

namespace {

void read_qwen2_config(const GgufFile& file, ModelConfig& config) {
    require_dense_file(file);
    read_common_config(file, config);
    config.block.rope_layout = RopeLayout::halves;
}

void read_qwen3_config(const GgufFile& file, ModelConfig& config) {
    require_dense_file(file);
    read_common_config(file, config);
    config.block.rope_layout = RopeLayout::halves;
    config.block.qk_norm = true;
}

}  // namespace

const Architecture kQwen2 = {"qwen2", read_qwen2_config, bind_llama_weights};
const Architecture kQwen3 = {"qwen3", read_qwen3_config, bind_llama_weights};

}  // namespace si
