// How fast this machine streams memory. Decoding reads each weight it uses once per token, so
// this is its ceiling: benchmarks measure it in the same run as the engines they time and
// report each engine's bytes per token against it.
#pragma once

#include <cstddef>

namespace si {

// Bytes per second at which n_threads threads read a buffer of `bytes` (allocated and
// written first, so every page is mapped), each thread streaming its own contiguous share:
// the best of `repeats` passes.
double measure_read_bandwidth(size_t bytes, int n_threads, int repeats);

}  // namespace si
