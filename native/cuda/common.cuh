// Device-side helpers shared by the .cu files: bf16/float loads and stores,
// warp and block reductions, launch checking. Internal to native/cuda.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/kernels.h"

namespace nt {
namespace cuda {
namespace detail {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
    return __float2bfloat16_rn(x);
}

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `shared` holds 32 values. Fixed order: lanes by
// butterfly, then warps by butterfly in warp 0.
template <typename V>
__device__ V block_sum(V v, V* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read from a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    V r = lane < nwarps ? shared[lane] : V(0);
    r = warp_sum(r);
    return r;
}

inline unsigned grid_for(size_t n, int per_block) {
    const size_t g = (n + per_block - 1) / per_block;
    return (unsigned)(g == 0 ? 1 : g);
}

inline void require(bool ok, const char* kernel, const std::string& what) {
    if (!ok) throw std::invalid_argument(std::string("nt::cuda::") + kernel + ": " + what);
}

}  // namespace detail
}  // namespace cuda
}  // namespace nt
