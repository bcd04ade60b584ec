// The architectures, one file each (or a family to a file); architecture.cpp lists them.
#pragma once

#include <string>

#include "model/architecture.h"

namespace si {

extern const Architecture kLlama;    // llama.cpp: dense; PowerInfer's ReLU llama in a PWRI file
extern const Architecture kBamboo;   // PowerInfer: ReLU on gate and up, PWRI files only
extern const Architecture kMiniCpm;  // llama blocks with MiniCPM's embedding, residual and logit scales
extern const Architecture kQwen2;    // llama blocks with Q, K, V biases and NeoX RoPE
extern const Architecture kQwen3;    // llama blocks with per-head Q and K norms and NeoX RoPE
extern const Architecture kGemma3;   // Q/K norms, post-norms, GELU, sliding-window layers
extern const Architecture kFalcon;   // parallel blocks, LayerNorms, fused QKV; ReluFalcon in a PWRI file
extern const Architecture kOpt;      // learned positions, LayerNorms, biases everywhere; PWRI or dense

// The weights of llama-style blocks as the config's BlockSpec asks (biases, Q/K norms,
// post-norms, a PowerInfer FFN with its predictors), under llama.cpp's tensor names; output.weight, when
// the file has none, is token_embd (tied embeddings).
void bind_llama_weights(WeightSource& source, const ModelConfig& config, ModelWeights& weights);

// A layer's down projection under the prefix b ("blk.N."): ffn_down for a dense FFN; for a
// PowerInfer one ffn_down_t and the predictor, fc1 (whose rows give its rank) and fc2; the
// down bias where the BlockSpec has ffn_bias.
void bind_down_projection(WeightSource& source, const ModelConfig& config, const std::string& b, LayerWeights& l);

// UnsupportedError unless `file` is a plain GGUF file: PowerInfer's converter writes sparse
// files (magic PWRI) for llama, bamboo, falcon and opt only.
void require_dense_file(const GgufFile& file);

}  // namespace si
