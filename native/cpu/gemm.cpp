// GEMM on OpenBLAS (row-major cblas). Called from inside OpenMP regions by the
// attention kernels, where the OpenMP build of OpenBLAS runs single-threaded.
#include <cblas.h>

#include <cstddef>

#include "cpu/kernels.h"

namespace nt {

namespace {
// BLAS rejects K == 0 with lda < 1; the product is empty, so only beta applies.
template <typename T>
bool gemm_degenerate(int M, int N, int K, T beta, T* C, int ldc) {
    if (M <= 0 || N <= 0) return true;
    if (K > 0) return false;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == T(0) ? T(0) : beta * C[(size_t)i * ldc + j];
    return true;
}
inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

template <>
void gemm<float>(bool transA, bool transB, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
    if (gemm_degenerate(M, N, K, beta, C, ldc)) return;
    cblas_sgemm(CblasRowMajor, tr(transA), tr(transB), M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

template <>
void gemm<double>(bool transA, bool transB, int M, int N, int K, double alpha, const double* A,
                  int lda, const double* B, int ldb, double beta, double* C, int ldc) {
    if (gemm_degenerate(M, N, K, beta, C, ldc)) return;
    cblas_dgemm(CblasRowMajor, tr(transA), tr(transB), M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

}  // namespace nt
