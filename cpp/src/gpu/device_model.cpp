#include "gpu/device_model.h"

#include <cstring>
#include <numeric>

#include "common/errors.h"
#include "model/rope.h"

namespace si::gpu {

namespace {

// What of the model's blocks the GPU layers cannot compute yet ("" when nothing): they run
// llama's block with qwen2's and qwen3's attention (Q, K, V biases, per-head Q and K norms,
// NeoX RoPE, heads of any width) and MiniCPM's scales (gpu_forward.cpp, cuda/).
std::string blocks_the_gpu_lacks(const ModelConfig& c) {
    const BlockSpec& b = c.block;
    std::string lacking;
    auto lack = [&](bool missing, const char* what) {
        if (missing) lacking += std::string(lacking.empty() ? "" : ", ") + what;
    };
    // A PowerInfer FFN on the GPU adds its neurons' sum straight into the residual (si_cuda_ffn_down),
    // with no room for a factor.
    lack(c.has_predictors() && b.residual_scale != 1.0f, "a residual scale with a PowerInfer FFN");
    lack(b.ffn == FeedForwardKind::dense && b.ffn_activation != Activation::silu, "an FFN activation other than SiLU");
    lack(!b.ffn_gate, "an FFN without a gate");
    lack(b.norm != NormKind::rms, "LayerNorm");
    lack(b.parallel_blocks, "parallel attention and FFN");
    lack(b.output_bias || b.ffn_bias, "biases on the attention output and the FFN");
    lack(c.learned_positions, "learned position embeddings");
    lack(b.post_norms, "norms after attention and FFN");
    lack(b.attention_scale != 0.0f, "a query scale of its own");
    lack(!c.sliding_layers.empty(), "sliding-window attention");
    lack(b.final_logit_softcap > 0.0f, "a logit softcap");
    return lacking;
}

// The plugin's type id for a weight type, or -1 where its kernels have none.
int plugin_type(DType t) {
    switch (t) {
        case DType::F32: return SI_CUDA_TYPE_F32;
        case DType::F16: return SI_CUDA_TYPE_F16;
        case DType::Q8_0: return SI_CUDA_TYPE_Q8_0;
        case DType::Q4_0: return SI_CUDA_TYPE_Q4_0;
        case DType::Q4_1: return SI_CUDA_TYPE_Q4_1;
        default: return -1;
    }
}

// The model, once it is known to be one whose layers the GPU can run where the placement puts
// any there (checked before the plugin loads, so that the reason is the message). Besides the
// blocks, si_cuda_rope turns by pos * base^(-2i / rope_dim) alone, so a scaled RoPE (linear,
// YaRN, frequency factors, attn_factor) is refused; lifting that means handing the kernel the
// CPU's inverse frequencies and magnitude (model/rope.h) through a new plugin ABI.
std::shared_ptr<const Model> runs_on_gpu(std::shared_ptr<const Model> model, const Placement& placement) {
    if (!model->prepared()) throw ArgumentError("a model loaded with prepare_weights=False cannot go to a GPU");
    if (placement.n_gpu_layers == 0) return model;
    const std::string lacking = blocks_the_gpu_lacks(model->config());
    if (!lacking.empty()) {
        throw UnsupportedError(model->file().describe("architecture '" + model->config().arch +
                                                      "' runs on the CPU only in this version (the GPU path lacks " +
                                                      lacking + "); use device='cpu'"));
    }
    const std::string scaling = describe_rope_scaling(model->config(), model->rope_freq_factors());
    if (!scaling.empty()) {
        throw UnsupportedError(model->file().describe("RoPE with " + scaling + " runs on the CPU only in this "
                                                      "version (the GPU plugin computes unscaled RoPE); use "
                                                      "device='cpu'"));
    }
    return model;
}

}  // namespace

DeviceModel::DeviceModel(std::shared_ptr<const Model> model, const std::string& plugin_path, int device,
                         Placement placement)
    : model_(runs_on_gpu(std::move(model), placement)), plugin_(Plugin::load(plugin_path)), ctx_(plugin_, device) {
    const ModelConfig& c = model_->config();
    const int64_t n_gpu = placement.n_gpu_layers;
    if (n_gpu < -1) throw ArgumentError("n_gpu_layers must be -1 (every layer) or >= 0");
    first_gpu_layer_ = n_gpu == -1 || n_gpu >= c.n_layer ? 0 : c.n_layer - n_gpu;
    if (!placement.all_hot()) {
        if (!c.has_predictors()) {
            throw ArgumentError("hot neurons are a PowerInfer file's placement; this model is dense");
        }
        if (static_cast<int64_t>(placement.hot_neurons.size()) != c.n_layer) {
            throw ArgumentError("the placement lists hot neurons for " +
                                std::to_string(placement.hot_neurons.size()) + " layers; the model has " +
                                std::to_string(c.n_layer));
        }
    }

    for (int64_t il = first_gpu_layer_; il < c.n_layer; ++il) {
        const LayerWeights& l = model_->layers()[static_cast<size_t>(il)];
        Layer d;
        d.attn_norm = upload_bytes(l.attn_norm.data(), l.attn_norm.size() * sizeof(float), "attn_norm");
        d.wq = upload_matrix(l.wq);
        d.wk = upload_matrix(l.wk);
        d.wv = upload_matrix(l.wv);
        d.wo = upload_matrix(l.wo);
        if (c.block.qkv_bias) {
            d.bq = upload_bytes(l.bq.data(), l.bq.size() * sizeof(float), "attn_q.bias");
            d.bk = upload_bytes(l.bk.data(), l.bk.size() * sizeof(float), "attn_k.bias");
            d.bv = upload_bytes(l.bv.data(), l.bv.size() * sizeof(float), "attn_v.bias");
        }
        if (c.block.qk_norm) {
            d.q_norm = upload_bytes(l.q_norm.data(), l.q_norm.size() * sizeof(float), "attn_q_norm");
            d.k_norm = upload_bytes(l.k_norm.data(), l.k_norm.size() * sizeof(float), "attn_k_norm");
        }
        d.ffn_norm = upload_bytes(l.ffn_norm.data(), l.ffn_norm.size() * sizeof(float), "ffn_norm");
        if (!c.has_predictors()) {
            d.ffn_gate = upload_matrix(l.ffn_gate);
            d.ffn_up = upload_matrix(l.ffn_up);
            d.ffn_down = upload_matrix(l.ffn_down);
            d.n_hot = c.n_ff;
            layers_.push_back(std::move(d));
            continue;
        }
        d.fc1 = upload_matrix(l.fc1);
        d.fc2 = upload_matrix(l.fc2);
        std::vector<int32_t> ids;
        if (placement.all_hot()) {
            ids.resize(static_cast<size_t>(c.n_ff));
            for (int64_t j = 0; j < c.n_ff; ++j) ids[static_cast<size_t>(j)] = static_cast<int32_t>(j);
        } else {
            ids = placement.hot_neurons[static_cast<size_t>(il)];
        }
        d.is_hot.assign(static_cast<size_t>(c.n_ff), 0);
        for (size_t k = 0; k < ids.size(); ++k) {
            const int32_t j = ids[k];
            if (j < 0 || j >= c.n_ff || (k > 0 && j <= ids[k - 1])) {
                throw ArgumentError("hot neurons of layer " + std::to_string(il) +
                                    " must be distinct ascending ids below n_ff=" + std::to_string(c.n_ff) +
                                    "; entry " + std::to_string(k) + " is " + std::to_string(j));
            }
            d.is_hot[static_cast<size_t>(j)] = 1;
        }
        d.n_hot = static_cast<int64_t>(ids.size());
        if (d.n_hot == c.n_ff) {  // every neuron: the matrices as stored
            d.ffn_gate = upload_matrix(l.ffn_gate);
            d.ffn_up = upload_matrix(l.ffn_up);
            d.ffn_down = upload_matrix(l.ffn_down_t);
        } else if (d.n_hot > 0) {
            d.ffn_gate = upload_rows(l.ffn_gate, ids);
            d.ffn_up = upload_rows(l.ffn_up, ids);
            d.ffn_down = upload_rows(l.ffn_down_t, ids);
        }
        if (d.n_hot > 0) d.hot_ids = upload_bytes(ids.data(), ids.size() * sizeof(int32_t), "hot neuron ids");
        layers_.push_back(std::move(d));
    }
    for (int64_t il = 0; il < first_gpu_layer_ && !placement.all_hot(); ++il) {
        if (!placement.hot_neurons[static_cast<size_t>(il)].empty()) {
            throw ArgumentError("layer " + std::to_string(il) + " runs on the CPU (n_gpu_layers=" +
                                std::to_string(n_gpu) + ") but the placement lists hot neurons for it");
        }
    }
    if (any_on_gpu()) {
        const std::vector<float>& norm = model_->output_norm();
        output_norm_ = upload_bytes(norm.data(), norm.size() * sizeof(float), "output_norm");
        output_ = upload_matrix(model_->output());
    }
    ctx_.synchronize();  // the sessions' streams read these weights
}

std::vector<int64_t> DeviceModel::hot_counts() const {
    std::vector<int64_t> out(static_cast<size_t>(model_->config().n_layer), 0);
    for (int64_t il = first_gpu_layer_; il < model_->config().n_layer; ++il) {
        out[static_cast<size_t>(il)] = layer(il).n_hot;
    }
    return out;
}

DeviceModel::Matrix DeviceModel::upload_matrix(const si::Matrix& m) {
    if (m.stride == m.row_bytes) return upload_typed(m, m.rows, m.data);
    // Rows bundled with other matrices' (a PowerInfer FFN, model.h): packed into one block first.
    std::vector<int32_t> every_row(static_cast<size_t>(m.rows));
    std::iota(every_row.begin(), every_row.end(), 0);
    return upload_rows(m, every_row);
}

DeviceModel::Matrix DeviceModel::upload_rows(const si::Matrix& m, const std::vector<int32_t>& ids) {
    std::vector<uint8_t> gathered(ids.size() * m.row_bytes);
    for (size_t k = 0; k < ids.size(); ++k) {
        std::memcpy(gathered.data() + k * m.row_bytes, m.row(ids[k]), m.row_bytes);
    }
    return upload_typed(m, static_cast<int64_t>(ids.size()), gathered.data());
}

uint64_t DeviceModel::uploaded_bytes(const si::Matrix& m) {
    uint64_t row = m.row_bytes;
    if (plugin_type(m.type) < 0 && !row_bytes(DType::Q8_0, m.cols, &row)) row = m.row_bytes;  // refused at upload
    return static_cast<uint64_t>(m.rows) * row;
}

DeviceModel::Matrix DeviceModel::upload_typed(const si::Matrix& m, int64_t rows, const void* data) {
    Matrix d;
    d.type = plugin_type(m.type);
    d.rows = rows;
    d.cols = m.cols;
    std::vector<BlockQ8_0> q8_0;
    if (d.type < 0) {
        // A type the CUDA kernels do not read (BF16, Q5_0, Q5_1, the K-quants, IQ4_NL, IQ4_XS):
        // its rows go as Q8_0 rows made here, as the CPU once ran such types.
        if (m.cols % kQK != 0) {
            throw UnsupportedError(model_->file().describe(
                "tensor " + m.name + " is " + dtype_name(static_cast<uint32_t>(m.type)) + " in rows of " +
                std::to_string(m.cols) + " values, which the CUDA kernels cannot read (F32, F16, Q8_0, Q4_0, "
                "Q4_1) nor take as Q8_0 rows; use device='cpu'"));
        }
        q8_0.resize(static_cast<size_t>(rows * (m.cols / kQK)));
        std::vector<float> values(static_cast<size_t>(m.cols));
        for (int64_t r = 0; r < rows; ++r) {
            dequantize_row_ref(m.type, static_cast<const uint8_t*>(data) + r * m.row_bytes, values.data(), m.cols);
            quantize_row_q8_0_ref(values.data(), q8_0.data() + r * (m.cols / kQK), m.cols);
        }
        d.type = SI_CUDA_TYPE_Q8_0;
        data = q8_0.data();
    }
    const size_t bytes = q8_0.empty() ? static_cast<size_t>(rows) * m.row_bytes : q8_0.size() * sizeof(BlockQ8_0);
    d.data = Buffer(ctx_, bytes, m.name.c_str());
    ctx_.upload(d.data.data(), data, bytes);
    weight_bytes_ += bytes;
    return d;
}

Buffer DeviceModel::upload_bytes(const void* data, size_t bytes, const char* what) {
    Buffer b(ctx_, bytes, what);
    ctx_.upload(b.data(), data, bytes);
    weight_bytes_ += bytes;
    return b;
}

}  // namespace si::gpu
