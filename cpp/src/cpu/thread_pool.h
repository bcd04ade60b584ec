// A persistent pool of worker threads for one session (no OpenMP). run() hands the same job
// to every thread, the caller included, and returns when all have finished. Workers spin
// briefly between jobs (a decode step issues a few hundred jobs, so waking through the
// kernel each time would cost more than the work), then sleep on a condition variable.
//
// The sessions of a process share its cores through CoreShare: while another session
// computes, a session runs its jobs on the cores still free (at least one) and its idle
// workers sleep at once, instead of every session spinning a pool of all the cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace si {

class ThreadPool {
public:
    // Throws OutOfMemoryError when the system refuses a thread (none is left running then),
    // ArgumentError for more threads than a job word holds (65535).
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    // How many of its threads run() uses now (size() unless a CoreShare narrowed it).
    int width() const { return width_.load(std::memory_order_relaxed); }
    // Calls job(thread_index, width()) on the first width() threads; index 0 is the calling
    // thread. The split of the work must not change a result (the engine's results are the
    // same bits for any thread count).
    void run(const std::function<void(int, int)>& job);

    // The half-open range of [0, n) that thread `index` of `count` owns (contiguous, balanced).
    static void split(int64_t n, int index, int count, int64_t* begin, int64_t* end);

private:
    friend class CoreShare;
    void worker_loop(int index);
    // Whether idle worker `index` should sleep now rather than spin: another session computes
    // while this pool holds no share, or the pool's share leaves this worker out.
    bool yield_cores(int index) const;
    // A job's generation and width travel in one word, so that a worker never pairs one
    // job's generation with another's width.
    static constexpr int kWidthBits = 16;
    static int width_of(uint64_t generation) {
        return static_cast<int>(generation & ((uint64_t{1} << kWidthBits) - 1));
    }
    // Wakes the workers to end and joins them.
    void stop_workers();

    int n_threads_;
    std::vector<std::thread> workers_;
    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<int> width_;  // read by idle workers; set by CoreShare
    std::atomic<uint64_t> generation_{0};  // jobs issued << kWidthBits | the job's width
    std::atomic<int> unfinished_{0};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stopping_{false};
    std::atomic<bool> sharing_{false};  // a CoreShare holds cores for this pool
    std::mutex mutex_;
    // Per worker, under mutex_: whether it sleeps, and what wakes it (run() wakes only the
    // workers a job needs).
    std::unique_ptr<std::condition_variable[]> wakes_;
    std::unique_ptr<bool[]> asleep_;
};

// For its lifetime, the cores a pool computes on, out of the process's (the logical CPUs its
// affinity allows; the default thread count is the physical cores, so two default sessions on
// an SMT machine fit side by side): all of its threads when no other session holds any, else
// the ones still free up to an even split, at least one, so that nobody waits. Taking and
// giving back are a few atomic operations. A child made by fork() starts with every core free.
class CoreShare {
public:
    explicit CoreShare(ThreadPool& pool);
    ~CoreShare();
    CoreShare(const CoreShare&) = delete;
    CoreShare& operator=(const CoreShare&) = delete;

    // For tests: how the process's cores are shared out.
    struct Stats {
        int capacity;       // the CPUs the process may run on
        int in_use;         // held by shares now
        uint64_t shares;    // shares taken
        uint64_t narrowed;  // shares that got fewer cores than their pool has threads
    };
    static Stats stats();

private:
    ThreadPool& pool_;
    int cores_;
};

}  // namespace si
