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
#include <string>
#include <type_traits>
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
void warp_sync();
void record_launch_error(cudaError_t e);
[[noreturn]] void fault(const char* what);

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
inline void __syncwarp(unsigned = 0xffffffffu) { ::emu::warp_sync(); }
// CUDA's math API puts these in the global namespace for device code.
using std::isfinite;
using std::isnan;
// Fibers never run concurrently: a plain add is atomic here.
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}

// nvcuda::wmma (<mma.h> declares nothing without nvcc), the m16n16k16 bf16
// shape with fp32 accumulators that native/cuda uses. A fragment's element
// layout is unspecified in CUDA, so here each lane holds the whole matrix and
// kernels cannot depend on one (no `x[]`). A store writes only the lane's
// 1/32 share of the elements, so a lane that reads another lane's stored
// elements without __syncwarp()/__syncthreads() in between reads stale
// memory, as it may on a GPU. Pointers must be 32-byte aligned and ldm a
// multiple of 16 bytes, as the CUDA Programming Guide requires, and every
// call is warp-collective: all 32 lanes arrive with the same pointer and ldm
// (a lane missing is reported as a deadlock). The emulator stops with a
// message otherwise. A load checks after reading and a store before writing,
// so neither stands in for the __syncwarp a kernel owes.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename E, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulated wmma: m16n16k16 only");
    E v[256];  // (row, col) at v[row * 16 + col] for every use
};

namespace detail {
inline void check_ptr(const void* p, unsigned ldm, size_t elem, const char* call) {
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
        ::emu::fault((std::string(call) + ": pointer not 32-byte aligned").c_str());
    if ((ldm * elem) % 16 != 0) ::emu::fault((std::string(call) + ": ldm not a multiple of 16 bytes").c_str());
}
// Every lane of the warp calls with the same (pointer, ldm): a warp barrier.
inline void collective(const void* p, unsigned ldm, const char* call) {
    const uint64_t mine = reinterpret_cast<uintptr_t>(p) ^ ((uint64_t)ldm << 48);
    if (::emu::shfl(mine, 0) != mine) ::emu::fault((std::string(call) + ": lanes pass different arguments").c_str());
}
inline float f(float x) { return x; }
inline float f(__nv_bfloat16 x) { return __bfloat162float(x); }
}  // namespace detail

template <typename Use, typename E, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, E, Layout>& a, const E* p, unsigned ldm) {
    static_assert(!std::is_same<Use, accumulator>::value, "accumulators load with a layout_t");
    detail::check_ptr(p, ldm, sizeof(E), "wmma::load_matrix_sync");
    constexpr bool col = std::is_same<Layout, col_major>::value;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) a.v[r * 16 + c] = col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    detail::collective(p, ldm, "wmma::load_matrix_sync");
}
template <typename E>
inline void fill_fragment(fragment<accumulator, 16, 16, 16, E>& a, E value) {
    for (auto& x : a.v) x = value;
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& a, unsigned ldm,
                              layout_t layout) {
    detail::check_ptr(p, ldm, sizeof(float), "wmma::store_matrix_sync");
    detail::collective(p, ldm, "wmma::store_matrix_sync");
    const int lane = (int)(threadIdx.x & 31);
    for (int i = lane; i < 256; i += 32) {
        const int r = i / 16, c = i % 16;
        p[layout == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = a.v[i];
    }
}
template <typename E, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, E, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, E, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
    detail::collective(nullptr, 0, "wmma::mma_sync");
    float out[256];
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 16; n++) {
            float acc = c.v[r * 16 + n];
            for (int k = 0; k < 16; k++) acc += detail::f(a.v[r * 16 + k]) * detail::f(b.v[k * 16 + n]);
            out[r * 16 + n] = acc;
        }
    std::memcpy(d.v, out, sizeof out);
}
}  // namespace wmma
}  // namespace nvcuda
#endif  // EMU_RUNTIME
