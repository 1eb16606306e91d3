// tanh, the BertPooler activation.
#include <cmath>

#include "cpu/kernels.h"

namespace nt {

template <typename T>
void tanh_forward(T* out, const T* inp, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = std::tanh(inp[i]);
}

template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dinp[i] = dout[i] * (T(1) - out[i] * out[i]);
}

template void tanh_forward<float>(float*, const float*, size_t);
template void tanh_forward<double>(double*, const double*, size_t);
template void tanh_backward<float>(float*, const float*, const float*, size_t);
template void tanh_backward<double>(double*, const double*, const double*, size_t);

}  // namespace nt
