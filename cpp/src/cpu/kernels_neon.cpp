// Arm64 level: AArch64 Advanced SIMD kernels (ARMv8.0 baseline only: no dotprod, i8mm or
// fp16 arithmetic; FCVTL half -> float conversion is baseline). dispatch.cpp always offers
// this level on AArch64. BF16 stays on the portable kernels.
//
// Batch invariance (kernels.h): the quantised dot4 kernels run, per token, exactly the
// arithmetic of the single dots; float products go through the four-row kernel at every batch
// size (its dot4 are four single dots, for completeness); a typed axpy dequantises as
// dequantize_row does and adds as axpy_f32 does.
// quantize_q8_0/q8_1 produce the same bytes as the reference (round half to even via FCVTNS,
// maxNum for max|x| as std::fmax, and the reference itself for the degenerate blocks where
// max|x| or 1/d is not finite).
#include <arm_neon.h>

#include <algorithm>
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

// Sum of products of 32 small signed bytes (|lo|, |hi| <= 15; lo = elements 0..15, hi =
// 16..31) with 32 signed bytes at b. Two products per int16 lane stay below 2 * 15 * 128.
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
// for Q4_1, the m * s term into off).
// Q4_0 against Q8_1: the 4-bit values stay unsigned and the -8 offset comes back as
// m s with m = -8 d, as for Q4_1 (kernels.h).
struct Q4_0Weights {
    using Act = BlockQ8_1;
    int8x16_t lo, hi;
    float32x4_t d;
    float m;
    explicit Q4_0Weights(const BlockQ4_0* blk) {
        uint8x16_t ulo, uhi;
        unpack_nibbles(blk->qs, &ulo, &uhi);
        lo = vreinterpretq_s8_u8(ulo);
        hi = vreinterpretq_s8_u8(uhi);
        d = half_dup(&blk->d);
        m = -8.0f * half_one(blk->d);
    }
    inline void step(float32x4_t& acc, float& off, const Act* b) const {
        const int32x4_t s = dot_small_i8(lo, hi, b->qs);
        acc = vfmaq_f32(acc, vcvtq_f32_s32(s), vmulq_f32(d, vld1q_dup_f32(&b->d)));
        off = std::fma(m, b->s, off);
    }
};

struct Q4_1Weights {
    using Act = BlockQ8_1;
    int8x16_t lo, hi;
    float32x4_t d;
    float m;
    explicit Q4_1Weights(const BlockQ4_1* blk) {
        uint8x16_t ulo, uhi;
        unpack_nibbles(blk->qs, &ulo, &uhi);
        lo = vreinterpretq_s8_u8(ulo);
        hi = vreinterpretq_s8_u8(uhi);
        d = half_dup(&blk->d);
        m = half_one(blk->m);
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

float neon_dot_q4_0(int64_t n, const void* w, const void* x) { return dot_quant<Q4_0Weights, BlockQ4_0>(n, w, x); }
float neon_dot_q4_1(int64_t n, const void* w, const void* x) { return dot_quant<Q4_1Weights, BlockQ4_1>(n, w, x); }
float neon_dot_q8_0(int64_t n, const void* w, const void* x) { return dot_quant<Q8_0Weights, BlockQ8_0>(n, w, x); }

void neon_dot4_q4_0(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<Q4_0Weights, BlockQ4_0>(n, w, x, stride, out);
}

void neon_dot4_q4_1(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<Q4_1Weights, BlockQ4_1>(n, w, x, stride, out);
}

void neon_dot4_q8_0(int64_t n, const void* w, const void* x, size_t stride, float* out) {
    dot4_quant<Q8_0Weights, BlockQ8_0>(n, w, x, stride, out);
}

// ---- activation quantisation --------------------------------------------------------------

// Quantises 32 floats as the reference does: d = max|x| / 127, q = round-half-even(x * 1/d).
// Returns false (writing nothing) for a block whose max|x| or 1/d is not finite (NaN input,
// or d so small that 1/d overflows); the caller then runs the reference on that block, so the
// bytes match the reference for every input.
SI_NEON_INLINE bool quantize_block(const float* x, int8_t* q, float* d_out, int* sum_out) {
    float32x4_t v[8];
    for (int k = 0; k < 8; ++k) v[k] = vld1q_f32(x + 4 * k);
    // maxNum ignores quiet NaNs as std::fmax does.
    const float32x4_t m01 = vmaxnmq_f32(vabsq_f32(v[0]), vabsq_f32(v[1]));
    const float32x4_t m23 = vmaxnmq_f32(vabsq_f32(v[2]), vabsq_f32(v[3]));
    const float32x4_t m45 = vmaxnmq_f32(vabsq_f32(v[4]), vabsq_f32(v[5]));
    const float32x4_t m67 = vmaxnmq_f32(vabsq_f32(v[6]), vabsq_f32(v[7]));
    const float amax = vmaxnmvq_f32(vmaxnmq_f32(vmaxnmq_f32(m01, m23), vmaxnmq_f32(m45, m67)));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!(amax <= FLT_MAX) || !(id <= FLT_MAX)) return false;
    const float32x4_t vid = vdupq_n_f32(id);
    int32x4_t i32[8];
    for (int k = 0; k < 8; ++k) i32[k] = vcvtnq_s32_f32(vmulq_f32(v[k], vid));  // ties to even
    const int16x8_t h0 = vqmovn_high_s32(vqmovn_s32(i32[0]), i32[1]);
    const int16x8_t h1 = vqmovn_high_s32(vqmovn_s32(i32[2]), i32[3]);
    const int16x8_t h2 = vqmovn_high_s32(vqmovn_s32(i32[4]), i32[5]);
    const int16x8_t h3 = vqmovn_high_s32(vqmovn_s32(i32[6]), i32[7]);
    vst1q_s8(q, vqmovn_high_s16(vqmovn_s16(h0), h1));
    vst1q_s8(q + 16, vqmovn_high_s16(vqmovn_s16(h2), h3));
    if (sum_out) *sum_out = vaddlvq_s16(vaddq_s16(vaddq_s16(h0, h1), vaddq_s16(h2, h3)));
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
        // rows one after another (not yet timed on an Arm machine).
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
        t.of(DType::Q5_0) = {scalar_dot_q5_0, scalar_dot4_q5_0, nullptr, nullptr, axpy_q5_0,
                             dots_one_by_one<scalar_dot_q5_0>, axpys_one_by_one<axpy_q5_0>};
        t.of(DType::Q5_1) = {scalar_dot_q5_1, scalar_dot4_q5_1, nullptr, nullptr, axpy_q5_1,
                             dots_one_by_one<scalar_dot_q5_1>, axpys_one_by_one<axpy_q5_1>};
        constexpr auto axpy_q4_k = axpy_dequantised_blocks<DType::Q4_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_q5_k = axpy_dequantised_blocks<DType::Q5_K, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_iq4_xs = axpy_dequantised_blocks<DType::IQ4_XS, kQK_K, neon_axpy_f32>;
        constexpr auto axpy_iq4_nl = axpy_dequantised_blocks<DType::IQ4_NL, kQK, neon_axpy_f32>;
        t.of(DType::Q5_K) = {scalar_dot_q5_k, scalar_dot4_q5_k, nullptr, nullptr, axpy_q5_k,
                             dots_one_by_one<scalar_dot_q5_k>, axpys_one_by_one<axpy_q5_k>};
        t.of(DType::IQ4_XS) = {scalar_dot_iq4_xs, scalar_dot4_iq4_xs, nullptr, nullptr, axpy_iq4_xs,
                               dots_one_by_one<scalar_dot_iq4_xs>, axpys_one_by_one<axpy_iq4_xs>};
        t.of(DType::IQ4_NL) = {scalar_dot_iq4_nl, scalar_dot4_iq4_nl, nullptr, nullptr, axpy_iq4_nl,
                               dots_one_by_one<scalar_dot_iq4_nl>, axpys_one_by_one<axpy_iq4_nl>};
        constexpr auto axpy_q6_k = axpy_dequantised_blocks<DType::Q6_K, kQK_K, neon_axpy_f32>;
        t.of(DType::Q4_K) = {scalar_dot_q4_k, scalar_dot4_q4_k, nullptr, nullptr, axpy_q4_k,
                             dots_one_by_one<scalar_dot_q4_k>, axpys_one_by_one<axpy_q4_k>};
        t.of(DType::Q6_K) = {scalar_dot_q6_k, scalar_dot4_q6_k, nullptr, nullptr, axpy_q6_k,
                             dots_one_by_one<scalar_dot_q6_k>, axpys_one_by_one<axpy_q6_k>};
        t.quantize_q8_0 = neon_quantize_q8_0;
        t.quantize_q8_1 = neon_quantize_q8_1;
        t.quantize_q8_k = scalar_quantize_q8_k;
        t.dequantize_row = neon_dequantize_row;
        t.key_scores = neon_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
