// AVX-512 (F, BW, VL, DQ) kernels: the AVX2 kernels widened to 512 bits where that pays
// (sixteen floats per step). Compiled with those flags alone;
// dispatch.cpp only calls in here after checking the CPU and OS support them.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
// Thirty-two vector registers: eight gathered rows' even and odd accumulators at a time.
constexpr int kGatherGroup = 8;
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"

inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

inline __m512 load16_f32(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// kRows float rows at any addresses against one F32 activation: per row two accumulators
// (even and odd steps of sixteen), with F32's last odd sixteen into the first, and the tail
// in the AVX2 single dot. The single dots are its one-row case, so a gathered row gives what
// the row gives alone.
template <typename Weight, __m512 (*Widen16)(const Weight*), float (*TailDot)(int64_t, const void*, const void*),
          bool kLastSixteen, int kRows>
void avx512_float_dots(int64_t n, const void* const* rows, const float* b, float* out) {
    const Weight* a[kRows];
    __m512 acc0[kRows], acc1[kRows];
    unrolled([&](auto r) {
        a[r] = static_cast<const Weight*>(rows[r]);
        acc0[r] = acc1[r] = _mm512_setzero_ps();
    }, std::make_index_sequence<kRows>{});
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 x0 = _mm512_loadu_ps(b + i), x1 = _mm512_loadu_ps(b + i + 16);
        unrolled([&](auto r) {
            acc0[r] = _mm512_fmadd_ps(Widen16(a[r] + i), x0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(Widen16(a[r] + i + 16), x1, acc1[r]);
        }, std::make_index_sequence<kRows>{});
    }
    if constexpr (kLastSixteen) {
        for (; i + 16 <= n; i += 16) {
            const __m512 x0 = _mm512_loadu_ps(b + i);
            unrolled([&](auto r) { acc0[r] = _mm512_fmadd_ps(Widen16(a[r] + i), x0, acc0[r]); },
                     std::make_index_sequence<kRows>{});
        }
    }
    unrolled([&](auto r) {
        float sum = hsum512(_mm512_add_ps(acc0[r], acc1[r]));
        if (i < n) sum += TailDot(n - i, a[r] + i, b + i);
        out[r] = sum;
    }, std::make_index_sequence<kRows>{});
}

template <int kRows>
void avx512_f32_dots(int64_t n, const void* const* rows, const float* b, float* out) {
    avx512_float_dots<float, load16_f32, avx2_dot_f32, true, kRows>(n, rows, b, out);
}

template <int kRows>
void avx512_f16_dots(int64_t n, const void* const* rows, const float* b, float* out) {
    avx512_float_dots<uint16_t, load16_f16, avx2_dot_f16, false, kRows>(n, rows, b, out);
}

float avx512_dot_f32(int64_t n, const void* w, const void* x) {
    float out;
    avx512_f32_dots<1>(n, &w, static_cast<const float*>(x), &out);
    return out;
}

float avx512_dot_f16(int64_t n, const void* w, const void* x) {
    float out;
    avx512_f16_dots<1>(n, &w, static_cast<const float*>(x), &out);
    return out;
}

void avx512_gather_dot_f32(int64_t n, const void* const* rows, int n_rows, const void* x, float* out) {
    in_groups<kGatherGroup>(n_rows, [&](int first, auto group) {
        avx512_f32_dots<decltype(group)::value>(n, rows + first, static_cast<const float*>(x), out + first);
    });
}

void avx512_gather_dot_f16(int64_t n, const void* const* rows, int n_rows, const void* x, float* out) {
    in_groups<kGatherGroup>(n_rows, [&](int first, auto group) {
        avx512_f16_dots<decltype(group)::value>(n, rows + first, static_cast<const float*>(x), out + first);
    });
}

inline __m512 load16_f32_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16_f16_masked(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// kRows rows x kTokens tokens, sixteen columns per step: each activation vector is loaded
// once for all rows, each row's vector once for all tokens; the tail under a mask.
template <typename Weight, __m512 (*Widen16)(const Weight*), __m512 (*Widen16Masked)(const Weight*, __mmask16),
          int kRows, int kTokens>
void avx512_rows4_floats(int64_t n, const uint8_t* rows, size_t row_bytes, const uint8_t* x, size_t stride,
                         float* y, int64_t y_stride) {
    const Weight* w[kRows];
    const float* a[kTokens];
    for (int r = 0; r < kRows; ++r) w[r] = reinterpret_cast<const Weight*>(rows + r * row_bytes);
    for (int t = 0; t < kTokens; ++t) a[t] = reinterpret_cast<const float*>(x + t * stride);
    __m512 acc[kRows * kTokens];
    unrolled([&](auto k) { acc[k] = _mm512_setzero_ps(); }, std::make_index_sequence<kRows * kTokens>{});
    auto step = [&](int64_t i, auto load_w, auto load_x) {
        __m512 xv[kTokens];
        unrolled([&](auto t) { xv[t] = load_x(a[t] + i); }, std::make_index_sequence<kTokens>{});
        unrolled([&](auto r) {
            const __m512 wv = load_w(w[r] + i);
            unrolled([&](auto t) { acc[r * kTokens + t] = _mm512_fmadd_ps(wv, xv[t], acc[r * kTokens + t]); },
                     std::make_index_sequence<kTokens>{});
        }, std::make_index_sequence<kRows>{});
    };
    int64_t i = 0;
    // Lambdas, not the function pointers themselves, so that the loads inline.
    auto load_w = [](const Weight* p) { return Widen16(p); };
    auto load_x = [](const float* p) { return load16_f32(p); };
    for (; i + 16 <= n; i += 16) step(i, load_w, load_x);
    if (i < n) {
        const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
        step(i, [m](const Weight* p) { return Widen16Masked(p, m); },
             [m](const float* p) { return load16_f32_masked(p, m); });
    }
    unrolled([&](auto k) { y[(k % kTokens) * y_stride + k / kTokens] = hsum512(acc[k]); },
             std::make_index_sequence<kRows * kTokens>{});
}

template <typename Weight, __m512 (*Widen16)(const Weight*), __m512 (*Widen16Masked)(const Weight*, __mmask16)>
void avx512_rows4(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                  int n_tokens, float* y, int64_t y_stride) {
    // The shapes a product meets: four rows (or a matrix's last few) by four tokens (or a
    // batch's last few).
    with_shape<4, 4>(n_rows, n_tokens, [&](auto r, auto t) {
        avx512_rows4_floats<Weight, Widen16, Widen16Masked, decltype(r)::value, decltype(t)::value>(
            n, static_cast<const uint8_t*>(rows), row_bytes, static_cast<const uint8_t*>(x), stride, y, y_stride);
    });
}

void avx512_dot4x4_f32(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                       int n_tokens, float* y, int64_t y_stride) {
    avx512_rows4<float, load16_f32, load16_f32_masked>(n, rows, row_bytes, n_rows, x, stride, n_tokens, y, y_stride);
}

void avx512_dot4x4_f16(int64_t n, const void* rows, size_t row_bytes, int n_rows, const void* x, size_t stride,
                       int n_tokens, float* y, int64_t y_stride) {
    avx512_rows4<uint16_t, load16_f16, load16_f16_masked>(n, rows, row_bytes, n_rows, x, stride, n_tokens, y,
                                                          y_stride);
}


// kRows float rows at any addresses added into y: sixteen columns per step, each element's
// multiply-adds row after row, the tail through the AVX2 axpy row after row, as successive
// avx512_axpy_f32 / f16 calls (their one-row case) add them.
template <typename Weight, __m512 (*Widen16)(const Weight*), void (*TailAxpy)(int64_t, float, const void*, float*),
          int kRows>
void avx512_float_axpys(int64_t n, const float* a, const void* const* rows, float* y) {
    const Weight* x[kRows];
    __m512 va[kRows];
    unrolled([&](auto r) {
        x[r] = static_cast<const Weight*>(rows[r]);
        va[r] = _mm512_set1_ps(a[r]);
    }, std::make_index_sequence<kRows>{});
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 yv = _mm512_loadu_ps(y + i);
        unrolled([&](auto r) { yv = _mm512_fmadd_ps(va[r], Widen16(x[r] + i), yv); }, std::make_index_sequence<kRows>{});
        _mm512_storeu_ps(y + i, yv);
    }
    if (i < n) {
        unrolled([&](auto r) { TailAxpy(n - i, a[r], x[r] + i, y + i); }, std::make_index_sequence<kRows>{});
    }
}

void avx512_axpy_f32(int64_t n, float a, const void* row, float* y) {
    avx512_float_axpys<float, load16_f32, avx2_axpy_f32, 1>(n, &a, &row, y);
}

void avx512_axpy_f16(int64_t n, float a, const void* row, float* y) {
    avx512_float_axpys<uint16_t, load16_f16, avx2_axpy_f16, 1>(n, &a, &row, y);
}

// Sixteen rows' broadcast factors and the running sum fit the register file at once.
void avx512_gather_axpy_f32(int64_t n, const float* a, const void* const* rows, int n_rows, float* y) {
    in_groups<kMaxGatherRows>(n_rows, [&](int first, auto group) {
        avx512_float_axpys<float, load16_f32, avx2_axpy_f32, decltype(group)::value>(n, a + first, rows + first, y);
    });
}

void avx512_gather_axpy_f16(int64_t n, const float* a, const void* const* rows, int n_rows, float* y) {
    in_groups<kMaxGatherRows>(n_rows, [&](int first, auto group) {
        avx512_float_axpys<uint16_t, load16_f16, avx2_axpy_f16, decltype(group)::value>(n, a + first, rows + first,
                                                                                     y);
    });
}

}  // namespace

const KernelTable* kernels_avx512() {
    // The AVX2 table (this CPU runs it too), with the kernels that pay for widening replaced.
    // The quantised dots stay AVX2: two blocks per 512-bit step measured slower (the block
    // shuffles and per-block scales cost more than the wider multiply saves). Batched float
    // products go through the four-row kernels (a one-row four-token kernel waited on loading
    // the activations); the four-token float dots are four of this level's single dots.
    static const KernelTable table = [] {
        KernelTable t = *kernels_avx2();
        t.isa = "avx512";
        t.dot_f32 = avx512_dot_f32;
        t.dot_f16 = avx512_dot_f16;
        t.dot4_f32 = four_dots<avx512_dot_f32>;
        t.dot4_f16 = four_dots<avx512_dot_f16>;
        t.dot4x4_f32 = avx512_dot4x4_f32;
        t.dot4x4_f16 = avx512_dot4x4_f16;
        t.axpy_f32 = avx512_axpy_f32;
        t.axpy_f16 = avx512_axpy_f16;
        t.gather_dot_f32 = avx512_gather_dot_f32;
        t.gather_dot_f16 = avx512_gather_dot_f16;
        t.gather_dot_q4_0 = avx2_gather_dot_q4_0;  // this file's copies: eight rows at a time
        t.gather_dot_q4_1 = avx2_gather_dot_q4_1;
        t.gather_dot_q8_0 = avx2_gather_dot_q8_0;
        t.gather_axpy_f32 = avx512_gather_axpy_f32;
        t.gather_axpy_f16 = avx512_gather_axpy_f16;
        t.gather_axpy_q4_0 = avx2_gather_axpy_q4_0;
        t.gather_axpy_q4_1 = avx2_gather_axpy_q4_1;
        t.gather_axpy_q8_0 = avx2_gather_axpy_q8_0;
        return t;
    }();
    return &table;
}

}  // namespace si
