// How much memory this machine has, so that a request that can never fit (a context of a
// million tokens, a hostile file's tensor sizes) fails with the numbers before allocating,
// instead of in the allocator or the OS's out-of-memory killer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace si {

// Physical memory of the machine in bytes; 0 when the OS does not say.
uint64_t physical_memory_bytes();

// The process's address-space limit (ulimit -v, RLIMIT_AS) in bytes; 0 when unlimited or
// the OS has none.
uint64_t address_space_limit_bytes();

// Throws OutOfMemoryError naming `what` when `bytes` exceeds the machine's physical memory
// (swap is not counted: inference from swap is too slow to be what anyone asked for) or the
// process's address-space limit.
void require_memory(const std::string& what, uint64_t bytes);

// Memory for weights a model copies at load (bundled, interleaved, requantised): uninitialised,
// aligned to 2 MiB and, on Linux, advised to be backed by transparent huge pages. Rows gathered
// from all over such a copy then cost far fewer TLB misses (the sparse FFN's gathered rows
// from DRAM, Zen 4: 15.8 -> 18.0 GB/s). Throws OutOfMemoryError naming `what` when the
// allocation fails.
class WeightBuffer {
public:
    WeightBuffer(size_t bytes, const std::string& what);
    uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    std::unique_ptr<uint8_t[]> storage_;
    uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

// Zeroed memory that holds pages only as they are first written: calloc of a large block takes
// fresh pages from the OS (glibc and the BSDs map them; Windows commits but does not touch
// them), which zeroes them when they are first touched (a KV cache zero-filled at once took
// all of n_ctx's memory before the first token: n_ctx=200000 on a 1B model, 4.8 GB). Throws
// OutOfMemoryError naming `what` when the allocation fails.
class ZeroedBuffer {
public:
    ZeroedBuffer() = default;
    ZeroedBuffer(size_t bytes, const std::string& what);
    uint8_t* data() const { return static_cast<uint8_t*>(storage_.get()); }

private:
    struct Free {
        void operator()(void* p) const;
    };
    std::unique_ptr<void, Free> storage_;
};

}  // namespace si
