// CPU kernels of the BERT training step. Each forward sits beside its backward
// in one .cpp file per op; every kernel is a template over the scalar type so
// the same code runs in float32 (training) and float64 (finite-difference
// checks, native/test/gradcheck.cpp).
//
// Shapes are written the way the code indexes them, row-major, last index
// fastest: B batch, T sequence, C hidden_size, NH heads, HS = C / NH head size,
// OC/IC output/input channels, N rows (B*T), L num_labels.
//
// Gradient conventions (the engine relies on them):
//   - parameter gradients (dweight, dbias, dwte, ...) are ACCUMULATED (+=), so
//     micro-batches of gradient accumulation simply add up;
//   - input/activation gradients (dinp, dqkv, ...) are WRITTEN (=) unless a
//     kernel takes an `accumulate` flag.
// Elementwise kernels (gelu, tanh, dropout forward and backward) allow the
// output to alias the input (in place); the engine relies on it.
// Kernels are multi-threaded with OpenMP over an outer index whose partition
// is fixed by the thread count, so results are deterministic for a given
// thread count.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace nt {

// ---- GEMM (BLAS) ----------------------------------------------------------
// C(M,N) = alpha * op(A) * op(B) + beta * C, row-major, op = transpose if t*.
// lda/ldb/ldc are row strides. Backed by cblas_{s,d}gemm.
template <typename T>
void gemm(bool transA, bool transB, int M, int N, int K, T alpha, const T* A, int lda,
          const T* B, int ldb, T beta, T* C, int ldc);

// ---- embeddings (HF BertEmbeddings, absolute positions 0..T-1) ------------
// out(B,T,C) = wte[input_ids] + wpe[t] + wtt[token_type_ids]
// wte (V,C), wpe (P,C), wtt (TV,C); ids (B,T) already validated by the caller.
template <typename T>
void embedding_forward(T* out, const int32_t* input_ids, const int32_t* token_type_ids,
                       const T* wte, const T* wpe, const T* wtt, int B, int Tn, int C);
// Scatter-adds dout(B,T,C) into dwte/dwpe/dwtt (+=). Any of the three may be
// null (frozen). Threads split channels, so there is no write conflict.
template <typename T>
void embedding_backward(T* dwte, T* dwpe, T* dwtt, const T* dout, const int32_t* input_ids,
                        const int32_t* token_type_ids, int B, int Tn, int C);

// ---- LayerNorm (Ba et al. 2016; torch.nn.LayerNorm, biased variance) ------
// out(N,C) = (inp - mean) * rstd * weight + bias; saves mean(N), rstd(N).
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight,
                       const T* bias, int N, int C, T eps);
// dinp (=), dweight/dbias (+=, may be null).
template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int N, int C);

// ---- Linear (torch.nn.Linear: weight (OC,IC)) ----------------------------
// out(N,OC) = inp(N,IC) @ weight^T + bias (bias may be null)
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IC,
                    int OC);
// dinp(N,IC) = dout @ weight (written, or added when accumulate_dinp; null to skip),
// dweight(OC,IC) += dout^T @ inp, dbias(OC) += sum_n dout (either may be null).
template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                     const T* weight, int N, int IC, int OC, bool accumulate_dinp);

// ---- GELU, exact erf form (HF "gelu"): x * 0.5 * (1 + erf(x / sqrt(2))) ---
template <typename T>
void gelu_forward(T* out, const T* inp, size_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n);

// ---- tanh (BertPooler activation) -----------------------------------------
template <typename T>
void tanh_forward(T* out, const T* inp, size_t n);
// uses the saved output: dinp = dout * (1 - out^2)
template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n);

// ---- dropout with a counter-based RNG --------------------------------------
// Element i is kept when dropout_uniform(seed, step, tensor_id, i) >= p and
// scaled by 1/(1-p) (inverted dropout, as torch.nn.Dropout). Backward
// regenerates the same mask from the same key instead of storing it.
// Philox4x32-10 (Salmon et al. 2011); identical on CUDA.
// offset: the index of this tensor's first element in the tensor of the whole
// (global) batch. A data-parallel rank holds rows [b0, b1) of every global
// batch; with offset = b0 × (elements per row) its masks are that slice of
// the one-process masks, element for element.
struct DropoutKey {
    uint64_t seed;
    uint64_t step;
    uint32_t tensor_id;
    uint64_t offset = 0;
};
float dropout_uniform(const DropoutKey& key, uint64_t index);  // in [0, 1); index + key.offset is drawn
template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, float p, const DropoutKey& key);
template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, float p, const DropoutKey& key);
// dropout_forward that also records the mask: element i's kept flag is bit
// i % 8 of keep[i / 8] ((n + 7) / 8 bytes). Where the backward needs the mask
// more than once (LoRA: for dA and for dinp), reading 1 bit beats Philox.
template <typename T>
void dropout_forward_mask(T* out, const T* inp, uint8_t* keep, size_t n, float p, const DropoutKey& key);
// out = inp * (kept ? 1/(1-p) : 0) by a recorded mask: the forward's map, and
// (being linear) its backward; out += that with accumulate. out may alias inp.
template <typename T>
void dropout_apply_mask(T* out, const T* inp, const uint8_t* keep, size_t n, float p, bool accumulate = false);

// ---- scaled dot-product self-attention (HF BertSelfAttention, eager) -----
// qkv (B,T,3C): per token [q(C) | k(C) | v(C)], head h uses channels
// h*HS..(h+1)*HS of each. mask (B,T): 1 = attend, 0 = padding key.
// att (B,NH,T,T) saves the softmax probabilities (before dropout) for the
// backward. out (B,T,C) = dropout(softmax(q k^T / sqrt(HS) + mask)) v, heads
// concatenated. Masked keys get exactly zero probability; a row whose keys
// are all masked gets a uniform distribution (what HF's finfo.min mask gives).
// Attention-probability dropout uses `key` with index (b,h,t1,t2) flattened.
template <typename T>
void attention_forward(T* out, T* att, const T* qkv, const int32_t* mask, int B, int Tn,
                       int C, int NH, float dropout_p, const DropoutKey& key);
// dqkv (B,T,3C) written. scratch: B*NH*T*T elements of workspace.
template <typename T>
void attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att,
                        const int32_t* mask, int B, int Tn, int C, int NH, float dropout_p,
                        const DropoutKey& key);

// ---- fused softmax + cross-entropy (torch.nn.CrossEntropyLoss) -----------
// logits (B,L), labels (B) in [0,L) or -100 (ignored). class_weights (L) may
// be null. Loss per example (PyTorch's formula):
//   l_i = (1-eps) * w[y_i] * (-log p[y_i]) + eps/L * sum_c w[c] * (-log p[c])
// reduced by a weighted mean: sum_i l_i / sum_i w[y_i] over non-ignored i.
// Returns that mean loss. dlogits (B,L) (=) receives grad_scale * dloss/dlogits;
// rows of ignored examples are zero. Probabilities are never stored.
// If every label is ignored the loss is 0 and dlogits all zero.
template <typename T>
T crossentropy_softmax_forward_backward(T* dlogits, const T* logits, const int32_t* labels,
                                        const T* class_weights, int B, int L,
                                        T label_smoothing, T grad_scale);
// Forward only (evaluation): same loss, no gradient.
template <typename T>
T crossentropy_softmax_forward(const T* logits, const int32_t* labels, const T* class_weights,
                               int B, int L, T label_smoothing);

// ---- optimizer -------------------------------------------------------------
// Sum of squares of g[0..n) in double (for the global gradient norm).
template <typename T>
double sum_squares(const T* g, size_t n);
template <typename T>
void scale_inplace(T* x, size_t n, T s);

// Fused AdamW (Loshchilov & Hutter 2019; torch.optim.AdamW): for each i
//   p -= lr * weight_decay * p                     (decoupled decay)
//   g  = grad[i] * grad_scale                      (clipping folded in)
//   m  = beta1 m + (1-beta1) g;  v = beta2 v + (1-beta2) g^2
//   p -= (lr / (1-beta1^t)) * m / (sqrt(v) / sqrt(1-beta2^t) + eps)
// t is the 1-based optimizer step.
template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t t, float grad_scale);

// ==== decoder (Llama family: HF modeling_llama.py, Qwen2) ===================
// Shapes: N = B*T token rows; C hidden_size; NH query heads, NKV key/value
// heads (grouped-query attention: query head h reads kv head h / (NH/NKV));
// HS head_dim; I intermediate_size; V vocab_size; r LoRA rank.

// ---- token embeddings (HF nn.Embedding, no positions) ----------------------
// out(N,C) = wte[ids]. Backward: embedding_backward(dwte, null, null, ...).
template <typename T>
void token_embedding_forward(T* out, const int32_t* ids, const T* wte, int N, int C);

// ---- RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm) ----------------------
// out(N,C) = inp * rstd * weight, rstd(N) = 1 / sqrt(mean_c(inp^2) + eps).
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps);
// dinp (=, or += when accumulate_dinp: the residual stream's gradient adds in
// place), dweight (+=, may be null).
template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C, bool accumulate_dinp);

// ---- rotary position embedding (Su et al. 2021; HF rotate_half layout) -----
// inv_freq (HS/2) for rope_theta and HF's rope_scaling: type "default" (none)
// or "llama3" (transformers' _compute_llama3_parameters: wavelengths longer
// than original_max_position_embeddings / low_freq_factor divided by factor,
// shorter than .../high_freq_factor kept, smoothly interpolated between).
struct RopeScaling {
    bool llama3 = false;
    double factor = 1, low_freq_factor = 1, high_freq_factor = 4;
    double original_max_position_embeddings = 8192;
};
void rope_inv_freq(double* inv_freq, int HS, double theta, const RopeScaling& scaling);
// cos/sin tables (P, HS/2): angle(p, i) = p * inv_freq[i].
template <typename T>
void rope_tables(T* cos_t, T* sin_t, const double* inv_freq, int P, int HS);
// In place on n_heads heads of HS channels at the start of each row of x
// (row stride `stride` elements): for i < HS/2, with a = angle(pos[n], i),
//   x1' = x1 cos a - x2 sin a,  x2' = x2 cos a + x1 sin a   (x1 = x[i], x2 = x[i + HS/2]).
// pos (N) indexes the tables. Backward is the inverse rotation (in place on dx).
template <typename T>
void rope_forward(T* x, const T* cos_t, const T* sin_t, const int32_t* pos, int N, int stride,
                  int n_heads, int HS);
template <typename T>
void rope_backward(T* dx, const T* cos_t, const T* sin_t, const int32_t* pos, int N, int stride,
                   int n_heads, int HS);

// ---- SwiGLU MLP activation (Shazeer 2020; HF LlamaMLP) ---------------------
// gu (N, 2I) = [gate | up] from one GEMM; out(N,I) = silu(gate) * up.
template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int I);
// dgu (N, 2I) written.
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int I);

// ---- causal self-attention with GQA and padding ----------------------------
// qkv (N, (NH + 2 NKV) HS) per token [q heads | k heads | v heads], q and k
// already rotated. mask (B,T): 0 = padding (never a key), k >= 1 = the token
// belongs to segment k (1 everywhere for one sequence a row; packed examples
// get 1, 2, 3, ...). Query t attends to keys t' <= t of its own segment:
// softmax(q k^T / sqrt(HS)) v, so packed examples never see each other.
// out (N, NH HS); lse (B, NH, T) saves each row's log-sum-exp so the backward
// recomputes the probabilities instead of storing (T x T) per head (FlashAttention's
// recomputation, Dao et al. 2022, on BLAS blocks of query rows). A query with no
// key it may attend to (a padding row) gets out = 0 and no gradient.
template <typename T>
void causal_attention_forward(T* out, T* lse, const T* qkv, const int32_t* mask, int B, int Tn,
                              int NH, int NKV, int HS);
// dqkv (N, (NH + 2 NKV) HS) written; uses out and lse from the forward.
template <typename T>
void causal_attention_backward(T* dqkv, const T* dout, const T* out, const T* qkv, const T* lse,
                               const int32_t* mask, int B, int Tn, int NH, int NKV, int HS);

// One new query per sequence against a KV cache (generation's decode step).
// q (B rows of stride q_stride, NH heads of HS); kcache/vcache (B, NKV, cap, HS)
// hold ncols valid columns; mask (B, cap): 1 = a real key. out (B, NH HS).
// Equals causal_attention_forward's last row when the cache holds the
// sequence's rotated keys and values.
template <typename T>
void decode_attention(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                      const int32_t* mask, int B, int NH, int NKV, int HS, int ncols, int cap);

// ---- fused, chunked lm_head + softmax cross-entropy -----------------------
// Over the rows n with targets[n] != -100 only, `chunk` rows at a time:
// logits = h[n] W^T (V), loss_n = logsumexp(logits) - logits[target]. The
// (rows x V) logits exist one chunk at a time in `scratch` (chunk*V + chunk*C
// elements), never whole. Returns the sum of loss_n (double). When dh is set:
// dh (N,C) written (zero rows where ignored) and dW (V,C) += (may be null),
// both of grad_scale * d(sum)/d(.). targets must be -100 or in [0, V).
// Wbf16 (float only; a frozen head, so dW null): W rounded to bf16, which the
// two products with W then read through gemm_bf16w (cpu/onednn.h).
// bias (V, may be null) is added to every logit row (BertForMaskedLM's decoder
// bias); dbias (V) += its gradient when dh and dbias are set.
// Wq8 (float only, loss only: dh and dW null; W unused): the head held as
// Q8_0, logits through linear_q8_0 as generation reads them.
struct Q8Weights;
template <typename T>
double lmhead_crossentropy(T* dh, T* dW, const T* h, const T* W, const int32_t* targets, int N,
                           int C, int V, T grad_scale, T* scratch, int chunk,
                           const uint16_t* Wbf16 = nullptr, const T* bias = nullptr, T* dbias = nullptr,
                           const Q8Weights* Wq8 = nullptr);

// ---- Q8_0 weights (ggml block_q8_0; cpu/q8_0.cpp) --------------------------
// A weight W (OC, IC), IC % 32 == 0, quantized per row in blocks of 32 as
// ggml's quantize_row_q8_0_ref and gguf-py quantize(x, Q8_0) do: d = amax /
// 127, q = round-half-away(x / d) (via id = 1/d), d stored rounded to fp16;
// W ~ d q. Held repacked for linear_q8_0 (layout in q8_0.cpp): about 1.06
// bytes a weight.
struct Q8Weights {
    static constexpr int kRows = 16;  // output rows interleaved together
    // The largest |w| a block can hold: its fp16 scale amax / 127 tops out at
    // 65504. quantize_q8_0 turns larger values and NaN into a non-finite or
    // zero scale, so callers check first.
    static constexpr float kMaxMagnitude = 65504.0f * 127.0f;
    Q8Weights() = default;
    // All zero (q 0, d 0). Throws std::invalid_argument unless OC > 0 and IC
    // is a positive multiple of 32.
    Q8Weights(int OC, int IC);
    std::vector<uint8_t> q;  // q + 128, rows padded to a multiple of kRows
    std::vector<float> d;    // a scale per row and block (fp16 values)
    int OC = 0, IC = 0;
};
// Quantizes rows [row0, row0 + rows) of w from W (rows, IC): a packed group
// (q|k|v) is filled one member at a time. Throws std::invalid_argument for
// rows outside w.
void quantize_q8_0(Q8Weights& w, const float* W, int row0, int rows);
// W (rows, IC) = d q of rows [row0, row0 + rows), exactly (the values
// linear_q8_0 multiplies by). Throws as quantize_q8_0.
void dequantize_q8_0(float* W, const Q8Weights& w, int row0, int rows);
// out (N, OC) = x (N, IC) W^T: each row of x is quantized in blocks of 32 as
// ggml's SIMD quantize_row_q8_0 does (to nearest even; d kept in fp32) into
// xq (N IC int8), xd and xs (N IC / 32: scale, sum of q), workspace; each block's dot product is exact in int32 before
// its two scales multiply it in fp32 (ggml's vec_dot_q8_0_q8_0). Reads W
// once for all N rows: for decode steps (prefill-sized N is compute-bound).
void linear_q8_0(float* out, const float* x, const Q8Weights& w, int N, int8_t* xq, float* xd, int32_t* xs);
// The path linear_q8_0 takes: "avx512vnni" where the CPU has it, else
// "avx2", else "scalar" (any CPU; about 10x slower than AVX2); the
// environment's NODETUNE_Q8_ISA, read at first use, may name a lesser one. q8_0_use_isa switches it for later calls
// (tests of every path) and returns false, changing nothing, when the CPU
// lacks `isa` or the name is unknown.
const char* q8_0_isa();
bool q8_0_use_isa(const std::string& isa);

// ---- LoRA (Hu et al. 2021; PEFT tuners/lora/layer.py Linear) --------------
// out (N rows, stride ldo, OC columns) += scale * dropout(inp) A^T B^T, with
// A (r, IC), B (OC, r), scale = lora_alpha / r (or / sqrt(r), rsLoRA). t (N, r)
// saves dropout(inp) A^T for the backward. xd (N, IC) is workspace, used only
// when dropout_p > 0; keep ((N IC + 7) / 8 bytes) then saves the dropout mask
// (dropout_forward_mask) for the backward.
template <typename T>
void lora_forward(T* out, int ldo, T* t, T* xd, uint8_t* keep, const T* inp, const T* A, const T* B,
                  int N, int IC, int OC, int r, T scale, float dropout_p, const DropoutKey& key);
// dinp (N, IC) += (may be null), dA, dB += (may be null). dt (N, r) and
// xd (N, IC) are workspace; keep is the forward's mask (dropout_p > 0).
template <typename T>
void lora_backward(T* dinp, T* dA, T* dB, T* dt, T* xd, const uint8_t* keep, const T* dout, int ldo,
                   const T* inp, const T* t, const T* A, const T* B, int N, int IC, int OC, int r, T scale,
                   float dropout_p);

}  // namespace nt
