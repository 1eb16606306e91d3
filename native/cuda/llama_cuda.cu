// LlamaForCausalLM training step, evaluation and generation on one NVIDIA
// GPU: LlamaEngine's algorithm (models/llama.cpp) step for step, on the CUDA
// kernels of native/cuda and cuBLASLt. Sources followed: Hugging Face
// models/llama/modeling_llama.py (LlamaRMSNorm, LlamaRotaryEmbedding,
// LlamaAttention, LlamaMLP, LlamaForCausalLM's shifted loss), PEFT
// tuners/lora (Linear), torch.nn.utils.clip_grad_norm_, torch.optim.AdamW,
// and torch.autocast(dtype=bfloat16) with float32 master weights.
#include "cuda/llama_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/onednn.h"  // to_bf16 (host rounding of a frozen weight written in bf16 mode)
#include "cuda/device_memory.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"

namespace nt {
namespace cuda {

using engine_detail::align_bytes;
using engine_detail::DeviceBuffer;
using engine_detail::enqueue_optimizer_step;
using engine_detail::free_memory_note;
using engine_detail::mib;
using engine_detail::PinnedBuffer;
using engine_detail::require_device;

namespace {
constexpr size_t kAlignElems = 64;  // arena offsets in elements: 256-byte aligned in fp32, 128 in bf16
size_t align_elems(size_t n) { return (n + kAlignElems - 1) / kAlignElems * kAlignElems; }
}  // namespace

// Device memory, stream and cuBLASLt of one engine. Views point into `acts`,
// laid out for cap_N = B x T rows; activation views are void* (float or bf16
// by the engine's precision).
struct LlamaCudaState {
    cudaStream_t stream = nullptr;
    std::unique_ptr<Blas> blas;
    DeviceBuffer w_buf, master_buf, g_buf, m_buf, v_buf, flags_buf, small_buf, acts, rope_buf;
    void* w = nullptr;             // weights in the compute type (w_total_ elements)
    float* master = nullptr;       // fp32 weights of what trains (g_size_): = w in fp32 mode
    float *g = nullptr, *m = nullptr, *v = nullptr;
    uint8_t* flags = nullptr;      // AdamW: 0 skip, 1 no decay, 2 decay (g_size_)
    double *loss_sum = nullptr, *norm_scratch = nullptr;
    float *norm = nullptr, *clip = nullptr;
    std::vector<char> trainable_uploaded;

    struct Layer {
        void *h, *n1, *qkv, *att, *a, *n2, *gu;
        std::array<void*, kNumTargets> t{};  // LoRA: dropout(x) A^T (N, r)
        float *rstd1, *rstd2, *lse;
    };
    std::vector<Layer> layers;
    void *act = nullptr, *mlp_out = nullptr, *hL = nullptr, *hf = nullptr;
    float* rstdf = nullptr;
    void *dh = nullptr, *dn = nullptr, *dqkv = nullptr, *datt = nullptr, *dgu = nullptr, *dact = nullptr;
    void *dt = nullptr, *xd = nullptr, *lm_scratch = nullptr;
    float *delta = nullptr, *scratch = nullptr, *logits32 = nullptr;
    size_t acts_bytes = 0;
    // Batch (int32), device side and its pinned host mirror, same offsets:
    // ids | mask | pos | rows | targets | id buckets (order N, offsets N+1, ids N).
    int32_t* ints = nullptr;
    PinnedBuffer staging;
    size_t o_ids = 0, o_mask = 0, o_pos = 0, o_rows = 0, o_targets = 0, o_words = 0;
    DeviceBuckets words;
    std::vector<int32_t> host_targets;
    size_t cap_N = 0;
    bool cap_train = false;
    int chunk = 0;
    int cur_B = 0, cur_T = 0;
    float *cos = nullptr, *sin = nullptr;
    int rope_P = 0;
    // Generation: per layer (B, NKV, cap, HS) keys and values, the key mask
    // (B, cap), each row's next position id, columns filled.
    struct {
        DeviceBuffer buf;
        void *k = nullptr, *v = nullptr;
        int32_t* mask = nullptr;
        size_t layer_elems = 0, bytes = 0;
        std::vector<int32_t> host_mask, pos;
        int B = 0, cap = 0, len = 0;
        bool capturing = false, decoding = false;
    } gen;

    ~LlamaCudaState() {
        blas.reset();
        if (stream) cudaStreamDestroy(stream);
    }
};

// ---- construction -------------------------------------------------------------------

CudaLlamaEngine::CudaLlamaEngine(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train,
                                 int device, bool use_bf16, bool gradient_checkpointing, bool trainable)
    : LlamaPlan(config, lora, train, trainable), device_(device), bf16_(use_bf16),
      checkpointing_(gradient_checkpointing), s_(new LlamaCudaState) {
    const DeviceInfo info = require_device(device);
    device_name_ = "cuda:" + std::to_string(device) + " (" + info.name + ", " + (use_bf16 ? "bf16" : "fp32") + ")";
    // What trains lies at its gradient offset, so one index serves the
    // master weight, its bf16 copy, the gradient and the moments; frozen
    // weights follow at their plan offsets (packed groups stay contiguous).
    const size_t frozen0 = align_elems(g_size_);
    dev_off_.resize(params_.size());
    w_total_ = frozen0;
    for (size_t i = 0; i < params_.size(); i++) {
        dev_off_[i] = goff_[i] != kNone ? goff_[i] : frozen0 + params_[i].offset;
        w_total_ = std::max(w_total_, dev_off_[i] + params_[i].numel);
    }
    activate();
    check(cudaStreamCreateWithFlags(&s_->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    s_->blas.reset(new Blas());
    const size_t es = bf16_ ? sizeof(bf16) : sizeof(float), gb = g_size_ * sizeof(float);
    const size_t small_bytes = align_bytes(4 * sizeof(double)) + align_bytes(grad_norm_scratch_doubles() * sizeof(double));
    struct Want {
        DeviceBuffer* buf;
        size_t bytes;
        const char* what;
    };
    const Want wants[] = {{&s_->w_buf, w_total_ * es, "weights"},
                          {&s_->master_buf, bf16_ ? gb : 0, "fp32 master weights"},
                          {&s_->g_buf, gb, "gradients"},
                          {&s_->m_buf, gb, "exp_avg"},
                          {&s_->v_buf, gb, "exp_avg_sq"},
                          {&s_->flags_buf, g_size_, "update flags"},
                          {&s_->small_buf, small_bytes, "scalars"}};
    for (const Want& w : wants) {
        if (w.bytes == 0) continue;
        const std::string note = free_memory_note(device);
        if (w.buf->allocate(w.bytes) != cudaSuccess)
            throw EngineError("out of GPU memory allocating the " + std::string(w.what) + " arena (" + mib(w.bytes) +
                              " for " + std::to_string(n_params_) + " parameters)" + note);
        check(cudaMemsetAsync(w.buf->get(), 0, w.bytes, s_->stream), "cudaMemsetAsync(arena)");
    }
    s_->w = s_->w_buf.get();
    s_->master = bf16_ ? reinterpret_cast<float*>(s_->master_buf.get()) : reinterpret_cast<float*>(s_->w);
    s_->g = reinterpret_cast<float*>(s_->g_buf.get());
    s_->m = reinterpret_cast<float*>(s_->m_buf.get());
    s_->v = reinterpret_cast<float*>(s_->v_buf.get());
    s_->flags = reinterpret_cast<uint8_t*>(s_->flags_buf.get());
    char* p = s_->small_buf.get();
    s_->loss_sum = reinterpret_cast<double*>(p);
    s_->norm = reinterpret_cast<float*>(p + sizeof(double));
    s_->clip = s_->norm + 1;
    s_->norm_scratch = reinterpret_cast<double*>(p + align_bytes(4 * sizeof(double)));
    // PEFT's LoRA A initialisation, the CPU engine's values.
    std::vector<float> a;
    for (int l = 0; l < cfg_.num_hidden_layers; l++)
        for (int t = 0; t < kNumTargets; t++) {
            const size_t i = layers_[l].lora_A[t];
            if (i == kNone) continue;
            a.resize(params_[i].numel);
            lora_A_init(l, t, a.data());
            write(params_[i], Slot::Weight, a.data());
        }
    sync("constructor");
}

CudaLlamaEngine::~CudaLlamaEngine() {
    if (!s_) return;
    cudaSetDevice(device_);
    if (s_->stream) cudaStreamSynchronize(s_->stream);
}

std::unique_ptr<CausalLM> make_cuda_causal_lm(const LlamaConfig& config, const LoraConfig& lora,
                                              const TrainConfig& train, int device, bool use_bf16,
                                              bool gradient_checkpointing, bool trainable) {
    return std::make_unique<CudaLlamaEngine>(config, lora, train, device, use_bf16, gradient_checkpointing, trainable);
}

void CudaLlamaEngine::activate() const { check(cudaSetDevice(device_), "cudaSetDevice"); }

void CudaLlamaEngine::sync(const char* what) {
    const cudaError_t e = cudaStreamSynchronize(s_->stream);
    if (e != cudaSuccess)
        throw CudaError(e, std::string("CUDA engine on ") + device_name_ + ", " + what + ": " + cudaGetErrorName(e) +
                               " (" + cudaGetErrorString(e) + ")");
}

size_t CudaLlamaEngine::activation_bytes() const { return s_->acts_bytes + s_->gen.bytes; }

int CudaLlamaEngine::generation_batch() const { return s_->gen.B; }

// ---- activation arena ------------------------------------------------------------------

void CudaLlamaEngine::ensure_activations(int B, int T, bool train) {
    LlamaCudaState& s = *s_;
    s.cur_B = B;
    s.cur_T = T;
    const size_t need = (size_t)B * T;
    if (need <= s.cap_N && (s.cap_train || !train)) return;
    const size_t N = std::max(need, s.cap_N);
    const bool with_grads = train || s.cap_train;
    // Without a backward to come (forward, prefill, decode) nothing reads a
    // layer's activations after the layer: every layer shares one set, as
    // under gradient checkpointing (the CPU engine does the same).
    const bool shared = checkpointing_ || !with_grads;
    const size_t C = cfg_.hidden_size, I = cfg_.intermediate_size, HS = cfg_.head_dim, V = cfg_.vocab_size;
    const size_t NH = cfg_.num_attention_heads, OC = NH * HS, QKV = QKV_, r = std::max(lora_.r, 1);
    const size_t es = bf16_ ? sizeof(bf16) : sizeof(float);
    // lm_head rows per chunk: about 256 MiB of float32 logits at most.
    const int chunk = (int)std::min<size_t>(N, std::clamp<size_t>((size_t(1) << 28) / (V * sizeof(float)), 64, 4096));
    const size_t max_oc = std::max({QKV, 2 * I, C});
    const size_t scratch_floats = std::max(rmsnorm_backward_scratch_floats((int)N, (int)C),
                                           bias_backward_scratch_floats((int)N, (int)max_oc));
    const size_t n_ints = 5 * N + 3 * N + 1;
    const bool lm_scratch_fits = lmhead_scratch_bytes(chunk, (int)C, (int)V) >= (size_t)chunk * V * sizeof(float);

    size_t total = 0;
    char* base = nullptr;
    auto take = [&](size_t bytes) -> void* {
        void* q = base ? base + total : nullptr;
        total += align_bytes(bytes);
        return q;
    };
    auto takef = [&](size_t n) { return static_cast<float*>(take(n * sizeof(float))); };
    auto inner = [&](LlamaCudaState::Layer& a) {
        a.n1 = take(N * C * es);
        a.qkv = take(N * QKV * es);
        a.att = take(N * OC * es);
        a.a = take(N * C * es);
        a.n2 = take(N * C * es);
        a.gu = take(N * 2 * I * es);
        for (int t = 0; t < kNumTargets; t++) a.t[t] = lora_.target[t] ? take(N * r * es) : nullptr;
        a.rstd1 = takef(N);
        a.rstd2 = takef(N);
        a.lse = takef(N * NH);
    };
    auto layout = [&] {
        total = 0;
        s.layers.assign(cfg_.num_hidden_layers, LlamaCudaState::Layer{});
        for (auto& a : s.layers) {
            a.h = take(N * C * es);
            if (!shared) inner(a);
        }
        if (shared) {  // one set of inner activations (recomputed per layer in a checkpointed backward)
            LlamaCudaState::Layer shared{};
            inner(shared);
            for (auto& a : s.layers) {
                void* h = a.h;
                a = shared;
                a.h = h;
            }
        }
        s.act = take(N * I * es);
        s.mlp_out = take(N * C * es);
        s.hL = take(N * C * es);
        s.hf = take(N * C * es);
        s.rstdf = takef(N);
        s.lm_scratch = take(lmhead_scratch_bytes(chunk, (int)C, (int)V));
        // logits() fills chunks of float32 logits while the lm_head loss is
        // idle: its scratch serves when large enough (it holds such a chunk).
        s.logits32 = lm_scratch_fits ? static_cast<float*>(s.lm_scratch) : takef((size_t)chunk * V);
        if (with_grads) {
            s.dh = take(N * C * es);
            s.dn = take(N * C * es);
            s.dqkv = take(N * QKV * es);
            s.datt = take(N * OC * es);
            s.dgu = take(N * 2 * I * es);
            s.dact = take(N * I * es);
            s.dt = take(N * r * es);
            s.xd = take(N * std::max({C, I, OC}) * es);
            s.delta = takef(N * NH);
            s.scratch = takef(scratch_floats);
        }
        s.ints = static_cast<int32_t*>(take(n_ints * sizeof(int32_t)));
    };
    layout();
    s.acts.reset();
    s.staging.reset();
    s.cap_N = 0;
    s.acts_bytes = 0;
    const std::string note = free_memory_note(device_);
    if (s.acts.allocate(total) != cudaSuccess)
        throw EngineError("out of GPU memory: the activations for batchSize=" + std::to_string(B) + ", seqLen=" +
                          std::to_string(T) + " need " + mib(total) + note + "; use a smaller batch size or max_length" +
                          (shared ? "" : ", or gradient checkpointing"));
    base = s.acts.get();
    layout();
    s.staging.allocate(n_ints * sizeof(int32_t));
    s.o_ids = 0;
    s.o_mask = N;
    s.o_pos = 2 * N;
    s.o_rows = 3 * N;
    s.o_targets = 4 * N;
    s.o_words = 5 * N;
    s.cap_N = N;
    s.cap_train = with_grads;
    s.chunk = chunk;
    s.acts_bytes = total;
}

// Rotary tables (P, HS/2) in float32, computed on the host (rope_tables:
// the CPU's values) for positions 0..P-1, grown when a longer batch or a
// generation needs more.
void CudaLlamaEngine::ensure_rope(int P) {
    LlamaCudaState& s = *s_;
    if (P <= s.rope_P) return;
    const size_t half = cfg_.head_dim / 2, n = (size_t)P * half;
    std::vector<float> cs(2 * n);
    rope_tables<float>(cs.data(), cs.data() + n, inv_freq_.data(), P, cfg_.head_dim);
    s.rope_P = 0;
    if (s.rope_buf.allocate(2 * n * sizeof(float)) != cudaSuccess)
        throw EngineError("out of GPU memory: rotary tables for " + std::to_string(P) + " positions" +
                          free_memory_note(device_));
    s.cos = reinterpret_cast<float*>(s.rope_buf.get());
    s.sin = s.cos + n;
    check(cudaMemcpyAsync(s.cos, cs.data(), 2 * n * sizeof(float), cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync(rotary tables)");
    sync("upload of the rotary tables");  // `cs` is pageable and goes out of scope
    s.rope_P = P;
}

// ---- batch upload ------------------------------------------------------------------------

int CudaLlamaEngine::upload_batch(const Batch& b, bool targets, bool embedding_grads) {
    LlamaCudaState& s = *s_;
    row_offset_ = b.row_offset;
    ensure_rope(b.T);
    const size_t n = (size_t)b.B * b.T, N = s.cap_N;
    int32_t* h = s.staging.ints();
    std::copy(b.input_ids, b.input_ids + n, h + s.o_ids);
    std::copy(b.attention_mask, b.attention_mask + n, h + s.o_mask);
    position_ids(b, h + s.o_pos);
    size_t end = s.o_rows;
    int count = 0;
    if (targets && b.labels) {
        // Only rows with a target reach the lm_head: compacted here.
        s.host_targets.resize(n);
        shifted_targets(b, s.host_targets.data());
        for (size_t i = 0; i < n; i++)
            if (s.host_targets[i] != -100) {
                h[s.o_rows + count] = (int32_t)i;
                h[s.o_targets + count] = s.host_targets[i];
                count++;
            }
        end = s.o_targets + count;
    }
    s.words = DeviceBuckets{};
    if (embedding_grads) {
        const IdBuckets bk = make_id_buckets(b.input_ids, (int)n, cfg_.vocab_size);
        std::copy(bk.order.begin(), bk.order.end(), h + s.o_words);
        std::copy(bk.offsets.begin(), bk.offsets.end(), h + s.o_words + N);
        std::copy(bk.ids.begin(), bk.ids.end(), h + s.o_words + 2 * N + 1);
        s.words = DeviceBuckets{s.ints + s.o_words, s.ints + s.o_words + N, s.ints + s.o_words + 2 * N + 1,
                                (int)bk.ids.size()};
        end = s.o_words + 3 * N + 1;
    }
    check(cudaMemcpyAsync(s.ints, h, end * sizeof(int32_t), cudaMemcpyHostToDevice, s.stream), "cudaMemcpyAsync(batch)");
    return count;
}

// ---- forward, backward and decode for activation type T ---------------------------------

template <typename T>
struct LlamaPass {
    CudaLlamaEngine& e;
    LlamaCudaState& s;
    cudaStream_t st;
    Blas& blas;
    const LlamaConfig& c;
    const int B, Tn, N, C, I, NH, NKV, HS, OC, QKV;
    const float eps;
    const int32_t *ids, *mask, *pos;
    using Blocks = std::initializer_list<std::pair<LoraTarget, int>>;  // adapter, first output column

    explicit LlamaPass(CudaLlamaEngine& engine)
        : e(engine), s(*engine.s_), st(s.stream), blas(*s.blas), c(engine.cfg_), B(s.cur_B), Tn(s.cur_T),
          N(B * Tn), C(c.hidden_size), I(c.intermediate_size), NH(c.num_attention_heads),
          NKV(c.num_key_value_heads), HS(c.head_dim), OC(NH * HS), QKV(engine.QKV_), eps(c.rms_norm_eps),
          ids(s.ints + s.o_ids), mask(s.ints + s.o_mask), pos(s.ints + s.o_pos) {}

    static T* A(void* p) { return static_cast<T*>(p); }
    const T* W(size_t i) const {
        return i == LlamaPlan::kNone ? nullptr : static_cast<const T*>(s.w) + e.dev_off_[i];
    }
    float* G(size_t i) const {
        if (i == LlamaPlan::kNone || e.goff_[i] == LlamaPlan::kNone || !e.params_[i].trainable) return nullptr;
        return s.g + e.goff_[i];
    }
    // A packed group (q|k|v, gate|up) shares one GEMM: its gradient when any
    // member trains; frozen members' slices are cleared after.
    float* G_group(size_t first, size_t count) const {
        if (first == LlamaPlan::kNone || e.goff_[first] == LlamaPlan::kNone) return nullptr;
        for (size_t i = first; i < first + count; i++)
            if (e.params_[i].trainable) return s.g + e.goff_[first];
        return nullptr;
    }
    void clear_frozen(size_t first, size_t count) {
        if (first == LlamaPlan::kNone || e.goff_[first] == LlamaPlan::kNone) return;
        for (size_t i = first; i < first + count; i++)
            if (!e.params_[i].trainable)
                check(cudaMemsetAsync(s.g + e.goff_[i], 0, e.params_[i].numel * sizeof(float), st),
                      "cudaMemsetAsync(frozen gradient)");
    }
    int lora_out(size_t b_index) const { return (int)e.params_[b_index].shape[0]; }

    void linear_fwd(T* out, const T* in, size_t w, size_t bias, int IC, int OCn, int l, Blocks blocks, bool train) {
        blas.linear_forward<T>(st, out, in, W(w), W(bias), N, IC, OCn);
        const LlamaPlan::Layer& L = e.layers_[l];
        for (const auto& [target, col] : blocks) {
            if (L.lora_A[target] == LlamaPlan::kNone) continue;
            lora_forward<T>(blas, st, out + col, OCn, A(s.layers[l].t[target]), A(s.xd), in, W(L.lora_A[target]),
                            W(L.lora_B[target]), N, IC, lora_out(L.lora_B[target]), e.lora_.r, e.lora_scale_,
                            train ? e.lora_.lora_dropout : 0.0f, e.key(e.lora_tensor(l, target), (size_t)Tn * IC));
        }
    }

    void linear_bwd(T* din, const T* dout, const T* in, size_t w, size_t bias, int group, int IC, int OCn, int l,
                    Blocks blocks) {
        blas.linear_backward<T>(st, din, G_group(w, group), G_group(bias, group), dout, in, W(w), N, IC, OCn, false,
                                s.scratch);
        clear_frozen(w, group);
        clear_frozen(bias, group);
        const LlamaPlan::Layer& L = e.layers_[l];
        for (const auto& [target, col] : blocks) {
            if (L.lora_A[target] == LlamaPlan::kNone) continue;
            lora_backward<T>(blas, st, din, G(L.lora_A[target]), G(L.lora_B[target]), A(s.dt), A(s.xd), dout + col,
                             OCn, in, A(s.layers[l].t[target]), W(L.lora_A[target]), W(L.lora_B[target]), N, IC,
                             lora_out(L.lora_B[target]), e.lora_.r, e.lora_scale_, e.lora_.lora_dropout,
                             e.key(e.lora_tensor(l, target), (size_t)Tn * IC));
        }
    }

    // Layer l from its input h (the residual add of the layer below fused
    // into this layer's first RMSNorm); it ends with the down projection in
    // s.mlp_out, which the next layer (or the final norm) adds to the
    // residual stream. recompute (gradient checkpointing's backward): h is
    // saved, so the norm reads it; the down projection runs too, for its
    // LoRA input t (shared by all layers under checkpointing).
    void layer_forward(int l, bool train, bool recompute) {
        const LlamaPlan::Layer& L = e.layers_[l];
        LlamaCudaState::Layer& a = s.layers[l];
        if (l == 0 || recompute)
            rmsnorm_forward<T>(A(a.n1), a.rstd1, A(a.h), W(L.in_norm), N, C, eps, st);
        else  // h = down_proj output + the residual stream of layer l-1
            residual_rmsnorm_forward<T>(A(a.h), A(a.n1), a.rstd1, A(s.mlp_out), A(s.layers[l - 1].a), W(L.in_norm), N,
                                        C, eps, st);
        linear_fwd(A(a.qkv), A(a.n1), L.qkv_w, L.qkv_b, C, QKV, l, {{kQ, 0}, {kK, OC}, {kV, OC + NKV * HS}}, train);
        rope_forward<T>(A(a.qkv), s.cos, s.sin, pos, N, QKV, NH, HS, st);
        rope_forward<T>(A(a.qkv) + OC, s.cos, s.sin, pos, N, QKV, NKV, HS, st);
        if (s.gen.capturing || s.gen.decoding)
            kv_cache_store<T>(A(s.gen.k) + l * s.gen.layer_elems, A(s.gen.v) + l * s.gen.layer_elems, A(a.qkv), B, Tn,
                              NH, NKV, HS, s.gen.decoding ? s.gen.len : 0, s.gen.cap, st);
        if (s.gen.decoding)
            decode_attention<T>(A(a.att), A(a.qkv), QKV, A(s.gen.k) + l * s.gen.layer_elems,
                                A(s.gen.v) + l * s.gen.layer_elems, s.gen.mask, B, NH, NKV, HS, s.gen.len + 1,
                                s.gen.cap, st);
        else
            causal_attention_forward<T>(A(a.att), a.lse, A(a.qkv), mask, B, Tn, NH, NKV, HS, st);
        linear_fwd(A(a.a), A(a.att), L.o_w, L.o_b, OC, C, l, {{kO, 0}}, train);
        residual_rmsnorm_forward<T>(A(a.a), A(a.n2), a.rstd2, A(a.a), A(a.h), W(L.post_norm), N, C, eps, st);
        linear_fwd(A(a.gu), A(a.n2), L.gu_w, L.gu_b, C, 2 * I, l, {{kGate, 0}, {kUp, I}}, train);
        swiglu_forward<T>(A(s.act), A(a.gu), N, I, st);
        linear_fwd(A(s.mlp_out), A(s.act), L.down_w, L.down_b, I, C, l, {{kDown, 0}}, train);
    }

    // hf = norm(hL): the final hidden states the lm_head reads.
    void forward(bool train) {
        const int NL = c.num_hidden_layers;
        token_embedding_forward<T>(A(s.layers[0].h), ids, W(e.embed_), N, C, st);
        for (int l = 0; l < NL; l++) layer_forward(l, train, false);
        residual_rmsnorm_forward<T>(A(s.hL), A(s.hf), s.rstdf, A(s.mlp_out), A(s.layers[NL - 1].a), W(e.norm_), N, C,
                                    eps, st);
    }

    // s.dh: the gradient of the layer's output in, of its input out.
    void layer_backward(int l, bool need_dinp) {
        if (e.checkpointing_) layer_forward(l, true, true);  // same keys: the same dropout masks
        const LlamaPlan::Layer& L = e.layers_[l];
        LlamaCudaState::Layer& a = s.layers[l];
        T *dh = A(s.dh), *dn = A(s.dn);
        // The down projection's input, shared by all layers: recomputed (with
        // checkpointing the recomputed forward just wrote it).
        if (!e.checkpointing_) swiglu_forward<T>(A(s.act), A(a.gu), N, I, st);
        linear_bwd(A(s.dact), dh, A(s.act), L.down_w, L.down_b, 1, I, C, l, {{kDown, 0}});
        swiglu_backward<T>(A(s.dgu), A(s.dact), A(a.gu), N, I, st);
        linear_bwd(dn, A(s.dgu), A(a.n2), L.gu_w, L.gu_b, 2, C, 2 * I, l, {{kGate, 0}, {kUp, I}});
        rmsnorm_backward<T>(dh, G(L.post_norm), dn, A(a.a), W(L.post_norm), a.rstd2, N, C, s.scratch, true, st);
        linear_bwd(A(s.datt), dh, A(a.att), L.o_w, L.o_b, 1, OC, C, l, {{kO, 0}});
        causal_attention_backward<T>(A(s.dqkv), s.delta, A(s.datt), A(a.att), A(a.qkv), a.lse, mask, B, Tn, NH, NKV, HS,
                                     st);
        rope_backward<T>(A(s.dqkv), s.cos, s.sin, pos, N, QKV, NH, HS, st);
        rope_backward<T>(A(s.dqkv) + OC, s.cos, s.sin, pos, N, QKV, NKV, HS, st);
        float* in_norm_grad = G(L.in_norm);
        // The lowest trained layer needs no input gradient (nor, without a
        // norm weight to train, the normalised input's).
        const bool need_dn = need_dinp || in_norm_grad;
        linear_bwd(need_dn ? dn : nullptr, A(s.dqkv), A(a.n1), L.qkv_w, L.qkv_b, 3, C, QKV, l,
                   {{kQ, 0}, {kK, OC}, {kV, OC + NKV * HS}});
        if (need_dn)
            rmsnorm_backward<T>(need_dinp ? dh : nullptr, in_norm_grad, dn, A(a.h), W(L.in_norm), a.rstd1, N, C,
                                s.scratch, true, st);
    }

    // s.dn holds the gradient of hf (from the lm_head loss).
    void backward(int first) {
        const int NL = c.num_hidden_layers;
        rmsnorm_backward<T>(A(s.dh), G(e.norm_), A(s.dn), A(s.hL), W(e.norm_), s.rstdf, N, C, s.scratch, false, st);
        for (int l = NL - 1; l >= std::max(first, 0); l--) layer_backward(l, l > first);
        if (first < 0)
            embedding_backward_sorted<T>(G(e.embed_), nullptr, nullptr, A(s.dh), s.words, DeviceBuckets{}, 1, N, C, st);
    }

    // The mean-loss numerator into s.loss_sum; with grad, s.dn (the gradient
    // of hf) and the lm_head's gradient of grad_scale * the sum.
    void loss(int n, float grad_scale, bool grad) {
        const size_t hi = e.lm_head_index();
        lmhead_crossentropy<T>(blas, st, s.loss_sum, grad ? A(s.dn) : nullptr, grad ? G(hi) : nullptr, A(s.hf), W(hi),
                               s.ints + s.o_rows, s.ints + s.o_targets, n, N, C, c.vocab_size, grad_scale, s.lm_scratch,
                               s.chunk);
    }

    // logits of `rows` rows of hf, row i at hf row row0 + i * stride, in
    // chunks through s.logits32 to the host.
    void logits(float* out, int row0, int rows, int stride) {
        const int V = c.vocab_size;
        const T* hf = A(s.hf);
        for (int r = 0; r < rows; r += s.chunk) {
            const int m = std::min(s.chunk, rows - r);
            blas.gemm<T, float>(st, false, true, m, V, C, 1.0f, hf + ((size_t)row0 + (size_t)r * stride) * C,
                                stride * C, W(e.lm_head_index()), C, 0.0f, s.logits32, V);
            check(cudaMemcpyAsync(out + (size_t)r * V, s.logits32, (size_t)m * V * sizeof(float),
                                  cudaMemcpyDeviceToHost, st),
                  "cudaMemcpyAsync(logits)");
        }
    }
};

namespace {
// Runs f on the pass of the engine's precision. When f throws part-way, the
// work it already enqueued may still read the pinned batch or write the
// arenas: it is let finish before the error reaches the caller, whose next
// call would reuse them.
template <typename F>
void dispatch(bool use_bf16, CudaLlamaEngine& e, cudaStream_t stream, F&& f) {
    try {
        if (use_bf16) {
            LlamaPass<bf16> p(e);
            f(p);
        } else {
            LlamaPass<float> p(e);
            f(p);
        }
    } catch (...) {
        cudaStreamSynchronize(stream);
        cudaGetLastError();
        throw;
    }
}
}  // namespace

// ---- the public step ------------------------------------------------------------------------

float CudaLlamaEngine::forward(const Batch& b, float* logits, bool train) {
    validate(b, false);
    activate();
    ensure_activations(b.B, b.T, train);
    const int n = upload_batch(b, true, false);
    float loss = 0.0f;
    dispatch(bf16_, *this, s_->stream, [&](auto& p) {
        p.forward(train);
        if (logits) p.logits(logits, 0, b.B * b.T, 1);
        if (b.labels && n > 0) p.loss(n, 1.0f, false);
    });
    double sum = 0.0;
    if (b.labels && n > 0)
        check(cudaMemcpyAsync(&sum, s_->loss_sum, sizeof(double), cudaMemcpyDeviceToHost, s_->stream),
              "cudaMemcpyAsync(loss)");
    sync("forward");
    if (b.labels && n > 0) loss = (float)(sum / n);
    return loss;
}

float CudaLlamaEngine::accumulate(const Batch& b, float loss_scale) {
    if (!trainable_)
        throw EngineError("this engine was built with options.trainable = false: it has no trainable parameter "
                          "(forward, prefill and decode only)");
    validate(b, true);
    activate();
    const int first = first_trained_layer();
    ensure_activations(b.B, b.T, true);
    const int n = upload_batch(b, true, first < 0);
    if (n == 0) {  // nothing to learn from: no gradient (HF's mean would be NaN)
        sync("accumulate");
        micro_step_++;
        return 0.0f;
    }
    dispatch(bf16_, *this, s_->stream, [&](auto& p) {
        p.forward(true);
        p.loss(n, loss_scale / (float)n, true);
        p.backward(first);
    });
    double sum = 0.0;
    check(cudaMemcpyAsync(&sum, s_->loss_sum, sizeof(double), cudaMemcpyDeviceToHost, s_->stream),
          "cudaMemcpyAsync(loss)");
    sync("accumulate");
    micro_step_++;
    return (float)(sum / n);
}

// ---- generation -----------------------------------------------------------------------------

void CudaLlamaEngine::prefill(const Batch& b, int max_new_tokens, float* logits) {
    const int cap = check_prefill(b, max_new_tokens);
    activate();
    auto& g = s_->gen;
    g.B = 0;  // invalid until the prefill completes
    const size_t es = bf16_ ? sizeof(bf16) : sizeof(float);
    g.layer_elems = (size_t)b.B * cfg_.num_key_value_heads * cap * cfg_.head_dim;
    const size_t kv = align_bytes(cfg_.num_hidden_layers * g.layer_elems * es);
    g.bytes = 0;
    g.buf.reset();
    const std::string note = free_memory_note(device_);
    if (g.buf.allocate(2 * kv + align_bytes((size_t)b.B * cap * sizeof(int32_t))) != cudaSuccess)
        throw EngineError("out of GPU memory: the KV cache for " + std::to_string(b.B) + " sequences of " +
                          std::to_string(cap) + " tokens needs " + mib(2 * kv) + note);
    g.bytes = 2 * kv;
    g.k = g.buf.get();
    g.v = g.buf.get() + kv;
    g.mask = reinterpret_cast<int32_t*>(g.buf.get() + 2 * kv);
    g.cap = (int)cap;
    g.host_mask.assign((size_t)b.B * cap, 0);
    g.pos.assign(b.B, 0);
    ensure_rope((int)cap);
    ensure_activations(b.B, b.T, false);
    upload_batch(b, false, false);
    g.capturing = true;
    try {
        dispatch(bf16_, *this, s_->stream, [&](auto& p) {
            p.forward(false);
            p.logits(logits, b.T - 1, b.B, b.T);  // each row's last token
        });
    } catch (...) {
        g.capturing = false;
        throw;
    }
    g.capturing = false;
    for (int i = 0; i < b.B; i++) {
        int real = 0;
        for (int t = 0; t < b.T; t++) {
            g.host_mask[(size_t)i * cap + t] = b.attention_mask[(size_t)i * b.T + t];
            real += b.attention_mask[(size_t)i * b.T + t];
        }
        g.pos[i] = real;
    }
    sync("prefill");
    g.len = b.T;
    g.B = b.B;
}

void CudaLlamaEngine::decode(const int32_t* tokens, float* logits) {
    auto& g = s_->gen;
    if (g.B == 0) throw EngineError("decode() needs a prefill() first");
    if (g.len >= g.cap)
        throw EngineError("decode(): the KV cache is full (" + std::to_string(g.cap) + " columns: prompt + max_new_tokens)");
    const int B = g.B, cap = g.cap, col = g.len;
    check_decode_tokens(tokens, B);
    activate();
    ensure_activations(B, 1, false);
    LlamaCudaState& s = *s_;
    int32_t* h = s.staging.ints();
    std::copy(tokens, tokens + B, h + s.o_ids);
    std::copy(g.pos.begin(), g.pos.end(), h + s.o_pos);
    check(cudaMemcpyAsync(s.ints, h, s.o_rows * sizeof(int32_t), cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync(decode tokens)");
    for (int i = 0; i < B; i++) g.host_mask[(size_t)i * cap + col] = 1;
    check(cudaMemcpyAsync(g.mask, g.host_mask.data(), g.host_mask.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                          s.stream),
          "cudaMemcpyAsync(decode mask)");
    g.decoding = true;
    try {
        dispatch(bf16_, *this, s_->stream, [&](auto& p) {
            p.forward(false);
            p.logits(logits, 0, B, 1);
        });
    } catch (...) {
        g.decoding = false;
        throw;
    }
    g.decoding = false;
    sync("decode");
    g.len++;
    for (int i = 0; i < B; i++) g.pos[i]++;
}

// ---- optimizer -----------------------------------------------------------------------------

void CudaLlamaEngine::upload_flags() {
    std::vector<char> now(params_.size());
    for (size_t i = 0; i < params_.size(); i++) now[i] = params_[i].trainable;
    if (now == s_->trainable_uploaded) return;
    std::vector<uint8_t> flags(g_size_, 0);  // alignment padding: never updated
    for (size_t i = 0; i < params_.size(); i++)
        if (params_[i].trainable && goff_[i] != kNone)
            std::fill_n(flags.begin() + goff_[i], params_[i].numel, params_[i].decay ? 2 : 1);
    check(cudaMemcpyAsync(s_->flags, flags.data(), flags.size(), cudaMemcpyHostToDevice, s_->stream),
          "cudaMemcpyAsync(update flags)");
    sync("upload of the update flags");  // `flags` is pageable and goes out of scope
    s_->trainable_uploaded = std::move(now);
}

float CudaLlamaEngine::step(float lr) {
    if (g_size_ == 0) {  // nothing trains: the CPU engine's empty step
        t_++;
        return 0.0f;
    }
    activate();
    upload_flags();
    LlamaCudaState& s = *s_;
    // Frozen slices and padding hold zeros: the whole-arena norm is the norm
    // over what trains (the CPU's sum). A skipped (non-finite) step leaves
    // the step count, as on the CPU.
    float norm = 0.0f;
    enqueue_optimizer_step(s.stream, s.master, bf16_ ? static_cast<bf16*>(s.w) : nullptr, s.g, s.m, s.v, s.flags,
                           g_size_, lr, tc_, t_ + 1, s.norm, s.clip, s.norm_scratch, &norm);
    sync("step");
    if (std::isfinite(norm)) t_++;
    return norm;
}

void CudaLlamaEngine::zero_grad() {
    if (g_size_ == 0) return;
    activate();
    check(cudaMemsetAsync(s_->g, 0, g_size_ * sizeof(float), s_->stream), "cudaMemsetAsync(zero_grad)");
    sync("zero_grad");
}

Model::DeviceGradients CudaLlamaEngine::device_gradients() {
    DeviceGradients d;
    d.data = s_->g;
    d.n = g_size_;
    d.stream = s_->stream;
    d.device = device_;
    return d;
}

// ---- parameter access ----------------------------------------------------------------------

void CudaLlamaEngine::read(const ParamInfo& p, Slot slot, float* dst) {
    const size_t i = &p - params_.data();
    activate();
    LlamaCudaState& s = *s_;
    const cudaStream_t st = s.stream;
    if (slot == Slot::Weight) {
        if (!bf16_) {
            check(cudaMemcpyAsync(dst, static_cast<float*>(s.w) + dev_off_[i], p.numel * sizeof(float),
                                  cudaMemcpyDeviceToHost, st),
                  "cudaMemcpyAsync(read)");
        } else if (goff_[i] != kNone) {
            check(cudaMemcpyAsync(dst, s.master + goff_[i], p.numel * sizeof(float), cudaMemcpyDeviceToHost, st),
                  "cudaMemcpyAsync(read)");
        } else {  // a frozen weight exists in bf16 only
            std::vector<uint16_t> h(p.numel);
            check(cudaMemcpyAsync(h.data(), static_cast<bf16*>(s.w) + dev_off_[i], p.numel * sizeof(uint16_t),
                                  cudaMemcpyDeviceToHost, st),
                  "cudaMemcpyAsync(read)");
            sync(("read of " + p.name).c_str());
            for (size_t k = 0; k < p.numel; k++) {
                const uint32_t u = (uint32_t)h[k] << 16;
                std::memcpy(&dst[k], &u, sizeof u);
            }
            return;
        }
    } else if (goff_[i] == kNone) {  // frozen since construction: no gradient, no moments
        std::fill_n(dst, p.numel, 0.0f);
        return;
    } else {
        const float* arena = slot == Slot::Grad ? s.g : slot == Slot::ExpAvg ? s.m : s.v;
        check(cudaMemcpyAsync(dst, arena + goff_[i], p.numel * sizeof(float), cudaMemcpyDeviceToHost, st),
              "cudaMemcpyAsync(read)");
    }
    sync(("read of " + p.name).c_str());
}

void CudaLlamaEngine::write(const ParamInfo& p, Slot slot, const float* src) {
    const size_t i = &p - params_.data();
    activate();
    LlamaCudaState& s = *s_;
    const cudaStream_t st = s.stream;
    if (slot != Slot::Weight) {
        if (goff_[i] == kNone)
            throw EngineError("parameter '" + p.name +
                              "' is frozen (a LoRA base weight, or options.trainable = false) and has no gradient or "
                              "optimizer state");
        float* arena = slot == Slot::Grad ? s.g : slot == Slot::ExpAvg ? s.m : s.v;
        check(cudaMemcpyAsync(arena + goff_[i], src, p.numel * sizeof(float), cudaMemcpyHostToDevice, st),
              "cudaMemcpyAsync(write)");
    } else if (!bf16_) {
        check(cudaMemcpyAsync(static_cast<float*>(s.w) + dev_off_[i], src, p.numel * sizeof(float),
                              cudaMemcpyHostToDevice, st),
              "cudaMemcpyAsync(write)");
    } else if (goff_[i] != kNone) {  // the fp32 master and its bf16 copy
        check(cudaMemcpyAsync(s.master + goff_[i], src, p.numel * sizeof(float), cudaMemcpyHostToDevice, st),
              "cudaMemcpyAsync(write)");
        convert(static_cast<bf16*>(s.w) + dev_off_[i], s.master + goff_[i], p.numel, st);
    } else {
        std::vector<uint16_t> h(p.numel);
        to_bf16(h.data(), src, p.numel);
        check(cudaMemcpyAsync(static_cast<bf16*>(s.w) + dev_off_[i], h.data(), p.numel * sizeof(uint16_t),
                              cudaMemcpyHostToDevice, st),
              "cudaMemcpyAsync(write)");
        sync(("write of " + p.name).c_str());  // `h` goes out of scope
        return;
    }
    sync(("write of " + p.name).c_str());
}

void CudaLlamaEngine::set_trainable(const std::string& name, bool trainable) {
    const size_t i = mark_trainable(name, trainable);
    if (trainable || goff_[i] == kNone) return;
    activate();
    check(cudaMemsetAsync(s_->g + goff_[i], 0, params_[i].numel * sizeof(float), s_->stream), "cudaMemsetAsync(frozen)");
    sync(("freezing " + name).c_str());
}

}  // namespace cuda
}  // namespace nt
