// CUDA kernels of the BERT training step: the same names and contracts as the
// CPU kernels in native/cpu/kernels.h, in namespace nt::cuda, on DEVICE
// pointers, every launch asynchronous on the given stream. Plain C++ can
// include this header (it needs only the CUDA runtime and bf16 headers).
//
// Shapes as in cpu/kernels.h: B batch, T (Tn) sequence, C hidden_size, NH
// heads, HS = C / NH, N rows (B*T), L num_labels, OC/IC out/in channels.
//
// Precision. Every kernel is instantiated for T = float and T = bf16
// (__nv_bfloat16) activations/weights; arithmetic is float32 inside, and what
// mixed precision keeps in float32 is float32 in every signature: parameter
// gradients (dweight, dbias, dwte, ...), LayerNorm statistics, attention
// logsumexp, loss, norms, AdamW master weights and moments.
//
// Gradient conventions are the CPU's: parameter gradients are ACCUMULATED
// (+=), activation gradients WRITTEN (=) unless an `accumulate` flag says so.
//
// Determinism: every reduction has a fixed order that depends on the shapes
// only (not on the device or timing), except embedding_backward, whose
// atomicAdd on dwte/dwtt sums repeated ids in arbitrary order (last-bit
// differences run to run); embedding_backward_sorted is the deterministic one.
//
// Errors: a CUDA error (launch or API) becomes nt::cuda::CudaError (a
// std::runtime_error carrying the CUDA error name and string); a bad argument
// becomes std::invalid_argument naming the kernel and the argument. Errors of
// an asynchronous kernel surface at the next checked call on the stream.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"  // nt::DropoutKey

namespace nt {
namespace cuda {

using bf16 = __nv_bfloat16;

// ---- errors and devices ----------------------------------------------------
struct CudaError : std::runtime_error {
    CudaError(cudaError_t code, const std::string& what) : std::runtime_error(what), code(code) {}
    cudaError_t code;
};
// Throws CudaError "<where>: <cudaErrorName> (<description>)" unless e == cudaSuccess.
void check(cudaError_t e, const char* where);
// After a launch: turns a launch-configuration error into CudaError naming the kernel.
void check_launch(const char* kernel);
#define NT_CUDA_CHECK(expr) ::nt::cuda::check((expr), #expr)

// Number of usable CUDA devices; 0 (never an exception) when there is no
// driver, the driver is older than this runtime, or no device is present.
int cuda_device_count();
// Why cuda_device_count() is 0, in words ("" when a device is present).
std::string cuda_unavailable_reason();
struct DeviceInfo {
    int index = 0;
    std::string name;             // e.g. "NVIDIA H200"
    int major = 0, minor = 0;     // compute capability
    int multiprocessors = 0;
    size_t total_memory = 0;      // bytes
    int driver_version = 0;       // e.g. 13000 for CUDA 13.0
    int runtime_version = 0;
};
// Throws CudaError with a clear message when the device does not exist or
// no driver is installed.
DeviceInfo cuda_device_info(int device = 0);

// ---- embeddings (HF BertEmbeddings) ----------------------------------------
// out(B,T,C) = wte[input_ids] + wpe[t] + wtt[token_type_ids]; token_type_ids
// may be null (all type 0). ids must be in range (validated by the caller).
template <typename T>
void embedding_forward(T* out, const int32_t* input_ids, const int32_t* token_type_ids,
                       const T* wte, const T* wpe, const T* wtt, int B, int Tn, int C,
                       cudaStream_t stream);
// dwte/dwpe/dwtt (+=, fp32, any may be null). dwpe is deterministic (sum over
// b in order); dwte and dwtt use atomicAdd (order of repeated ids arbitrary).
template <typename T>
void embedding_backward(float* dwte, float* dwpe, float* dwtt, const T* dout,
                        const int32_t* input_ids, const int32_t* token_type_ids, int B, int Tn,
                        int C, cudaStream_t stream);
// Positions grouped by id, built on the host from the host copy of the ids
// (counting sort, stable): rows of the same id are summed in token order.
struct IdBuckets {
    std::vector<int32_t> order;    // N token indices, sorted by id, stable
    std::vector<int32_t> offsets;  // U+1 segment starts into order
    std::vector<int32_t> ids;      // U distinct ids, one per segment
};
// ids (N) host array with values in [0, num_ids); null ids means all zero.
// Throws std::invalid_argument naming the index of an out-of-range id.
IdBuckets make_id_buckets(const int32_t* ids, int N, int num_ids);
// Deterministic embedding backward: one block per distinct id sums its rows
// in token order. d_* are device copies of IdBuckets (word: input_ids;
// type: token_type_ids); a null bucket set skips that table.
struct DeviceBuckets {
    const int32_t* order = nullptr;
    const int32_t* offsets = nullptr;
    const int32_t* ids = nullptr;
    int num_segments = 0;
};
template <typename T>
void embedding_backward_sorted(float* dwte, float* dwpe, float* dwtt, const T* dout,
                               const DeviceBuckets& words, const DeviceBuckets& types, int B,
                               int Tn, int C, cudaStream_t stream);

// ---- LayerNorm (torch.nn.LayerNorm, biased variance) -----------------------
// out(N,C) = (inp - mean) * rstd * weight + bias; mean(N), rstd(N) fp32.
template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                       const T* bias, int N, int C, float eps, cudaStream_t stream);
// Fused residual add (BERT post-LN: LayerNorm(x + sublayer(x))):
// residual(N,C) = a + b (rounded to T and saved: it is the backward's `inp`),
// out = LayerNorm(residual). residual may alias a or b.
template <typename T>
void residual_layernorm_forward(T* residual, T* out, float* mean, float* rstd, const T* a,
                                const T* b, const T* weight, const T* bias, int N, int C,
                                float eps, cudaStream_t stream);
// dinp(N,C) written (or added when accumulate_dinp), dweight/dbias (C) fp32 +=
// (either may be null). scratch: layernorm_backward_scratch_floats(N, C)
// floats of device memory (per-row-block partial sums, reduced in order).
template <typename T>
void layernorm_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                        const T* weight, const float* mean, const float* rstd, int N, int C,
                        float* scratch, bool accumulate_dinp, cudaStream_t stream);
size_t layernorm_backward_scratch_floats(int N, int C);

// dbias(OC) += sum_n dout(N,OC) (Linear bias gradient), deterministic
// two-stage column sum. scratch: bias_backward_scratch_floats(N, OC) floats.
template <typename T>
void bias_backward(float* dbias, const T* dout, int N, int OC, float* scratch,
                   cudaStream_t stream);
size_t bias_backward_scratch_floats(int N, int OC);

// ---- elementwise -------------------------------------------------------------
// GELU, exact erf form (HF "gelu"); backward from the saved input.
template <typename T>
void gelu_forward(T* out, const T* inp, size_t n, cudaStream_t stream);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n, cudaStream_t stream);
// tanh (BertPooler); backward from the saved OUTPUT: dinp = dout * (1 - out^2).
template <typename T>
void tanh_forward(T* out, const T* inp, size_t n, cudaStream_t stream);
template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n, cudaStream_t stream);
// y += x (residual-gradient merges).
template <typename T>
void add_inplace(T* y, const T* x, size_t n, cudaStream_t stream);
// dst[i] = src[i] converted (round-to-nearest-even to bf16).
void convert(bf16* dst, const float* src, size_t n, cudaStream_t stream);
void convert(float* dst, const bf16* src, size_t n, cudaStream_t stream);

// ---- dropout (Philox4x32-10, bit-identical masks to the CPU) ---------------
// Element i kept when dropout_uniform(key, i) >= p, scaled by 1/(1-p); p >= 1
// drops everything, p <= 0 copies. out may alias inp.
template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, float p, const DropoutKey& key,
                     cudaStream_t stream);
template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, float p, const DropoutKey& key,
                      cudaStream_t stream);
// u[i] = dropout_uniform(key, index0 + i) for i < n (fp32, device): lets a
// test compare the RNG stream itself against the CPU.
void dropout_uniform_fill(float* u, size_t n, uint64_t index0, const DropoutKey& key,
                          cudaStream_t stream);

// ---- fused (flash-style) self-attention -------------------------------------
// qkv (B,T,3C) packed [q|k|v] per token, head h = channels h*HS..(h+1)*HS.
// mask (B,T) device int32, 1 = attend, 0 = padding key; null = all attend.
// out (B,T,C) = dropout(softmax(q k^T / sqrt(HS) + mask)) v; lse (B,NH,T) fp32
// saves each row's logsumexp of the scaled scores for the backward. Never
// stores T x T: scores live in registers, online softmax (Milakov & Gimelshein
// 2018; Dao et al., FlashAttention 2022). Masked keys get probability 0; an
// example whose keys are all masked gets uniform rows (CPU/HF behaviour).
// Probability dropout uses `key` with index ((b*NH + h)*T + t1)*T + t2, the
// CPU's, so masks match. Requires HS <= 128, C % NH == 0 and B*NH <= 65535
// (throws std::invalid_argument otherwise); tuned for T <= 512.
template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B, int Tn,
                       int C, int NH, float dropout_p, const DropoutKey& key,
                       cudaStream_t stream);
// dqkv (B,T,3C) written. Needs the forward's out and lse; delta is scratch
// of B*NH*T floats (rowsum(dout * out) per head). dq is computed by one
// kernel over query tiles and dk/dv by another over key tiles, so no atomics.
// An all-masked example gets dq = dk = 0 (as the CPU), dv from the uniform rows.
template <typename T>
void attention_backward(T* dqkv, float* delta, const T* dout, const T* out, const T* qkv,
                        const float* lse, const int32_t* mask, int B, int Tn, int C, int NH,
                        float dropout_p, const DropoutKey& key, cudaStream_t stream);

// ---- fused softmax + cross-entropy (torch.nn.CrossEntropyLoss) --------------
// Same loss as the CPU: labels (B) device int32 in [0,L) or -100 (ignored),
// class_weights (L) fp32 or null, weighted mean over non-ignored rows. Writes
// the loss to *loss (device fp32 scalar) and, when dlogits is non-null,
// dlogits(B,L) = grad_scale * dloss/dlogits (ignored rows zero). All ignored
// -> loss 0, dlogits 0. Labels out of range are not checked on the device:
// the engine validates them on the host. One block: B*L is small.
template <typename T>
void crossentropy_softmax_forward_backward(float* loss, T* dlogits, const T* logits,
                                           const int32_t* labels, const float* class_weights,
                                           int B, int L, float label_smoothing,
                                           float grad_scale, cudaStream_t stream);

// ---- optimizer ----------------------------------------------------------------
// Global L2 norm of g[0..n) (torch.nn.utils.clip_grad_norm_), two-stage
// reduction in double with a fixed grid. Writes *norm (fp32) and, when
// clip_scale is non-null, *clip_scale = max_norm > 0 ? min(1, max_norm /
// (norm + 1e-6)) : 1, which adamw_update reads on the device (no host sync);
// NaN when the norm is not finite (adamw_update then skips the step).
// scratch: grad_norm_scratch_doubles() doubles.
void global_grad_norm(float* norm, float* clip_scale, const float* g, size_t n, float max_norm,
                      double* scratch, cudaStream_t stream);
size_t grad_norm_scratch_doubles();
// *out = sum of squares of g[0..n) in double (the CPU's sum_squares).
void sum_squares(double* out, const float* g, size_t n, double* scratch, cudaStream_t stream);
template <typename T>
void scale_inplace(T* x, size_t n, float s, cudaStream_t stream);

// Fused AdamW over a whole parameter arena in one launch, the CPU's formula
// (torch.optim.AdamW): per element i with flags[i]
//   0: skipped (frozen), 1: updated without weight decay, 2: with decay;
// flags null = every element updated with decay. The gradient is scaled by
// grad_scale * (*grad_scale_dev if non-null); a non-finite *grad_scale_dev
// leaves params, moments and params_bf16 untouched (the engine's rule for a
// NaN/inf gradient norm: skip the update). params_bf16 (nullable) receives
// the updated weights rounded to bf16 (the mixed-precision copy).
void adamw_update(float* params, bf16* params_bf16, const float* grads, float* m, float* v,
                  const uint8_t* flags, size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t t, float grad_scale, const float* grad_scale_dev,
                  cudaStream_t stream);

// ==== decoder (Llama family: HF modeling_llama.py, Qwen2) =====================
// The CUDA twins of cpu/kernels.h's decoder section, same contracts and
// shapes: N = B*T token rows; C hidden_size; NH query heads, NKV key/value
// heads (query head h reads kv head h / (NH/NKV)); HS head_dim (even, <= 128
// for attention); I intermediate_size; V vocab_size. What the CPU keeps in T
// and mixed precision keeps in float32 (rstd, lse, rope tables, parameter
// gradients) is float32 here.

// out(N,C) = wte[ids]. The backward is embedding_backward_sorted with dwpe,
// dwtt null (B = 1, Tn = N). ids must be in range (validated on the host).
template <typename T>
void token_embedding_forward(T* out, const int32_t* ids, const T* wte, int N, int C,
                             cudaStream_t stream);

// RMSNorm (Zhang & Sennrich 2019; HF LlamaRMSNorm): out(N,C) = inp * rstd *
// weight, rstd(N) fp32 = 1 / sqrt(mean_c(inp^2) + eps).
template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps,
                     cudaStream_t stream);
// Fused residual add (the decoder's pre-norm residual stream):
// residual(N,C) = a + b (rounded to T and saved: the backward's `inp`),
// out = RMSNorm(residual). residual may alias a or b.
template <typename T>
void residual_rmsnorm_forward(T* residual, T* out, float* rstd, const T* a, const T* b,
                              const T* weight, int N, int C, float eps, cudaStream_t stream);
// dinp (N,C) written, or added when accumulate_dinp (may be null: only
// dweight); dweight (C) fp32 += (may be null). scratch:
// rmsnorm_backward_scratch_floats(N, C) floats (per-row-block partial sums of
// dweight, reduced in a fixed order).
template <typename T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                      const float* rstd, int N, int C, float* scratch, bool accumulate_dinp,
                      cudaStream_t stream);
size_t rmsnorm_backward_scratch_floats(int N, int C);

// Rotary position embedding (Su et al. 2021; HF rotate_half layout), in place
// on n_heads heads of HS channels at the start of each row of x (row stride
// `stride` elements). cos_t/sin_t (P, HS/2) fp32 device tables (nt::rope_tables
// on the host); pos (N) device int32 indexes them. Backward: the inverse
// rotation, in place on dx.
template <typename T>
void rope_forward(T* x, const float* cos_t, const float* sin_t, const int32_t* pos, int N,
                  int stride, int n_heads, int HS, cudaStream_t stream);
template <typename T>
void rope_backward(T* dx, const float* cos_t, const float* sin_t, const int32_t* pos, int N,
                   int stride, int n_heads, int HS, cudaStream_t stream);

// SwiGLU (Shazeer 2020; HF LlamaMLP): gu (N, 2I) = [gate | up];
// out(N,I) = silu(gate) * up. dgu (N, 2I) written.
template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int I, cudaStream_t stream);
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int I, cudaStream_t stream);

// Causal self-attention with GQA, padding and packed segments, flash-style
// (scores in registers/shared memory, online softmax; never T x T in global
// memory). qkv (N, (NH + 2 NKV) HS) per token [q heads | k heads | v heads],
// q and k already rotated. mask (B,T) device int32: 0 = padding (never a
// key), k >= 1 = segment k; query t attends to keys t' <= t of its own
// segment, scaled by 1/sqrt(HS). out (N, NH HS); lse (B, NH, T) fp32 saves
// each row's log-sum-exp of the scaled scores. A query with no key (a padding
// row) gets out = 0, lse = 0 and no gradient. Requires HS even and <= 128.
template <typename T>
void causal_attention_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B,
                              int Tn, int NH, int NKV, int HS, cudaStream_t stream);
// dqkv (N, (NH + 2 NKV) HS) written (every element: padding rows 0). delta
// is scratch of B*NH*T floats (rowsum(dout * out)). dq by one kernel over
// query tiles, dk/dv by one over key tiles that loops over the NH/NKV query
// heads of its group: no atomics, a fixed summation order.
template <typename T>
void causal_attention_backward(T* dqkv, float* delta, const T* dout, const T* out, const T* qkv,
                               const float* lse, const int32_t* mask, int B, int Tn, int NH,
                               int NKV, int HS, cudaStream_t stream);

// Generation. kv_cache_store copies the rotated keys and values of qkv rows
// (B, Tn) into kcache/vcache (B, NKV, cap, HS) at columns col0..col0+Tn-1.
template <typename T>
void kv_cache_store(T* kcache, T* vcache, const T* qkv, int B, int Tn, int NH, int NKV, int HS,
                    int col0, int cap, cudaStream_t stream);
// One new query per sequence against the cache (the decode step): q (B rows
// of stride q_stride, NH heads of HS), ncols valid cache columns, mask (B,
// cap) device int32: 1 = a real key. out (B, NH HS). Equals
// causal_attention_forward's last row for the same keys and values.
template <typename T>
void decode_attention(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                      const int32_t* mask, int B, int NH, int NKV, int HS, int ncols, int cap,
                      cudaStream_t stream);

}  // namespace cuda
}  // namespace nt
