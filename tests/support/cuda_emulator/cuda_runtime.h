// A CPU emulation of the CUDA subset the plugin (cpp/src/cuda) uses, so that its kernels'
// logic is tested on machines without a GPU (tests/gpu/test_cuda_emulated.py). The blocks of a
// launch run one after another; each block's threads run as fibers (ucontext) on one OS
// thread and switch only at __syncthreads and at warp collectives (shuffles, ballot), which
// are barriers. It checks what a kernel computes, not how it behaves on a GPU: memory
// ordering, races between blocks, launch limits, alignment faults and speed are out of reach.
// translate.py turns the plugin's sources into C++ for it (kernel launches, two asm lines).
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <functional>
#include <tuple>
#include <vector>

#define CUDART_VERSION 13000
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101 };
typedef struct emu_stream* cudaStream_t;
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
enum cudaDeviceAttr { cudaDevAttrComputeCapabilityMajor = 75, cudaDevAttrComputeCapabilityMinor = 76 };
#define cudaStreamNonBlocking 1
struct cudaDeviceProp { char name[256]; size_t totalGlobalMem; };

namespace emu {
struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int state;  // 0 ready, 1 block barrier, 2 warp barrier, 3 done
    unsigned long long slot;
    char* stack;
};
struct Block {
    std::vector<Fiber> fibers;
    int current = -1;
    ucontext_t sched;
    dim3 block_idx, block_dim, grid_dim;
};
extern Block* g_block;
inline Fiber& me() { return g_block->fibers[g_block->current]; }
inline void yield_to_sched() { swapcontext(&me().ctx, &g_block->sched); }
inline dim3& thread_idx() { return me().tid; }
inline dim3& block_idx() { return g_block->block_idx; }
inline dim3& block_dim() { return g_block->block_dim; }
inline dim3& grid_dim() { return g_block->grid_dim; }
inline void syncthreads() { me().state = 1; yield_to_sched(); }
inline void warp_barrier() { me().state = 2; yield_to_sched(); }
inline int lane_index() { return (int)(g_block->current % 32); }
inline Fiber& lane(int l) { return g_block->fibers[(g_block->current / 32) * 32 + l]; }
template <class T> T shfl_xor(T v, int o) {
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T)); me().slot = bits; warp_barrier();
    unsigned long long other = lane(lane_index() ^ o).slot; warp_barrier();
    T out; memcpy(&out, &other, sizeof(T)); return out;
}
template <class T> T shfl_up(T v, int o) {
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T)); me().slot = bits; warp_barrier();
    int src = lane_index() >= o ? lane_index() - o : lane_index();
    unsigned long long other = lane(src).slot; warp_barrier();
    T out; memcpy(&out, &other, sizeof(T)); return out;
}
template <class T> T shfl(T v, int src) {
    unsigned long long bits = 0; memcpy(&bits, &v, sizeof(T)); me().slot = bits; warp_barrier();
    unsigned long long other = lane(src).slot; warp_barrier();
    T out; memcpy(&out, &other, sizeof(T)); return out;
}
inline unsigned ballot(bool p) {
    me().slot = p ? 1 : 0; warp_barrier();
    unsigned m = 0; for (int l = 0; l < 32; ++l) if (lane(l).slot) m |= 1u << l;
    warp_barrier(); return m;
}
void run_block(std::function<void()>& body);
template <class... P, class... A> void launch(void (*k)(P...), dim3 grid, dim3 block, A... args) {
    std::tuple<P...> params(static_cast<P>(args)...);
    std::function<void()> body = [&]() { std::apply(k, params); };
    if (grid.x == 0 || block.x == 0) { fprintf(stderr, "emu: empty launch\n"); abort(); }
    Block b; g_block = &b; b.grid_dim = grid; b.block_dim = block;
    for (unsigned z = 0; z < grid.z; ++z) for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) {
        b.block_idx = dim3(x, y, z); run_block(body);
    }
    g_block = nullptr;
}
inline float h2f(uint16_t h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
inline uint16_t f2h(float f) { _Float16 v = (_Float16)f; uint16_t h; memcpy(&h, &v, 2); return h; }
}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::block_idx())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() emu::syncthreads()
#define __shfl_xor_sync(m, v, o) emu::shfl_xor(v, o)
#define __shfl_up_sync(m, v, o) emu::shfl_up(v, o)
#define __shfl_sync(m, v, s) emu::shfl(v, s)
#define __ffs(x) __builtin_ffs(x)
#define __ballot_sync(m, p) emu::ballot(p)
#define __popc(x) __builtin_popcount(x)
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int atomicOr(int* a, int v) { int o = *a; *a |= v; return o; }

cudaError_t cudaGetLastError();
const char* cudaGetErrorName(cudaError_t);
const char* cudaGetErrorString(cudaError_t);
cudaError_t cudaSetDevice(int);
cudaError_t cudaGetDeviceCount(int*);
cudaError_t cudaRuntimeGetVersion(int*);
cudaError_t cudaDriverGetVersion(int*);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp*, int);
cudaError_t cudaDeviceGetAttribute(int*, cudaDeviceAttr, int);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void**, size_t);
template <class T> cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc((void**)p, n); }
cudaError_t cudaFree(void*);
cudaError_t cudaMemcpy(void*, const void*, size_t, cudaMemcpyKind);
cudaError_t cudaMemcpyAsync(void*, const void*, size_t, cudaMemcpyKind, cudaStream_t);
cudaError_t cudaMemset(void*, int, size_t);
cudaError_t cudaMemsetAsync(void*, int, size_t, cudaStream_t);
cudaError_t cudaMemGetInfo(size_t*, size_t*);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t*, unsigned);
cudaError_t cudaStreamDestroy(cudaStream_t);
cudaError_t cudaStreamSynchronize(cudaStream_t);
