// Row-major GEMM on cuBLASLt (column-major) and Linear on top of it.
//
// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
// row-major matrix read column-major is its transpose, so the call is
// cuBLASLt(m = N, n = M, k = K, A' = B with opB's flag, B' = A with opA's
// flag): no data moves. The bias epilogue adds a vector of length m (= the
// row-major columns N) to every column-major column, i.e. to every row-major row.
#include <cublasLt.h>

#include <map>
#include <string>
#include <tuple>

#include "cuda/common.cuh"
#include "cuda/gemm.h"

namespace nt {
namespace cuda {

namespace {

void check_lt(cublasStatus_t s, const char* where) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    throw CudaError(cudaErrorUnknown, std::string("cuBLASLt ") + where + ": " +
                                          cublasLtGetStatusName(s) + " (" +
                                          cublasLtGetStatusString(s) + ")");
}
#define NT_LT_CHECK(expr) check_lt((expr), #expr)

template <typename T>
constexpr cudaDataType_t dtype();
template <>
constexpr cudaDataType_t dtype<float>() {
    return CUDA_R_32F;
}
template <>
constexpr cudaDataType_t dtype<bf16>() {
    return CUDA_R_16BF;
}

// Largest power of two (<= 256) dividing the address: what the heuristic may assume.
uint32_t alignment(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uint32_t al = 256;
    while (al > 1 && (a % al) != 0) al >>= 1;
    return al;
}

}  // namespace

// Named (not anonymous): Blas::Impl, a class with linkage, holds these.
namespace gemm_detail {

// Plan key: types, ops, shape, leading dims, epilogue, alignments, tf32.
using Key = std::tuple<int, int, bool, bool, int, int, int, int, int, int, bool, uint32_t,
                       uint32_t, uint32_t, bool>;

struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    ~Plan() {
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

}  // namespace gemm_detail

using gemm_detail::Key;
using gemm_detail::Plan;

struct Blas::Impl {
    cublasLtHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    std::map<Key, std::unique_ptr<Plan>> plans;
};

Blas::Blas(size_t workspace_bytes) : impl_(new Impl) {
    if (cuda_device_count() == 0)
        throw CudaError(cudaErrorNoDevice, "nt::cuda::Blas: no CUDA device: " + cuda_unavailable_reason());
    NT_LT_CHECK(cublasLtCreate(&impl_->handle));
    impl_->workspace_bytes = workspace_bytes;
    if (workspace_bytes > 0) {
        const cudaError_t e = cudaMalloc(&impl_->workspace, workspace_bytes);
        if (e != cudaSuccess) {
            cublasLtDestroy(impl_->handle);
            check(e, "nt::cuda::Blas: cudaMalloc(workspace)");
        }
    }
}

Blas::~Blas() {
    impl_->plans.clear();
    if (impl_->workspace) cudaFree(impl_->workspace);
    if (impl_->handle) cublasLtDestroy(impl_->handle);
}

size_t Blas::cached_plans() const { return impl_->plans.size(); }

template <typename TA, typename TC>
void Blas::gemm(cudaStream_t stream, bool transA, bool transB, int M, int N, int K, float alpha,
                const TA* A, int lda, const TA* B, int ldb, float beta, TC* C, int ldc,
                const TC* bias) {
    // Built only on an error path: the step calls this ~100 times.
    const auto shape = [&] {
        return "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
               " lda=" + std::to_string(lda) + " ldb=" + std::to_string(ldb) +
               " ldc=" + std::to_string(ldc);
    };
    if (M < 0 || N < 0 || K < 0) detail::require(false, "Blas::gemm", "negative shape: " + shape());
    if (M == 0 || N == 0) return;
    if (ldc < N || lda < (transA ? M : K) || ldb < (transB ? K : N))
        detail::require(false, "Blas::gemm", "leading dimension too small: " + shape());
    if (K == 0) {  // empty product: only beta * C (+ bias) remains, as the CPU's gemm
        if (bias != nullptr || (beta != 0.f && beta != 1.f))
            detail::require(false, "Blas::gemm", "K = 0 supports only beta in {0, 1} without bias: " + shape());
        if (beta == 0.f)
            NT_CUDA_CHECK(cudaMemset2DAsync(C, (size_t)ldc * sizeof(TC), 0, (size_t)N * sizeof(TC),
                                            (size_t)M, stream));
        return;
    }
    const bool tf32 = allow_tf32_ && dtype<TA>() == CUDA_R_32F;
    const cublasOperation_t opA = transB ? CUBLAS_OP_T : CUBLAS_OP_N;  // A' = row-major B
    const cublasOperation_t opB = transA ? CUBLAS_OP_T : CUBLAS_OP_N;  // B' = row-major A
    const int m = N, n = M, k = K;
    const uint32_t alA = alignment(B), alB = alignment(A), alC = alignment(C);
    const Key key{(int)dtype<TA>(), (int)dtype<TC>(), transA, transB, M, N, K, lda, ldb, ldc,
                  bias != nullptr, alA, alB, alC, tf32};

    auto it = impl_->plans.find(key);
    if (it == impl_->plans.end()) {
        std::unique_ptr<Plan> plan(new Plan);
        NT_LT_CHECK(cublasLtMatmulDescCreate(
            &plan->desc, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
        if (bias) {
            const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
            const int32_t bias_type = dtype<TC>();
            NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
            NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                       &bias_type, sizeof(bias_type)));
        }
        // Column-major layouts (rows, cols, ld) of A' = B, B' = A, C.
        NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, dtype<TA>(), opA == CUBLAS_OP_N ? m : k,
                                               opA == CUBLAS_OP_N ? k : m, ldb));
        NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, dtype<TA>(), opB == CUBLAS_OP_N ? k : n,
                                               opB == CUBLAS_OP_N ? n : k, lda));
        NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->c, dtype<TC>(), m, n, ldc));

        cublasLtMatmulPreference_t pref = nullptr;
        NT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        struct PrefGuard {
            cublasLtMatmulPreference_t p;
            ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
        } guard{pref};
        const size_t ws = impl_->workspace_bytes;
        NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
        NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alA, sizeof(alA)));
        NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alB, sizeof(alB)));
        NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alC, sizeof(alC)));
        NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alC, sizeof(alC)));
        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        NT_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(impl_->handle, plan->desc, plan->a, plan->b,
                                                   plan->c, plan->c, pref, 1, &result, &found));
        if (found == 0)
            throw CudaError(cudaErrorNotSupported, "cuBLASLt has no algorithm for this GEMM: " + shape());
        plan->algo = result.algo;
        it = impl_->plans.emplace(key, std::move(plan)).first;
    }
    Plan& plan = *it->second;
    if (bias) {
        const void* bp = bias;
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
    }
    NT_LT_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &alpha, B, plan.a, A, plan.b, &beta, C,
                               plan.c, C, plan.c, &plan.algo, impl_->workspace,
                               impl_->workspace_bytes, stream));
}

template <typename T>
void Blas::linear_forward(cudaStream_t stream, T* out, const T* inp, const T* weight,
                          const T* bias, int N, int IC, int OC) {
    gemm<T, T>(stream, false, true, N, OC, IC, 1.f, inp, IC, weight, IC, 0.f, out, OC, bias);
}

template <typename T>
void Blas::linear_backward(cudaStream_t stream, T* dinp, float* dweight, float* dbias,
                           const T* dout, const T* inp, const T* weight, int N, int IC, int OC,
                           bool accumulate_dinp, float* scratch) {
    if (dinp)
        gemm<T, T>(stream, false, false, N, IC, OC, 1.f, dout, OC, weight, IC,
                   accumulate_dinp ? 1.f : 0.f, dinp, IC);
    if (dweight)
        gemm<T, float>(stream, true, false, OC, IC, N, 1.f, dout, OC, inp, IC, 1.f, dweight, IC);
    if (dbias) bias_backward<T>(dbias, dout, N, OC, scratch, stream);
}

template void Blas::gemm<float, float>(cudaStream_t, bool, bool, int, int, int, float,
                                       const float*, int, const float*, int, float, float*, int,
                                       const float*);
template void Blas::gemm<bf16, bf16>(cudaStream_t, bool, bool, int, int, int, float, const bf16*,
                                     int, const bf16*, int, float, bf16*, int, const bf16*);
template void Blas::gemm<bf16, float>(cudaStream_t, bool, bool, int, int, int, float,
                                      const bf16*, int, const bf16*, int, float, float*, int,
                                      const float*);
template void Blas::linear_forward<float>(cudaStream_t, float*, const float*, const float*,
                                          const float*, int, int, int);
template void Blas::linear_forward<bf16>(cudaStream_t, bf16*, const bf16*, const bf16*,
                                         const bf16*, int, int, int);
template void Blas::linear_backward<float>(cudaStream_t, float*, float*, float*, const float*,
                                           const float*, const float*, int, int, int, bool,
                                           float*);
template void Blas::linear_backward<bf16>(cudaStream_t, bf16*, float*, float*, const bf16*,
                                          const bf16*, const bf16*, int, int, int, bool, float*);

}  // namespace cuda
}  // namespace nt
