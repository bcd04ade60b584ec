// AVX2 + FMA + F16C kernels (x86-64 from Haswell / Zen 1 on). Compiled with those flags
// alone; dispatch.cpp only calls in here after checking the CPU supports them.
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
// Sixteen YMM registers: four quantised rows' even and odd accumulators, or four float rows'.
constexpr int kGatherGroup = 4;
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"

}  // namespace

const KernelTable* kernels_avx2() {
    static const KernelTable table = [] {
        KernelTable t{};
        t.isa = "avx2";
        t.dot_f32 = avx2_dot_f32;
        t.dot_f16 = avx2_dot_f16;
        t.dot_bf16 = avx2_dot_bf16;
        t.dot_q4_0 = avx2_dot_q4_0;
        t.dot_q4_1 = avx2_dot_q4_1;
        t.dot_q8_0 = avx2_dot_q8_0;
        t.dot4_f32 = four_dots<avx2_dot_f32>;
        t.dot4_f16 = four_dots<avx2_dot_f16>;
        t.dot4_bf16 = four_dots<avx2_dot_bf16>;
        t.dot4_q4_0 = avx2_dot4_q4_0;
        t.dot4_q4_1 = avx2_dot4_q4_1;
        t.dot4_q8_0 = avx2_dot4_q8_0;
        t.dot_q4_0x8 = avx2_dot_q4_0x8;
        t.dot_q4_1x8 = avx2_dot_q4_1x8;
        t.dot_q8_0x8 = avx2_dot_q8_0x8;
        t.dot4x4_f32 = avx2_dot4x4_f32;
        t.dot4x4_f16 = avx2_dot4x4_f16;
        t.quantize_q8_0 = avx2_quantize_q8_0;
        t.quantize_q8_1 = avx2_quantize_q8_1;
        t.dequantize_row = avx2_dequantize_row;
        t.axpy_f32 = avx2_axpy_f32;
        t.axpy_f16 = avx2_axpy_f16;
        t.axpy_bf16 = fused_axpy_bf16;
        t.axpy_q4_0 = avx2_axpy_q4_0;
        t.axpy_q4_1 = avx2_axpy_q4_1;
        t.axpy_q8_0 = avx2_axpy_q8_0;
        t.gather_dot_f32 = avx2_gather_dot_f32;
        t.gather_dot_f16 = avx2_gather_dot_f16;
        t.gather_dot_bf16 = dots_one_by_one<avx2_dot_bf16>;
        t.gather_dot_q4_0 = avx2_gather_dot_q4_0;
        t.gather_dot_q4_1 = avx2_gather_dot_q4_1;
        t.gather_dot_q8_0 = avx2_gather_dot_q8_0;
        t.gather_axpy_f32 = avx2_gather_axpy_f32;
        t.gather_axpy_f16 = avx2_gather_axpy_f16;
        t.gather_axpy_bf16 = axpys_one_by_one<fused_axpy_bf16>;
        t.gather_axpy_q4_0 = avx2_gather_axpy_q4_0;
        t.gather_axpy_q4_1 = avx2_gather_axpy_q4_1;
        t.gather_axpy_q8_0 = avx2_gather_axpy_q8_0;
        t.key_scores = avx2_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
