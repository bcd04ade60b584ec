// The feed-forward block of a layer, in its three forms:
//   dense llama files:  x += W_down (silu(W_gate xn) * W_up xn)
//   PowerInfer files, dense:  every neuron j: h_j = relu(gate_j . xn) * up_j . xn
//                             (relu on up too for bamboo), x += sum_j h_j down_t[j]; where
//                             the kernels have an eight-row product for the gate's type, every
//                             gate in one matrix product (Model::dense_gate), and the neurons
//                             with a positive one go on as the sparse form's active ones
//   PowerInfer files, sparse: the same sum over the neurons the predictor marks active,
//                             score = fc2 relu(fc1 x) >= threshold, x taken before ffn_norm;
//                             gate and up rows of the others are never read.
//   PowerInfer files, hybrid: a GPU layer computes the predictor and its hot neurons; the
//                             CPU computes the active cold ones (cold_feed_forward) and its
//                             partial sum is added on the GPU.
// (FACTS.md: PowerInfer's llm_build_ffn_sparse and its CPU kernels.)
//
// A PowerInfer FFN is a sum over neurons, computed the same way in every mode:
//   - h_j = relu(gate_j . xn) * up_j . xn, where up is read only when the gate is positive
//     and down_t[j] only when h_j is not zero;
//   - the neurons are cut into kNeuronRanges fixed ranges of ids; each range's sum over its
//     neurons in id order starts from zero, and the ranges' sums are added in range order.
// Decoding computes each range in one pass over its neurons' bundled rows (model.h), gate
// (unless the dense mode's product gave it), up and down together, the ranges shared among
// the threads; a batch computes h for every token first, then each thread adds the same ranges
// for its own slice of the output columns. Either way a token's result is the same bits
// whatever the thread count or the batch it came in.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "model/norm.h"
#include "model/session.h"

namespace si {

// h_j for up to kMaxGatherRows neurons `ids_in` (ascending) of one token, their rows gathered
// side by side: writes each nonzero h_j to h_out[j] (which holds zeros), and returns how many
// there are, with their ids and values, in id order, at the front of ids and h. known_gates:
// the token's gate value of every neuron, or null to compute the listed ones' from their rows.
struct Session::NeuronRows {
    const LayerWeights& l;
    GatherDotFn gate_dot, up_dot;
    bool relu_up;
    int64_t n_embd;

    int compute(const int32_t* ids_in, int count, const float* known_gates, const void* gate_act, const void* up_act,
                float* h_out, int32_t* ids, float* h) const {
        const void* rows[kMaxGatherRows];
        float g[kMaxGatherRows], u[kMaxGatherRows];
        if (known_gates != nullptr) {
            for (int k = 0; k < count; ++k) g[k] = known_gates[ids_in[k]];
        } else {
            for (int k = 0; k < count; ++k) rows[k] = l.ffn_gate.row(ids_in[k]);
            gate_dot(n_embd, rows, count, gate_act, g);
        }
        int open = 0;  // relu(g) = 0 needs no up row: keep the others
        for (int k = 0; k < count; ++k) {
            if (g[k] <= 0.0f) continue;
            ids[open] = ids_in[k];
            g[open++] = g[k];
        }
        if (open == 0) return 0;
        for (int k = 0; k < open; ++k) rows[k] = l.ffn_up.row(ids[k]);
        up_dot(n_embd, rows, open, up_act, u);
        int live = 0;
        for (int k = 0; k < open; ++k) {
            const float value = g[k] * (relu_up ? std::max(u[k], 0.0f) : u[k]);
            if (value == 0.0f) continue;
            h_out[ids[k]] = value;
            ids[live] = ids[k];
            h[live++] = value;
        }
        return live;
    }
};

void Session::feed_forward(int layer, int64_t n) {
    const ModelConfig& c = model_->config();
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    const int64_t hidden = n * c.n_ff;

    if (!c.has_predictors()) {
        rms_norm_rows(x_.data(), l.ffn_norm.data(), n, c.n_embd, c.rms_eps, xn_.data());
        matmul({{&l.ffn_gate, gate_.data()}, {&l.ffn_up, up_.data()}}, xn_.data(), n);
        for (int64_t i = 0; i < hidden; ++i) {
            const float g = gate_[i];
            gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];  // SiLU(g) * up
        }
        matmul({{&l.ffn_down, xn_.data()}}, gate_.data(), n);
        for (int64_t i = 0; i < n * c.n_embd; ++i) x_[i] += xn_[i];
        layer_active_[static_cast<size_t>(layer)] += hidden;
        return;
    }

    // The predictor reads x before the norm, so it runs first.
    if (sparse_) predict_active_neurons(l, n);
    rms_norm_rows(x_.data(), l.ffn_norm.data(), n, c.n_embd, c.rms_eps, xn_.data());
    neuron_sum(l, n, sparse_ ? nullptr : list_dense_neurons(layer, n));
    if (sparse_) {
        for (int64_t t = 0; t < n; ++t) {
            layer_active_[static_cast<size_t>(layer)] += static_cast<int64_t>(active_[static_cast<size_t>(t)].size());
        }
    } else {
        layer_active_[static_cast<size_t>(layer)] += hidden;
    }
    if (count_neurons_) count_fired_neurons(layer, n);
    for (int64_t i = 0; i < n * c.n_embd; ++i) x_[i] += xn_[i];
}

bool Session::cold_feed_forward(int layer, int64_t n, const uint8_t* is_hot) {
    // The GPU left the predictor's scores in up_ and the normed input in xn_.
    const ModelConfig& c = model_->config();
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    select_active_neurons(up_.data(), n, is_hot);
    int64_t computed = 0;
    for (int64_t t = 0; t < n; ++t) computed += static_cast<int64_t>(active_[static_cast<size_t>(t)].size());
    layer_active_[static_cast<size_t>(layer)] += computed;
    if (computed == 0) return false;
    neuron_sum(l, n, nullptr);
    return true;
}

const float* Session::list_dense_neurons(int layer, int64_t n) {
    const int64_t n_ff = model_->config().n_ff;
    const Matrix& gates = model_->dense_gate(layer);
    if (gates.interleaved == nullptr) {
        // Without an eight-row product the gates are best read with their up rows, as the
        // sparse form reads them (F16 dense decode: 16.7 tok/s so, 12.3 with the gates first
        // in one product over the bundled rows): every neuron is listed.
        for (int64_t t = 0; t < n; ++t) {
            std::vector<int32_t>& listed = active_[static_cast<size_t>(t)];
            listed.resize(static_cast<size_t>(n_ff));
            for (int64_t j = 0; j < n_ff; ++j) listed[static_cast<size_t>(j)] = static_cast<int32_t>(j);
        }
        return nullptr;
    }
    // up_ is free until the up rows are read: the gates land there, and each token's neurons
    // with relu(gate) > 0 (the only ones whose up and down rows matter) become its list.
    matmul({{&gates, up_.data()}}, xn_.data(), n);
    for (int64_t t = 0; t < n; ++t) {
        std::vector<int32_t>& positive = active_[static_cast<size_t>(t)];
        positive.clear();
        const float* gate = up_.data() + t * n_ff;
        for (int64_t j = 0; j < n_ff; ++j) {
            if (!(gate[j] <= 0.0f)) positive.push_back(static_cast<int32_t>(j));  // as NeuronRows: NaN goes on
        }
    }
    return up_.data();
}

void Session::neuron_sum(const LayerWeights& l, int64_t n, const float* known_gates) {
    const ModelConfig& c = model_->config();
    std::fill(gate_.begin(), gate_.begin() + n * c.n_ff, 0.0f);
    const bool same_format = activation_format(l.ffn_gate.type) == activation_format(l.ffn_up.type);
    // Known gates came from list_dense_neurons' product, which left xn_ in the gate's format
    // in slot 0 already.
    const PreparedInput gate_in = prepare_input(l.ffn_gate, xn_.data(), n, 0, known_gates == nullptr);
    const PreparedInput up_in = prepare_input(l.ffn_up, xn_.data(), n, same_format ? 0 : 1, !same_format);
    const NeuronRows neurons{l, gather_dot(kernels_, l.ffn_gate.type), gather_dot(kernels_, l.ffn_up.type),
                             c.block.up_activation == Activation::relu, c.n_embd};
    if (n == 1) {
        neuron_sum_token(l, neurons, known_gates, gate_in.data, up_in.data);
    } else {
        neuron_activations(neurons, n, known_gates, gate_in, up_in);
        down_projection(l.ffn_down_t, n);
    }
}

void Session::neuron_sum_token(const LayerWeights& l, const NeuronRows& neurons, const float* known_gates,
                               const void* gate_act, const void* up_act) {
    // One pass per range: gate, up and down rows of kMaxGatherRows neurons at a time, the sum
    // into the range's own row of range_sums_; threads take the next range left.
    const ModelConfig& c = model_->config();
    const GatherAxpyFn down_axpy = gather_axpy(kernels_, l.ffn_down_t.type);
    const std::vector<int32_t>& active = active_[0];
    std::atomic<int64_t> next_range{0};
    pool_.run([&](int, int) {
        int32_t ids[kMaxGatherRows];
        float h[kMaxGatherRows];
        const void* rows[kMaxGatherRows];
        for (int64_t r; (r = next_range.fetch_add(1, std::memory_order_relaxed)) < kNeuronRanges;) {
            float* sum = range_sums_.data() + r * c.n_embd;
            std::fill(sum, sum + c.n_embd, 0.0f);
            // The range's slice of the (sorted) list.
            const auto begin = std::lower_bound(active.begin(), active.end(), range_start(r, c.n_ff));
            const int32_t* listed = active.data() + (begin - active.begin());
            const int64_t count = std::lower_bound(begin, active.end(), range_start(r + 1, c.n_ff)) - begin;
            for (int64_t k = 0; k < count; k += kMaxGatherRows) {
                const int group = static_cast<int>(std::min<int64_t>(kMaxGatherRows, count - k));
                const int live =
                    neurons.compute(listed + k, group, known_gates, gate_act, up_act, gate_.data(), ids, h);
                for (int i = 0; i < live; ++i) rows[i] = l.ffn_down_t.row(ids[i]);
                if (live > 0) down_axpy(c.n_embd, h, rows, live, sum);
            }
        }
    });
    std::fill(xn_.begin(), xn_.begin() + c.n_embd, 0.0f);
    for (int64_t r = 0; r < kNeuronRanges; ++r) {
        const float* sum = range_sums_.data() + r * c.n_embd;
        for (int64_t e = 0; e < c.n_embd; ++e) xn_[static_cast<size_t>(e)] += sum[e];
    }
}

void Session::neuron_activations(const NeuronRows& neurons, int64_t n, const float* known_gates,
                                 const PreparedInput& gate_in, const PreparedInput& up_in) {
    // gate_[t][j] = h_j of token t for the neurons it lists (zero elsewhere). The threads take
    // chunks of neuron ids in turn, and a chunk serves every token's listed neurons in it while
    // their rows are in cache.
    const int64_t n_ff = model_->config().n_ff;
    const int64_t n_chunks = (n_ff + kActivationChunk - 1) / kActivationChunk;
    std::atomic<int64_t> next_chunk{0};
    pool_.run([&](int, int) {
        int32_t ids[kMaxGatherRows];
        float h[kMaxGatherRows];
        for (int64_t chunk; (chunk = next_chunk.fetch_add(1, std::memory_order_relaxed)) < n_chunks;) {
            const int64_t first = chunk * kActivationChunk, last = std::min(n_ff, first + kActivationChunk);
            for (int64_t t = 0; t < n; ++t) {
                const std::vector<int32_t>& listed = active_[static_cast<size_t>(t)];
                const auto begin = std::lower_bound(listed.begin(), listed.end(), first);
                const auto end = std::lower_bound(begin, listed.end(), last);
                for (auto k = begin; k < end; k += std::min<std::ptrdiff_t>(kMaxGatherRows, end - k)) {
                    neurons.compute(&*k, static_cast<int>(std::min<std::ptrdiff_t>(kMaxGatherRows, end - k)),
                                    known_gates != nullptr ? known_gates + t * n_ff : nullptr,
                                    gate_in.data + t * gate_in.stride, up_in.data + t * up_in.stride,
                                    gate_.data() + t * n_ff, ids, h);
                }
            }
        }
    });
}

void Session::predict_active_neurons(const LayerWeights& l, int64_t n) {
    // score = fc2 relu(fc1 x); up_ is free until gate/up run, so the scores land there.
    const int64_t rank = l.fc1.rows;
    matmul({{&l.fc1, predictor_hidden_.data()}}, x_.data(), n);
    for (int64_t i = 0; i < n * rank; ++i) predictor_hidden_[i] = std::max(predictor_hidden_[i], 0.0f);
    matmul({{&l.fc2, up_.data()}}, predictor_hidden_.data(), n);
    select_active_neurons(up_.data(), n, nullptr);
}

void Session::select_active_neurons(const float* scores, int64_t n, const uint8_t* skip) {
    const ModelConfig& c = model_->config();
    for (int64_t t = 0; t < n; ++t) {
        std::vector<int32_t>& active = active_[static_cast<size_t>(t)];
        active.clear();
        const float* score = scores + t * c.n_ff;
        for (int64_t j = 0; j < c.n_ff; ++j) {
            if (score[j] >= c.sparse_threshold && (skip == nullptr || !skip[j])) {
                active.push_back(static_cast<int32_t>(j));
            }
        }
    }
}

void Session::down_projection(const Matrix& down_t, int64_t n) {
    // xn[t] = sum_j h[t][j] down_t[j] in the ranges' order (top of this file). Each thread owns
    // a slice of the output columns and adds every range for it, so every output element has
    // one writer; rows outer, tokens inner, so each row slice is converted to floats once per
    // tile of tokens (h is zero for the neurons a token did not compute: no lists needed).
    const ModelConfig& c = model_->config();
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(down_t.type));
    const int64_t unit = info->block_elems;  // a slice must be whole blocks
    const RowAxpyFn axpy_f32 = row_axpy(kernels_, DType::F32);
    pool_.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(c.n_embd / unit, ith, nth, &begin, &end);
        if (begin == end) return;
        const int64_t col0 = begin * unit, cols = (end - begin) * unit;
        const size_t byte_offset = static_cast<size_t>(begin) * info->block_bytes;
        float* row = down_rows_.data() + static_cast<size_t>(ith) * c.n_embd;
        float* range_sums = down_tiles_.data() + static_cast<size_t>(ith) * kDownTokenTile * c.n_embd;
        for (int64_t t0 = 0; t0 < n; t0 += kDownTokenTile) {
            const int64_t tn = std::min(kDownTokenTile, n - t0);
            for (int64_t t = t0; t < t0 + tn; ++t) {
                std::fill(xn_.data() + t * c.n_embd + col0, xn_.data() + t * c.n_embd + col0 + cols, 0.0f);
            }
            for (int64_t r = 0; r < kNeuronRanges; ++r) {
                std::fill(range_sums, range_sums + tn * cols, 0.0f);
                for (int64_t j = range_start(r, c.n_ff); j < range_start(r + 1, c.n_ff); ++j) {
                    bool needed = false;
                    for (int64_t t = t0; t < t0 + tn && !needed; ++t) needed = gate_[t * c.n_ff + j] != 0.0f;
                    if (!needed) continue;
                    kernels_.dequantize_row(down_t.type, static_cast<const uint8_t*>(down_t.row(j)) + byte_offset, row,
                                            cols);
                    for (int64_t t = t0; t < t0 + tn; ++t) {
                        const float h = gate_[t * c.n_ff + j];
                        if (h != 0.0f) axpy_f32(cols, h, row, range_sums + (t - t0) * cols);
                    }
                }
                for (int64_t t = t0; t < t0 + tn; ++t) {
                    float* out = xn_.data() + t * c.n_embd + col0;
                    const float* sum = range_sums + (t - t0) * cols;
                    for (int64_t e = 0; e < cols; ++e) out[e] += sum[e];
                }
            }
        }
    });
}

void Session::reset_stats() {
    std::fill(layer_active_.begin(), layer_active_.end(), 0);
    stats_tokens_ = 0;
}

std::vector<double> Session::active_fractions() const {
    const ModelConfig& c = model_->config();
    std::vector<double> out;
    for (int64_t count : layer_active_) {
        const double total = static_cast<double>(stats_tokens_) * static_cast<double>(c.n_ff);
        out.push_back(total > 0 ? static_cast<double>(count) / total : 0.0);
    }
    return out;
}

void Session::set_neuron_counting(bool on) {
    const ModelConfig& c = model_->config();
    if (on && !c.has_predictors()) {
        throw UnsupportedError(model_->file().describe(
            "neuron counting needs a ReLU model (a PowerInfer file, magic PWRI): the SiLU of a "
            "dense model is almost never exactly zero, so every neuron would count as firing"));
    }
    if (on && neuron_counts_.empty()) {
        neuron_counts_.assign(static_cast<size_t>(c.n_layer * c.n_ff), 0);
        batch_neuron_counts_.assign(neuron_counts_.size(), 0);
    }
    count_neurons_ = on;
}

void Session::reset_neuron_counts() {
    std::fill(neuron_counts_.begin(), neuron_counts_.end(), 0);
    neuron_count_tokens_ = 0;
}

void Session::count_fired_neurons(int layer, int64_t n) {
    // gate_ holds h for the batch, zero wherever the neuron was not computed or its
    // activation is zero. Each thread owns a range of neurons and walks every token, so each
    // count has one writer (and integer sums do not depend on the order anyway).
    const int64_t n_ff = model_->config().n_ff;
    const int64_t n_layer = model_->config().n_layer;
    if (layer == 0) std::fill(batch_neuron_counts_.begin(), batch_neuron_counts_.end(), 0);
    int64_t* counts = batch_neuron_counts_.data() + static_cast<size_t>(layer) * n_ff;
    pool_.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(n_ff, ith, nth, &begin, &end);
        for (int64_t t = 0; t < n; ++t) {
            const float* h = gate_.data() + t * n_ff;
            for (int64_t j = begin; j < end; ++j) counts[j] += h[j] != 0.0f ? 1 : 0;
        }
    });
    if (layer == n_layer - 1) {  // the batch went through every layer: commit it
        for (size_t i = 0; i < neuron_counts_.size(); ++i) neuron_counts_[i] += batch_neuron_counts_[i];
        neuron_count_tokens_ += n;
    }
}

}  // namespace si
