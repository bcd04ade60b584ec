// A 2-D weight as the kernels and the GPU upload read it: typed rows inside a file mapping or
// a copy made at load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/dtype.h"

namespace si {

// `rows` rows of `cols` elements, each row `row_bytes` long and `stride` bytes after the one
// before (row_bytes in the mapping; more where rows of several matrices are bundled,
// model/weights.h).
struct Matrix {
    DType type = DType::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    size_t row_bytes = 0;
    size_t stride = 0;
    const uint8_t* data = nullptr;
    // The same rows interleaved eight at a time (BlockQ4_0x8 / Q4_1x8 / Q8_0x8,
    // cpu/kernels.h) for the CPU's matrix products, where the kernels have a product for
    // them; null otherwise. `data` stays valid (row gathers, the GPU upload).
    const uint8_t* interleaved = nullptr;
    std::string name;  // the tensor it was bound from, for messages

    const void* row(int64_t i) const { return data + static_cast<size_t>(i) * stride; }
};

// Rows [first, first + count) of m as a matrix of their own over the same storage (the parts
// of a fused tensor: Falcon's attn_qkv), before any interleaved copy exists.
inline Matrix row_range(const Matrix& m, int64_t first, int64_t count, const std::string& name) {
    Matrix part = m;
    part.rows = count;
    part.data = m.data + static_cast<size_t>(first) * m.stride;
    part.interleaved = nullptr;
    part.name = name;
    return part;
}

}  // namespace si
