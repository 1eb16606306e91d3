// RMSNorm over the last axis (Zhang & Sennrich 2019) as HF LlamaRMSNorm
// computes it: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps), no mean
// subtraction and no bias; its fused residual-add form (the decoder's pre-norm
// residual stream); and a deterministic dweight.
//
// Forward: one warp per row (a row of C <= a few thousand channels is a few
// loads per lane; the warp's butterfly sum needs no shared memory).
// Backward (the CPU's closed form, g = w * dy, r = rstd):
//   dx = r g - r^3 x (sum_c g_c x_c) / C,   dw += sum_n dy x r.
// dweight as layernorm.cu's: each block of kRowsPerPart rows writes one
// partial row, then one thread per channel adds the partials in block order,
// so the result depends on N and C only (no atomics).
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

// Normalises the row `x` (already in its final T rounding) into `o`; one warp.
template <typename T>
__device__ void rms_normalize_row(T* o, float* rstd, const T* x, const T* weight, int C,
                                  float eps, int row) {
    const int lane = threadIdx.x & 31;
    float ss = 0.f;
    for (int c = lane; c < C; c += 32) {
        const float v = to_f(x[c]);
        ss += v * v;
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / C + eps);
    for (int c = lane; c < C; c += 32) o[c] = from_f<T>(to_f(x[c]) * r * to_f(weight[c]));
    if (lane == 0) rstd[row] = r;
}

// out, inp (N,C); rstd (N) fp32; weight (C).
template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const T* weight, int N,
                                       int C, float eps) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const size_t off = (size_t)row * C;
    rms_normalize_row(out + off, rstd, inp + off, weight, C, eps, row);
}

// residual = a + b (N,C), then RMSNorm of it. residual may alias a or b: each
// lane reads a[i], b[i] before writing residual[i], and re-reads only the
// elements it wrote itself, so no sync is needed.
template <typename T>
__global__ void residual_rmsnorm_kernel(T* residual, T* out, float* rstd, const T* a, const T* b,
                                        const T* weight, int N, int C, float eps) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const size_t off = (size_t)row * C;
    for (int c = lane; c < C; c += 32)
        residual[off + c] = from_f<T>(to_f(a[off + c]) + to_f(b[off + c]));
    rms_normalize_row(out + off, rstd, residual + off, weight, C, eps, row);
}

// dinp, dout, inp (N,C); one warp per row.
template <typename T>
__global__ void rmsnorm_dinp_kernel(T* dinp, const T* dout, const T* inp, const T* weight,
                                    const float* rstd, int N, int C, bool accumulate) {
    const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
    if (row >= N) return;
    const int lane = threadIdx.x & 31;
    const size_t off = (size_t)row * C;
    const T* x = inp + off;
    const T* d = dout + off;
    T* dx = dinp + off;
    const float r = rstd[row];
    float dot = 0.f;
    for (int c = lane; c < C; c += 32) dot += to_f(weight[c]) * to_f(d[c]) * to_f(x[c]);
    const float k = r * r * r * warp_sum(dot) / C;
    for (int c = lane; c < C; c += 32) {
        float v = r * to_f(weight[c]) * to_f(d[c]) - k * to_f(x[c]);
        if (accumulate) v += to_f(dx[c]);
        dx[c] = from_f<T>(v);
    }
}

// part[p*C + c] = sum over rows [p*R, p*R+R) of dout * inp * rstd.
template <typename T>
__global__ void rms_dweight_partials_kernel(float* part, const T* dout, const T* inp,
                                            const float* rstd, int N, int C) {
    const int p = blockIdx.x;
    const int n0 = p * kRowsPerPart;
    const int n1 = N < n0 + kRowsPerPart ? N : n0 + kRowsPerPart;
    for (int c = blockIdx.y * blockDim.x + threadIdx.x; c < C; c += gridDim.y * blockDim.x) {
        float s = 0.f;
        for (int n = n0; n < n1; n++)
            s += to_f(dout[(size_t)n * C + c]) * to_f(inp[(size_t)n * C + c]) * rstd[n];
        part[(size_t)p * C + c] = s;
    }
}

// dw[c] += sum_p part[p*C + c], partials in block order.
__global__ void rms_dweight_reduce_kernel(float* dw, const float* part, int P, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.f;
    for (int p = 0; p < P; p++) s += part[(size_t)p * C + c];
    dw[c] += s;
}

void check_rms(const char* k, int N, int C) {
    detail::require(N >= 0 && C > 0, k, "N=" + std::to_string(N) + ", C=" + std::to_string(C));
}
}  // namespace

size_t rmsnorm_backward_scratch_floats(int N, int C) { return (size_t)num_parts(N) * C; }

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* inp, const T* weight, int N, int C, float eps,
                     cudaStream_t stream) {
    check_rms("rmsnorm_forward", N, C);
    if (N == 0) return;
    const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    rmsnorm_forward_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(out, rstd, inp, weight, N,
                                                                       C, eps);
    check_launch("rmsnorm_forward");
}

template <typename T>
void residual_rmsnorm_forward(T* residual, T* out, float* rstd, const T* a, const T* b,
                              const T* weight, int N, int C, float eps, cudaStream_t stream) {
    check_rms("residual_rmsnorm_forward", N, C);
    if (N == 0) return;
    const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
    residual_rmsnorm_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(residual, out, rstd, a, b,
                                                                        weight, N, C, eps);
    check_launch("residual_rmsnorm_forward");
}

template <typename T>
void rmsnorm_backward(T* dinp, float* dweight, const T* dout, const T* inp, const T* weight,
                      const float* rstd, int N, int C, float* scratch, bool accumulate_dinp,
                      cudaStream_t stream) {
    check_rms("rmsnorm_backward", N, C);
    if (N == 0) return;
    detail::require(scratch || !dweight, "rmsnorm_backward",
                    "scratch is null but dweight is requested");
    if (dinp) {
        const unsigned grid = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
        rmsnorm_dinp_kernel<T><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(
            dinp, dout, inp, weight, rstd, N, C, accumulate_dinp);
        check_launch("rmsnorm_backward(dinp)");
    }
    if (dweight) {
        const int P = num_parts(N);
        const int ycols = (C + kColThreads - 1) / kColThreads;
        const dim3 grid(P, ycols > 4 ? 4 : ycols);
        rms_dweight_partials_kernel<T><<<grid, kColThreads, 0, stream>>>(scratch, dout, inp, rstd,
                                                                         N, C);
        check_launch("rmsnorm_backward(dweight partials)");
        rms_dweight_reduce_kernel<<<detail::grid_for((size_t)C, kColThreads), kColThreads, 0,
                                    stream>>>(dweight, scratch, P, C);
        check_launch("rmsnorm_backward(dweight reduce)");
    }
}

#define NT_INSTANTIATE(T)                                                                      \
    template void rmsnorm_forward<T>(T*, float*, const T*, const T*, int, int, float,          \
                                     cudaStream_t);                                            \
    template void residual_rmsnorm_forward<T>(T*, T*, float*, const T*, const T*, const T*, int, \
                                              int, float, cudaStream_t);                       \
    template void rmsnorm_backward<T>(T*, float*, const T*, const T*, const T*, const float*,  \
                                      int, int, float*, bool, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
