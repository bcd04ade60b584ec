#include "cpu/neuron_sum.h"

#include <algorithm>
#include <atomic>

namespace si {

// h_j for up to kMaxGatherRows neurons `ids_in` (ascending) of one token, their rows gathered
// side by side: writes each nonzero h_j to h_out[j] (which holds zeros), and returns how many
// there are, with their ids and values, in id order, at the front of ids and h. known_gates:
// the token's gate value of every neuron, or null to compute the listed ones' from their rows.
struct NeuronSum::Rows {
    const NeuronMatrices& m;
    GatherDotFn gate_dot, up_dot;

    int compute(const int32_t* ids_in, int count, const float* known_gates, const void* gate_act, const void* up_act,
                float* h_out, int32_t* ids, float* h) const {
        const int64_t n_embd = m.gate.cols;
        const void* rows[kMaxGatherRows];
        float g[kMaxGatherRows], u[kMaxGatherRows];
        if (known_gates != nullptr) {
            for (int k = 0; k < count; ++k) g[k] = known_gates[ids_in[k]];
        } else {
            for (int k = 0; k < count; ++k) rows[k] = m.gate.row(ids_in[k]);
            gate_dot(n_embd, rows, count, gate_act, g);
            if (m.gate_bias != nullptr) {
                for (int k = 0; k < count; ++k) g[k] += m.gate_bias[ids_in[k]];
            }
        }
        int open = 0;  // relu(g) = 0 needs no up row: keep the others
        for (int k = 0; k < count; ++k) {
            if (g[k] <= 0.0f) continue;
            ids[open] = ids_in[k];
            g[open++] = g[k];
        }
        if (open == 0) return 0;
        if (m.up == nullptr) {  // h = relu(g), and every g left is positive
            for (int k = 0; k < open; ++k) {
                h_out[ids[k]] = g[k];
                h[k] = g[k];
            }
            return open;
        }
        for (int k = 0; k < open; ++k) rows[k] = m.up->row(ids[k]);
        up_dot(n_embd, rows, open, up_act, u);
        int live = 0;
        for (int k = 0; k < open; ++k) {
            const float value = g[k] * (m.relu_up ? std::max(u[k], 0.0f) : u[k]);
            if (value == 0.0f) continue;
            h_out[ids[k]] = value;
            ids[live] = ids[k];
            h[live++] = value;
        }
        return live;
    }
};

void NeuronSum::reserve(int64_t n_embd, int n_threads) {
    range_sums_.assign(static_cast<size_t>(kNeuronRanges * n_embd), 0.0f);
    down_rows_.assign(static_cast<size_t>(n_threads) * static_cast<size_t>(n_embd), 0.0f);
    down_tiles_.assign(static_cast<size_t>(n_threads) * static_cast<size_t>(kDownTokenTile * n_embd), 0.0f);
}

void NeuronSum::run(ThreadPool& pool, const KernelTable& kernels, ActivationSlots& slots,
                    const NeuronMatrices& neurons, const std::vector<std::vector<int32_t>>& listed, int64_t n,
                    const float* x, const float* known_gates, float* h, float* out) {
    const int64_t n_ff = neurons.gate.rows;
    std::fill(h, h + n * n_ff, 0.0f);
    const ActivationSlots::Prepared gate_in = slots.prepare(kernels, neurons.gate, x, n, 0, known_gates == nullptr);
    ActivationSlots::Prepared up_in = gate_in;  // unread without an up matrix
    GatherDotFn up_dot = nullptr;
    if (neurons.up != nullptr) {
        const bool same_format = activation_format(neurons.gate.type) == activation_format(neurons.up->type);
        up_in = slots.prepare(kernels, *neurons.up, x, n, same_format ? 0 : 1, !same_format);
        up_dot = gather_dot(kernels, neurons.up->type);
    }
    const Rows rows{neurons, gather_dot(kernels, neurons.gate.type), up_dot};
    if (n == 1) {
        one_token(pool, kernels, rows, listed[0], known_gates, gate_in.data, up_in.data, h, out);
    } else {
        activations(pool, rows, listed, n, known_gates, gate_in, up_in, h);
        down_projection(pool, kernels, neurons.down_t, n_ff, n, h, out);
    }
}

void NeuronSum::one_token(ThreadPool& pool, const KernelTable& kernels, const Rows& rows,
                          const std::vector<int32_t>& active, const float* known_gates, const void* gate_act,
                          const void* up_act, float* h_out, float* out) {
    // One pass per range: gate, up and down rows of kMaxGatherRows neurons at a time, the sum
    // into the range's own row of range_sums_; threads take the next range left.
    const Matrix& down_t = rows.m.down_t;
    const int64_t n_ff = rows.m.gate.rows, n_embd = down_t.cols;
    const GatherAxpyFn down_axpy = gather_axpy(kernels, down_t.type);
    std::atomic<int64_t> next_range{0};
    pool.run([&](int, int) {
        int32_t ids[kMaxGatherRows];
        float h[kMaxGatherRows];
        const void* down_rows[kMaxGatherRows];
        for (int64_t r; (r = next_range.fetch_add(1, std::memory_order_relaxed)) < kNeuronRanges;) {
            float* sum = range_sums_.data() + r * n_embd;
            std::fill(sum, sum + n_embd, 0.0f);
            // The range's slice of the (sorted) list.
            const auto begin = std::lower_bound(active.begin(), active.end(), range_start(r, n_ff));
            const int32_t* listed = active.data() + (begin - active.begin());
            const int64_t count = std::lower_bound(begin, active.end(), range_start(r + 1, n_ff)) - begin;
            for (int64_t k = 0; k < count; k += kMaxGatherRows) {
                const int group = static_cast<int>(std::min<int64_t>(kMaxGatherRows, count - k));
                const int live = rows.compute(listed + k, group, known_gates, gate_act, up_act, h_out, ids, h);
                for (int i = 0; i < live; ++i) down_rows[i] = down_t.row(ids[i]);
                if (live > 0) down_axpy(n_embd, h, down_rows, live, sum);
            }
        }
    });
    std::fill(out, out + n_embd, 0.0f);
    for (int64_t r = 0; r < kNeuronRanges; ++r) {
        const float* sum = range_sums_.data() + r * n_embd;
        for (int64_t e = 0; e < n_embd; ++e) out[e] += sum[e];
    }
}

void NeuronSum::activations(ThreadPool& pool, const Rows& rows,
                            const std::vector<std::vector<int32_t>>& listed_by_token, int64_t n,
                            const float* known_gates, const ActivationSlots::Prepared& gate_in,
                            const ActivationSlots::Prepared& up_in, float* h_out) {
    // h_out[t][j] = h_j of token t for the neurons it lists (zero elsewhere). The threads take
    // chunks of neuron ids in turn, and a chunk serves every token's listed neurons in it while
    // their rows are in cache.
    const int64_t n_ff = rows.m.gate.rows;
    const int64_t n_chunks = (n_ff + kActivationChunk - 1) / kActivationChunk;
    std::atomic<int64_t> next_chunk{0};
    pool.run([&](int, int) {
        int32_t ids[kMaxGatherRows];
        float h[kMaxGatherRows];
        for (int64_t chunk; (chunk = next_chunk.fetch_add(1, std::memory_order_relaxed)) < n_chunks;) {
            const int64_t first = chunk * kActivationChunk, last = std::min(n_ff, first + kActivationChunk);
            for (int64_t t = 0; t < n; ++t) {
                const std::vector<int32_t>& listed = listed_by_token[static_cast<size_t>(t)];
                const auto begin = std::lower_bound(listed.begin(), listed.end(), first);
                const auto end = std::lower_bound(begin, listed.end(), last);
                for (auto k = begin; k < end; k += std::min<std::ptrdiff_t>(kMaxGatherRows, end - k)) {
                    rows.compute(&*k, static_cast<int>(std::min<std::ptrdiff_t>(kMaxGatherRows, end - k)),
                                 known_gates != nullptr ? known_gates + t * n_ff : nullptr,
                                 gate_in.data + t * gate_in.stride, up_in.data + t * up_in.stride, h_out + t * n_ff,
                                 ids, h);
                }
            }
        }
    });
}

void NeuronSum::down_projection(ThreadPool& pool, const KernelTable& kernels, const Matrix& down_t, int64_t n_ff,
                                int64_t n, const float* h, float* out) {
    // out[t] = sum_j h[t][j] down_t[j] in the ranges' order (top of neuron_sum.h). Each thread
    // owns a slice of the output columns and adds every range for it, so every output element
    // has one writer; rows outer, tokens inner, so each row slice is converted to floats once
    // per tile of tokens (h is zero for the neurons a token did not compute: no lists needed).
    const int64_t n_embd = down_t.cols;
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(down_t.type));
    const int64_t unit = info->block_elems;  // a slice must be whole blocks
    const RowAxpyFn axpy_f32 = row_axpy(kernels, DType::F32);
    pool.run([&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(n_embd / unit, ith, nth, &begin, &end);
        if (begin == end) return;
        const int64_t col0 = begin * unit, cols = (end - begin) * unit;
        const size_t byte_offset = static_cast<size_t>(begin) * info->block_bytes;
        float* row = down_rows_.data() + static_cast<size_t>(ith) * n_embd;
        float* range_sums = down_tiles_.data() + static_cast<size_t>(ith) * kDownTokenTile * n_embd;
        for (int64_t t0 = 0; t0 < n; t0 += kDownTokenTile) {
            const int64_t tn = std::min(kDownTokenTile, n - t0);
            for (int64_t t = t0; t < t0 + tn; ++t) {
                std::fill(out + t * n_embd + col0, out + t * n_embd + col0 + cols, 0.0f);
            }
            for (int64_t r = 0; r < kNeuronRanges; ++r) {
                std::fill(range_sums, range_sums + tn * cols, 0.0f);
                for (int64_t j = range_start(r, n_ff); j < range_start(r + 1, n_ff); ++j) {
                    bool needed = false;
                    for (int64_t t = t0; t < t0 + tn && !needed; ++t) needed = h[t * n_ff + j] != 0.0f;
                    if (!needed) continue;
                    kernels.dequantize_row(down_t.type, static_cast<const uint8_t*>(down_t.row(j)) + byte_offset, row,
                                           cols);
                    for (int64_t t = t0; t < t0 + tn; ++t) {
                        const float value = h[t * n_ff + j];
                        if (value != 0.0f) axpy_f32(cols, value, row, range_sums + (t - t0) * cols);
                    }
                }
                for (int64_t t = t0; t < t0 + tn; ++t) {
                    float* sum_out = out + t * n_embd + col0;
                    const float* sum = range_sums + (t - t0) * cols;
                    for (int64_t e = 0; e < cols; ++e) sum_out[e] += sum[e];
                }
            }
        }
    });
}

}  // namespace si
