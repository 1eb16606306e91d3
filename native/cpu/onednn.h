// GEMMs through oneDNN's matmul, which picks the kernel for the CPU it runs on.
//
// gemm_bf16w: against frozen bf16 weights, what a LoRA run's base model costs,
// at the bf16 rate of the CPU's matrix units (AMX-BF16 on Intel Xeon 4th gen
// and later, AVX512_BF16 on AMD Zen 4 and Intel Cooper Lake). The activation
// operand is rounded to bf16 on the way in; products accumulate in fp32 and C
// stays fp32 (the mixed precision of torch.autocast's bf16 matmul).
//
// gemm_thin: fp32, for products with one small dimension (LoRA's rank r, a
// decode step's few rows), where OpenBLAS spends more time packing the wide
// operand than multiplying (2.7x slower on LoRA r 16's shapes here); a single
// row is a GEMV. OpenBLAS when oneDNN is not built in.
//
// oneDNN is built in only when CMake found it (Debian: libdnnl-dev); without
// it, or on a CPU without bf16 dot products, bf16_gemm_support() says why and
// gemm_bf16w throws std::runtime_error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace nt {

// Empty when bf16 GEMMs run here; otherwise the reason, in words.
std::string bf16_gemm_support();

// dst[i] = src[i] rounded to the nearest bf16, ties to even (NaN stays NaN).
void to_bf16(uint16_t* dst, const float* src, size_t n);
float from_bf16(uint16_t x);

// C(M,N) = A(M,K) op(B) + beta C, row-major; A fp32 (rounded to bf16), B bf16.
// transB: B is (N,K), a Linear's weight (y = x W^T); else B is (K,N) (dx = dy W).
// lda/ldc are row strides; beta 0 or 1. Throws std::runtime_error naming the shape.
void gemm_bf16w(bool transB, int M, int N, int K, const float* A, int lda, const uint16_t* B, float beta, float* C,
                int ldc);

// C(M,N) = alpha op(A) op(B) + beta C, fp32, row-major, as gemm<float>
// (cpu/kernels.h); beta 0 or 1.
void gemm_thin(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc);

}  // namespace nt
