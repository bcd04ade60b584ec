// The feed-forward block of a layer, in its three forms:
//   dense llama files:  x += W_down (silu(W_gate xn) * W_up xn)
//   PowerInfer files, dense:  every neuron j: h_j = relu(gate_j . xn) * up_j . xn
//                             (relu on up too for bamboo), x += sum_j h_j down_t[j]
//   PowerInfer files, sparse: the same sum over the neurons the predictor marks active,
//                             score = fc2 relu(fc1 x) >= threshold, x taken before ffn_norm;
//                             gate and up rows of the others are never read.
//   PowerInfer files, hybrid: a GPU layer computes the predictor and its hot neurons; the
//                             CPU computes the active cold ones (cold_feed_forward) and its
//                             partial sum is added on the GPU.
// (FACTS.md: PowerInfer's llm_build_ffn_sparse and its CPU kernels.)
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/errors.h"
#include "cpu/prefetch.h"
#include "model/norm.h"
#include "model/session.h"

namespace si {

namespace {

// How many active neurons ahead the sparse loops start loading weight rows: far enough to
// hide a memory access behind the dot products in between.
constexpr int64_t kPrefetchAhead = 4;
// Tokens whose output slices a batched down projection keeps hot at once (16 tokens x a
// thread's columns: tens of KiB, within L1/L2).
constexpr int64_t kDownTokenTile = 16;

}  // namespace

void Session::feed_forward(int layer, int64_t n) {
    const ModelConfig& c = model_->config();
    const LayerWeights& l = model_->layers()[static_cast<size_t>(layer)];
    const int64_t hidden = n * c.n_ff;

    if (!c.powerinfer) {
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
    if (!sparse_) {
        matmul({{&l.ffn_gate, gate_.data()}, {&l.ffn_up, up_.data()}}, xn_.data(), n);
        const bool relu_up = c.relu_up;
        for (int64_t i = 0; i < hidden; ++i) {
            gate_[i] = std::max(gate_[i], 0.0f) * (relu_up ? std::max(up_[i], 0.0f) : up_[i]);
        }
        layer_active_[static_cast<size_t>(layer)] += hidden;
    } else {
        sparse_gate_up(l, n);
        for (int64_t t = 0; t < n; ++t) {
            layer_active_[static_cast<size_t>(layer)] += static_cast<int64_t>(active_[static_cast<size_t>(t)].size());
        }
    }
    if (count_neurons_) count_fired_neurons(layer, n);
    down_projection_transposed(l.ffn_down_t, n, sparse_);
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
    sparse_gate_up(l, n);
    down_projection_transposed(l.ffn_down_t, n, true);
    return true;
}

void Session::sparse_gate_up(const LayerWeights& l, int64_t n) {
    // h_j = relu(gate_j . xn) * up_j . xn (relu(up_j) for bamboo) for the neurons in each
    // token's active list; gate_ holds h for every neuron: zero except where computed.
    const ModelConfig& c = model_->config();
    const bool relu_up = c.relu_up;
    std::fill(gate_.begin(), gate_.begin() + n * c.n_ff, 0.0f);
    const bool same_format = activation_format(l.ffn_gate.type) == activation_format(l.ffn_up.type);
    const PreparedInput gate_in = prepare_input(l.ffn_gate, xn_.data(), n, 0, true);
    const PreparedInput up_in = prepare_input(l.ffn_up, xn_.data(), n, same_format ? 0 : 1, !same_format);
    const RowDotFn gate_dot = row_dot(kernels_, l.ffn_gate.type);
    const RowDotFn up_dot = row_dot(kernels_, l.ffn_up.type);
    pool_.run([&](int ith, int nth) {
        for (int64_t t = 0; t < n; ++t) {
            const std::vector<int32_t>& active = active_[static_cast<size_t>(t)];
            int64_t begin, end;
            ThreadPool::split(static_cast<int64_t>(active.size()), ith, nth, &begin, &end);
            for (int64_t k = begin; k < end; ++k) {
                if (k + kPrefetchAhead < end) {
                    const int32_t ahead = active[static_cast<size_t>(k + kPrefetchAhead)];
                    prefetch_bytes(l.ffn_gate.row(ahead), l.ffn_gate.row_bytes);
                    prefetch_bytes(l.ffn_up.row(ahead), l.ffn_up.row_bytes);
                }
                const int32_t j = active[static_cast<size_t>(k)];
                const float g = gate_dot(c.n_embd, l.ffn_gate.row(j), gate_in.data + t * gate_in.stride);
                if (g <= 0.0f) continue;  // relu(g) = 0: up is not needed
                const float u = up_dot(c.n_embd, l.ffn_up.row(j), up_in.data + t * up_in.stride);
                gate_[static_cast<size_t>(t * c.n_ff + j)] = g * (relu_up ? std::max(u, 0.0f) : u);
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

void Session::down_projection_transposed(const Matrix& down_t, int64_t n, bool only_active) {
    // xn[t] = sum_j h[t][j] down_t[j]. Each thread owns a slice of the output columns and
    // walks the neurons in order, so every output element has one writer and a fixed
    // summation order: the same bits for any thread count (PowerInfer's own axpy lets
    // threads race on one buffer; FACTS.md, Determinism).
    const ModelConfig& c = model_->config();
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(down_t.type));
    const int64_t unit = info->block_elems;           // a slice must be whole blocks
    const int64_t units = c.n_embd / unit;
    const RowAxpyFn axpy = row_axpy(kernels_, down_t.type);
    pool_.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(units, ith, nth, &begin, &end);
        if (begin == end) return;
        const int64_t col0 = begin * unit, cols = (end - begin) * unit;
        const size_t byte_offset = static_cast<size_t>(begin) * info->block_bytes;
        auto slice = [&](int64_t j) { return static_cast<const uint8_t*>(down_t.row(j)) + byte_offset; };
        if (n == 1) {
            // One token: each needed row is read once anyway; add it straight from its type.
            float* out = xn_.data() + col0;
            std::fill(out, out + cols, 0.0f);
            const float* h = gate_.data();
            auto accumulate = [&](int64_t j) {
                if (h[j] != 0.0f) axpy(cols, h[j], slice(j), out);
            };
            if (only_active) {
                const std::vector<int32_t>& active = active_[0];
                const size_t slice_bytes = static_cast<size_t>(end - begin) * info->block_bytes;
                for (size_t k = 0; k < active.size(); ++k) {
                    if (k + kPrefetchAhead < active.size()) {
                        prefetch_bytes(slice(active[k + kPrefetchAhead]), slice_bytes);
                    }
                    accumulate(active[k]);
                }
            } else {
                for (int64_t j = 0; j < c.n_ff; ++j) accumulate(j);
            }
            return;
        }
        // A batch: rows outer, tokens inner, so each row slice is converted to floats once
        // per tile of tokens rather than once per token (h is zero for the neurons a token
        // did not compute, so the sparse path needs no lists here).
        float* row = down_rows_.data() + static_cast<size_t>(ith) * c.n_embd;
        for (int64_t t0 = 0; t0 < n; t0 += kDownTokenTile) {
            const int64_t tn = std::min(kDownTokenTile, n - t0);
            for (int64_t t = t0; t < t0 + tn; ++t) {
                std::fill(xn_.data() + t * c.n_embd + col0, xn_.data() + t * c.n_embd + col0 + cols, 0.0f);
            }
            for (int64_t j = 0; j < c.n_ff; ++j) {
                bool needed = false;
                for (int64_t t = t0; t < t0 + tn && !needed; ++t) needed = gate_[t * c.n_ff + j] != 0.0f;
                if (!needed) continue;
                kernels_.dequantize_row(down_t.type, slice(j), row, cols);
                for (int64_t t = t0; t < t0 + tn; ++t) {
                    const float h = gate_[t * c.n_ff + j];
                    if (h != 0.0f) kernels_.axpy_f32(cols, h, row, xn_.data() + t * c.n_embd + col0);
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
    if (on && !c.powerinfer) {
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
