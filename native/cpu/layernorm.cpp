// LayerNorm over the last axis (Ba et al. 2016; torch.nn.LayerNorm with a
// biased variance). Backward follows the usual closed form:
//   dinp = rstd * (g - mean(g) - norm * mean(g * norm)),  g = dout * weight.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace nt {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight,
                       const T* bias, int N, int C, T eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        T* o = out + (size_t)n * C;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += x[c];
        const T m = s / C;
        // Two-pass variance: no cancellation when |mean| >> std.
        T v = 0;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        const T r = T(1) / std::sqrt(v / C + eps);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

template <typename T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                        const T* weight, const T* mean, const T* rstd, int N, int C) {
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const T* x = inp + (size_t)n * C;
            const T* d = dout + (size_t)n * C;
            T* dx = dinp + (size_t)n * C;
            const T m = mean[n], r = rstd[n];
            T sg = 0, sgn = 0;
#pragma omp simd reduction(+ : sg, sgn)
            for (int c = 0; c < C; c++) {
                const T g = d[c] * weight[c];
                sg += g;
                sgn += g * (x[c] - m) * r;
            }
            sg /= C;
            sgn /= C;
#pragma omp simd
            for (int c = 0; c < C; c++)
                dx[c] = r * (d[c] * weight[c] - sg - (x[c] - m) * r * sgn);
        }
        // Parameter gradients: each thread owns a channel range and sums rows
        // in order, so the result is independent of the thread count.
        if (dweight || dbias) {
            const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
            const int chunk = ((C + nth - 1) / nth + 15) / 16 * 16;
            const int c0 = std::min(C, tid * chunk), c1 = std::min(C, c0 + chunk);
            for (int n = 0; n < N && c0 < c1; n++) {
                const T* x = inp + (size_t)n * C;
                const T* d = dout + (size_t)n * C;
                const T m = mean[n], r = rstd[n];
                if (dweight) {
#pragma omp simd
                    for (int c = c0; c < c1; c++) dweight[c] += d[c] * (x[c] - m) * r;
                }
                if (dbias) {
#pragma omp simd
                    for (int c = c0; c < c1; c++) dbias[c] += d[c];
                }
            }
        }
    }
}

#define NT_INSTANTIATE(T)                                                                    \
    template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, T); \
    template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,  \
                                        const T*, int, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
