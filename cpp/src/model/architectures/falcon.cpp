// Falcon: llama.cpp's `falcon` (plain GGUF files: Falcon-7B, Falcon-40B) and PowerInfer's
// ReluFalcon (PWRI files). Parallel blocks: attention and FFN both read a LayerNorm (with bias)
// of the layer's input, and both outputs join it,
//   x += attn_output attention(RoPE(Q), RoPE(K), V) + down(act(up LN(x)))
// with Q, K and V the row ranges of one fused attn_qkv (all Q heads, then K's, then V's: the
// converter regroups Hugging Face's per-group layout), grouped KV heads, NeoX RoPE and no
// biases on the projections. The FFN has no gate: GELU (tanh) in llama.cpp's files; ReLU in
// PowerInfer's, with ffn_down_t and a predictor that reads the layer's input (build_falcon hands
// it inpL), which is also the FFN's input in a parallel block. Falcon-40B's attn_norm_2: where a
// layer has it, attention reads LN(x) with it and the FFN keeps attn_norm. The output norm has a
// bias; output.weight is optional (tied). Sources: docs/architecture-facts.md, 4a and 4b
// (llama.cpp src/models/falcon.cpp, its converter's FalconModel; PowerInfer's build_falcon and
// llm_load_sparse_model_tensors).
#include <string>

#include "model/architectures/architectures.h"

namespace si {

namespace {

void read_falcon_config(const GgufFile& file, ModelConfig& config) {
    read_common_config(file, config);
    BlockSpec& block = config.block;
    block.norm = NormKind::layer;
    block.parallel_blocks = true;
    block.ffn_gate = false;
    block.rope_layout = RopeLayout::halves;
    if (file.is_powerinfer()) {
        block.ffn = FeedForwardKind::relu_predicted;
    } else {
        block.ffn_activation = Activation::gelu_tanh;
    }
    config.norm_eps = static_cast<float>(positive_number(file, "falcon.attention.layer_norm_epsilon", {}));
}

void bind_falcon_weights(WeightSource& source, const ModelConfig& c, ModelWeights& w) {
    w.token_embd = source.weight("token_embd.weight", c.n_embd, c.n_vocab);
    w.output_norm = source.vector("output_norm.weight", c.n_embd);
    w.output_norm_b = source.vector("output_norm.bias", c.n_embd);
    w.output = output_or_tied(source, c, w.token_embd);
    w.layers.resize(static_cast<size_t>(c.n_layer));
    for (int64_t i = 0; i < c.n_layer; ++i) {
        const std::string b = "blk." + std::to_string(i) + ".";
        LayerWeights& l = w.layers[static_cast<size_t>(i)];
        l.ffn_norm = source.vector(b + "attn_norm.weight", c.n_embd);
        l.ffn_norm_b = source.vector(b + "attn_norm.bias", c.n_embd);
        if (source.file().find_tensor(b + "attn_norm_2.weight")) {
            l.attn_norm = source.vector(b + "attn_norm_2.weight", c.n_embd);
            l.attn_norm_b = source.vector(b + "attn_norm_2.bias", c.n_embd);
        } else {
            l.attn_norm = l.ffn_norm;
            l.attn_norm_b = l.ffn_norm_b;
        }
        const std::string qkv_name = b + "attn_qkv.weight";
        const Matrix qkv = source.weight(qkv_name, c.n_embd, c.q_dim() + 2 * c.kv_dim());
        l.wq = row_range(qkv, 0, c.q_dim(), qkv_name + " (Q rows)");
        l.wk = row_range(qkv, c.q_dim(), c.kv_dim(), qkv_name + " (K rows)");
        l.wv = row_range(qkv, c.q_dim() + c.kv_dim(), c.kv_dim(), qkv_name + " (V rows)");
        l.wo = source.weight(b + "attn_output.weight", c.q_dim(), c.n_embd);
        l.ffn_up = source.weight(b + "ffn_up.weight", c.n_embd, c.n_ff);
        bind_down_projection(source, c, b, l);
    }
}

}  // namespace

const Architecture kFalcon = {"falcon", read_falcon_config, bind_falcon_weights};

}  // namespace si
