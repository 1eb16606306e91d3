// GEMM and torch.nn.Linear on cuBLASLt, row-major like nt::gemm (cpu/kernels.h).
//
// Blas owns one cuBLASLt handle, a workspace and a cache of matmul plans
// (descriptors + the heuristic's algorithm) keyed by shape, types, leading
// dimensions and pointer alignment, so a training step queries no heuristic
// after its first call. Accumulation is always fp32 (CUBLAS_COMPUTE_32F);
// TF32 tensor cores for fp32 inputs only when allow_tf32 is set (faster,
// ~1e-3 relative, so off by default to match the CPU engine).
//
// Epilogues: the bias add is fused (CUBLASLT_EPILOGUE_BIAS), or, for a shape
// the heuristic has no epilogue algorithm for, done by a kernel after the
// plain GEMM (same result up to one more rounding in bf16). cuBLASLt's GELU
// epilogue is the tanh approximation, not HF BERT's exact erf "gelu", so GELU
// stays a separate kernel (gelu_forward in kernels.h).
//
// Not thread-safe, and the workspace is shared: use one Blas per host thread
// and one stream at a time (the engine has one worker and one stream).
// Errors: cuBLAS status -> nt::cuda::CudaError-like std::runtime_error with
// cublasLtGetStatusName; bad shapes -> std::invalid_argument.
#pragma once
#include <memory>

#include "cuda/kernels.h"

namespace nt {
namespace cuda {

class Blas {
public:
    // Allocates the workspace on the current device (32 MiB: what cuBLAS
    // recommends for Hopper). Throws CudaError when no device is usable.
    explicit Blas(size_t workspace_bytes = size_t(32) << 20);
    ~Blas();
    Blas(const Blas&) = delete;
    Blas& operator=(const Blas&) = delete;

    void set_allow_tf32(bool allow) { allow_tf32_ = allow; }
    bool allow_tf32() const { return allow_tf32_; }

    // C(M,N) = alpha * op(A) * op(B) + beta * C (+ bias[j] on every row i when
    // bias is non-null; bias has N elements of C's type), row-major with row
    // strides lda/ldb/ldc. TA in {float, bf16}; TC in {float, bf16} (bf16
    // inputs may write an fp32 C, e.g. fp32 weight gradients). With beta = 0,
    // C is not read (it may hold NaN).
    template <typename TA, typename TC>
    void gemm(cudaStream_t stream, bool transA, bool transB, int M, int N, int K, float alpha,
              const TA* A, int lda, const TA* B, int ldb, float beta, TC* C, int ldc,
              const TC* bias = nullptr);

    // torch.nn.Linear: out(N,OC) = inp(N,IC) @ weight(OC,IC)^T + bias(OC)
    // (bias may be null).
    template <typename T>
    void linear_forward(cudaStream_t stream, T* out, const T* inp, const T* weight, const T* bias,
                        int N, int IC, int OC);
    // dinp(N,IC) = dout @ weight (written, or added when accumulate_dinp; null
    // skips), dweight(OC,IC) += dout^T @ inp (fp32), dbias(OC) += column sums
    // of dout (fp32; needs scratch of bias_backward_scratch_floats(N, OC)).
    template <typename T>
    void linear_backward(cudaStream_t stream, T* dinp, float* dweight, float* dbias,
                         const T* dout, const T* inp, const T* weight, int N, int IC, int OC,
                         bool accumulate_dinp, float* scratch);

    size_t cached_plans() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    bool allow_tf32_ = false;
};

// ---- products that need Blas: the decoder's lm_head loss and LoRA ------------

// Fused, chunked lm_head + softmax cross-entropy (the CUDA twin of
// nt::lmhead_crossentropy): over the n token rows with a target only,
// `chunk` rows at a time, logits = h[rows] W^T (chunk, V) in float32 (bf16
// inputs, fp32 accumulation and output), loss_r = logsumexp(logits) -
// logits[target_r]. The logits exist one chunk at a time in `scratch`, never
// whole. rows (n) device int32: indices into h's N rows; targets (n) device
// int32 in [0, V) (validated on the host). *loss_sum (device double) =
// sum_r loss_r (written). When dh is set: dh (N,C) written (rows not in
// `rows` zero) and dW (V,C) fp32 += (may be null), both of grad_scale *
// d(sum)/d(.). scratch: lmhead_scratch_bytes(chunk, C, V) bytes of device
// memory. Deterministic: fixed chunking, no atomics.
template <typename T>
void lmhead_crossentropy(Blas& blas, cudaStream_t stream, double* loss_sum, T* dh, float* dW,
                         const T* h, const T* W, const int32_t* rows, const int32_t* targets,
                         int n, int N, int C, int V, float grad_scale, void* scratch, int chunk);
size_t lmhead_scratch_bytes(int chunk, int C, int V);

// LoRA (Hu et al. 2021; PEFT tuners/lora/layer.py Linear), the CUDA twin of
// nt::lora_forward/backward: out (N rows, stride ldo, OC columns) += scale *
// dropout(inp) A^T B^T with A (r, IC), B (OC, r). t (N, r) saves dropout(inp)
// A^T for the backward; xd (N, IC) is workspace used when dropout_p > 0 (the
// mask is drawn again from `key` in the backward: Philox is counter-based, so
// the same mask as the forward's and as the CPU's).
template <typename T>
void lora_forward(Blas& blas, cudaStream_t stream, T* out, int ldo, T* t, T* xd, const T* inp,
                  const T* A, const T* B, int N, int IC, int OC, int r, float scale,
                  float dropout_p, const DropoutKey& key);
// dinp (N, IC) += (may be null); dA (r, IC), dB (OC, r) fp32 += (either may
// be null). dt (N, r) and xd (N, IC) workspace.
template <typename T>
void lora_backward(Blas& blas, cudaStream_t stream, T* dinp, float* dA, float* dB, T* dt, T* xd,
                   const T* dout, int ldo, const T* inp, const T* t, const T* A, const T* B, int N,
                   int IC, int OC, int r, float scale, float dropout_p, const DropoutKey& key);

}  // namespace cuda
}  // namespace nt
