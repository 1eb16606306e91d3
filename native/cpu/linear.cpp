// torch.nn.Linear on BLAS: out = inp @ weight^T + bias, weight (OC, IC).
#include <omp.h>

#include <algorithm>

#include "cpu/kernels.h"

namespace nt {

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IC,
                    int OC) {
    // Seed out with the bias so the GEMM adds the product in one pass (beta = 1).
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) std::copy(bias, bias + OC, out + (size_t)n * OC);
    }
    gemm<T>(false, true, N, OC, IC, T(1), inp, IC, weight, IC, bias ? T(1) : T(0), out, OC);
}

template <typename T>
void linear_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp,
                     const T* weight, int N, int IC, int OC, bool accumulate_dinp) {
    if (dinp)
        gemm<T>(false, false, N, IC, OC, T(1), dout, OC, weight, IC,
                accumulate_dinp ? T(1) : T(0), dinp, IC);
    if (dweight) gemm<T>(true, false, OC, IC, N, T(1), dout, OC, inp, IC, T(1), dweight, IC);
    if (dbias) {
        // Column sums; a thread owns a channel range, rows are summed in order.
#pragma omp parallel
        {
            const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
            const int chunk = ((OC + nth - 1) / nth + 15) / 16 * 16;
            const int c0 = std::min(OC, tid * chunk), c1 = std::min(OC, c0 + chunk);
            for (int n = 0; n < N && c0 < c1; n++) {
                const T* d = dout + (size_t)n * OC;
#pragma omp simd
                for (int c = c0; c < c1; c++) dbias[c] += d[c];
            }
        }
    }
}

#define NT_INSTANTIATE(T)                                                                 \
    template void linear_forward<T>(T*, const T*, const T*, const T*, int, int, int);     \
    template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, \
                                     int, bool);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
