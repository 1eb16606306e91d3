// A CPU emulation of the small part of CUDA that native/cuda uses, so the
// real kernel sources run (slowly) on a machine without a GPU. Force-included
// (g++ -include) into the .cu files after test/gpu/emulate.sh has rewritten
// `kernel<<<grid, block, smem, stream>>>(args)` into
// `::emu::launch(::emu::Cfg(grid, block, smem, stream), kernel, args)`.
//
// Model: blocks run one after another; the threads of a block are fibers
// (ucontext) scheduled round-robin, switching only at __syncthreads* and warp
// shuffles, which are real barriers (all threads of the block / all 32 lanes
// of the warp must arrive). __shared__ becomes `static`, which is exactly one
// copy per kernel instantiation shared by the threads of the running block.
// It checks the indexing, barriers and arithmetic of the kernels; it cannot
// find data races (fibers interleave only at barriers) or GPU-only faults.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>

namespace emu {

struct Cfg {
    dim3 grid, block;
    Cfg(dim3 g, dim3 b, size_t = 0, cudaStream_t = nullptr) : grid(g), block(b) {}
};

// Thread coordinates of the running fiber.
struct Coords {
    uint3 threadIdx;
};
extern Coords* current;
extern uint3 g_blockIdx;
extern dim3 g_blockDim, g_gridDim;

void run_grid(const Cfg& cfg, const std::function<void()>& body);
int syncthreads_or(int pred);
void warp_exchange(uint64_t value, int src_lane, uint64_t* out);
void record_launch_error(cudaError_t e);

template <typename... P, typename... A>
void launch(const Cfg& cfg, void (*kernel)(P...), A&&... args) {
    if (cfg.block.x * cfg.block.y * cfg.block.z > 1024 || cfg.block.x == 0 || cfg.grid.x == 0 ||
        cfg.grid.y > 65535 || cfg.grid.z > 65535) {
        record_launch_error(cudaErrorInvalidConfiguration);
        return;
    }
    std::tuple<P...> params(std::forward<A>(args)...);
    run_grid(cfg, [&]() { std::apply(kernel, params); });
}

template <typename V>
V shfl(V v, int src_lane) {
    static_assert(sizeof(V) <= 8, "shuffle of at most 8 bytes");
    uint64_t in = 0, out = 0;
    std::memcpy(&in, &v, sizeof(V));
    warp_exchange(in, src_lane & 31, &out);
    V r;
    std::memcpy(&r, &out, sizeof(V));
    return r;
}

}  // namespace emu

#ifndef EMU_RUNTIME  // kernel sources only; cuda_emu.cpp defines EMU_RUNTIME
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

#define threadIdx (::emu::current->threadIdx)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)

inline void __syncthreads() { ::emu::syncthreads_or(0); }
inline int __syncthreads_or(int pred) { return ::emu::syncthreads_or(pred); }
template <typename V>
inline V __shfl_sync(unsigned, V v, int src) {
    return ::emu::shfl(v, src);
}
template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int mask) {
    return ::emu::shfl(v, (int)((threadIdx.x & 31) ^ (unsigned)mask));
}
// CUDA's math API puts these in the global namespace for device code.
using std::isfinite;
using std::isnan;
// Fibers never run concurrently: a plain add is atomic here.
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
#endif  // EMU_RUNTIME
