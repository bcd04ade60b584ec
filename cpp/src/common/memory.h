// How much memory this machine has, so that a request that can never fit (a context of a
// million tokens, a hostile file's tensor sizes) fails with the numbers before allocating,
// instead of in the allocator or the OS's out-of-memory killer.
#pragma once

#include <cstdint>
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

}  // namespace si
