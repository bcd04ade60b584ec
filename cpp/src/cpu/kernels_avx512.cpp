// AVX-512 (F, BW, VL, DQ) kernels: the AVX2 kernels widened to 512 bits where that pays
// (sixteen floats per step). Compiled with those flags alone;
// dispatch.cpp only calls in here after checking the CPU and OS support them.
#include <immintrin.h>

#include <cfloat>
#include <cstdint>
#include <cstring>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"

inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

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
    // The quantised dots stay AVX2: two blocks per 512-bit step measured slower (the block
    // shuffles and per-block scales cost more than the wider multiply saves).
    static const KernelTable table = [] {
        KernelTable t = *kernels_avx2();
        t.isa = "avx512";
        t.dot_f32 = avx512_dot_f32;
        t.dot_f16 = avx512_dot_f16;
        t.axpy_f32 = avx512_axpy_f32;
        t.axpy_f16 = avx512_axpy_f16;
        return t;
    }();
    return &table;
}

}  // namespace si
