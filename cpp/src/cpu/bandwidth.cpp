#include "cpu/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "common/errors.h"
#include "common/memory.h"
#include "cpu/thread_pool.h"

namespace si {

namespace {

// Four independent sums, so the loop is bound by loads, not by one chain of additions.
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; ++i) s0 += p[i];
    return s0 + s1 + s2 + s3;
}

}  // namespace

double measure_read_bandwidth(size_t bytes, int n_threads, int repeats) {
    if (bytes < (1u << 20) || n_threads < 1 || repeats < 1) {
        throw ArgumentError("measure_read_bandwidth needs at least 1 MiB, one thread and one pass");
    }
    require_memory("a buffer for measuring the memory bandwidth", bytes);
    const size_t words = bytes / sizeof(uint64_t);
    std::vector<uint64_t> buffer(words);
    for (size_t i = 0; i < words; ++i) buffer[i] = i;
    ThreadPool pool(n_threads);
    std::vector<uint64_t> sums(static_cast<size_t>(pool.size()));
    auto pass = [&](int ith, int nth) {
        int64_t begin, end;
        ThreadPool::split(static_cast<int64_t>(words), ith, nth, &begin, &end);
        sums[static_cast<size_t>(ith)] = sum_words(buffer.data() + begin, static_cast<size_t>(end - begin));
    };
    pool.run(pass);  // wakes the workers and warms the TLB
    double best = 0.0;
    for (int r = 0; r < repeats; ++r) {
        const auto start = std::chrono::steady_clock::now();
        pool.run(pass);
        const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
        best = std::max(best, static_cast<double>(words * sizeof(uint64_t)) / seconds.count());
    }
    // The sums go somewhere the compiler cannot see through, so no read is optimised away.
    static volatile uint64_t sink;
    for (uint64_t s : sums) sink = sink + s;
    return best;
}

}  // namespace si
