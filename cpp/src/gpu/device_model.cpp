#include "gpu/device_model.h"

#include <cstring>
#include <numeric>

#include "common/errors.h"
#include "model/rope.h"

namespace si::gpu {

namespace {

// What of the model's blocks the GPU layers cannot compute yet ("" when nothing). They run every
// BlockSpec field (gpu_forward.cpp, cuda/) but two that only a PowerInfer FFN would meet, whose
// neurons' sum goes straight into the residual (si_cuda_ffn_down) with no room for a factor or a
// norm; no published file has either.
std::string blocks_the_gpu_lacks(const ModelConfig& c) {
    const BlockSpec& b = c.block;
    std::string lacking;
    auto lack = [&](bool missing, const char* what) {
        if (missing) lacking += std::string(lacking.empty() ? "" : ", ") + what;
    };
    lack(c.has_predictors() && b.residual_scale != 1.0f, "a residual scale with a PowerInfer FFN");
    lack(c.has_predictors() && b.post_norms, "a norm after a PowerInfer FFN");
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
// any there (checked before the plugin loads, so that the reason is the message).
std::shared_ptr<const Model> runs_on_gpu(std::shared_ptr<const Model> model, const Placement& placement) {
    if (!model->prepared()) throw ArgumentError("a model loaded with prepare_weights=False cannot go to a GPU");
    if (placement.n_gpu_layers == 0) return model;
    const std::string lacking = blocks_the_gpu_lacks(model->config());
    if (!lacking.empty()) {
        throw UnsupportedError(model->file().describe("architecture '" + model->config().arch +
                                                      "' runs on the CPU only in this version (the GPU path lacks " +
                                                      lacking + "); use device='cpu'"));
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
        // The vectors a BlockSpec lacks are empty in the model, and so on the device.
        d.attn_norm = upload_vector(l.attn_norm, "attn_norm");
        d.attn_norm_b = upload_vector(l.attn_norm_b, "attn_norm.bias");
        d.wq = upload_matrix(l.wq);
        d.wk = upload_matrix(l.wk);
        d.wv = upload_matrix(l.wv);
        d.wo = upload_matrix(l.wo);
        d.bq = upload_vector(l.bq, "attn_q.bias");
        d.bk = upload_vector(l.bk, "attn_k.bias");
        d.bv = upload_vector(l.bv, "attn_v.bias");
        d.bo = upload_vector(l.bo, "attn_output.bias");
        d.q_norm = upload_vector(l.q_norm, "attn_q_norm");
        d.k_norm = upload_vector(l.k_norm, "attn_k_norm");
        d.attn_post_norm = upload_vector(l.attn_post_norm, "post_attention_norm");
        d.ffn_post_norm = upload_vector(l.ffn_post_norm, "post_ffw_norm");
        d.ffn_norm = upload_vector(l.ffn_norm, "ffn_norm");
        d.ffn_norm_b = upload_vector(l.ffn_norm_b, "ffn_norm.bias");
        d.ffn_down_b = upload_vector(l.ffn_down_b, "ffn_down.bias");
        if (!c.has_predictors()) {
            if (c.block.ffn_gate) d.ffn_gate = upload_matrix(l.ffn_gate);
            d.ffn_up = upload_matrix(l.ffn_up);
            d.ffn_up_b = upload_vector(l.ffn_up_b, "ffn_up.bias");
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
        const si::Matrix& relu_input = relu_projection(c, l);
        if (d.n_hot == c.n_ff) {  // every neuron: the matrices as stored
            d.ffn_gate = upload_matrix(relu_input);
            if (c.block.ffn_gate) d.ffn_up = upload_matrix(l.ffn_up);
            d.ffn_down = upload_matrix(l.ffn_down_t);
        } else if (d.n_hot > 0) {
            d.ffn_gate = upload_rows(relu_input, ids);
            if (c.block.ffn_gate) d.ffn_up = upload_rows(l.ffn_up, ids);
            d.ffn_down = upload_rows(l.ffn_down_t, ids);
        }
        if (!l.ffn_up_b.empty() && d.n_hot > 0) {  // the hot neurons' biases, in their rows' order
            std::vector<float> hot_bias(ids.size());
            for (size_t k = 0; k < ids.size(); ++k) hot_bias[k] = l.ffn_up_b[static_cast<size_t>(ids[k])];
            d.ffn_up_b = upload_vector(hot_bias, "ffn_up.bias");
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
        output_norm_ = upload_vector(model_->output_norm(), "output_norm");
        output_norm_b_ = upload_vector(model_->output_norm_bias(), "output_norm.bias");
        output_ = upload_matrix(model_->output());
        const RopeFrequencies rope = rope_frequencies(c, model_->rope_freq_factors());
        rope_inverse_frequencies_ = upload_bytes(rope.inverse.data(), rope.inverse.size() * sizeof(double),
                                                 "RoPE frequencies");
        rope_magnitude_ = rope.magnitude;
        if (!c.sliding_layers.empty()) {
            const std::vector<double> local = unscaled_rope_frequencies(c.local_rope_base, c.rope_dim);
            local_rope_inverse_frequencies_ = upload_bytes(local.data(), local.size() * sizeof(double),
                                                           "RoPE frequencies");
        }
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

Buffer DeviceModel::upload_vector(const std::vector<float>& v, const char* what) {
    return upload_bytes(v.data(), v.size() * sizeof(float), what);
}

Buffer DeviceModel::upload_bytes(const void* data, size_t bytes, const char* what) {
    Buffer b(ctx_, bytes, what);
    ctx_.upload(b.data(), data, bytes);
    weight_bytes_ += bytes;
    return b;
}

}  // namespace si::gpu
