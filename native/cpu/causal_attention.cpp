// Causal self-attention with grouped-query heads and a padding mask (HF
// LlamaAttention, eager semantics), computed the FlashAttention way (Dao et
// al. 2022): the forward keeps only each row's log-sum-exp, the backward
// recomputes the probabilities. Work is split by (sequence, kv head) so that
// the query heads sharing a kv head add their dK, dV into rows no other
// thread touches; each query head is processed in blocks of kQB rows, and a
// block only multiplies against the keys up to its last row (causality).
//
// Per query block Qb (rows i0..i1) of head h, keys K = K[0:i1], values V:
//   S = Qb K^T / sqrt(HS), masked (future keys and padding keys -> -inf)
//   forward:  P = exp(S - lse),  O = P V
//   backward: dV += P^T dO;  dP = dO V^T;  dS = P (dP - rowsum(dO * O));
//             dQ = dS K / sqrt(HS);  dK += dS^T Qb / sqrt(HS).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd_math.h"

namespace nt {

namespace {

constexpr int kQB = 64;  // query rows per block

template <typename T>
T* scratch(int which, size_t n) {
    static thread_local std::vector<T> buf[2];
    if (buf[which].size() < n) buf[which].resize(n);
    return buf[which].data();
}

// S (rows x nk) -> probabilities in place, for query rows i0.. of sequence b.
// With lse_in null, computes the softmax and writes each row's lse to lse_out;
// otherwise P = exp(S - lse_in) (the backward's recomputation).
template <typename T>
void causal_softmax(T* S, int rows, int nk, int i0, const int32_t* m, const T* lse_in,
                    T* lse_out) {
    for (int r = 0; r < rows; r++) {
        T* s = S + (size_t)r * nk;
        const int i = i0 + r;
        // keys j <= i of the query's own segment (padding, 0, has none)
        const int32_t seg = m[i];
#pragma omp simd
        for (int j = 0; j < nk; j++) s[j] = (j <= i && seg != 0 && m[j] == seg) ? s[j] : T(-INFINITY);
        T l;
        if (lse_in) {
            l = lse_in[r];
        } else {
            T mx = T(-INFINITY);
#pragma omp simd reduction(max : mx)
            for (int j = 0; j < nk; j++) mx = s[j] > mx ? s[j] : mx;
            if (seg == 0) {
                l = T(-INFINITY);
            } else if (mx == T(-INFINITY)) {
                // Keys to attend to, but no score above -inf: NaN scores (the max
                // skips them), as torch's softmax gives NaN; never a padding row's 0.
                l = T(NAN);
            } else {
                T sum = 0;
#pragma omp simd reduction(+ : sum)
                for (int j = 0; j < nk; j++) sum += simd::exp(s[j] - mx);
                l = mx + std::log(sum);
            }
            lse_out[r] = l;
        }
        if (l == T(-INFINITY)) {  // no key to attend to: zero output, no gradient
            for (int j = 0; j < nk; j++) s[j] = T(0);
            continue;
        }
#pragma omp simd
        for (int j = 0; j < nk; j++) s[j] = simd::exp(s[j] - l);
    }
}

}  // namespace

template <typename T>
void causal_attention_forward(T* out, T* lse, const T* qkv, const int32_t* mask, int B, int Tn,
                              int NH, int NKV, int HS) {
    const int G = NH / NKV, QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel for schedule(dynamic, 1)
    for (int bk = 0; bk < B * NKV; bk++) {
        const int b = bk / NKV, kvh = bk % NKV;
        const int32_t* m = mask + (size_t)b * Tn;
        const T* base = qkv + (size_t)b * Tn * QKV;
        const T* k = base + (size_t)(NH + kvh) * HS;
        const T* v = base + (size_t)(NH + NKV + kvh) * HS;
        T* S = scratch<T>(0, (size_t)kQB * Tn);
        for (int h = kvh * G; h < (kvh + 1) * G; h++) {
            const T* q = base + (size_t)h * HS;
            T* o = out + (size_t)b * Tn * OC + (size_t)h * HS;
            T* l = lse + ((size_t)b * NH + h) * Tn;
            for (int i0 = 0; i0 < Tn; i0 += kQB) {
                const int rows = std::min(kQB, Tn - i0), nk = i0 + rows;
                gemm<T>(false, true, rows, nk, HS, scale, q + (size_t)i0 * QKV, QKV, k, QKV, T(0), S, nk);
                causal_softmax(S, rows, nk, i0, m, (const T*)nullptr, l + i0);
                gemm<T>(false, false, rows, HS, nk, T(1), S, nk, v, QKV, T(0), o + (size_t)i0 * OC, OC);
            }
        }
    }
}

template <typename T>
void causal_attention_backward(T* dqkv, const T* dout, const T* out, const T* qkv, const T* lse,
                               const int32_t* mask, int B, int Tn, int NH, int NKV, int HS) {
    const int G = NH / NKV, QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel for schedule(dynamic, 1)
    for (int bk = 0; bk < B * NKV; bk++) {
        const int b = bk / NKV, kvh = bk % NKV;
        const int32_t* m = mask + (size_t)b * Tn;
        const T* base = qkv + (size_t)b * Tn * QKV;
        T* dbase = dqkv + (size_t)b * Tn * QKV;
        const T* k = base + (size_t)(NH + kvh) * HS;
        const T* v = base + (size_t)(NH + NKV + kvh) * HS;
        T* dk = dbase + (size_t)(NH + kvh) * HS;
        T* dv = dbase + (size_t)(NH + NKV + kvh) * HS;
        for (int t = 0; t < Tn; t++)
            for (int c = 0; c < HS; c++) dk[(size_t)t * QKV + c] = dv[(size_t)t * QKV + c] = T(0);
        T* P = scratch<T>(0, (size_t)kQB * Tn);
        T* dS = scratch<T>(1, (size_t)kQB * Tn);
        for (int h = kvh * G; h < (kvh + 1) * G; h++) {
            const T* q = base + (size_t)h * HS;
            T* dq = dbase + (size_t)h * HS;
            const T* o = out + (size_t)b * Tn * OC + (size_t)h * HS;
            const T* dO = dout + (size_t)b * Tn * OC + (size_t)h * HS;
            const T* l = lse + ((size_t)b * NH + h) * Tn;
            for (int i0 = 0; i0 < Tn; i0 += kQB) {
                const int rows = std::min(kQB, Tn - i0), nk = i0 + rows;
                const T* qb = q + (size_t)i0 * QKV;
                const T* dOb = dO + (size_t)i0 * OC;
                gemm<T>(false, true, rows, nk, HS, scale, qb, QKV, k, QKV, T(0), P, nk);
                causal_softmax(P, rows, nk, i0, m, l + i0, (T*)nullptr);
                gemm<T>(true, false, nk, HS, rows, T(1), P, nk, dOb, OC, T(1), dv, QKV);
                gemm<T>(false, true, rows, nk, HS, T(1), dOb, OC, v, QKV, T(0), dS, nk);
                for (int r = 0; r < rows; r++) {
                    const T* orow = o + (size_t)(i0 + r) * OC;
                    const T* drow = dOb + (size_t)r * OC;
                    T D = 0;
#pragma omp simd reduction(+ : D)
                    for (int c = 0; c < HS; c++) D += drow[c] * orow[c];
                    const T* p = P + (size_t)r * nk;
                    T* ds = dS + (size_t)r * nk;
#pragma omp simd
                    for (int j = 0; j < nk; j++) ds[j] = p[j] * (ds[j] - D);
                }
                gemm<T>(false, false, rows, HS, nk, scale, dS, nk, k, QKV, T(0), dq + (size_t)i0 * QKV, QKV);
                gemm<T>(true, false, nk, HS, rows, scale, dS, nk, qb, QKV, T(1), dk, QKV);
            }
        }
    }
}

// A single query row: the scores fit a small per-thread buffer, and a dot
// product per key beats a BLAS call of one row.
template <typename T>
void decode_attention(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                      const int32_t* mask, int B, int NH, int NKV, int HS, int ncols, int cap) {
    const int G = NH / NKV;
    const T scale = T(1) / std::sqrt(T(HS));
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        const int b = bh / NH, h = bh % NH, kvh = h / G;
        const T* qh = q + (size_t)b * q_stride + (size_t)h * HS;
        const T* K = kcache + ((size_t)b * NKV + kvh) * cap * HS;
        const T* V = vcache + ((size_t)b * NKV + kvh) * cap * HS;
        const int32_t* m = mask + (size_t)b * cap;
        T* s = scratch<T>(0, (size_t)ncols);
        T mx = T(-INFINITY);
        bool any = false;
        for (int j = 0; j < ncols; j++) {
            T d = 0;
#pragma omp simd reduction(+ : d)
            for (int c = 0; c < HS; c++) d += qh[c] * K[(size_t)j * HS + c];
            s[j] = m[j] ? d * scale : T(-INFINITY);
            mx = s[j] > mx ? s[j] : mx;
            any = any || m[j] != 0;
        }
        T* o = out + (size_t)b * NH * HS + (size_t)h * HS;
        if (mx == T(-INFINITY)) {
            // No column: 0. Columns but no score above -inf: NaN scores (the max
            // skips them), NaN as in causal_softmax.
            for (int c = 0; c < HS; c++) o[c] = any ? T(NAN) : T(0);
            continue;
        }
        for (int c = 0; c < HS; c++) o[c] = T(0);
        T sum = 0;
        for (int j = 0; j < ncols; j++) {
            s[j] = simd::exp(s[j] - mx);
            sum += s[j];
        }
        const T inv = T(1) / sum;
        for (int j = 0; j < ncols; j++) {
            const T p = s[j] * inv;
            if (p == T(0)) continue;
#pragma omp simd
            for (int c = 0; c < HS; c++) o[c] += p * V[(size_t)j * HS + c];
        }
    }
}

#define NT_INSTANTIATE(T)                                                                       \
    template void causal_attention_forward<T>(T*, T*, const T*, const int32_t*, int, int, int, int, \
                                              int);                                             \
    template void causal_attention_backward<T>(T*, const T*, const T*, const T*, const T*,     \
                                               const int32_t*, int, int, int, int, int);    \
    template void decode_attention<T>(T*, const T*, int, const T*, const T*, const int32_t*, int, int,  \
                                      int, int, int, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
