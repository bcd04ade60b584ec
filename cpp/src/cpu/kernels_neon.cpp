// Arm64 level: AArch64 Advanced SIMD kernels (ARMv8.0 baseline only: no dotprod, i8mm or
// fp16 arithmetic; FCVTL half -> float conversion and TBL are baseline). dispatch.cpp always
// offers this level on AArch64. Every quantised type has its own dots here; BF16, and the typed
// axpys of Q5_0, Q5_1, the K-quants and the IQ4 types, stay on the portable kernels.
//
// Batch invariance (kernels.h): the quantised dot4 kernels run, per token, exactly the
// arithmetic of the single dots, and the gathered rows of the types against Q8_K (the
// K-quants, IQ4_XS), per row; float products go through the four-row kernel at every batch
// size (its dot4 are four single dots, for completeness); a typed axpy dequantises as
// dequantize_row does and adds as axpy_f32 does.
// quantize_q8_0/q8_1/q8_k produce the same bytes as the reference (round half to even via
// FCVTNS, maxNum for max|x| as std::fmax, and the reference itself for the degenerate blocks
// where max|x| or 1/d is not finite).
#include <arm_neon.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
// Only some of the portable kernels are used here (BF16, four_dots, fallbacks).
#include "cpu/kernels_scalar.inc"

// ---- helpers ------------------------------------------------------------------------------

#if defined(__GNUC__)
#define SI_NEON_INLINE inline __attribute__((always_inline))
#else
#define SI_NEON_INLINE inline
#endif

// One IEEE half from memory, converted exactly and broadcast to four lanes.
inline float32x4_t half_dup(const uint16_t* p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_dup_u16(p)));
}

inline float half_one(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// Float -> IEEE half with FCVTN: round to nearest even (the default FPCR mode, which the
// reference's lrintf also assumes), overflow to infinity, subnormal halves kept; for the
// finite values used here this is bit for bit si::fp32_to_fp16, without the call.
inline uint16_t to_half(float f) {
    return vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(f))), 0);
}

// Activation k of a four-token call, `stride` bytes after activation k - 1.
template <typename T>
inline const T* token(const void* x, size_t stride, int k) {
    return reinterpret_cast<const T*>(static_cast<const uint8_t*>(x) + k * stride);
}

// ---- float weights (F32, F16) -------------------------------------------------------------

struct F32Row {
    using Weight = float;
    static inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
    static inline void load8(const float* p, float32x4_t* w0, float32x4_t* w1) {
        *w0 = vld1q_f32(p);
        *w1 = vld1q_f32(p + 4);
    }
    static inline float load1(const float* p) { return *p; }
};

struct F16Row {
    using Weight = uint16_t;
    static inline float32x4_t load4(const uint16_t* p) {
        return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
    }
    static inline void load8(const uint16_t* p, float32x4_t* w0, float32x4_t* w1) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(p));
        *w0 = vcvt_f32_f16(vget_low_f16(h));
        *w1 = vcvt_high_f32_f16(h);
    }
    static inline float load1(const uint16_t* p) { return half_one(*p); }
};

// One row, one activation: eight accumulators (32 elements a step) so that the fma latency
// is hidden on wide cores, then steps of 4 and a scalar tail.
template <typename Row>
inline float dot_floats(int64_t n, const void* w, const void* x) {
    const typename Row::Weight* a = static_cast<const typename Row::Weight*>(w);
    const float* b = static_cast<const float*>(x);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    float32x4_t acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero;
    float32x4_t acc4 = zero, acc5 = zero, acc6 = zero, acc7 = zero;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        float32x4_t w0, w1, w2, w3, w4, w5, w6, w7;
        Row::load8(a + i, &w0, &w1);
        Row::load8(a + i + 8, &w2, &w3);
        Row::load8(a + i + 16, &w4, &w5);
        Row::load8(a + i + 24, &w6, &w7);
        acc0 = vfmaq_f32(acc0, w0, vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, w1, vld1q_f32(b + i + 4));
        acc2 = vfmaq_f32(acc2, w2, vld1q_f32(b + i + 8));
        acc3 = vfmaq_f32(acc3, w3, vld1q_f32(b + i + 12));
        acc4 = vfmaq_f32(acc4, w4, vld1q_f32(b + i + 16));
        acc5 = vfmaq_f32(acc5, w5, vld1q_f32(b + i + 20));
        acc6 = vfmaq_f32(acc6, w6, vld1q_f32(b + i + 24));
        acc7 = vfmaq_f32(acc7, w7, vld1q_f32(b + i + 28));
    }
    for (; i + 8 <= n; i += 8) {
        float32x4_t w0, w1;
        Row::load8(a + i, &w0, &w1);
        acc0 = vfmaq_f32(acc0, w0, vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, w1, vld1q_f32(b + i + 4));
    }
    if (i + 4 <= n) {
        acc2 = vfmaq_f32(acc2, Row::load4(a + i), vld1q_f32(b + i));
        i += 4;
    }
    acc0 = vaddq_f32(vaddq_f32(acc0, acc4), vaddq_f32(acc1, acc5));
    acc2 = vaddq_f32(vaddq_f32(acc2, acc6), vaddq_f32(acc3, acc7));
    float sum = vaddvq_f32(vaddq_f32(acc0, acc2));
    for (; i < n; ++i) sum = std::fma(Row::load1(a + i), b[i], sum);
    return sum;
}

float neon_dot_f32(int64_t n, const void* w, const void* x) { return dot_floats<F32Row>(n, w, x); }
float neon_dot_f16(int64_t n, const void* w, const void* x) { return dot_floats<F16Row>(n, w, x); }

// Calls f(index) for index = 0..N-1, unrolled at compile time, so that arrays of vector
// registers indexed by it stay in registers.
template <typename F, size_t... I>
SI_NEON_INLINE void unrolled(F&& f, std::index_sequence<I...>) {
    (f(std::integral_constant<int, static_cast<int>(I)>{}), ...);
}

// kRows rows by kTokens tokens (<= 4 x 2: 16 accumulators, the tokens' and a row's vectors in
// the 32 registers). Every row and token sums the same way whatever the call's shape: steps
// of 8 into two accumulators, a step of 4 into the second, the rest fused in scalar code, so a
// result does not depend on the rows and tokens beside it (batch invariance, kernels.h).
template <typename Row, int kRows, int kTokens>
void rows_floats(int64_t n, const uint8_t* rows, size_t row_bytes, const uint8_t* x, size_t stride, float* y,
                 int64_t y_stride) {
    using Weight = typename Row::Weight;
    const Weight* w[kRows];
    const float* a[kTokens];
    for (int r = 0; r < kRows; ++r) w[r] = reinterpret_cast<const Weight*>(rows + r * row_bytes);
    for (int t = 0; t < kTokens; ++t) a[t] = reinterpret_cast<const float*>(x + t * stride);
    constexpr int kPairs = kRows * kTokens;
    float32x4_t acc0[kPairs], acc1[kPairs];
    unrolled([&](auto k) { acc0[k] = acc1[k] = vdupq_n_f32(0.0f); }, std::make_index_sequence<kPairs>{});
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t x0[kTokens], x1[kTokens];
        unrolled([&](auto t) {
            x0[t] = vld1q_f32(a[t] + i);
            x1[t] = vld1q_f32(a[t] + i + 4);
        }, std::make_index_sequence<kTokens>{});
        unrolled([&](auto r) {
            float32x4_t w0, w1;
            Row::load8(w[r] + i, &w0, &w1);
            unrolled([&](auto t) {
                acc0[r * kTokens + t] = vfmaq_f32(acc0[r * kTokens + t], w0, x0[t]);
                acc1[r * kTokens + t] = vfmaq_f32(acc1[r * kTokens + t], w1, x1[t]);
            }, std::make_index_sequence<kTokens>{});
        }, std::make_index_sequence<kRows>{});
    }
    if (i + 4 <= n) {
        unrolled([&](auto r) {
            const float32x4_t w0 = Row::load4(w[r] + i);
            unrolled([&](auto t) { acc1[r * kTokens + t] = vfmaq_f32(acc1[r * kTokens + t], w0, vld1q_f32(a[t] + i)); },
                     std::make_index_sequence<kTokens>{});
        }, std::make_index_sequence<kRows>{});
        i += 4;
    }
    unrolled([&](auto k) {
        constexpr int r = k / kTokens, t = k % kTokens;
        float sum = vaddvq_f32(vaddq_f32(acc0[k], acc1[k]));
        for (int64_t j = i; j < n; ++j) sum = std::fma(Row::load1(w[r] + j), a[t][j], sum);
        y[t * y_stride + r] = sum;
    }, std::make_index_sequence<kPairs>{});
}

// Up to four rows by up to four tokens (Rows4DotFn), in passes of two tokens. Float products
// take it for every batch size, decoding included (four rows: eight independent chains, as
// the single dot has), so that a token's result never depends on its batch.
template <typename Row>
void neon_rows4(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                int n_tokens, float* y, int64_t y_stride) {
    for (int t = 0; t < n_tokens; t += 2) {
        const uint8_t* xt = static_cast<const uint8_t*>(x) + t * stride;
        with_shape<4, 2>(n_rows, std::min(2, n_tokens - t), [&](auto r, auto tokens) {
            rows_floats<Row, decltype(r)::value, decltype(tokens)::value>(
                n, static_cast<const uint8_t*>(rows), row_bytes, xt, stride, y + t * y_stride, y_stride);
        });
    }
}

void neon_dot4x4_f32(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                     int n_tokens, float* y, int64_t y_stride) {
    neon_rows4<F32Row>(n, rows, row_bytes, n_rows, x, stride, n_tokens, y, y_stride);
}

void neon_dot4x4_f16(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                     int n_tokens, float* y, int64_t y_stride) {
    neon_rows4<F16Row>(n, rows, row_bytes, n_rows, x, stride, n_tokens, y, y_stride);
}

// ---- quantised weights --------------------------------------------------------------------
//
// Each block's integer dot goes into an int32x4 (widening multiplies, pairwise adds), is
// converted to float and accumulated with the block's scale. Two float accumulators per token
// (even and odd blocks) keep the fma chains independent; the lanes are summed at the end.
// dot4 runs per token exactly the arithmetic of the single dot, so its results equal four
// single dots bit for bit.

// 16 bytes of packed nibbles -> elements 0..15 (low nibbles) and 16..31 (high nibbles).
inline void unpack_nibbles(const uint8_t* qs, uint8x16_t* lo, uint8x16_t* hi) {
    const uint8x16_t v = vld1q_u8(qs);
    *lo = vandq_u8(v, vdupq_n_u8(0x0f));
    *hi = vshrq_n_u8(v, 4);
}

// Sum of products of 32 signed bytes (|lo|, |hi| <= 127, never -128; lo = elements 0..15,
// hi = 16..31) with 32 signed bytes at b. Two products per int16 lane stay within
// 2 * 127 * 128 = 32512, so the int16 pair sums are exact: the 4- and 5-bit values (0..31)
// and the IQ4 levels (-127..113), not Q8_0's -128 (dot_full_i8).
inline int32x4_t dot_small_i8(int8x16_t lo, int8x16_t hi, const int8_t* b) {
    const int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
    int16x8_t p0 = vmull_s8(vget_low_s8(lo), vget_low_s8(b0));
    p0 = vmlal_s8(p0, vget_low_s8(hi), vget_low_s8(b1));
    int16x8_t p1 = vmull_high_s8(lo, b0);
    p1 = vmlal_high_s8(p1, hi, b1);
    return vpadalq_s16(vpaddlq_s16(p0), p1);
}

// Sum of products of 32 arbitrary signed bytes: each int16 product (up to 128 * 128) is
// widened into the int32 lanes before another is added, so nothing can overflow.
inline int32x4_t dot_full_i8(int8x16_t a0, int8x16_t a1, const int8_t* b) {
    const int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16);
    int32x4_t s0 = vpaddlq_s16(vmull_s8(vget_low_s8(a0), vget_low_s8(b0)));
    int32x4_t s1 = vpaddlq_s16(vmull_s8(vget_low_s8(a1), vget_low_s8(b1)));
    s0 = vpadalq_s16(s0, vmull_high_s8(a0, b0));
    s1 = vpadalq_s16(s1, vmull_high_s8(a1, b1));
    return vaddq_s32(s0, s1);
}

// A weight block unpacked once; step() adds its dot with one activation block into acc (and,
// for the types against Q8_1, the m * s term into off).
// A Q5 block's fifth bits (qh little-endian, bit j for element j) as 0x10 in the bytes of
// elements 0..15 (lo) and 16..31 (hi): each byte of qh spread over its eight elements, each
// element testing its own bit.
inline void fifth_bits(const uint8_t* qh, uint8x16_t* lo, uint8x16_t* hi) {
    uint32_t bits;
    std::memcpy(&bits, qh, 4);
    const uint8x8_t bytes = vcreate_u8(bits);
    const uint8x16_t own = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201u));  // 1, 2, 4, .. 128, twice
    const uint8x16_t fifth = vdupq_n_u8(0x10);
    *lo = vandq_u8(vtstq_u8(vcombine_u8(vdup_lane_u8(bytes, 0), vdup_lane_u8(bytes, 1)), own), fifth);
    *hi = vandq_u8(vtstq_u8(vcombine_u8(vdup_lane_u8(bytes, 2), vdup_lane_u8(bytes, 3)), own), fifth);
}

// Q4_0, Q4_1, Q5_0 and Q5_1 against Q8_1: the values stay unsigned (0..15, or 0..31 with the
// fifth bits ored in) and the offset comes back as m s: m = -8 d for Q4_0, -16 d for Q5_0,
// the block's m for Q4_1 and Q5_1 (kernels.h).
template <typename Block>
struct OffsetWeights {
    using Act = BlockQ8_1;
    static constexpr bool kFifthBit = std::is_same<Block, BlockQ5_0>::value || std::is_same<Block, BlockQ5_1>::value;
    static constexpr bool kHasMin = std::is_same<Block, BlockQ4_1>::value || std::is_same<Block, BlockQ5_1>::value;
    int8x16_t lo, hi;
    float32x4_t d;
    float m;
    explicit OffsetWeights(const Block* blk) {
        uint8x16_t ulo, uhi;
        unpack_nibbles(blk->qs, &ulo, &uhi);
        if constexpr (kFifthBit) {
            uint8x16_t flo, fhi;
            fifth_bits(blk->qh, &flo, &fhi);
            ulo = vorrq_u8(ulo, flo);
            uhi = vorrq_u8(uhi, fhi);
        }
        lo = vreinterpretq_s8_u8(ulo);
        hi = vreinterpretq_s8_u8(uhi);
        d = half_dup(&blk->d);
        if constexpr (kHasMin) {
            m = half_one(blk->m);
        } else {
            m = (kFifthBit ? -16.0f : -8.0f) * half_one(blk->d);
        }
    }
    inline void step(float32x4_t& acc, float& off, const Act* b) const {
        const int32x4_t s = dot_small_i8(lo, hi, b->qs);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(s), vmulq_f32(d, vld1q_dup_f32(&b->d)));
        off = std::fma(m, b->s, off);
    }
};

struct Q8_0Weights {
    using Act = BlockQ8_0;
    int8x16_t q0, q1;
    float32x4_t d;
    explicit Q8_0Weights(const BlockQ8_0* blk)
        : q0(vld1q_s8(blk->qs)), q1(vld1q_s8(blk->qs + 16)), d(half_dup(&blk->d)) {}
    inline void step(float32x4_t& acc, float& /*off*/, const Act* b) const {
        const int32x4_t s = dot_full_i8(q0, q1, b->qs);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(s), vmulq_f32(d, half_dup(&b->d)));
    }
};

// IQ4_NL against Q8_0: Q8_0 weights whose values are the levels the nibbles pick (TBL).
struct IQ4NLWeights {
    using Act = BlockQ8_0;
    int8x16_t lo, hi;
    float32x4_t d;
    explicit IQ4NLWeights(const BlockIQ4_NL* blk) : d(half_dup(&blk->d)) {
        uint8x16_t ulo, uhi;
        unpack_nibbles(blk->qs, &ulo, &uhi);
        const int8x16_t levels = vld1q_s8(kIq4Values);
        lo = vqtbl1q_s8(levels, ulo);
        hi = vqtbl1q_s8(levels, uhi);
    }
    inline void step(float32x4_t& acc, float& /*off*/, const Act* b) const {
        const int32x4_t s = dot_small_i8(lo, hi, b->qs);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(s), vmulq_f32(d, half_dup(&b->d)));
    }
};

// One token's state in a quantised dot: accumulators for even and odd blocks.
template <typename W>
struct QuantToken {
    const typename W::Act* x;
    float32x4_t even, odd;
    float off_even, off_odd;
    float result() const {
        return vaddvq_f32(vaddq_f32(even, odd)) + (off_even + off_odd);
    }
};

template <typename W, typename Block>
inline float dot_quant(int64_t n, const void* w, const void* x) {
    auto a = static_cast<const Block*>(w);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    QuantToken<W> t{static_cast<const typename W::Act*>(x), zero, zero, 0.0f, 0.0f};
    const int64_t nb = n / kQK;
    // Even and odd blocks in turn; the exit test between them also keeps the compiler from
    // interleaving (and spilling) the two halves in the four-token form.
    for (int64_t i = 0; i < nb;) {
        W(a + i).step(t.even, t.off_even, t.x + i);
        if (++i == nb) break;
        W(a + i).step(t.odd, t.off_odd, t.x + i);
        ++i;
    }
    return t.result();
}

template <typename W, typename Block>
inline void dot4_quant(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    using Act = typename W::Act;
    auto a = static_cast<const Block*>(w);
    const float32x4_t zero = vdupq_n_f32(0.0f);
    QuantToken<W> t0{token<Act>(x, stride, 0), zero, zero, 0.0f, 0.0f};
    QuantToken<W> t1{token<Act>(x, stride, 1), zero, zero, 0.0f, 0.0f};
    QuantToken<W> t2{token<Act>(x, stride, 2), zero, zero, 0.0f, 0.0f};
    QuantToken<W> t3{token<Act>(x, stride, 3), zero, zero, 0.0f, 0.0f};
    const int64_t nb = n / kQK;
    for (int64_t i = 0; i < nb;) {
        const W w0(a + i);
        w0.step(t0.even, t0.off_even, t0.x + i);
        w0.step(t1.even, t1.off_even, t1.x + i);
        w0.step(t2.even, t2.off_even, t2.x + i);
        w0.step(t3.even, t3.off_even, t3.x + i);
        if (++i == nb) break;
        const W w1(a + i);
        w1.step(t0.odd, t0.off_odd, t0.x + i);
        w1.step(t1.odd, t1.off_odd, t1.x + i);
        w1.step(t2.odd, t2.off_odd, t2.x + i);
        w1.step(t3.odd, t3.off_odd, t3.x + i);
        ++i;
    }
    out[0] = t0.result();
    out[1] = t1.result();
    out[2] = t2.result();
    out[3] = t3.result();
}

float neon_dot_q4_0(int64_t n, const void* w, const void* x) {
    return dot_quant<OffsetWeights<BlockQ4_0>, BlockQ4_0>(n, w, x);
}
float neon_dot_q4_1(int64_t n, const void* w, const void* x) {
    return dot_quant<OffsetWeights<BlockQ4_1>, BlockQ4_1>(n, w, x);
}
float neon_dot_q8_0(int64_t n, const void* w, const void* x) { return dot_quant<Q8_0Weights, BlockQ8_0>(n, w, x); }

void neon_dot4_q4_0(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<OffsetWeights<BlockQ4_0>, BlockQ4_0>(n, w, x, stride, out);
}

void neon_dot4_q4_1(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<OffsetWeights<BlockQ4_1>, BlockQ4_1>(n, w, x, stride, out);
}

void neon_dot4_q8_0(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<Q8_0Weights, BlockQ8_0>(n, w, x, stride, out);
}

float neon_dot_q5_0(int64_t n, const void* w, const void* x) {
    return dot_quant<OffsetWeights<BlockQ5_0>, BlockQ5_0>(n, w, x);
}
float neon_dot_q5_1(int64_t n, const void* w, const void* x) {
    return dot_quant<OffsetWeights<BlockQ5_1>, BlockQ5_1>(n, w, x);
}
float neon_dot_iq4_nl(int64_t n, const void* w, const void* x) { return dot_quant<IQ4NLWeights, BlockIQ4_NL>(n, w, x); }

void neon_dot4_q5_0(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<OffsetWeights<BlockQ5_0>, BlockQ5_0>(n, w, x, stride, out);
}

void neon_dot4_q5_1(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<OffsetWeights<BlockQ5_1>, BlockQ5_1>(n, w, x, stride, out);
}

void neon_dot4_iq4_nl(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<IQ4NLWeights, BlockIQ4_NL>(n, w, x, stride, out);
}

// ---- K-quants (Q2_K .. Q6_K) and IQ4_XS against Q8_K ---------------------------------------
//
// Per block of 256, row and token, the groups' integer dots (widening multiplies, several
// products per int16 lane) are multiplied by the groups' integer scales in the multiply-add
// that widens them to int32 (by lane of the row's scale vector), so that the block's integer
// sum builds up in an int32x4; the minimums (Q2_K, Q4_K, Q5_K) and the offsets of -4 (Q3_K)
// and -32 (Q6_K) come from the activation's sums over each 16 (bsums), also in int32. Per
// block, row and token one conversion to float and one fused multiply-add (a second of each
// for the minimums) into that pair's own accumulator.
// k_quant_dots takes kRows rows at any addresses times kTokens activations: the single dot
// (1, 1), dot4 (1, 4) and the gathered rows (kRows, 1) run, for each row and token, the same
// arithmetic, so their results agree bit for bit (kernels.h).

template <int kIndex>
using Index = std::integral_constant<int, kIndex>;

// Four vectors of bytes: 64 weight values or the 64 activation bytes they meet.
struct Bytes64 {
    int8x16_t v[4];
};

// The 64 activation bytes at y, in order.
SI_NEON_INLINE Bytes64 bytes64(const int8_t* y) {
    return {{vld1q_s8(y), vld1q_s8(y + 16), vld1q_s8(y + 32), vld1q_s8(y + 48)}};
}

// sum + the int16 lanes of p times lane kLane of scales (a row's scale of one group): the scale
// applied in the multiply-add that widens p into the int32 lanes.
template <int kLane>
SI_NEON_INLINE int32x4_t add_scaled(int32x4_t sum, int16x8_t p, int16x8_t scales) {
    sum = vmlal_laneq_s16(sum, vget_low_s16(p), scales, kLane);
    return vmlal_high_laneq_s16(sum, p, scales, kLane);
}

// The 32 products of small bytes (0 <= v <= 63; v0 elements 0..15, v1 16..31) with 32 signed
// bytes, four to each of eight int16 lanes (at most 4 * 63 * 128 = 32256 in magnitude).
SI_NEON_INLINE int16x8_t dot32_small(int8x16_t v0, int8x16_t v1, int8x16_t y0, int8x16_t y1) {
    int16x8_t p = vmull_s8(vget_low_s8(v0), vget_low_s8(y0));
    p = vmlal_high_s8(p, v0, y0);
    p = vmlal_s8(p, vget_low_s8(v1), vget_low_s8(y1));
    return vmlal_high_s8(p, v1, y1);
}

// The 16 products of v (|v| <= 127, never -128) and y, two to each of eight int16 lanes (at
// most 2 * 127 * 128 = 32512 in magnitude).
SI_NEON_INLINE int16x8_t dot16(int8x16_t v, int8x16_t y) {
    return vmlal_high_s8(vmull_s8(vget_low_s8(v), vget_low_s8(y)), v, y);
}

// The activations of weights whose chunk c is values 64 c .. 64 c + 63 in order (Q4_K, Q5_K,
// Q2_K, Q3_K, IQ4_XS; Q6_K interleaves its chunks and reads them its own way).
struct InOrderActivations {
    template <int kChunk>
    static Bytes64 activations(const BlockQ8_K& b, Index<kChunk>) {
        return bytes64(b.qs + 64 * kChunk);
    }
};

// Block i of a Q4_K or Q5_K row: four chunks of 64 values, chunk c the low (group 2c) then the
// high (group 2c + 1) nibbles of qs[32 c .. 32 c + 31], Q5_K's fifth bit of value l of group g
// being bit g of qh[l]; scales and minimums in int16 lanes (group g in lane g).
template <typename BlockT>
struct Q45KWeights : InOrderActivations {
    using Block = BlockT;
    static constexpr bool kFifthBit = std::is_same<BlockT, BlockQ5_K>::value;
    const Block* w;
    int16x8_t scales, mins;
    float d, dmin;
    // The scales and minimums unpacked as unpack_k_scales (tensor/dtype.h) does, in vectors: the
    // low 6 bits of bytes 0-7 are scales 0-3 and minimums 0-3; scales 4-7 take the low nibbles
    // of bytes 8-11 and the top 2 bits of bytes 0-3, minimums 4-7 the high nibbles and bytes 4-7.
    explicit Q45KWeights(const Block* blk) : w(blk), d(half_one(blk->d)), dmin(half_one(blk->dmin)) {
        const uint8x16_t packed = vld1q_u8(blk->scales);  // 12 bytes and 4 of qs (Q5_K: qh), unused
        const uint8x8_t first = vget_low_u8(packed), last = vget_high_u8(packed);
        // The low nibbles of bytes 8-11, then their high nibbles.
        const uint8x8_t nibbles = vreinterpret_u8_u32(
            vzip1_u32(vreinterpret_u32_u8(vand_u8(last, vdup_n_u8(0x0f))), vreinterpret_u32_u8(vshr_n_u8(last, 4))));
        const uint32x2_t low = vreinterpret_u32_u8(vand_u8(first, vdup_n_u8(63)));
        const uint32x2_t high = vreinterpret_u32_u8(vsli_n_u8(nibbles, vshr_n_u8(first, 6), 4));
        scales = vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_u32(vzip1_u32(low, high))));
        mins = vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_u32(vzip2_u32(low, high))));
    }
    template <int kChunk>
    Bytes64 values(Index<kChunk>) const {
        const uint8x16_t q0 = vld1q_u8(w->qs + 32 * kChunk), q1 = vld1q_u8(w->qs + 32 * kChunk + 16);
        if constexpr (kFifthBit) {
            // Shift-insert keeps the inserted-into bits: group 2c = bit 0 of h above the low nibble
            // of q, group 2c + 1 = the high nibble of q below bit 1 of h moved to bit 4.
            Bytes64 out;
            for (int k = 0; k < 2; ++k) {
                const uint8x16_t q = k == 0 ? q0 : q1;
                uint8x16_t h = vld1q_u8(w->qh + 16 * k);
                if constexpr (kChunk > 0) h = vshrq_n_u8(h, 2 * kChunk);  // bits 2c, 2c + 1 at 0, 1
                out.v[k] = vreinterpretq_s8_u8(vsliq_n_u8(q, vandq_u8(h, vdupq_n_u8(0x01)), 4));
                out.v[k + 2] = vreinterpretq_s8_u8(vsriq_n_u8(vandq_u8(vshlq_n_u8(h, 3), vdupq_n_u8(0x10)), q, 4));
            }
            return out;
        } else {
            const uint8x16_t low = vdupq_n_u8(0x0f);
            return {{vreinterpretq_s8_u8(vandq_u8(q0, low)), vreinterpretq_s8_u8(vandq_u8(q1, low)),
                     vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vreinterpretq_s8_u8(vshrq_n_u8(q1, 4))}};
        }
    }
    // sum + the chunk's two groups' dots times their scales. A group's 32 products go four to
    // an int16 lane (values 0..15, Q5_K's 0..31: within dot32_small's bound).
    template <int kChunk>
    int32x4_t dot(Index<kChunk>, const Bytes64& v, const Bytes64& y, int32x4_t sum) const {
        sum = add_scaled<2 * kChunk>(sum, dot32_small(v.v[0], v.v[1], y.v[0], y.v[1]), scales);
        return add_scaled<2 * kChunk + 1>(sum, dot32_small(v.v[2], v.v[3], y.v[2], y.v[3]), scales);
    }
    // The minimums' term, sum_g min_g (bsums[2 g] + bsums[2 g + 1]) (a pair at most 2 * 16 * 128
    // in magnitude), taken off acc before the groups' dots so that the minimums are not held
    // through them; the integer sum starts at 0.
    int32x4_t begin(const BlockQ8_K& b, float32x4_t& acc) const {
        const int16x8_t pairs = vpaddq_s16(vld1q_s16(b.bsums), vld1q_s16(b.bsums + 8));
        const int32x4_t min_sum = vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(pairs)), mins, pairs);
        acc = vfmsq_f32(acc, vcvtq_f32_s32(min_sum), vdupq_n_f32(dmin * b.d));
        return vdupq_n_s32(0);
    }
    float32x4_t finish(int32x4_t sum, const BlockQ8_K& b, float32x4_t acc) const {
        return vfmaq_f32(acc, vcvtq_f32_s32(sum), vdupq_n_f32(d * b.d));
    }
};

using Q4KWeights = Q45KWeights<BlockQ4_K>;
using Q5KWeights = Q45KWeights<BlockQ5_K>;

// sum_g weights_g bsums_g over a block's 16 groups of 16 (weights in int16 lanes, groups 0-7
// then 8-15), each product widened to int32 (|bsums_g| <= 16 * 128): what an offset or the
// minimums add through the activation's sums.
SI_NEON_INLINE int32x4_t dot_bsums(const int16x8_t weights[2], const BlockQ8_K& b) {
    const int16x8_t b0 = vld1q_s16(b.bsums), b1 = vld1q_s16(b.bsums + 8);
    int32x4_t sum = vmull_s16(vget_low_s16(weights[0]), vget_low_s16(b0));
    sum = vmlal_high_s16(sum, weights[0], b0);
    sum = vmlal_s16(sum, vget_low_s16(weights[1]), vget_low_s16(b1));
    return vmlal_high_s16(sum, weights[1], b1);
}

// Block i of a Q6_K row (values: tensor/dtype.cpp, dequantize_q6_k): four chunks of 64 values,
// chunk c = 2 half + j the planes j (low nibbles of ql[64 half + 32 j ..], groups 8 half + 2 j
// and + 1) and j + 2 (their high nibbles, groups 8 half + 2 j + 4 and + 5), the high two bits
// of plane p being bits 2p, 2p + 1 of qh[32 half ..]; the 16 scales in int16 lanes (groups 0-7,
// 8-15). The values stay unsigned (0..63) and the offset of -32 comes back through bsums.
struct Q6KWeights {
    using Block = BlockQ6_K;
    const BlockQ6_K* w;
    int16x8_t scales[2];
    float d;
    explicit Q6KWeights(const BlockQ6_K* blk) : w(blk), d(half_one(blk->d)) {
        const int8x16_t s = vld1q_s8(blk->scales);
        scales[0] = vmovl_s8(vget_low_s8(s));
        scales[1] = vmovl_high_s8(s);
    }
    template <int kChunk>
    Bytes64 values(Index<kChunk>) const {
        constexpr int half = kChunk / 2, j = kChunk % 2;
        const uint8_t* ql = w->ql + 64 * half + 32 * j;
        Bytes64 out;
        for (int k = 0; k < 2; ++k) {
            const uint8x16_t low = vld1q_u8(ql + 16 * k);
            uint8x16_t high = vld1q_u8(w->qh + 32 * half + 16 * k);
            if constexpr (j == 1) high = vshrq_n_u8(high, 2);  // plane j's bits at 0-1, j + 2's at 4-5
            // Shift-insert keeps the inserted-into bits: plane j = bits 0-1 of high above the low
            // nibble of ql, plane j + 2 = the high nibble of ql below bits 4-5 of high.
            out.v[k] = vreinterpretq_s8_u8(vsliq_n_u8(low, vandq_u8(high, vdupq_n_u8(0x03)), 4));
            out.v[k + 2] = vreinterpretq_s8_u8(vsriq_n_u8(vandq_u8(high, vdupq_n_u8(0x30)), low, 4));
        }
        return out;
    }
    template <int kChunk>
    static Bytes64 activations(const BlockQ8_K& b, Index<kChunk>) {
        const int8_t* y = b.qs + 128 * (kChunk / 2) + 32 * (kChunk % 2);
        return {{vld1q_s8(y), vld1q_s8(y + 16), vld1q_s8(y + 64), vld1q_s8(y + 80)}};
    }
    // sum + the chunk's four groups' dots times their scales. A group's 16 products go two to
    // an int16 lane (values 0..63: at most 2 * 63 * 128 in magnitude).
    template <int kChunk>
    int32x4_t dot(Index<kChunk>, const Bytes64& v, const Bytes64& y, int32x4_t sum) const {
        constexpr int g = 2 * (kChunk % 2);  // the first group's lane in scales[kChunk / 2]
        const int16x8_t& s = scales[kChunk / 2];
        sum = add_scaled<g>(sum, dot16(v.v[0], y.v[0]), s);
        sum = add_scaled<g + 1>(sum, dot16(v.v[1], y.v[1]), s);
        sum = add_scaled<g + 4>(sum, dot16(v.v[2], y.v[2]), s);
        return add_scaled<g + 5>(sum, dot16(v.v[3], y.v[3]), s);
    }
    // The integer sum starts at the offset of -32, exactly: -32 sum_g scale_g bsums_g.
    int32x4_t begin(const BlockQ8_K& b, float32x4_t& /*acc*/) const {
        return vnegq_s32(vshlq_n_s32(dot_bsums(scales, b), 5));
    }
    float32x4_t finish(int32x4_t sum, const BlockQ8_K& b, float32x4_t acc) const {
        return vfmaq_f32(acc, vcvtq_f32_s32(sum), vdupq_n_f32(d * b.d));
    }
};

// v >> kBits in each byte, kBits = 0 included (vshrq_n_u8 takes 1..8).
template <int kBits>
SI_NEON_INLINE uint8x16_t shift_right(uint8x16_t v) {
    if constexpr (kBits == 0) {
        return v;
    } else {
        return vshrq_n_u8(v, kBits);
    }
}

// Block i of a Q2_K or Q3_K row (values: tensor/dtype.cpp, dequantize_q2_k / q3_k): four chunks
// of 64 values, chunk c = 2 half + j the planes 2j and 2j + 1 (bits 4j and 4j + 2) of the 32
// bytes qs[32 half ..], groups 4c .. 4c + 3 in turn; Q3_K's third bit of plane p is bit
// 4 half + p of hmask, so a chunk's are bits 2c and 2c + 1. The 16 scales in int16 lanes
// (groups 0-7, 8-15): Q2_K's the low nibbles of scales[g], its minimums the high nibbles;
// Q3_K's signed (-32..31), its values u = 0..7 unsigned and the -4 of w = d scale (u - 4)
// through bsums, as Q6_K's -32.
template <bool kQ3>
struct Q23KWeights : InOrderActivations {
    using Block = std::conditional_t<kQ3, BlockQ3_K, BlockQ2_K>;
    const Block* w;
    int16x8_t scales[2];
    int16x8_t mins[2] = {};  // Q2_K's
    float d, dmin = 0.0f;    // dmin: Q2_K's
    explicit Q23KWeights(const Block* blk) : w(blk), d(half_one(blk->d)) {
        const uint8x16_t nibble = vdupq_n_u8(0x0f);
        if constexpr (kQ3) {
            // As unpack_q3_k_scales (tensor/dtype.h): scale g's low 4 bits are nibble g / 8 of
            // byte g % 8, its high 2 bits bits 2 (g / 4) of byte 8 + g % 4, which the four bytes
            // repeated and shifted right by 2 (g / 4) bring to bits 0-1 of byte g. (Bytes 0-7 and
            // 8-11 loaded apart: sixteen bytes from scales would read past the row's last block.)
            static constexpr int8_t kDown[16] = {0, 0, 0, 0, -2, -2, -2, -2, -4, -4, -4, -4, -6, -6, -6, -6};
            const uint8x8_t packed = vld1_u8(blk->scales);
            uint32_t top;
            std::memcpy(&top, blk->scales + 8, 4);
            const uint8x16_t low = vcombine_u8(vand_u8(packed, vget_low_u8(nibble)), vshr_n_u8(packed, 4));
            const uint8x16_t high =
                vandq_u8(vshlq_u8(vreinterpretq_u8_u32(vdupq_n_u32(top)), vld1q_s8(kDown)), vdupq_n_u8(3));
            const int8x16_t s = vsubq_s8(vreinterpretq_s8_u8(vsliq_n_u8(low, high, 4)), vdupq_n_s8(32));
            scales[0] = vmovl_s8(vget_low_s8(s));
            scales[1] = vmovl_high_s8(s);
        } else {
            const uint8x16_t packed = vld1q_u8(blk->scales);
            const uint8x16_t low = vandq_u8(packed, nibble), high = vshrq_n_u8(packed, 4);
            scales[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(low)));
            scales[1] = vreinterpretq_s16_u16(vmovl_high_u8(low));
            mins[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(high)));
            mins[1] = vreinterpretq_s16_u16(vmovl_high_u8(high));
            dmin = half_one(blk->dmin);
        }
    }
    template <int kChunk>
    Bytes64 values(Index<kChunk>) const {
        constexpr int half = kChunk / 2, first = 4 * (kChunk % 2);  // plane 2j's bits, 2j + 1's two above
        Bytes64 out;
        for (int k = 0; k < 2; ++k) {
            const uint8x16_t q = vld1q_u8(w->qs + 32 * half + 16 * k);
            const uint8x16_t plane0 = shift_right<first>(q), plane1 = vshrq_n_u8(q, first + 2);
            if constexpr (kQ3) {
                // Shift-insert keeps the plane's two bits and drops those above them: the third
                // bit (bit 0 or 1 of h, masked) goes in above them.
                const uint8x16_t h = shift_right<2 * kChunk>(vld1q_u8(w->hmask + 16 * k)), one = vdupq_n_u8(1);
                out.v[k] = vreinterpretq_s8_u8(vsliq_n_u8(plane0, vandq_u8(h, one), 2));
                out.v[k + 2] = vreinterpretq_s8_u8(vsliq_n_u8(plane1, vandq_u8(vshrq_n_u8(h, 1), one), 2));
            } else {
                const uint8x16_t two_bits = vdupq_n_u8(3);
                out.v[k] = vreinterpretq_s8_u8(vandq_u8(plane0, two_bits));
                out.v[k + 2] = vreinterpretq_s8_u8(vandq_u8(plane1, two_bits));
            }
        }
        return out;
    }
    // sum + the chunk's four groups' dots times their scales. A group's 16 products go two to
    // an int16 lane (values 0..7: at most 2 * 7 * 128 in magnitude).
    template <int kChunk>
    int32x4_t dot(Index<kChunk>, const Bytes64& v, const Bytes64& y, int32x4_t sum) const {
        constexpr int g = 4 * (kChunk % 2);  // the first group's lane in scales[kChunk / 2]
        const int16x8_t& s = scales[kChunk / 2];
        sum = add_scaled<g>(sum, dot16(v.v[0], y.v[0]), s);
        sum = add_scaled<g + 1>(sum, dot16(v.v[1], y.v[1]), s);
        sum = add_scaled<g + 2>(sum, dot16(v.v[2], y.v[2]), s);
        return add_scaled<g + 3>(sum, dot16(v.v[3], y.v[3]), s);
    }
    // Q3_K: the integer sum starts at the offset of -4, exactly: -4 sum_g scale_g bsums_g.
    // Q2_K: the minimums' term, sum_g min_g bsums_g, taken off acc first as Q4_K's is; the
    // integer sum starts at 0.
    int32x4_t begin(const BlockQ8_K& b, float32x4_t& acc) const {
        if constexpr (kQ3) {
            return vnegq_s32(vshlq_n_s32(dot_bsums(scales, b), 2));
        } else {
            acc = vfmsq_f32(acc, vcvtq_f32_s32(dot_bsums(mins, b)), vdupq_n_f32(dmin * b.d));
            return vdupq_n_s32(0);
        }
    }
    float32x4_t finish(int32x4_t sum, const BlockQ8_K& b, float32x4_t acc) const {
        return vfmaq_f32(acc, vcvtq_f32_s32(sum), vdupq_n_f32(d * b.d));
    }
};

using Q2KWeights = Q23KWeights<false>;
using Q3KWeights = Q23KWeights<true>;

// Block i of an IQ4_XS row: four chunks of 64 values, chunk c the groups 2c and 2c + 1, group
// g's 32 values the levels (TBL) of the low then the high nibbles of qs[16 g .. 16 g + 15];
// the signed scales (-32..31) in int16 lanes (group g in lane g). The levels are signed
// (-127..113), so a group's products go two to an int16 lane.
struct IQ4XSWeights : InOrderActivations {
    using Block = BlockIQ4_XS;
    const BlockIQ4_XS* w;
    int16x8_t scales;
    float d;
    // The scales as iq4_xs_scale (tensor/dtype.h) gives them, in a vector: scale g's low 4 bits
    // are nibble g % 2 of scales_l[g / 2], its high 2 bits bits 2 g, 2 g + 1 of scales_h.
    explicit IQ4XSWeights(const BlockIQ4_XS* blk) : w(blk), d(half_one(blk->d)) {
        static constexpr int16_t kDown[8] = {0, -2, -4, -6, -8, -10, -12, -14};  // right shifts by 2 g
        uint32_t packed;
        std::memcpy(&packed, blk->scales_l, 4);
        const uint8x8_t l = vcreate_u8(packed);
        const uint8x8_t low = vzip1_u8(vand_u8(l, vdup_n_u8(0x0f)), vshr_n_u8(l, 4));
        const uint16x8_t high = vandq_u16(vshlq_u16(vdupq_n_u16(blk->scales_h), vld1q_s16(kDown)), vdupq_n_u16(3));
        scales = vsubq_s16(vreinterpretq_s16_u16(vsliq_n_u16(vmovl_u8(low), high, 4)), vdupq_n_s16(32));
    }
    template <int kChunk>
    Bytes64 values(Index<kChunk>) const {
        const int8x16_t levels = vld1q_s8(kIq4Values);
        Bytes64 out;
        for (int k = 0; k < 2; ++k) {
            uint8x16_t lo, hi;
            unpack_nibbles(w->qs + 32 * kChunk + 16 * k, &lo, &hi);
            out.v[2 * k] = vqtbl1q_s8(levels, lo);
            out.v[2 * k + 1] = vqtbl1q_s8(levels, hi);
        }
        return out;
    }
    // sum + the chunk's two groups' dots times their scales, each group's pair sums (at most
    // 2 * 127 * 128) widened and scaled in two halves of 16 products.
    template <int kChunk>
    int32x4_t dot(Index<kChunk>, const Bytes64& v, const Bytes64& y, int32x4_t sum) const {
        sum = add_scaled<2 * kChunk>(sum, dot16(v.v[0], y.v[0]), scales);
        sum = add_scaled<2 * kChunk>(sum, dot16(v.v[1], y.v[1]), scales);
        sum = add_scaled<2 * kChunk + 1>(sum, dot16(v.v[2], y.v[2]), scales);
        return add_scaled<2 * kChunk + 1>(sum, dot16(v.v[3], y.v[3]), scales);
    }
    // No minimums or offset: the integer sum starts at 0 (|sum| <= 256 * 127 * 128 * 32 < 2^31).
    int32x4_t begin(const BlockQ8_K& /*b*/, float32x4_t& /*acc*/) const { return vdupq_n_s32(0); }
    float32x4_t finish(int32x4_t sum, const BlockQ8_K& b, float32x4_t acc) const {
        return vfmaq_f32(acc, vcvtq_f32_s32(sum), vdupq_n_f32(d * b.d));
    }
};

// W for block i of each of the rows (W has no default constructor).
template <typename W, size_t... R>
SI_NEON_INLINE std::array<W, sizeof...(R)> row_blocks(const void* const* rows, int64_t i, std::index_sequence<R...>) {
    return {{W(static_cast<const typename W::Block*>(rows[R]) + i)...}};
}

// out[r kTokens + t] = dot(rows[r], activation t), the activations `stride` bytes apart. Per
// chunk of 64 values each token's activation bytes are loaded once for all the rows and each
// row's values unpacked once for all the tokens; the rows are read side by side (kernels.h,
// GatherDotFn).
template <typename W, int kRows, int kTokens>
void k_quant_dots(int64_t n, const void* const* rows, const void* x, size_t stride, float* out) {
    float32x4_t acc[kRows][kTokens];
    unrolled([&](auto k) { acc[k / kTokens][k % kTokens] = vdupq_n_f32(0.0f); },
             std::make_index_sequence<kRows * kTokens>{});
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const std::array<W, kRows> w = row_blocks<W>(rows, i, std::make_index_sequence<kRows>{});
        const BlockQ8_K* b[kTokens];
        int32x4_t sum[kRows][kTokens];
        unrolled([&](auto k) {
            b[k] = token<BlockQ8_K>(x, stride, k) + i;
        }, std::make_index_sequence<kTokens>{});
        unrolled([&](auto k) {
            constexpr int r = k / kTokens, t = k % kTokens;
            sum[r][t] = w[r].begin(*b[t], acc[r][t]);
        }, std::make_index_sequence<kRows * kTokens>{});
        unrolled([&](auto c) {
            Bytes64 y[kTokens];
            unrolled([&](auto t) { y[t] = W::activations(*b[t], c); }, std::make_index_sequence<kTokens>{});
            unrolled([&](auto r) {
                const Bytes64 v = w[r].values(c);
                unrolled([&](auto t) { sum[r][t] = w[r].dot(c, v, y[t], sum[r][t]); },
                         std::make_index_sequence<kTokens>{});
            }, std::make_index_sequence<kRows>{});
        }, std::make_index_sequence<4>{});
        unrolled([&](auto k) {
            constexpr int r = k / kTokens, t = k % kTokens;
            acc[r][t] = w[r].finish(sum[r][t], *b[t], acc[r][t]);
        }, std::make_index_sequence<kRows * kTokens>{});
    }
    unrolled([&](auto k) { out[k] = vaddvq_f32(acc[k / kTokens][k % kTokens]); },
             std::make_index_sequence<kRows * kTokens>{});
}

// Gathered K-quant and IQ4_XS rows read side by side, four as at AVX2. A row costs about the
// instructions of its single dot (the activation loads it shares pay for the spills of the
// rows' scales, which by-lane multiplies need in v0-v15); what a group gains is its rows' cache
// misses in flight at once, where one row after another waits on each row's first lines
// (kernels.h).
constexpr int kKQuantGatherGroup = 4;

template <typename W>
float k_quant_dot(int64_t n, const void* w, const void* x) {
    float out;
    k_quant_dots<W, 1, 1>(n, &w, x, 0, &out);
    return out;
}

template <typename W>
void k_quant_dot4(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    k_quant_dots<W, 1, 4>(n, &w, x, stride, out);
}

template <typename W>
void k_quant_gather_dot(int64_t n, const void* const* rows, int n_rows, const void* x, float* out) {
    in_groups<kKQuantGatherGroup>(n_rows, [&](int first, auto group) {
        k_quant_dots<W, decltype(group)::value, 1>(n, rows + first, x, 0, out + first);
    });
}

// ---- activation quantisation --------------------------------------------------------------

// max|x| over kValues floats (a multiple of 32). maxNum ignores quiet NaNs as std::fmax does,
// and is exact, so the order of the maxima does not matter.
template <int kValues>
SI_NEON_INLINE float max_abs(const float* x) {
    float32x4_t m[8];
    for (int k = 0; k < 8; ++k) m[k] = vabsq_f32(vld1q_f32(x + 4 * k));
    for (int j = 32; j < kValues; j += 32) {
        for (int k = 0; k < 8; ++k) m[k] = vmaxnmq_f32(m[k], vabsq_f32(vld1q_f32(x + j + 4 * k)));
    }
    const float32x4_t m01 = vmaxnmq_f32(m[0], m[1]), m23 = vmaxnmq_f32(m[2], m[3]);
    const float32x4_t m45 = vmaxnmq_f32(m[4], m[5]), m67 = vmaxnmq_f32(m[6], m[7]);
    return vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m01, m23), vmaxnmq_f32(m45, m67)));
}

// d = max|x| / 127 and id = 1/d (0 where d is) as the reference computes them. False where
// max|x| or 1/d is not finite (NaN input, or d so small that 1/d overflows): the caller then
// runs the reference on that block, so that the bytes match the reference for every input.
SI_NEON_INLINE bool block_scale(float amax, float* d, float* id) {
    *d = amax / 127.0f;
    *id = *d != 0.0f ? 1.0f / *d : 0.0f;
    return amax <= FLT_MAX && *id <= FLT_MAX;
}

// Quantises 32 floats as the reference does: q = round-half-even(x * id) (FCVTNS), narrowed
// with saturation (x * id rounds to at most 127 in magnitude, so it never saturates). h gets
// the same values in int16 lanes (elements 8k..8k+7 in h[k]), for the sums.
SI_NEON_INLINE void quantize_32(const float* x, float32x4_t id, int8_t* q, int16x8_t h[4]) {
    int32x4_t i32[8];
    for (int k = 0; k < 8; ++k) i32[k] = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + 4 * k), id));
    for (int k = 0; k < 4; ++k) h[k] = vqmovn_high_s32(vqmovn_s32(i32[2 * k]), i32[2 * k + 1]);
    vst1q_s8(q, vqmovn_high_s16(vqmovn_s16(h[0]), h[1]));
    vst1q_s8(q + 16, vqmovn_high_s16(vqmovn_s16(h[2]), h[3]));
}

// One block of 32 (Q8_0, Q8_1), with the sum of its values where sum_out is not null; false,
// writing nothing, where block_scale is.
SI_NEON_INLINE bool quantize_block(const float* x, int8_t* q, float* d_out, int* sum_out) {
    float d, id;
    if (!block_scale(max_abs<kQK>(x), &d, &id)) return false;
    int16x8_t h[4];
    quantize_32(x, vdupq_n_f32(id), q, h);
    if (sum_out) *sum_out = vaddlvq_s16(vaddq_s16(vaddq_s16(h[0], h[1]), vaddq_s16(h[2], h[3])));
    *d_out = d;
    return true;
}

void neon_quantize_q8_0(const float* x, void* dst, int64_t n) {
    auto out = static_cast<BlockQ8_0*>(dst);
    for (int64_t i = 0; i < n / kQK; ++i) {
        float d;
        if (quantize_block(x + i * kQK, out[i].qs, &d, nullptr)) {
            out[i].d = to_half(d);
        } else {
            ::si::quantize_row_q8_0_ref(x + i * kQK, out + i, kQK);
        }
    }
}

void neon_quantize_q8_1(const float* x, void* dst, int64_t n) {
    auto out = static_cast<BlockQ8_1*>(dst);
    for (int64_t i = 0; i < n / kQK; ++i) {
        float d;
        int sum;
        if (quantize_block(x + i * kQK, out[i].qs, &d, &sum)) {
            out[i].d = d;
            out[i].s = d * static_cast<float>(sum);
        } else {
            ::si::quantize_row_q8_1_ref(x + i * kQK, out + i, kQK);
        }
    }
}

// Q8_K: blocks of 32 quantised as above with max|x| taken over 256 values; the sums of each 16
// by pairwise adds of the int16 values (at most 16 * 127 in magnitude).
void neon_quantize_q8_k(const float* x, void* dst, int64_t n) {
    auto out = static_cast<BlockQ8_K*>(dst);
    for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
        float d, id;
        if (!block_scale(max_abs<kQK_K>(x), &d, &id)) {
            ::si::quantize_row_q8_k_ref(x, out + i, kQK_K);
            continue;
        }
        // quads[j]: sums of four values, lanes 0-3 of group 2j (elements 32j ..), 4-7 of 2j + 1.
        int16x8_t quads[8];
        for (int j = 0; j < 8; ++j) {
            int16x8_t h[4];
            quantize_32(x + 32 * j, vdupq_n_f32(id), out[i].qs + 32 * j, h);
            quads[j] = vpaddq_s16(vpaddq_s16(h[0], h[1]), vpaddq_s16(h[2], h[3]));
        }
        // Lanes 2k, 2k + 1 of a pair of quads: group 4j + k's halves; then group by group.
        int16x8_t halves[4];
        for (int j = 0; j < 4; ++j) halves[j] = vpaddq_s16(quads[2 * j], quads[2 * j + 1]);
        vst1q_s16(out[i].bsums, vpaddq_s16(halves[0], halves[1]));
        vst1q_s16(out[i].bsums + 8, vpaddq_s16(halves[2], halves[3]));
        out[i].d = d;
    }
}

// ---- axpy ---------------------------------------------------------------------------------

template <typename Row>
inline void axpy_floats(int64_t n, float a, const void* r, float* y) {
    const typename Row::Weight* row = static_cast<const typename Row::Weight*>(r);
    const float32x4_t va = vdupq_n_f32(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t x0, x1, x2, x3;
        Row::load8(row + i, &x0, &x1);
        Row::load8(row + i + 8, &x2, &x3);
        const float32x4_t y0 = vld1q_f32(y + i), y1 = vld1q_f32(y + i + 4);
        const float32x4_t y2 = vld1q_f32(y + i + 8), y3 = vld1q_f32(y + i + 12);
        vst1q_f32(y + i, vfmaq_f32(y0, va, x0));
        vst1q_f32(y + i + 4, vfmaq_f32(y1, va, x1));
        vst1q_f32(y + i + 8, vfmaq_f32(y2, va, x2));
        vst1q_f32(y + i + 12, vfmaq_f32(y3, va, x3));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_f32(vld1q_f32(y + i), va, Row::load4(row + i)));
    for (; i < n; ++i) y[i] = std::fma(a, Row::load1(row + i), y[i]);
}

void neon_axpy_f32(int64_t n, float a, const void* row, float* y) { axpy_floats<F32Row>(n, a, row, y); }
void neon_axpy_f16(int64_t n, float a, const void* row, float* y) { axpy_floats<F16Row>(n, a, row, y); }

// 16 signed bytes as floats scale * q + offset (one rounding), in four vectors.
inline void dequantize_16_i8(int8x16_t q, float32x4_t scale, float32x4_t offset, float32x4_t out[4]) {
    const int16x8_t w0 = vmovl_s8(vget_low_s8(q)), w1 = vmovl_high_s8(q);
    out[0] = vfmaq_f32(offset, scale, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0))));
    out[1] = vfmaq_f32(offset, scale, vcvtq_f32_s32(vmovl_high_s16(w0)));
    out[2] = vfmaq_f32(offset, scale, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1))));
    out[3] = vfmaq_f32(offset, scale, vcvtq_f32_s32(vmovl_high_s16(w1)));
}

// Block i of a Q4_0, Q4_1 or Q8_0 row as eight vectors of four floats, d q + m rounded once:
// what neon_dequantize_row stores and what the typed axpy adds, so that one token's down
// projection (typed rows) equals a batch's (rows dequantised, then added as axpy_f32 adds).
inline void block_values(DType type, const void* blocks, int64_t i, float32x4_t v[8]) {
    int8x16_t lo, hi;
    float32x4_t scale, offset = vdupq_n_f32(0.0f);
    switch (type) {
        case DType::Q4_0: {
            const BlockQ4_0& b = static_cast<const BlockQ4_0*>(blocks)[i];
            uint8x16_t ulo, uhi;
            unpack_nibbles(b.qs, &ulo, &uhi);
            const int8x16_t eight = vdupq_n_s8(8);
            lo = vsubq_s8(vreinterpretq_s8_u8(ulo), eight);
            hi = vsubq_s8(vreinterpretq_s8_u8(uhi), eight);
            scale = half_dup(&b.d);
            break;
        }
        case DType::Q4_1: {
            const BlockQ4_1& b = static_cast<const BlockQ4_1*>(blocks)[i];
            uint8x16_t ulo, uhi;
            unpack_nibbles(b.qs, &ulo, &uhi);
            lo = vreinterpretq_s8_u8(ulo);
            hi = vreinterpretq_s8_u8(uhi);
            scale = half_dup(&b.d);
            offset = half_dup(&b.m);
            break;
        }
        default: {  // Q8_0
            const BlockQ8_0& b = static_cast<const BlockQ8_0*>(blocks)[i];
            lo = vld1q_s8(b.qs);
            hi = vld1q_s8(b.qs + 16);
            scale = half_dup(&b.d);
        }
    }
    dequantize_16_i8(lo, scale, offset, v);
    dequantize_16_i8(hi, scale, offset, v + 4);
}

template <DType kType>
void axpy_blocks(int64_t n, float a, const void* row, float* y) {
    const float32x4_t va = vdupq_n_f32(a);
    for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
        float32x4_t v[8];
        block_values(kType, row, i, v);
        for (int k = 0; k < 8; ++k) vst1q_f32(y + 4 * k, vfmaq_f32(vld1q_f32(y + 4 * k), va, v[k]));
    }
}

void neon_axpy_q4_0(int64_t n, float a, const void* row, float* y) { axpy_blocks<DType::Q4_0>(n, a, row, y); }
void neon_axpy_q4_1(int64_t n, float a, const void* row, float* y) { axpy_blocks<DType::Q4_1>(n, a, row, y); }
void neon_axpy_q8_0(int64_t n, float a, const void* row, float* y) { axpy_blocks<DType::Q8_0>(n, a, row, y); }

// Rows to floats (the batched sparse down projection): the block types as the typed axpy
// dequantises them, F16 exactly; the others through the reference.
void neon_dequantize_row(DType type, const void* src, float* dst, int64_t n) {
    switch (type) {
        case DType::Q4_0:
        case DType::Q4_1:
        case DType::Q8_0:
            for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
                float32x4_t v[8];
                block_values(type, src, i, v);
                for (int k = 0; k < 8; ++k) vst1q_f32(dst + 4 * k, v[k]);
            }
            return;
        default:
            ::si::dequantize_row_ref(type, src, dst, n);
    }
}

// Attention scores (kernels.h, KeyScoresFn): per block of sixteen keys four vectors of four
// lanes per head, a fused multiply-add per dimension.
template <int kHeads>
void neon_key_scores_heads(int64_t head_dim, int64_t n_keys, const uint16_t* key_blocks, const float* q,
                           size_t q_stride, float* scores, size_t score_stride) {
    static_assert(kKeyBlock == 16, "four vectors of four lanes per block");
    for (int64_t b = 0; b * kKeyBlock < n_keys; ++b) {
        const uint16_t* block = key_blocks + b * head_dim * kKeyBlock;
        float32x4_t acc[kHeads][4];
        unrolled([&](auto g) {
            for (int k = 0; k < 4; ++k) acc[g][k] = vdupq_n_f32(0.0f);
        }, std::make_index_sequence<kHeads>{});
        for (int64_t d = 0; d < head_dim; ++d) {
            float32x4_t k[4];
            F16Row::load8(block + d * kKeyBlock, &k[0], &k[1]);
            F16Row::load8(block + d * kKeyBlock + 8, &k[2], &k[3]);
            unrolled([&](auto g) {
                const float32x4_t qd = vdupq_n_f32(q[g * q_stride + d]);
                for (int i = 0; i < 4; ++i) acc[g][i] = vfmaq_f32(acc[g][i], k[i], qd);
            }, std::make_index_sequence<kHeads>{});
        }
        unrolled([&](auto g) {
            for (int i = 0; i < 4; ++i) vst1q_f32(scores + g * score_stride + b * kKeyBlock + 4 * i, acc[g][i]);
        }, std::make_index_sequence<kHeads>{});
    }
}

void neon_key_scores(int64_t head_dim, int64_t n_keys, const uint16_t* key_blocks, const float* q, size_t q_stride,
                     int n_heads, float* scores, size_t score_stride) {
    in_groups<4>(n_heads, [&](int first, auto heads) {
        neon_key_scores_heads<decltype(heads)::value>(head_dim, n_keys, key_blocks, q + first * q_stride, q_stride,
                                                       scores + first * score_stride, score_stride);
    });
}

#undef SI_NEON_INLINE

}  // namespace

const KernelTable* kernels_neon() {
    static const KernelTable table = [] {
        KernelTable t{};
        t.isa = "neon";
        // Each type's row: {dot, dot4, rows8, rows4, axpy, gather_dot, gather_axpy}; gathered
        // rows one after another but the dots of the types against Q8_K (the K-quants, IQ4_XS),
        // four side by side (k_quant_dots); the typed axpys of Q5_0, Q5_1, the K-quants and the
        // IQ4 types dequantise through the reference, then add as neon_axpy_f32 does (kernels.h);
        // none of it timed on an Arm machine yet.
        t.of(DType::F32) = {neon_dot_f32, four_dots<neon_dot_f32>, nullptr, neon_dot4x4_f32, neon_axpy_f32,
                            dots_one_by_one<neon_dot_f32>, axpys_one_by_one<neon_axpy_f32>};
        t.of(DType::F16) = {neon_dot_f16, four_dots<neon_dot_f16>, nullptr, neon_dot4x4_f16, neon_axpy_f16,
                            dots_one_by_one<neon_dot_f16>, axpys_one_by_one<neon_axpy_f16>};
        t.of(DType::BF16) = {scalar_dot_bf16, scalar_dot4_bf16, nullptr, nullptr, fused_axpy_bf16,
                             dots_one_by_one<scalar_dot_bf16>, axpys_one_by_one<fused_axpy_bf16>};
        t.of(DType::Q4_0) = {neon_dot_q4_0, neon_dot4_q4_0, nullptr, nullptr, neon_axpy_q4_0,
                             dots_one_by_one<neon_dot_q4_0>, axpys_one_by_one<neon_axpy_q4_0>};
        t.of(DType::Q4_1) = {neon_dot_q4_1, neon_dot4_q4_1, nullptr, nullptr, neon_axpy_q4_1,
                             dots_one_by_one<neon_dot_q4_1>, axpys_one_by_one<neon_axpy_q4_1>};
        t.of(DType::Q8_0) = {neon_dot_q8_0, neon_dot4_q8_0, nullptr, nullptr, neon_axpy_q8_0,
                             dots_one_by_one<neon_dot_q8_0>, axpys_one_by_one<neon_axpy_q8_0>};
        constexpr auto axpy_q5_0 = axpy_dequantised_blocks<DType::Q5_0, kQK, neon_axpy_f32>;
        constexpr auto axpy_q5_1 = axpy_dequantised_blocks<DType::Q5_1, kQK, neon_axpy_f32>;
        t.of(DType::Q5_0) = {neon_dot_q5_0, neon_dot4_q5_0, nullptr, nullptr, axpy_q5_0,
                             dots_one_by_one<neon_dot_q5_0>, axpys_one_by_one<axpy_q5_0>};
        t.of(DType::Q5_1) = {neon_dot_q5_1, neon_dot4_q5_1, nullptr, nullptr, axpy_q5_1,
                             dots_one_by_one<neon_dot_q5_1>, axpys_one_by_one<axpy_q5_1>};
        constexpr auto axpy_iq4_nl = axpy_dequantised_blocks<DType::IQ4_NL, kQK, neon_axpy_f32>;
        t.of(DType::IQ4_NL) = {neon_dot_iq4_nl, neon_dot4_iq4_nl, nullptr, nullptr, axpy_iq4_nl,
                               dots_one_by_one<neon_dot_iq4_nl>, axpys_one_by_one<axpy_iq4_nl>};
        constexpr auto axpy_q4_k = axpy_dequantised_blocks<DType::Q4_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_q5_k = axpy_dequantised_blocks<DType::Q5_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_q2_k = axpy_dequantised_blocks<DType::Q2_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_q3_k = axpy_dequantised_blocks<DType::Q3_K, kQK_K, neon_axpy_f32>;
        t.of(DType::Q2_K) = {k_quant_dot<Q2KWeights>, k_quant_dot4<Q2KWeights>, nullptr, nullptr, axpy_q2_k,
                             k_quant_gather_dot<Q2KWeights>, axpys_one_by_one<axpy_q2_k>};
        t.of(DType::Q3_K) = {k_quant_dot<Q3KWeights>, k_quant_dot4<Q3KWeights>, nullptr, nullptr, axpy_q3_k,
                             k_quant_gather_dot<Q3KWeights>, axpys_one_by_one<axpy_q3_k>};
        constexpr auto axpy_q6_k = axpy_dequantised_blocks<DType::Q6_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_iq4_xs = axpy_dequantised_blocks<DType::IQ4_XS, kQK_K, neon_axpy_f32>;
        t.of(DType::Q4_K) = {k_quant_dot<Q4KWeights>, k_quant_dot4<Q4KWeights>, nullptr, nullptr, axpy_q4_k,
                             k_quant_gather_dot<Q4KWeights>, axpys_one_by_one<axpy_q4_k>};
        t.of(DType::Q5_K) = {k_quant_dot<Q5KWeights>, k_quant_dot4<Q5KWeights>, nullptr, nullptr, axpy_q5_k,
                             k_quant_gather_dot<Q5KWeights>, axpys_one_by_one<axpy_q5_k>};
        t.of(DType::Q6_K) = {k_quant_dot<Q6KWeights>, k_quant_dot4<Q6KWeights>, nullptr, nullptr, axpy_q6_k,
                             k_quant_gather_dot<Q6KWeights>, axpys_one_by_one<axpy_q6_k>};
        t.of(DType::IQ4_XS) = {k_quant_dot<IQ4XSWeights>, k_quant_dot4<IQ4XSWeights>, nullptr, nullptr, axpy_iq4_xs,
                               k_quant_gather_dot<IQ4XSWeights>, axpys_one_by_one<axpy_iq4_xs>};
        t.quantize_q8_0 = neon_quantize_q8_0;
        t.quantize_q8_1 = neon_quantize_q8_1;
        t.quantize_q8_k = neon_quantize_q8_k;
        t.dequantize_row = neon_dequantize_row;
        t.key_scores = neon_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
