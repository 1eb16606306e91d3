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

}  // namespace cuda
}  // namespace nt
