#include "cpu/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <system_error>

#include "common/errors.h"

#if defined(__linux__)
#include <sched.h>
#endif
#if !defined(_WIN32)
#include <pthread.h>
#endif

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

// The CPUs this process may run on (its affinity mask where the system has one).
int usable_cpus() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

// The process's cores held by CoreShares, the shares that hold them, and counts for
// CoreShare::stats().
std::atomic<int> g_cores_in_use{0};
std::atomic<int> g_shares_held{0};
std::atomic<uint64_t> g_shares{0}, g_narrowed{0};

// In a child made by fork() only the forking thread lives on: what the parent's other
// threads held is not the child's to wait for.
void free_cores_in_child() {
    g_cores_in_use.store(0);
    g_shares_held.store(0);
}

int core_capacity() {
    static const int capacity = [] {
#if !defined(_WIN32)
        pthread_atfork(nullptr, nullptr, free_cores_in_child);
#endif
        return usable_cpus();
    }();
    return capacity;
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads), width_(n_threads_) {
    constexpr int kMaxThreads = (1 << kWidthBits) - 1;
    if (n_threads_ > kMaxThreads) {
        throw ArgumentError("n_threads must be at most " + std::to_string(kMaxThreads) + ", got " +
                            std::to_string(n_threads_));
    }
    wakes_ = std::make_unique<std::condition_variable[]>(static_cast<size_t>(n_threads_));
    asleep_ = std::make_unique<bool[]>(static_cast<size_t>(n_threads_));  // all false
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
    for (int i = 1; i < n_threads_; ++i) wakes_[i].notify_one();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
}

void ThreadPool::split(int64_t n, int index, int count, int64_t* begin, int64_t* end) {
    *begin = n * index / count;
    *end = n * (index + 1) / count;
}

void ThreadPool::run(const std::function<void(int, int)>& job) {
    const int width = width_.load(std::memory_order_relaxed);
    if (width == 1) {
        job(0, 1);
        return;
    }
    job_ = &job;
    unfinished_.store(width - 1);
    // seq_cst: pairs with the sleeping_ check below. The count of jobs issued rises by one
    // in the bits above the width.
    const uint64_t issued = generation_.load(std::memory_order_relaxed) >> kWidthBits;
    generation_.store((issued + 1) << kWidthBits | static_cast<uint64_t>(width));
    if (sleeping_.load() > 0) {  // wake the sleepers this job needs, and only those
        std::lock_guard<std::mutex> lock(mutex_);
        for (int i = 1; i < width; ++i) {
            if (asleep_[i]) wakes_[i].notify_one();
        }
    }
    job(0, width);
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

bool ThreadPool::yield_cores(int index) const {
    return index >= width_.load(std::memory_order_relaxed) ||
           (!sharing_.load(std::memory_order_relaxed) && g_cores_in_use.load(std::memory_order_relaxed) > 0);
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    bool idle = false;  // the last job was too narrow for this worker: sleep at once
    for (;;) {
        auto spin_start = std::chrono::steady_clock::now();
        unsigned spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen && !stopping_.load()) {
            if (!idle && ++spins % kSpinsBeforeYield != 0) {
                SI_CPU_RELAX();
                continue;
            }
            if (!idle && !yield_cores(index) && std::chrono::steady_clock::now() - spin_start <= kSpinTime) {
                std::this_thread::yield();
                continue;
            }
            std::unique_lock<std::mutex> lock(mutex_);
            asleep_[index] = true;
            sleeping_.fetch_add(1);  // seq_cst: run() sees it, or we see its generation
            // Until a job that needs this worker (a narrower one passes it by, asleep).
            wakes_[index].wait(lock, [&] {
                const uint64_t latest = generation_.load();
                return (latest != seen && index < width_of(latest)) || stopping_.load();
            });
            sleeping_.fetch_sub(1);
            asleep_[index] = false;
            break;
        }
        if (stopping_.load()) return;
        seen = generation_.load(std::memory_order_acquire);
        const int width = width_of(seen);
        idle = index >= width;
        if (idle) continue;
        (*job_)(index, width);
        unfinished_.fetch_sub(1, std::memory_order_release);
    }
}

CoreShare::CoreShare(ThreadPool& pool) : pool_(pool) {
    const int capacity = core_capacity(), wanted = pool.size();
    // Marked before the cores are counted, so that its own idle workers never take them for
    // another session's and fall asleep between two layers.
    pool_.sharing_.store(true, std::memory_order_relaxed);
    // Alone, a pool gets what it asked for; beside others, what is free up to an even split
    // of the cores, so that sessions that keep computing converge on equal shares.
    const int others = g_shares_held.fetch_add(1, std::memory_order_relaxed);
    const int even_split = std::max(1, capacity / (others + 1));
    int in_use = g_cores_in_use.load(std::memory_order_relaxed);
    do {
        cores_ = in_use == 0 && others == 0 ? wanted : std::clamp(std::min(capacity - in_use, even_split), 1, wanted);
    } while (!g_cores_in_use.compare_exchange_weak(in_use, in_use + cores_, std::memory_order_relaxed));
    pool_.width_.store(cores_, std::memory_order_relaxed);
    g_shares.fetch_add(1, std::memory_order_relaxed);
    if (cores_ < wanted) g_narrowed.fetch_add(1, std::memory_order_relaxed);
}

CoreShare::~CoreShare() {
    g_cores_in_use.fetch_sub(cores_, std::memory_order_relaxed);
    g_shares_held.fetch_sub(1, std::memory_order_relaxed);
    pool_.width_.store(pool_.size(), std::memory_order_relaxed);
    pool_.sharing_.store(false, std::memory_order_relaxed);
}

CoreShare::Stats CoreShare::stats() {
    return {core_capacity(), g_cores_in_use.load(), g_shares.load(), g_narrowed.load()};
}

}  // namespace si
