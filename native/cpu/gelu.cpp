// GELU, exact erf form (Hendrycks & Gimpel 2016; HF ACT2FN["gelu"]):
//   gelu(x) = x * Phi(x),  Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
//   gelu'(x) = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
// float uses the vectorisable erf/exp of simd_math.h (erf within 1.5e-7 of
// exact, as PyTorch's vectorised CPU GELU); double uses libm.
#include <cmath>

#include "cpu/kernels.h"
#include "cpu/simd_math.h"

namespace nt {

namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T x = inp[i];
        out[i] = x * T(0.5) * (T(1) + simd::erf(x * T(kInvSqrt2)));
    }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T x = inp[i];
        const T cdf = T(0.5) * (T(1) + simd::erf(x * T(kInvSqrt2)));
        const T pdf = T(kInvSqrt2Pi) * simd::exp(T(-0.5) * x * x);
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

template void gelu_forward<float>(float*, const float*, size_t);
template void gelu_forward<double>(double*, const double*, size_t);
template void gelu_backward<float>(float*, const float*, const float*, size_t);
template void gelu_backward<double>(double*, const double*, const double*, size_t);

}  // namespace nt
