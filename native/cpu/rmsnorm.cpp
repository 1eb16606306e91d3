// RMSNorm (Zhang & Sennrich 2019) as HF LlamaRMSNorm computes it:
// y = x / sqrt(mean(x^2) + eps) * w, with no mean subtraction and no bias.
//
// Backward, with g = w * dy and r = rstd:
//   dx = r g - r^3 x (sum_c g_c x_c) / C,   dw += dy x r.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace nt {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* weight, int N, int C, T eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* x = inp + (size_t)n * C;
        T* y = out + (size_t)n * C;
        T ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        const T r = T(1) / std::sqrt(ss / C + eps);
        rstd[n] = r;
#pragma omp simd
        for (int c = 0; c < C; c++) y[c] = x[c] * r * weight[c];
    }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                      const T* rstd, int N, int C, bool accumulate_dinp) {
    if (dinp) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            const T* x = inp + (size_t)n * C;
            const T* dy = dout + (size_t)n * C;
            T* dx = dinp + (size_t)n * C;
            const T r = rstd[n];
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) dot += weight[c] * dy[c] * x[c];
            const T k = r * r * r * dot / C;
            if (accumulate_dinp) {
#pragma omp simd
                for (int c = 0; c < C; c++) dx[c] += r * weight[c] * dy[c] - k * x[c];
            } else {
#pragma omp simd
                for (int c = 0; c < C; c++) dx[c] = r * weight[c] * dy[c] - k * x[c];
            }
        }
    }
    if (dweight) {
        // A thread owns a channel range and sums rows in order: deterministic.
#pragma omp parallel
        {
            const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
            const int chunk = ((C + nth - 1) / nth + 15) / 16 * 16;
            const int c0 = std::min(C, tid * chunk), c1 = std::min(C, c0 + chunk);
            for (int n = 0; n < N && c0 < c1; n++) {
                const T* x = inp + (size_t)n * C;
                const T* dy = dout + (size_t)n * C;
                const T r = rstd[n];
#pragma omp simd
                for (int c = c0; c < c1; c++) dweight[c] += dy[c] * x[c] * r;
            }
        }
    }
}

#define NT_INSTANTIATE(T)                                                                 \
    template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int, int, T);            \
    template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int, \
                                      int, bool);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
