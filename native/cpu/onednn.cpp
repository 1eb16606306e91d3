// GEMMs through oneDNN's matmul (see onednn.h). Primitives are created once
// per shape and kept per thread: creating one picks and JIT-compiles a kernel
// (milliseconds), running one is the GEMM alone.
#include "cpu/onednn.h"

#include <cblas.h>

#include <cstring>
#include <map>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cpu/kernels.h"

#ifdef NODETUNE_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace nt {

void to_bf16(uint16_t* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        std::memcpy(&u, &src[i], 4);
        // NaN: keep a quiet NaN (rounding could carry it into infinity)
        dst[i] = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40u)
                                                 : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
}

float from_bf16(uint16_t x) {
    const uint32_t u = (uint32_t)x << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

namespace {
// One row (a decode step at batch 1): a matrix-vector product, which streams
// the matrix once without packing it as a GEMM would.
bool gemv_row(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, const float* B, int ldb,
              float beta, float* C) {
    if (M != 1 || transA || (beta != 0.0f && beta != 1.0f)) return false;
    if (transB)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, A, 1, beta, C, 1);
    else
        cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, A, 1, beta, C, 1);
    return true;
}
}  // namespace

#ifdef NODETUNE_WITH_DNNL

namespace {

using dnnl::memory;
// bf16 operands, transA, transB, M, N, K, lda, ldb, ldc, alpha (bits), accumulate
using Key = std::tuple<bool, bool, bool, int, int, int, int, int, int, uint32_t, bool>;

struct Prim {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul mm;
};

struct Cache {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    std::map<Key, Prim> prims;
    std::vector<uint16_t> a;  // gemm_bf16w's A rounded to bf16
};

Cache& cache() {
    static thread_local Cache c;
    return c;
}

// C(M,N) (fp32, row stride ldc) = alpha op(A) op(B) (+ C when accumulate),
// A and B bf16 or fp32, row-major with row strides lda, ldb.
dnnl::matmul::primitive_desc describe(const dnnl::engine& eng, bool bf16, bool transA, bool transB, int M, int N,
                                      int K, int lda, int ldb, int ldc, float alpha, bool accumulate) {
    const auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    const memory::desc a({M, K}, dt, transA ? memory::dims{1, lda} : memory::dims{lda, 1});
    const memory::desc b({K, N}, dt, transB ? memory::dims{1, ldb} : memory::dims{ldb, 1});
    const memory::desc c({M, N}, memory::data_type::f32, memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.0f);
        attr.set_post_ops(ops);
    }
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, eng);
}

// Runs the product describe() names, its primitive made once per shape.
// Throws dnnl::error.
void matmul(Cache& c, bool bf16, bool transA, bool transB, int M, int N, int K, const void* A, int lda, const void* B,
            int ldb, float alpha, bool accumulate, float* C, int ldc) {
    uint32_t abits;
    std::memcpy(&abits, &alpha, 4);
    const Key key{bf16, transA, transB, M, N, K, lda, ldb, ldc, abits, accumulate};
    auto it = c.prims.find(key);
    if (it == c.prims.end()) {
        if (c.prims.size() >= 256) c.prims.clear();  // shapes of long-gone batches
        auto pd = describe(c.engine, bf16, transA, transB, M, N, K, lda, ldb, ldc, alpha, accumulate);
        it = c.prims.emplace(key, Prim{pd, dnnl::matmul(pd)}).first;
    }
    const auto& pd = it->second.pd;
    memory am(pd.src_desc(), c.engine, const_cast<void*>(A));
    memory bm(pd.weights_desc(), c.engine, const_cast<void*>(B));
    memory cm(pd.dst_desc(), c.engine, C);
    it->second.mm.execute(c.stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    c.stream.wait();
}

std::string shape(bool transB, int M, int N, int K) {
    return "bf16 GEMM (" + std::to_string(M) + " x " + std::to_string(K) + ") x (" + std::to_string(transB ? N : K) +
           " x " + std::to_string(transB ? K : N) + ")" + (transB ? "^T" : "");
}

}  // namespace

std::string bf16_gemm_support() {
    if (dnnl::get_effective_cpu_isa() < dnnl::cpu_isa::avx512_core_bf16)
        return "this CPU has neither AVX512_BF16 nor AMX-BF16 (bf16 dot products)";
    try {
        describe(cache().engine, true, false, true, 64, 64, 64, 64, 64, 64, 1.0f, false);
    } catch (const dnnl::error& e) {
        return std::string("oneDNN has no bf16 matmul here: ") + e.what();
    }
    return "";
}

void gemm_bf16w(bool transB, int M, int N, int K, const float* A, int lda, const uint16_t* B, float beta, float* C,
                int ldc) {
    if (M <= 0 || N <= 0) return;
    if (beta != 0.0f && beta != 1.0f) throw std::runtime_error(shape(transB, M, N, K) + ": beta must be 0 or 1");
    if (K <= 0) {
        if (beta == 0.0f)
            for (int i = 0; i < M; i++) std::memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    Cache& c = cache();
    if (c.a.size() < (size_t)M * K) c.a.resize((size_t)M * K);
    uint16_t* a = c.a.data();
#pragma omp parallel for schedule(static) if ((size_t)M * K >= (1u << 16))
    for (int i = 0; i < M; i++) to_bf16(a + (size_t)i * K, A + (size_t)i * lda, (size_t)K);
    try {
        matmul(c, true, false, transB, M, N, K, a, K, B, transB ? K : N, 1.0f, beta != 0.0f, C, ldc);
    } catch (const dnnl::error& e) {
        throw std::runtime_error(shape(transB, M, N, K) + " failed in oneDNN: " + e.what());
    }
}

void gemm_thin(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0 || K <= 0 || (beta != 0.0f && beta != 1.0f))
        return gemm<float>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (gemv_row(transA, transB, M, N, K, alpha, A, B, ldb, beta, C)) return;
    try {
        matmul(cache(), false, transA, transB, M, N, K, A, lda, B, ldb, alpha, beta != 0.0f, C, ldc);
    } catch (const dnnl::error&) {
        // a shape or stride this oneDNN does not take: BLAS computes the same product
        gemm<float>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

#else  // no oneDNN in this build

std::string bf16_gemm_support() {
    return "this build of nodetune has no oneDNN (install libdnnl-dev, e.g. with scripts/setup.sh, and rebuild)";
}
void gemm_bf16w(bool, int, int, int, const float*, int, const uint16_t*, float, float*, int) {
    throw std::runtime_error("bf16 GEMM: " + bf16_gemm_support());
}
void gemm_thin(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc) {
    if (M > 0 && N > 0 && K > 0 && gemv_row(transA, transB, M, N, K, alpha, A, B, ldb, beta, C)) return;
    gemm<float>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#endif

}  // namespace nt
