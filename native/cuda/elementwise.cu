// Elementwise kernels: GELU (exact erf), tanh, dropout (Philox), add, convert.
// One thread per element (dropout: per Philox block of four elements), grid
// over n; every formula is the CPU's, evaluated in fp32.
#include "common/philox.h"
#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;

namespace {
constexpr int kThreads = 256;
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = to_f(inp[i]);
    out[i] = from_f<T>(x * 0.5f * (1.0f + erff(x * kInvSqrt2)));
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = to_f(inp[i]);
    const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
    dinp[i] = from_f<T>(to_f(dout[i]) * (cdf + x * pdf));
}

template <typename T>
__global__ void tanh_forward_kernel(T* out, const T* inp, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<T>(tanhf(to_f(inp[i])));
}

template <typename T>
__global__ void tanh_backward_kernel(T* dinp, const T* out, const T* dout, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float o = to_f(out[i]);
    dinp[i] = from_f<T>(to_f(dout[i]) * (1.0f - o * o));
}

template <typename T>
__global__ void add_kernel(T* y, const T* x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = from_f<T>(to_f(y[i]) + to_f(x[i]));
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = from_f<D>(to_f(src[i]));
}

template <typename T>
__global__ void scale_kernel(T* x, size_t n, float s) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = from_f<T>(to_f(x[i]) * s);
}

// Thread q handles elements 4q..4q+3, drawn at offset + 4q..: the four words
// of one Philox block when offset is a multiple of 4 (the usual case), else of
// the two blocks they straddle. scale = 1/(1-p) rounded in fp32 exactly as the
// CPU's T=float path.
template <typename T>
__global__ void dropout_kernel(T* out, const T* in, size_t n, float p, float scale,
                               uint64_t seed, uint64_t step, uint32_t tensor_id, uint64_t offset) {
    const size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t i0 = q * 4;
    if (i0 >= n) return;
    const uint64_t g0 = offset + i0;
    const philox::Words w = philox::dropout_block(seed, step, tensor_id, g0 >> 2);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const size_t i = i0 + j;
        if (i < n) {
            const float u = (offset & 3) == 0 ? philox::to_uniform(w.x[j])
                                              : philox::dropout_uniform(seed, step, tensor_id, g0 + j);
            out[i] = u >= p ? from_f<T>(to_f(in[i]) * scale) : from_f<T>(0.0f);
        }
    }
}

__global__ void uniform_kernel(float* u, size_t n, uint64_t index0, uint64_t seed,
                               uint64_t step, uint32_t tensor_id) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) u[i] = philox::dropout_uniform(seed, step, tensor_id, index0 + i);
}

template <typename T>
void dropout_apply(T* out, const T* in, size_t n, float p, const DropoutKey& key,
                   cudaStream_t stream) {
    if (n == 0) return;
    if (p <= 0.f) {
        if (out != in) NT_CUDA_CHECK(cudaMemcpyAsync(out, in, n * sizeof(T), cudaMemcpyDeviceToDevice, stream));
        return;
    }
    if (p >= 1.f) {  // torch: everything dropped (all-zero bits are +0 in float and bf16)
        NT_CUDA_CHECK(cudaMemsetAsync(out, 0, n * sizeof(T), stream));
        return;
    }
    const float scale = 1.0f / (1.0f - p);
    const size_t blocks = (n + 3) / 4;
    dropout_kernel<T><<<detail::grid_for(blocks, kThreads), kThreads, 0, stream>>>(
        out, in, n, p, scale, key.seed, key.step, key.tensor_id, key.offset);
    check_launch("dropout_kernel");
}
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_forward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, inp, n);
    check_launch("gelu_forward");
}
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    gelu_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dinp, inp, dout, n);
    check_launch("gelu_backward");
}
template <typename T>
void tanh_forward(T* out, const T* inp, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    tanh_forward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, inp, n);
    check_launch("tanh_forward");
}
template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    tanh_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dinp, out, dout, n);
    check_launch("tanh_backward");
}
template <typename T>
void add_inplace(T* y, const T* x, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    add_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(y, x, n);
    check_launch("add_inplace");
}
template <typename T>
void scale_inplace(T* x, size_t n, float s, cudaStream_t stream) {
    if (n == 0) return;
    scale_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, s);
    check_launch("scale_inplace");
}
void convert(bf16* dst, const float* src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    convert_kernel<bf16, float><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n);
    check_launch("convert(float->bf16)");
}
void convert(float* dst, const bf16* src, size_t n, cudaStream_t stream) {
    if (n == 0) return;
    convert_kernel<float, bf16><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dst, src, n);
    check_launch("convert(bf16->float)");
}

template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, float p, const DropoutKey& key,
                     cudaStream_t stream) {
    dropout_apply(out, inp, n, p, key, stream);
}
// The mask is linear: dinp = dout * mask * scale, the same map as forward.
template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, float p, const DropoutKey& key,
                      cudaStream_t stream) {
    dropout_apply(dinp, dout, n, p, key, stream);
}

void dropout_uniform_fill(float* u, size_t n, uint64_t index0, const DropoutKey& key,
                          cudaStream_t stream) {
    if (n == 0) return;
    uniform_kernel<<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(u, n, key.offset + index0, key.seed,
                                                                          key.step, key.tensor_id);
    check_launch("dropout_uniform_fill");
}

#define NT_INSTANTIATE(T)                                                                 \
    template void gelu_forward<T>(T*, const T*, size_t, cudaStream_t);                    \
    template void gelu_backward<T>(T*, const T*, const T*, size_t, cudaStream_t);         \
    template void tanh_forward<T>(T*, const T*, size_t, cudaStream_t);                    \
    template void tanh_backward<T>(T*, const T*, const T*, size_t, cudaStream_t);         \
    template void add_inplace<T>(T*, const T*, size_t, cudaStream_t);                     \
    template void scale_inplace<T>(T*, size_t, float, cudaStream_t);                      \
    template void dropout_forward<T>(T*, const T*, size_t, float, const DropoutKey&,      \
                                     cudaStream_t);                                       \
    template void dropout_backward<T>(T*, const T*, size_t, float, const DropoutKey&,     \
                                      cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
