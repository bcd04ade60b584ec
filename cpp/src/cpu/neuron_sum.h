// The sum over a ReLU FFN's neurons (PowerInfer files) on the CPU, for the neurons each token
// lists: how it is cut up and shared among a pool's threads, next to the kernels it calls
// (kernels.h). The forward pass (session/) decides which neurons a token lists.
//
// h_j = relu(gate_j . x + b_j) * up_j . x (relu on up too where asked; without an up matrix
// h_j = relu(gate_j . x + b_j), b_j the gate's bias where it has one), out = sum_j h_j down_t[j],
// computed the same way for every caller:
//   - up is read only when the gate is positive, and down_t[j] only when h_j is not zero;
//   - the neurons are cut into kNeuronRanges fixed ranges of ids; each range's sum over its
//     neurons in id order starts from zero, and the ranges' sums are added in range order.
// One token computes each range in one pass over its neurons' bundled rows (model/weights.h),
// gate (unless given), up and down together, the ranges shared among the threads; a batch
// computes h for every token first, then each thread adds the same ranges for its own slice
// of the output columns. Either way a token's result is the same bits whatever the thread
// count or the batch it came in.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/matmul.h"
#include "cpu/thread_pool.h"
#include "tensor/matrix.h"

namespace si {

// A layer's neurons: row j of gate, up and down_t is neuron j's.
struct NeuronMatrices {
    const Matrix& gate;  // the projection the ReLU reads: ffn_gate, or ffn_up without a gate
    const Matrix* up;    // null: no second factor (Falcon's and OPT's FFN, whose `gate` is up)
    const Matrix& down_t;
    bool relu_up;             // relu(up_j . x) (bamboo) rather than up_j . x
    const float* gate_bias;  // n_ff values added to the gate's dot products (OPT's up bias), or null
};

class NeuronSum {
public:
    static constexpr int64_t kNeuronRanges = 16;
    static int64_t range_start(int64_t r, int64_t n_ff) { return r * n_ff / kNeuronRanges; }

    // The scratch floats for rows of n_embd and a pool of n_threads.
    static uint64_t scratch_floats(int64_t n_embd, int n_threads) {
        return static_cast<uint64_t>(kNeuronRanges * n_embd) +
               static_cast<uint64_t>(n_threads) * static_cast<uint64_t>((1 + kDownTokenTile) * n_embd);
    }
    void reserve(int64_t n_embd, int n_threads);

    // For the n tokens of x (n rows of n_embd), each with its ascending list of neurons
    // listed[t]: h[t][j] for the listed neurons (zero elsewhere; n rows of n_ff) and out[t] =
    // sum_j h[t][j] down_t[j] (n rows of n_embd; out may be x). known_gates: every neuron's gate
    // per token (n rows of n_ff), its bias added, from a matmul of `gate` over x just before,
    // whose prepared input in slot 0 is reused, or null to compute the listed ones'.
    void run(ThreadPool& pool, const KernelTable& kernels, ActivationSlots& slots, const NeuronMatrices& neurons,
             const std::vector<std::vector<int32_t>>& listed, int64_t n, const float* x, const float* known_gates,
             float* h, float* out);

private:
    // Tokens whose output slices a batched down projection keeps hot at once (16 tokens x a
    // thread's columns: tens of KiB, within L1/L2).
    static constexpr int64_t kDownTokenTile = 16;
    // A batch's threads take chunks of this many neuron ids in turn for h.
    static constexpr int64_t kActivationChunk = 4 * kMaxGatherRows;
    struct Rows;
    void one_token(ThreadPool& pool, const KernelTable& kernels, const Rows& rows, const std::vector<int32_t>& listed,
                   const float* known_gates, const void* gate_act, const void* up_act, float* h, float* out);
    void activations(ThreadPool& pool, const Rows& rows, const std::vector<std::vector<int32_t>>& listed, int64_t n,
                     const float* known_gates, const ActivationSlots::Prepared& gate_in,
                     const ActivationSlots::Prepared& up_in, float* h);
    void down_projection(ThreadPool& pool, const KernelTable& kernels, const Matrix& down_t, int64_t n_ff, int64_t n,
                         const float* h, float* out);

    std::vector<float> range_sums_;  // one token's sum per range of neurons
    std::vector<float> down_rows_;   // per thread, one down_t row slice as floats
    std::vector<float> down_tiles_;  // per thread, the ranges' sums of a tile of tokens
};

}  // namespace si
