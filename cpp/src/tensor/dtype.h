// Weight types and their block layouts, exactly as GGUF stores them (ggml's type ids).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace si {

// ggml type ids (the u32 stored in each GGUF tensor info).
enum class DType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,    // PowerInfer's Q4_0 files keep output.weight in it
    IQ4_NL = 20,
    IQ4_XS = 23,
    Q8_0 = 8,
    Q8_1 = 9,   // activations only: never a weight type here
    Q8_K = 15,  // activations only (the K-quants' dot format)
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

// Q5_0: 32 weights = d * (q - 16), q in 0..31: low 4 bits as in Q4_0, bit 4 of element j
// in bit j of qh (little-endian u32).
struct BlockQ5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block layout");

// Q5_1: 32 weights = d * q + m, q in 0..31, bits as in Q5_0.
struct BlockQ5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block layout");

// Q6_K: 256 weights in 16 groups of 16, each with an int8 scale: w = d * scale * (q - 32),
// q 6 bits: low 4 in ql, high 2 in qh (layout in dequantize_row_ref).
constexpr int kQK_K = 256;
struct BlockQ6_K {
    uint8_t ql[kQK_K / 2];
    uint8_t qh[kQK_K / 4];
    int8_t scales[kQK_K / 16];
    uint16_t d;
};
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K block layout");

// Q8_K (activations for the K-quants' dots): 256 values = d * q, q in -127..127, with the
// sums of q over each 16 (bsums), which carry the K-quants' offsets and minimums.
struct BlockQ8_K {
    float d;
    int8_t qs[kQK_K];
    int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K block layout");

// The K-quants below keep 256 weights in sub-blocks with their own scales (and mins), the
// scales themselves quantised against the block's d (and dmin). Layouts: ggml's
// ggml-common.h; the arithmetic: its reference dequantisation (dtype.cpp).

// Q2_K: 16 groups of 16, w = d * (scale & 15) * q - dmin * (scale >> 4), q 2 bits.
struct BlockQ2_K {
    uint8_t scales[kQK_K / 16];
    uint8_t qs[kQK_K / 4];
    uint16_t d;
    uint16_t dmin;
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K block layout");

// Q3_K: 16 groups of 16, w = d * (scale - 32) * (q - 4), q 3 bits: 2 in qs, the third in
// hmask (set: no -4); the 6-bit scales packed in 12 bytes.
struct BlockQ3_K {
    uint8_t hmask[kQK_K / 8];
    uint8_t qs[kQK_K / 4];
    uint8_t scales[12];
    uint16_t d;
};
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K block layout");

// Q3_K's 16 scales (-32..31): low 4 bits in the nibbles of bytes 0-7 (groups 0-7 the low
// nibbles, 8-15 the high), high 2 bits in the 2-bit pairs of bytes 8-11.
inline void unpack_q3_k_scales(const uint8_t packed[12], int8_t scales[16]) {
    for (int g = 0; g < 16; ++g) {
        const int low = (packed[g % 8] >> (4 * (g / 8))) & 0x0f;
        const int high = (packed[8 + g % 4] >> (2 * (g / 4))) & 3;
        scales[g] = static_cast<int8_t>((low | (high << 4)) - 32);
    }
}

// Q4_K: 8 groups of 32, w = d * scale * q - dmin * min, q 4 bits, 6-bit scales and mins
// packed in 12 bytes.
struct BlockQ4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K block layout");

// Q4_K and Q5_K's eight 6-bit scales and mins from their 12 packed bytes: groups 0-3 in the
// low 6 bits of bytes g (scale) and g + 4 (min); groups 4-7 in the nibbles of bytes g + 4,
// their top 2 bits in the top bits of bytes g - 4 (scale) and g (min).
inline void unpack_k_scales(const uint8_t packed[12], uint8_t scales[8], uint8_t mins[8]) {
    for (int g = 0; g < 4; ++g) {
        scales[g] = packed[g] & 63;
        mins[g] = packed[g + 4] & 63;
        scales[g + 4] = static_cast<uint8_t>((packed[g + 8] & 0x0f) | ((packed[g] >> 6) << 4));
        mins[g + 4] = static_cast<uint8_t>((packed[g + 8] >> 4) | ((packed[g + 4] >> 6) << 4));
    }
}

// Q5_K: Q4_K with a fifth bit per weight in qh.
struct BlockQ5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[kQK_K / 8];
    uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K block layout");

// IQ4_NL and IQ4_XS's 16 levels (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// IQ4_NL: 32 weights = d * kIq4Values[q], q 4 bits (nibbles as in Q4_0): a non-linear grid.
struct BlockIQ4_NL {
    uint16_t d;
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockIQ4_NL) == 18, "IQ4_NL block layout");

// IQ4_XS: 8 groups of 32 on IQ4_NL's grid, w = d * (scale - 32) * kIq4Values[q], the 6-bit
// scales' low 4 bits in scales_l, high 2 in scales_h.
struct BlockIQ4_XS {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[kQK_K / 64];
    uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockIQ4_XS) == 136, "IQ4_XS block layout");

// Group g's scale (-32..31) of an IQ4_XS block; its 32 values are nibbles of qs[16 g..] as in IQ4_NL.
inline int iq4_xs_scale(const BlockIQ4_XS& b, int g) {
    return (((b.scales_l[g / 2] >> (4 * (g % 2))) & 0x0f) | (((b.scales_h >> (2 * g)) & 3) << 4)) - 32;
}

// A weight type's row in the table of types (dtype.cpp): a new type is a row there, its block
// layout above, and its kernels at every level (cpu/kernels.h, TypeKernels).
struct DTypeInfo {
    DType type;
    const char* name;
    int64_t block_elems;  // elements per block (1 for plain floats)
    size_t block_bytes;   // bytes per block
    // The format its activations take for its dot kernels (cpu/kernels.h).
    DType activation;
    // The reference dequantisation of n elements (n a whole number of blocks).
    void (*dequantize)(const void* src, float* dst, int64_t n);
};

// nullptr for a type id this engine does not implement.
const DTypeInfo* dtype_info(uint32_t ggml_type);
const char* dtype_name(uint32_t ggml_type);  // ggml's name, or "type 42" for an unknown id
// The block of any ggml type whose storage this engine knows, whether it runs it or not (a
// file's index can be read and described; a type without a DTypeInfo cannot run); false for
// an unknown id.
bool storage_block(uint32_t ggml_type, int64_t* block_elems, uint64_t* block_bytes);
std::string weight_type_names();  // the types this engine runs, for messages: "F32, F16, ..."

// Bytes of a row of n elements; false if n is not a whole number of blocks or on overflow.
bool row_bytes(DType type, int64_t n, uint64_t* bytes);

// IEEE half and bfloat16 conversions (scalar, exact, portable).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);  // round to nearest even
float bf16_to_fp32(uint16_t h);

// Reference (scalar) dequantisation of n elements of a weight type (dtype_info(type) not
// null); n a multiple of the block size.
void dequantize_row_ref(DType type, const void* src, float* dst, int64_t n);
// Reference quantisation of activations: n a multiple of 32.
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* dst, int64_t n);
void quantize_row_q8_1_ref(const float* x, BlockQ8_1* dst, int64_t n);
// n a multiple of 256; d = max|x| / 127 over each 256 values, rounded as the 32-value blocks.
void quantize_row_q8_k_ref(const float* x, BlockQ8_K* dst, int64_t n);

}  // namespace si
