// The generic level: plain C++ that any CPU runs; the reference for every SIMD level.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
#include "cpu/kernels_scalar.inc"
}  // namespace

const KernelTable* kernels_generic() {
    static const KernelTable table = [] {
        KernelTable t{};
        t.isa = "generic";
        // Each type's row: {dot, dot4, rows8, rows4, axpy, gather_dot, gather_axpy}.
        t.of(DType::F32) = {scalar_dot_f32, scalar_dot4_f32, nullptr, nullptr, scalar_axpy_f32,
                            dots_one_by_one<scalar_dot_f32>, axpys_one_by_one<scalar_axpy_f32>};
        t.of(DType::F16) = {scalar_dot_f16, scalar_dot4_f16, nullptr, nullptr, scalar_axpy_f16,
                            dots_one_by_one<scalar_dot_f16>, axpys_one_by_one<scalar_axpy_f16>};
        t.of(DType::BF16) = {scalar_dot_bf16, scalar_dot4_bf16, nullptr, nullptr, scalar_axpy_bf16,
                             dots_one_by_one<scalar_dot_bf16>, axpys_one_by_one<scalar_axpy_bf16>};
        t.of(DType::Q4_0) = {scalar_dot_q4_0, scalar_dot4_q4_0, nullptr, nullptr, scalar_axpy_q4_0,
                             dots_one_by_one<scalar_dot_q4_0>, axpys_one_by_one<scalar_axpy_q4_0>};
        t.of(DType::Q4_1) = {scalar_dot_q4_1, scalar_dot4_q4_1, nullptr, nullptr, scalar_axpy_q4_1,
                             dots_one_by_one<scalar_dot_q4_1>, axpys_one_by_one<scalar_axpy_q4_1>};
        t.of(DType::Q8_0) = {scalar_dot_q8_0, scalar_dot4_q8_0, nullptr, nullptr, scalar_axpy_q8_0,
                             dots_one_by_one<scalar_dot_q8_0>, axpys_one_by_one<scalar_axpy_q8_0>};
        t.of(DType::Q5_0) = {scalar_dot_q5_0, scalar_dot4_q5_0, nullptr, nullptr, scalar_axpy_q5_0,
                             dots_one_by_one<scalar_dot_q5_0>, axpys_one_by_one<scalar_axpy_q5_0>};
        t.of(DType::Q5_1) = {scalar_dot_q5_1, scalar_dot4_q5_1, nullptr, nullptr, scalar_axpy_q5_1,
                             dots_one_by_one<scalar_dot_q5_1>, axpys_one_by_one<scalar_axpy_q5_1>};
        t.of(DType::Q4_K) = {scalar_dot_q4_k, scalar_dot4_q4_k, nullptr, nullptr, scalar_axpy_q4_k,
                             dots_one_by_one<scalar_dot_q4_k>, axpys_one_by_one<scalar_axpy_q4_k>};
        t.of(DType::Q2_K) = {scalar_dot_q2_k, scalar_dot4_q2_k, nullptr, nullptr, scalar_axpy_q2_k,
                             dots_one_by_one<scalar_dot_q2_k>, axpys_one_by_one<scalar_axpy_q2_k>};
        t.of(DType::Q3_K) = {scalar_dot_q3_k, scalar_dot4_q3_k, nullptr, nullptr, scalar_axpy_q3_k,
                             dots_one_by_one<scalar_dot_q3_k>, axpys_one_by_one<scalar_axpy_q3_k>};
        t.of(DType::Q5_K) = {scalar_dot_q5_k, scalar_dot4_q5_k, nullptr, nullptr, scalar_axpy_q5_k,
                             dots_one_by_one<scalar_dot_q5_k>, axpys_one_by_one<scalar_axpy_q5_k>};
        t.of(DType::IQ4_XS) = {scalar_dot_iq4_xs, scalar_dot4_iq4_xs, nullptr, nullptr, scalar_axpy_iq4_xs,
                               dots_one_by_one<scalar_dot_iq4_xs>, axpys_one_by_one<scalar_axpy_iq4_xs>};
        t.of(DType::IQ4_NL) = {scalar_dot_iq4_nl, scalar_dot4_iq4_nl, nullptr, nullptr, scalar_axpy_iq4_nl,
                               dots_one_by_one<scalar_dot_iq4_nl>, axpys_one_by_one<scalar_axpy_iq4_nl>};
        t.of(DType::Q6_K) = {scalar_dot_q6_k, scalar_dot4_q6_k, nullptr, nullptr, scalar_axpy_q6_k,
                             dots_one_by_one<scalar_dot_q6_k>, axpys_one_by_one<scalar_axpy_q6_k>};
        t.quantize_q8_0 = scalar_quantize_q8_0;
        t.quantize_q8_1 = scalar_quantize_q8_1;
        t.quantize_q8_k = scalar_quantize_q8_k;
        t.dequantize_row = scalar_dequantize_row;
        t.key_scores = scalar_key_scores;
        return t;
    }();
    return &table;
}

}  // namespace si
