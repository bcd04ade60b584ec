// The C ABI of the CUDA plugin (libsparseinfer_cuda.so / sparseinfer_cuda.dll).
//
// The plugin is a separate shared library, loaded at run time by the Python package
// (src/sparseinfer/_cuda.py) when it is installed (the sparseinfer-cuda12 distribution) or
// built into the package from source (-DSPARSEINFER_CUDA=ON). Only plain C types cross this
// boundary, so the plugin and the core can come from different compilers and releases; the
// core refuses a plugin whose si_cuda_abi_version() differs from the one it was written for.
//
// Conventions: functions that can fail return 0 on success and a nonzero status otherwise
// (the CUDA error code where there is one) and write a NUL-terminated message of at most
// err_len bytes (including the NUL) into err when err is not null. No function throws, exits
// or prints.
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define SI_CUDA_API __declspec(dllexport)
#else
#define SI_CUDA_API __attribute__((visibility("default")))
#endif

#define SI_CUDA_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

// The ABI version this library implements (SI_CUDA_ABI_VERSION).
SI_CUDA_API int si_cuda_abi_version(void);

// What the library was built with: "cuda <runtime version it was compiled against>;
// archs <CMAKE_CUDA_ARCHITECTURES>". A static string; never null.
SI_CUDA_API const char* si_cuda_build_info(void);

// The CUDA runtime's version (e.g. 12080 for 12.8) and the driver's (0 when no driver is
// installed), as cudaRuntimeGetVersion / cudaDriverGetVersion report them.
SI_CUDA_API int si_cuda_versions(int* runtime_version, int* driver_version, char* err,
                                 size_t err_len);

// The number of CUDA devices visible to this process. With no driver or no device this
// fails (nonzero, *out = 0) and err says why, in CUDA's words.
SI_CUDA_API int si_cuda_device_count(int* out, char* err, size_t err_len);

// The device's name, NUL-terminated and cut to name_len bytes.
SI_CUDA_API int si_cuda_device_name(int device, char* name, size_t name_len, char* err,
                                    size_t err_len);

// The device's compute capability and total memory in bytes.
SI_CUDA_API int si_cuda_device_props(int device, int* cc_major, int* cc_minor,
                                     uint64_t* total_memory, char* err, size_t err_len);

// Runs a tiny kernel on the device and checks its result: fails with CUDA's message when the
// library carries no code this GPU can run ("no kernel image is available ...").
SI_CUDA_API int si_cuda_self_test(int device, char* err, size_t err_len);

#ifdef __cplusplus
}  // extern "C"
#endif
