// Weight types and their block layouts, exactly as GGUF stores them (ggml's type ids).
#pragma once

#include <cstddef>
#include <cstdint>

namespace si {

// ggml type ids (the u32 stored in each GGUF tensor info).
enum class DType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
    Q8_1 = 9,  // activations only: never a weight type here
    BF16 = 30,
};

constexpr int kQK = 32;  // elements per block in every quantised type here

// Q4_0: 32 weights = d * (q - 8), q in 0..15; byte j holds element j (low nibble) and
// element j + 16 (high nibble).
struct BlockQ4_0 {
    uint16_t d;  // IEEE half
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 block layout");

// Q4_1: 32 weights = d * q + m, q in 0..15, nibbles as in Q4_0.
struct BlockQ4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 block layout");

// Q8_0: 32 weights = d * q, q in -127..127.
struct BlockQ8_0 {
    uint16_t d;
    int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 block layout");

// Q8_1 (activations for Q4_1 dots): Q8_0 plus s = d * sum(q), which carries Q4_1's offset m.
struct BlockQ8_1 {
    float d;
    float s;
    int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_1) == 40, "Q8_1 block layout");

struct DTypeInfo {
    const char* name;
    int64_t block_elems;  // elements per block (1 for plain floats)
    size_t block_bytes;   // bytes per block
};

// nullptr for a type id this engine does not implement.
const DTypeInfo* dtype_info(uint32_t ggml_type);
const char* dtype_name(uint32_t ggml_type);  // "type 42" style for unknown ids

// Bytes of a row of n elements; false if n is not a whole number of blocks or on overflow.
bool row_bytes(DType type, int64_t n, uint64_t* bytes);

// IEEE half and bfloat16 conversions (scalar, exact, portable).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
float bf16_to_fp32(uint16_t h);

// Reference (scalar) dequantisation of n elements; n a multiple of the block size.
void dequantize_row_ref(DType type, const void* src, float* dst, int64_t n);
// Reference quantisation of activations: n a multiple of 32.
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* dst, int64_t n);
void quantize_row_q8_1_ref(const float* x, BlockQ8_1* dst, int64_t n);

}  // namespace si
