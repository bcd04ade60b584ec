// The generic level: plain C++ that any CPU runs; the reference for every SIMD level.
#include <cstdint>

#include "cpu/kernels.h"
#include "tensor/dtype.h"

namespace si {
namespace {
#include "cpu/kernels_scalar.inc"
}  // namespace

const KernelTable* kernels_generic() {
    static const KernelTable table{
        "generic",         scalar_dot_f32,       scalar_dot_f16,       scalar_dot_bf16,
        scalar_dot_q4_0,   scalar_dot_q4_1,      scalar_dot_q8_0,      scalar_quantize_q8_0,
        scalar_quantize_q8_1, scalar_dequantize_row, scalar_dot_f32_f32, scalar_axpy_f32,
    };
    return &table;
}

}  // namespace si
