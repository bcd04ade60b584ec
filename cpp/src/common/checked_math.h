// Overflow-checked size arithmetic for everything derived from untrusted file contents.
#pragma once

#include <cstdint>
#include <limits>

namespace si {

// Each returns false on overflow and leaves *out unspecified.
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
    if (a > std::numeric_limits<uint64_t>::max() - b) return false;
    *out = a + b;
    return true;
}

inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
    if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
    *out = a * b;
    return true;
}

}  // namespace si
