// Contexts (a device and a stream) and device memory: the ABI's plain-C entry points.
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>

#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

namespace {

using namespace si_cuda;

// Waits for the stream, then reads and clears the kernels' index flags (plugin_internal.cuh).
int drain(si_cuda_context* ctx, const char* what, char* err, size_t err_len) {
    cudaError_t status = cudaStreamSynchronize(ctx->stream);
    if (status != cudaSuccess) return fail(status, what, err, err_len);
    // On the context's stream: it does not wait for the legacy default stream, nor it for it.
    int flags = 0;
    status = cudaMemcpyAsync(&flags, ctx->flags, sizeof(flags), cudaMemcpyDeviceToHost, ctx->stream);
    if (status == cudaSuccess) status = cudaStreamSynchronize(ctx->stream);
    if (status != cudaSuccess) return fail(status, what, err, err_len);
    if (flags == 0) return 0;
    status = cudaMemsetAsync(ctx->flags, 0, sizeof(int), ctx->stream);  // before any later kernel
    if (status != cudaSuccess) return fail(status, what, err, err_len);
    if (err != nullptr && err_len > 0) {
        snprintf(err, err_len,
                 "%s: a kernel skipped entries whose index was out of range since the last check:%s%s%s",
                 what, (flags & kFlagRowId) ? " a row id beyond its matrix's rows;" : "",
                 (flags & kFlagCount) ? " a list count beyond its capacity;" : "",
                 (flags & kFlagCandidate) ? " a candidate neuron id beyond n_ff;" : "");
    }
    return SI_CUDA_ERROR_INDEX;
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_context_create(int device, si_cuda_context** out, char* err, size_t err_len) {
    if (out == nullptr) return invalid(err, err_len, "si_cuda_context_create: out is null");
    *out = nullptr;
    int rc = check_device(device, err, err_len);
    if (rc != 0) return rc;
    cudaError_t status = cudaSetDevice(device);
    if (status != cudaSuccess) return fail(status, "cudaSetDevice", err, err_len);
    auto* ctx = static_cast<si_cuda_context*>(calloc(1, sizeof(si_cuda_context)));
    if (ctx == nullptr) return invalid(err, err_len, "si_cuda_context_create: out of host memory");
    ctx->device = device;
    // Non-blocking: the context's work does not wait for the legacy default stream, which
    // other libraries in the process may use.
    status = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (status != cudaSuccess) {
        free(ctx);
        return fail(status, "cudaStreamCreateWithFlags", err, err_len);
    }
    status = cudaMalloc(reinterpret_cast<void**>(&ctx->flags), sizeof(int));
    if (status == cudaSuccess) status = cudaMemsetAsync(ctx->flags, 0, sizeof(int), ctx->stream);
    if (status != cudaSuccess) {
        cudaFree(ctx->flags);
        cudaStreamDestroy(ctx->stream);
        free(ctx);
        return fail(status, "cudaMalloc (context flags)", err, err_len);
    }
    *out = ctx;
    return 0;
}

SI_CUDA_API void si_cuda_context_destroy(si_cuda_context* ctx) {
    if (ctx == nullptr) return;
    if (cudaSetDevice(ctx->device) == cudaSuccess) {
        cudaStreamSynchronize(ctx->stream);
        cudaFree(ctx->flags);
        cudaFree(ctx->scratch);
        cudaStreamDestroy(ctx->stream);
    }
    cudaGetLastError();  // nothing to report to: leave no sticky error behind
    free(ctx);
}

SI_CUDA_API int si_cuda_synchronize(si_cuda_context* ctx, char* err, size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    return drain(ctx, "si_cuda_synchronize", err, err_len);
}

SI_CUDA_API int si_cuda_memory_info(si_cuda_context* ctx, uint64_t* free_bytes, uint64_t* total_bytes,
                                    char* err, size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    size_t free_now = 0, total = 0;
    cudaError_t status = cudaMemGetInfo(&free_now, &total);
    if (status != cudaSuccess) return fail(status, "cudaMemGetInfo", err, err_len);
    if (free_bytes != nullptr) *free_bytes = free_now;
    if (total_bytes != nullptr) *total_bytes = total;
    return 0;
}

SI_CUDA_API int si_cuda_alloc(si_cuda_context* ctx, size_t bytes, void** out, char* err, size_t err_len) {
    if (out == nullptr) return invalid(err, err_len, "si_cuda_alloc: out is null");
    *out = nullptr;
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (bytes == 0) return 0;
    cudaError_t status = cudaMalloc(out, bytes);
    if (status == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        *out = nullptr;
        size_t free_now = 0, total = 0;
        cudaMemGetInfo(&free_now, &total);
        cudaGetLastError();
        if (err != nullptr && err_len > 0) {
            snprintf(err, err_len,
                     "out of GPU memory on device %d: asked for %llu bytes, %llu bytes free of %llu",
                     ctx->device, static_cast<unsigned long long>(bytes),
                     static_cast<unsigned long long>(free_now), static_cast<unsigned long long>(total));
        }
        return static_cast<int>(cudaErrorMemoryAllocation);
    }
    if (status != cudaSuccess) {
        *out = nullptr;
        return fail(status, "cudaMalloc", err, err_len);
    }
    return 0;
}

SI_CUDA_API int si_cuda_free(si_cuda_context* ctx, void* ptr, char* err, size_t err_len) {
    if (ptr == nullptr) return 0;
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    cudaError_t status = cudaFree(ptr);  // waits for the device's work
    if (status != cudaSuccess) return fail(status, "cudaFree", err, err_len);
    return 0;
}

SI_CUDA_API int si_cuda_upload(si_cuda_context* ctx, void* dst, const void* src, size_t bytes, char* err,
                               size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0 || bytes == 0) return rc;
    if (dst == nullptr || src == nullptr) return invalid(err, err_len, "si_cuda_upload: a null buffer");
    cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx->stream);
    // The copy may still read src (pinned memory): wait, so the caller may reuse it.
    if (status == cudaSuccess) status = cudaStreamSynchronize(ctx->stream);
    if (status != cudaSuccess) return fail(status, "si_cuda_upload", err, err_len);
    return 0;
}

SI_CUDA_API int si_cuda_copy(si_cuda_context* ctx, void* dst, const void* src, size_t bytes, char* err,
                             size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0 || bytes == 0) return rc;
    if (dst == nullptr || src == nullptr) return invalid(err, err_len, "si_cuda_copy: a null buffer");
    cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx->stream);
    if (status != cudaSuccess) return fail(status, "si_cuda_copy", err, err_len);
    return 0;
}

SI_CUDA_API int si_cuda_download(si_cuda_context* ctx, void* dst, const void* src, size_t bytes, char* err,
                                 size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0) return rc;
    if (bytes > 0 && (dst == nullptr || src == nullptr)) {
        return invalid(err, err_len, "si_cuda_download: a null buffer");
    }
    if (bytes > 0) {
        cudaError_t status = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream);
        if (status != cudaSuccess) return fail(status, "si_cuda_download", err, err_len);
    }
    // The stream's earlier kernels have run: report what they flagged with the data.
    return drain(ctx, "si_cuda_download", err, err_len);
}

SI_CUDA_API int si_cuda_memset(si_cuda_context* ctx, void* dst, int value, size_t bytes, char* err,
                               size_t err_len) {
    int rc = enter(ctx, err, err_len);
    if (rc != 0 || bytes == 0) return rc;
    if (dst == nullptr) return invalid(err, err_len, "si_cuda_memset: a null buffer");
    cudaError_t status = cudaMemsetAsync(dst, value, bytes, ctx->stream);
    if (status != cudaSuccess) return fail(status, "si_cuda_memset", err, err_len);
    return 0;
}

}  // extern "C"
