// Device-side pieces the kernels share: half conversions, warp sums, and the two ways the
// kernels read a GGUF weight row (a warp's dot products with a few tokens, one element per
// lane). Block layouts as in cpp/src/tensor/dtype.h:
//   Q4_0 (18 bytes): f16 d, 16 bytes qs; value j = d * (q_j - 8), q_j the low nibble of
//                    qs[j] for j < 16 and the high nibble of qs[j - 16] for j >= 16;
//   Q4_1 (20 bytes): f16 d, f16 m, nibbles as Q4_0; value j = d * q_j + m;
//   Q8_0 (34 bytes): f16 d, 32 int8 q; value j = d * q_j.
// Rows are whole blocks of even size, so every field of every block sits at an even offset
// from the matrix's start (2-byte aligned, checked on the host): the kernels read quantised
// blocks 16 bits at a time, which is always aligned.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace si_cuda {

constexpr int kWarp = 32;
constexpr unsigned int kFullMask = 0xffffffffu;
// Tokens per kernel pass: a lane keeps one partial sum per token in registers, so each
// weight it dequantises is used for every token. Entry points loop over groups of 8.
constexpr int kMaxTokens = 8;
constexpr int kQK = 32;  // values per quantised block

// IEEE half <-> float with the conversion instructions (round to nearest even), so that the
// plugin needs no cuda_fp16.h types.
__device__ __forceinline__ float half_to_float(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ uint16_t float_to_half(float f) {
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// -inf from its bits: no host math.h macro in device code (MSVC's INFINITY is an overflowing
// constant expression).
__device__ __forceinline__ float minus_infinity() { return __int_as_float(static_cast<int>(0xff800000u)); }

// The sum over the warp, in every lane (butterfly: the same order in every lane).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ __forceinline__ uint32_t load_u16(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}

// The number of entries of a list: its device count, or its capacity when there is none. A
// count outside 0..capacity is flagged and clamped.
__device__ __forceinline__ int64_t listed_count(const int32_t* count, int64_t capacity, int* flags) {
    if (count == nullptr) return capacity;
    const int64_t c = *count;
    if (c < 0 || c > capacity) {
        atomicOr(flags, kFlagCount);
        return c < 0 ? 0 : capacity;
    }
    return c;
}

// acc[t] += w[0..3] . x[t][e..e+3] for every token; x holds n_tokens rows of `cols` floats,
// each 16-byte aligned, and e is a multiple of 4.
__device__ __forceinline__ void dot4_tokens(const float* w, const float* x, int64_t cols, int64_t e,
                                            int n_tokens, float* acc) {
#pragma unroll
    for (int t = 0; t < kMaxTokens; ++t) {
        if (t < n_tokens) {
            const float4 v = *reinterpret_cast<const float4*>(x + t * cols + e);
            acc[t] = fmaf(w[0], v.x, fmaf(w[1], v.y, fmaf(w[2], v.z, fmaf(w[3], v.w, acc[t]))));
        }
    }
}

// This lane's share of dot(row, x[t]) added to acc[t], t < n_tokens; the caller sums acc over
// the warp. Quantised rows: four lanes share a block, each taking 8 of its values (Q4: the
// nibbles of 4 bytes, i.e. values 4p..4p+3 and 16+4p..16+4p+3; Q8_0: values 8p..8p+7), so a
// warp reads 8 consecutive blocks per step and every weight is dequantised once for all
// tokens. vec: the F32/F16 rows and x allow 16-byte loads (vector_loads on the host). The
// loops are unrolled so that four steps' loads are in flight at once: with a warp per row,
// a warp's speed is its load latency (seen on an H200: a MiniCPM-S-shape attention matrix
// streamed at about 150 GB/s with one step's loads at a time).
__device__ __forceinline__ void row_dot(int type, const uint8_t* row, int64_t cols, const float* x,
                                        int n_tokens, bool vec, float* acc) {
    const int lane = static_cast<int>(threadIdx.x % kWarp);
    const int part = lane & 3;
    const int64_t n_blocks = cols / kQK;
    switch (type) {
        case SI_CUDA_TYPE_F32: {
            const float* r = reinterpret_cast<const float*>(row);
            if (vec) {
#pragma unroll 4
                for (int64_t c = lane; c < cols / 4; c += kWarp) {
                    const float4 v = reinterpret_cast<const float4*>(r)[c];
                    const float w[4] = {v.x, v.y, v.z, v.w};
                    dot4_tokens(w, x, cols, 4 * c, n_tokens, acc);
                }
            } else {
                for (int64_t e = lane; e < cols; e += kWarp) {
                    const float w = r[e];
#pragma unroll
                    for (int t = 0; t < kMaxTokens; ++t) {
                        if (t < n_tokens) acc[t] = fmaf(w, x[t * cols + e], acc[t]);
                    }
                }
            }
            break;
        }
        case SI_CUDA_TYPE_F16: {
            const uint16_t* r = reinterpret_cast<const uint16_t*>(row);
            if (vec) {
#pragma unroll 4
                for (int64_t c = lane; c < cols / 8; c += kWarp) {
                    const uint4 v = reinterpret_cast<const uint4*>(r)[c];  // 8 halves
                    const uint32_t pairs[4] = {v.x, v.y, v.z, v.w};
                    float w[8];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {  // little-endian: the low half comes first
                        w[2 * i] = half_to_float(static_cast<uint16_t>(pairs[i] & 0xffffu));
                        w[2 * i + 1] = half_to_float(static_cast<uint16_t>(pairs[i] >> 16));
                    }
                    dot4_tokens(w, x, cols, 8 * c, n_tokens, acc);
                    dot4_tokens(w + 4, x, cols, 8 * c + 4, n_tokens, acc);
                }
            } else {
                for (int64_t e = lane; e < cols; e += kWarp) {
                    const float w = half_to_float(r[e]);
#pragma unroll
                    for (int t = 0; t < kMaxTokens; ++t) {
                        if (t < n_tokens) acc[t] = fmaf(w, x[t * cols + e], acc[t]);
                    }
                }
            }
            break;
        }
        case SI_CUDA_TYPE_Q4_0:
        case SI_CUDA_TYPE_Q4_1: {
            const bool has_min = type == SI_CUDA_TYPE_Q4_1;
            const int64_t block_bytes = has_min ? 20 : 18;
            const int qs_offset = has_min ? 4 : 2;
#pragma unroll 4
            for (int64_t b = lane >> 2; b < n_blocks; b += kWarp / 4) {
                const uint8_t* block = row + b * block_bytes;
                const float d = half_to_float(static_cast<uint16_t>(load_u16(block)));
                const float m = has_min ? half_to_float(static_cast<uint16_t>(load_u16(block + 2))) : -8.0f * d;
                // Bytes qs[4p..4p+3], byte i in bits 8i..8i+7.
                const uint8_t* qs = block + qs_offset + 4 * part;
                const uint32_t q = load_u16(qs) | (load_u16(qs + 2) << 16);
                float lo[4], hi[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    // Q4_0: d * (q - 8) = d * q - 8d, exact in float (an 11-bit d times a
                    // 4-bit q), so it equals the reference's d * (q - 8).
                    lo[i] = fmaf(d, static_cast<float>((q >> (8 * i)) & 15u), m);
                    hi[i] = fmaf(d, static_cast<float>((q >> (8 * i + 4)) & 15u), m);
                }
                dot4_tokens(lo, x, cols, b * kQK + 4 * part, n_tokens, acc);
                dot4_tokens(hi, x, cols, b * kQK + 16 + 4 * part, n_tokens, acc);
            }
            break;
        }
        case SI_CUDA_TYPE_Q8_0: {
#pragma unroll 4
            for (int64_t b = lane >> 2; b < n_blocks; b += kWarp / 4) {
                const uint8_t* block = row + b * 34;
                const float d = half_to_float(static_cast<uint16_t>(load_u16(block)));
                const uint8_t* qs = block + 2 + 8 * part;
                float w[8];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const uint32_t pair = load_u16(qs + 2 * i);
                    w[2 * i] = d * static_cast<float>(static_cast<int8_t>(pair & 0xffu));
                    w[2 * i + 1] = d * static_cast<float>(static_cast<int8_t>(pair >> 8));
                }
                dot4_tokens(w, x, cols, b * kQK + 8 * part, n_tokens, acc);
                dot4_tokens(w + 4, x, cols, b * kQK + 8 * part + 4, n_tokens, acc);
            }
            break;
        }
        default:
            break;  // the host refuses other types before launching
    }
}

// Value `col` of a row, one lane per value: the down projection's access, where a warp reads
// 32 consecutive values (one quantised block) of one row.
__device__ __forceinline__ float row_element(int type, const uint8_t* row, int64_t col) {
    const int j = static_cast<int>(col % kQK);
    switch (type) {
        case SI_CUDA_TYPE_F32: return reinterpret_cast<const float*>(row)[col];
        case SI_CUDA_TYPE_F16: return half_to_float(reinterpret_cast<const uint16_t*>(row)[col]);
        case SI_CUDA_TYPE_Q4_0: {
            const uint8_t* block = row + (col / kQK) * 18;
            const float d = half_to_float(static_cast<uint16_t>(load_u16(block)));
            const int byte = block[2 + (j & 15)];
            const int q = j < 16 ? (byte & 15) : (byte >> 4);
            return d * static_cast<float>(q - 8);
        }
        case SI_CUDA_TYPE_Q4_1: {
            const uint8_t* block = row + (col / kQK) * 20;
            const float d = half_to_float(static_cast<uint16_t>(load_u16(block)));
            const float m = half_to_float(static_cast<uint16_t>(load_u16(block + 2)));
            const int byte = block[4 + (j & 15)];
            const int q = j < 16 ? (byte & 15) : (byte >> 4);
            return fmaf(d, static_cast<float>(q), m);
        }
        case SI_CUDA_TYPE_Q8_0: {
            const uint8_t* block = row + (col / kQK) * 34;
            const float d = half_to_float(static_cast<uint16_t>(load_u16(block)));
            return d * static_cast<float>(static_cast<int8_t>(block[2 + j]));
        }
        default:
            return 0.0f;
    }
}

}  // namespace si_cuda
