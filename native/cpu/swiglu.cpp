// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"), HF LlamaMLP's
// down_proj(act_fn(gate_proj(x)) * up_proj(x)) with act_fn = SiLU; gate and up
// come from one GEMM as [gate | up] per row. The backward recomputes the
// sigmoid from the saved pre-activations instead of storing silu(gate).
//   silu(g) = g s,  s = sigmoid(g),  silu'(g) = s (1 + g (1 - s)).
#include <cmath>

#include "cpu/kernels.h"
#include "cpu/simd_math.h"

namespace nt {

template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int I) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* g = gu + (size_t)n * 2 * I;
        const T* u = g + I;
        T* o = out + (size_t)n * I;
#pragma omp simd
        for (int i = 0; i < I; i++) {
            const T s = T(1) / (T(1) + simd::exp(-g[i]));
            o[i] = g[i] * s * u[i];
        }
    }
}

template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int I) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* g = gu + (size_t)n * 2 * I;
        const T* u = g + I;
        const T* d = dout + (size_t)n * I;
        T* dg = dgu + (size_t)n * 2 * I;
        T* du = dg + I;
#pragma omp simd
        for (int i = 0; i < I; i++) {
            const T s = T(1) / (T(1) + simd::exp(-g[i]));
            const T silu = g[i] * s;
            du[i] = d[i] * silu;
            dg[i] = d[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
        }
    }
}

#define NT_INSTANTIATE(T)                                          \
    template void swiglu_forward<T>(T*, const T*, int, int);       \
    template void swiglu_backward<T>(T*, const T*, const T*, int, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
