// Fused log-softmax + cross-entropy with torch.nn.CrossEntropyLoss semantics
// (weight=, label_smoothing=, ignore_index=-100, reduction='mean'), following
// ATen's cross_entropy_loss_label_smoothing: with eps = label_smoothing,
//   l_i = (1-eps) w[y_i] (-log p_iy) + eps/L sum_c w[c] (-log p_ic)
//   loss = sum_i l_i / sum_i w[y_i]           (non-ignored i only)
// and dl_i/dz_ic = p_ic ((1-eps) w[y_i] + eps/L sum_c w[c])
//                  - (1-eps) w[y_i] [c == y_i] - eps/L w[c].
// Rows are independent and B*L is small, so this runs serially (and its sum
// order is fixed).
#include <cmath>
#include <stdexcept>
#include <string>

#include "cpu/kernels.h"

namespace nt {

namespace {
constexpr int32_t kIgnoreIndex = -100;

void check_label(int32_t y, int i, int L) {
    if (y == kIgnoreIndex || (y >= 0 && y < L)) return;
    throw std::invalid_argument("crossentropy: labels[" + std::to_string(i) + "] = " +
                                std::to_string(y) + ", expected -100 (ignored) or 0.." +
                                std::to_string(L - 1));
}

// Returns the un-normalised loss sum; writes unscaled dl/dz rows if dlogits.
template <typename T>
T ce_rows(T* dlogits, const T* logits, const int32_t* labels, const T* w, int B, int L,
          T eps, T* weight_sum) {
    T wsum_all = 0;
    for (int c = 0; c < L; c++) wsum_all += w ? w[c] : T(1);
    T total = 0, denom = 0;
    for (int i = 0; i < B; i++) {
        const int32_t y = labels[i];
        check_label(y, i, L);
        const T* z = logits + (size_t)i * L;
        T* dz = dlogits ? dlogits + (size_t)i * L : nullptr;
        if (y == kIgnoreIndex) {
            if (dz)
                for (int c = 0; c < L; c++) dz[c] = T(0);
            continue;
        }
        T mx = z[0];
        for (int c = 1; c < L; c++) mx = z[c] > mx ? z[c] : mx;
        T se = 0;
        for (int c = 0; c < L; c++) se += std::exp(z[c] - mx);
        const T lse = mx + std::log(se);
        const T wy = w ? w[y] : T(1);
        T smooth = 0;  // sum_c w[c] (-log p_c)
        for (int c = 0; c < L; c++) smooth += (w ? w[c] : T(1)) * (lse - z[c]);
        total += (T(1) - eps) * wy * (lse - z[y]) + eps / L * smooth;
        denom += wy;
        if (dz) {
            const T a = (T(1) - eps) * wy + eps / L * wsum_all;
            for (int c = 0; c < L; c++)
                dz[c] = a * std::exp(z[c] - lse) - eps / L * (w ? w[c] : T(1));
            dz[y] -= (T(1) - eps) * wy;
        }
    }
    *weight_sum = denom;
    return total;
}
}  // namespace

template <typename T>
T crossentropy_softmax_forward_backward(T* dlogits, const T* logits, const int32_t* labels,
                                        const T* class_weights, int B, int L,
                                        T label_smoothing, T grad_scale) {
    T denom = 0;
    const T total = ce_rows(dlogits, logits, labels, class_weights, B, L, label_smoothing,
                            &denom);
    // All ignored (or zero total weight): loss 0, gradient 0 (PyTorch gives NaN).
    const T g = denom != T(0) ? grad_scale / denom : T(0);
    for (size_t i = 0; i < (size_t)B * L; i++) dlogits[i] *= g;
    return denom != T(0) ? total / denom : T(0);
}

template <typename T>
T crossentropy_softmax_forward(const T* logits, const int32_t* labels, const T* class_weights,
                               int B, int L, T label_smoothing) {
    T denom = 0;
    const T total = ce_rows<T>(nullptr, logits, labels, class_weights, B, L, label_smoothing,
                               &denom);
    return denom != T(0) ? total / denom : T(0);
}

#define NT_INSTANTIATE(T)                                                                     \
    template T crossentropy_softmax_forward_backward<T>(T*, const T*, const int32_t*, const T*, \
                                                        int, int, T, T);                       \
    template T crossentropy_softmax_forward<T>(const T*, const int32_t*, const T*, int, int, T);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
