// LoRA (Hu et al. 2021) on a frozen linear, as PEFT's lora.Linear computes it
// (the CUDA twin of cpu/lora.cpp):
//   out += scale * B(A(dropout(x))),  A (r, IC), B (OC, r).
// Two thin GEMMs (rank r is small) through Blas::gemm, row-major; the second
// adds onto the base layer's output in place with row stride ldo, so one
// column block of a packed q|k|v or gate|up output takes its own adapter.
//
// Backward:  dB += scale dout^T t;  dt = scale dout B;  dA += dt^T xd;
//            dinp += mask * (dt A) / (1 - p).
// The dropout mask is not stored: Philox is counter-based, so the backward
// draws it again from the same DropoutKey (dropout_forward / dropout_backward
// in elementwise.cu), bit-identical to the forward's and to the CPU's mask.
// That costs one more pass over x, and saves an (N, IC) mask buffer per adapter.
#include <string>

#include "cuda/common.cuh"
#include "cuda/gemm.h"

namespace nt {
namespace cuda {

namespace {
void check_lora(const char* k, int N, int IC, int OC, int r, int ldo, float dropout_p,
                const void* xd) {
    detail::require(N >= 0 && IC > 0 && OC > 0 && r > 0, k,
                    "N=" + std::to_string(N) + ", IC=" + std::to_string(IC) +
                        ", OC=" + std::to_string(OC) + ", r=" + std::to_string(r));
    detail::require(ldo >= OC, k, "ldo=" + std::to_string(ldo) + " < OC=" + std::to_string(OC));
    detail::require(dropout_p <= 0.f || xd != nullptr, k, "xd is null but dropout_p > 0");
}
}  // namespace

// out (N rows, stride ldo, OC columns) +=; t (N, r) written; xd (N, IC)
// workspace when dropout_p > 0; inp (N, IC); A (r, IC); B (OC, r).
template <typename T>
void lora_forward(Blas& blas, cudaStream_t stream, T* out, int ldo, T* t, T* xd, const T* inp,
                  const T* A, const T* B, int N, int IC, int OC, int r, float scale,
                  float dropout_p, const DropoutKey& key) {
    check_lora("lora_forward", N, IC, OC, r, ldo, dropout_p, xd);
    if (N == 0) return;
    const T* x = inp;
    if (dropout_p > 0.f) {
        dropout_forward<T>(xd, inp, (size_t)N * IC, dropout_p, key, stream);
        x = xd;
    }
    blas.gemm<T, T>(stream, false, true, N, r, IC, 1.0f, x, IC, A, IC, 0.0f, t, r);
    blas.gemm<T, T>(stream, false, true, N, OC, r, scale, t, r, B, r, 1.0f, out, ldo);
}

// dinp (N, IC) += (may be null); dA (r, IC), dB (OC, r) fp32 += (may be null);
// dt (N, r), xd (N, IC) workspace; dout (N rows, stride ldo, OC columns).
template <typename T>
void lora_backward(Blas& blas, cudaStream_t stream, T* dinp, float* dA, float* dB, T* dt, T* xd,
                   const T* dout, int ldo, const T* inp, const T* t, const T* A, const T* B, int N,
                   int IC, int OC, int r, float scale, float dropout_p, const DropoutKey& key) {
    check_lora("lora_backward", N, IC, OC, r, ldo, dropout_p, xd);
    if (N == 0) return;
    if (dB) blas.gemm<T, float>(stream, true, false, OC, r, N, scale, dout, ldo, t, r, 1.0f, dB, r);
    if (!dA && !dinp) return;
    blas.gemm<T, T>(stream, false, false, N, r, OC, scale, dout, ldo, B, r, 0.0f, dt, r);
    const size_t n = (size_t)N * IC;
    if (dA) {
        const T* x = inp;
        if (dropout_p > 0.f) {  // the forward's dropout(x), drawn again
            dropout_forward<T>(xd, inp, n, dropout_p, key, stream);
            x = xd;
        }
        blas.gemm<T, float>(stream, true, false, r, IC, N, 1.0f, dt, r, x, IC, 1.0f, dA, IC);
    }
    if (!dinp) return;
    if (dropout_p <= 0.f) {
        blas.gemm<T, T>(stream, false, false, N, IC, r, 1.0f, dt, r, A, IC, 1.0f, dinp, IC);
        return;
    }
    // dinp += mask * (dt A) / (1 - p): the product into xd, masked in place, added.
    blas.gemm<T, T>(stream, false, false, N, IC, r, 1.0f, dt, r, A, IC, 0.0f, xd, IC);
    dropout_backward<T>(xd, xd, n, dropout_p, key, stream);
    add_inplace<T>(dinp, xd, n, stream);
}

#define NT_INSTANTIATE(T)                                                                       \
    template void lora_forward<T>(Blas&, cudaStream_t, T*, int, T*, T*, const T*, const T*,     \
                                  const T*, int, int, int, int, float, float, const DropoutKey&); \
    template void lora_backward<T>(Blas&, cudaStream_t, T*, float*, float*, T*, T*, const T*,   \
                                   int, const T*, const T*, const T*, const T*, int, int, int,  \
                                   int, float, float, const DropoutKey&);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
