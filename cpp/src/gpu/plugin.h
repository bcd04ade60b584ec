// The CUDA plugin seen from the engine: the library loaded by path at run time, its entry
// points in a table, and RAII handles for a device context and device buffers.
//
// The core never links CUDA or the plugin: plugin_api.h is included for its types and
// prototypes only (decltype of each entry point gives the table's pointer types), and every
// entry point is looked up by name (dlsym / GetProcAddress). Every failing call throws an
// si::Error with the plugin's message: OutOfMemoryError when the device is out of memory,
// DeviceError otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/errors.h"
#include "cuda_abi/plugin_api.h"

namespace si::gpu {

// A plugin call failed (a CUDA error, a bad argument, a kernel's index out of range).
struct DeviceError : Error {
    using Error::Error;
};

// Every entry point of plugin_api.h, as X(name).
#define SI_GPU_ENTRY_POINTS(X)                                                           \
    X(si_cuda_abi_version) X(si_cuda_build_info) X(si_cuda_versions)                     \
    X(si_cuda_device_count) X(si_cuda_device_name) X(si_cuda_device_props)               \
    X(si_cuda_self_test) X(si_cuda_context_create) X(si_cuda_context_destroy)            \
    X(si_cuda_synchronize) X(si_cuda_memory_info) X(si_cuda_alloc) X(si_cuda_free)       \
    X(si_cuda_upload) X(si_cuda_copy) X(si_cuda_download) X(si_cuda_memset)               \
    X(si_cuda_matmul) X(si_cuda_matmul_rows) X(si_cuda_rms_norm) X(si_cuda_layer_norm)    \
    X(si_cuda_add_bias) X(si_cuda_rope) X(si_cuda_attention) X(si_cuda_add)               \
    X(si_cuda_activate) X(si_cuda_ffn_predict) X(si_cuda_ffn_select) X(si_cuda_ffn_gate_up) \
    X(si_cuda_ffn_down)

struct PluginApi {
#define SI_GPU_POINTER(name) decltype(&::name) name = nullptr;
    SI_GPU_ENTRY_POINTS(SI_GPU_POINTER)
#undef SI_GPU_POINTER
};

class Plugin {
public:
    // Loads the library at `path` and binds every entry point. Throws UnsupportedError when
    // the file cannot be loaded, lacks an entry point or speaks another ABI version.
    static std::shared_ptr<const Plugin> load(const std::string& path);
    ~Plugin();
    Plugin(const Plugin&) = delete;
    Plugin& operator=(const Plugin&) = delete;

    const PluginApi& api() const { return api_; }
    const std::string& path() const { return path_; }

    // Calls a fallible entry point with (err, err_len) appended; throws on a nonzero status.
    // `what` names the operation in the message.
    template <class Fn, class... Args>
    void call(const char* what, Fn fn, Args... args) const {
        char err[kErrLen] = {0};
        const int status = fn(args..., err, sizeof err);
        if (status != 0) fail(what, status, err);
    }

private:
    static constexpr size_t kErrLen = 512;
    Plugin() = default;
    [[noreturn]] void fail(const char* what, int status, const char* message) const;

    void* handle_ = nullptr;
    std::string path_;
    PluginApi api_;
};

// A context on one device: its stream, on which every call below runs in order.
class Context {
public:
    Context(std::shared_ptr<const Plugin> plugin, int device);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    const Plugin& plugin() const { return *plugin_; }
    const PluginApi& api() const { return plugin_->api(); }
    si_cuda_context* handle() const { return ctx_; }
    int device() const { return device_; }

    // Calls a kernel entry point: the context goes first, (err, err_len) last.
    template <class Fn, class... Args>
    void run(const char* what, Fn fn, Args... args) const {
        plugin_->call(what, fn, ctx_, args...);
    }
    void synchronize() const;
    void upload(void* dst, const void* src, size_t bytes) const;
    void download(void* dst, const void* src, size_t bytes) const;

private:
    std::shared_ptr<const Plugin> plugin_;
    si_cuda_context* ctx_ = nullptr;
    int device_ = 0;
};

// A device buffer of a context (freed with it); move-only. The context must outlive it.
class Buffer {
public:
    Buffer() = default;
    Buffer(const Context& ctx, size_t bytes, const char* what);
    ~Buffer() { release(); }
    Buffer(Buffer&& other) noexcept { *this = std::move(other); }
    Buffer& operator=(Buffer&& other) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    void* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }
    float* f32() const { return static_cast<float*>(ptr_); }
    template <class T>
    T* as() const { return static_cast<T*>(ptr_); }

private:
    void release() noexcept;
    const Context* ctx_ = nullptr;
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

}  // namespace si::gpu
