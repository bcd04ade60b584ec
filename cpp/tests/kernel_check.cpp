// Standalone check of every CPU kernel level against the generic (portable) level: no Python,
// no test framework. Built and run by tools/check_kernels.sh (natively, and for AArch64 under
// qemu when a cross compiler is installed).
//
// For each ISA level this build and CPU can run, and each weight type:
//   * dot agrees with generic within a rounding tolerance (relative to sum |w_i x_i|);
//   * for block rows at the ends of their integer ranges against activations all at +127 or
//     all at -127, dot agrees with generic, dot4 and gathered rows equal dot bit for bit: every
//     integer sum exact, no narrow lane overflowing (random data would not show one);
//   * batch invariance (kernels.h), bit for bit: dot4 equals four single dots of the same
//     level; a four-row or eight-row product's value for a row and token equals the same
//     kernel's for that row and token alone; a typed axpy equals the level's dequantize_row
//     followed by its axpy_f32;
//   * quantize_q8_0 / quantize_q8_1 / quantize_q8_k write the same bytes as generic;
//   * axpy agrees with generic element by element and writes nothing outside y[0..n);
//   * dequantize_row equals the reference conversion;
//   * the eight-row Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 kernels (where a level has them) agree with generic's dot of
//     each interleaved row, for 1..4 tokens, and write only their 8 x n_tokens outputs;
//   * the four-row float kernels agree with generic's dot for 1..4 rows x 1..4 tokens and
//     write only those outputs.
// Float rows are tried at every length 0..70 and some longer ones, starting 0..15 bytes past a
// 64-byte boundary; block rows at 1..9 and 48 blocks, also at odd byte offsets. Data come from
// a fixed-seed std::mt19937, so a failure reproduces.
//
// Prints one line per failure (the first 40), a NOTE line per known platform-dependent corner
// (not counted), then "N passed, M failed"; exits 1 if anything failed.
#include <algorithm>
#include <cfloat>
#include <cstddef>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace {

using si::DType;
using si::KernelTable;
using si::kQK;

long g_passed = 0, g_failed = 0;

void record(bool ok, const char* fmt, ...) {
    if (ok) {
        ++g_passed;
        return;
    }
    ++g_failed;
    if (g_failed <= 40) {
        std::va_list args;
        va_start(args, fmt);
        std::fputs("FAIL ", stdout);
        std::vprintf(fmt, args);
        std::fputc('\n', stdout);
        va_end(args);
    }
}

std::mt19937 g_rng(20240611u);

float normal(float sigma = 1.0f) { return std::normal_distribution<float>(0.0f, sigma)(g_rng); }
float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g_rng); }
int uniform_int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g_rng); }

// A byte buffer whose usable area starts `offset` bytes past a 64-byte boundary, with guard
// bytes either side to catch out-of-bounds writes.
class Buffer {
public:
    static constexpr size_t kGuard = 64;
    static constexpr uint8_t kFill = 0xA5;
    Buffer(size_t bytes, size_t offset) : bytes_(bytes), storage_(bytes + offset + 3 * kGuard + 64, kFill) {
        uintptr_t base = reinterpret_cast<uintptr_t>(storage_.data()) + kGuard;
        base = (base + 63) & ~static_cast<uintptr_t>(63);
        start_ = reinterpret_cast<uint8_t*>(base) + offset;
    }
    uint8_t* data() { return start_; }
    size_t size() const { return bytes_; }
    bool guards_intact() const {
        const uint8_t* begin = storage_.data();
        const uint8_t* end = begin + storage_.size();
        for (const uint8_t* p = begin; p < start_; ++p) if (*p != kFill) return false;
        for (const uint8_t* p = start_ + bytes_; p < end; ++p) if (*p != kFill) return false;
        return true;
    }

private:
    size_t bytes_;
    std::vector<uint8_t> storage_;
    uint8_t* start_;
};

// Where a block keeps its IEEE half scale d, and whether a second half follows it (Q4_1's and
// Q5_1's m; Q2_K's, Q4_K's and Q5_K's dmin).
struct HalfScales {
    size_t d_offset;
    bool second;
};
HalfScales half_scales(DType type) {
    const size_t d_offset = type == DType::Q6_K   ? offsetof(si::BlockQ6_K, d)
                            : type == DType::Q2_K ? offsetof(si::BlockQ2_K, d)
                            : type == DType::Q3_K ? offsetof(si::BlockQ3_K, d)
                                                  : 0;
    return {d_offset, type == DType::Q4_1 || type == DType::Q5_1 || type == DType::Q2_K || type == DType::Q4_K ||
                          type == DType::Q5_K};
}

// Random weight row of n elements in `type` into dst (row_bytes(type, n) bytes).
void fill_weights(DType type, int64_t n, uint8_t* dst) {
    switch (type) {
        case DType::F32:
            for (int64_t i = 0; i < n; ++i) {
                float v = normal();
                std::memcpy(dst + 4 * i, &v, 4);
            }
            return;
        case DType::F16:
            for (int64_t i = 0; i < n; ++i) {
                // Mostly normal halves, some subnormal and some zero, to exercise conversion.
                int pick = uniform_int(0, 15);
                float v = pick == 0 ? normal(1e-6f) : pick == 1 ? 0.0f : normal();
                uint16_t h = si::fp32_to_fp16(v);
                std::memcpy(dst + 2 * i, &h, 2);
            }
            return;
        case DType::BF16:
            for (int64_t i = 0; i < n; ++i) {
                float v = normal();
                uint32_t bits;
                std::memcpy(&bits, &v, 4);
                uint16_t h = static_cast<uint16_t>(bits >> 16);
                std::memcpy(dst + 2 * i, &h, 2);
            }
            return;
        case DType::Q4_0:
            for (int64_t b = 0; b < n / kQK; ++b) {
                si::BlockQ4_0 blk;
                blk.d = si::fp32_to_fp16(normal(0.05f));
                for (auto& q : blk.qs) q = static_cast<uint8_t>(uniform_int(0, 255));
                std::memcpy(dst + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DType::Q4_1:
            for (int64_t b = 0; b < n / kQK; ++b) {
                si::BlockQ4_1 blk;
                blk.d = si::fp32_to_fp16(std::fabs(normal(0.02f)));
                blk.m = si::fp32_to_fp16(normal(0.1f));
                for (auto& q : blk.qs) q = static_cast<uint8_t>(uniform_int(0, 255));
                std::memcpy(dst + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DType::Q8_0:
            for (int64_t b = 0; b < n / kQK; ++b) {
                si::BlockQ8_0 blk;
                blk.d = si::fp32_to_fp16(normal(0.01f));
                for (auto& q : blk.qs) q = static_cast<int8_t>(uniform_int(-128, 127));  // -128 too
                std::memcpy(dst + b * sizeof blk, &blk, sizeof blk);
            }
            return;
        case DType::Q5_0:
        case DType::Q5_1:
            for (int64_t b = 0; b < n / kQK; ++b) {
                si::BlockQ5_1 blk;  // Q5_0's block is this one without m
                blk.d = si::fp32_to_fp16(type == DType::Q5_0 ? normal(0.03f) : std::fabs(normal(0.01f)));
                blk.m = si::fp32_to_fp16(normal(0.1f));
                for (auto& q : blk.qh) q = static_cast<uint8_t>(uniform_int(0, 255));
                for (auto& q : blk.qs) q = static_cast<uint8_t>(uniform_int(0, 255));
                uint8_t* out = dst + b * (type == DType::Q5_0 ? sizeof(si::BlockQ5_0) : sizeof(si::BlockQ5_1));
                if (type == DType::Q5_0) {
                    std::memcpy(out, &blk.d, 2);
                    std::memcpy(out + 2, &blk.qh, 4 + sizeof blk.qs);
                } else {
                    std::memcpy(out, &blk, sizeof blk);
                }
            }
            return;
        case DType::Q2_K:
        case DType::Q3_K:
        case DType::Q4_K:
        case DType::Q5_K:
        case DType::Q6_K:
        case DType::IQ4_XS:
        case DType::IQ4_NL: {
            // Random bytes (every scale and minimum pattern, the negative scales of Q3_K, Q6_K
            // and IQ4_XS) with finite block scales: d, and dmin (after d) for Q2_K, Q4_K, Q5_K.
            const si::DTypeInfo* info = si::dtype_info(static_cast<uint32_t>(type));
            const HalfScales scales = half_scales(type);
            for (int64_t b = 0; b < n / info->block_elems; ++b) {
                uint8_t* blk = dst + b * info->block_bytes;
                for (size_t i = 0; i < info->block_bytes; ++i) blk[i] = static_cast<uint8_t>(uniform_int(0, 255));
                const uint16_t d = si::fp32_to_fp16(normal(1e-3f)), dmin = si::fp32_to_fp16(normal(1e-3f));
                std::memcpy(blk + scales.d_offset, &d, 2);
                if (scales.second) std::memcpy(blk + scales.d_offset + 2, &dmin, 2);
            }
            return;
        }
        default:
            return;
    }
}

void fill_floats(float* x, int64_t n, float sigma = 1.0f) {
    for (int64_t i = 0; i < n; ++i) x[i] = normal(sigma);
}

template <typename T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// sum |w_i * x_i| in double for a weight row and an activation in its dot format: the scale
// of the rounding error any summation order can make. For Q4_1 it also covers |m * s|.
double magnitude(DType type, int64_t n, const uint8_t* w, const uint8_t* x) {
    double mag = 0.0;
    switch (type) {
        case DType::F32:
        case DType::F16:
        case DType::BF16: {
            std::vector<float> wf(static_cast<size_t>(n));
            si::dequantize_row_ref(type, w, wf.data(), n);
            for (int64_t i = 0; i < n; ++i) mag += std::fabs(double(wf[i]) * load<float>(x + 4 * i));
            return mag;
        }
        case DType::Q4_0:
            for (int64_t b = 0; b < n / kQK; ++b) {
                // Computed as d dy sum q y - 8 d s (Q8_1 activation): both terms count.
                auto wa = load<si::BlockQ4_0>(w + b * sizeof(si::BlockQ4_0));
                auto xb = load<si::BlockQ8_1>(x + b * sizeof(si::BlockQ8_1));
                double s = 0.0, sy = 0.0;
                for (int j = 0; j < kQK / 2; ++j) {
                    s += (wa.qs[j] & 15) * std::abs(int(xb.qs[j]));
                    s += (wa.qs[j] >> 4) * std::abs(int(xb.qs[j + 16]));
                }
                for (int j = 0; j < kQK; ++j) sy += std::abs(int(xb.qs[j]));
                mag += std::fabs(double(si::fp16_to_fp32(wa.d)) * xb.d) * (s + 8.0 * sy);
            }
            return mag;
        case DType::Q4_1:
            for (int64_t b = 0; b < n / kQK; ++b) {
                auto wa = load<si::BlockQ4_1>(w + b * sizeof(si::BlockQ4_1));
                auto xb = load<si::BlockQ8_1>(x + b * sizeof(si::BlockQ8_1));
                double s = 0.0, sy = 0.0;
                for (int j = 0; j < kQK / 2; ++j) {
                    s += (wa.qs[j] & 15) * std::abs(int(xb.qs[j]));
                    s += (wa.qs[j] >> 4) * std::abs(int(xb.qs[j + 16]));
                }
                for (int j = 0; j < kQK; ++j) sy += std::abs(int(xb.qs[j]));
                mag += std::fabs(double(si::fp16_to_fp32(wa.d)) * xb.d) * s +
                       std::fabs(double(si::fp16_to_fp32(wa.m)) * xb.d) * sy;
            }
            return mag;
        case DType::Q8_0:
            for (int64_t b = 0; b < n / kQK; ++b) {
                auto wa = load<si::BlockQ8_0>(w + b * sizeof(si::BlockQ8_0));
                auto xb = load<si::BlockQ8_0>(x + b * sizeof(si::BlockQ8_0));
                double s = 0.0;
                for (int j = 0; j < kQK; ++j) s += std::abs(int(wa.qs[j])) * std::abs(int(xb.qs[j]));
                mag += std::fabs(double(si::fp16_to_fp32(wa.d)) * si::fp16_to_fp32(xb.d)) * s;
            }
            return mag;
        case DType::Q5_0:
        case DType::Q5_1: {
            // Computed as d dy sum q y + m s (m = -16 d for Q5_0): both terms count.
            const bool q5_0 = type == DType::Q5_0;
            const size_t block_bytes = q5_0 ? sizeof(si::BlockQ5_0) : sizeof(si::BlockQ5_1);
            for (int64_t b = 0; b < n / kQK; ++b) {
                const uint8_t* wb = w + b * block_bytes;
                const double d = si::fp16_to_fp32(load<uint16_t>(wb));
                const double m = q5_0 ? -16.0 * d : si::fp16_to_fp32(load<uint16_t>(wb + 2));
                const uint32_t qh = load<uint32_t>(wb + (q5_0 ? 2 : 4));
                const uint8_t* qs = wb + (q5_0 ? 6 : 8);
                auto xb = load<si::BlockQ8_1>(x + b * sizeof(si::BlockQ8_1));
                double s = 0.0, sy = 0.0;
                for (int j = 0; j < kQK / 2; ++j) {
                    s += ((qs[j] & 15) | ((qh >> j) & 1) << 4) * std::abs(int(xb.qs[j]));
                    s += ((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4) * std::abs(int(xb.qs[j + 16]));
                }
                for (int j = 0; j < kQK; ++j) sy += std::abs(int(xb.qs[j]));
                mag += std::fabs(d * xb.d) * s + std::fabs(m * xb.d) * sy;
            }
            return mag;
        }
        case DType::Q2_K:
        case DType::Q3_K:
        case DType::Q4_K:
        case DType::Q5_K:
        case DType::Q6_K:
        case DType::IQ4_XS:
        case DType::IQ4_NL: {
            // Each value's terms as the kernels compute them: d scale q and dmin min (Q2_K, Q4_K,
            // Q5_K), d scale q and d scale 32 (Q6_K; 4 for Q3_K), or the value (IQ4), times the
            // activation's d q_x (Q8_K; Q8_0 for IQ4_NL).
            const si::DTypeInfo* info = si::dtype_info(static_cast<uint32_t>(type));
            const int64_t elems = info->block_elems;
            for (int64_t b = 0; b < n / elems; ++b) {
                const uint8_t* wb = w + b * info->block_bytes;
                float values[si::kQK_K];
                si::dequantize_row_ref(type, wb, values, elems);
                double offsets[si::kQK_K / 16] = {};
                if (type == DType::Q4_K || type == DType::Q5_K) {
                    uint8_t scales[8], mins[8];
                    si::unpack_k_scales(wb + 4, scales, mins);
                    const double dmin = si::fp16_to_fp32(load<uint16_t>(wb + 2));
                    for (int g = 0; g < 16; ++g) offsets[g] = 2.0 * dmin * mins[g / 2];
                } else if (type == DType::Q6_K) {
                    auto wa = load<si::BlockQ6_K>(wb);
                    for (int g = 0; g < 16; ++g) offsets[g] = 64.0 * si::fp16_to_fp32(wa.d) * wa.scales[g];
                } else if (type == DType::Q2_K) {
                    auto wa = load<si::BlockQ2_K>(wb);
                    const double dmin = si::fp16_to_fp32(wa.dmin);
                    for (int g = 0; g < 16; ++g) offsets[g] = 2.0 * dmin * (wa.scales[g] >> 4);
                } else if (type == DType::Q3_K) {
                    auto wa = load<si::BlockQ3_K>(wb);
                    int8_t scales[16];
                    si::unpack_q3_k_scales(wa.scales, scales);
                    for (int g = 0; g < 16; ++g) offsets[g] = 8.0 * si::fp16_to_fp32(wa.d) * scales[g];
                }
                for (int j = 0; j < elems; ++j) {
                    double x_j;
                    if (type == DType::IQ4_NL) {
                        auto xb = load<si::BlockQ8_0>(x + b * sizeof(si::BlockQ8_0));
                        x_j = std::fabs(double(si::fp16_to_fp32(xb.d)) * xb.qs[j]);
                    } else {
                        auto xb = load<si::BlockQ8_K>(x + b * sizeof(si::BlockQ8_K));
                        x_j = std::fabs(double(xb.d) * xb.qs[j]);
                    }
                    mag += (std::fabs(double(values[j])) + std::fabs(offsets[j / 16])) * x_j;
                }
            }
            return mag;
        }
        default:
            return 0.0;
    }
}

// Allowed |a - b| for two float summations of `terms` rounded terms of total size `mag`.
double dot_tolerance(double mag, int64_t terms) {
    return (16.0 + 2.0 * std::sqrt(double(terms))) * FLT_EPSILON * mag + 1e-30;
}

bool is_block_type(DType t) {
    return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q8_0 || t == DType::Q5_0 || t == DType::Q5_1 ||
           t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K ||
           t == DType::IQ4_XS || t == DType::IQ4_NL;
}

int64_t block_elems(DType t) { return si::dtype_info(static_cast<uint32_t>(t))->block_elems; }

const char* type_name(DType t) { return si::dtype_name(static_cast<uint32_t>(t)); }

// Activation for `type` from floats x (n elements) via the generic level.
void make_activation(const KernelTable& generic, DType type, const float* x, uint8_t* dst, int64_t n) {
    si::prepare_activation(generic, type, x, dst, n);
}

// Four activations for `type`, `stride` bytes apart from dst: random floats (the last 1000x
// larger, so that scale handling shows) in the dot format, via the generic level.
void fill_activations(const KernelTable& generic, DType type, int64_t n, uint8_t* dst, size_t stride) {
    std::vector<float> xf(static_cast<size_t>(n));
    for (int k = 0; k < 4; ++k) {
        fill_floats(xf.data(), n, k == 3 ? 1e3f : 1.0f);
        make_activation(generic, type, xf.data(), dst + k * stride, n);
    }
}

void check_dots(const KernelTable& level, const KernelTable& generic, DType type, int64_t n,
                size_t w_offset, size_t x_offset) {
    const std::string isa = level.isa;
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    const size_t abytes = si::activation_bytes(type, n);
    // Four activations `stride` bytes apart; an odd padding keeps later ones unaligned too.
    const size_t stride = abytes + (x_offset % 3 == 0 ? 0 : x_offset % 2 == 0 ? 8 : 20);

    Buffer wbuf(static_cast<size_t>(wbytes), w_offset);
    fill_weights(type, n, wbuf.data());
    Buffer xbuf(3 * stride + abytes, x_offset);
    fill_activations(generic, type, n, xbuf.data(), stride);

    const si::RowDotFn dot = si::row_dot(level, type), dot_ref = si::row_dot(generic, type);
    const si::RowDot4Fn dot4 = si::row_dot4(level, type);
    const int64_t terms = is_block_type(type) ? n / block_elems(type) + 4 : n;
    float single[4];
    for (int k = 0; k < 4; ++k) {
        const uint8_t* xk = xbuf.data() + k * stride;
        single[k] = dot(n, wbuf.data(), xk);
        const float ref = dot_ref(n, wbuf.data(), xk);
        const double tol = dot_tolerance(magnitude(type, n, wbuf.data(), xk), terms);
        record(std::fabs(double(single[k]) - ref) <= tol,
               "%s dot_%s n=%lld woff=%zu xoff=%zu tok=%d: got %.9g want %.9g (tol %.3g)",
               isa.c_str(), type_name(type), (long long)n, w_offset, x_offset, k, single[k], ref, tol);
    }
    float four[4] = {NAN, NAN, NAN, NAN};
    dot4(n, wbuf.data(), xbuf.data(), stride, four);
    for (int k = 0; k < 4; ++k) {
        record(std::memcmp(&four[k], &single[k], 4) == 0,
               "%s dot4_%s n=%lld woff=%zu xoff=%zu stride=%zu tok=%d: dot4 %.9g, dot %.9g (must be identical)",
               isa.c_str(), type_name(type), (long long)n, w_offset, x_offset, stride, k, four[k], single[k]);
    }
    record(wbuf.guards_intact() && xbuf.guards_intact(), "%s dot_%s n=%lld: wrote to its inputs",
           isa.c_str(), type_name(type), (long long)n);
}

// Weights at the ends of their integer ranges against activations all at +127 or all at -127:
// every byte of each block `pattern` (0x00, 0x7f, 0x80, 0xff: the smallest and largest codes,
// Q8_0's -128 and 127, the IQ4 levels -127 and 113, the largest scales), then the block's half
// scales set finite. A group's products then share one sign at nearly their largest magnitude,
// so that an integer sum kept in lanes too narrow for it (int16 pair sums, kernels.h)
// overflows here, where random data leave it unnoticed. dot agrees with generic; dot4 and
// kMaxGatherRows gathered copies of the row equal the single dots bit for bit.
void check_extreme_dots(const KernelTable& level, const KernelTable& generic, DType type, int64_t n,
                        uint8_t pattern) {
    const si::DTypeInfo* info = si::dtype_info(static_cast<uint32_t>(type));
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    Buffer wbuf(static_cast<size_t>(wbytes), 0);
    const uint16_t d = si::fp32_to_fp16(0.01f), second = si::fp32_to_fp16(-0.02f);
    const HalfScales scales = half_scales(type);
    for (int64_t b = 0; b < n / info->block_elems; ++b) {
        uint8_t* blk = wbuf.data() + b * info->block_bytes;
        std::memset(blk, pattern, info->block_bytes);
        std::memcpy(blk + scales.d_offset, &d, 2);
        if (scales.second) std::memcpy(blk + scales.d_offset + 2, &second, 2);
    }
    const size_t abytes = si::activation_bytes(type, n);
    Buffer xbuf(4 * abytes, 0);
    std::vector<float> xf(static_cast<size_t>(n));
    for (int k = 0; k < 4; ++k) {
        std::fill(xf.begin(), xf.end(), k % 2 == 0 ? 1.0f : -1.0f);  // quantised to +-127 throughout
        make_activation(generic, type, xf.data(), xbuf.data() + k * abytes, n);
    }

    const si::RowDotFn dot = si::row_dot(level, type), dot_ref = si::row_dot(generic, type);
    const int64_t terms = n / block_elems(type) + 4;
    float single[4];
    for (int k = 0; k < 4; ++k) {
        const uint8_t* xk = xbuf.data() + k * abytes;
        single[k] = dot(n, wbuf.data(), xk);
        const float ref = dot_ref(n, wbuf.data(), xk);
        const double tol = dot_tolerance(magnitude(type, n, wbuf.data(), xk), terms);
        record(std::fabs(double(single[k]) - ref) <= tol,
               "%s extreme dot_%s n=%lld bytes=0x%02x tok=%d: got %.9g want %.9g (tol %.3g)", level.isa,
               type_name(type), (long long)n, pattern, k, single[k], ref, tol);
    }
    float four[4] = {NAN, NAN, NAN, NAN};
    si::row_dot4(level, type)(n, wbuf.data(), xbuf.data(), abytes, four);
    const void* rows[si::kMaxGatherRows];
    std::fill(rows, rows + si::kMaxGatherRows, static_cast<const void*>(wbuf.data()));
    for (int k = 0; k < 2; ++k) {  // one of each sign
        float gathered[si::kMaxGatherRows];
        si::gather_dot(level, type)(n, rows, si::kMaxGatherRows, xbuf.data() + k * abytes, gathered);
        bool same = true;
        for (float g : gathered) same = same && std::memcmp(&g, &single[k], 4) == 0;
        record(same, "%s extreme gather_dot_%s n=%lld bytes=0x%02x tok=%d: differs from dot %.9g (must be identical)",
               level.isa, type_name(type), (long long)n, pattern, k, single[k]);
    }
    for (int k = 0; k < 4; ++k) {
        record(std::memcmp(&four[k], &single[k], 4) == 0,
               "%s extreme dot4_%s n=%lld bytes=0x%02x tok=%d: dot4 %.9g, dot %.9g (must be identical)", level.isa,
               type_name(type), (long long)n, pattern, k, four[k], single[k]);
    }
}

void check_rows8(const KernelTable& level, const KernelTable& generic, DType type, int64_t nb, size_t x_offset) {
    const si::Rows8DotFn rows8 = si::rows8_dot(level, type);
    if (rows8 == nullptr) return;
    const std::string isa = level.isa;
    const int64_t n = nb * kQK;
    uint64_t row_bytes = 0;
    si::row_bytes(type, n, &row_bytes);
    std::vector<uint8_t> rows(static_cast<size_t>(8 * row_bytes)), interleaved(rows.size());
    for (int j = 0; j < 8; ++j) fill_weights(type, n, rows.data() + j * row_bytes);
    si::interleave_rows8(type, rows.data(), static_cast<size_t>(row_bytes), nb, interleaved.data());
    const size_t abytes = si::activation_bytes(type, n), stride = abytes + 8;
    Buffer xbuf(3 * stride + abytes, x_offset);
    fill_activations(generic, type, n, xbuf.data(), stride);
    constexpr int64_t kYStride = 9;  // one spare float per token: it must stay untouched
    float alone[4][8];  // each token by itself
    for (int t = 0; t < 4; ++t) rows8(n, interleaved.data(), xbuf.data() + t * stride, stride, 1, alone[t], 8);
    for (int n_tokens = 1; n_tokens <= 4; ++n_tokens) {
        std::vector<float> y(4 * kYStride, NAN);
        rows8(n, interleaved.data(), xbuf.data(), stride, n_tokens, y.data(), kYStride);
        for (int t = 0; t < 4; ++t) {
            const uint8_t* xt = xbuf.data() + t * stride;
            for (int j = 0; j < 8; ++j) {
                const float got = y[static_cast<size_t>(t * kYStride + j)];
                if (t >= n_tokens) {
                    record(std::isnan(got), "%s rows8_%s nb=%lld tokens=%d: wrote token %d", isa.c_str(),
                           type_name(type), (long long)nb, n_tokens, t);
                    continue;
                }
                const uint8_t* row = rows.data() + j * row_bytes;
                const float want = si::row_dot(generic, type)(n, row, xt);
                const double tol = dot_tolerance(magnitude(type, n, row, xt), nb + 4);
                record(std::fabs(double(got) - want) <= tol,
                       "%s rows8_%s nb=%lld xoff=%zu tokens=%d row=%d tok=%d: got %.9g want %.9g (tol %.3g)",
                       isa.c_str(), type_name(type), (long long)nb, x_offset, n_tokens, j, t, got, want, tol);
                record(std::memcmp(&got, &alone[t][j], 4) == 0,
                       "%s rows8_%s nb=%lld tokens=%d row=%d tok=%d: %.9g, the token alone %.9g (must be identical)",
                       isa.c_str(), type_name(type), (long long)nb, n_tokens, j, t, got, alone[t][j]);
            }
            record(std::isnan(y[static_cast<size_t>(t * kYStride + 8)]), "%s rows8_%s: wrote past row 8",
                   isa.c_str(), type_name(type));
        }
    }
    record(xbuf.guards_intact(), "%s rows8_%s nb=%lld: wrote to its input", isa.c_str(), type_name(type),
           (long long)nb);
}

void check_rows4(const KernelTable& level, const KernelTable& generic, DType type, int64_t n, size_t w_offset,
                 size_t x_offset) {
    const si::Rows4DotFn rows4 = si::rows4_dot(level, type);
    if (rows4 == nullptr) return;
    const std::string isa = level.isa;
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    const size_t row_bytes = static_cast<size_t>(wbytes) + 4 * (w_offset % 2);  // rows not packed tight
    Buffer wbuf(4 * row_bytes, w_offset);
    for (int r = 0; r < 4; ++r) fill_weights(type, n, wbuf.data() + r * row_bytes);
    const size_t abytes = si::activation_bytes(type, n), stride = abytes + 12;
    Buffer xbuf(3 * stride + abytes, x_offset);
    fill_activations(generic, type, n, xbuf.data(), stride);
    constexpr int64_t kYStride = 5;  // one spare float per token: it must stay untouched
    float alone[4][4];  // each row and token by itself
    for (int r = 0; r < 4; ++r) {
        for (int t = 0; t < 4; ++t) {
            rows4(n, wbuf.data() + r * row_bytes, row_bytes, 1, xbuf.data() + t * stride, stride, 1, &alone[r][t], 1);
        }
    }
    for (int n_rows = 1; n_rows <= 4; ++n_rows) {
        for (int n_tokens = 1; n_tokens <= 4; ++n_tokens) {
            std::vector<float> y(4 * kYStride, NAN);
            rows4(n, wbuf.data(), row_bytes, n_rows, xbuf.data(), stride, n_tokens, y.data(), kYStride);
            for (int t = 0; t < 4; ++t) {
                for (int r = 0; r < 5; ++r) {
                    const float got = y[static_cast<size_t>(t * kYStride + r)];
                    if (t >= n_tokens || r >= n_rows) {
                        record(std::isnan(got), "%s rows4_%s n=%lld rows=%d tokens=%d: wrote row %d token %d",
                               isa.c_str(), type_name(type), (long long)n, n_rows, n_tokens, r, t);
                        continue;
                    }
                    const uint8_t* row = wbuf.data() + r * row_bytes;
                    const uint8_t* xt = xbuf.data() + t * stride;
                    const float want = si::row_dot(generic, type)(n, row, xt);
                    const double tol = dot_tolerance(magnitude(type, n, row, xt), n);
                    record(std::fabs(double(got) - want) <= tol,
                           "%s rows4_%s n=%lld woff=%zu xoff=%zu rows=%d tokens=%d row=%d tok=%d: got %.9g want %.9g",
                           isa.c_str(), type_name(type), (long long)n, w_offset, x_offset, n_rows, n_tokens, r, t,
                           got, want);
                    record(std::memcmp(&got, &alone[r][t], 4) == 0,
                           "%s rows4_%s n=%lld rows=%d tokens=%d row=%d tok=%d: %.9g, alone %.9g (must be identical)",
                           isa.c_str(), type_name(type), (long long)n, n_rows, n_tokens, r, t, got, alone[r][t]);
                }
            }
        }
    }
    record(wbuf.guards_intact() && xbuf.guards_intact(), "%s rows4_%s n=%lld: wrote to its inputs", isa.c_str(),
           type_name(type), (long long)n);
}

void check_axpy(const KernelTable& level, const KernelTable& generic, DType type, int64_t n,
                size_t w_offset, size_t y_offset) {
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    Buffer wbuf(static_cast<size_t>(wbytes), w_offset);
    fill_weights(type, n, wbuf.data());
    std::vector<float> w(static_cast<size_t>(n)), y0(static_cast<size_t>(n));
    si::dequantize_row_ref(type, wbuf.data(), w.data(), n);
    // Size of the terms of each element's update: |w| but, for Q4_1 and Q5_1, |d q| + |m|
    // (w = d q + m may cancel while a * d * q and a * m are rounded separately); d q is the
    // block dequantised with m set to 0.
    std::vector<double> wmag(w.begin(), w.end());
    if (type == DType::Q4_1 || type == DType::Q5_1) {
        const size_t block_bytes = type == DType::Q4_1 ? sizeof(si::BlockQ4_1) : sizeof(si::BlockQ5_1);
        for (int64_t b = 0; b < n / kQK; ++b) {
            std::vector<uint8_t> block(wbuf.data() + b * block_bytes, wbuf.data() + (b + 1) * block_bytes);
            const double m = si::fp16_to_fp32(load<uint16_t>(block.data() + 2));
            std::memset(block.data() + 2, 0, 2);  // m = +0
            float dq[kQK];
            si::dequantize_row_ref(type, block.data(), dq, kQK);
            for (int j = 0; j < kQK; ++j) wmag[b * kQK + j] = std::fabs(double(dq[j])) + std::fabs(m);
        }
    }
    fill_floats(y0.data(), n);
    const float a = normal();

    Buffer yref(static_cast<size_t>(n) * 4, y_offset), ygot(static_cast<size_t>(n) * 4, y_offset);
    if (n > 0) {
        std::memcpy(yref.data(), y0.data(), static_cast<size_t>(n) * 4);
        std::memcpy(ygot.data(), y0.data(), static_cast<size_t>(n) * 4);
    }
    si::row_axpy(generic, type)(n, a, wbuf.data(), reinterpret_cast<float*>(yref.data()));
    si::row_axpy(level, type)(n, a, wbuf.data(), reinterpret_cast<float*>(ygot.data()));
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i) {
        const float got = load<float>(ygot.data() + 4 * i), want = load<float>(yref.data() + 4 * i);
        const double tol = 4.0 * FLT_EPSILON * (std::fabs(y0[i]) + std::fabs(double(a)) * std::fabs(wmag[i])) + 1e-37;
        if (!(std::fabs(double(got) - want) <= tol)) bad = i;
    }
    record(bad < 0, "%s axpy_%s n=%lld woff=%zu yoff=%zu: first mismatch at %lld", level.isa,
           type_name(type), (long long)n, w_offset, y_offset, (long long)bad);
    // The same update as a batch makes it: the row dequantised, then added as floats.
    std::vector<float> row(static_cast<size_t>(n)), ybatch(y0);
    level.dequantize_row(type, wbuf.data(), row.data(), n);
    level.of(DType::F32).axpy(n, a, row.data(), ybatch.data());
    const bool same = n == 0 || std::memcmp(ybatch.data(), ygot.data(), static_cast<size_t>(n) * 4) == 0;
    record(same, "%s axpy_%s n=%lld woff=%zu: differs from dequantize_row + axpy_f32 (must be identical)", level.isa,
           type_name(type), (long long)n, w_offset);
    record(ygot.guards_intact() && wbuf.guards_intact(), "%s axpy_%s n=%lld: wrote outside y[0..n)",
           level.isa, type_name(type), (long long)n);
}

// Gathered products equal the level's single-row kernels bit for bit (kernels.h): each row's
// dot as the row dot gives it alone, and the sum of the rows' updates as successive axpys.
void check_gather(const KernelTable& level, const KernelTable& generic, DType type, int64_t n, int n_rows,
                  size_t offset) {
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    std::vector<Buffer> rows;
    std::vector<const void*> ptrs;
    for (int r = 0; r < n_rows; ++r) {
        rows.emplace_back(static_cast<size_t>(wbytes), (offset + 5 * static_cast<size_t>(r)) % 16);
        fill_weights(type, n, rows.back().data());
    }
    for (Buffer& b : rows) ptrs.push_back(b.data());
    const size_t abytes = si::activation_bytes(type, n);
    Buffer xbuf(abytes, (offset * 3 + 1) % 16);
    std::vector<float> xf(static_cast<size_t>(n));
    fill_floats(xf.data(), n);
    make_activation(generic, type, xf.data(), xbuf.data(), n);

    std::vector<float> got(static_cast<size_t>(n_rows), NAN);
    si::gather_dot(level, type)(n, ptrs.data(), n_rows, xbuf.data(), got.data());
    const si::RowDotFn dot = si::row_dot(level, type);
    for (int r = 0; r < n_rows; ++r) {
        const float want = dot(n, ptrs[static_cast<size_t>(r)], xbuf.data());
        record(std::memcmp(&got[static_cast<size_t>(r)], &want, 4) == 0,
               "%s gather_dot_%s n=%lld rows=%d off=%zu row %d: %.9g, dot %.9g (must be identical)", level.isa,
               type_name(type), (long long)n, n_rows, offset, r, got[static_cast<size_t>(r)], want);
    }

    std::vector<float> a(static_cast<size_t>(n_rows)), y0(static_cast<size_t>(n));
    for (float& v : a) v = normal();
    fill_floats(y0.data(), n);
    Buffer ygot(static_cast<size_t>(n) * 4, (offset * 5 + 2) % 16);
    if (n > 0) std::memcpy(ygot.data(), y0.data(), static_cast<size_t>(n) * 4);
    std::vector<float> want(y0);
    si::gather_axpy(level, type)(n, a.data(), ptrs.data(), n_rows, reinterpret_cast<float*>(ygot.data()));
    for (int r = 0; r < n_rows; ++r) {
        si::row_axpy(level, type)(n, a[static_cast<size_t>(r)], ptrs[static_cast<size_t>(r)], want.data());
    }
    record(n == 0 || std::memcmp(ygot.data(), want.data(), static_cast<size_t>(n) * 4) == 0,
           "%s gather_axpy_%s n=%lld rows=%d off=%zu: differs from successive axpys (must be identical)", level.isa,
           type_name(type), (long long)n, n_rows, offset);
    bool intact = xbuf.guards_intact() && ygot.guards_intact();
    for (const Buffer& b : rows) intact = intact && b.guards_intact();
    record(intact, "%s gather_%s n=%lld rows=%d: wrote outside its output", level.isa, type_name(type), (long long)n,
           n_rows);
}

// Attention scores over keys stored in transposed blocks: every level gives the generic
// level's bits (one fused multiply-add per dimension, in order), close to a double reference,
// and writes only the whole blocks of each head's row of scores.
void check_key_scores(const KernelTable& level, const KernelTable& generic, int64_t head_dim, int64_t n_keys,
                      int n_heads) {
    const int64_t blocks = (n_keys + si::kKeyBlock - 1) / si::kKeyBlock, padded = blocks * si::kKeyBlock;
    std::vector<uint16_t> keys(static_cast<size_t>(padded * head_dim));
    for (uint16_t& k : keys) k = si::fp32_to_fp16(normal());
    const size_t q_stride = static_cast<size_t>(head_dim) + 3, score_stride = static_cast<size_t>(padded) + 5;
    std::vector<float> q(n_heads * q_stride);
    fill_floats(q.data(), static_cast<int64_t>(q.size()));
    Buffer got(n_heads * score_stride * 4, static_cast<size_t>(n_keys) % 16), want(n_heads * score_stride * 4, 0);
    level.key_scores(head_dim, n_keys, keys.data(), q.data(), q_stride, n_heads, reinterpret_cast<float*>(got.data()),
                     score_stride);
    generic.key_scores(head_dim, n_keys, keys.data(), q.data(), q_stride, n_heads,
                       reinterpret_cast<float*>(want.data()), score_stride);
    bool same = true, close = true, untouched = true;
    for (int g = 0; g < n_heads; ++g) {
        for (size_t p = 0; p < score_stride; ++p) {
            const uint8_t* at = got.data() + (g * score_stride + p) * 4;
            if (p >= static_cast<size_t>(padded)) {
                for (int b = 0; b < 4; ++b) untouched = untouched && at[b] == Buffer::kFill;
                continue;
            }
            same = same && std::memcmp(at, want.data() + (g * score_stride + p) * 4, 4) == 0;
            double ref = 0.0, mag = 0.0;
            for (int64_t d = 0; d < head_dim; ++d) {
                const size_t at = static_cast<size_t>((p / si::kKeyBlock * head_dim + d) * si::kKeyBlock +
                                                      p % si::kKeyBlock);
                const double term = double(si::fp16_to_fp32(keys[at])) * q[g * q_stride + static_cast<size_t>(d)];
                ref += term;
                mag += std::fabs(term);
            }
            close = close && std::fabs(load<float>(at) - ref) <= dot_tolerance(mag, head_dim);
        }
    }
    record(same, "%s key_scores hd=%lld keys=%lld heads=%d: differs from the generic level (must be identical)",
           level.isa, (long long)head_dim, (long long)n_keys, n_heads);
    record(close, "%s key_scores hd=%lld keys=%lld heads=%d: far from the double reference", level.isa,
           (long long)head_dim, (long long)n_keys, n_heads);
    record(untouched && got.guards_intact(), "%s key_scores hd=%lld keys=%lld heads=%d: wrote past its blocks",
           level.isa, (long long)head_dim, (long long)n_keys, n_heads);
}

// dequantize_row equals the reference (exact up to Q4_1's d q + m, which a fused multiply-add
// rounds once where the reference may round twice) and writes nothing outside dst[0..n).
void check_dequantize(const KernelTable& level, DType type, int64_t n, size_t w_offset, size_t y_offset) {
    uint64_t wbytes = 0;
    si::row_bytes(type, n, &wbytes);
    Buffer wbuf(static_cast<size_t>(wbytes), w_offset);
    fill_weights(type, n, wbuf.data());
    std::vector<float> want(static_cast<size_t>(n));
    si::dequantize_row_ref(type, wbuf.data(), want.data(), n);
    Buffer got(static_cast<size_t>(n) * 4, y_offset);
    level.dequantize_row(type, wbuf.data(), reinterpret_cast<float*>(got.data()), n);
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i) {
        const float g = load<float>(got.data() + 4 * i);
        // d q + m (or d scale q - dmin min) in one rounding where the reference may round twice.
        const bool has_min = type == DType::Q4_1 || type == DType::Q5_1 || type == DType::Q4_K || type == DType::Q5_K;
        const double tol = has_min ? 2.0 * FLT_EPSILON * std::fabs(double(want[i])) + 1e-37 : 0.0;
        if (!(std::fabs(double(g) - want[i]) <= tol)) bad = i;
    }
    record(bad < 0, "%s dequantize_%s n=%lld woff=%zu: first mismatch at %lld", level.isa,
           type_name(type), (long long)n, w_offset, (long long)bad);
    record(got.guards_intact(), "%s dequantize_%s n=%lld: wrote outside dst[0..n)", level.isa,
           type_name(type), (long long)n);
}

// Floats for quantisation tests: block b gets its own scale (1e-30 .. 1e30) and some blocks
// are special (zeros, exact ties, one spike, max|x| on a negative value, powers of two).
void fill_quantize_input(float* x, int64_t nblocks) {
    for (int64_t b = 0; b < nblocks; ++b) {
        float* blk = x + b * kQK;
        switch (uniform_int(0, 9)) {
            case 0:
                for (int j = 0; j < kQK; ++j) blk[j] = 0.0f;
                break;
            case 1: {
                // max|x| = 127 * 2^e, so d = 2^e and 1/d is exact: x = (k + 0.5) * 2^e are ties.
                const float p = std::ldexp(1.0f, uniform_int(-20, 20));
                for (int j = 0; j < kQK; ++j) blk[j] = (float(uniform_int(-127, 126)) + 0.5f) * p;
                blk[uniform_int(0, kQK - 1)] = (uniform_int(0, 1) ? 127.0f : -127.0f) * p;
                break;
            }
            case 2:
                for (int j = 0; j < kQK; ++j) blk[j] = normal(1e-3f);
                blk[uniform_int(0, kQK - 1)] = normal(1e3f);
                break;
            case 3:
                for (int j = 0; j < kQK; ++j) blk[j] = std::ldexp(1.0f, uniform_int(-30, 30)) * (uniform_int(0, 1) ? 1 : -1);
                break;
            default: {
                const float scale = std::pow(10.0f, uniform(-30.0f, 30.0f));
                for (int j = 0; j < kQK; ++j) blk[j] = normal(scale);
                break;
            }
        }
    }
}

void check_quantize(const KernelTable& level, const KernelTable& generic, int64_t nblocks,
                    size_t x_offset, size_t dst_offset) {
    const int64_t n = nblocks * kQK;
    Buffer xbuf(static_cast<size_t>(n) * 4, x_offset);
    std::vector<float> x(static_cast<size_t>(n));
    fill_quantize_input(x.data(), nblocks);
    std::memcpy(xbuf.data(), x.data(), x.size() * 4);
    const float* xp = reinterpret_cast<const float*>(xbuf.data());

    // Q8_0, Q8_1, and Q8_K (blocks of 256) where the values make whole blocks of it.
    for (int which = 0; which < (n % si::kQK_K == 0 ? 3 : 2); ++which) {
        using Quantize = void (*)(const float*, void*, int64_t);
        const Quantize want[] = {generic.quantize_q8_0, generic.quantize_q8_1, generic.quantize_q8_k};
        const Quantize test[] = {level.quantize_q8_0, level.quantize_q8_1, level.quantize_q8_k};
        const size_t bytes = which == 0 ? static_cast<size_t>(nblocks) * sizeof(si::BlockQ8_0)
                             : which == 1 ? static_cast<size_t>(nblocks) * sizeof(si::BlockQ8_1)
                                          : static_cast<size_t>(n / si::kQK_K) * sizeof(si::BlockQ8_K);
        Buffer ref(bytes, dst_offset), got(bytes, dst_offset);
        want[which](xp, ref.data(), n);
        test[which](xp, got.data(), n);
        size_t first = bytes;
        for (size_t i = 0; i < bytes; ++i) {
            if (ref.data()[i] != got.data()[i]) {
                first = i;
                break;
            }
        }
        const char* format = which == 0 ? "q8_0" : which == 1 ? "q8_1" : "q8_k";
        record(first == bytes,
               "%s quantize_%s blocks=%lld xoff=%zu dstoff=%zu: bytes differ from generic at byte %zu", level.isa, format, (long long)nblocks, x_offset, dst_offset, first);
        record(got.guards_intact() && xbuf.guards_intact(), "%s quantize_%s blocks=%lld: wrote out of bounds",
               level.isa, format, (long long)nblocks);
    }
}

// Inputs where the reference relies on platform behaviour (NaN/inf inputs, or max|x| so small
// that 1/d overflows and lrintf sees +-inf or NaN): reported, not counted.
void note_quantize_corners(const KernelTable& level, const KernelTable& generic) {
    struct Corner {
        const char* name;
        float fill;
        float special;
    };
    const Corner corners[] = {
        {"one NaN", 1.0f, NAN},
        {"one +inf", 1.0f, INFINITY},
        {"max|x| = 1e-38 (1/d overflows)", 1e-39f, 1e-38f},
        {"max|x| = 1e-45 (d underflows to 0)", 0.0f, 1e-45f},
    };
    for (const Corner& c : corners) {
        float x[kQK];
        for (int j = 0; j < kQK; ++j) x[j] = c.fill * float(j - 16);
        x[5] = c.special;
        for (int which = 0; which < 2; ++which) {
            uint8_t ref[sizeof(si::BlockQ8_1)] = {}, got[sizeof(si::BlockQ8_1)] = {};
            (which == 0 ? generic.quantize_q8_0 : generic.quantize_q8_1)(x, ref, kQK);
            (which == 0 ? level.quantize_q8_0 : level.quantize_q8_1)(x, got, kQK);
            const size_t bytes = which == 0 ? sizeof(si::BlockQ8_0) : sizeof(si::BlockQ8_1);
            if (std::memcmp(ref, got, bytes) != 0) {
                std::printf("NOTE %s quantize_q8_%d differs from generic for a block with %s (reference behaviour is platform-defined there)\n",
                            level.isa, which, c.name);
            }
        }
    }
}

}  // namespace

int main() {
    const KernelTable* generic = si::kernels_for("generic");
    if (!generic) {
        std::printf("no generic level\n0 passed, 1 failed\n");
        return 1;
    }
    std::vector<std::string> isas = si::available_isas();
    std::printf("levels:");
    for (const std::string& isa : isas) std::printf(" %s", isa.c_str());
    std::printf("\n");

    std::vector<int64_t> float_lengths;
    for (int64_t n = 0; n <= 70; ++n) float_lengths.push_back(n);
    for (int64_t n : {95, 96, 97, 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 4096, 4099}) {
        float_lengths.push_back(n);
    }
    std::vector<int64_t> block_counts = {1, 2, 3, 4, 5, 6, 7, 8, 9, 48};
    // The K-quants' blocks of 256 (Q8_K's quantisation runs at the multiples of 8 above).
    std::vector<int64_t> super_block_counts = {1, 2, 3, 6};

    for (const std::string& isa : isas) {
        const KernelTable& level = *si::kernels_for(isa);
        const long failed_before = g_failed, passed_before = g_passed;
        for (DType type : {DType::F32, DType::F16, DType::BF16}) {
            for (int64_t n : float_lengths) {
                for (size_t off = 0; off < 16; ++off) {
                    check_dots(level, *generic, type, n, off, (off * 7 + 3) % 16);
                    check_axpy(level, *generic, type, n, off, (off * 5 + 1) % 16);
                    check_dequantize(level, type, n, off, (off * 3 + 2) % 16);
                    if (off % 4 == 0) check_rows4(level, *generic, type, n, off, (off * 5 + 3) % 16);
                }
            }
        }
        for (DType type : {DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::Q5_1, DType::IQ4_NL}) {
            for (int64_t nb : block_counts) {
                for (size_t off = 0; off < 16; ++off) {
                    check_dots(level, *generic, type, nb * kQK, off, (off * 7 + 3) % 16);
                    check_axpy(level, *generic, type, nb * kQK, off, (off * 5 + 1) % 16);
                    check_dequantize(level, type, nb * kQK, off, (off * 3 + 2) % 16);
                }
            }
        }
        for (DType type : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS}) {
            for (int64_t nb : super_block_counts) {
                for (size_t off = 0; off < 16; ++off) {
                    check_dots(level, *generic, type, nb * si::kQK_K, off, (off * 7 + 3) % 16);
                    check_axpy(level, *generic, type, nb * si::kQK_K, off, (off * 5 + 1) % 16);
                    check_dequantize(level, type, nb * si::kQK_K, off, (off * 3 + 2) % 16);
                }
            }
        }
        for (DType type : {DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::Q5_1, DType::IQ4_NL,
                           DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS}) {
            for (int64_t nb : {1, 3}) {
                for (uint8_t pattern : {0x00, 0x7f, 0x80, 0xff}) {
                    check_extreme_dots(level, *generic, type, nb * block_elems(type), pattern);
                }
            }
        }
        for (int64_t nb : block_counts) {
            for (size_t off = 0; off < 16; ++off) {
                for (int rep = 0; rep < 4; ++rep) check_quantize(level, *generic, nb, off, (off * 3 + rep) % 16);
                for (DType type : {DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::Q5_1}) {
                    check_rows8(level, *generic, type, nb, off);
                }
            }
        }
        for (int n_rows : {1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16}) {
            for (DType type : {DType::F32, DType::F16, DType::BF16}) {
                for (int64_t n : {1, 7, 8, 15, 16, 17, 31, 32, 33, 47, 48, 64, 95, 1000, 1536}) {
                    check_gather(level, *generic, type, n, n_rows, static_cast<size_t>(n + n_rows) % 16);
                }
            }
            for (DType type : {DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::Q5_1, DType::IQ4_NL}) {
                for (int64_t nb : block_counts) {
                    check_gather(level, *generic, type, nb * kQK, n_rows, static_cast<size_t>(nb) % 16);
                }
            }
            for (DType type : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::IQ4_XS}) {
                for (int64_t nb : super_block_counts) {
                    check_gather(level, *generic, type, nb * si::kQK_K, n_rows, static_cast<size_t>(nb) % 16);
                }
            }
        }
        for (int64_t head_dim : {1, 3, 64, 80, 128}) {
            for (int64_t n_keys : {1, 15, 16, 17, 40}) {
                for (int n_heads = 1; n_heads <= 9; ++n_heads) {
                    check_key_scores(level, *generic, head_dim, n_keys, n_heads);
                }
            }
        }
        note_quantize_corners(level, *generic);
        std::printf("%s: %ld passed, %ld failed\n", isa.c_str(), g_passed - passed_before,
                    g_failed - failed_before);
    }
    std::printf("%ld passed, %ld failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
