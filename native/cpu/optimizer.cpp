// Optimizer kernels: global-norm pieces and fused AdamW.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace nt {

// Per-thread partial sums over the static partition, combined in thread order:
// deterministic for a given thread count (an OpenMP reduction clause is not).
template <typename T>
double sum_squares(const T* g, size_t n) {
    constexpr int kMaxThreads = 256;  // partials on the stack: the step allocates nothing
    double part[kMaxThreads];
    int used = 1;
#pragma omp parallel num_threads(std::min(omp_get_max_threads(), kMaxThreads))
    {
        const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
        const size_t chunk = (n + nth - 1) / nth;
        const size_t i0 = std::min(n, (size_t)tid * chunk), i1 = std::min(n, i0 + chunk);
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++) s += (double)g[i] * (double)g[i];
        part[tid] = s;
        if (tid == 0) used = nth;
    }
    double total = 0;
    for (int t = 0; t < used; t++) total += part[t];
    return total;
}

template <typename T>
void scale_inplace(T* x, size_t n, T s) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// torch.optim.AdamW, single-tensor (foreach=False) path, op by op in T with
// the step scalars computed in double the way Python computes them:
//   p *= 1 - lr*wd;  m.lerp_(g, 1-beta1);  v = v*beta2 + (1-beta2) g*g
//   denom = sqrt(v) / sqrt(1 - beta2^t) + eps;  p -= lr / (1 - beta1^t) * m / denom
template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int64_t t, float grad_scale) {
    const double bc1 = 1.0 - std::pow((double)beta1, (double)t);
    const double bc2 = 1.0 - std::pow((double)beta2, (double)t);
    const T decay = T(1.0 - (double)lr * weight_decay);
    const T step_size = T((double)lr / bc1);
    const T bc2_sqrt = T(std::sqrt(bc2));
    const T w = T(1.0 - beta1);  // lerp weight
    const T one_m_b2 = T(1.0 - beta2), b2 = T(beta2), e = T(eps), gs = T(grad_scale);
    // ATen's lerp: the formula from the nearer end point (w < 0.5 for Adam).
    const bool lerp_lo = w < T(0.5);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T g = grads[i] * gs;
        T p = params[i] * decay;
        const T mi = lerp_lo ? m[i] + w * (g - m[i]) : g - (g - m[i]) * (T(1) - w);
        const T vi = v[i] * b2 + one_m_b2 * g * g;
        const T denom = std::sqrt(vi) / bc2_sqrt + e;
        p = p + (-step_size * mi) / denom;  // ATen addcdiv: (value * t1) / t2
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
    }
}

template double sum_squares<float>(const float*, size_t);
template double sum_squares<double>(const double*, size_t);
template void scale_inplace<float>(float*, size_t, float);
template void scale_inplace<double>(double*, size_t, double);
template void adamw_update<float>(float*, const float*, float*, float*, size_t, float, float,
                                  float, float, float, int64_t, float);
template void adamw_update<double>(double*, const double*, double*, double*, size_t, float,
                                   float, float, float, float, int64_t, float);

}  // namespace nt
