#include "common/memory.h"

#include <cstdio>
#include <cstdlib>

#include "common/errors.h"

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#define NOMINMAX
#include <windows.h>
#else
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#endif

#include <new>

namespace si {

uint64_t physical_memory_bytes() {
#if defined(_WIN32)
    MEMORYSTATUSEX status{};
    status.dwLength = sizeof(status);
    return GlobalMemoryStatusEx(&status) ? static_cast<uint64_t>(status.ullTotalPhys) : 0;
#else
    // _SC_PHYS_PAGES is not POSIX but Linux, macOS and the BSDs all answer it.
    const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0) return 0;
    return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
#endif
}

uint64_t address_space_limit_bytes() {
#if defined(_WIN32)
    return 0;
#else
    struct rlimit limit {};
    if (getrlimit(RLIMIT_AS, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return 0;
    return static_cast<uint64_t>(limit.rlim_cur);
#endif
}

void require_memory(const std::string& what, uint64_t bytes) {
    auto gib = [](uint64_t b) { return static_cast<double>(b) / (1u << 30); };
    char message[160];
    const uint64_t physical = physical_memory_bytes(), address_space = address_space_limit_bytes();
    if (physical != 0 && bytes > physical) {
        std::snprintf(message, sizeof(message), " needs %.2f GiB and this machine has %.2f GiB of memory",
                      gib(bytes), gib(physical));
        throw OutOfMemoryError(what + message);
    }
    if (address_space != 0 && bytes > address_space) {
        std::snprintf(message, sizeof(message),
                      " needs %.2f GiB and this process may use %.2f GiB (its address-space limit)",
                      gib(bytes), gib(address_space));
        throw OutOfMemoryError(what + message);
    }
}

WeightBuffer::WeightBuffer(size_t bytes, const std::string& what) : size_(bytes) {
    constexpr size_t kAlignment = size_t{2} << 20;  // a huge page on x86-64 and most Arm kernels
    if (bytes > SIZE_MAX - kAlignment) throw OutOfMemoryError(what + " cannot be allocated");
    storage_.reset(new (std::nothrow) uint8_t[bytes + kAlignment]);
    if (!storage_) throw OutOfMemoryError(what + ": the allocation of " + std::to_string(bytes) + " bytes failed");
    const uintptr_t start = reinterpret_cast<uintptr_t>(storage_.get());
    data_ = storage_.get() + ((kAlignment - start % kAlignment) % kAlignment);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Advice only: where transparent huge pages are off, the copy simply uses small pages.
    if (bytes >= kAlignment) madvise(data_, bytes - bytes % kAlignment, MADV_HUGEPAGE);
#endif
}

ZeroedBuffer::ZeroedBuffer(size_t bytes, const std::string& what) : storage_(std::calloc(bytes, 1)) {
    if (!storage_ && bytes > 0) {
        throw OutOfMemoryError(what + ": the allocation of " + std::to_string(bytes) + " bytes failed");
    }
}

void ZeroedBuffer::Free::operator()(void* p) const { std::free(p); }

}  // namespace si
