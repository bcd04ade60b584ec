// AVX2 + FMA + F16C kernels (x86-64 from Haswell / Zen 1 on). Compiled with those flags
// alone; dispatch.cpp only calls in here after checking the CPU supports them.
#include <immintrin.h>

#include <cstdint>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
#include "cpu/kernels_scalar.inc"
#include "cpu/kernels_avx2.inc"

}  // namespace

const KernelTable* kernels_avx2() {
    static const KernelTable table{
        "avx2",        avx2_dot_f32,       avx2_dot_f16,       avx2_dot_bf16,
        avx2_dot_q4_0, avx2_dot_q4_1,      avx2_dot_q8_0,      avx2_quantize_q8_0,
        avx2_quantize_q8_1, scalar_dequantize_row, avx2_dot_f32_f32, avx2_axpy_f32,
    };
    return &table;
}

}  // namespace si
