// A model's hyperparameters, the description of its layers (BlockSpec) and typed views of its
// weights: the data an architecture (model/architectures/) produces from a file and the
// forward passes read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/matrix.h"

namespace si {

// What every layer of a model computes, as data: the forward passes (session/session.cpp,
// gpu/, cuda/) branch on this, never on an architecture's name. An
// architecture (model/architectures/) sets it when it reads a file; a new kind of block is a
// field here and the branches that honour it.
enum class Activation {
    identity,
    relu,
    silu,       // x / (1 + e^-x)
    gelu_tanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU's tanh approximation (Gemma)
};

enum class FeedForwardKind {
    // Every neuron, the matrices as stored: down (ffn_activation(gate x) * (up x)), or without
    // a gate down (ffn_activation(up x)).
    dense,
    // PowerInfer's (files of magic PWRI): h_j = relu(gate_j x) * up_activation(up_j x), or
    // without a gate relu(up_j x); the down projection stored transposed (ffn_down_t: a row per
    // neuron), and a predictor per layer (fc1, fc2) whose scores mark the neurons a sparse
    // session computes.
    relu_predicted,
};

// How the blocks normalise (every norm but the per-head Q/K norms and the post-norms, which are
// RMS norms wherever a BlockSpec has them).
enum class NormKind {
    rms,    // x / sqrt(mean(x^2) + eps) * w
    layer,  // (x - mean(x)) / sqrt(var(x) + eps) * w + b: LayerNorm with a bias (Falcon, OPT)
};

// Which values of a head RoPE turns together (llama.cpp's rope types).
enum class RopeLayout {
    adjacent_pairs,  // (x[2i], x[2i+1]): GGML's "normal" mode, for which llama files are converted
    halves,          // (x[i], x[i + rope_dim/2]): GGML's NeoX mode (Qwen2, Qwen3, Falcon, Gemma)
};

struct BlockSpec {
    FeedForwardKind ffn = FeedForwardKind::dense;
    // Whether the FFN has a gate projection (ffn_gate); without one (Falcon, OPT) the activation
    // applies to up's output.
    bool ffn_gate = true;
    // Of a dense FFN: gelu_tanh for Gemma 3 and llama.cpp's Falcon, relu for a dense OPT file.
    Activation ffn_activation = Activation::silu;
    Activation up_activation = Activation::identity;  // of a gated relu_predicted FFN: relu for bamboo
    NormKind norm = NormKind::rms;
    // Attention and FFN both read the layer's input, and both outputs join it:
    // x += attention(x) + FFN(x) (Falcon). Otherwise the FFN reads x after attention joined it.
    bool parallel_blocks = false;
    RopeLayout rope_layout = RopeLayout::adjacent_pairs;
    bool qkv_bias = false;  // attn_q/k/v.bias added to Q, K and V (Qwen2; any file that has them)
    // attn_output.bias, ffn_up.bias and the down projection's bias (OPT).
    bool output_bias = false;
    bool ffn_bias = false;
    // Each head of Q and of K RMS-normed (attn_q_norm, attn_k_norm: head_dim weights) before
    // RoPE (Qwen3).
    bool qk_norm = false;
    // MiniCPM's scales (muP): the embeddings are multiplied by embedding_scale, the output of
    // each attention and FFN block by residual_scale before it joins the residual stream, and
    // the logits divided by logit_scale. 1 leaves a value as it is (x * 1.0f is x).
    float embedding_scale = 1.0f;
    float residual_scale = 1.0f;
    float logit_scale = 1.0f;
    // The attention and FFN outputs RMS-normed before they join the residual stream
    // (post_attention_norm, post_ffw_norm: Gemma 3).
    bool post_norms = false;
    // The factor of q.k in attention; 0: 1 / sqrt(head_dim).
    float attention_scale = 0.0f;
    // > 0: the logits capped as c tanh(logits / c) (Gemma 3 files that carry the key).
    float final_logit_softcap = 0.0f;
};

// How RoPE's rotation speeds are stretched for a context beyond the trained one, as llama.cpp
// reads "<arch>.rope.scaling.*" (docs/rope-scaling.md; model/rope.h computes the frequencies).
enum class RopeScalingType {
    none,
    linear,  // positions divided by the factor
    yarn,    // YaRN: slow pairs interpolated, fast ones kept, a ramp between; cos and sin scaled
};

struct RopeScaling {
    RopeScalingType type = RopeScalingType::none;
    float factor = 1.0f;  // context extension; 1 whenever type is none
    // yarn: the context the model was trained for before the extension, which places the ramp
    // (rope.scaling.original_context_length, else context_length).
    int64_t original_context = 0;
    // The YaRN ramp runs between the pairs that turn beta_fast and beta_slow times over the
    // original context; llama.cpp's values for the llama family, which it reads from no key.
    float beta_fast = 32.0f;
    float beta_slow = 1.0f;
    float attn_factor = 1.0f;  // rope.scaling.attn_factor: multiplies cos and sin, any type
};

// Hyperparameters, and the block every layer is.
struct ModelConfig {
    std::string arch;  // general.architecture, for messages and info
    int64_t n_vocab = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;  // of Q, K and V: attention.key_length, else n_embd / n_head
    int64_t n_ff = 0;
    int64_t n_ctx_train = 0;
    int64_t rope_dim = 0;  // leading dimensions of each head that RoPE rotates
    float rope_base = 10000.0f;
    RopeScaling rope_scaling;
    float norm_eps = 1e-5f;  // of the BlockSpec's norm, RMS or LayerNorm
    BlockSpec block;
    // Learned absolute positions (OPT): position p adds row p + position_offset of position_embd
    // to the token's embedding, and no RoPE turns (rope_dim 0). n_ctx_train is then at most the
    // rows past the offset, and a session refuses a longer context.
    bool learned_positions = false;
    int64_t position_offset = 0;
    // Sliding-window attention (Gemma 3): a layer whose flag is set attends to the last
    // sliding_window positions, its own included (llama.cpp's LLAMA_SWA_TYPE_STANDARD), and
    // turns RoPE by local_rope_base; the others attend to every position with rope_base.
    // Empty: every layer is global.
    std::vector<uint8_t> sliding_layers;
    int64_t sliding_window = 0;
    float local_rope_base = 10000.0f;
    // A neuron is active when its predictor score is >= this (powerinfer.sparse_threshold,
    // or LoadOptions::sparse_threshold).
    float sparse_threshold = 0.0f;

    // The width of all query heads together (of Q, and the input of attn_output): n_embd
    // unless the file says heads are wider or narrower (Qwen3, Gemma 3).
    int64_t q_dim() const { return n_head * head_dim; }
    int64_t kv_dim() const { return n_head_kv * head_dim; }
    // Whether layer il attends through a sliding window (sliding_layers).
    bool slides(int64_t il) const { return !sliding_layers.empty() && sliding_layers[static_cast<size_t>(il)] != 0; }
    // Whether the layers have activation predictors: the model can run sparse.
    bool has_predictors() const { return block.ffn == FeedForwardKind::relu_predicted; }
};

struct LayerWeights {
    // The biases of a LayerNorm (NormKind::layer) and of a BlockSpec with output_bias or
    // ffn_bias sit next to their weights; empty where the BlockSpec has none.
    std::vector<float> attn_norm, attn_norm_b;
    Matrix wq, wk, wv, wo;
    std::vector<float> bq, bk, bv;      // BlockSpec::qkv_bias
    std::vector<float> q_norm, k_norm;  // BlockSpec::qk_norm: head_dim each
    std::vector<float> attn_post_norm, ffn_post_norm;  // BlockSpec::post_norms
    std::vector<float> bo;
    std::vector<float> ffn_norm, ffn_norm_b;
    // PowerInfer files keep neuron j's gate row, up row and ffn_down_t row side by side in a
    // copy made at load (row j of each of the three matrices lies in one block of their common
    // stride), so that an active neuron is one contiguous read ("row-column bundling", LLM in
    // a Flash); dense files keep the matrices as stored.
    Matrix ffn_gate, ffn_up;  // ffn_gate empty where the BlockSpec has no gate
    std::vector<float> ffn_up_b, ffn_down_b;
    Matrix ffn_down;    // dense: n_embd rows of n_ff
    Matrix ffn_down_t;  // relu_predicted: n_ff rows of n_embd, row j = neuron j's output
    // relu_predicted's predictor: score = fc2 relu(fc1 x), x the FFN's input before its norm (the
    // layer's input where the blocks are parallel)
    Matrix fc1, fc2;
};

// The projection whose ReLU decides whether a PowerInfer FFN's neuron j fires: ffn_gate, or
// ffn_up where the FFN has no gate (relu(up_j x + b_j)).
inline const Matrix& relu_projection(const ModelConfig& c, const LayerWeights& l) {
    return c.block.ffn_gate ? l.ffn_gate : l.ffn_up;
}

// Every weight a model's forward pass reads.
struct ModelWeights {
    Matrix token_embd;
    Matrix position_embd;  // ModelConfig::learned_positions: a row per position
    std::vector<float> output_norm, output_norm_b;
    Matrix output;  // token_embd when tied
    // Per RoPE pair (rope_dim / 2 values), the factor its frequency is divided by (Llama 3.x
    // files); empty when the file has none.
    std::vector<float> rope_freq_factors;
    std::vector<LayerWeights> layers;
};

}  // namespace si
