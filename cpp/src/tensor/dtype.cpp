#include "tensor/dtype.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

#include "common/checked_math.h"
#include "common/errors.h"

namespace si {

namespace {

// ggml's types that this engine does not run, by name and storage (ggml's type traits), so
// that a file holding them can still be read and described, and the tensor that stops it
// from running named.
struct OtherType {
    uint32_t ggml_type;
    const char* name;
    int64_t block_elems;
    uint64_t block_bytes;
};
constexpr OtherType kOtherTypes[] = {
    {15, "Q8_K", 256, 292},  {16, "IQ2_XXS", 256, 66}, {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98},
    {19, "IQ1_S", 256, 50},  {21, "IQ3_S", 256, 110},  {22, "IQ2_S", 256, 82},  {24, "I8", 1, 1},
    {25, "I16", 1, 2},       {26, "I32", 1, 4},        {27, "I64", 1, 8},      {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},  {34, "TQ1_0", 256, 54},   {35, "TQ2_0", 256, 66}, {39, "MXFP4", 32, 17},
};

const OtherType* other_type(uint32_t ggml_type) {
    for (const OtherType& t : kOtherTypes) {
        if (t.ggml_type == ggml_type) return &t;
    }
    return nullptr;
}

}  // namespace

const char* dtype_name(uint32_t ggml_type) {
    if (const DTypeInfo* info = dtype_info(ggml_type)) return info->name;
    if (const OtherType* other = other_type(ggml_type)) return other->name;
    static thread_local char buf[32];
    std::snprintf(buf, sizeof(buf), "type %u", ggml_type);
    return buf;
}

bool storage_block(uint32_t ggml_type, int64_t* block_elems, uint64_t* block_bytes) {
    if (const DTypeInfo* info = dtype_info(ggml_type)) {
        *block_elems = info->block_elems;
        *block_bytes = info->block_bytes;
        return true;
    }
    if (const OtherType* other = other_type(ggml_type)) {
        *block_elems = other->block_elems;
        *block_bytes = other->block_bytes;
        return true;
    }
    return false;
}

bool row_bytes(DType type, int64_t n, uint64_t* bytes) {
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(type));
    if (!info || n < 0 || n % info->block_elems != 0) return false;
    return checked_mul(static_cast<uint64_t>(n / info->block_elems), info->block_bytes, bytes);
}

float fp16_to_fp32(uint16_t h) {
    uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1f;
    uint32_t mantissa = h & 0x3ff;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);  // inf / nan
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {
        // Subnormal half: value = mantissa * 2^-24, exact in float.
        float v = std::ldexp(static_cast<float>(mantissa), -24);
        std::memcpy(&bits, &v, 4);
        bits |= sign;
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t abs = x & 0x7fffffff;
    if (abs >= 0x7f800000u) {  // inf or nan
        return static_cast<uint16_t>(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
    }
    if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00);  // rounds past max half
    if (abs < 0x38800000u) {
        // Result is subnormal (or zero) in half: scale to units of 2^-24 and round to even.
        float a;
        std::memcpy(&a, &abs, 4);
        float scaled = a * 16777216.0f;  // 2^24, exact
        auto q = static_cast<uint32_t>(std::nearbyint(scaled));
        return static_cast<uint16_t>(sign | q);
    }
    // Normal: drop 13 mantissa bits with round-to-nearest-even.
    uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);
    uint32_t half = (rounded >> 13) - (112u << 10);
    return static_cast<uint16_t>(sign | half);
}

float bf16_to_fp32(uint16_t h) {
    uint32_t bits = static_cast<uint32_t>(h) << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

namespace {

// The reference dequantisations, one per type (DTypeInfo::dequantize).

void dequantize_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }

void dequantize_f16(const void* src, float* dst, int64_t n) {
    auto s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
}

void dequantize_bf16(const void* src, float* dst, int64_t n) {
    auto s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
}

void dequantize_q4_0(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ4_0*>(src);
    for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
        float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
            dst[j] = d * static_cast<float>((b[i].qs[j] & 0x0f) - 8);
            dst[j + kQK / 2] = d * static_cast<float>((b[i].qs[j] >> 4) - 8);
        }
    }
}

void dequantize_q4_1(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ4_1*>(src);
    for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
        float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < kQK / 2; ++j) {
            dst[j] = d * static_cast<float>(b[i].qs[j] & 0x0f) + m;
            dst[j + kQK / 2] = d * static_cast<float>(b[i].qs[j] >> 4) + m;
        }
    }
}

void dequantize_q8_0(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ8_0*>(src);
    for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
        float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[j] = d * static_cast<float>(b[i].qs[j]);
    }
}

// Q5_0 and Q5_1 (has_min): the fifth bits come from qh, Q5_0's offset is -16 d.
template <bool has_min>
void dequantize_q5(const void* src, float* dst, int64_t n) {
    const size_t block_bytes = has_min ? sizeof(BlockQ5_1) : sizeof(BlockQ5_0);
    auto bytes = static_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n / kQK; ++i, dst += kQK, bytes += block_bytes) {
        uint16_t d16, m16 = 0;
        std::memcpy(&d16, bytes, 2);
        if (has_min) std::memcpy(&m16, bytes + 2, 2);
        const uint8_t* qh_bytes = bytes + (has_min ? 4 : 2);
        const uint8_t* qs = qh_bytes + 4;
        const uint32_t qh = static_cast<uint32_t>(qh_bytes[0]) | (static_cast<uint32_t>(qh_bytes[1]) << 8) |
                            (static_cast<uint32_t>(qh_bytes[2]) << 16) | (static_cast<uint32_t>(qh_bytes[3]) << 24);
        const float d = fp16_to_fp32(d16);
        const float m = has_min ? fp16_to_fp32(m16) : -16.0f * d;  // Q5_0: d * (q - 16)
        for (int j = 0; j < kQK / 2; ++j) {
            const int lo = (qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1) << 4);
            const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
            dst[j] = d * static_cast<float>(lo) + m;
            dst[j + kQK / 2] = d * static_cast<float>(hi) + m;
        }
    }
}

void dequantize_q6_k(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ6_K*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
        const float d = fp16_to_fp32(b[i].d);
        // Two halves of 128: in each, 32 positions l give four values (l, l+32, l+64,
        // l+96) from the low and high nibbles of ql[l], ql[l+32] and the 2-bit pairs of
        // qh[l]; every 16 values share one scale.
        for (int half = 0; half < 2; ++half) {
            const uint8_t* ql = b[i].ql + 64 * half;
            const uint8_t* qh = b[i].qh + 32 * half;
            const int8_t* sc = b[i].scales + 8 * half;
            float* y = dst + 128 * half;
            for (int l = 0; l < 32; ++l) {
                const int g = l / 16;
                const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * static_cast<float>(sc[g] * q1);
                y[l + 32] = d * static_cast<float>(sc[g + 2] * q2);
                y[l + 64] = d * static_cast<float>(sc[g + 4] * q3);
                y[l + 96] = d * static_cast<float>(sc[g + 6] * q4);
            }
        }
    }
}

void dequantize_q2_k(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ2_K*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        // Two halves of 128: the 32 bytes of qs of a half hold four 2-bit planes, plane p
        // (shift 2p) giving 32 values in two groups of 16, each with its scale byte.
        int group = 0;
        for (int half = 0; half < 2; ++half) {
            const uint8_t* q = b[i].qs + 32 * half;
            for (int plane = 0; plane < 4; ++plane) {
                for (int part = 0; part < 2; ++part, ++group) {
                    const uint8_t sc = b[i].scales[group];
                    const float dl = d * static_cast<float>(sc & 0x0f), ml = dmin * static_cast<float>(sc >> 4);
                    for (int l = 0; l < 16; ++l) {
                        *dst++ = dl * static_cast<float>((q[16 * part + l] >> (2 * plane)) & 3) - ml;
                    }
                }
            }
        }
    }
}

void dequantize_q3_k(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockQ3_K*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        int8_t scales[16];
        unpack_q3_k_scales(b[i].scales, scales);
        // As Q2_K's planes, the third bit of each value from hmask: bit (4 half + plane) of
        // the byte at its position.
        int group = 0;
        for (int half = 0; half < 2; ++half) {
            const uint8_t* q = b[i].qs + 32 * half;
            for (int plane = 0; plane < 4; ++plane) {
                const uint8_t high_bit = static_cast<uint8_t>(1u << (4 * half + plane));
                for (int part = 0; part < 2; ++part, ++group) {
                    const float dl = d * static_cast<float>(scales[group]);
                    for (int l = 0; l < 16; ++l) {
                        const int k = 16 * part + l;
                        const int value = ((q[k] >> (2 * plane)) & 3) - ((b[i].hmask[k] & high_bit) ? 0 : 4);
                        *dst++ = dl * static_cast<float>(value);
                    }
                }
            }
        }
    }
}

// Q4_K and Q5_K (BlockQ5_K, with a fifth bit): four chunks of 64, each the low then the high
// nibbles of 32 bytes of qs, groups 2c and 2c + 1; Q5_K's fifth bits are bits 2c and 2c + 1
// of qh.
template <typename Block>
void dequantize_q45_k(const void* src, float* dst, int64_t n) {
    constexpr bool has_high_bit = std::is_same<Block, BlockQ5_K>::value;
    auto b = static_cast<const Block*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        const uint8_t* qh = nullptr;
        if constexpr (has_high_bit) qh = b[i].qh;
        const uint8_t* qs = b[i].qs;
        uint8_t scales[8], mins[8];
        unpack_k_scales(b[i].scales, scales, mins);
        for (int chunk = 0; chunk < 4; ++chunk, qs += 32) {
            for (int nibble = 0; nibble < 2; ++nibble) {
                const int g = 2 * chunk + nibble;
                const float dl = d * static_cast<float>(scales[g]), ml = dmin * static_cast<float>(mins[g]);
                for (int l = 0; l < 32; ++l) {
                    int q = (qs[l] >> (4 * nibble)) & 0x0f;
                    if constexpr (has_high_bit) q |= ((qh[l] >> (2 * chunk + nibble)) & 1) << 4;
                    *dst++ = dl * static_cast<float>(q) - ml;
                }
            }
        }
    }
}

void dequantize_iq4_nl(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockIQ4_NL*>(src);
    for (int64_t i = 0; i < n / kQK; ++i, dst += kQK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
            dst[j] = d * static_cast<float>(kIq4Values[b[i].qs[j] & 0x0f]);
            dst[j + kQK / 2] = d * static_cast<float>(kIq4Values[b[i].qs[j] >> 4]);
        }
    }
}

void dequantize_iq4_xs(const void* src, float* dst, int64_t n) {
    auto b = static_cast<const BlockIQ4_XS*>(src);
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int g = 0; g < 8; ++g, dst += kQK) {
            const float dl = d * static_cast<float>(iq4_xs_scale(b[i], g));
            const uint8_t* qs = b[i].qs + 16 * g;
            for (int j = 0; j < kQK / 2; ++j) {
                dst[j] = dl * static_cast<float>(kIq4Values[qs[j] & 0x0f]);
                dst[j + kQK / 2] = dl * static_cast<float>(kIq4Values[qs[j] >> 4]);
            }
        }
    }
}

// The weight types: {type, name, elements and bytes per block, activation format, reference
// dequantisation}. The dot formats are explained in cpu/kernels.h.
const DTypeInfo kTypes[] = {
    {DType::F32, "F32", 1, 4, DType::F32, dequantize_f32},
    {DType::F16, "F16", 1, 2, DType::F32, dequantize_f16},
    {DType::BF16, "BF16", 1, 2, DType::F32, dequantize_bf16},
    {DType::Q4_0, "Q4_0", kQK, sizeof(BlockQ4_0), DType::Q8_1, dequantize_q4_0},
    {DType::Q4_1, "Q4_1", kQK, sizeof(BlockQ4_1), DType::Q8_1, dequantize_q4_1},
    {DType::Q8_0, "Q8_0", kQK, sizeof(BlockQ8_0), DType::Q8_0, dequantize_q8_0},
    {DType::Q5_0, "Q5_0", kQK, sizeof(BlockQ5_0), DType::Q8_1, dequantize_q5<false>},
    {DType::Q5_1, "Q5_1", kQK, sizeof(BlockQ5_1), DType::Q8_1, dequantize_q5<true>},
    {DType::Q2_K, "Q2_K", kQK_K, sizeof(BlockQ2_K), DType::Q8_K, dequantize_q2_k},
    {DType::Q3_K, "Q3_K", kQK_K, sizeof(BlockQ3_K), DType::Q8_K, dequantize_q3_k},
    {DType::Q4_K, "Q4_K", kQK_K, sizeof(BlockQ4_K), DType::Q8_K, dequantize_q45_k<BlockQ4_K>},
    {DType::Q5_K, "Q5_K", kQK_K, sizeof(BlockQ5_K), DType::Q8_K, dequantize_q45_k<BlockQ5_K>},
    {DType::Q6_K, "Q6_K", kQK_K, sizeof(BlockQ6_K), DType::Q8_K, dequantize_q6_k},
    {DType::IQ4_NL, "IQ4_NL", kQK, sizeof(BlockIQ4_NL), DType::Q8_0, dequantize_iq4_nl},
    {DType::IQ4_XS, "IQ4_XS", kQK_K, sizeof(BlockIQ4_XS), DType::Q8_K, dequantize_iq4_xs},
};

}  // namespace

const DTypeInfo* dtype_info(uint32_t ggml_type) {
    for (const DTypeInfo& info : kTypes) {
        if (static_cast<uint32_t>(info.type) == ggml_type) return &info;
    }
    return nullptr;
}

std::string weight_type_names() {
    std::string names;
    for (const DTypeInfo& info : kTypes) names += (names.empty() ? "" : ", ") + std::string(info.name);
    return names;
}

void dequantize_row_ref(DType type, const void* src, float* dst, int64_t n) {
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(type));
    if (info == nullptr) {
        throw UnsupportedError(std::string("no dequantisation for ") + dtype_name(static_cast<uint32_t>(type)));
    }
    info->dequantize(src, dst, n);
}

namespace {

// Quantises a block of n values to int8 with scale amax/127; returns the scale.
float quantize_block_q8(const float* x, int8_t* q, int n = kQK) {
    float amax = 0.0f;
    for (int j = 0; j < n; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    float d = amax / 127.0f;
    // A block of (near) zeros: 1/d would overflow, and the values round to 0 anyway. Every
    // ISA level uses this same rule so they all produce the same bytes.
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    if (!std::isfinite(id)) id = 0.0f;
    for (int j = 0; j < n; ++j) q[j] = static_cast<int8_t>(std::lrintf(x[j] * id));
    return d;
}

}  // namespace

void quantize_row_q8_0_ref(const float* x, BlockQ8_0* dst, int64_t n) {
    for (int64_t i = 0; i < n / kQK; ++i) {
        float d = quantize_block_q8(x + i * kQK, dst[i].qs);
        dst[i].d = fp32_to_fp16(d);
    }
}

void quantize_row_q8_1_ref(const float* x, BlockQ8_1* dst, int64_t n) {
    for (int64_t i = 0; i < n / kQK; ++i) {
        float d = quantize_block_q8(x + i * kQK, dst[i].qs);
        int sum = 0;
        for (int j = 0; j < kQK; ++j) sum += dst[i].qs[j];
        dst[i].d = d;
        dst[i].s = d * static_cast<float>(sum);
    }
}

void quantize_row_q8_k_ref(const float* x, BlockQ8_K* dst, int64_t n) {
    for (int64_t i = 0; i < n / kQK_K; ++i) {
        dst[i].d = quantize_block_q8(x + i * kQK_K, dst[i].qs, kQK_K);
        for (int g = 0; g < kQK_K / 16; ++g) {
            int sum = 0;
            for (int j = 0; j < 16; ++j) sum += dst[i].qs[16 * g + j];
            dst[i].bsums[g] = static_cast<int16_t>(sum);
        }
    }
}

}  // namespace si
