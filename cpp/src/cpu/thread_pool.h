// A persistent pool of worker threads for one session (no OpenMP). run() hands the same job
// to every thread, the caller included, and returns when all have finished. Workers spin
// briefly between jobs (a decode step issues a few hundred jobs, so waking through the
// kernel each time would cost more than the work), then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace si {

class ThreadPool {
public:
    // Throws OutOfMemoryError when the system refuses a thread (none is left running then).
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    // Calls job(thread_index, n_threads) on every thread; index 0 is the calling thread.
    void run(const std::function<void(int, int)>& job);

    // The half-open range of [0, n) that thread `index` of `count` owns (contiguous, balanced).
    static void split(int64_t n, int index, int count, int64_t* begin, int64_t* end);

private:
    void worker_loop(int index);
    // Wakes the workers to end and joins them.
    void stop_workers();

    int n_threads_;
    std::vector<std::thread> workers_;
    const std::function<void(int, int)>* job_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> unfinished_{0};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stopping_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
};

}  // namespace si
