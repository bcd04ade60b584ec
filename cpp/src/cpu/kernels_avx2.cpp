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
#include "cpu/kernels_avx2_kquants.inc"

}  // namespace

const KernelTable* kernels_avx2() {
    static const KernelTable table = [] {
        KernelTable t{};
        t.isa = "avx2";
        // Each type's row: {dot, dot4, rows8, rows4, axpy, gather_dot, gather_axpy}.
        t.of(DType::F32) = {avx2_dot_f32, four_dots<avx2_dot_f32>, nullptr, avx2_dot4x4_f32, avx2_axpy_f32,
                            avx2_gather_dot_f32, avx2_gather_axpy_f32};
        t.of(DType::F16) = {avx2_dot_f16, four_dots<avx2_dot_f16>, nullptr, avx2_dot4x4_f16, avx2_axpy_f16,
                            avx2_gather_dot_f16, avx2_gather_axpy_f16};
        t.of(DType::BF16) = {avx2_dot_bf16, four_dots<avx2_dot_bf16>, nullptr, nullptr, fused_axpy_bf16,
                             dots_one_by_one<avx2_dot_bf16>, axpys_one_by_one<fused_axpy_bf16>};
        t.of(DType::Q4_0) = {avx2_dot_q4_0, avx2_dot4_q4_0, avx2_dot_q4_0x8, nullptr, avx2_axpy_q4_0,
                             avx2_gather_dot_q4_0, avx2_gather_axpy_q4_0};
        t.of(DType::Q4_1) = {avx2_dot_q4_1, avx2_dot4_q4_1, avx2_dot_q4_1x8, nullptr, avx2_axpy_q4_1,
                             avx2_gather_dot_q4_1, avx2_gather_axpy_q4_1};
        t.of(DType::Q8_0) = {avx2_dot_q8_0, avx2_dot4_q8_0, avx2_dot_q8_0x8, nullptr, avx2_axpy_q8_0,
                             avx2_gather_dot_q8_0, avx2_gather_axpy_q8_0};
        t.of(DType::Q5_0) = {avx2_dot_q5_0, avx2_dot4_q5_0, avx2_dot_q5_0x8, nullptr, avx2_axpy_q5_0,
                             avx2_gather_dot_q5_0, avx2_gather_axpy_q5_0};
        t.of(DType::Q5_1) = {avx2_dot_q5_1, avx2_dot4_q5_1, avx2_dot_q5_1x8, nullptr, avx2_axpy_q5_1,
                             avx2_gather_dot_q5_1, avx2_gather_axpy_q5_1};
        set_k_quant_rows<avx2_axpy_f32, avx2_dequantize_row>(t);  // the K-quants, IQ4_XS, IQ4_NL, quantize_q8_k
        t.quantize_q8_0 = avx2_quantize_q8_0;
        t.quantize_q8_1 = avx2_quantize_q8_1;
        t.dequantize_row = avx2_dequantize_row;
        t.key_scores = avx2_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
