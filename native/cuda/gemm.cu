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
// Matmul plans kept at most (see Blas::gemm): far more than a training run's
// fixed shapes need.
constexpr size_t kMaxPlans = 1024;

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

// C(M,N) row-major with row stride ldc: C[i][j] += bias[j]. Used when the
// heuristic has no algorithm with the bias epilogue for a shape/type.
template <typename TC>
__global__ void add_bias_rows_kernel(TC* C, const TC* bias, int M, int N, int ldc) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)M * N) return;
    const int i = (int)(idx / N), j = (int)(idx % N);
    TC* c = C + (size_t)i * ldc + j;
    *c = detail::from_f<TC>(detail::to_f(*c) + detail::to_f(bias[j]));
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
    bool fused_bias = false;  // bias added by the epilogue (else by add_bias_rows_kernel)
    ~Plan() {
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (desc) cublasLtMatmulDescDestroy(desc);
    }
};

// Descriptors, layouts and the heuristic's first algorithm for one GEMM; null
// when the heuristic finds none (the caller may retry without the epilogue).
std::unique_ptr<Plan> make_plan(cublasLtHandle_t handle, size_t ws, int opA_, int opB_, int m, int n, int k,
                                int lda, int ldb, int ldc, int type_ab, int type_c, bool bias, bool tf32,
                                uint32_t alA, uint32_t alB, uint32_t alC) {
    const cublasOperation_t opA = (cublasOperation_t)opA_, opB = (cublasOperation_t)opB_;
    const cudaDataType_t tab = (cudaDataType_t)type_ab, tc = (cudaDataType_t)type_c;
    std::unique_ptr<Plan> plan(new Plan);
    NT_LT_CHECK(cublasLtMatmulDescCreate(&plan->desc, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                         CUDA_R_32F));
    NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(opB)));
    if (bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const int32_t bias_type = type_c;
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                   sizeof(bias_type)));
    }
    plan->fused_bias = bias;
    // Column-major layouts (rows, cols, ld) of A' = B, B' = A, C.
    NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, tab, opA == CUBLAS_OP_N ? m : k, opA == CUBLAS_OP_N ? k : m, ldb));
    NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, tab, opB == CUBLAS_OP_N ? k : n, opB == CUBLAS_OP_N ? n : k, lda));
    NT_LT_CHECK(cublasLtMatrixLayoutCreate(&plan->c, tc, m, n, ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    NT_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    struct PrefGuard {
        cublasLtMatmulPreference_t p;
        ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
    } guard{pref};
    NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alA, sizeof(alA)));
    NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alB, sizeof(alB)));
    NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alC, sizeof(alC)));
    NT_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alC, sizeof(alC)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->c,
                                                             plan->c, pref, 1, &result, &found);
    // NOT_SUPPORTED is how the heuristic says "no algorithm for this combination"
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || (st == CUBLAS_STATUS_SUCCESS && found == 0)) return nullptr;
    NT_LT_CHECK(st);
    plan->algo = result.algo;
    return plan;
}

}  // namespace gemm_detail

using gemm_detail::Key;
using gemm_detail::make_plan;
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
        const auto plan_for = [&](bool with_bias) {
            return make_plan(impl_->handle, impl_->workspace_bytes, opA, opB, m, n, k, lda, ldb, ldc, dtype<TA>(),
                             dtype<TC>(), with_bias, tf32, alA, alB, alC);
        };
        std::unique_ptr<Plan> plan = plan_for(bias != nullptr);
        if (!plan && bias) plan = plan_for(false);  // no algorithm with the bias epilogue: bias by a kernel
        if (!plan) throw CudaError(cudaErrorNotSupported, "cuBLASLt has no algorithm for this GEMM: " + shape());
        // Bounded: a decoder's lm_head GEMMs take one M per batch (its count
        // of target tokens), so a long run would otherwise keep adding plans.
        // Plans are host-side descriptors; GEMMs already enqueued do not need them.
        if (impl_->plans.size() >= kMaxPlans) impl_->plans.clear();
        it = impl_->plans.emplace(key, std::move(plan)).first;
    }
    Plan& plan = *it->second;
    if (bias && plan.fused_bias) {
        const void* bp = bias;
        NT_LT_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
    }
    NT_LT_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &alpha, B, plan.a, A, plan.b, &beta, C,
                               plan.c, C, plan.c, &plan.algo, impl_->workspace,
                               impl_->workspace_bytes, stream));
    if (bias && !plan.fused_bias) {
        add_bias_rows_kernel<TC><<<detail::grid_for((size_t)M * N, 256), 256, 0, stream>>>(C, bias, M, N, ldc);
        check_launch("add_bias_rows_kernel");
    }
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
