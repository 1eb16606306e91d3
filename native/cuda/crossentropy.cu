// Fused log-softmax + cross-entropy, torch.nn.CrossEntropyLoss semantics
// (weight=, label_smoothing=, ignore_index=-100, reduction='mean'), the CPU's
// formulas (native/cpu/crossentropy.cpp, after ATen's
// cross_entropy_loss_label_smoothing):
//   l_i = (1-eps) w[y_i] (-log p_iy) + eps/L sum_c w[c] (-log p_ic)
//   loss = sum_i l_i / sum_i w[y_i]                (non-ignored i only)
//   dl_i/dz_ic = p_ic ((1-eps) w[y_i] + eps/L sum_c w[c])
//                - (1-eps) w[y_i] [c == y_i] - eps/L w[c]
// One block: phase 1 sums the weights, phase 2 gives each warp rows
// warp, warp+8, ... (losses kept per warp in row order), phase 3 adds the
// eight warp totals in order. B*L of a classifier is small.
#include <string>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::block_sum;
using detail::from_f;
using detail::to_f;
using detail::warp_max;
using detail::warp_sum;

namespace {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int32_t kIgnoreIndex = -100;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    crossentropy_kernel(float* loss, T* dlogits, const T* logits, const int32_t* labels,
                        const float* w, int B, int L, float eps, float grad_scale) {
    __shared__ float red[32];
    __shared__ float warp_total[kWarps];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    float s = 0.f;
    for (int c = threadIdx.x; c < L; c += kThreads) s += w ? w[c] : 1.f;
    const float wsum_all = block_sum(s, red);
    float d = 0.f;
    for (int i = threadIdx.x; i < B; i += kThreads)
        if (labels[i] != kIgnoreIndex) d += w ? w[labels[i]] : 1.f;
    const float denom = block_sum(d, red);
    const float g = denom != 0.f ? grad_scale / denom : 0.f;
    const float eps_l = eps / L;

    float total = 0.f;  // meaningful in lane 0 only
    for (int i = warp; i < B; i += kWarps) {
        const int32_t y = labels[i];
        const T* z = logits + (size_t)i * L;
        T* dz = dlogits ? dlogits + (size_t)i * L : nullptr;
        if (y == kIgnoreIndex || denom == 0.f) {
            if (dz)
                for (int c = lane; c < L; c += 32) dz[c] = from_f<T>(0.f);
            continue;
        }
        float mx = -INFINITY;
        for (int c = lane; c < L; c += 32) mx = fmaxf(mx, to_f(z[c]));
        mx = warp_max(mx);
        float se = 0.f;
        for (int c = lane; c < L; c += 32) se += expf(to_f(z[c]) - mx);
        const float lse = mx + logf(warp_sum(se));
        float smooth = 0.f;
        for (int c = lane; c < L; c += 32) smooth += (w ? w[c] : 1.f) * (lse - to_f(z[c]));
        smooth = warp_sum(smooth);
        const float wy = w ? w[y] : 1.f;
        total += (1.f - eps) * wy * (lse - to_f(z[y])) + eps_l * smooth;
        if (dz) {
            const float a = (1.f - eps) * wy + eps_l * wsum_all;
            for (int c = lane; c < L; c += 32) {
                float v = a * expf(to_f(z[c]) - lse) - eps_l * (w ? w[c] : 1.f);
                if (c == y) v -= (1.f - eps) * wy;
                dz[c] = from_f<T>(v * g);
            }
        }
    }
    if (lane == 0) warp_total[warp] = total;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int k = 0; k < kWarps; k++) t += warp_total[k];
        *loss = denom != 0.f ? t / denom : 0.f;
    }
}
}  // namespace

template <typename T>
void crossentropy_softmax_forward_backward(float* loss, T* dlogits, const T* logits,
                                           const int32_t* labels, const float* class_weights,
                                           int B, int L, float label_smoothing,
                                           float grad_scale, cudaStream_t stream) {
    detail::require(B >= 0 && L > 0, "crossentropy_softmax_forward_backward",
                    "B=" + std::to_string(B) + ", num_labels=" + std::to_string(L));
    detail::require(loss != nullptr, "crossentropy_softmax_forward_backward", "loss is null");
    crossentropy_kernel<T><<<1, kThreads, 0, stream>>>(loss, dlogits, logits, labels,
                                                       class_weights, B, L, label_smoothing,
                                                       grad_scale);
    check_launch("crossentropy_softmax_forward_backward");
}

template void crossentropy_softmax_forward_backward<float>(float*, float*, const float*,
                                                           const int32_t*, const float*, int,
                                                           int, float, float, cudaStream_t);
template void crossentropy_softmax_forward_backward<bf16>(float*, bf16*, const bf16*,
                                                          const int32_t*, const float*, int,
                                                          int, float, float, cudaStream_t);

}  // namespace cuda
}  // namespace nt
