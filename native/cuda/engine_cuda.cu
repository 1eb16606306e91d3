// BertForSequenceClassification training step on one NVIDIA GPU: CpuEngine's
// algorithm (native/engine/engine.cpp) step for step, on the CUDA kernels of
// native/cuda and cuBLASLt. Sources followed: Hugging Face
// models/bert/modeling_bert.py (BertEmbeddings, BertSelfAttention,
// BertSelfOutput, BertIntermediate, BertOutput, BertPooler),
// torch.nn.utils.clip_grad_norm_ and torch.optim.AdamW; mixed precision as
// torch.autocast(dtype=bfloat16) with float32 master weights.
#include "cuda/engine_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

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

// Device memory, stream and cuBLASLt of one engine. Activation views point
// into `acts`, laid out for the capacity (cap_B, cap_T); T-typed views are
// void* (float or bf16 by the engine's precision).
struct CudaState {
    cudaStream_t stream = nullptr;
    std::unique_ptr<Blas> blas;
    DeviceBuffer w_buf, g_buf, m_buf, v_buf, wb_buf, flags_buf, small_buf, acts;
    float *w = nullptr, *g = nullptr, *m = nullptr, *v = nullptr;  // parameter-shaped, float32
    bf16* wb = nullptr;                                              // bf16 weight copy (bf16 mode)
    uint8_t* flags = nullptr;                                        // AdamW: 0 skip, 1 no decay, 2 decay
    float *loss = nullptr, *norm = nullptr, *clip = nullptr, *class_weights = nullptr;
    double* norm_scratch = nullptr;
    std::vector<char> trainable_uploaded;  // params_[i].trainable when flags were last built

    struct Layer {
        void *qkv, *attv, *res1, *ln1, *ffn_h, *ffn_g, *res2, *ln2;
        float *lse, *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
    };
    std::vector<Layer> layers;
    void *emb = nullptr, *emb_ln = nullptr, *attproj = nullptr, *ffn_o = nullptr;
    void *pooled_in = nullptr, *pooled = nullptr, *pooled_drop = nullptr, *logits = nullptr;
    float *emb_mean = nullptr, *emb_rstd = nullptr, *logits32 = nullptr;
    void *dh = nullptr, *dres = nullptr, *dC = nullptr, *dI1 = nullptr, *dI2 = nullptr, *dqkv = nullptr;
    void *dC2 = nullptr, *dpool1 = nullptr, *dpool2 = nullptr, *dlogits = nullptr;
    float *delta = nullptr, *scratch = nullptr;
    // Batch (int32), device side and its pinned host mirror, same offsets.
    int32_t* ints = nullptr;
    PinnedBuffer staging;
    size_t o_ids = 0, o_mask = 0, o_types = 0, o_labels = 0, o_words = 0, o_ttypes = 0;
    DeviceBuckets words, types;
    int cap_B = 0, cap_T = 0;
    int cur_B = 0, cur_T = 0;

    ~CudaState() {
        blas.reset();
        if (stream) cudaStreamDestroy(stream);
    }
};

// ---- construction -------------------------------------------------------------

CudaEngine::CudaEngine(const BertConfig& config, const TrainConfig& train, int device, bool use_bf16)
    : EngineBase(config, train), device_(device), bf16_(use_bf16), s_(new CudaState) {
    const DeviceInfo info = require_device(device);
    device_name_ = "cuda:" + std::to_string(device) + " (" + info.name + ", " + (use_bf16 ? "bf16" : "fp32") + ")";
    activate();
    check(cudaStreamCreateWithFlags(&s_->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    s_->blas.reset(new Blas());

    const size_t n = arena_size_, fb = n * sizeof(float);
    const size_t small_bytes = align_bytes(4 * sizeof(float)) + align_bytes(grad_norm_scratch_doubles() * sizeof(double)) +
                               align_bytes((size_t)cfg_.num_labels * sizeof(float));
    struct Want {
        DeviceBuffer* buf;
        size_t bytes;
        const char* what;
    };
    const Want wants[] = {{&s_->w_buf, fb, "weights"},       {&s_->g_buf, fb, "gradients"},
                          {&s_->m_buf, fb, "exp_avg"},       {&s_->v_buf, fb, "exp_avg_sq"},
                          {&s_->wb_buf, use_bf16 ? n * sizeof(bf16) : 0, "bf16 weight copy"},
                          {&s_->flags_buf, n, "update flags"}, {&s_->small_buf, small_bytes, "scalars"}};
    for (const Want& w : wants) {
        if (w.bytes == 0) continue;
        const std::string note = free_memory_note(device);  // read before: the failed call frees nothing
        if (w.buf->allocate(w.bytes) != cudaSuccess)
            throw EngineError("out of GPU memory allocating the " + std::string(w.what) + " arena (" + mib(w.bytes) +
                              " for " + std::to_string(n_params_) + " parameters)" + note);
        check(cudaMemsetAsync(w.buf->get(), 0, w.bytes, s_->stream), "cudaMemsetAsync(arena)");
    }
    s_->w = reinterpret_cast<float*>(s_->w_buf.get());
    s_->g = reinterpret_cast<float*>(s_->g_buf.get());
    s_->m = reinterpret_cast<float*>(s_->m_buf.get());
    s_->v = reinterpret_cast<float*>(s_->v_buf.get());
    s_->wb = use_bf16 ? reinterpret_cast<bf16*>(s_->wb_buf.get()) : nullptr;
    s_->flags = reinterpret_cast<uint8_t*>(s_->flags_buf.get());
    char* p = s_->small_buf.get();
    s_->loss = reinterpret_cast<float*>(p);
    s_->norm = s_->loss + 1;
    s_->clip = s_->loss + 2;
    p += align_bytes(4 * sizeof(float));
    s_->norm_scratch = reinterpret_cast<double*>(p);
    p += align_bytes(grad_norm_scratch_doubles() * sizeof(double));
    if (!tc_.class_weights.empty()) {
        s_->class_weights = reinterpret_cast<float*>(p);
        check(cudaMemcpyAsync(s_->class_weights, tc_.class_weights.data(), tc_.class_weights.size() * sizeof(float),
                              cudaMemcpyHostToDevice, s_->stream),
              "cudaMemcpyAsync(class_weights)");
    }
    sync("constructor");
}

CudaEngine::~CudaEngine() {
    if (!s_) return;
    cudaSetDevice(device_);  // members free on this thread's current device
    if (s_->stream) cudaStreamSynchronize(s_->stream);
}

std::unique_ptr<EngineBase> make_cuda_engine(const BertConfig& config, const TrainConfig& train, int device,
                                             bool use_bf16) {
    return std::make_unique<CudaEngine>(config, train, device, use_bf16);
}

void CudaEngine::activate() const { check(cudaSetDevice(device_), "cudaSetDevice"); }

void CudaEngine::sync(const char* what) {
    const cudaError_t e = cudaStreamSynchronize(s_->stream);
    if (e != cudaSuccess)
        throw CudaError(e, std::string("CUDA engine on ") + device_name_ + ", " + what + ": " + cudaGetErrorName(e) +
                               " (" + cudaGetErrorString(e) + ")");
}

// ---- activation arena -----------------------------------------------------------

void CudaEngine::ensure_activations(int B, int T) {
    CudaState& s = *s_;
    s.cur_B = B;
    s.cur_T = T;
    if (B <= s.cap_B && T <= s.cap_T) return;
    const int cB = std::max(B, s.cap_B), cT = std::max(T, s.cap_T);
    const size_t N = (size_t)cB * cT, C = cfg_.hidden_size, I = cfg_.intermediate_size, L = cfg_.num_labels;
    const size_t NH = cfg_.num_attention_heads, es = bf16_ ? sizeof(bf16) : sizeof(float);
    const size_t maxOC = std::max({3 * C, I, L});
    const size_t scratch_floats = std::max({layernorm_backward_scratch_floats((int)N, (int)C),
                                            bias_backward_scratch_floats((int)N, (int)maxOC),
                                            bias_backward_scratch_floats(cB, (int)std::max(C, L))});
    const size_t n_ints = 3 * N + (size_t)cB + 2 * (3 * N + 1);

    // Two passes over the same layout: the first (base null) only measures.
    size_t total = 0;
    char* base = nullptr;
    auto take = [&](size_t bytes) -> void* {
        void* r = base ? base + total : nullptr;
        total += align_bytes(bytes);
        return r;
    };
    auto takef = [&](size_t n) { return static_cast<float*>(take(n * sizeof(float))); };
    auto layout = [&] {
        total = 0;
        s.emb = take(N * C * es);
        s.emb_ln = take(N * C * es);
        s.emb_mean = takef(N);
        s.emb_rstd = takef(N);
        s.attproj = take(N * C * es);
        s.ffn_o = take(N * C * es);
        s.layers.assign(cfg_.num_hidden_layers, CudaState::Layer{});
        for (auto& la : s.layers) {
            la.qkv = take(N * 3 * C * es);
            la.attv = take(N * C * es);
            la.lse = takef(cB * NH * cT);
            la.res1 = take(N * C * es);
            la.ln1 = take(N * C * es);
            la.ln1_mean = takef(N);
            la.ln1_rstd = takef(N);
            la.ffn_h = take(N * I * es);
            la.ffn_g = take(N * I * es);
            la.res2 = take(N * C * es);
            la.ln2 = take(N * C * es);
            la.ln2_mean = takef(N);
            la.ln2_rstd = takef(N);
        }
        s.pooled_in = take(cB * C * es);
        s.pooled = take(cB * C * es);
        s.pooled_drop = take(cB * C * es);
        s.logits = take(cB * L * es);
        s.logits32 = takef(cB * L);
        s.dh = take(N * C * es);
        s.dres = take(N * C * es);
        s.dC = take(N * C * es);
        s.dI1 = take(N * I * es);
        s.dI2 = take(N * I * es);
        s.dqkv = take(N * 3 * C * es);
        s.delta = takef(cB * NH * cT);
        s.dC2 = take(cB * C * es);
        s.dpool1 = take(cB * C * es);
        s.dpool2 = take(cB * C * es);
        s.dlogits = take(cB * L * es);
        s.scratch = takef(scratch_floats);
        s.ints = static_cast<int32_t*>(take(n_ints * sizeof(int32_t)));
    };
    layout();
    s.acts.reset();  // the old arena's memory is available to the new one
    s.staging.reset();
    s.cap_B = s.cap_T = 0;
    const std::string note = free_memory_note(device_);
    if (s.acts.allocate(total) != cudaSuccess)
        throw EngineError("out of GPU memory: the activations for batch B=" + std::to_string(cB) + ", T=" +
                          std::to_string(cT) + " need " + mib(total) + note +
                          "; use a smaller batch size or sequence length");
    base = s.acts.get();
    layout();
    s.staging.allocate(n_ints * sizeof(int32_t));
    s.o_ids = 0;
    s.o_mask = N;
    s.o_types = 2 * N;
    s.o_labels = 3 * N;
    s.o_words = 3 * N + cB;            // order N | offsets N+1 | ids N
    s.o_ttypes = s.o_words + 3 * N + 1;
    s.cap_B = cB;
    s.cap_T = cT;
}

// ---- batch upload ---------------------------------------------------------------

namespace {
// Copies buckets into staging at `at` (order | offsets | ids) and points `d`
// at the device copy.
void stage_buckets(const IdBuckets& b, int32_t* host, int32_t* dev, size_t at, size_t N, DeviceBuckets& d) {
    std::copy(b.order.begin(), b.order.end(), host + at);
    std::copy(b.offsets.begin(), b.offsets.end(), host + at + N);
    std::copy(b.ids.begin(), b.ids.end(), host + at + 2 * N + 1);
    d.order = dev + at;
    d.offsets = dev + at + N;
    d.ids = dev + at + 2 * N + 1;
    d.num_segments = (int)b.ids.size();
}
}  // namespace

void CudaEngine::upload_batch(const Batch& b, bool embedding_grads) {
    ensure_activations(b.B, b.T);
    row_offset_ = b.row_offset;
    CudaState& s = *s_;
    const size_t n = (size_t)b.B * b.T, N = (size_t)s.cap_B * s.cap_T;
    int32_t* h = s.staging.ints();
    std::copy(b.input_ids, b.input_ids + n, h + s.o_ids);
    std::copy(b.attention_mask, b.attention_mask + n, h + s.o_mask);
    std::copy(b.token_type_ids, b.token_type_ids + n, h + s.o_types);
    size_t end = s.o_labels;
    if (b.labels) {
        std::copy(b.labels, b.labels + b.B, h + s.o_labels);
        end = s.o_labels + b.B;
    }
    s.words = DeviceBuckets{};
    s.types = DeviceBuckets{};
    if (embedding_grads) {
        // Deterministic embedding backward: token positions grouped by id on the host.
        stage_buckets(make_id_buckets(b.input_ids, (int)n, cfg_.vocab_size), h, s.ints, s.o_words, N, s.words);
        stage_buckets(make_id_buckets(b.token_type_ids, (int)n, cfg_.type_vocab_size), h, s.ints, s.o_ttypes, N,
                      s.types);
        end = s.o_ttypes + 3 * N + 1;
    }
    check(cudaMemcpyAsync(s.ints, h, end * sizeof(int32_t), cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync(batch)");
}

// ---- forward and backward for activation type T ------------------------------------

template <typename T>
struct CudaPass {
    CudaEngine& e;
    CudaState& s;
    cudaStream_t st;
    Blas& blas;
    const int B, Tn, C, I, NH, L, N;
    const size_t NC, es = sizeof(T);
    const int32_t *ids, *mask, *types;

    CudaPass(CudaEngine& engine)
        : e(engine), s(*engine.s_), st(s.stream), blas(*s.blas), B(s.cur_B), Tn(s.cur_T),
          C(engine.cfg_.hidden_size), I(engine.cfg_.intermediate_size), NH(engine.cfg_.num_attention_heads),
          L(engine.cfg_.num_labels), N(B * Tn), NC((size_t)B * Tn * C), ids(s.ints + s.o_ids),
          mask(s.ints + s.o_mask), types(s.ints + s.o_types) {}

    static T* A(void* p) { return static_cast<T*>(p); }
    const T* W(size_t idx) const {
        const size_t off = e.params_[idx].offset;
        if constexpr (std::is_same<T, float>::value) return s.w + off;
        else return s.wb + off;
    }
    float* G(size_t idx) const { return e.params_[idx].trainable ? s.g + e.params_[idx].offset : nullptr; }
    // q/k/v share one GEMM: the group's gradient when any of the three trains.
    float* G_fused(size_t first) const {
        return e.any_trainable(first, 3) ? s.g + e.params_[first].offset : nullptr;
    }
    void clear_frozen(size_t first, size_t count) {
        for (size_t i = first; i < first + count; i++)
            if (!e.params_[i].trainable)
                check(cudaMemsetAsync(s.g + e.params_[i].offset, 0, e.params_[i].numel * sizeof(float), st),
                      "cudaMemsetAsync(frozen gradient)");
    }
    void copy(void* dst, const void* src, size_t n) {
        check(cudaMemcpyAsync(dst, src, n * es, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync(activation)");
    }

    void layer_forward(int l, const T* x, bool train) {
        const CudaEngine::LayerIdx& li = e.lidx_[l];
        CudaState::Layer& a = s.layers[l];
        const float p_att = train ? e.cfg_.attention_probs_dropout_prob : 0.0f;
        const float p_hid = train ? e.cfg_.hidden_dropout_prob : 0.0f;
        const float eps = e.cfg_.layer_norm_eps;
        // BertSelfAttention: one GEMM for [q | k | v], then fused attention
        blas.linear_forward<T>(st, A(a.qkv), x, W(li.qkv_w), W(li.qkv_b), N, C, 3 * C);
        attention_forward<T>(A(a.attv), a.lse, A(a.qkv), mask, B, Tn, C, NH, p_att,
                             e.key(CudaEngine::tid_att_probs(l), (size_t)NH * Tn * Tn), st);
        // BertSelfOutput: LayerNorm(dropout(dense(attv)) + x)
        blas.linear_forward<T>(st, A(s.attproj), A(a.attv), W(li.ao_w), W(li.ao_b), N, C, C);
        if (p_hid > 0) dropout_forward<T>(A(s.attproj), A(s.attproj), NC, p_hid, e.key(CudaEngine::tid_att_out(l), (size_t)Tn * C), st);
        residual_layernorm_forward<T>(A(a.res1), A(a.ln1), a.ln1_mean, a.ln1_rstd, A(s.attproj), x, W(li.ln1_w),
                                      W(li.ln1_b), N, C, eps, st);
        // BertIntermediate + BertOutput: LayerNorm(dropout(dense(gelu(dense(h)))) + h)
        blas.linear_forward<T>(st, A(a.ffn_h), A(a.ln1), W(li.ff1_w), W(li.ff1_b), N, C, I);
        gelu_forward<T>(A(a.ffn_g), A(a.ffn_h), (size_t)N * I, st);
        blas.linear_forward<T>(st, A(s.ffn_o), A(a.ffn_g), W(li.ff2_w), W(li.ff2_b), N, I, C);
        if (p_hid > 0) dropout_forward<T>(A(s.ffn_o), A(s.ffn_o), NC, p_hid, e.key(CudaEngine::tid_ffn_out(l), (size_t)Tn * C), st);
        residual_layernorm_forward<T>(A(a.res2), A(a.ln2), a.ln2_mean, a.ln2_rstd, A(s.ffn_o), A(a.ln1), W(li.ln2_w),
                                      W(li.ln2_b), N, C, eps, st);
    }

    void forward(bool train) {
        const float p_hid = train ? e.cfg_.hidden_dropout_prob : 0.0f;
        embedding_forward<T>(A(s.emb), ids, types, W(e.emb_w_), W(e.emb_p_), W(e.emb_t_), B, Tn, C, st);
        layernorm_forward<T>(A(s.emb_ln), s.emb_mean, s.emb_rstd, A(s.emb), W(e.emb_ln_w_), W(e.emb_ln_b_), N, C,
                             e.cfg_.layer_norm_eps, st);
        if (p_hid > 0) dropout_forward<T>(A(s.emb_ln), A(s.emb_ln), NC, p_hid, e.key(0, (size_t)Tn * C), st);
        const T* x = A(s.emb_ln);
        for (int l = 0; l < e.cfg_.num_hidden_layers; l++) {
            layer_forward(l, x, train);
            x = A(s.layers[l].ln2);
        }
        // BertPooler: tanh(dense(h[:, 0])); then classifier dropout and linear.
        check(cudaMemcpy2DAsync(s.pooled_in, C * es, x, (size_t)Tn * C * es, C * es, B, cudaMemcpyDeviceToDevice, st),
              "cudaMemcpy2DAsync(pooler input)");
        blas.linear_forward<T>(st, A(s.pooled), A(s.pooled_in), W(e.pool_w_), W(e.pool_b_), B, C, C);
        tanh_forward<T>(A(s.pooled), A(s.pooled), (size_t)B * C, st);
        const float p_cls = train ? e.cfg_.classifier_dropout : 0.0f;
        if (p_cls > 0)
            dropout_forward<T>(A(s.pooled_drop), A(s.pooled), (size_t)B * C, p_cls, e.key(e.tid_classifier(), C), st);
        else
            copy(s.pooled_drop, s.pooled, (size_t)B * C);
        blas.linear_forward<T>(st, A(s.logits), A(s.pooled_drop), W(e.cls_w_), W(e.cls_b_), B, C, L);
    }

    // dx: gradient of the layer output in, of its input out (same buffer).
    void layer_backward(int l, const T* x, T* dx, bool need_dinp) {
        const CudaEngine::LayerIdx& li = e.lidx_[l];
        CudaState::Layer& a = s.layers[l];
        const float p_hid = e.cfg_.hidden_dropout_prob;
        T *dres = A(s.dres), *dC = A(s.dC);
        // output LayerNorm: dres2 = dLN2(dx); the residual sends dres2 to ln1 too
        layernorm_backward<T>(dres, G(li.ln2_w), G(li.ln2_b), dx, A(a.res2), W(li.ln2_w), a.ln2_mean, a.ln2_rstd, N, C,
                              s.scratch, false, st);
        const T* dffn = dres;
        if (p_hid > 0) {
            dropout_backward<T>(dC, dres, NC, p_hid, e.key(CudaEngine::tid_ffn_out(l), (size_t)Tn * C), st);
            dffn = dC;
        }
        blas.linear_backward<T>(st, A(s.dI1), G(li.ff2_w), G(li.ff2_b), dffn, A(a.ffn_g), W(li.ff2_w), N, I, C, false,
                                s.scratch);
        gelu_backward<T>(A(s.dI2), A(a.ffn_h), A(s.dI1), (size_t)N * I, st);
        // dx <- dres2 + dI2 @ W1: gradient at ln1 (the residual plus the FFN path)
        copy(dx, dres, NC);
        blas.linear_backward<T>(st, dx, G(li.ff1_w), G(li.ff1_b), A(s.dI2), A(a.ln1), W(li.ff1_w), N, C, I, true,
                                s.scratch);
        // attention LayerNorm
        layernorm_backward<T>(dres, G(li.ln1_w), G(li.ln1_b), dx, A(a.res1), W(li.ln1_w), a.ln1_mean, a.ln1_rstd, N, C,
                              s.scratch, false, st);
        const T* dproj = dres;
        if (p_hid > 0) {
            dropout_backward<T>(dC, dres, NC, p_hid, e.key(CudaEngine::tid_att_out(l), (size_t)Tn * C), st);
            dproj = dC;
        }
        blas.linear_backward<T>(st, dx, G(li.ao_w), G(li.ao_b), dproj, A(a.attv), W(li.ao_w), N, C, C, false,
                                s.scratch);
        attention_backward<T>(A(s.dqkv), s.delta, dx, A(a.attv), A(a.qkv), a.lse, mask, B, Tn, C, NH,
                              e.cfg_.attention_probs_dropout_prob, e.key(CudaEngine::tid_att_probs(l), (size_t)NH * Tn * Tn), st);
        // dx <- dres1 + dqkv @ Wqkv (residual to the layer input), when below needs it
        if (need_dinp) copy(dx, dres, NC);
        blas.linear_backward<T>(st, need_dinp ? dx : nullptr, G_fused(li.qkv_w), G_fused(li.qkv_b), A(s.dqkv), x,
                                W(li.qkv_w), N, C, 3 * C, true, s.scratch);
        clear_frozen(li.qkv_w, 3);
        clear_frozen(li.qkv_b, 3);
    }

    void backward() {
        const int NL = e.cfg_.num_hidden_layers;
        // classifier, classifier dropout, pooler
        blas.linear_backward<T>(st, A(s.dpool1), G(e.cls_w_), G(e.cls_b_), A(s.dlogits), A(s.pooled_drop), W(e.cls_w_),
                                B, C, L, false, s.scratch);
        if (e.cfg_.classifier_dropout > 0)
            dropout_backward<T>(A(s.dpool2), A(s.dpool1), (size_t)B * C, e.cfg_.classifier_dropout,
                                e.key(e.tid_classifier(), C), st);
        else
            copy(s.dpool2, s.dpool1, (size_t)B * C);
        tanh_backward<T>(A(s.dpool1), A(s.pooled), A(s.dpool2), (size_t)B * C, st);
        // Backpropagate only as deep as the lowest trainable parameter (freezing).
        const int first = e.first_trainable();
        const bool need_encoder = first < NL;
        blas.linear_backward<T>(st, need_encoder ? A(s.dC2) : nullptr, G(e.pool_w_), G(e.pool_b_), A(s.dpool1),
                                A(s.pooled_in), W(e.pool_w_), B, C, C, false, s.scratch);
        if (!need_encoder) return;
        // only token 0 of each sequence feeds the pooler
        check(cudaMemsetAsync(s.dh, 0, NC * es, st), "cudaMemsetAsync(dh)");
        check(cudaMemcpy2DAsync(s.dh, (size_t)Tn * C * es, s.dC2, C * es, C * es, B, cudaMemcpyDeviceToDevice, st),
              "cudaMemcpy2DAsync(pooler gradient)");
        for (int l = NL - 1; l >= std::max(first, 0); l--) {
            const T* x = l == 0 ? A(s.emb_ln) : A(s.layers[l - 1].ln2);
            layer_backward(l, x, A(s.dh), l > first);
        }
        if (first >= 0) return;
        // embeddings: dropout, LayerNorm, the three lookups
        if (e.cfg_.hidden_dropout_prob > 0)
            dropout_backward<T>(A(s.dh), A(s.dh), NC, e.cfg_.hidden_dropout_prob, e.key(0, (size_t)Tn * C), st);
        layernorm_backward<T>(A(s.dres), G(e.emb_ln_w_), G(e.emb_ln_b_), A(s.dh), A(s.emb), W(e.emb_ln_w_), s.emb_mean,
                              s.emb_rstd, N, C, s.scratch, false, st);
        embedding_backward_sorted<T>(G(e.emb_w_), G(e.emb_p_), G(e.emb_t_), A(s.dres), s.words, s.types, B, Tn, C, st);
        // HF: nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        const int pad = e.cfg_.pad_token_id;
        if (float* dwte = G(e.emb_w_); dwte && pad >= 0 && pad < e.cfg_.vocab_size)
            check(cudaMemsetAsync(dwte + (size_t)pad * C, 0, C * sizeof(float), st), "cudaMemsetAsync(pad row)");
    }

    // Mean loss into s.loss; dlogits (when `grad`) = loss_scale * dloss/dlogits.
    void loss(const int32_t* labels, bool grad, float loss_scale) {
        crossentropy_softmax_forward_backward<T>(s.loss, grad ? A(s.dlogits) : nullptr, A(s.logits), labels,
                                                 s.class_weights, B, L, e.tc_.label_smoothing_factor, loss_scale, st);
    }
};

void CudaEngine::run_forward(bool train) {
    if (bf16_) CudaPass<bf16>(*this).forward(train);
    else CudaPass<float>(*this).forward(train);
}

void CudaEngine::run_backward() {
    if (bf16_) CudaPass<bf16>(*this).backward();
    else CudaPass<float>(*this).backward();
}

// ---- the public step ------------------------------------------------------------------

float CudaEngine::forward(const Batch& b, float* logits, bool train) {
    validate(b, false);
    activate();
    upload_batch(b, false);
    run_forward(train);
    CudaState& s = *s_;
    const size_t BL = (size_t)b.B * cfg_.num_labels;
    const int32_t* labels = b.labels ? s.ints + s.o_labels : nullptr;
    if (labels) {
        if (bf16_) CudaPass<bf16>(*this).loss(labels, false, 1.0f);
        else CudaPass<float>(*this).loss(labels, false, 1.0f);
    }
    float loss = 0.0f;
    if (logits) {
        const float* src = static_cast<const float*>(s.logits);
        if (bf16_) {
            convert(s.logits32, static_cast<const bf16*>(s.logits), BL, s.stream);
            src = s.logits32;
        }
        check(cudaMemcpyAsync(logits, src, BL * sizeof(float), cudaMemcpyDeviceToHost, s.stream),
              "cudaMemcpyAsync(logits)");
    }
    if (labels) check(cudaMemcpyAsync(&loss, s.loss, sizeof(float), cudaMemcpyDeviceToHost, s.stream), "cudaMemcpyAsync(loss)");
    sync("forward");
    return labels ? loss : 0.0f;
}

float CudaEngine::accumulate(const Batch& b, float loss_scale) {
    validate(b, true);
    activate();
    upload_batch(b, first_trainable() < 0);
    run_forward(true);
    const int32_t* labels = s_->ints + s_->o_labels;
    if (bf16_) CudaPass<bf16>(*this).loss(labels, true, loss_scale);
    else CudaPass<float>(*this).loss(labels, true, loss_scale);
    run_backward();
    float loss = 0.0f;
    check(cudaMemcpyAsync(&loss, s_->loss, sizeof(float), cudaMemcpyDeviceToHost, s_->stream), "cudaMemcpyAsync(loss)");
    sync("accumulate");
    micro_step_++;
    return loss;
}

// ---- optimizer -------------------------------------------------------------------------

void CudaEngine::upload_flags() {
    std::vector<char> now(params_.size());
    for (size_t i = 0; i < params_.size(); i++) now[i] = params_[i].trainable;
    if (now == s_->trainable_uploaded) return;
    std::vector<uint8_t> flags(arena_size_, 0);  // alignment padding: never updated
    for (const auto& p : params_)
        if (p.trainable) std::fill_n(flags.begin() + p.offset, p.numel, p.decay ? 2 : 1);
    check(cudaMemcpyAsync(s_->flags, flags.data(), flags.size(), cudaMemcpyHostToDevice, s_->stream),
          "cudaMemcpyAsync(update flags)");
    sync("upload of the update flags");  // `flags` is pageable and goes out of scope
    s_->trainable_uploaded = std::move(now);
}

float CudaEngine::step(float lr) {
    activate();
    upload_flags();
    CudaState& s = *s_;
    // Frozen slices and padding hold zeros, so the whole-arena norm is the
    // norm over trainable parameters (the CPU's sum). A skipped (non-finite)
    // step leaves the step count, as on the CPU.
    float norm = 0.0f;
    enqueue_optimizer_step(s.stream, s.w, s.wb, s.g, s.m, s.v, s.flags, arena_size_, lr, tc_, t_ + 1, s.norm, s.clip,
                           s.norm_scratch, &norm);
    sync("step");
    if (std::isfinite(norm)) t_++;
    return norm;
}

void CudaEngine::zero_grad() {
    activate();
    check(cudaMemsetAsync(s_->g, 0, arena_size_ * sizeof(float), s_->stream), "cudaMemsetAsync(zero_grad)");
    sync("zero_grad");
}

Model::DeviceGradients CudaEngine::device_gradients() {
    DeviceGradients d;
    d.data = s_->g;
    d.n = arena_size_;
    d.stream = s_->stream;
    d.device = device_;
    return d;
}

// ---- parameter access -----------------------------------------------------------------

namespace {
float* slot_arena(CudaState& s, EngineBase::Slot slot) {
    switch (slot) {
        case EngineBase::Slot::Weight: return s.w;
        case EngineBase::Slot::Grad: return s.g;
        case EngineBase::Slot::ExpAvg: return s.m;
        case EngineBase::Slot::ExpAvgSq: return s.v;
    }
    throw EngineError("unknown parameter slot");
}
}  // namespace

void CudaEngine::read(const ParamInfo& p, Slot slot, float* dst) {
    activate();
    check(cudaMemcpyAsync(dst, slot_arena(*s_, slot) + p.offset, p.numel * sizeof(float), cudaMemcpyDeviceToHost,
                          s_->stream),
          "cudaMemcpyAsync(read)");
    sync(("read of " + p.name).c_str());
}

void CudaEngine::write(const ParamInfo& p, Slot slot, const float* src) {
    activate();
    float* dst = slot_arena(*s_, slot) + p.offset;
    check(cudaMemcpyAsync(dst, src, p.numel * sizeof(float), cudaMemcpyHostToDevice, s_->stream),
          "cudaMemcpyAsync(write)");
    if (slot == Slot::Weight && s_->wb) convert(s_->wb + p.offset, dst, p.numel, s_->stream);
    sync(("write of " + p.name).c_str());
}

void CudaEngine::on_frozen(const ParamInfo& p) {
    activate();
    check(cudaMemsetAsync(s_->g + p.offset, 0, p.numel * sizeof(float), s_->stream), "cudaMemsetAsync(frozen)");
    sync(("freezing " + p.name).c_str());
}

}  // namespace cuda
}  // namespace nt
