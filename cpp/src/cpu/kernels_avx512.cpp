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
// Gathered quantised rows' accumulators kept in registers at a time (AVX2 code: four
// measured faster than eight, which spills).
constexpr int kGatherGroup = 16;
// Gathered float rows' even and odd accumulators in registers at a time (thirty-two ZMM).
constexpr int kFloatGatherGroup = 8;
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"
#include "cpu/kernels_avx2_kquants.inc"

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
    in_groups<kFloatGatherGroup>(n_rows, [&](int first, auto group) {
        avx512_f32_dots<decltype(group)::value>(n, rows + first, static_cast<const float*>(x), out + first);
    });
}

void avx512_gather_dot_f16(int64_t n, const void* const* rows, int n_rows, const void* x, float* out) {
    in_groups<kFloatGatherGroup>(n_rows, [&](int first, auto group) {
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
        unrolled([&](auto r) { yv = _mm512_fmadd_ps(va[r], Widen16(x[r] + i), yv); },
                 std::make_index_sequence<kRows>{});
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

// Block i of a Q4_0, Q4_1 or Q8_0 row as two vectors of 16 floats, scale q + offset rounded
// once: the values of the AVX2 block_values (dequantize_row at this level). The 4-bit types
// look their sixteen possible values up (a table made with the same multiply-add per block).
template <DType kType>
inline void block_values16(const void* blocks, int64_t i, __m512 v[2]) {
    if constexpr (kType == DType::Q8_0) {
        const BlockBytes b = block_bytes<kType>(blocks, i);
        const __m512 vs = _mm512_set1_ps(b.scale), vo = _mm512_set1_ps(b.offset);
        v[0] = _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b.q))), vo);
        v[1] = _mm512_fmadd_ps(vs, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b.q, 1))), vo);
    } else {
        using Block = std::conditional_t<kType == DType::Q4_0, BlockQ4_0, BlockQ4_1>;
        const Block& b = static_cast<const Block*>(blocks)[i];
        // Q4_0's values are d (k - 8), Q4_1's d k + m, for the nibble k.
        const __m512 levels = kType == DType::Q4_0
            ? _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
            : _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        float offset = 0.0f;
        if constexpr (kType == DType::Q4_1) offset = half_scalar(b.m);
        const __m512 table = _mm512_fmadd_ps(_mm512_set1_ps(half_scalar(b.d)), levels, _mm512_set1_ps(offset));
        const __m512i nibbles = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
        v[0] = _mm512_permutexvar_ps(_mm512_and_si512(nibbles, _mm512_set1_epi32(15)), table);
        v[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(nibbles, 4), table);
    }
}

// kRows Q4_0, Q4_1 or Q8_0 rows at any addresses added into y, sixteen values per step: per
// element the values of block_values16 and the multiply-add of axpy_f32, row after row, so
// that a typed row added here equals the row dequantised and added by axpy_f32 (kernels.h).
template <DType kType, int kRows>
void avx512_axpys_blocks(int64_t n, const float* a, const void* const* rows, float* y) {
    __m512 va[kRows];
    unrolled([&](auto r) { va[r] = _mm512_set1_ps(a[r]); }, std::make_index_sequence<kRows>{});
    for (int64_t i = 0; i < n / kQK; ++i, y += kQK) {
        __m512 acc0 = _mm512_loadu_ps(y), acc1 = _mm512_loadu_ps(y + 16);
        unrolled([&](auto r) {
            __m512 v[2];
            block_values16<kType>(rows[r], i, v);
            acc0 = _mm512_fmadd_ps(va[r], v[0], acc0);
            acc1 = _mm512_fmadd_ps(va[r], v[1], acc1);
        }, std::make_index_sequence<kRows>{});
        _mm512_storeu_ps(y, acc0);
        _mm512_storeu_ps(y + 16, acc1);
    }
}

// Rows to floats (a batch's down projection): the values the typed axpys add.
void avx512_dequantize_row(DType type, const void* src, float* dst, int64_t n) {
    auto blocks = [&](auto type_constant) {
        for (int64_t i = 0; i < n / kQK; ++i) {
            __m512 v[2];
            block_values16<decltype(type_constant)::value>(src, i, v);
            _mm512_storeu_ps(dst + i * kQK, v[0]);
            _mm512_storeu_ps(dst + i * kQK + 16, v[1]);
        }
    };
    switch (type) {
        case DType::Q4_0: return blocks(std::integral_constant<DType, DType::Q4_0>{});
        case DType::Q4_1: return blocks(std::integral_constant<DType, DType::Q4_1>{});
        case DType::Q8_0: return blocks(std::integral_constant<DType, DType::Q8_0>{});
        default: return avx2_dequantize_row(type, src, dst, n);
    }
}

template <DType kType>
void avx512_axpy_blocks(int64_t n, float a, const void* row, float* y) {
    avx512_axpys_blocks<kType, 1>(n, &a, &row, y);
}

template <DType kType>
void avx512_gather_axpy_blocks(int64_t n, const float* a, const void* const* rows, int n_rows, float* y) {
    in_groups<kMaxGatherRows>(n_rows, [&](int first, auto group) {
        avx512_axpys_blocks<kType, decltype(group)::value>(n, a + first, rows + first, y);
    });
}

// Attention scores (kernels.h, KeyScoresFn): per block of sixteen keys one vector per head,
// a multiply-add per dimension.
template <int kHeads>
void avx512_key_scores_heads(int64_t head_dim, int64_t n_keys, const uint16_t* key_blocks, const float* q,
                             size_t q_stride, float* scores, size_t score_stride) {
    static_assert(kKeyBlock == 16, "one vector of sixteen lanes per block");
    for (int64_t b = 0; b * kKeyBlock < n_keys; ++b) {
        const uint16_t* block = key_blocks + b * head_dim * kKeyBlock;
        __m512 acc[kHeads];
        unrolled([&](auto g) { acc[g] = _mm512_setzero_ps(); }, std::make_index_sequence<kHeads>{});
        for (int64_t d = 0; d < head_dim; ++d) {
            const __m512 k = load16_f16(block + d * kKeyBlock);
            unrolled([&](auto g) { acc[g] = _mm512_fmadd_ps(k, _mm512_set1_ps(q[g * q_stride + d]), acc[g]); },
                     std::make_index_sequence<kHeads>{});
        }
        unrolled([&](auto g) { _mm512_storeu_ps(scores + g * score_stride + b * kKeyBlock, acc[g]); },
                 std::make_index_sequence<kHeads>{});
    }
}

void avx512_key_scores(int64_t head_dim, int64_t n_keys, const uint16_t* key_blocks, const float* q,
                       size_t q_stride, int n_heads, float* scores, size_t score_stride) {
    in_groups<8>(n_heads, [&](int first, auto heads) {
        avx512_key_scores_heads<decltype(heads)::value>(head_dim, n_keys, key_blocks, q + first * q_stride, q_stride,
                                                         scores + first * score_stride, score_stride);
    });
}

}  // namespace

const KernelTable* kernels_avx512() {
    // The AVX2 table (this CPU runs it too), with the kernels that pay for widening replaced.
    // The quantised dots stay AVX2: two blocks per 512-bit step measured slower (the block
    // shuffles and per-block scales cost more than the wider multiply saves); the quantised
    // axpys and row conversions are this level's (a gathered Q4_0 axpy: 2.6 -> 1.7 ns per
    // block and row, Zen 4, with the 4-bit values looked up in a per-block table). Batched float
    // products go through the four-row kernels (a one-row four-token kernel waited on loading
    // the activations); the four-token float dots are four of this level's single dots.
    static const KernelTable table = [] {
        KernelTable t = *kernels_avx2();
        t.isa = "avx512";
        for (DType type : {DType::F32, DType::F16}) {
            TypeKernels& k = t.of(type);
            const bool f32 = type == DType::F32;
            k.dot = f32 ? avx512_dot_f32 : avx512_dot_f16;
            k.dot4 = f32 ? four_dots<avx512_dot_f32> : four_dots<avx512_dot_f16>;
            k.rows4 = f32 ? avx512_dot4x4_f32 : avx512_dot4x4_f16;
            k.axpy = f32 ? avx512_axpy_f32 : avx512_axpy_f16;
            k.gather_dot = f32 ? avx512_gather_dot_f32 : avx512_gather_dot_f16;
            k.gather_axpy = f32 ? avx512_gather_axpy_f32 : avx512_gather_axpy_f16;
        }
        t.of(DType::Q4_0).gather_dot = avx2_gather_dot_q4_0;  // this file's copies: eight rows at a time
        t.of(DType::Q4_1).gather_dot = avx2_gather_dot_q4_1;
        t.of(DType::Q8_0).gather_dot = avx2_gather_dot_q8_0;
        t.of(DType::Q5_0).gather_dot = avx2_gather_dot_q5_0;
        t.of(DType::Q5_1).gather_dot = avx2_gather_dot_q5_1;
        set_k_quant_rows<avx512_axpy_f32, avx512_dequantize_row>(t);  // the K-quants, IQ4_XS, IQ4_NL, quantize_q8_k
        t.of(DType::Q4_0).axpy = avx512_axpy_blocks<DType::Q4_0>;
        t.of(DType::Q4_1).axpy = avx512_axpy_blocks<DType::Q4_1>;
        t.of(DType::Q8_0).axpy = avx512_axpy_blocks<DType::Q8_0>;
        t.of(DType::Q4_0).gather_axpy = avx512_gather_axpy_blocks<DType::Q4_0>;
        t.of(DType::Q4_1).gather_axpy = avx512_gather_axpy_blocks<DType::Q4_1>;
        t.of(DType::Q8_0).gather_axpy = avx512_gather_axpy_blocks<DType::Q8_0>;
        t.dequantize_row = avx512_dequantize_row;
        t.key_scores = avx512_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
