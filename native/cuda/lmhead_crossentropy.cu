// The causal LM's last step, lm_head + softmax cross-entropy, fused and chunked
// (the CUDA twin of cpu/lmhead_crossentropy.cpp): the (rows x vocab) logits
// would be the largest tensor of a training step (49,152 or 152k columns), so
// they exist one chunk of target rows at a time, and rows without a target
// (prompt tokens, padding) never reach the head at all.
//
// Per chunk of nr <= chunk target rows (scratch layout in Scratch below):
//   H  (nr, C) T      = h[rows]                    gather kernel
//   Z  (nr, V) fp32   = H W^T                      Blas::gemm<T, float>
//   loss_r = logsumexp(Z_r) - Z_r[y_r]             one block per row (double)
//   dZ (nr, V) T      = grad_scale (softmax(Z) - onehot(y))   same kernel; for
//                       T = float in place in Z, for bf16 a bf16 copy, since
//                       Blas::gemm needs A and B of one type
//   dW (V, C) fp32   += dZ^T H                     Blas::gemm<T, float>, beta 1
//   H  (nr, C) T      = dZ W   (H is spent once dW has read it)
//   dh[rows]          = H                          scatter kernel
// *loss_sum is zeroed first and each chunk adds its row losses summed by one
// block in a fixed order; every product is a GEMM of fixed shape: the result
// depends on the inputs and the chunking only (no atomics).
#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/gemm.h"

namespace nt {
namespace cuda {

using detail::block_sum;
using detail::from_f;
using detail::to_f;

namespace {
constexpr int kThreads = 256;
constexpr size_t kAlign = 256;  // every scratch region starts 256-byte aligned (cuBLASLt's best)

size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of the regions of one chunk's scratch. H is sized for fp32 and
// the bf16 dZ copy is always reserved, so one size serves both instantiations.
struct Scratch {
    size_t h, z, dz, loss, total;
    Scratch(int chunk, int C, int V) {
        h = 0;
        z = h + align_up((size_t)chunk * C * sizeof(float));
        dz = z + align_up((size_t)chunk * V * sizeof(float));
        loss = dz + align_up((size_t)chunk * V * sizeof(bf16));
        total = loss + align_up((size_t)chunk * sizeof(double));
    }
};

__device__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = blockDim.x >> 5;
    v = detail::warp_max(v);
    __syncthreads();  // `shared` may still be read from a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    return detail::warp_max(lane < nwarps ? shared[lane] : -INFINITY);
}

// H(nr, C) = h[rows[r]] (rows: this chunk's nr row indices).
template <typename T>
__global__ void gather_rows_kernel(T* H, const T* h, const int32_t* rows, int nr, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)nr * C) return;
    const size_t r = i / C, c = i % C;
    H[i] = h[(size_t)rows[r] * C + c];
}

// dh[rows[r]] = H(nr, C).
template <typename T>
__global__ void scatter_rows_kernel(T* dh, const T* H, const int32_t* rows, int nr, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)nr * C) return;
    const size_t r = i / C, c = i % C;
    dh[(size_t)rows[r] * C + c] = H[i];
}

// One block per row r of Z (nr, V) fp32: row_loss[r] = lse - Z[r, y_r] and,
// when dZ is set, dZ[r, v] = grad_scale * (exp(Z[r, v] - lse) - [v == y_r]).
// dZ may alias Z (T = float): every thread reads Z[r, y_r] before the first
// barrier, and rewrites only the elements it read itself.
template <typename T>
__global__ void softmax_xent_rows_kernel(T* dZ, double* row_loss, const float* Z,
                                         const int32_t* targets, int V, float grad_scale) {
    __shared__ float shared[32];
    const int r = blockIdx.x;
    const float* z = Z + (size_t)r * V;
    const int y = targets[r];
    const float zy = z[y];
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, z[v]);
    mx = block_max(mx, shared);
    float s = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(z[v] - mx);
    s = block_sum(s, shared);
    const float lse = mx + logf(s);
    if (threadIdx.x == 0) row_loss[r] = (double)lse - (double)zy;
    if (!dZ) return;
    T* d = dZ + (size_t)r * V;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float p = expf(z[v] - lse);
        d[v] = from_f<T>(grad_scale * (v == y ? p - 1.0f : p));
    }
}

// *loss_sum += sum_r row_loss[r]: one block, strided per-thread sums then the
// block's fixed butterfly (the order depends on nr only).
__global__ void add_loss_kernel(double* loss_sum, const double* row_loss, int nr) {
    __shared__ double shared[32];
    double s = 0;
    for (int r = threadIdx.x; r < nr; r += blockDim.x) s += row_loss[r];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) *loss_sum += s;
}
}  // namespace

size_t lmhead_scratch_bytes(int chunk, int C, int V) {
    detail::require(chunk > 0 && C > 0 && V > 0, "lmhead_scratch_bytes",
                    "chunk=" + std::to_string(chunk) + ", C=" + std::to_string(C) +
                        ", V=" + std::to_string(V) + " must be positive");
    return Scratch(chunk, C, V).total;
}

template <typename T>
void lmhead_crossentropy(Blas& blas, cudaStream_t stream, double* loss_sum, T* dh, float* dW,
                         const T* h, const T* W, const int32_t* rows, const int32_t* targets,
                         int n, int N, int C, int V, float grad_scale, void* scratch, int chunk) {
    const char* k = "lmhead_crossentropy";
    detail::require(C > 0 && V > 0 && chunk > 0, k,
                    "C=" + std::to_string(C) + ", V=" + std::to_string(V) +
                        ", chunk=" + std::to_string(chunk) + " must be positive");
    detail::require(n >= 0 && n <= N, k,
                    "n=" + std::to_string(n) + " target rows, expected 0.." + std::to_string(N));
    detail::require(scratch || n == 0, k, "scratch is null");
    NT_CUDA_CHECK(cudaMemsetAsync(loss_sum, 0, sizeof(double), stream));
    if (dh && N > 0) NT_CUDA_CHECK(cudaMemsetAsync(dh, 0, (size_t)N * C * sizeof(T), stream));
    if (n == 0) return;
    const Scratch L(chunk, C, V);
    char* base = static_cast<char*>(scratch);
    T* H = reinterpret_cast<T*>(base + L.h);
    float* Z = reinterpret_cast<float*>(base + L.z);
    // dZ in T: in place over Z for fp32, the bf16 region otherwise.
    T* dZ = std::is_same<T, float>::value ? reinterpret_cast<T*>(Z) : reinterpret_cast<T*>(base + L.dz);
    double* row_loss = reinterpret_cast<double*>(base + L.loss);
    for (int r0 = 0; r0 < n; r0 += chunk) {
        const int nr = n - r0 < chunk ? n - r0 : chunk;
        const size_t hc = (size_t)nr * C;
        gather_rows_kernel<T><<<detail::grid_for(hc, kThreads), kThreads, 0, stream>>>(H, h, rows + r0, nr, C);
        check_launch("lmhead_crossentropy(gather)");
        blas.gemm<T, float>(stream, false, true, nr, V, C, 1.0f, H, C, W, C, 0.0f, Z, V);
        softmax_xent_rows_kernel<T><<<nr, kThreads, 0, stream>>>(dh ? dZ : nullptr, row_loss, Z,
                                                               targets + r0, V, grad_scale);
        check_launch("lmhead_crossentropy(softmax)");
        add_loss_kernel<<<1, kThreads, 0, stream>>>(loss_sum, row_loss, nr);
        check_launch("lmhead_crossentropy(loss)");
        if (!dh) continue;
        if (dW) blas.gemm<T, float>(stream, true, false, V, C, nr, 1.0f, dZ, V, H, C, 1.0f, dW, C);
        blas.gemm<T, T>(stream, false, false, nr, C, V, 1.0f, dZ, V, W, C, 0.0f, H, C);
        scatter_rows_kernel<T><<<detail::grid_for(hc, kThreads), kThreads, 0, stream>>>(dh, H, rows + r0, nr, C);
        check_launch("lmhead_crossentropy(scatter)");
    }
}

#define NT_INSTANTIATE(T)                                                                       \
    template void lmhead_crossentropy<T>(Blas&, cudaStream_t, double*, T*, float*, const T*,    \
                                         const T*, const int32_t*, const int32_t*, int, int, int, \
                                         int, float, void*, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
