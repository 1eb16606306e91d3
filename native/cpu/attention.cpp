// Scaled dot-product self-attention (Vaswani et al. 2017; HF BertSelfAttention,
// eager path) on packed qkv, one (b, h) pair per OpenMP iteration with
// single-threaded BLAS GEMMs per head.
//
// Forward, per head:  S = Q K^T / sqrt(HS);  P = softmax_masked(S);
//                     P' = dropout(P);  O = P' V.
// Backward:           dV = P'^T dO;  dP' = dO V^T;  dP = dropout(dP');
//                     dS = P * (dP - rowsum(P * dP));
//                     dQ = dS K / sqrt(HS);  dK = dS^T Q / sqrt(HS).
// A padding key has probability exactly 0. If every key of an example is
// masked the row is uniform, a constant of the scores, so dQ = dK = 0 there
// (HF's finfo.min mask gives the same forward; its autograd would instead
// pass a gradient through the saturated addition).
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd_math.h"

namespace nt {
namespace detail {
template <typename T>
void dropout_apply(T* out, const T* in, size_t n, uint64_t index0, float p,
                   const DropoutKey& key, uint8_t* keep = nullptr);
}  // namespace detail

namespace {

inline bool attends(const int32_t* mask, int b, int Tn, int t) {
    return mask == nullptr || mask[(size_t)b * Tn + t] != 0;
}

// Row-wise masked softmax of P (T x T) in place. Padding keys are set to
// -inf so their exponential is exactly 0.
template <typename T>
void masked_softmax(T* P, const int32_t* mask, int b, int Tn) {
    const int32_t* m = mask ? mask + (size_t)b * Tn : nullptr;
    bool any = false;
    for (int t = 0; t < Tn; t++) any = any || m == nullptr || m[t] != 0;
    for (int t1 = 0; t1 < Tn; t1++) {
        T* row = P + (size_t)t1 * Tn;
        if (!any) {
            for (int t2 = 0; t2 < Tn; t2++) row[t2] = T(1) / Tn;
            continue;
        }
        if (m) {
#pragma omp simd
            for (int t2 = 0; t2 < Tn; t2++) row[t2] = m[t2] != 0 ? row[t2] : T(-INFINITY);
        }
        T mx = T(-INFINITY);
#pragma omp simd reduction(max : mx)
        for (int t2 = 0; t2 < Tn; t2++) mx = row[t2] > mx ? row[t2] : mx;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int t2 = 0; t2 < Tn; t2++) {
            const T e = simd::exp(row[t2] - mx);
            row[t2] = e;
            sum += e;
        }
        const T inv = T(1) / sum;
#pragma omp simd
        for (int t2 = 0; t2 < Tn; t2++) row[t2] *= inv;
    }
}

// Per-thread T x T buffer for the dropped-out probabilities; grows once and is
// then reused by every step (OpenMP keeps its worker threads alive).
template <typename T>
T* head_buffer(size_t n) {
    static thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, const int32_t* mask, int B, int Tn,
                       int C, int NH, float dropout_p, const DropoutKey& key) {
    const int HS = C / NH, C3 = 3 * C;
    const size_t TT = (size_t)Tn * Tn;
    const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const T* q = qkv + (size_t)b * Tn * C3 + h * HS;
        const T* k = q + C;
        const T* v = q + 2 * C;
        T* P = att + (size_t)bh * TT;
        gemm<T>(false, true, Tn, Tn, HS, scale, q, C3, k, C3, T(0), P, Tn);
        masked_softmax(P, mask, b, Tn);
        const T* Pd = P;
        if (dropout_p > 0.f) {
            T* buf = head_buffer<T>(TT);
            detail::dropout_apply(buf, P, TT, (uint64_t)bh * TT, dropout_p, key);
            Pd = buf;
        }
        T* o = out + (size_t)b * Tn * C + h * HS;
        gemm<T>(false, false, Tn, HS, Tn, T(1), Pd, Tn, v, C3, T(0), o, C);
    }
}

template <typename T>
void attention_backward(T* dqkv, T* scratch, const T* dout, const T* qkv, const T* att,
                        const int32_t* mask, int B, int Tn, int C, int NH, float dropout_p,
                        const DropoutKey& key) {
    const int HS = C / NH, C3 = 3 * C;
    const size_t TT = (size_t)Tn * Tn;
    const T scale = T(1) / std::sqrt(T(HS));
    const T keep_scale = dropout_p < 1.f ? T(1) / (T(1) - T(dropout_p)) : T(0);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH;
        const size_t tok0 = (size_t)b * Tn;
        const T* q = qkv + tok0 * C3 + h * HS;
        const T* k = q + C;
        const T* v = q + 2 * C;
        T* dq = dqkv + tok0 * C3 + h * HS;
        T* dk = dq + C;
        T* dv = dq + 2 * C;
        const T* dO = dout + tok0 * C + h * HS;
        const T* P = att + (size_t)bh * TT;
        T* dS = scratch + (size_t)bh * TT;

        const T* Pd = P;
        if (dropout_p > 0.f) {
            T* buf = head_buffer<T>(TT);
            detail::dropout_apply(buf, P, TT, (uint64_t)bh * TT, dropout_p, key);
            Pd = buf;
        }
        gemm<T>(true, false, Tn, HS, Tn, T(1), Pd, Tn, dO, C, T(0), dv, C3);
        gemm<T>(false, true, Tn, Tn, HS, T(1), dO, C, v, C3, T(0), dS, Tn);
        if (dropout_p > 0.f) {
            // Where P > 0, P' != 0 exactly when the element was kept (P' = P *
            // scale, scale >= 1); where P == 0, dS below is 0 whatever dP is.
#pragma omp simd
            for (size_t i = 0; i < TT; i++) dS[i] *= Pd[i] != T(0) ? keep_scale : T(0);
        }
        bool any = false;
        for (int t = 0; t < Tn; t++) any = any || attends(mask, b, Tn, t);
        for (int t1 = 0; t1 < Tn; t1++) {
            const T* p = P + (size_t)t1 * Tn;
            T* ds = dS + (size_t)t1 * Tn;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int t2 = 0; t2 < Tn; t2++) dot += p[t2] * ds[t2];
            const T live = any ? T(1) : T(0);
#pragma omp simd
            for (int t2 = 0; t2 < Tn; t2++) ds[t2] = live * p[t2] * (ds[t2] - dot);
        }
        gemm<T>(false, false, Tn, HS, Tn, scale, dS, Tn, k, C3, T(0), dq, C3);
        gemm<T>(true, false, Tn, HS, Tn, scale, dS, Tn, q, C3, T(0), dk, C3);
    }
}

#define NT_INSTANTIATE(T)                                                                  \
    template void attention_forward<T>(T*, T*, const T*, const int32_t*, int, int, int, int, \
                                       float, const DropoutKey&);                          \
    template void attention_backward<T>(T*, T*, const T*, const T*, const T*,              \
                                        const int32_t*, int, int, int, int, float,         \
                                        const DropoutKey&);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
