// MiniCPM (openbmb's MiniCPM-1B, MiniCPM-2B; llama.cpp's `minicpm`): llama blocks (RMS norms,
// RoPE on adjacent pairs, SiLU-gated FFN) trained with muP, whose three scales the forward pass
// applies (BlockSpec): the embeddings times scale_emb, each attention and FFN output times
// scale_depth / sqrt(n_layer), the logits divided by hidden_size / dim_model_base.
//
// llama.cpp's converter writes them as minicpm.embedding_scale, minicpm.residual_scale and
// minicpm.logit_scale (convert_hf_to_gguf.py, MiniCPMModel.set_gguf_parameters), and its
// loader requires them (src/llama-model.cpp, LLM_ARCH_MINICPM). Files converted before those
// keys existed were run with MiniCPM's published constants, which stay the defaults here:
// scale_emb 12, scale_depth 1.4, dim_model_base 256 (openbmb's configuration_minicpm.py;
// llama.cpp's build_minicpm of 2024 hard-coded the same three numbers). The logits are divided
// by n_embd / 256, as Hugging Face's model and that llama.cpp did; llama-cpp-python 0.3.36
// falls back to 256 / n_embd instead, the inverse (docs/architecture-facts.md).
#include <cmath>
#include <string>

#include "model/architectures/architectures.h"

namespace si {

namespace {

constexpr double kScaleEmb = 12.0, kScaleDepth = 1.4, kDimModelBase = 256.0;

void read_minicpm_config(const GgufFile& file, ModelConfig& config) {
    require_dense_file(file);
    read_common_config(file, config);
    auto scale = [&](const std::string& key, double fallback) {
        return static_cast<float>(positive_number(file, "minicpm." + key, fallback));
    };
    const double n_layer = static_cast<double>(config.n_layer), n_embd = static_cast<double>(config.n_embd);
    config.block.embedding_scale = scale("embedding_scale", kScaleEmb);
    config.block.residual_scale = scale("residual_scale", kScaleDepth / std::sqrt(n_layer));
    config.block.logit_scale = scale("logit_scale", n_embd / kDimModelBase);
}

}  // namespace

const Architecture kMiniCpm = {"minicpm", read_minicpm_config, bind_llama_weights};

}  // namespace si
