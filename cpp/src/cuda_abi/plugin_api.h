// The C ABI of the CUDA plugin (libsparseinfer_cuda.so / sparseinfer_cuda.dll): the contract
// between the engine's host code (gpu/, which includes it for its types and prototypes only)
// and the plugin (cuda/, which implements it). It sits in a folder of its own so that each
// side includes it without depending on the other.
//
// The plugin is a separate shared library, loaded at run time by the Python package
// (src/sparseinfer/_cuda.py) when it is installed (the sparseinfer-cuda12 distribution) or
// built into the package from source (-DSPARSEINFER_CUDA=ON). Only plain C types cross this
// boundary, so the plugin and the core can come from different compilers and releases; the
// core refuses a plugin whose si_cuda_abi_version() differs from the one it was written for.
//
// Conventions: functions that can fail return 0 on success and a nonzero status otherwise
// (the CUDA error code where there is one, SI_CUDA_ERROR_ARGUMENT or SI_CUDA_ERROR_INDEX
// otherwise) and write a NUL-terminated message of at most err_len bytes (including the NUL)
// into err when err is not null. No function throws, exits or prints.
//
// Device memory and work (since ABI 2): a context (si_cuda_context_create) owns one device and one
// CUDA stream. Buffers are plain device addresses from si_cuda_alloc (256-byte aligned); a
// caller may hand out pieces of one buffer at offsets that keep the alignment an entry point
// asks for. Every operation of a context runs on its stream in call order. The kernel entry
// points only enqueue work: a failed launch is reported at once, a fault inside a kernel at
// the next si_cuda_synchronize or si_cuda_download, which also report an index that a kernel
// found out of range (a row id, a candidate id or a count; such a kernel skips that entry).
// In the kernel entry points every buffer is a device address and every size a host value,
// except the `count` arguments: a device int32, so that a list built on the device needs no
// copy to the host. A context is used by one thread at a time.
//
// Layouts: matrices are GGUF rows (row r of a matrix of `cols` columns is the r-th run of
// row_bytes(type, cols) bytes; weight types by their ggml ids: SI_CUDA_TYPE_*); activations
// are float32 rows, token after token ([token][value]).
#pragma once

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define SI_CUDA_API __declspec(dllexport)
#else
#define SI_CUDA_API __attribute__((visibility("default")))
#endif

#define SI_CUDA_ABI_VERSION 5

// Sizes of the plugin's own device scratch (si_cuda_ffn_down).
#define SI_CUDA_DOWN_SLICE_ROWS 256
#define SI_CUDA_DOWN_SLICE_TOKENS 8

// Weight types the kernels read: ggml's type ids (cpp/src/tensor/dtype.h).
#define SI_CUDA_TYPE_F32 0
#define SI_CUDA_TYPE_F16 1
#define SI_CUDA_TYPE_Q4_0 2
#define SI_CUDA_TYPE_Q4_1 3
#define SI_CUDA_TYPE_Q8_0 8

// Statuses of our own (CUDA's error codes are positive).
#define SI_CUDA_ERROR_ARGUMENT (-2)  // a size, pointer, type or alignment the call cannot take
#define SI_CUDA_ERROR_INDEX (-3)     // a kernel met a row id, candidate id or count out of range

// Which values of a head si_cuda_rope turns together (since ABI 4).
#define SI_CUDA_ROPE_ADJACENT_PAIRS 0  // (x[2i], x[2i+1]): GGML's "normal" mode (llama)
#define SI_CUDA_ROPE_HALVES 1          // (x[i], x[i + rope_dim/2]): GGML's NeoX mode (Qwen2, Qwen3)

// The activations of si_cuda_activate (since ABI 5).
#define SI_CUDA_ACTIVATION_SILU 0
#define SI_CUDA_ACTIVATION_GELU_TANH 1  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
#define SI_CUDA_ACTIVATION_RELU 2

#ifdef __cplusplus
extern "C" {
#endif

// The ABI version this library implements (SI_CUDA_ABI_VERSION).
SI_CUDA_API int si_cuda_abi_version(void);

// What the library was built with: "cuda <runtime version it was compiled against>;
// archs <CMAKE_CUDA_ARCHITECTURES>". A static string; never null.
SI_CUDA_API const char* si_cuda_build_info(void);

// The CUDA runtime's version (e.g. 12080 for 12.8) and the driver's (0 when no driver is
// installed), as cudaRuntimeGetVersion / cudaDriverGetVersion report them.
SI_CUDA_API int si_cuda_versions(int* runtime_version, int* driver_version, char* err,
                                 size_t err_len);

// The number of CUDA devices visible to this process. With no driver or no device this
// fails (nonzero, *out = 0) and err says why, in CUDA's words.
SI_CUDA_API int si_cuda_device_count(int* out, char* err, size_t err_len);

// The device's name, NUL-terminated and cut to name_len bytes.
SI_CUDA_API int si_cuda_device_name(int device, char* name, size_t name_len, char* err,
                                    size_t err_len);

// The device's compute capability and total memory in bytes.
SI_CUDA_API int si_cuda_device_props(int device, int* cc_major, int* cc_minor,
                                     uint64_t* total_memory, char* err, size_t err_len);

// Runs a tiny kernel on the device and checks its result: fails with CUDA's message when the
// library carries no code this GPU can run ("no kernel image is available ...").
SI_CUDA_API int si_cuda_self_test(int device, char* err, size_t err_len);

// ---- contexts and device memory ---------------------------------------------------------

typedef struct si_cuda_context si_cuda_context;

// A context on `device` with its own stream; *out is null on failure.
SI_CUDA_API int si_cuda_context_create(int device, si_cuda_context** out, char* err,
                                       size_t err_len);
// Waits for the context's work and frees what the context itself holds (not the buffers);
// null is a no-op.
SI_CUDA_API void si_cuda_context_destroy(si_cuda_context* ctx);
// Waits until the context's work is done; reports a fault in it, or an index out of range.
SI_CUDA_API int si_cuda_synchronize(si_cuda_context* ctx, char* err, size_t err_len);
// Free and total memory of the context's device, in bytes.
SI_CUDA_API int si_cuda_memory_info(si_cuda_context* ctx, uint64_t* free_bytes,
                                    uint64_t* total_bytes, char* err, size_t err_len);
// A device buffer of `bytes` bytes (*out null for 0 bytes). Out of memory fails with
// cudaErrorMemoryAllocation and says how many bytes were asked for and how many are free.
SI_CUDA_API int si_cuda_alloc(si_cuda_context* ctx, size_t bytes, void** out, char* err,
                              size_t err_len);
// Frees a buffer from si_cuda_alloc (null is a no-op); waits for the device first.
SI_CUDA_API int si_cuda_free(si_cuda_context* ctx, void* ptr, char* err, size_t err_len);
// Copies host -> device; returns when the host buffer may be reused.
SI_CUDA_API int si_cuda_upload(si_cuda_context* ctx, void* dst, const void* src, size_t bytes,
                               char* err, size_t err_len);
// Copies device -> device after the context's earlier work (since ABI 5); enqueued.
SI_CUDA_API int si_cuda_copy(si_cuda_context* ctx, void* dst, const void* src, size_t bytes,
                             char* err, size_t err_len);
// Copies device -> host after the context's earlier work; returns when dst holds the data.
SI_CUDA_API int si_cuda_download(si_cuda_context* ctx, void* dst, const void* src,
                                 size_t bytes, char* err, size_t err_len);
// Sets `bytes` bytes at device address dst to the byte `value` (0 gives float 0.0).
SI_CUDA_API int si_cuda_memset(si_cuda_context* ctx, void* dst, int value, size_t bytes,
                               char* err, size_t err_len);

// ---- matrix times a few tokens -----------------------------------------------------------
// The activations stay float32 (no 8-bit quantisation of x): the dot products sum exact
// products of dequantised weights and x in float32. x of a quantised type must be 16-byte
// aligned; w must be 4-byte aligned for F32, 2-byte aligned otherwise. Quantised types need
// cols to be a multiple of 32. Any n_tokens >= 1 (done eight tokens at a time).

// y[t * rows + r] = dot(row r of w, x[t * cols ...]) for r < rows, t < n_tokens.
SI_CUDA_API int si_cuda_matmul(si_cuda_context* ctx, int type, const void* w, int64_t rows,
                               int64_t cols, const float* x, int64_t n_tokens, float* y,
                               char* err, size_t err_len);
// The sparse gather: y[t * max_count + k] = dot(row row_ids[k] of w, x[t]) for
// k < *count. row_ids (device) null means row k; count (device) null means max_count.
// Entries k >= *count are not written.
SI_CUDA_API int si_cuda_matmul_rows(si_cuda_context* ctx, int type, const void* w,
                                    int64_t rows, int64_t cols, const int32_t* row_ids,
                                    const int32_t* count, int64_t max_count, const float* x,
                                    int64_t n_tokens, float* y, char* err, size_t err_len);

// ---- attention block ---------------------------------------------------------------------

// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight for n_rows rows of n values; out may be x.
// Per-head Q and K norms are this call over n_tokens * n_heads rows of head_dim values.
SI_CUDA_API int si_cuda_rms_norm(si_cuda_context* ctx, const float* x, const float* weight,
                                 int64_t n_rows, int64_t n, float eps, float* out, char* err,
                                 size_t err_len);
// out[t] = (x[t] - mean) / sqrt(var + eps) * weight + bias (LayerNorm; the variance over n)
// for n_rows rows of n values; out may be x (since ABI 5).
SI_CUDA_API int si_cuda_layer_norm(si_cuda_context* ctx, const float* x, const float* weight,
                                   const float* bias, int64_t n_rows, int64_t n, float eps,
                                   float* out, char* err, size_t err_len);
// y[r * n + i] += bias[i] for r < n_rows, i < n: a projection's bias on each token's row
// (since ABI 4).
SI_CUDA_API int si_cuda_add_bias(si_cuda_context* ctx, float* y, const float* bias,
                                 int64_t n_rows, int64_t n, char* err, size_t err_len);
// RoPE in place: x holds n_tokens rows of n_heads heads of head_dim values; in each head the
// pairs i < rope_dim / 2 of `layout` (SI_CUDA_ROPE_ADJACENT_PAIRS: (2i, 2i+1);
// SI_CUDA_ROPE_HALVES: (i, i + rope_dim / 2); since ABI 4) turn by
// theta = positions[t] * inverse_frequencies[i], cos and sin computed in double and times
// magnitude (positions: device, one per token; inverse_frequencies: device, rope_dim / 2
// doubles, the host's scaled or unscaled speeds; since ABI 5). The values past rope_dim pass
// through.
SI_CUDA_API int si_cuda_rope(si_cuda_context* ctx, float* x, int64_t n_tokens,
                             int64_t n_heads, int64_t head_dim, int64_t rope_dim,
                             const int32_t* positions, const double* inverse_frequencies,
                             double magnitude, int layout, char* err, size_t err_len);
// Causal attention of n_tokens new tokens at positions n_past.. over one layer's F16 cache
// (k_cache, v_cache: n_ctx rows of n_head_kv * head_dim halves). When k and v (n_tokens rows
// of n_head_kv * head_dim floats, K already rotated) are not null they are first stored,
// rounded to half, at rows n_past..n_past + n_tokens - 1. Then for token t and query head h
// (q, out: n_tokens rows of n_head * head_dim floats; query head h reads KV head
// h / (n_head / n_head_kv)): out = softmax(scale * q . K[p]) . V over the positions p the
// token sees: n_past + t - window < p <= n_past + t, or every p <= n_past + t for window 0
// (scale and window since ABI 5). head_dim <= 256.
SI_CUDA_API int si_cuda_attention(si_cuda_context* ctx, const float* q, const float* k,
                                  const float* v, uint16_t* k_cache, uint16_t* v_cache,
                                  int64_t n_ctx, int64_t n_past, int64_t n_tokens,
                                  int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                                  float scale, int64_t window, float* out, char* err,
                                  size_t err_len);
// y[i] += scale * x[i] for i < n (the residual; scale since ABI 4, MiniCPM's residual scale,
// 1 adds x exactly).
SI_CUDA_API int si_cuda_add(si_cuda_context* ctx, float* y, const float* x, int64_t n,
                            float scale, char* err, size_t err_len);
// x[i] = act(x[i]) * factor[i] for i < n, or act(x[i]) where factor is null: a dense FFN's
// activation, with or without a gate (activation: SI_CUDA_ACTIVATION_*; since ABI 5).
SI_CUDA_API int si_cuda_activate(si_cuda_context* ctx, int activation, float* x,
                                 const float* factor, int64_t n, char* err, size_t err_len);

// ---- the sparse FFN (PowerInfer; cpp/src/session/session.cpp) -------------------------
// A neuron list is a device array of row indices with a device count and a host capacity
// (max_count); per-token values of listed neurons are laid out [token][max_count].

// scores[t * n_ff + j] = fc2 row j . relu(fc1 . x[t]); fc1: rank rows of n_embd, fc2: n_ff
// rows of rank; hidden (device, n_tokens * rank floats) is scratch.
SI_CUDA_API int si_cuda_ffn_predict(si_cuda_context* ctx, int fc1_type, const void* fc1,
                                    int64_t rank, int64_t n_embd, int fc2_type, const void* fc2,
                                    int64_t n_ff, const float* x, int64_t n_tokens,
                                    float* hidden, float* scores, char* err, size_t err_len);
// The active neurons: neuron j is active for token t when scores[t * n_ff + j] >= threshold.
// The candidates are the neurons candidates[0..n_candidates) (device; e.g. the hot neurons
// whose rows live on the GPU, in the order of those rows), or all n_ff neurons in order when
// candidates is null (n_candidates = n_ff). Writes, in ascending k, the positions k of the
// candidates active for at least one token into rows[0..*count) (so rows index matrices that
// hold the candidates' rows in candidate order; with null candidates they are neuron ids),
// and, when mask is not null, mask[t * n_candidates + i] = 1 if entry i is active for token
// t, else 0. rows: n_candidates int32, count: one int32, mask: n_tokens * n_candidates bytes.
// n_active (device, one int32; may be null): the number of (token, candidate) pairs that
// are active, i.e. the per-token active counts summed (n_tokens * n_candidates must then
// fit an int32). The order is fixed, so results do not change from run to run.
SI_CUDA_API int si_cuda_ffn_select(si_cuda_context* ctx, const float* scores, int64_t n_tokens,
                                   int64_t n_ff, float threshold, const int32_t* candidates,
                                   int64_t n_candidates, int32_t* rows, int32_t* count,
                                   uint8_t* mask, int32_t* n_active, char* err, size_t err_len);
// Gate and up of the listed neurons: for k < *count and r = rows[k] (row k when rows is
// null; count null means max_count), g = gate row r . x[t] + relu_bias[r] (relu_bias: device,
// n_rows floats, or null for none), u = up row r . x[t], and
// h[t * max_count + k] = g > 0 ? g * (relu_up ? max(u, 0) : u) : 0, or g > 0 ? g : 0 when up is
// null, or 0 where mask (as si_cuda_ffn_select writes it, [t * max_count + k], so max_count =
// n_candidates there; null: every entry) says inactive.
// relu(gate) * up is PowerInfer's llama FFN; relu_up = 1 gives bamboo's relu(gate) * relu(up);
// a null up with `gate` the up projection and its bias gives relu(up x + b), the gate-less FFN
// of Falcon and OPT (since ABI 5). gate and up have n_rows rows of n_embd.
SI_CUDA_API int si_cuda_ffn_gate_up(si_cuda_context* ctx, int gate_type, const void* gate,
                                    const float* relu_bias, int up_type, const void* up,
                                    int64_t n_rows, int64_t n_embd, const int32_t* rows,
                                    const int32_t* count, int64_t max_count,
                                    const uint8_t* mask, const float* x, int64_t n_tokens,
                                    int relu_up, float* h, char* err, size_t err_len);
// The down projection over the listed neurons: y[t] += the sum over k < *count of
// h[t * max_count + k] * down_t row rows[k] (rows, count as in si_cuda_ffn_gate_up; zero
// h entries are skipped, as the CPU does). down_t: n_rows rows of n_embd (the ffn_down_t
// layout: one row per neuron). The sum's order is fixed: the same bits on every run. Above
// SI_CUDA_DOWN_SLICE_ROWS rows the context keeps SI_CUDA_DOWN_SLICE_TOKENS * n_embd floats of
// device scratch per slice of that many rows (what a host budgets for).
SI_CUDA_API int si_cuda_ffn_down(si_cuda_context* ctx, int down_type, const void* down_t,
                                 int64_t n_rows, int64_t n_embd, const int32_t* rows,
                                 const int32_t* count, int64_t max_count, const float* h,
                                 int64_t n_tokens, float* y, char* err, size_t err_len);

#ifdef __cplusplus
}  // extern "C"
#endif
