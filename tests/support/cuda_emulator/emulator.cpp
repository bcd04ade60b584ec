// The emulator's scheduler and its CUDA runtime API (cuda_runtime.h says what it is for).
#include "cuda_runtime.h"

#include <mutex>
#include <unordered_map>
namespace emu {
Block* g_block = nullptr;
static std::function<void()>* s_body;  // the kernel call of the block being run
static void fiber_main() {
    (*s_body)();
    me().state = 3;
    swapcontext(&me().ctx, &g_block->sched);
}
void run_block(std::function<void()>& body) {
    Block& b = *g_block;
    const unsigned n = b.block_dim.x * b.block_dim.y * b.block_dim.z;
    static std::vector<char*> stacks;
    const size_t stack_size = 256 * 1024;
    while (stacks.size() < n) stacks.push_back((char*)malloc(stack_size));
    b.fibers.assign(n, Fiber{});
    s_body = &body;
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = b.fibers[i];
        f.tid = dim3(i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y, i / (b.block_dim.x * b.block_dim.y));
        f.state = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[i];
        f.ctx.uc_stack.ss_size = stack_size;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        bool progressed = false;
        for (unsigned i = 0; i < n; ++i) {
            if (b.fibers[i].state != 0) continue;
            b.current = (int)i;
            swapcontext(&b.sched, &b.fibers[i].ctx);
            progressed = true;
        }
        // A warp collective releases when every lane of the warp waits at it.
        for (unsigned w = 0; w * 32 < n; ++w) {
            bool all = true, any = false, dead = false;
            for (unsigned l = w * 32; l < w * 32 + 32 && l < n; ++l) {
                int s = b.fibers[l].state;
                if (s == 2) any = true; else if (s == 3) dead = true; else all = false;
            }
            if (any && all) {
                if (dead) { fprintf(stderr, "emu: warp collective with exited lanes\n"); abort(); }
                for (unsigned l = w * 32; l < w * 32 + 32 && l < n; ++l) b.fibers[l].state = 0;
                progressed = true;
            }
        }
        bool all_done = true, all_block = true, any_block = false;
        for (auto& f : b.fibers) {
            if (f.state != 3) all_done = false;
            if (f.state == 1) any_block = true; else if (f.state != 3) all_block = false;
        }
        if (all_done) break;
        if (any_block && all_block) { for (auto& f : b.fibers) if (f.state == 1) f.state = 0; progressed = true; }
        if (!progressed) { fprintf(stderr, "emu: deadlock\n"); abort(); }
    }
}
}  // namespace emu
static int g_last = 0;
cudaError_t cudaGetLastError() { int e = g_last; g_last = 0; return e; }
const char* cudaGetErrorName(cudaError_t e) { return e == 2 ? "cudaErrorMemoryAllocation" : "cudaErrorEmu"; }
const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
cudaError_t cudaSetDevice(int) { return 0; }
cudaError_t cudaGetDeviceCount(int* c) { *c = 1; return 0; }
cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return 0; }
cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return 0; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) { strcpy(p->name, "emulated"); p->totalGlobalMem = 8ull << 30; return 0; }
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) { *v = a == cudaDevAttrComputeCapabilityMajor ? 9 : 0; return 0; }
cudaError_t cudaDeviceSynchronize() { return 0; }
// An 8 GiB device: requests beyond what is free fail as on a GPU (the out-of-memory tests),
// and cudaMemGetInfo reports what the allocations left, so tests can measure a budget.
namespace emu {
constexpr size_t kDeviceBytes = 8ull << 30;
std::mutex g_alloc_mutex;
std::unordered_map<void*, size_t> g_allocations;
size_t g_allocated = 0;
}  // namespace emu
cudaError_t cudaMalloc(void** p, size_t n) {
    const size_t rounded = (n + 255) / 256 * 256;
    std::lock_guard<std::mutex> hold(emu::g_alloc_mutex);
    if (rounded > emu::kDeviceBytes - emu::g_allocated) { *p = nullptr; return 2; }
    *p = aligned_alloc(256, rounded);
    memset(*p, 0xcd, rounded);  // garbage, like fresh device memory
    emu::g_allocations[*p] = rounded;
    emu::g_allocated += rounded;
    return 0;
}
cudaError_t cudaFree(void* p) {
    std::lock_guard<std::mutex> hold(emu::g_alloc_mutex);
    auto it = emu::g_allocations.find(p);
    if (it != emu::g_allocations.end()) {
        emu::g_allocated -= it->second;
        emu::g_allocations.erase(it);
    }
    free(p);
    return 0;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { memcpy(d, s, n); return 0; }
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) { memcpy(d, s, n); return 0; }
cudaError_t cudaMemset(void* d, int v, size_t n) { memset(d, v, n); return 0; }
cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { memset(d, v, n); return 0; }
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
    std::lock_guard<std::mutex> hold(emu::g_alloc_mutex);
    *f = emu::kDeviceBytes - emu::g_allocated;
    *t = emu::kDeviceBytes;
    return 0;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = (cudaStream_t)malloc(1); return 0; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { free(s); return 0; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
