// Optimizer kernels: global gradient norm (two-stage reduction in double over
// a fixed grid, so the sum order depends on n only), clip coefficient on the
// device, and fused AdamW over a whole parameter arena in one launch.
#include <cmath>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::block_sum;

namespace {
constexpr int kNormBlocks = 512;   // fixed: the partition must not depend on the device
constexpr int kNormThreads = 256;
constexpr int kAdamThreads = 256;

__global__ void __launch_bounds__(kNormThreads)
    sumsq_partial_kernel(double* part, const float* g, size_t n) {
    __shared__ double red[32];
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const double x = (double)g[i];
        s += x * x;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// One block of kNormBlocks threads: thread k holds partial k.
__global__ void __launch_bounds__(kNormBlocks)
    sumsq_final_kernel(double* sum_out, float* norm, float* clip_scale, const double* part,
                       float max_norm) {
    __shared__ double red[32];
    const double total = block_sum(part[threadIdx.x], red);
    if (threadIdx.x != 0) return;
    if (sum_out) *sum_out = total;
    if (norm) {
        const float nrm = (float)sqrt(total);
        *norm = nrm;
        // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
        // A non-finite norm gives NaN, which makes adamw_update skip the step.
        if (clip_scale)
            *clip_scale = !isfinite(nrm) ? NAN : max_norm > 0.f ? fminf(1.f, max_norm / (nrm + 1e-6f)) : 1.f;
    }
}

void sumsq(double* sum_out, float* norm, float* clip_scale, const float* g, size_t n,
           float max_norm, double* scratch, cudaStream_t stream) {
    detail::require(scratch != nullptr, "global_grad_norm", "scratch is null");
    sumsq_partial_kernel<<<kNormBlocks, kNormThreads, 0, stream>>>(scratch, g, n);
    check_launch("sumsq_partial_kernel");
    sumsq_final_kernel<<<1, kNormBlocks, 0, stream>>>(sum_out, norm, clip_scale, scratch, max_norm);
    check_launch("sumsq_final_kernel");
}

// Op by op as the CPU's adamw_update (torch.optim.AdamW single-tensor path).
__global__ void adamw_kernel(float* params, bf16* params_bf16, const float* grads, float* m,
                             float* v, const uint8_t* flags, size_t n, float decay,
                             float step_size, float bc2_sqrt, float w, bool lerp_lo,
                             float one_m_b2, float b2, float eps, float grad_scale,
                             const float* grad_scale_dev) {
    if (grad_scale_dev && !isfinite(*grad_scale_dev)) return;  // the engine's non-finite-norm skip
    const float gs = grad_scale_dev ? grad_scale * *grad_scale_dev : grad_scale;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const uint8_t f = flags ? flags[i] : 2;
        if (f == 0) continue;
        const float g = grads[i] * gs;
        const float mi0 = m[i];
        float p = f == 2 ? params[i] * decay : params[i];
        const float mi = lerp_lo ? mi0 + w * (g - mi0) : g - (g - mi0) * (1.f - w);
        const float vi = v[i] * b2 + one_m_b2 * g * g;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        p = p + (-step_size * mi) / denom;
        m[i] = mi;
        v[i] = vi;
        params[i] = p;
        if (params_bf16) params_bf16[i] = __float2bfloat16_rn(p);
    }
}
}  // namespace

size_t grad_norm_scratch_doubles() { return kNormBlocks; }

void global_grad_norm(float* norm, float* clip_scale, const float* g, size_t n, float max_norm,
                      double* scratch, cudaStream_t stream) {
    detail::require(norm != nullptr, "global_grad_norm", "norm is null");
    sumsq(nullptr, norm, clip_scale, g, n, max_norm, scratch, stream);
}

void sum_squares(double* out, const float* g, size_t n, double* scratch, cudaStream_t stream) {
    detail::require(out != nullptr, "sum_squares", "out is null");
    sumsq(out, nullptr, nullptr, g, n, 0.f, scratch, stream);
}

void adamw_update(float* params, bf16* params_bf16, const float* grads, float* m, float* v,
                  const uint8_t* flags, size_t n, float lr, float beta1, float beta2, float eps,
                  float weight_decay, int64_t t, float grad_scale, const float* grad_scale_dev,
                  cudaStream_t stream) {
    detail::require(t >= 1, "adamw_update", "t = " + std::to_string(t) + ", expected >= 1");
    if (n == 0) return;
    // Step scalars in double, then rounded to float, exactly as the CPU.
    const double bc1 = 1.0 - std::pow((double)beta1, (double)t);
    const double bc2 = 1.0 - std::pow((double)beta2, (double)t);
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    const float step_size = (float)((double)lr / bc1);
    const float bc2_sqrt = (float)std::sqrt(bc2);
    const float w = (float)(1.0 - beta1);
    const float one_m_b2 = (float)(1.0 - beta2);
    int sms = 132;
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess)
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    const size_t want = (n + kAdamThreads - 1) / kAdamThreads;
    const unsigned grid = (unsigned)(want < (size_t)sms * 8 ? want : (size_t)sms * 8);
    adamw_kernel<<<grid, kAdamThreads, 0, stream>>>(params, params_bf16, grads, m, v, flags, n,
                                                    decay, step_size, bc2_sqrt, w, w < 0.5f,
                                                    one_m_b2, beta2, eps, grad_scale,
                                                    grad_scale_dev);
    check_launch("adamw_update");
}

}  // namespace cuda
}  // namespace nt
