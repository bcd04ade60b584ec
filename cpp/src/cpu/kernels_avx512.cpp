// AVX-512 (F, BW, VL, DQ) kernels: the AVX2 kernels widened to 512 bits where that pays
// (two quantised blocks or sixteen floats per step). Compiled with those flags alone;
// dispatch.cpp only calls in here after checking the CPU and OS support them.
#include <immintrin.h>

#include <cfloat>
#include <cstdint>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"

// Two blocks' 16-byte nibble arrays -> 64 bytes: block 0's elements in bytes 0..31 and
// block 1's in 32..63, each in the Q4 element order.
inline __m512i unpack_nibbles_x2(const uint8_t* qs0, const uint8_t* qs1) {
    __m256i lo = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1)),
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0)));
    __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), _mm256_srli_epi16(lo, 4), 1);
    // both: [qs0 | qs1 | qs0>>4 | qs1>>4]; reorder 128-bit lanes to
    // [qs0 | qs0>>4 | qs1 | qs1>>4].
    both = _mm512_shuffle_i64x2(both, both, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_and_si512(both, _mm512_set1_epi8(0x0f));
}

inline __m512i dot_i8_i8_x2(__m512i a, __m512i b) {
    __m512i abs_a = _mm512_abs_epi8(a);
    // b with a's sign: negate where a < 0, zero where a == 0 (as _mm256_sign_epi8 does).
    __mmask64 negative = _mm512_movepi8_mask(a);
    __m512i signed_b = _mm512_mask_sub_epi8(b, negative, _mm512_setzero_si512(), b);
    __m512i pairs = _mm512_maddubs_epi16(abs_a, signed_b);
    return _mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
}

// Per-block scales for two blocks, broadcast to the matching 256-bit halves.
inline __m512 scales_x2(float s0, float s1) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(s0)), _mm256_set1_ps(s1), 1);
}

inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

// Q4_0 and Q4_1 against Q8_1 activations, two blocks a step: unsigned 4-bit values times
// signed bytes, plus the offset term m s (Q4_0's m is -8 d).
template <typename Block, bool kHasMin>
float avx512_dot_q4(int64_t n, const void* w, const void* x) {
    auto a = static_cast<const Block*>(w);
    auto b = static_cast<const BlockQ8_1*>(x);
    const int64_t nb = n / kQK;
    __m512 acc = _mm512_setzero_ps();
    float offsets = 0.0f;
    auto offset_scale = [&](int64_t i) {
        if constexpr (kHasMin) {
            return half_scalar(a[i].m);
        } else {
            return -8.0f * half_scalar(a[i].d);
        }
    };
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m512i qa = unpack_nibbles_x2(a[i].qs, a[i + 1].qs);
        __m512i qb = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i + 1].qs)), 1);
        __m512i pairs = _mm512_maddubs_epi16(qa, qb);
        __m512 prod = _mm512_cvtepi32_ps(_mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
        __m512 scale = scales_x2(half_scalar(a[i].d) * b[i].d, half_scalar(a[i + 1].d) * b[i + 1].d);
        acc = _mm512_fmadd_ps(scale, prod, acc);
        offsets += offset_scale(i) * b[i].s + offset_scale(i + 1) * b[i + 1].s;
    }
    float sum = hsum512(acc) + offsets;
    if (i < nb) {
        sum += kHasMin ? avx2_dot_q4_1(kQK, a + i, b + i) : avx2_dot_q4_0(kQK, a + i, b + i);
    }
    return sum;
}

float avx512_dot_q4_0(int64_t n, const void* w, const void* x) {
    return avx512_dot_q4<BlockQ4_0, false>(n, w, x);
}

float avx512_dot_q4_1(int64_t n, const void* w, const void* x) {
    return avx512_dot_q4<BlockQ4_1, true>(n, w, x);
}

float avx512_dot_q8_0(int64_t n, const void* w, const void* x) {
    auto a = static_cast<const BlockQ8_0*>(w);
    auto b = static_cast<const BlockQ8_0*>(x);
    const int64_t nb = n / kQK;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m512i qa = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i].qs))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i + 1].qs)), 1);
        __m512i qb = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i + 1].qs)), 1);
        __m512 prod = _mm512_cvtepi32_ps(dot_i8_i8_x2(qa, qb));
        __m512 scale = scales_x2(half_scalar(a[i].d) * half_scalar(b[i].d),
                                 half_scalar(a[i + 1].d) * half_scalar(b[i + 1].d));
        acc = _mm512_fmadd_ps(scale, prod, acc);
    }
    float sum = hsum512(acc);
    if (i < nb) sum += avx2_dot_q8_0(kQK, a + i, b + i);
    return sum;
}

float avx512_dot_f32(int64_t n, const void* w, const void* x) {
    auto a = static_cast<const float*>(w);
    auto b = static_cast<const float*>(x);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    }
    float sum = hsum512(_mm512_add_ps(acc0, acc1));
    if (i < n) sum += avx2_dot_f32(n - i, a + i, b + i);
    return sum;
}

float avx512_dot_f16(int64_t n, const void* w, const void* x) {
    auto a = static_cast<const uint16_t*>(w);
    auto b = static_cast<const float*>(x);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
        __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 16)));
        acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(b + i + 16), acc1);
    }
    float sum = hsum512(_mm512_add_ps(acc0, acc1));
    if (i < n) sum += avx2_dot_f16(n - i, a + i, b + i);
    return sum;
}

void avx512_axpy_f32(int64_t n, float a, const void* row, float* y) {
    auto x = static_cast<const float*>(row);
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    }
    if (i < n) avx2_axpy_f32(n - i, a, x + i, y + i);
}

void avx512_axpy_f16(int64_t n, float a, const void* row, float* y) {
    auto x = static_cast<const uint16_t*>(row);
    const __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 xf = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, xf, _mm512_loadu_ps(y + i)));
    }
    if (i < n) avx2_axpy_f16(n - i, a, x + i, y + i);
}

}  // namespace

const KernelTable* kernels_avx512() {
    // The AVX2 table (this CPU runs it too), with the kernels that pay for widening replaced.
    static const KernelTable table = [] {
        KernelTable t = *kernels_avx2();
        t.isa = "avx512";
        t.dot_f32 = avx512_dot_f32;
        t.dot_f16 = avx512_dot_f16;
        t.dot_q4_0 = avx512_dot_q4_0;
        t.dot_q4_1 = avx512_dot_q4_1;
        t.dot_q8_0 = avx512_dot_q8_0;
        t.axpy_f32 = avx512_axpy_f32;
        t.axpy_f16 = avx512_axpy_f16;
        return t;
    }();
    return &table;
}

}  // namespace si
