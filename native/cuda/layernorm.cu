// LayerNorm over the last axis (Ba et al. 2016; torch.nn.LayerNorm, biased
// variance), its fused residual-add form, and deterministic column sums for
// the parameter gradients (also used for Linear's bias gradient).
//
// Forward: one warp per row, two-pass variance as the CPU (no cancellation
// when |mean| >> std). Backward (the CPU's closed form):
//   dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * weight
// dweight = sum_n dout * xhat, dbias = sum_n dout: each block of kRowsPerPart
// rows writes one partial row, then one thread per channel adds the partials
// in block order, so the result depends on N and C only.
#include <string>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;
using detail::warp_sum;

namespace {
constexpr int kWarpsPerBlock = 8;
constexpr int kRowsPerPart = 32;
constexpr int kColThreads = 256;

int num_parts(int N) { return (N + kRowsPerPart - 1) / kRowsPerPart; }

// Normalises the row `x` (already in its final T rounding) into `o`.
template <typename T>
__device__ void normalize_row(T* o, float* mean, float* rstd, const T* x, const T* weight,
                              const T* bias, int C, float eps, int row) {
    const int lane = threadIdx.x & 31;
    float s = 0.f;
    for (int c = lane; c < C; c += 32) s += to_f(x[c]);
    const float m = warp_sum(s) / C;
    float v = 0.f;
    for (int c = lane; c < C; c += 32) {
        const float d = to_f(x[c]) - m;
        v += d * d;
    }
    const float r = 1.0f / sqrtf(warp_sum(v) / C + eps);
    for (int c = lane; c < C; c += 32)
        o[c] = from_f<T>((to_f(x[c]) - m) * r * to_f(weight[c]) + to_f(bias[c]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const T* inp,
                                         const T* weight, const T* bias, int N, int C,
                                         float eps) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    normalize_row(out + off, mean, rstd, inp + off, weight, bias, C, eps, row);
}

template <typename T>
__global__ void residual_layernorm_kernel(T* residual, T* out, float* mean, float* rstd,
                                          const T* a, const T* b, const T* weight,
                                          const T* bias, int N, int C, float eps) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const size_t off = (size_t)row * C;
    // Each lane re-reads only the elements it wrote itself: no sync needed.
    for (int c = lane; c < C; c += 32) residual[off + c] = from_f<T>(to_f(a[off + c]) + to_f(b[off + c]));
    normalize_row(out + off, mean, rstd, residual + off, weight, bias, C, eps, row);
}

template <typename T>
__global__ void layernorm_dinp_kernel(T* dinp, const T* dout, const T* inp, const T* weight,
                                      const float* mean, const float* rstd, int N, int C,
                                      bool accumulate) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const size_t off = (size_t)row * C;
    const T* x = inp + off;
    const T* d = dout + off;
    T* dx = dinp + off;
    const float m = mean[row], r = rstd[row];
    float sg = 0.f, sgn = 0.f;
    for (int c = lane; c < C; c += 32) {
        const float g = to_f(d[c]) * to_f(weight[c]);
        sg += g;
        sgn += g * (to_f(x[c]) - m) * r;
    }
    sg = warp_sum(sg) / C;
    sgn = warp_sum(sgn) / C;
    for (int c = lane; c < C; c += 32) {
        float v = r * (to_f(d[c]) * to_f(weight[c]) - sg - (to_f(x[c]) - m) * r * sgn);
        if (accumulate) v += to_f(dx[c]);
        dx[c] = from_f<T>(v);
    }
}

// Partial column sums over rows [p*R, p*R+R): part_w[p*C+c] = sum dout*xhat
// (when part_w), part_b[p*C+c] = sum dout (when part_b).
template <typename T>
__global__ void column_partials_kernel(float* part_w, float* part_b, const T* dout,
                                       const T* inp, const float* mean, const float* rstd,
                                       int N, int C) {
    const int p = blockIdx.x;
    const int n0 = p * kRowsPerPart;
    const int n1 = N < n0 + kRowsPerPart ? N : n0 + kRowsPerPart;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < C; c += gridDim.y * blockDim.x) {
        float sw = 0.f, sb = 0.f;
        for (int n = n0; n < n1; n++) {
            const float d = to_f(dout[(size_t)n * C + c]);
            if (part_w) sw += d * (to_f(inp[(size_t)n * C + c]) - mean[n]) * rstd[n];
            sb += d;
        }
        if (part_w) part_w[(size_t)p * C + c] = sw;
        if (part_b) part_b[(size_t)p * C + c] = sb;
    }
}

__global__ void column_reduce_kernel(float* dst, const float* part, int P, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.f;
    for (int p = 0; p < P; p++) s += part[(size_t)p * C + c];
    dst[c] += s;
}

template <typename T>
void column_sums(float* dw, float* db, const T* dout, const T* inp, const float* mean,
                 const float* rstd, int N, int C, float* scratch, cudaStream_t stream) {
    if (!dw && !db) return;
    const int P = num_parts(N);
    float* part_w = dw ? scratch : nullptr;
    float* part_b = db ? scratch + (size_t)P * C : nullptr;
    const dim3 grid(P, (C + kColThreads - 1) / kColThreads > 4 ? 4 : (C + kColThreads - 1) / kColThreads);
    column_partials_kernel<T><<<grid, kColThreads, 0, stream>>>(part_w, part_b, dout, inp, mean,
                                                                rstd, N, C);
    check_launch("column_partials_kernel");
    const unsigned g = detail::grid_for((size_t)C, kColThreads);
    if (dw) {
        column_reduce_kernel<<<g, kColThreads, 0, stream>>>(dw, part_w, P, C);
        check_launch("column_reduce_kernel(dweight)");
    }
    if (db) {
        column_reduce_kernel<<<g, kColThreads, 0, stream>>>(db, part_b, P, C);
        check_launch("column_reduce_kernel(dbias)");
    }
}

void check_ln(const char* k, int N, int C) {
    detail::require(N >= 0 && C > 0, k, "N=" + std::to_string(N) + ", C=" + std::to_string(C));
}
}  // namespace

size_t layernorm_backward_scratch_floats(int N, int C) { return 2 * (size_t)num_parts(N) * C; }
size_t bias_backward_scratch_floats(int N, int OC) { return 2 * (size_t)num_parts(N) * OC; }

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                       const T* bias, int N, int C, float eps, cudaStream_t stream) {
    check_ln("layernorm_forward", N, C);
    if (N == 0) return;
    const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    layernorm_forward_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(out, mean, rstd, inp,
                                                                         weight, bias, N, C, eps);
    check_launch("layernorm_forward");
}

template <typename T>
void residual_layernorm_forward(T* residual, T* out, float* mean, float* rstd, const T* a,
                                const T* b, const T* weight, const T* bias, int N, int C,
                                float eps, cudaStream_t stream) {
    check_ln("residual_layernorm_forward", N, C);
    if (N == 0) return;
    const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    residual_layernorm_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(
        residual, out, mean, rstd, a, b, weight, bias, N, C, eps);
    check_launch("residual_layernorm_forward");
}

template <typename T>
void layernorm_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp,
                        const T* weight, const float* mean, const float* rstd, int N, int C,
                        float* scratch, bool accumulate_dinp, cudaStream_t stream) {
    check_ln("layernorm_backward", N, C);
    if (N == 0) return;
    detail::require(scratch || (!dweight && !dbias), "layernorm_backward",
                    "scratch is null but dweight/dbias are requested");
    if (dinp) {
        const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
        layernorm_dinp_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(
            dinp, dout, inp, weight, mean, rstd, N, C, accumulate_dinp);
        check_launch("layernorm_backward(dinp)");
    }
    column_sums(dweight, dbias, dout, inp, mean, rstd, N, C, scratch, stream);
}

template <typename T>
void bias_backward(float* dbias, const T* dout, int N, int OC, float* scratch,
                   cudaStream_t stream) {
    check_ln("bias_backward", N, OC);
    if (N == 0 || !dbias) return;
    detail::require(scratch != nullptr, "bias_backward", "scratch is null");
    column_sums<T>(nullptr, dbias, dout, nullptr, nullptr, nullptr, N, OC, scratch, stream);
}

#define NT_INSTANTIATE(T)                                                                      \
    template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*, int,   \
                                       int, float, cudaStream_t);                              \
    template void residual_layernorm_forward<T>(T*, T*, float*, float*, const T*, const T*,    \
                                                const T*, const T*, int, int, float,           \
                                                cudaStream_t);                                 \
    template void layernorm_backward<T>(T*, float*, float*, const T*, const T*, const T*,      \
                                        const float*, const float*, int, int, float*, bool,    \
                                        cudaStream_t);                                         \
    template void bias_backward<T>(float*, const T*, int, int, float*, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
