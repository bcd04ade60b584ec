// The plugin's device queries: it reports devices and proves that its code runs on them.
// Written without the C++ standard library so that the Windows build needs no msvcp140.dll.
#include <cuda_runtime.h>

#include <stdio.h>
#include <string.h>

#include "cuda_abi/plugin_api.h"
#include "plugin_internal.cuh"

#ifndef SI_CUDA_ARCHS
#define SI_CUDA_ARCHS "unknown"
#endif

#define SI_STR2(x) #x
#define SI_STR(x) SI_STR2(x)

namespace {

using si_cuda::check_device;
using si_cuda::fail;
using si_cuda::put;

__global__ void probe_kernel(int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 3 * i + 1;
}

}  // namespace

extern "C" {

SI_CUDA_API int si_cuda_abi_version(void) { return SI_CUDA_ABI_VERSION; }

SI_CUDA_API const char* si_cuda_build_info(void) {
    return "cuda " SI_STR(CUDART_VERSION) "; archs " SI_CUDA_ARCHS;
}

SI_CUDA_API int si_cuda_versions(int* runtime_version, int* driver_version, char* err,
                                 size_t err_len) {
    int runtime = 0, driver = 0;
    cudaError_t status = cudaRuntimeGetVersion(&runtime);
    if (status != cudaSuccess) return fail(status, "cudaRuntimeGetVersion", err, err_len);
    status = cudaDriverGetVersion(&driver);  // 0, and success, when no driver is installed
    if (status != cudaSuccess) return fail(status, "cudaDriverGetVersion", err, err_len);
    if (runtime_version != nullptr) *runtime_version = runtime;
    if (driver_version != nullptr) *driver_version = driver;
    return 0;
}

SI_CUDA_API int si_cuda_device_count(int* out, char* err, size_t err_len) {
    if (out != nullptr) *out = 0;
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) return fail(status, "cudaGetDeviceCount", err, err_len);
    if (out != nullptr) *out = count;
    return 0;
}

SI_CUDA_API int si_cuda_device_name(int device, char* name, size_t name_len, char* err,
                                    size_t err_len) {
    put(name, name_len, "");
    int rc = check_device(device, err, err_len);
    if (rc != 0) return rc;
    cudaDeviceProp props;
    cudaError_t status = cudaGetDeviceProperties(&props, device);
    if (status != cudaSuccess) return fail(status, "cudaGetDeviceProperties", err, err_len);
    put(name, name_len, props.name);
    return 0;
}

SI_CUDA_API int si_cuda_device_props(int device, int* cc_major, int* cc_minor,
                                     uint64_t* total_memory, char* err, size_t err_len) {
    int rc = check_device(device, err, err_len);
    if (rc != 0) return rc;
    int major = 0, minor = 0;
    cudaError_t status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (status != cudaSuccess) return fail(status, "cudaDeviceGetAttribute", err, err_len);
    status = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (status != cudaSuccess) return fail(status, "cudaDeviceGetAttribute", err, err_len);
    cudaDeviceProp props;
    status = cudaGetDeviceProperties(&props, device);
    if (status != cudaSuccess) return fail(status, "cudaGetDeviceProperties", err, err_len);
    if (cc_major != nullptr) *cc_major = major;
    if (cc_minor != nullptr) *cc_minor = minor;
    if (total_memory != nullptr) *total_memory = static_cast<uint64_t>(props.totalGlobalMem);
    return 0;
}

SI_CUDA_API int si_cuda_self_test(int device, char* err, size_t err_len) {
    int rc = check_device(device, err, err_len);
    if (rc != 0) return rc;
    cudaError_t status = cudaSetDevice(device);
    if (status != cudaSuccess) return fail(status, "cudaSetDevice", err, err_len);
    const int n = 256;
    int* d_out = nullptr;
    status = cudaMalloc(reinterpret_cast<void**>(&d_out), n * sizeof(int));
    if (status != cudaSuccess) return fail(status, "cudaMalloc", err, err_len);
    probe_kernel<<<(n + 127) / 128, 128>>>(d_out, n);
    status = cudaGetLastError();
    if (status == cudaSuccess) status = cudaDeviceSynchronize();
    int host[n];
    if (status == cudaSuccess) {
        status = cudaMemcpy(host, d_out, sizeof(host), cudaMemcpyDeviceToHost);
    }
    cudaFree(d_out);
    if (status != cudaSuccess) return fail(status, "probe kernel", err, err_len);
    for (int i = 0; i < n; ++i) {
        if (host[i] != 3 * i + 1) {
            put(err, err_len, "probe kernel: wrong result from the GPU");
            return -1;
        }
    }
    return 0;
}

}  // extern "C"
