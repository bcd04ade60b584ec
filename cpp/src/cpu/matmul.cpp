#include "cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "common/errors.h"

namespace si {

namespace {

// Weight bytes a batched matrix product keeps hot while every token group passes over them
// (about half a core's L2 on current x86 and Arm cores).
constexpr size_t kMatmulChunkBytes = 256 * 1024;
// Chunks per thread a matrix product is cut into at least, so that the threads finish together.
constexpr uint64_t kMatmulChunksPerThread = 4;

// One matrix of a matmul call: its rows times the batch's prepared activations.
struct MatmulJob {
    const Matrix* w;
    float* y;
    const uint8_t* act;
    size_t stride;
    RowDotFn dot;
    RowDot4Fn dot4;
    Rows8DotFn rows8;   // set for an interleaved matrix (tensor/matrix.h) split in groups of eight
    Rows4DotFn rows4;   // four float rows at a time, where the level has it
};

// y[t][r] for rows [r0, r1) of the job and tokens [0, n): token groups of four pass over the
// rows in turn, with the fastest kernel the matrix has. No software prefetching: every kernel
// here reads its rows in address order, which the hardware prefetchers follow, and prefetch
// instructions on top measured slower (a matrix-vector product from DRAM, 2 threads, Zen 4:
// interleaved Q4_0 26.7 GB/s without against 15.6 with, Q4_0 rows one by one 21.0 against 19.2).
void multiply_rows(const MatmulJob& job, int64_t r0, int64_t r1, int64_t n) {
    const Matrix& w = *job.w;
    auto tokens_from = [n](int64_t t) { return static_cast<int>(std::min<int64_t>(4, n - t)); };
    if (job.rows8 != nullptr) {
        for (int64_t t = 0; t < n; t += 4) {
            for (int64_t r = r0; r < r1; r += 8) {
                job.rows8(w.cols, w.interleaved + static_cast<size_t>(r) * w.row_bytes, job.act + t * job.stride,
                          job.stride, tokens_from(t), job.y + t * w.rows + r, w.rows);
            }
        }
        return;
    }
    if (job.rows4 != nullptr) {
        // One token goes row by row (the four-row kernel gives a row what it gives it alone):
        // four adjacent rows at a time are four short interleaved streams, which the hardware
        // prefetchers follow badly (an F16 matrix-vector product from DRAM: 18.6 GB/s against
        // 30.2 row by row). A batch takes four rows at a time, from L2 after its first pass.
        const int64_t rows_per_call = n == 1 ? 1 : 4;
        for (int64_t t = 0; t < n; t += 4) {
            for (int64_t r = r0; r < r1; r += rows_per_call) {
                job.rows4(w.cols, w.row(r), w.stride, static_cast<int>(std::min(rows_per_call, r1 - r)),
                          job.act + t * job.stride, job.stride, tokens_from(t), job.y + t * w.rows + r, w.rows);
            }
        }
        return;
    }
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        for (int64_t r = r0; r < r1; ++r) {
            float out[4];
            job.dot4(w.cols, w.row(r), job.act + t * job.stride, job.stride, out);
            for (int k = 0; k < 4; ++k) job.y[(t + k) * w.rows + r] = out[k];
        }
    }
    for (; t < n; ++t) {
        for (int64_t r = r0; r < r1; ++r) job.y[t * w.rows + r] = job.dot(w.cols, w.row(r), job.act + t * job.stride);
    }
}

}  // namespace

ActivationSlots::Prepared ActivationSlots::prepare(const KernelTable& kernels, const Matrix& w, const float* x,
                                                   int64_t n, int slot, bool convert) {
    const size_t slot_bytes = data_.size() / kSlots;
    Prepared in{data_.data() + static_cast<size_t>(slot) * slot_bytes, activation_bytes(w.type, w.cols)};
    const Held wanted{x, n, w.cols, activation_format(w.type)};
    Held& held = held_[slot];
    if (convert) {
        for (int64_t t = 0; t < n; ++t) {
            prepare_activation(kernels, w.type, x + t * w.cols, in.data + t * in.stride, w.cols);
        }
        held = wanted;
    } else if (held.x != wanted.x || held.n < wanted.n || held.cols != wanted.cols || held.format != wanted.format) {
        throw Error("internal error: activation slot " + std::to_string(slot) + " does not hold the input asked for");
    }
    return in;
}

void matmul(ThreadPool& pool, const KernelTable& kernels, ActivationSlots& slots,
            std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n) {
    // Quantise x once per dot format the weights need (the formats differ only when the
    // matrices' types do), then cut the matrices' rows into chunks, each dotted with every
    // group of four tokens before the next: the chunk stays in L2 and a token group's
    // activations in L1, instead of every row streaming all the batch's activations. The
    // threads take the next chunk left, so a thread that memory serves more slowly holds no
    // other up at the end; interleaved matrices (tensor/matrix.h) go in groups of eight rows.
    MatmulJob jobs[kMaxMatmulOutputs];
    DType prepared_formats[kMaxMatmulOutputs];
    int n_jobs = 0, n_formats = 0;
    uint64_t total_bytes = 0;
    for (const MatmulOutput& out : outputs) {
        const DType format = activation_format(out.w->type);
        int slot = 0;
        while (slot < n_formats && prepared_formats[slot] != format) ++slot;
        const bool fresh = slot == n_formats;
        if (fresh) prepared_formats[n_formats++] = format;
        const ActivationSlots::Prepared in = slots.prepare(kernels, *out.w, x, n, slot, fresh);
        MatmulJob& job = jobs[n_jobs++];
        job.w = out.w;
        job.y = out.y;
        job.act = in.data;
        job.stride = in.stride;
        job.dot = row_dot(kernels, out.w->type);
        job.dot4 = row_dot4(kernels, out.w->type);
        job.rows8 = out.w->interleaved != nullptr && out.w->rows % 8 == 0 ? rows8_dot(kernels, out.w->type) : nullptr;
        // Decoding too: a token's result must not depend on the batch (kernels.h).
        job.rows4 = rows4_dot(kernels, out.w->type);
        total_bytes += static_cast<uint64_t>(out.w->rows) * out.w->row_bytes;
    }
    // Chunks of at most kMatmulChunkBytes, and at least kMatmulChunksPerThread per thread.
    const uint64_t least_chunks = static_cast<uint64_t>(pool.width()) * kMatmulChunksPerThread;
    const uint64_t chunk_bytes =
        std::max<uint64_t>(1, std::min<uint64_t>(kMatmulChunkBytes, total_bytes / least_chunks));
    int64_t chunk_rows[kMaxMatmulOutputs], first_chunk[kMaxMatmulOutputs + 1] = {0};
    for (int j = 0; j < n_jobs; ++j) {
        const int64_t unit = jobs[j].rows8 != nullptr ? 8 : 1;
        chunk_rows[j] = std::max<int64_t>(unit, static_cast<int64_t>(chunk_bytes / jobs[j].w->row_bytes) / unit * unit);
        first_chunk[j + 1] = first_chunk[j] + (jobs[j].w->rows + chunk_rows[j] - 1) / chunk_rows[j];
    }
    std::atomic<int64_t> next_chunk{0};
    pool.run([&](int, int) {
        for (int64_t c; (c = next_chunk.fetch_add(1, std::memory_order_relaxed)) < first_chunk[n_jobs];) {
            int j = 0;
            while (c >= first_chunk[j + 1]) ++j;
            const int64_t r0 = (c - first_chunk[j]) * chunk_rows[j];
            multiply_rows(jobs[j], r0, std::min(jobs[j].w->rows, r0 + chunk_rows[j]), n);
        }
    });
}

}  // namespace si
