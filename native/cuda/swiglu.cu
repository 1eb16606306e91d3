// SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"), HF LlamaMLP's
// act_fn(gate_proj(x)) * up_proj(x) with act_fn = SiLU, gate and up from one
// GEMM as [gate | up] per row. The backward recomputes the sigmoid from the
// saved pre-activations instead of storing silu(gate) (one more expf per
// element is cheaper than an (N, I) activation buffer):
//   silu(g) = g s,  s = sigmoid(g),  silu'(g) = s (1 + g (1 - s)).
// One thread per (row, i): consecutive threads read consecutive gate and up
// elements, so both halves' loads coalesce.
#include <string>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;

namespace {
constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// out (N,I); gu (N,2I) = [gate | up].
template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* gu, int N, int I) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * I) return;
    const size_t n = i / I, c = i % I;
    const float g = to_f(gu[n * 2 * I + c]), u = to_f(gu[n * 2 * I + I + c]);
    out[i] = from_f<T>(g * sigmoid(g) * u);
}

// dgu (N,2I) written; dout (N,I); gu (N,2I).
template <typename T>
__global__ void swiglu_backward_kernel(T* dgu, const T* dout, const T* gu, int N, int I) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * I) return;
    const size_t n = i / I, c = i % I;
    const size_t gi = n * 2 * I + c, ui = gi + I;
    const float g = to_f(gu[gi]), u = to_f(gu[ui]), d = to_f(dout[i]);
    const float s = sigmoid(g);
    dgu[ui] = from_f<T>(d * g * s);
    dgu[gi] = from_f<T>(d * u * s * (1.0f + g * (1.0f - s)));
}

void check_swiglu(const char* k, int N, int I) {
    detail::require(N >= 0 && I >= 0, k, "N=" + std::to_string(N) + ", I=" + std::to_string(I));
}
}  // namespace

template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int I, cudaStream_t stream) {
    check_swiglu("swiglu_forward", N, I);
    const size_t n = (size_t)N * I;
    if (n == 0) return;
    swiglu_forward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(out, gu, N, I);
    check_launch("swiglu_forward");
}

template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int I, cudaStream_t stream) {
    check_swiglu("swiglu_backward", N, I);
    const size_t n = (size_t)N * I;
    if (n == 0) return;
    swiglu_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dgu, dout,
                                                                                      gu, N, I);
    check_launch("swiglu_backward");
}

#define NT_INSTANTIATE(T)                                                      \
    template void swiglu_forward<T>(T*, const T*, int, int, cudaStream_t);     \
    template void swiglu_backward<T>(T*, const T*, const T*, int, int, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
