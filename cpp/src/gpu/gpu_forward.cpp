#include "gpu/gpu_forward.h"

#include <algorithm>

#include "common/errors.h"

namespace si::gpu {

namespace {

// The plugin's type id for a weight type, or -1 where its kernels have none.
int plugin_type(DType t) {
    switch (t) {
        case DType::F32: return SI_CUDA_TYPE_F32;
        case DType::F16: return SI_CUDA_TYPE_F16;
        case DType::Q8_0: return SI_CUDA_TYPE_Q8_0;
        case DType::Q4_0: return SI_CUDA_TYPE_Q4_0;
        case DType::Q4_1: return SI_CUDA_TYPE_Q4_1;
        default: return -1;
    }
}

size_t floats(int64_t n) { return static_cast<size_t>(n) * sizeof(float); }

}  // namespace

GpuForward::GpuForward(const Model& model, const std::string& plugin_path, int device, int64_t n_ctx)
    : model_(model), ctx_(Plugin::load(plugin_path), device), n_ctx_(n_ctx) {
    const ModelConfig& c = model.config();
    const size_t kv_bytes = static_cast<size_t>(n_ctx) * static_cast<size_t>(c.n_head_kv * c.head_dim) * 2;
    for (int64_t il = 0; il < c.n_layer; ++il) {
        const LayerWeights& l = model.layers()[static_cast<size_t>(il)];
        const std::string blk = "blk." + std::to_string(il) + ".";
        DeviceLayer d;
        d.attn_norm = upload_floats(l.attn_norm, "attn_norm");
        d.wq = upload_matrix(l.wq, blk + "attn_q.weight");
        d.wk = upload_matrix(l.wk, blk + "attn_k.weight");
        d.wv = upload_matrix(l.wv, blk + "attn_v.weight");
        d.wo = upload_matrix(l.wo, blk + "attn_output.weight");
        d.ffn_norm = upload_floats(l.ffn_norm, "ffn_norm");
        d.ffn_gate = upload_matrix(l.ffn_gate, blk + "ffn_gate.weight");
        d.ffn_up = upload_matrix(l.ffn_up, blk + "ffn_up.weight");
        d.ffn_down = c.powerinfer ? upload_matrix(l.ffn_down_t, blk + "ffn_down_t.weight")
                                  : upload_matrix(l.ffn_down, blk + "ffn_down.weight");
        d.k_cache = Buffer(ctx_, kv_bytes, "the K cache");
        d.v_cache = Buffer(ctx_, kv_bytes, "the V cache");
        layers_.push_back(std::move(d));
    }
    output_norm_ = upload_floats(model.output_norm(), "output_norm");
    output_ = upload_matrix(model.output(), "output.weight");
}

GpuForward::DeviceMatrix GpuForward::upload_matrix(const Matrix& m, const std::string& name) {
    DeviceMatrix d;
    d.type = plugin_type(m.type);
    if (d.type < 0) {
        throw UnsupportedError(model_.file().describe(
            "tensor " + name + " is " + dtype_name(static_cast<uint32_t>(m.type)) +
            ", which the CUDA kernels do not read (F32, F16, Q8_0, Q4_0, Q4_1); use device='cpu'"));
    }
    d.rows = m.rows;
    d.cols = m.cols;
    const size_t bytes = static_cast<size_t>(m.rows) * m.row_bytes;
    d.data = Buffer(ctx_, bytes, name.c_str());
    ctx_.upload(d.data.data(), m.data, bytes);
    return d;
}

Buffer GpuForward::upload_floats(const std::vector<float>& v, const char* what) {
    Buffer b(ctx_, floats(static_cast<int64_t>(v.size())), what);
    ctx_.upload(b.data(), v.data(), b.bytes());
    return b;
}

void GpuForward::ensure_batch_capacity(int64_t n) {
    if (n <= batch_capacity_) return;
    const ModelConfig& c = model_.config();
    const int64_t kv_dim = c.n_head_kv * c.head_dim;
    x_ = Buffer(ctx_, floats(n * c.n_embd), "activations");
    xn_ = Buffer(ctx_, floats(n * c.n_embd), "activations");
    q_ = Buffer(ctx_, floats(n * c.n_embd), "activations");
    k_ = Buffer(ctx_, floats(n * kv_dim), "activations");
    v_ = Buffer(ctx_, floats(n * kv_dim), "activations");
    attn_out_ = Buffer(ctx_, floats(n * c.n_embd), "activations");
    gate_ = Buffer(ctx_, floats(n * c.n_ff), "activations");
    up_ = Buffer(ctx_, floats(n * c.n_ff), "activations");
    logits_ = Buffer(ctx_, floats(n * c.n_vocab), "logits");
    positions_ = Buffer(ctx_, static_cast<size_t>(n) * sizeof(int32_t), "positions");
    host_positions_.resize(static_cast<size_t>(n));
    batch_capacity_ = n;
}

void GpuForward::matmul(const DeviceMatrix& w, const float* x, int64_t n, float* y) {
    ctx_.run("matmul", ctx_.api().si_cuda_matmul, w.type, static_cast<const void*>(w.data.data()),
             w.rows, w.cols, x, n, y);
}

void GpuForward::eval_batch(const float* x, int64_t n, int64_t n_past, int64_t first_kept,
                            float* logits, const std::function<void()>& check_cancel) {
    const ModelConfig& c = model_.config();
    const PluginApi& api = ctx_.api();
    ensure_batch_capacity(n);
    for (int64_t t = 0; t < n; ++t) host_positions_[static_cast<size_t>(t)] = static_cast<int32_t>(n_past + t);
    ctx_.upload(positions_.data(), host_positions_.data(), static_cast<size_t>(n) * sizeof(int32_t));
    ctx_.upload(x_.data(), x, floats(n * c.n_embd));
    float* xd = x_.f32();
    float* xn = xn_.f32();

    for (int64_t il = 0; il < c.n_layer; ++il) {
        check_cancel();  // the queued work of earlier layers may still run; it is harmless
        DeviceLayer& l = layers_[static_cast<size_t>(il)];
        // Attention block: x += Wo * attention(rope(Wq xn), rope(Wk xn), Wv xn).
        ctx_.run("rms_norm", api.si_cuda_rms_norm, xd, l.attn_norm.f32(), n, c.n_embd, c.rms_eps, xn);
        matmul(l.wq, xn, n, q_.f32());
        matmul(l.wk, xn, n, k_.f32());
        matmul(l.wv, xn, n, v_.f32());
        ctx_.run("rope", api.si_cuda_rope, q_.f32(), n, c.n_head, c.head_dim, c.rope_dim,
                 positions_.as<const int32_t>(), c.rope_base);
        ctx_.run("rope", api.si_cuda_rope, k_.f32(), n, c.n_head_kv, c.head_dim, c.rope_dim,
                 positions_.as<const int32_t>(), c.rope_base);
        ctx_.run("attention", api.si_cuda_attention, static_cast<const float*>(q_.f32()),
                 static_cast<const float*>(k_.f32()), static_cast<const float*>(v_.f32()),
                 l.k_cache.as<uint16_t>(), l.v_cache.as<uint16_t>(), n_ctx_, n_past, n, c.n_head,
                 c.n_head_kv, c.head_dim, attn_out_.f32());
        matmul(l.wo, attn_out_.f32(), n, xn);
        ctx_.run("add", api.si_cuda_add, xd, static_cast<const float*>(xn), n * c.n_embd);

        // Feed-forward block.
        ctx_.run("rms_norm", api.si_cuda_rms_norm, xd, l.ffn_norm.f32(), n, c.n_embd, c.rms_eps, xn);
        if (!c.powerinfer) {
            // x += W_down (silu(W_gate xn) * W_up xn)
            matmul(l.ffn_gate, xn, n, gate_.f32());
            matmul(l.ffn_up, xn, n, up_.f32());
            ctx_.run("silu_mul", api.si_cuda_silu_mul, gate_.f32(), static_cast<const float*>(up_.f32()),
                     n * c.n_ff);
            matmul(l.ffn_down, gate_.f32(), n, xn);
            ctx_.run("add", api.si_cuda_add, xd, static_cast<const float*>(xn), n * c.n_embd);
        } else {
            // Every neuron j: h_j = relu(gate_j . xn) * up_j . xn (relu(up) for bamboo), then
            // x += sum_j h_j down_t[j], added by ffn_down straight into the residual.
            const int32_t* all = nullptr;  // no row list and no count: every row, in order
            ctx_.run("ffn_gate_up", api.si_cuda_ffn_gate_up, l.ffn_gate.type,
                     static_cast<const void*>(l.ffn_gate.data.data()), l.ffn_up.type,
                     static_cast<const void*>(l.ffn_up.data.data()), c.n_ff, c.n_embd, all, all,
                     c.n_ff, static_cast<const uint8_t*>(nullptr), static_cast<const float*>(xn), n,
                     c.relu_up ? 1 : 0, gate_.f32());
            ctx_.run("ffn_down", api.si_cuda_ffn_down, l.ffn_down.type,
                     static_cast<const void*>(l.ffn_down.data.data()), c.n_ff, c.n_embd, all, all,
                     c.n_ff, static_cast<const float*>(gate_.f32()), n, xd);
        }
    }

    // Output head for the kept rows (none for a chunk of a prompt whose logits are dropped).
    const int64_t kept = n - first_kept;
    if (kept == 0) return;
    ctx_.run("rms_norm", api.si_cuda_rms_norm, static_cast<const float*>(xd + first_kept * c.n_embd),
             output_norm_.f32(), kept, c.n_embd, c.rms_eps, xn);
    matmul(output_, xn, kept, logits_.f32());
    ctx_.download(logits, logits_.data(), floats(kept * c.n_vocab));
}

}  // namespace si::gpu
