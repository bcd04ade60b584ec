// The llama family: llama (llama.cpp's, and in PowerInfer's PWRI files the ReLU models
// ProSparse-Llama, ReluLLaMA and MiniCPM-S as PowerInfer converts them) and PowerInfer's
// bamboo. Pre-norm blocks: RMS norm, attention with RoPE on adjacent pairs, RMS norm, gated
// FFN; a PWRI file's FFN is ReLU with a predictor per layer and its down projection stored
// transposed.
#include <string>

#include "common/errors.h"
#include "model/architectures/architectures.h"

namespace si {

namespace {

void read_llama_config(const GgufFile& file, ModelConfig& config) {
    read_common_config(file, config);
    if (file.is_powerinfer()) config.block.ffn = FeedForwardKind::relu_predicted;
}

void read_bamboo_config(const GgufFile& file, ModelConfig& config) {
    if (!file.is_powerinfer()) {
        throw UnsupportedError(file.describe("architecture 'bamboo' runs from PowerInfer files (magic PWRI) "
                                             "only, and this file is not one"));
    }
    read_common_config(file, config);
    config.block.ffn = FeedForwardKind::relu_predicted;
    config.block.up_activation = Activation::relu;
}

}  // namespace

void require_dense_file(const GgufFile& file) {
    if (!file.is_powerinfer()) return;
    throw UnsupportedError(file.describe("a PowerInfer file (magic PWRI) of architecture '" +
                                         file.get_string("general.architecture", "") +
                                         "' is not supported: sparse files run for llama, bamboo, falcon and opt"));
}

void bind_llama_weights(WeightSource& source, const ModelConfig& c, ModelWeights& w) {
    w.token_embd = source.weight("token_embd.weight", c.n_embd, c.n_vocab);
    w.output_norm = source.vector("output_norm.weight", c.n_embd);
    w.output = output_or_tied(source, c, w.token_embd);  // SmolLM2's, Gemma's, ... are tied
    // Llama 3.x files carry RoPE frequency factors, one tensor every layer shares (llama.cpp's
    // LLM_TENSOR_ROPE_FREQS, optional, rope_dim / 2 values).
    w.rope_freq_factors = read_rope_freq_factors(source, "rope_freqs.weight", c.rope_dim / 2);
    w.layers.resize(static_cast<size_t>(c.n_layer));
    for (int64_t i = 0; i < c.n_layer; ++i) {
        const std::string b = "blk." + std::to_string(i) + ".";
        LayerWeights& l = w.layers[static_cast<size_t>(i)];
        l.attn_norm = source.vector(b + "attn_norm.weight", c.n_embd);
        l.wq = source.weight(b + "attn_q.weight", c.n_embd, c.q_dim());
        l.wk = source.weight(b + "attn_k.weight", c.n_embd, c.kv_dim());
        l.wv = source.weight(b + "attn_v.weight", c.n_embd, c.kv_dim());
        l.wo = source.weight(b + "attn_output.weight", c.q_dim(), c.n_embd);
        if (c.block.qkv_bias) {
            l.bq = source.vector(b + "attn_q.bias", c.q_dim());
            l.bk = source.vector(b + "attn_k.bias", c.kv_dim());
            l.bv = source.vector(b + "attn_v.bias", c.kv_dim());
        }
        if (c.block.qk_norm) {
            l.q_norm = source.vector(b + "attn_q_norm.weight", c.head_dim);
            l.k_norm = source.vector(b + "attn_k_norm.weight", c.head_dim);
        }
        l.ffn_norm = source.vector(b + "ffn_norm.weight", c.n_embd);
        if (c.block.post_norms) {
            l.attn_post_norm = source.vector(b + "post_attention_norm.weight", c.n_embd);
            l.ffn_post_norm = source.vector(b + "post_ffw_norm.weight", c.n_embd);
        }
        l.ffn_gate = source.weight(b + "ffn_gate.weight", c.n_embd, c.n_ff);
        l.ffn_up = source.weight(b + "ffn_up.weight", c.n_embd, c.n_ff);
        bind_down_projection(source, c, b, l);
    }
}

void bind_down_projection(WeightSource& source, const ModelConfig& c, const std::string& b, LayerWeights& l) {
    if (!c.has_predictors()) {
        l.ffn_down = source.weight(b + "ffn_down.weight", c.n_ff, c.n_embd);
        if (c.block.ffn_bias) l.ffn_down_b = source.vector(b + "ffn_down.bias", c.n_embd);
        return;
    }
    l.ffn_down_t = source.weight(b + "ffn_down_t.weight", c.n_embd, c.n_ff);
    // PowerInfer's converter keeps the bias's name with the transposed weight's (OPT).
    if (c.block.ffn_bias) l.ffn_down_b = source.vector(b + "ffn_down_t.bias", c.n_embd);
    // The predictor's rank is whatever fc1 says, and may differ from layer to layer.
    const GgufTensor* fc1 = source.file().find_tensor(b + "fc1.weight");
    if (!fc1 || fc1->shape.size() != 2) {
        throw FormatError(source.file().describe("tensor '" + b + "fc1.weight' is missing or not 2-D"));
    }
    const int64_t rank = fc1->shape[1];
    l.fc1 = source.weight(b + "fc1.weight", c.n_embd, rank);
    l.fc2 = source.weight(b + "fc2.weight", rank, c.n_ff);
}

const Architecture kLlama = {"llama", read_llama_config, bind_llama_weights};
const Architecture kBamboo = {"bamboo", read_bamboo_config, bind_llama_weights};

}  // namespace si
