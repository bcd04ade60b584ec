#include "cpu/thread_pool.h"

#include <chrono>
#include <string>
#include <system_error>

#include "common/errors.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include <immintrin.h>
#define SI_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__) && !defined(_MSC_VER)
#define SI_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SI_CPU_RELAX() std::this_thread::yield()
#endif

namespace si {

namespace {

// How long an idle worker spins before it sleeps: long enough to bridge the gaps between
// the jobs of one forward pass, short enough not to burn a core between user calls.
constexpr auto kSpinTime = std::chrono::milliseconds(2);
// Pause instructions between yields while spinning.
constexpr unsigned kSpinsBeforeYield = 256;

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    workers_.reserve(static_cast<size_t>(n_threads_ - 1));
    for (int i = 1; i < n_threads_; ++i) {
        try {
            workers_.emplace_back([this, i] { worker_loop(i); });
        } catch (const std::system_error& e) {
            // The system refused a thread (a process or address-space limit): the ones
            // started so far must be joined here, or destroying them would end the process.
            stop_workers();
            throw OutOfMemoryError("could not start thread " + std::to_string(i + 1) + " of " +
                                   std::to_string(n_threads_) + " (" + e.what() +
                                   "): use fewer threads (n_threads)");
        }
    }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_.store(true);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
}

void ThreadPool::split(int64_t n, int index, int count, int64_t* begin, int64_t* end) {
    *begin = n * index / count;
    *end = n * (index + 1) / count;
}

void ThreadPool::run(const std::function<void(int, int)>& job) {
    if (n_threads_ == 1) {
        job(0, 1);
        return;
    }
    job_ = &job;
    unfinished_.store(n_threads_ - 1);
    generation_.fetch_add(1);  // seq_cst: pairs with the sleeping_ check below
    if (sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
    }
    job(0, n_threads_);
    // Spin for the stragglers, but give the core away now and then: when the machine is
    // oversubscribed a worker may be waiting for exactly this core.
    for (unsigned spins = 1; unfinished_.load(std::memory_order_acquire) != 0; ++spins) {
        if (spins % kSpinsBeforeYield == 0) {
            std::this_thread::yield();
        } else {
            SI_CPU_RELAX();
        }
    }
    job_ = nullptr;
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        auto spin_start = std::chrono::steady_clock::now();
        unsigned spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen && !stopping_.load()) {
            if (++spins % kSpinsBeforeYield == 0) {
                std::this_thread::yield();
            } else {
                SI_CPU_RELAX();
            }
            if (spins % 1024 == 0 && std::chrono::steady_clock::now() - spin_start > kSpinTime) {
                std::unique_lock<std::mutex> lock(mutex_);
                sleeping_.fetch_add(1);  // seq_cst: run() sees it, or we see its generation
                wake_.wait(lock, [&] { return generation_.load() != seen || stopping_.load(); });
                sleeping_.fetch_sub(1);
                break;
            }
        }
        if (stopping_.load()) return;
        seen = generation_.load(std::memory_order_acquire);
        (*job_)(index, n_threads_);
        unfinished_.fetch_sub(1, std::memory_order_release);
    }
}

}  // namespace si
