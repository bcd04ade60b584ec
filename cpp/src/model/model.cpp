#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "common/memory.h"
#include "cpu/kernels.h"

namespace si {

namespace {

// Whether m's rows have an interleaved form: a type the kernels have an eight-row product for.
bool interleaves(const Matrix& m) { return rows8_dot(active_kernels(), m.type) != nullptr && m.rows % 8 == 0; }

// m's rows, wherever they lie (m.stride apart), interleaved eight at a time into dst
// (m.rows * m.row_bytes bytes).
void interleave_into(const Matrix& m, uint8_t* dst) {
    for (int64_t g = 0; g < m.rows / 8; ++g) {
        interleave_rows8(m.type, static_cast<const uint8_t*>(m.row(8 * g)), m.stride, m.cols / kQK,
                         dst + g * 8 * m.row_bytes);
    }
}

}  // namespace

std::shared_ptr<const Model> Model::load(const std::string& path, const LoadOptions& options) {
    std::shared_ptr<Model> model(new Model());
    model->file_ = GgufFile::open(path);
    model->prepared_ = options.prepare_weights;
    model->read_config(options);
    model->tokenizer_ = Tokenizer::create(VocabData::from_gguf(*model->file_));
    if (model->tokenizer_->n_vocab() != model->config_.n_vocab) {
        throw FormatError(model->file_->describe(
            "the tokenizer has " + std::to_string(model->tokenizer_->n_vocab()) +
            " tokens but token_embd.weight has " + std::to_string(model->config_.n_vocab) + " rows"));
    }
    model->bind_weights();
    if (!model->prepared_) return model;
    model->requantize_predictors(options.predictor_q8);
    model->interleave_matrices();
    if (model->config_.has_predictors()) {
        model->bundle_neurons();
        for (const LayerWeights& l : model->weights_.layers) {
            model->dense_gates_.push_back(relu_projection(model->config_, l));
        }
    }
    return model;
}

void Model::read_config(const LoadOptions& options) {
    const GgufFile& f = *file_;
    ModelConfig& c = config_;
    architecture_ = &find_architecture(f);
    architecture_->read_config(f, c);
    if (options.sparse_threshold && !c.has_predictors()) {
        throw ArgumentError(f.describe("sparse_threshold applies to PowerInfer files (magic PWRI), whose "
                                       "activation predictors it thresholds; this file has none"));
    }
    if (options.sparse_threshold && !std::isfinite(*options.sparse_threshold)) {
        throw ArgumentError("sparse_threshold must be a finite number");
    }
    if (c.has_predictors()) {
        c.sparse_threshold = options.sparse_threshold
            ? *options.sparse_threshold
            : static_cast<float>(f.get_float("powerinfer.sparse_threshold", 0.0));
        if (!std::isfinite(c.sparse_threshold)) {
            throw FormatError(f.describe("powerinfer.sparse_threshold is not finite"));
        }
    }
}

Matrix Model::matrix(const std::string& name, int64_t cols, int64_t rows) const {
    const GgufTensor* t = file_->find_tensor(name);
    if (!t) throw FormatError(file_->describe("tensor '" + name + "' is missing"));
    bool shape_ok = (t->shape.size() == 2 && t->shape[0] == cols && t->shape[1] == rows) ||
                    (t->shape.size() == 1 && rows == 1 && t->shape[0] == cols);
    if (!shape_ok) {
        std::string shape;
        for (int64_t d : t->shape) shape += (shape.empty() ? "" : " x ") + std::to_string(d);
        throw FormatError(file_->describe("tensor '" + name + "' has shape [" + shape +
                                          "], expected [" + std::to_string(cols) + " x " +
                                          std::to_string(rows) + "]"));
    }
    if (!dtype_info(t->ggml_type)) {
        throw UnsupportedError(file_->describe("tensor '" + name + "' has type " + dtype_name(t->ggml_type) +
                                               ", which this version cannot run (it runs " + weight_type_names() +
                                               ")"));
    }
    Matrix m;
    m.name = name;
    m.type = static_cast<DType>(t->ggml_type);
    m.rows = rows;
    m.cols = cols;
    uint64_t bytes = 0;
    if (!row_bytes(m.type, cols, &bytes)) {
        throw FormatError(file_->describe("tensor '" + name + "' has a bad row length"));
    }
    m.row_bytes = static_cast<size_t>(bytes);
    m.stride = m.row_bytes;
    m.data = t->data;
    return m;
}

std::vector<float> Model::vector(const std::string& name, int64_t n) {
    Matrix m = matrix(name, n, 1);
    std::vector<float> out(static_cast<size_t>(n));
    dequantize_row_ref(m.type, m.data, out.data(), n);
    return out;
}

Matrix Model::weight(const std::string& name, int64_t cols, int64_t rows) { return matrix(name, cols, rows); }

Matrix Model::requantize_q8_0(const Matrix& m) {
    if (m.type == DType::Q8_0) return m;
    if (m.cols % kQK != 0) {
        throw UnsupportedError(file_->describe("cannot requantise a predictor with rows of " +
                                              std::to_string(m.cols) + " values to Q8_0"));
    }
    Matrix q = m;
    q.type = DType::Q8_0;
    q.row_bytes = static_cast<size_t>(m.cols / kQK) * sizeof(BlockQ8_0);
    q.stride = q.row_bytes;
    q.interleaved = nullptr;
    uint8_t* storage = owned_copy(static_cast<uint64_t>(q.row_bytes) * static_cast<uint64_t>(m.rows),
                                  "8-bit copies of its predictors");
    std::vector<float> row(static_cast<size_t>(m.cols));
    for (int64_t r = 0; r < m.rows; ++r) {
        dequantize_row_ref(m.type, m.row(r), row.data(), m.cols);
        quantize_row_q8_0_ref(row.data(), reinterpret_cast<BlockQ8_0*>(storage + r * q.row_bytes), m.cols);
    }
    q.data = storage;
    return q;
}

namespace {

// Probe inputs for comparing predictors: standard normal values from a fixed generator of our
// own (splitmix64, Box-Muller), so that every platform draws the same probes.
class ProbeValues {
public:
    float next() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        const double u1 = (static_cast<double>(bits() >> 11) + 1.0) / 9007199254740993.0;  // (0, 1]
        const double u2 = static_cast<double>(bits() >> 11) / 9007199254740992.0;
        const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 6.283185307179586 * u2;
        spare_ = static_cast<float>(radius * std::sin(angle));
        has_spare_ = true;
        return static_cast<float>(radius * std::cos(angle));
    }

private:
    uint64_t bits() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t state_ = 20261204;
    float spare_ = 0.0f;
    bool has_spare_ = false;
};

// y = w x for every row, through the kernels inference uses.
void multiply(const KernelTable& kernels, const Matrix& w, const std::vector<float>& x, std::vector<float>& y) {
    std::vector<uint8_t> activation(activation_bytes(w.type, w.cols));
    prepare_activation(kernels, w.type, x.data(), activation.data(), w.cols);
    const RowDotFn dot = row_dot(kernels, w.type);
    y.resize(static_cast<size_t>(w.rows));
    for (int64_t r = 0; r < w.rows; ++r) y[static_cast<size_t>(r)] = dot(w.cols, w.row(r), activation.data());
}

// The share of neuron decisions (score >= threshold) two predictors agree on for `probes`
// random inputs.
double predictor_agreement(const Matrix& fc1_a, const Matrix& fc2_a, const Matrix& fc1_b, const Matrix& fc2_b,
                           float threshold, int probes) {
    const KernelTable& kernels = active_kernels();
    ProbeValues values;
    std::vector<float> x(static_cast<size_t>(fc1_a.cols)), hidden, scores_a, scores_b;
    int64_t agree = 0;
    for (int p = 0; p < probes; ++p) {
        for (float& v : x) v = values.next();
        for (int side = 0; side < 2; ++side) {
            multiply(kernels, side == 0 ? fc1_a : fc1_b, x, hidden);
            for (float& h : hidden) h = std::max(h, 0.0f);
            multiply(kernels, side == 0 ? fc2_a : fc2_b, hidden, side == 0 ? scores_a : scores_b);
        }
        for (size_t j = 0; j < scores_a.size(); ++j) agree += (scores_a[j] >= threshold) == (scores_b[j] >= threshold);
    }
    return static_cast<double>(agree) / (static_cast<double>(probes) * static_cast<double>(fc2_a.rows));
}

// Types whose predictors an 8-bit copy makes smaller.
bool wider_than_q8_0(DType type) { return type == DType::F32 || type == DType::F16 || type == DType::BF16; }

}  // namespace

void Model::requantize_predictors(PredictorQ8 mode) {
    predictor_q8_layers_.assign(weights_.layers.size(), false);
    if (mode == PredictorQ8::off) return;
    if (!config_.has_predictors()) {
        if (mode == PredictorQ8::on) {
            throw ArgumentError(file_->describe("predictor_q8 needs a PowerInfer file with predictors"));
        }
        return;
    }
    // Probes per layer when deciding: 8 x n_ff decisions (30,720 for MiniCPM-S-1B).
    constexpr int kProbes = 8;
    for (size_t il = 0; il < weights_.layers.size(); ++il) {
        LayerWeights& l = weights_.layers[il];
        if (mode == PredictorQ8::automatic && !(wider_than_q8_0(l.fc1.type) || wider_than_q8_0(l.fc2.type))) continue;
        // Rows that are not whole Q8_0 blocks stay as stored unless a Q8_0 copy was asked for.
        if (mode == PredictorQ8::automatic && (l.fc1.cols % kQK != 0 || l.fc2.cols % kQK != 0)) continue;
        const size_t owned_before = owned_weights_.size();
        const uint64_t owned_bytes_before = owned_bytes_;
        const Matrix fc1 = requantize_q8_0(l.fc1), fc2 = requantize_q8_0(l.fc2);
        if (mode == PredictorQ8::automatic &&
            predictor_agreement(l.fc1, l.fc2, fc1, fc2, config_.sparse_threshold, kProbes) < kPredictorQ8Agreement) {
            owned_weights_.erase(owned_weights_.begin() + static_cast<std::ptrdiff_t>(owned_before),
                                 owned_weights_.end());  // this layer keeps its stored predictor
            owned_bytes_ = owned_bytes_before;
            continue;
        }
        release_stored_rows(l.fc1);  // only the Q8_0 copies are read from now on
        release_stored_rows(l.fc2);
        l.fc1 = fc1;
        l.fc2 = fc2;
        predictor_q8_layers_[il] = true;
    }
}

void Model::release_stored_rows(const Matrix& m) const {
    file_->release_pages(m.data, static_cast<uint64_t>(m.rows) * m.row_bytes);
}

uint8_t* Model::owned_copy(uint64_t bytes, const std::string& what) {
    owned_bytes_ += bytes;
    require_memory(file_->describe(what), owned_bytes_);
    return owned_weights_.emplace_back(static_cast<size_t>(bytes), file_->describe(what)).data();
}

void Model::interleave_matrices() {
    // Only matrices that are read whole, by matrix products: a PowerInfer file's gate and up
    // rows are also gathered one by one (the sparse FFN), so they stay as stored.
    auto interleave = [this](Matrix& m) {
        if (m.data == nullptr || !interleaves(m) || m.interleaved != nullptr) return;  // absent: no gate
        uint8_t* dst = owned_copy(static_cast<uint64_t>(m.rows) * m.row_bytes,
                                  "interleaved copies of its quantised matrices for the CPU kernels");
        interleave_into(m, dst);
        m.interleaved = dst;
        release_stored_rows(m);
    };
    for (LayerWeights& l : weights_.layers) {
        for (Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.fc1, &l.fc2}) interleave(*m);
        if (!config_.has_predictors()) {
            for (Matrix* m : {&l.ffn_gate, &l.ffn_up, &l.ffn_down}) interleave(*m);
        }
    }
    interleave(weights_.output);
}

void Model::bundle_neurons() {
    const int64_t n_ff = config_.n_ff;
    for (LayerWeights& l : weights_.layers) {
        std::vector<Matrix*> parts = {&l.ffn_up, &l.ffn_down_t};
        if (config_.block.ffn_gate) parts.insert(parts.begin(), &l.ffn_gate);
        size_t stride = 0;
        for (const Matrix* m : parts) stride += m->row_bytes;
        stride = (stride + 63) / 64 * 64;  // each bundle starts on a cache line
        uint8_t* dst = owned_copy(static_cast<uint64_t>(n_ff) * stride,
                                  "the per-neuron copies of its gate, up and down rows");
        size_t offset = 0;
        for (Matrix* m : parts) {
            for (int64_t j = 0; j < n_ff; ++j) std::memcpy(dst + j * stride + offset, m->row(j), m->row_bytes);
            release_stored_rows(*m);  // a GPU upload reads the rows it needs from the bundles too
            m->data = dst + offset;
            m->stride = stride;
            offset += m->row_bytes;
        }
        for (int64_t j = 0; j < n_ff; ++j) std::memset(dst + j * stride + offset, 0, stride - offset);
    }
}

void Model::prepare_dense_gates(int64_t n_layers) const {
    const std::lock_guard<std::mutex> lock(dense_gates_mutex_);
    for (int64_t il = 0; il < n_layers && il < static_cast<int64_t>(dense_gates_.size()); ++il) {
        Matrix& gate = dense_gates_[static_cast<size_t>(il)];
        if (gate.interleaved != nullptr || !interleaves(gate)) continue;
        const uint64_t bytes = static_cast<uint64_t>(gate.rows) * gate.row_bytes;
        const std::string what = "interleaved copies of its gate matrices for a dense session";
        require_memory(file_->describe(what), owned_bytes_ + dense_gate_bytes_ + bytes);
        uint8_t* dst = dense_gate_copies_.emplace_back(static_cast<size_t>(bytes), file_->describe(what)).data();
        dense_gate_bytes_ += bytes;
        interleave_into(gate, dst);
        gate.interleaved = dst;
    }
}

void Model::bind_weights() { architecture_->bind_weights(*this, config_, weights_); }

}  // namespace si
