// Picks the kernel table for this CPU once, from its features; SPARSEINFER_ISA overrides.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common/errors.h"
#include "cpu/kernels.h"

#if defined(SPARSEINFER_X86)
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace si {

#if !defined(SPARSEINFER_X86)
const KernelTable* kernels_avx2() { return nullptr; }
const KernelTable* kernels_avx512() { return nullptr; }
#endif
#if !defined(SPARSEINFER_ARM64)
const KernelTable* kernels_neon() { return nullptr; }
#endif

namespace {

#if defined(SPARSEINFER_X86)
void cpuid(int leaf, int subleaf, unsigned regs[4]) {
#if defined(_MSC_VER)
    int r[4];
    __cpuidex(r, leaf, subleaf);
    for (int i = 0; i < 4; ++i) regs[i] = static_cast<unsigned>(r[i]);
#else
    __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
#endif
}

unsigned long long xgetbv0() {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (static_cast<unsigned long long>(hi) << 32) | lo;
#endif
}

struct X86Features {
    bool avx2 = false;    // AVX2 + FMA + F16C, with the OS saving YMM state
    bool avx512 = false;  // AVX-512 F/BW/VL/DQ, with the OS saving ZMM state
};

X86Features detect_x86() {
    X86Features f;
    unsigned r[4];
    cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    if (max_leaf < 7) return f;
    cpuid(1, 0, r);
    bool osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, fma = (r[2] >> 12) & 1,
         f16c = (r[2] >> 29) & 1;
    if (!osxsave || !avx) return f;
    unsigned long long xcr0 = xgetbv0();
    bool ymm_state = (xcr0 & 0x6) == 0x6;
    bool zmm_state = (xcr0 & 0xe6) == 0xe6;
    cpuid(7, 0, r);
    bool avx2 = (r[1] >> 5) & 1;
    bool avx512f = (r[1] >> 16) & 1, avx512dq = (r[1] >> 17) & 1, avx512bw = (r[1] >> 30) & 1,
         avx512vl = (r[1] >> 31) & 1;
    f.avx2 = ymm_state && avx2 && fma && f16c;
    f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
    return f;
}
#endif

bool cpu_runs(const std::string& isa) {
    if (isa == "generic") return true;
#if defined(SPARSEINFER_X86)
    static const X86Features features = detect_x86();
    if (isa == "avx2") return features.avx2;
    if (isa == "avx512") return features.avx512;
#endif
#if defined(SPARSEINFER_ARM64)
    if (isa == "neon") return true;  // Advanced SIMD is mandatory on AArch64
#endif
    return false;
}

const KernelTable* compiled(const std::string& isa) {
    if (isa == "generic") return kernels_generic();
    if (isa == "avx2") return kernels_avx2();
    if (isa == "avx512") return kernels_avx512();
    if (isa == "neon") return kernels_neon();
    return nullptr;
}

const KernelTable* choose() {
    const char* forced = std::getenv("SPARSEINFER_ISA");
    if (forced && *forced) {
        const KernelTable* k = kernels_for(forced);
        if (!k) {
            throw ArgumentError(std::string("SPARSEINFER_ISA=") + forced +
                                " is not available on this CPU or build");
        }
        return k;
    }
    return kernels_for(available_isas().back());
}

}  // namespace

const KernelTable* kernels_for(const std::string& isa) {
    const KernelTable* k = compiled(isa);
    return k && cpu_runs(isa) ? k : nullptr;
}

std::vector<std::string> available_isas() {
    std::vector<std::string> out;
    for (const char* isa : {"generic", "neon", "avx2", "avx512"}) {
        if (kernels_for(isa)) out.emplace_back(isa);
    }
    return out;
}

const KernelTable& active_kernels() {
    static const KernelTable* table = choose();
    return *table;
}

DType activation_format(DType weight) {
    const DTypeInfo* info = dtype_info(static_cast<uint32_t>(weight));
    return info != nullptr ? info->activation : DType::F32;
}

size_t activation_bytes(DType weight, int64_t n) {
    switch (activation_format(weight)) {
        case DType::Q8_0: return static_cast<size_t>(n / kQK) * sizeof(BlockQ8_0);
        case DType::Q8_1: return static_cast<size_t>(n / kQK) * sizeof(BlockQ8_1);
        case DType::Q8_K: return static_cast<size_t>(n / kQK_K) * sizeof(BlockQ8_K);
        default: return static_cast<size_t>(n) * sizeof(float);
    }
}

namespace {

// kernel, or UnsupportedError naming what is missing.
template <typename Fn>
Fn required(Fn kernel, const char* what, DType weight) {
    if (kernel == nullptr) {
        throw UnsupportedError(std::string("no ") + what + " kernel for " + dtype_name(static_cast<uint32_t>(weight)));
    }
    return kernel;
}

}  // namespace

RowDotFn row_dot(const KernelTable& k, DType weight) { return required(k.of(weight).dot, "dot", weight); }

namespace {

template <typename Block, typename Group>
void interleave_blocks(const uint8_t* rows, size_t row_bytes, int64_t n_blocks, uint8_t* dst) {
    auto* out = reinterpret_cast<Group*>(dst);
    constexpr int kGroups = static_cast<int>(sizeof(Block::qs)) / 4;
    for (int64_t i = 0; i < n_blocks; ++i) {
        for (int j = 0; j < 8; ++j) {
            const auto* b = reinterpret_cast<const Block*>(rows + static_cast<size_t>(j) * row_bytes) + i;
            out[i].d[j] = b->d;
            if constexpr (std::is_same_v<Block, BlockQ4_1>) out[i].m[j] = b->m;
            for (int g = 0; g < kGroups; ++g) std::memcpy(out[i].qs[g][j], b->qs + 4 * g, 4);
        }
    }
}

// Q5_0 and Q5_1: the nibbles as Q4's, the fifth bits of element e of row j (bit e of its qh)
// as bit e / 4 of qh[4 j + e % 4] (BlockQ5_0x8).
template <typename Block, typename Group>
void interleave_q5_blocks(const uint8_t* rows, size_t row_bytes, int64_t n_blocks, uint8_t* dst) {
    auto* out = reinterpret_cast<Group*>(dst);
    for (int64_t i = 0; i < n_blocks; ++i) {
        std::memset(out[i].qh, 0, sizeof(out[i].qh));
        for (int j = 0; j < 8; ++j) {
            const auto* b = reinterpret_cast<const Block*>(rows + static_cast<size_t>(j) * row_bytes) + i;
            out[i].d[j] = b->d;
            if constexpr (std::is_same_v<Block, BlockQ5_1>) out[i].m[j] = b->m;
            for (int g = 0; g < 4; ++g) std::memcpy(out[i].qs[g][j], b->qs + 4 * g, 4);
            uint32_t qh;
            std::memcpy(&qh, b->qh, 4);
            for (int e = 0; e < kQK; ++e) {
                out[i].qh[4 * j + e % 4] |= static_cast<uint8_t>(((qh >> e) & 1) << (e / 4));
            }
        }
    }
}

}  // namespace

void interleave_rows8(DType type, const uint8_t* rows, size_t row_bytes, int64_t n_blocks, uint8_t* dst) {
    switch (type) {
        case DType::Q4_0: interleave_blocks<BlockQ4_0, BlockQ4_0x8>(rows, row_bytes, n_blocks, dst); break;
        case DType::Q4_1: interleave_blocks<BlockQ4_1, BlockQ4_1x8>(rows, row_bytes, n_blocks, dst); break;
        case DType::Q8_0: interleave_blocks<BlockQ8_0, BlockQ8_0x8>(rows, row_bytes, n_blocks, dst); break;
        case DType::Q5_0: interleave_q5_blocks<BlockQ5_0, BlockQ5_0x8>(rows, row_bytes, n_blocks, dst); break;
        case DType::Q5_1: interleave_q5_blocks<BlockQ5_1, BlockQ5_1x8>(rows, row_bytes, n_blocks, dst); break;
        default: throw ArgumentError("interleave_rows8: only Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 rows interleave");
    }
}

RowDot4Fn row_dot4(const KernelTable& k, DType weight) {
    return required(k.of(weight).dot4, "four-token dot", weight);
}

RowAxpyFn row_axpy(const KernelTable& k, DType weight) { return required(k.of(weight).axpy, "axpy", weight); }

GatherDotFn gather_dot(const KernelTable& k, DType weight) {
    return required(k.of(weight).gather_dot, "gathered dot", weight);
}

GatherAxpyFn gather_axpy(const KernelTable& k, DType weight) {
    return required(k.of(weight).gather_axpy, "gathered axpy", weight);
}

void prepare_activation(const KernelTable& k, DType weight, const float* x, void* dst, int64_t n) {
    switch (activation_format(weight)) {
        case DType::Q8_0: k.quantize_q8_0(x, dst, n); return;
        case DType::Q8_1: k.quantize_q8_1(x, dst, n); return;
        case DType::Q8_K: k.quantize_q8_k(x, dst, n); return;
        default: std::memcpy(dst, x, static_cast<size_t>(n) * sizeof(float)); return;
    }
}

}  // namespace si
