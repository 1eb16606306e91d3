// LoRA (Hu et al. 2021) on a frozen linear, as PEFT's lora.Linear computes it:
//   out += scale * B(A(dropout(x))),  A (r, IC), B (OC, r).
// The rank r is small, so the two thin GEMMs cost (IC + OC) r per row instead
// of the base layer's IC OC; the adapter's output is added onto the base
// GEMM's output in place (any row stride, so one column block of a fused
// q/k/v or gate/up output can take its own adapter). LoRA dropout's mask is
// regenerated from its Philox key in the backward rather than stored.
//
// Backward:  dB += scale dout^T t;  dt = scale dout B;  dA += dt^T xd;
//            dinp += dropout_backward(dt A).
#include "cpu/kernels.h"

namespace nt {
namespace {
// dropout(inp) into xd; the mask is keyed by the element's index in the
// (N, IC) input, so the forward and the backward regenerate the same one.
template <typename T>
const T* dropped(T* xd, const T* inp, size_t n, float p, const DropoutKey& key) {
    if (p <= 0.f) return inp;
    dropout_forward(xd, inp, n, p, key);
    return xd;
}
}  // namespace

template <typename T>
void lora_forward(T* out, int ldo, T* t, T* xd, const T* inp, const T* A, const T* B, int N,
                  int IC, int OC, int r, T scale, float dropout_p, const DropoutKey& key) {
    const T* x = dropped(xd, inp, (size_t)N * IC, dropout_p, key);
    gemm<T>(false, true, N, r, IC, T(1), x, IC, A, IC, T(0), t, r);
    gemm<T>(false, true, N, OC, r, scale, t, r, B, r, T(1), out, ldo);
}

template <typename T>
void lora_backward(T* dinp, T* dA, T* dB, T* dt, T* xd, const T* dout, int ldo, const T* inp,
                   const T* t, const T* A, const T* B, int N, int IC, int OC, int r, T scale,
                   float dropout_p, const DropoutKey& key) {
    if (dB) gemm<T>(true, false, OC, r, N, scale, dout, ldo, t, r, T(1), dB, r);
    if (!dA && !dinp) return;
    gemm<T>(false, false, N, r, OC, scale, dout, ldo, B, r, T(0), dt, r);
    if (dA) {
        const T* x = dropped(xd, inp, (size_t)N * IC, dropout_p, key);
        gemm<T>(true, false, r, IC, N, T(1), dt, r, x, IC, T(1), dA, IC);
    }
    if (!dinp) return;
    if (dropout_p <= 0.f) {
        gemm<T>(false, false, N, IC, r, T(1), dt, r, A, IC, T(1), dinp, IC);
        return;
    }
    gemm<T>(false, false, N, IC, r, T(1), dt, r, A, IC, T(0), xd, IC);
    dropout_backward(xd, xd, (size_t)N * IC, dropout_p, key);
    const size_t n = (size_t)N * IC;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] += xd[i];
}

#define NT_INSTANTIATE(T)                                                                       \
    template void lora_forward<T>(T*, int, T*, T*, const T*, const T*, const T*, int, int, int, \
                                  int, T, float, const DropoutKey&);                            \
    template void lora_backward<T>(T*, T*, T*, T*, T*, const T*, int, const T*, const T*,      \
                                   const T*, const T*, int, int, int, int, T, float,            \
                                   const DropoutKey&);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
