// Rotary position embedding (Su et al. 2021, RoFormer) in Hugging Face's
// rotate_half layout (modeling_llama.py apply_rotary_pos_emb): channel i of a
// head pairs with channel i + HS/2. In place on the first n_heads heads of
// each row, so the q heads and the k heads of a packed qkv row are rotated by
// two calls (x = qkv and x = qkv + NH*HS, stride the packed row width). The
// rotation is orthogonal: the backward is the same map with the angle negated.
//
// One thread per (row, head, pair i < HS/2): it owns both elements of its
// pair, so the in-place update needs no sync; consecutive threads take
// consecutive i, so the loads of x and of the fp32 tables coalesce.
#include <string>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;

namespace {
constexpr int kThreads = 256;

// x (N rows of stride `stride`, n_heads heads of HS at the row start);
// cos_t/sin_t (P, HS/2) fp32; pos (N). sign = +1 forward, -1 backward.
template <typename T>
__global__ void rope_kernel(T* x, const float* cos_t, const float* sin_t, const int32_t* pos,
                            int N, int stride, int n_heads, int HS, float sign) {
    const int half = HS / 2;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t per_row = (size_t)n_heads * half;
    if (i >= (size_t)N * per_row) return;
    const int n = (int)(i / per_row);
    const int rem = (int)(i % per_row);
    const int h = rem / half, j = rem % half;
    const size_t t = (size_t)pos[n] * half + j;
    const float c = cos_t[t], s = sign * sin_t[t];
    T* x1 = x + (size_t)n * stride + (size_t)h * HS + j;
    T* x2 = x1 + half;
    const float a = to_f(*x1), b = to_f(*x2);
    *x1 = from_f<T>(a * c - b * s);
    *x2 = from_f<T>(b * c + a * s);
}

template <typename T>
void rope_apply(const char* kernel, T* x, const float* cos_t, const float* sin_t,
                const int32_t* pos, int N, int stride, int n_heads, int HS, float sign,
                cudaStream_t stream) {
    detail::require(N >= 0 && n_heads >= 0, kernel,
                    "N=" + std::to_string(N) + ", n_heads=" + std::to_string(n_heads));
    detail::require(HS > 0 && HS % 2 == 0, kernel, "HS=" + std::to_string(HS) + " must be even and positive");
    detail::require(stride >= n_heads * HS, kernel,
                    "stride=" + std::to_string(stride) + " < n_heads*HS=" + std::to_string(n_heads * HS));
    const size_t n = (size_t)N * n_heads * (HS / 2);
    if (n == 0) return;
    rope_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
        x, cos_t, sin_t, pos, N, stride, n_heads, HS, sign);
    check_launch(kernel);
}
}  // namespace

template <typename T>
void rope_forward(T* x, const float* cos_t, const float* sin_t, const int32_t* pos, int N,
                  int stride, int n_heads, int HS, cudaStream_t stream) {
    rope_apply("rope_forward", x, cos_t, sin_t, pos, N, stride, n_heads, HS, 1.0f, stream);
}

template <typename T>
void rope_backward(T* dx, const float* cos_t, const float* sin_t, const int32_t* pos, int N,
                   int stride, int n_heads, int HS, cudaStream_t stream) {
    rope_apply("rope_backward", dx, cos_t, sin_t, pos, N, stride, n_heads, HS, -1.0f, stream);
}

#define NT_INSTANTIATE(T)                                                                      \
    template void rope_forward<T>(T*, const float*, const float*, const int32_t*, int, int, int, \
                                  int, cudaStream_t);                                          \
    template void rope_backward<T>(T*, const float*, const float*, const int32_t*, int, int,   \
                                   int, int, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
