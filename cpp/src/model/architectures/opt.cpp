// OPT (Meta's; PowerInfer's `opt`, whose converter writes the OPT GGUF files there are: PWRI files
// with predictors, and plain ones). Pre-norm blocks with LayerNorms (with bias), learned absolute
// positions (position p adds row p + 2 of position_embd: Hugging Face's OPT offsets its table by
// two rows), no RoPE, biases on Q, K, V, attn_output, ffn_up and the down projection, an FFN of
// relu(up x + b) without a gate, logits from token_embd (tied). The predictor reads the residual
// after attention, as llama's. The files carry no head_count_kv (every head has its own K and V)
// and no epsilon: PowerInfer's loader leaves it 0; we read opt.attention.layer_norm_epsilon where
// a file has one, else 1e-5, PyTorch's LayerNorm default that OPT was trained with. Sources:
// docs/architecture-facts.md, 4c (PowerInfer's build_opt, llm_load_hparams, its input setup
// that adds 2 to every position, and convert-hf-to-powerinfer-gguf.py's OptModel).
#include <algorithm>
#include <string>

#include "common/errors.h"
#include "model/architectures/architectures.h"

namespace si {

namespace {

constexpr int64_t kPositionOffset = 2;
constexpr double kLayerNormEps = 1e-5;

// The rows of position_embd.weight (FormatError when it is missing or has too few).
int64_t position_rows(const GgufFile& file) {
    const GgufTensor* positions = file.find_tensor("position_embd.weight");
    if (!positions || positions->shape.size() != 2) {
        throw FormatError(file.describe("tensor 'position_embd.weight' (OPT's learned positions) is missing or "
                                        "not 2-D"));
    }
    if (positions->shape[1] <= kPositionOffset) {
        throw FormatError(file.describe("tensor 'position_embd.weight' has " + std::to_string(positions->shape[1]) +
                                        " rows, and OPT's positions start at row " +
                                        std::to_string(kPositionOffset)));
    }
    return positions->shape[1];
}

void read_opt_config(const GgufFile& file, ModelConfig& config) {
    read_common_config(file, config);
    BlockSpec& block = config.block;
    block.norm = NormKind::layer;
    block.ffn_gate = false;
    block.ffn_activation = Activation::relu;
    block.qkv_bias = block.output_bias = block.ffn_bias = true;
    if (file.is_powerinfer()) block.ffn = FeedForwardKind::relu_predicted;
    config.norm_eps = static_cast<float>(positive_number(file, "opt.attention.layer_norm_epsilon", kLayerNormEps));
    config.rope_dim = 0;
    config.learned_positions = true;
    config.position_offset = kPositionOffset;
    config.n_ctx_train = std::min(config.n_ctx_train, position_rows(file) - kPositionOffset);
}

void bind_opt_weights(WeightSource& source, const ModelConfig& c, ModelWeights& w) {
    w.token_embd = source.weight("token_embd.weight", c.n_embd, c.n_vocab);
    w.position_embd = source.weight("position_embd.weight", c.n_embd, position_rows(source.file()));
    w.output_norm = source.vector("output_norm.weight", c.n_embd);
    w.output_norm_b = source.vector("output_norm.bias", c.n_embd);
    w.output = output_or_tied(source, c, w.token_embd);
    w.layers.resize(static_cast<size_t>(c.n_layer));
    for (int64_t i = 0; i < c.n_layer; ++i) {
        const std::string b = "blk." + std::to_string(i) + ".";
        LayerWeights& l = w.layers[static_cast<size_t>(i)];
        l.attn_norm = source.vector(b + "attn_norm.weight", c.n_embd);
        l.attn_norm_b = source.vector(b + "attn_norm.bias", c.n_embd);
        l.wq = source.weight(b + "attn_q.weight", c.n_embd, c.q_dim());
        l.wk = source.weight(b + "attn_k.weight", c.n_embd, c.kv_dim());
        l.wv = source.weight(b + "attn_v.weight", c.n_embd, c.kv_dim());
        l.bq = source.vector(b + "attn_q.bias", c.q_dim());
        l.bk = source.vector(b + "attn_k.bias", c.kv_dim());
        l.bv = source.vector(b + "attn_v.bias", c.kv_dim());
        l.wo = source.weight(b + "attn_output.weight", c.q_dim(), c.n_embd);
        l.bo = source.vector(b + "attn_output.bias", c.n_embd);
        l.ffn_norm = source.vector(b + "ffn_norm.weight", c.n_embd);
        l.ffn_norm_b = source.vector(b + "ffn_norm.bias", c.n_embd);
        l.ffn_up = source.weight(b + "ffn_up.weight", c.n_embd, c.n_ff);
        l.ffn_up_b = source.vector(b + "ffn_up.bias", c.n_ff);
        bind_down_projection(source, c, b, l);
    }
}

}  // namespace

const Architecture kOpt = {"opt", read_opt_config, bind_opt_weights};

}  // namespace si
