// LoRA (Hu et al. 2021) on a frozen linear, as PEFT's lora.Linear computes it:
//   out += scale * B(A(dropout(x))),  A (r, IC), B (OC, r).
// The rank r is small, so the two thin GEMMs cost (IC + OC) r per row instead
// of the base layer's IC OC; the adapter's output is added onto the base
// GEMM's output in place (any row stride, so one column block of a fused
// q/k/v or gate/up output can take its own adapter). LoRA dropout's mask is
// kept as one bit per input element (1/32 of the input's size): the backward
// needs it twice, for dA and for dinp, and reading it beats drawing it again.
//
// Backward:  dB += scale dout^T t;  dt = scale dout B;  dA += dt^T xd;
//            dinp += mask * (dt A) / (1 - p).
#include <type_traits>

#include "cpu/kernels.h"
#include "cpu/onednn.h"

namespace nt {
namespace {
// The thin products (one side of rank r): through oneDNN in fp32 (onednn.h).
template <typename T>
void mm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta, T* C,
        int ldc) {
    if constexpr (std::is_same_v<T, float>)
        gemm_thin(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        gemm<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
}  // namespace

template <typename T>
void lora_forward(T* out, int ldo, T* t, T* xd, uint8_t* keep, const T* inp, const T* A, const T* B,
                  int N, int IC, int OC, int r, T scale, float dropout_p, const DropoutKey& key) {
    const T* x = inp;
    if (dropout_p > 0.f) {
        dropout_forward_mask(xd, inp, keep, (size_t)N * IC, dropout_p, key);
        x = xd;
    }
    mm<T>(false, true, N, r, IC, T(1), x, IC, A, IC, T(0), t, r);
    mm<T>(false, true, N, OC, r, scale, t, r, B, r, T(1), out, ldo);
}

template <typename T>
void lora_backward(T* dinp, T* dA, T* dB, T* dt, T* xd, const uint8_t* keep, const T* dout, int ldo,
                   const T* inp, const T* t, const T* A, const T* B, int N, int IC, int OC, int r, T scale,
                   float dropout_p) {
    if (dB) mm<T>(true, false, OC, r, N, scale, dout, ldo, t, r, T(1), dB, r);
    if (!dA && !dinp) return;
    mm<T>(false, false, N, r, OC, scale, dout, ldo, B, r, T(0), dt, r);
    const size_t n = (size_t)N * IC;
    if (dA) {
        const T* x = inp;
        if (dropout_p > 0.f) {
            dropout_apply_mask(xd, inp, keep, n, dropout_p);
            x = xd;
        }
        mm<T>(true, false, r, IC, N, T(1), dt, r, x, IC, T(1), dA, IC);
    }
    if (!dinp) return;
    if (dropout_p <= 0.f) {
        mm<T>(false, false, N, IC, r, T(1), dt, r, A, IC, T(1), dinp, IC);
        return;
    }
    mm<T>(false, false, N, IC, r, T(1), dt, r, A, IC, T(0), xd, IC);
    dropout_apply_mask(dinp, xd, keep, n, dropout_p, true);
}

#define NT_INSTANTIATE(T)                                                                       \
    template void lora_forward<T>(T*, int, T*, T*, uint8_t*, const T*, const T*, const T*, int, int, \
                                  int, int, T, float, const DropoutKey&);                          \
    template void lora_backward<T>(T*, T*, T*, T*, T*, const uint8_t*, const T*, int, const T*,     \
                                   const T*, const T*, const T*, int, int, int, int, T, float);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
