// Matrix products of a batch of tokens on a session's thread pool: how the work is cut into
// chunks and shared among the threads, next to the kernels it calls (kernels.h). The forward
// pass (session/) asks for a product; it never splits kernel work itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "tensor/matrix.h"

namespace si {

// A batch's input in the dot formats of the matrices that read it (kernels.h,
// prepare_activation): one slot per format a product may need at once.
class ActivationSlots {
public:
    static constexpr int kSlots = 3;
    // The bytes for n tokens of rows up to `widest` elements (F32, 4 bytes, is the widest format).
    static uint64_t bytes(int64_t n, int64_t widest) { return static_cast<uint64_t>(kSlots) * n * widest * 4; }
    void reserve(int64_t n, int64_t widest) {
        data_.assign(static_cast<size_t>(bytes(n, widest)), 0);
        for (Held& held : held_) held = {};
    }

    // x (n rows of w.cols floats) in the format w's dots read, one row of `stride` bytes per
    // token, in slot `slot`; converted only when `convert`, else the slot must hold that
    // already: the same x, n and format converted by an earlier call (checked: a caller that
    // reuses a slot another product has overwritten gets an error, not wrong results).
    struct Prepared {
        uint8_t* data;
        size_t stride;
    };
    Prepared prepare(const KernelTable& kernels, const Matrix& w, const float* x, int64_t n, int slot, bool convert);

private:
    struct Held {  // what a slot holds
        const float* x = nullptr;
        int64_t n = 0, cols = 0;
        DType format = DType::F32;
    };
    std::vector<uint8_t> data_;
    Held held_[kSlots];
};

// y[t] = W x[t] for t < n for each (W, y) of one call, all in one job for the pool; the
// matrices share the input length.
struct MatmulOutput {
    const Matrix* w;
    float* y;
};
constexpr int kMaxMatmulOutputs = ActivationSlots::kSlots;
void matmul(ThreadPool& pool, const KernelTable& kernels, ActivationSlots& slots,
            std::initializer_list<MatmulOutput> outputs, const float* x, int64_t n);

}  // namespace si
