// Asks the CPU to start loading a block of memory that will be read soon. The sparse FFN
// reads weight rows at scattered addresses, which the hardware prefetchers cannot guess.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#endif

namespace si {

inline void prefetch_bytes(const void* p, size_t bytes) {
    const char* c = static_cast<const char*>(p);
    for (size_t offset = 0; offset < bytes; offset += 64) {
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(c + offset);
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
        _mm_prefetch(c + offset, _MM_HINT_T0);
#else
        (void)c;
#endif
    }
}

}  // namespace si
