#include "gpu/plugin.h"

#include <utility>

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace si::gpu {

namespace {

// CUDA's cudaErrorMemoryAllocation: what si_cuda_alloc returns when the device is full.
constexpr int kCudaErrorMemoryAllocation = 2;

#if defined(_WIN32)
void* open_library(const std::string& path, std::string* why) {
    HMODULE h = LoadLibraryExA(path.c_str(), nullptr,
                               LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS);
    if (!h) *why = "LoadLibrary failed with error " + std::to_string(GetLastError());
    return reinterpret_cast<void*>(h);
}
void* find_symbol(void* handle, const char* name) {
    return reinterpret_cast<void*>(GetProcAddress(static_cast<HMODULE>(handle), name));
}
void close_library(void* handle) { FreeLibrary(static_cast<HMODULE>(handle)); }
#else
void* open_library(const std::string& path, std::string* why) {
    // The Python package has usually loaded this very file already (src/sparseinfer/_cuda.py,
    // with NVIDIA's runtime before it): dlopen then returns that same copy.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char* e = dlerror();
        *why = e ? e : "dlopen failed";
    }
    return h;
}
void* find_symbol(void* handle, const char* name) { return dlsym(handle, name); }
void close_library(void* handle) { dlclose(handle); }
#endif

}  // namespace

std::shared_ptr<const Plugin> Plugin::load(const std::string& path) {
    std::shared_ptr<Plugin> p(new Plugin());
    p->path_ = path;
    std::string why;
    p->handle_ = open_library(path, &why);
    if (!p->handle_) throw UnsupportedError("CUDA plugin " + path + " could not be loaded: " + why);
#define SI_GPU_BIND(name)                                                                     \
    p->api_.name = reinterpret_cast<decltype(&::name)>(find_symbol(p->handle_, #name));       \
    if (!p->api_.name) {                                                                      \
        throw UnsupportedError("CUDA plugin " + path + " lacks the entry point " #name        \
                               " (not a sparseinfer CUDA plugin, or another release)");       \
    }
    SI_GPU_ENTRY_POINTS(SI_GPU_BIND)
#undef SI_GPU_BIND
    const int abi = p->api_.si_cuda_abi_version();
    if (abi != SI_CUDA_ABI_VERSION) {
        throw UnsupportedError("CUDA plugin " + path + " speaks ABI " + std::to_string(abi) +
                               " and this sparseinfer speaks " + std::to_string(SI_CUDA_ABI_VERSION) +
                               ": install matching releases");
    }
    return p;
}

Plugin::~Plugin() {
    if (handle_) close_library(handle_);
}

void Plugin::fail(const char* what, int status, const char* message) const {
    std::string text = std::string("CUDA ") + what + " failed: " +
                       (message[0] ? message : "status " + std::to_string(status));
    if (status == kCudaErrorMemoryAllocation) throw OutOfMemoryError(text);
    throw DeviceError(text);
}

Context::Context(std::shared_ptr<const Plugin> plugin, int device)
    : plugin_(std::move(plugin)), device_(device) {
    plugin_->call("context creation", plugin_->api().si_cuda_context_create, device, &ctx_);
}

Context::~Context() { plugin_->api().si_cuda_context_destroy(ctx_); }

void Context::synchronize() const { run("synchronize", api().si_cuda_synchronize); }

void Context::upload(void* dst, const void* src, size_t bytes) const {
    if (bytes) run("upload", api().si_cuda_upload, dst, src, bytes);
}

void Context::download(void* dst, const void* src, size_t bytes) const {
    if (bytes) run("download", api().si_cuda_download, dst, src, bytes);
}

Buffer::Buffer(const Context& ctx, size_t bytes, const char* what) : ctx_(&ctx), bytes_(bytes) {
    const std::string op = std::string("allocation of ") + what;
    ctx.run(op.c_str(), ctx.api().si_cuda_alloc, bytes, &ptr_);
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
    if (this != &other) {
        release();
        ctx_ = std::exchange(other.ctx_, nullptr);
        ptr_ = std::exchange(other.ptr_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
}

void Buffer::release() noexcept {
    // A failure to free (a fault of earlier work) cannot be reported from a destructor; the
    // next call on the context reports it.
    if (ptr_) ctx_->api().si_cuda_free(ctx_->handle(), ptr_, nullptr, 0);
    ptr_ = nullptr;
}

}  // namespace si::gpu
