// The CPU kernel table. Each ISA level (generic, AVX2, AVX-512, NEON) fills one table in its
// own translation unit compiled with that level's flags; dispatch.cpp picks one at run time
// from the CPU's features (SPARSEINFER_ISA forces a level). Kernels know nothing of models.
//
// Batch invariance: within a level, a product's value for one row and one token does not
// depend on the other rows and tokens of the call. dot4 gives four single dots' results bit
// for bit; a four-row or eight-row kernel gives for each row and token what it gives for that
// row and token alone; a typed axpy gives what dequantize_row followed by axpy_f32 gives. So a
// token's logits do not depend on how a sequence was split into evaluations (a prompt at
// once, or a reused prefix and the rest; Session::matmul relies on it, kernel_check checks it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/dtype.h"

namespace si {

// Matrix-vector products quantise the activation once into the weight type's "dot format",
// then each weight row is dotted with it:
//   F32, F16, BF16 weights  -> F32 activation
//   Q8_0 weights            -> Q8_0 blocks
//   Q4_0, Q4_1, Q5_0, Q5_1  -> Q8_1 blocks: the 4- or 5-bit values stay unsigned (0..15 or
//     0..31), one multiply-add of unsigned by signed bytes per pair, and Q4_0's offset of -8
//     (Q5_0's -16, Q4_1's and Q5_1's m) comes back through s = d * sum(q):
//     d_w (sum q_w q_x) d_x + m s, m = -8 d_w for Q4_0, -16 d_w for Q5_0
//   K-quant weights         -> Q8_K blocks of 256: per block one integer sum of the groups'
//     integer dots times their integer scales, and the groups' minimums (Q4_K) or offsets
//     (Q6_K's -32) through the activation's sums over each 16 (bsums), in integers too
DType activation_format(DType weight);
// Bytes of an activation of n elements in the format for `weight`.
size_t activation_bytes(DType weight, int64_t n);

using RowDotFn = float (*)(int64_t n, const void* weight_row, const void* activation);
// out[k] = dot(row, activation k) for k < 4, the activations `stride` bytes apart: a quantised
// weight row is unpacked once for four tokens (prompt processing); float levels may give four
// single dots (their batches take the four-row kernels where they have them).
using RowDot4Fn = void (*)(int64_t n, const void* weight_row, const void* activations,
                           size_t stride, float* out);
// Eight Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 rows interleaved (BlockQ4_0x8 ... Q8_0x8 below, n / 32
// blocks) times n_tokens (1..4) activations in the type's dot format, `stride` bytes apart:
// y[t * y_stride + j] = dot(row j, activation t). One integer multiply-add serves the same four columns of all
// eight rows, and each block's scales are applied to the eight rows at once (prompt
// processing and decoding of matrices whose row count is a multiple of 8).
using Rows8DotFn = void (*)(int64_t n, const void* rows8, const void* activations, size_t stride,
                            int n_tokens, float* y, int64_t y_stride);
// Up to four F32 or F16 rows (row_bytes apart) times up to four F32 activations (stride
// bytes apart): y[t * y_stride + r] = dot(row r, activation t) for r < n_rows, t < n_tokens.
// Each activation vector loaded serves every row, where a one-row four-token kernel waits on
// loading the activations (products of float matrices, batches and single tokens alike).
using Rows4DotFn = void (*)(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* activations,
                            size_t stride, int n_tokens, float* y, int64_t y_stride);
// y[0..n) += a * row[0..n), the row in its stored type (sparse down projections, attention
// over an F16 KV cache). For block types n and the row start are whole blocks.
using RowAxpyFn = void (*)(int64_t n, float a, const void* row, float* y);
// The most rows one gathered call takes.
constexpr int kMaxGatherRows = 16;
// Rows at any addresses, as a sparse FFN gathers its active neurons' rows (1 <= n_rows <=
// kMaxGatherRows): out[r] = the row dot of rows[r] with the activation, bit for bit. The rows
// are read side by side, so that several short streams of memory are in flight at once: one
// gathered row after another left a core waiting on each row's first lines (measured on Zen 4,
// F16 rows of 3 KB from DRAM, 2 threads: 18 GB/s one by one, 30 GB/s sixteen at a time).
using GatherDotFn = void (*)(int64_t n, const void* const* rows, int n_rows, const void* activation, float* out);
// y[0..n) += a[0] rows[0] + a[1] rows[1] + ...: bit for bit what n_rows successive row axpys
// give (each element takes its multiply-adds in the rows' order), the rows read side by side.
using GatherAxpyFn = void (*)(int64_t n, const float* a, const void* const* rows, int n_rows, float* y);

// Attention scores of up to n_heads query heads against the keys of one KV head, stored
// transposed in blocks of kKeyBlock positions: block b holds, for each dimension d < head_dim,
// the block's keys' values side by side as IEEE halves (key_blocks[(b head_dim + d) kKeyBlock
// + lane] is position b kKeyBlock + lane). scores[g score_stride + p] = sum_d key_p[d] q_g[d]
// (q_g = q + g q_stride) for every position p of the blocks covering n_keys (the lanes past
// n_keys get what the cache holds there): per score one fused multiply-add per dimension, in
// order, from zero, so every level gives the same bits, with no horizontal sums (a dot per
// key of a 64-value head cost more in its final sum than in its multiply-adds).
constexpr int kKeyBlock = 16;
using KeyScoresFn = void (*)(int64_t head_dim, int64_t n_keys, const uint16_t* key_blocks, const float* q,
                             size_t q_stride, int n_heads, float* scores, size_t score_stride);

// The kernels of one weight type at one level. A type the level computes has dot, dot4, axpy,
// gather_dot and gather_axpy; rows8 (the types that interleave) and rows4 (float types) only
// where the level has them (null: the one-row kernels serve, matrices stay as stored).
struct TypeKernels {
    RowDotFn dot = nullptr;  // against an activation in activation_format(type)
    RowDot4Fn dot4 = nullptr;
    Rows8DotFn rows8 = nullptr;
    Rows4DotFn rows4 = nullptr;
    RowAxpyFn axpy = nullptr;
    GatherDotFn gather_dot = nullptr;
    GatherAxpyFn gather_axpy = nullptr;
};

// ggml's type ids are below this: the kernel table has a row for each.
constexpr size_t kTypeSlots = 40;

struct KernelTable {
    const char* isa;
    // One row per weight type, by ggml type id; every kernel null for a type without kernels
    // at this level. A new type is its row in tensor/dtype.cpp and here at every level.
    TypeKernels types[kTypeSlots];
    void (*quantize_q8_0)(const float* x, void* dst, int64_t n);
    void (*quantize_q8_1)(const float* x, void* dst, int64_t n);
    void (*quantize_q8_k)(const float* x, void* dst, int64_t n);  // n a multiple of 256
    // Dequantise a weight row to F32 (embedding lookups).
    void (*dequantize_row)(DType type, const void* src, float* dst, int64_t n);
    KeyScoresFn key_scores;

    TypeKernels& of(DType type) { return types[static_cast<size_t>(type)]; }  // filling a table
    // A row of nulls for an id beyond the slots.
    const TypeKernels& of(DType type) const {
        static const TypeKernels none;
        return static_cast<size_t>(type) < kTypeSlots ? types[static_cast<size_t>(type)] : none;
    }
};

// Eight Q4_0 rows, block by block: the rows' eight scales, then for g = 0..3 and row
// j = 0..7 the four bytes qs[4g..4g+3] of row j's block (so the 32-bit lane j of a 32-byte
// group holds row j's four bytes; their low nibbles are elements 4g..4g+3 and their high
// nibbles elements 16 + 4g..). The same size as the eight rows.
struct BlockQ4_0x8 {
    uint16_t d[8];
    uint8_t qs[4][8][4];
};
static_assert(sizeof(BlockQ4_0x8) == 8 * sizeof(BlockQ4_0), "Q4_0x8 block layout");
// The same for Q4_1, with the rows' eight minimums after their scales.
struct BlockQ4_1x8 {
    uint16_t d[8];
    uint16_t m[8];
    uint8_t qs[4][8][4];
};
static_assert(sizeof(BlockQ4_1x8) == 8 * sizeof(BlockQ4_1), "Q4_1x8 block layout");
// Eight Q8_0 rows: their scales, then for g = 0..7 and row j the bytes qs[4g..4g+3] of row j.
struct BlockQ8_0x8 {
    uint16_t d[8];
    int8_t qs[8][8][4];
};
static_assert(sizeof(BlockQ8_0x8) == 8 * sizeof(BlockQ8_0), "Q8_0x8 block layout");
// Eight Q5_0 rows: their scales, the fifth bits as bit planes, then the nibbles as in
// BlockQ4_0x8. Unpacked, the nibbles make eight vectors v of 32 bytes (v < 4: the low nibbles
// of qs[v], v >= 4: the high nibbles of qs[v - 4]); byte 4 j + b of vector v is element 4 v + b
// of row j, and its fifth bit is bit v of qh[4 j + b], so that a vector's fifth bits come out
// of one shift and one mask. The same size as the eight rows.
struct BlockQ5_0x8 {
    uint16_t d[8];
    uint8_t qh[32];
    uint8_t qs[4][8][4];
};
static_assert(sizeof(BlockQ5_0x8) == 8 * sizeof(BlockQ5_0), "Q5_0x8 block layout");
// The same for Q5_1, with the rows' eight minimums after their scales.
struct BlockQ5_1x8 {
    uint16_t d[8];
    uint16_t m[8];
    uint8_t qh[32];
    uint8_t qs[4][8][4];
};
static_assert(sizeof(BlockQ5_1x8) == 8 * sizeof(BlockQ5_1), "Q5_1x8 block layout");
// The eight-row product of a level for a weight type, or null (no kernel, or not a type
// that interleaves).
inline Rows8DotFn rows8_dot(const KernelTable& k, DType weight) { return k.of(weight).rows8; }
// The four-row float product of a level for a weight type, or null.
inline Rows4DotFn rows4_dot(const KernelTable& k, DType weight) { return k.of(weight).rows4; }
// Interleaves rows [0, 8) of a Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 matrix (rows row_bytes apart, n_blocks blocks
// each) into dst (8 * row_bytes bytes).
void interleave_rows8(DType type, const uint8_t* rows, size_t row_bytes, int64_t n_blocks, uint8_t* dst);

// A level's kernel for a weight type; UnsupportedError where it has none.
RowDotFn row_dot(const KernelTable& k, DType weight);
RowDot4Fn row_dot4(const KernelTable& k, DType weight);
RowAxpyFn row_axpy(const KernelTable& k, DType weight);
GatherDotFn gather_dot(const KernelTable& k, DType weight);
GatherAxpyFn gather_axpy(const KernelTable& k, DType weight);
// Prepares x (n floats) in the activation format of `weight` into dst.
void prepare_activation(const KernelTable& k, DType weight, const float* x, void* dst, int64_t n);

// The table in use (chosen once; SPARSEINFER_ISA=generic|avx2|avx512|neon forces one and
// throws ArgumentError if this CPU cannot run it).
const KernelTable& active_kernels();
// A specific level, or nullptr if this build or CPU lacks it (tests compare every level).
const KernelTable* kernels_for(const std::string& isa);
// Levels this build has and this CPU can run, best last.
std::vector<std::string> available_isas();

// Per-ISA tables (each defined in its own file; nullptr where not compiled in).
const KernelTable* kernels_generic();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();
const KernelTable* kernels_neon();

}  // namespace si
