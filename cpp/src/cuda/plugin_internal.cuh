// What the plugin's source files share on the host side: the context, status and message
// helpers, the weight types' row sizes and the checks every entry point makes on its
// arguments. Like the rest of the plugin, free of the C++ standard library (plugin_api.h:
// the Windows DLL needs no msvcp140.dll).
#pragma once

#include <cuda_runtime.h>

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "cuda_abi/plugin_api.h"

struct si_cuda_context {
    int device;
    cudaStream_t stream;
    // One device word: kernels OR in the kFlag* bits below when they skip an entry whose
    // index is out of range; si_cuda_synchronize and si_cuda_download report and clear it.
    int* flags;
    // Device memory a kernel needs between its launches (the down projection's per-slice
    // sums), grown by reserve_scratch and kept until the context goes.
    void* scratch;
    size_t scratch_bytes;
};

namespace si_cuda {

enum : int {
    kFlagRowId = 1,      // a row id >= the matrix's rows (or negative)
    kFlagCount = 2,      // a device count above the list's capacity (or negative)
    kFlagCandidate = 4,  // a candidate neuron id >= n_ff (or negative)
};

inline void put(char* dst, size_t len, const char* text) {
    if (dst == nullptr || len == 0) return;
    snprintf(dst, len, "%s", text);
}

// Writes "<what>: <CUDA's name for the error>: <CUDA's message>" and returns the status.
inline int fail(cudaError_t status, const char* what, char* err, size_t err_len) {
    if (err != nullptr && err_len > 0) {
        snprintf(err, err_len, "%s: %s: %s", what, cudaGetErrorName(status),
                 cudaGetErrorString(status));
    }
    // A failed call leaves a sticky "last error" behind; clear it for the next call.
    cudaGetLastError();
    return static_cast<int>(status) != 0 ? static_cast<int>(status) : -1;
}

// A caller's mistake: SI_CUDA_ERROR_ARGUMENT with a printf-style message.
inline int invalid(char* err, size_t err_len, const char* format, ...) {
    if (err != nullptr && err_len > 0) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_len, format, args);
        va_end(args);
    }
    return SI_CUDA_ERROR_ARGUMENT;
}

// 0 when `device` is one of the visible devices.
inline int check_device(int device, char* err, size_t err_len) {
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) return fail(status, "cudaGetDeviceCount", err, err_len);
    if (device < 0 || device >= count) {
        if (err != nullptr && err_len > 0) {
            snprintf(err, err_len, "device %d does not exist (%d visible)", device, count);
        }
        return static_cast<int>(cudaErrorInvalidDevice);
    }
    return 0;
}

// Every entry point that takes a context starts here: the context's device becomes the
// calling thread's current device (another library may have switched it).
inline int enter(si_cuda_context* ctx, char* err, size_t err_len) {
    if (ctx == nullptr) return invalid(err, err_len, "no CUDA context (null)");
    cudaError_t status = cudaSetDevice(ctx->device);
    if (status != cudaSuccess) return fail(status, "cudaSetDevice", err, err_len);
    return 0;
}

// ctx->scratch holds at least `bytes`. Growing it frees the old buffer, which waits for the
// device (its earlier users are done then); the size a model's layers need is reached at the
// first call.
inline int reserve_scratch(si_cuda_context* ctx, size_t bytes, char* err, size_t err_len) {
    if (ctx->scratch_bytes >= bytes) return 0;
    cudaError_t status = cudaFree(ctx->scratch);
    ctx->scratch = nullptr;
    ctx->scratch_bytes = 0;
    if (status == cudaSuccess) status = cudaMalloc(&ctx->scratch, bytes);
    if (status != cudaSuccess) return fail(status, "cudaMalloc (kernel scratch)", err, err_len);
    ctx->scratch_bytes = bytes;
    return 0;
}

// After the launches of an entry point: a launch that failed (bad configuration, no kernel
// image for this GPU) is reported now; faults inside kernels surface at the next sync.
inline int launched(const char* what, char* err, size_t err_len) {
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return fail(status, what, err, err_len);
    return 0;
}

inline const char* type_name(int type) {
    switch (type) {
        case SI_CUDA_TYPE_F32: return "F32";
        case SI_CUDA_TYPE_F16: return "F16";
        case SI_CUDA_TYPE_Q4_0: return "Q4_0";
        case SI_CUDA_TYPE_Q4_1: return "Q4_1";
        case SI_CUDA_TYPE_Q8_0: return "Q8_0";
        default: return "unknown";
    }
}

inline bool is_quantised(int type) {
    return type == SI_CUDA_TYPE_Q4_0 || type == SI_CUDA_TYPE_Q4_1 || type == SI_CUDA_TYPE_Q8_0;
}

inline bool aligned(const void* p, uintptr_t to) {
    return (reinterpret_cast<uintptr_t>(p) % to) == 0;
}

// The checks on a weight matrix of `rows` rows of `cols` values; sets *row_bytes. The block
// layouts are cpp/src/tensor/dtype.h's: Q4_0 18 bytes, Q4_1 20, Q8_0 34 per 32 values.
inline int check_matrix(const char* what, int type, const void* w, int64_t rows, int64_t cols,
                        size_t* row_bytes, char* err, size_t err_len) {
    size_t block_bytes = 0;
    int64_t block_elems = 32;
    uintptr_t alignment = 2;  // the kernels read the blocks' fields 16 bits at a time
    switch (type) {
        case SI_CUDA_TYPE_F32: block_bytes = 4, block_elems = 1, alignment = 4; break;
        case SI_CUDA_TYPE_F16: block_bytes = 2, block_elems = 1; break;
        case SI_CUDA_TYPE_Q4_0: block_bytes = 18; break;
        case SI_CUDA_TYPE_Q4_1: block_bytes = 20; break;
        case SI_CUDA_TYPE_Q8_0: block_bytes = 34; break;
        default:
            return invalid(err, err_len,
                           "%s: weight type %d has no CUDA kernels (F32, F16, Q4_0, Q4_1, Q8_0 have)",
                           what, type);
    }
    if (rows < 0 || cols <= 0 || cols > (int64_t{1} << 40)) {
        return invalid(err, err_len, "%s: a matrix of %lld x %lld", what,
                       static_cast<long long>(rows), static_cast<long long>(cols));
    }
    if (cols % block_elems != 0) {
        return invalid(err, err_len, "%s: a %s row of %lld values is not a whole number of %lld-value blocks",
                       what, type_name(type), static_cast<long long>(cols),
                       static_cast<long long>(block_elems));
    }
    if (w == nullptr && rows > 0) return invalid(err, err_len, "%s: the weights are null", what);
    if (!aligned(w, alignment)) {
        return invalid(err, err_len, "%s: %s weights must be %d-byte aligned", what,
                       type_name(type), static_cast<int>(alignment));
    }
    *row_bytes = static_cast<size_t>(cols / block_elems) * block_bytes;
    return 0;
}

// The checks on activations for a matrix of this type: present, and 16-byte aligned where
// the kernels read them as float4 whatever the matrix (quantised types).
inline int check_input(const char* what, int type, const float* x, char* err, size_t err_len) {
    if (x == nullptr) return invalid(err, err_len, "%s: the input is null", what);
    if (is_quantised(type) && !aligned(x, 16)) {
        return invalid(err, err_len, "%s: the input of a %s matrix must be 16-byte aligned", what,
                       type_name(type));
    }
    return 0;
}

// Whether the plain float types can use 16-byte loads: every row and every token's input
// starts 16-byte aligned (F32: 4 values a load, F16: 8).
inline bool vector_loads(int type, const void* w, int64_t cols, const float* x) {
    if (type == SI_CUDA_TYPE_F32) return cols % 4 == 0 && aligned(w, 16) && aligned(x, 16);
    if (type == SI_CUDA_TYPE_F16) return cols % 8 == 0 && aligned(w, 16) && aligned(x, 16);
    return true;  // quantised: always (check_input asked for the alignment)
}

// The host's check on a row list is its capacity alone: the ids and the count live on the
// device, and the kernels check them there (kFlagRowId, kFlagCount).
inline int check_list(const char* what, int64_t max_count, char* err, size_t err_len) {
    if (max_count < 0 || max_count > INT32_MAX) {
        return invalid(err, err_len, "%s: a list capacity of %lld", what,
                       static_cast<long long>(max_count));
    }
    return 0;
}

inline int check_tokens(const char* what, int64_t n_tokens, char* err, size_t err_len) {
    if (n_tokens < 1 || n_tokens > INT32_MAX) {
        return invalid(err, err_len, "%s: n_tokens must be at least 1, got %lld", what,
                       static_cast<long long>(n_tokens));
    }
    return 0;
}

inline unsigned int blocks_for(int64_t items, int64_t per_block) {
    return static_cast<unsigned int>((items + per_block - 1) / per_block);
}

}  // namespace si_cuda
