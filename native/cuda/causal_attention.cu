// Causal self-attention for the decoder (HF LlamaAttention / Qwen2Attention,
// eager semantics) with grouped-query heads, padding and packed segments,
// flash-style (Dao et al., FlashAttention, 2022/2023): the T x T scores never
// leave registers, softmax is online (Milakov & Gimelshein 2018) and the
// backward recomputes P from the saved per-row logsumexp. The CPU twins (the
// exact semantics) are in native/cpu/causal_attention.cpp.
//
// Shapes: qkv (B, T, (NH + 2 NKV) HS) per token [q heads | k heads | v heads];
// query head h reads kv head g = h / (NH/NKV). out (B, T, NH HS); lse, delta
// (B, NH, T) fp32; mask (B, T): 0 = padding, k >= 1 = segment k.
// Key t2 is visible to query t1 when t2 <= t1, mask[t1] != 0 and
// mask[t2] == mask[t1]. A padding query sees no key: out = 0, lse = 0, and it
// adds nothing to any gradient (every other query sees at least itself).
//
// Forward, per (b, h) and query row t1, over key tiles of 32 (lane j <-> key)
// up to the tile holding the block's last query row (causality):
//   s_j = q.k_j / sqrt(HS)  (-inf when not visible)
//   m' = max(m, max_j s_j);  l = l e^(m-m') + sum_j e^(s_j-m')
//   o  = o e^(m-m') + sum_j e^(s_j-m') v_j
//   out = o / l,  lse = m + log l   (padding query: out = lse = 0; a query
//   with keys but only NaN scores, which every max skips: out = lse = NaN)
// Backward (P = e^(s - lse) on visible pairs, 0 elsewhere;
// delta_t1 = dout_t1 . out_t1 by a pre-pass):
//   dS = P (dout . v - delta)
//   dq = sum_t2 dS k / sqrt(HS)            (kernel over query tiles of head h)
//   dk = sum_h sum_t1 dS q / sqrt(HS),  dv = sum_h sum_t1 P dout
//                       (kernel over key tiles of kv head g; h over its group
//                        in order, then query tiles from the key tile's own)
// Each output element has exactly one writer: no atomics, fixed sum order.
//
// fp32 (the scalar kernels; layout as cuda/attention.cu): a warp owns R
// rows (queries or keys), lane l owns head dims l, l+32, .. (NDL =
// ceil(HS/32) of them). Tiles of 32 rows sit in shared memory as fp32 with an
// odd row stride (HSMAX+1) so lane j reading row j at a common dim d hits 32
// different banks.
//
// bf16 (the tensor-core kernels, *_tc): the products QK^T, dO V^T, P V,
// dS K, P^T dO and dS^T Q run as bf16 wmma m16n16k16 with fp32 accumulators
// (CUDA C++ Programming Guide, "Warp Matrix Functions"); a warp owns 16 rows,
// a block 64, and streams tiles of 32 keys (or queries) staged as bf16 in
// shared memory, head dims zero-padded to HSP = 32 NDL. A fragment's element
// layout is unspecified, so the softmax reads the scores back from a per-warp
// fp32 tile in shared memory (two lanes per row, 16 columns each) and writes
// P or dS there as bf16 for the next product: rounding P and dS to bf16 is
// the one error the fp32 path does not have (as in FlashAttention-2). The
// forward takes two passes over the keys (row max and sum, then
// P = e^(s - lse) times V) so the output accumulators never need the online
// rescale, which would have to know the fragment layout; the scores are
// recomputed in the second pass, which tensor cores make cheap. A key a query
// cannot see still enters the products, with weight 0: inputs must be finite
// (as for the CPU twin's GEMMs; 0 x inf is NaN), where the fp32 kernels skip
// such keys.
//
// Faster later: mma.sync with the documented fragment layouts (one pass,
// P kept in registers); K/V tiles shared by the NH/NKV query heads of a kv
// head; cp.async double-buffering; skipping key tiles that hold no key of
// the block's segments (left padding, packed rows); and a split-K decode over
// the cache with the K tile staged in shared memory.
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;
using detail::warp_max;
using detail::warp_sum;

namespace {
constexpr unsigned kFull = 0xffffffffu;
constexpr int kWarps = 4;
constexpr int kTile = 32;  // rows of a shared tile: lane j <-> row j

template <int NDL>
struct Cfg {
    static constexpr int HSMAX = 32 * NDL;
    static constexpr int STRIDE = HSMAX + 1;
    static constexpr int R = NDL >= 3 ? 2 : 4;  // rows per warp; keeps static smem < 48 KB
    static constexpr int ROWS = R * kWarps;
};

// rows [t0, t0+nrows) of a (Tn, row_stride) matrix at `src` (already offset
// to the head's first channel) -> dst[r*dst_stride + d], fp32, zero outside
// t < Tn and d < HS so dot products may run over HSMAX.
template <typename T, int HSMAX>
__device__ void load_rows(float* dst, int dst_stride, int nrows, const T* src, size_t row_stride,
                          int t0, int Tn, int HS) {
    for (int idx = threadIdx.x; idx < nrows * HSMAX; idx += blockDim.x) {
        const int r = idx / HSMAX, d = idx % HSMAX, t = t0 + r;
        dst[r * dst_stride + d] = (t < Tn && d < HS) ? to_f(src[(size_t)t * row_stride + d]) : 0.f;
    }
}

template <int HSMAX>
__device__ __forceinline__ float dot(const float* a, const float* b) {
    float acc = 0.f;
#pragma unroll
    for (int d = 0; d < HSMAX; d++) acc += a[d] * b[d];
    return acc;
}

// Query t1 of segment seg1 (0: padding) sees key t2 of segment seg2.
__device__ __forceinline__ bool visible(int t1, int seg1, int t2, int seg2) {
    return t2 <= t1 && seg1 != 0 && seg2 == seg1;
}

// ---- forward ----------------------------------------------------------------
// grid (ceil(T / ROWS), B*NH); block 32*kWarps. out (B,T,NH HS), lse (B,NH,T).
template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_forward_kernel(T* out, float* lse, const T* qkv, const int32_t* mask,
                                    int Tn, int NH, int NKV, int HS, float scale) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Ks[kTile * STRIDE];
    __shared__ float Vs[kTile * STRIDE];
    __shared__ float Qs[K::ROWS * HSMAX];
    __shared__ int kseg_s[kTile];

    const int bh = blockIdx.y, b = bh / NH, h = bh % NH, g = h / (NH / NKV);
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * QKV;
    const T* kh = base + (size_t)(NH + g) * HS;
    const T* vh = base + (size_t)(NH + NKV + g) * HS;
    const int32_t* mrow = mask + (size_t)b * Tn;

    load_rows<T, HSMAX>(Qs, HSMAX, K::ROWS, base + (size_t)h * HS, QKV, q0, Tn, HS);
    float m[R], l[R], o[R][NDL];
    int seg[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        seg[r] = t1 < Tn ? mrow[t1] : 0;
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int k = 0; k < NDL; k++) o[r][k] = 0.f;
    }

    // causality: no key past the block's last query row
    const int kend = Tn < q0 + K::ROWS ? Tn : q0 + K::ROWS;
    for (int k0 = 0; k0 < kend; k0 += kTile) {
        __syncthreads();  // previous tile fully consumed
        load_rows<T, HSMAX>(Ks, STRIDE, kTile, kh, QKV, k0, Tn, HS);
        load_rows<T, HSMAX>(Vs, STRIDE, kTile, vh, QKV, k0, Tn, HS);
        if (threadIdx.x < kTile) {
            const int t = k0 + (int)threadIdx.x;
            kseg_s[threadIdx.x] = t < Tn ? mrow[t] : 0;
        }
        __syncthreads();
        const int t2 = k0 + lane, kseg = kseg_s[lane];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int t1 = q0 + warp * R + r;
            const bool live = visible(t1, seg[r], t2, kseg);
            const float s = live ? dot<HSMAX>(Qs + (warp * R + r) * HSMAX, Ks + lane * STRIDE) * scale
                                 : -INFINITY;
            const float m_new = fmaxf(m[r], warp_max(s));
            float pj = 0.f, alpha = 1.f;
            if (m_new != -INFINITY) {
                alpha = expf(m[r] - m_new);
                pj = live ? expf(s - m_new) : 0.f;
            } else if (live && isnan(s)) {
                pj = s;  // nothing above -inf yet: o and l stay 0, but a NaN score carries on
            }
            l[r] = l[r] * alpha + warp_sum(pj);
            m[r] = m_new;
#pragma unroll
            for (int k = 0; k < NDL; k++) o[r][k] *= alpha;
#pragma unroll 8
            for (int j = 0; j < kTile; j++) {
                const float w = __shfl_sync(kFull, pj, j);
                if (w == 0.f) continue;  // warp-uniform; an invisible key's v never enters
#pragma unroll
                for (int k = 0; k < NDL; k++) o[r][k] += w * Vs[j * STRIDE + lane + 32 * k];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        if (t1 >= Tn) continue;
        // Padding is told by the mask, not by l == 0: l is also 0 (or NaN) when
        // the max skipped NaN scores, and that NaN must come out as on the CPU.
        const bool pad = seg[r] == 0, l_ok = l[r] > 0.f;
        const float inv = l_ok ? 1.f / l[r] : NAN;
        T* orow = out + ((size_t)b * Tn + t1) * OC + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) orow[d] = from_f<T>(pad ? 0.f : o[r][k] * inv);
        }
        if (lane == 0) lse[(size_t)bh * Tn + t1] = pad ? 0.f : l_ok ? m[r] + logf(l[r]) : NAN;
    }
}

// ---- backward -----------------------------------------------------------------
// delta (B,NH,T) = rowsum(dout * out); one warp per (b, h, t).
template <typename T>
__global__ void causal_attention_delta_kernel(float* delta, const T* dout, const T* out, int B,
                                              int Tn, int NH, int HS) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (row >= (size_t)B * NH * Tn) return;
    const int lane = threadIdx.x & 31;
    const int t = (int)(row % Tn);
    const size_t bh = row / Tn;
    const int b = (int)(bh / NH), h = (int)(bh % NH);
    const size_t off = ((size_t)b * Tn + t) * NH * HS + (size_t)h * HS;
    float s = 0.f;
    for (int d = lane; d < HS; d += 32) s += to_f(dout[off + d]) * to_f(out[off + d]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

// dq of query head h: grid (ceil(T / ROWS), B*NH). Writes every q element of
// dqkv (padding rows and rows past nothing visible: 0).
template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_backward_dq_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                        const float* delta, const int32_t* mask, int Tn, int NH,
                                        int NKV, int HS, float scale) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Ks[kTile * STRIDE];
    __shared__ float Vs[kTile * STRIDE];
    __shared__ float Qs[K::ROWS * HSMAX];
    __shared__ float dOs[K::ROWS * HSMAX];
    __shared__ int kseg_s[kTile];

    const int bh = blockIdx.y, b = bh / NH, h = bh % NH, g = h / (NH / NKV);
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * QKV;
    const T* kh = base + (size_t)(NH + g) * HS;
    const T* vh = base + (size_t)(NH + NKV + g) * HS;
    const int32_t* mrow = mask + (size_t)b * Tn;

    load_rows<T, HSMAX>(Qs, HSMAX, K::ROWS, base + (size_t)h * HS, QKV, q0, Tn, HS);
    load_rows<T, HSMAX>(dOs, HSMAX, K::ROWS, dout + (size_t)b * Tn * OC + (size_t)h * HS, OC, q0,
                        Tn, HS);
    float dq[R][NDL], lse_r[R], delta_r[R];
    int seg[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        seg[r] = t1 < Tn ? mrow[t1] : 0;
        lse_r[r] = t1 < Tn ? lse[(size_t)bh * Tn + t1] : 0.f;
        delta_r[r] = t1 < Tn ? delta[(size_t)bh * Tn + t1] : 0.f;
#pragma unroll
        for (int k = 0; k < NDL; k++) dq[r][k] = 0.f;
    }

    const int kend = Tn < q0 + K::ROWS ? Tn : q0 + K::ROWS;
    for (int k0 = 0; k0 < kend; k0 += kTile) {
        __syncthreads();
        load_rows<T, HSMAX>(Ks, STRIDE, kTile, kh, QKV, k0, Tn, HS);
        load_rows<T, HSMAX>(Vs, STRIDE, kTile, vh, QKV, k0, Tn, HS);
        if (threadIdx.x < kTile) {
            const int t = k0 + (int)threadIdx.x;
            kseg_s[threadIdx.x] = t < Tn ? mrow[t] : 0;
        }
        __syncthreads();
        const int t2 = k0 + lane, kseg = kseg_s[lane];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int t1 = q0 + warp * R + r;
            float ds = 0.f;
            if (visible(t1, seg[r], t2, kseg)) {
                const float s = dot<HSMAX>(Qs + (warp * R + r) * HSMAX, Ks + lane * STRIDE) * scale;
                const float P = expf(s - lse_r[r]);
                const float dP = dot<HSMAX>(dOs + (warp * R + r) * HSMAX, Vs + lane * STRIDE);
                ds = P * (dP - delta_r[r]);
            }
#pragma unroll 8
            for (int j = 0; j < kTile; j++) {
                const float w = __shfl_sync(kFull, ds, j);
                if (w == 0.f) continue;  // warp-uniform
#pragma unroll
                for (int k = 0; k < NDL; k++) dq[r][k] += w * Ks[j * STRIDE + lane + 32 * k];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        if (t1 >= Tn) continue;
        T* row = dqkv + ((size_t)b * Tn + t1) * QKV + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) row[d] = from_f<T>(dq[r][k] * scale);
        }
    }
}

// dk, dv of kv head g: grid (ceil(T / ROWS), B*NKV). Loops over the query
// heads g*G .. g*G+G-1 in order, and for each over the query tiles from the
// one holding the block's first key (earlier queries see none of its keys).
template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_backward_dkdv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                          const float* delta, const int32_t* mask, int Tn, int NH,
                                          int NKV, int HS, float scale) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Qs[kTile * STRIDE];
    __shared__ float dOs[kTile * STRIDE];
    __shared__ float Kr[K::ROWS * HSMAX];
    __shared__ float Vr[K::ROWS * HSMAX];
    __shared__ float lse_s[kTile], delta_s[kTile];
    __shared__ int qseg_s[kTile];

    const int bg = blockIdx.y, b = bg / NKV, g = bg % NKV, G = NH / NKV;
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * QKV;
    const int32_t* mrow = mask + (size_t)b * Tn;

    load_rows<T, HSMAX>(Kr, HSMAX, K::ROWS, base + (size_t)(NH + g) * HS, QKV, k0, Tn, HS);
    load_rows<T, HSMAX>(Vr, HSMAX, K::ROWS, base + (size_t)(NH + NKV + g) * HS, QKV, k0, Tn, HS);
    float dk[R][NDL], dv[R][NDL];
    int kseg[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t2 = k0 + warp * R + r;
        kseg[r] = t2 < Tn ? mrow[t2] : 0;
#pragma unroll
        for (int k = 0; k < NDL; k++) dk[r][k] = dv[r][k] = 0.f;
    }

    const int qstart = k0 / kTile * kTile;
    for (int h = g * G; h < (g + 1) * G; h++) {
        const T* qh = base + (size_t)h * HS;
        const T* doh = dout + (size_t)b * Tn * OC + (size_t)h * HS;
        const float* lse_h = lse + ((size_t)b * NH + h) * Tn;
        const float* delta_h = delta + ((size_t)b * NH + h) * Tn;
        for (int q0 = qstart; q0 < Tn; q0 += kTile) {
            __syncthreads();
            load_rows<T, HSMAX>(Qs, STRIDE, kTile, qh, QKV, q0, Tn, HS);
            load_rows<T, HSMAX>(dOs, STRIDE, kTile, doh, OC, q0, Tn, HS);
            if (threadIdx.x < kTile) {
                const int t = q0 + (int)threadIdx.x;
                lse_s[threadIdx.x] = t < Tn ? lse_h[t] : 0.f;
                delta_s[threadIdx.x] = t < Tn ? delta_h[t] : 0.f;
                qseg_s[threadIdx.x] = t < Tn ? mrow[t] : 0;
            }
            __syncthreads();
            const int t1 = q0 + lane, qseg = qseg_s[lane];
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int t2 = k0 + warp * R + r;
                float p = 0.f, ds = 0.f;
                if (visible(t1, qseg, t2, kseg[r])) {
                    const float s = dot<HSMAX>(Qs + lane * STRIDE, Kr + (warp * R + r) * HSMAX) * scale;
                    p = expf(s - lse_s[lane]);
                    const float dP = dot<HSMAX>(dOs + lane * STRIDE, Vr + (warp * R + r) * HSMAX);
                    ds = p * (dP - delta_s[lane]);
                }
#pragma unroll 8
                for (int j = 0; j < kTile; j++) {
                    const float wp = __shfl_sync(kFull, p, j);
                    const float wd = __shfl_sync(kFull, ds, j);
                    if (wp == 0.f && wd == 0.f) continue;  // warp-uniform
#pragma unroll
                    for (int k = 0; k < NDL; k++) {
                        dv[r][k] += wp * dOs[j * STRIDE + lane + 32 * k];
                        dk[r][k] += wd * Qs[j * STRIDE + lane + 32 * k];
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t2 = k0 + warp * R + r;
        if (t2 >= Tn) continue;
        T* row = dqkv + ((size_t)b * Tn + t2) * QKV;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) {
                row[(size_t)(NH + g) * HS + d] = from_f<T>(dk[r][k] * scale);
                row[(size_t)(NH + NKV + g) * HS + d] = from_f<T>(dv[r][k]);
            }
        }
    }
}

// ---- bf16 on tensor cores -------------------------------------------------------
namespace wmma = nvcuda::wmma;
namespace tc {
constexpr int kRows = 16;                // a warp's rows: one wmma m16 fragment
constexpr int kBlockRows = kRows * kWarps;  // 64 queries (or keys) per block
constexpr int kTileRows = 32;            // keys (or queries) per streamed tile
constexpr int kLdS = kTileRows + 4;      // fp32 score tile stride: a multiple of 16 bytes
constexpr int kLdP = kTileRows + 8;      // bf16 P / dS tile stride: a multiple of 16 bytes
constexpr int kScoreBytes = kRows * kLdS * 4;  // 2304: keeps every tile 32-byte aligned
constexpr int kPBytes = kRows * kLdP * 2;      // 1280
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }

// The j-th of the 16 tile columns c0.. a lane reads in its row r, rotated by
// r: unrotated, the 32 lanes' reads of S[r * kLdS + c] (kLdS = 36 = 4 mod 32
// banks) would fall into 8 banks, 4-way conflicts at every j.
__device__ __forceinline__ int lane_column(int c0, int j, int r) { return c0 + ((j + r) & 15); }

template <int NDL>
struct Shape {
    static constexpr int HSP = 32 * NDL;  // head dims, zero-padded
    static constexpr int LDH = HSP + 8;   // bf16 row stride of a staged tile (16-byte multiple)
    static constexpr int NF = HSP / 16;   // fragments across the head dims
    static constexpr int kStageBytes = kBlockRows * LDH * 2;  // 64 staged rows
};

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;  // X^T of a row-major X
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// rows [t0, t0+nrows) of a (Tn, row_stride) bf16 matrix at `src` (already at
// the head's first channel) -> dst (nrows, LDH) bf16, zero outside t < Tn and
// d < HS. HS, the head offsets and the row strides are even: 4-byte pairs.
template <int HSP, int LDH>
__device__ void stage_rows(bf16* dst, int nrows, const bf16* src, size_t row_stride, int t0, int Tn,
                           int HS) {
    constexpr int PAIRS = HSP / 2;
    for (int idx = threadIdx.x; idx < nrows * PAIRS; idx += blockDim.x) {
        const int r = idx / PAIRS, d = 2 * (idx % PAIRS), t = t0 + r;
        __nv_bfloat162 v = __floats2bfloat162_rn(0.f, 0.f);
        if (t < Tn && d < HS) v = *reinterpret_cast<const __nv_bfloat162*>(src + (size_t)t * row_stride + d);
        *reinterpret_cast<__nv_bfloat162*>(dst + r * LDH + d) = v;
    }
}

// What a block of query head h = blockIdx.y % NH of sequence b = blockIdx.y / NH
// reads: its kv head g, the sequence's qkv rows, its K and V columns, its mask row.
struct QueryHead {
    int b, h, g, QKV, OC;
    const bf16* base;  // (Tn, QKV) rows of sequence b
    const bf16* kh;    // kv head g's K columns in them
    const bf16* vh;    // and its V columns
    const int32_t* mrow;
    __device__ QueryHead(const bf16* qkv, const int32_t* mask, int Tn, int NH, int NKV, int HS)
        : b((int)blockIdx.y / NH),
          h((int)blockIdx.y % NH),
          g(h / (NH / NKV)),
          QKV((NH + 2 * NKV) * HS),
          OC(NH * HS),
          base(qkv + (size_t)b * Tn * QKV),
          kh(base + (size_t)(NH + g) * HS),
          vh(base + (size_t)(NH + NKV + g) * HS),
          mrow(mask + (size_t)b * Tn) {}
};

// Key tile k0..k0+kTileRows-1 of qh's kv head: K (and V, unless null)
// staged, the keys' segments in kseg_s. Between two __syncthreads (the caller's).
template <int HSP, int LDH>
__device__ void stage_key_tile(bf16* Ks, bf16* Vs, int* kseg_s, const QueryHead& qh, int k0, int Tn, int HS) {
    stage_rows<HSP, LDH>(Ks, kTileRows, qh.kh, qh.QKV, k0, Tn, HS);
    if (Vs) stage_rows<HSP, LDH>(Vs, kTileRows, qh.vh, qh.QKV, k0, Tn, HS);
    if (threadIdx.x < kTileRows) {
        const int t = k0 + (int)threadIdx.x;
        kseg_s[threadIdx.x] = t < Tn ? qh.mrow[t] : 0;
    }
}

// the warp's 16 rows of a staged tile -> NF matrix_a fragments
template <int NF, int LDH>
__device__ void load_rows_a(FragA (&a)[NF], const bf16* rows) {
#pragma unroll
    for (int kk = 0; kk < NF; kk++) wmma::load_matrix_sync(a[kk], rows + kk * 16, LDH);
}

// S (16 x kTileRows fp32, stride kLdS) = A (16 x HSP) . X^T, X = the
// kTileRows staged rows at Xs.
template <int NF, int LDH>
__device__ void product_xt(float* S, const FragA (&a)[NF], const bf16* Xs) {
#pragma unroll
    for (int n = 0; n < kTileRows / 16; n++) {
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < NF; kk++) {
            FragBT x;
            wmma::load_matrix_sync(x, Xs + n * 16 * LDH + kk * 16, LDH);
            wmma::mma_sync(acc, a[kk], x, acc);
        }
        wmma::store_matrix_sync(S + n * 16, acc, kLdS, wmma::mem_row_major);
    }
}

// acc (16 x HSP) += P (16 x kTileRows bf16, stride kLdP) . X (the
// kTileRows staged rows at Xs)
template <int NF, int LDH>
__device__ void accumulate_px(FragC (&acc)[NF], const bf16* P, const bf16* Xs) {
#pragma unroll
    for (int kk = 0; kk < kTileRows / 16; kk++) {
        FragA p;
        wmma::load_matrix_sync(p, P + kk * 16, kLdP);
#pragma unroll
        for (int n = 0; n < NF; n++) {
            FragB x;
            wmma::load_matrix_sync(x, Xs + kk * 16 * LDH + n * 16, LDH);
            wmma::mma_sync(acc[n], p, x, acc[n]);
        }
    }
}

// acc * mul -> rows t0.. of dst (bf16, stride row_stride, < Tn, dims < HS),
// one fragment at a time through the warp's score tile S.
template <int NF>
__device__ void store_rows(bf16* dst, size_t row_stride, int t0, int Tn, int HS, const FragC (&acc)[NF],
                           float* S, float mul) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int n = 0; n < NF; n++) {
        __syncwarp();  // the lanes' reads of S are done
        wmma::store_matrix_sync(S, acc[n], kLdS, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 256; i += 32) {
            const int r = i / 16, d = n * 16 + i % 16, t = t0 + r;
            if (t < Tn && d < HS) dst[(size_t)t * row_stride + d] = __float2bfloat16_rn(S[r * kLdS + i % 16] * mul);
        }
    }
}
}  // namespace tc

// grid (ceil(T / 64), B*NH); block 32*kWarps. Same contract as
// causal_attention_forward_kernel; pass 1 finds each row's max m and sum l,
// pass 2 adds P = e^(s - lse) (bf16) times V.
template <int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_forward_tc_kernel(bf16* out, float* lse, const bf16* qkv, const int32_t* mask, int Tn,
                                       int NH, int NKV, int HS, float scale) {
    using namespace tc;
    using S_ = Shape<NDL>;
    constexpr int HSP = S_::HSP, LDH = S_::LDH, NF = S_::NF;
    constexpr int kWarpBytes = kScoreBytes + kPBytes;
    // the block's Q rows are staged once through the warps' score tiles
    __shared__ __align__(32) unsigned char scratch[cmax(S_::kStageBytes, kWarps * kWarpBytes)];
    __shared__ __align__(32) bf16 Ks[kTileRows * LDH];
    __shared__ __align__(32) bf16 Vs[kTileRows * LDH];
    __shared__ int kseg_s[kTileRows];

    const QueryHead qh(qkv, mask, Tn, NH, NKV, HS);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * kBlockRows;
    float* S = reinterpret_cast<float*>(scratch + warp * kWarpBytes);
    bf16* P = reinterpret_cast<bf16*>(scratch + warp * kWarpBytes + kScoreBytes);

    FragA qa[NF];
    stage_rows<HSP, LDH>(reinterpret_cast<bf16*>(scratch), kBlockRows, qh.base + (size_t)qh.h * HS, qh.QKV, q0, Tn, HS);
    __syncthreads();
    load_rows_a<NF, LDH>(qa, reinterpret_cast<const bf16*>(scratch) + warp * kRows * LDH);

    // lane: row r of the warp's 16, columns c0 .. c0+15 of each tile
    const int r = lane >> 1, c0 = (lane & 1) * 16;
    const int t1 = q0 + warp * kRows + r;
    const int seg1 = t1 < Tn ? qh.mrow[t1] : 0;
    const int kend = Tn < q0 + kBlockRows ? Tn : q0 + kBlockRows;  // causality

    float m = -INFINITY, l = 0.f;
    for (int k0 = 0; k0 < kend; k0 += kTileRows) {
        __syncthreads();  // the staged rows (Q or the previous K tile) are consumed
        stage_key_tile<HSP, LDH>(Ks, nullptr, kseg_s, qh, k0, Tn, HS);
        __syncthreads();
        product_xt<NF, LDH>(S, qa, Ks);
        __syncwarp();
        float s[16], mt = -INFINITY;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int c = lane_column(c0, j, r);
            s[j] = visible(t1, seg1, k0 + c, kseg_s[c]) ? S[r * kLdS + c] * scale : -INFINITY;
            mt = fmaxf(mt, s[j]);
        }
        const float m_new = fmaxf(m, fmaxf(mt, __shfl_xor_sync(kFull, mt, 1)));
        const float shift = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: every term 0
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 16; j++) sum += expf(s[j] - shift);
        sum += __shfl_xor_sync(kFull, sum, 1);
        l = l * expf(m - shift) + sum;
        m = m_new;
    }
    // l is 0 for a padding row, 0 or NaN for a row of NaN scores (the max skips them)
    const float lse_r = seg1 == 0 ? 0.f : l > 0.f ? m + logf(l) : NAN;
    if ((lane & 1) == 0 && t1 < Tn) lse[(size_t)blockIdx.y * Tn + t1] = lse_r;

    FragC oacc[NF];
#pragma unroll
    for (int n = 0; n < NF; n++) wmma::fill_fragment(oacc[n], 0.f);
    for (int k0 = 0; k0 < kend; k0 += kTileRows) {
        __syncthreads();
        stage_key_tile<HSP, LDH>(Ks, Vs, kseg_s, qh, k0, Tn, HS);
        __syncthreads();
        product_xt<NF, LDH>(S, qa, Ks);
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int c = lane_column(c0, j, r);
            const float p = visible(t1, seg1, k0 + c, kseg_s[c]) ? expf(S[r * kLdS + c] * scale - lse_r) : 0.f;
            P[r * kLdP + c] = __float2bfloat16_rn(p);
        }
        __syncwarp();
        accumulate_px<NF, LDH>(oacc, P, Vs);
    }
    store_rows<NF>(out + (size_t)qh.b * Tn * qh.OC + (size_t)qh.h * HS, qh.OC, q0 + warp * kRows, Tn, HS, oacc, S, 1.f);
}

// dq of query head h: grid (ceil(T / 64), B*NH). Same contract as
// causal_attention_backward_dq_kernel.
template <int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_backward_dq_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                           const float* delta, const int32_t* mask, int Tn, int NH, int NKV,
                                           int HS, float scale) {
    using namespace tc;
    using S_ = Shape<NDL>;
    constexpr int HSP = S_::HSP, LDH = S_::LDH, NF = S_::NF;
    constexpr int kWarpBytes = 2 * kScoreBytes + kPBytes;  // S, dP (fp32), dS (bf16)
    __shared__ __align__(32) unsigned char scratch[cmax(S_::kStageBytes, kWarps * kWarpBytes)];
    __shared__ __align__(32) bf16 Ks[kTileRows * LDH];
    __shared__ __align__(32) bf16 Vs[kTileRows * LDH];
    __shared__ int kseg_s[kTileRows];

    const QueryHead qh(qkv, mask, Tn, NH, NKV, HS);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * kBlockRows;
    float* S = reinterpret_cast<float*>(scratch + warp * kWarpBytes);
    float* dP = reinterpret_cast<float*>(scratch + warp * kWarpBytes + kScoreBytes);
    bf16* dS = reinterpret_cast<bf16*>(scratch + warp * kWarpBytes + 2 * kScoreBytes);
    const bf16* staged = reinterpret_cast<const bf16*>(scratch) + warp * kRows * LDH;

    FragA qa[NF], doa[NF];
    stage_rows<HSP, LDH>(reinterpret_cast<bf16*>(scratch), kBlockRows, qh.base + (size_t)qh.h * HS, qh.QKV, q0, Tn, HS);
    __syncthreads();
    load_rows_a<NF, LDH>(qa, staged);
    __syncthreads();
    const bf16* douth = dout + (size_t)qh.b * Tn * qh.OC + (size_t)qh.h * HS;
    stage_rows<HSP, LDH>(reinterpret_cast<bf16*>(scratch), kBlockRows, douth, qh.OC, q0, Tn, HS);
    __syncthreads();
    load_rows_a<NF, LDH>(doa, staged);

    const int r = lane >> 1, c0 = (lane & 1) * 16;
    const int t1 = q0 + warp * kRows + r;
    const int seg1 = t1 < Tn ? qh.mrow[t1] : 0;
    const float lse_r = t1 < Tn ? lse[(size_t)blockIdx.y * Tn + t1] : 0.f;
    const float delta_r = t1 < Tn ? delta[(size_t)blockIdx.y * Tn + t1] : 0.f;
    FragC dq[NF];
#pragma unroll
    for (int n = 0; n < NF; n++) wmma::fill_fragment(dq[n], 0.f);

    const int kend = Tn < q0 + kBlockRows ? Tn : q0 + kBlockRows;
    for (int k0 = 0; k0 < kend; k0 += kTileRows) {
        __syncthreads();
        stage_key_tile<HSP, LDH>(Ks, Vs, kseg_s, qh, k0, Tn, HS);
        __syncthreads();
        product_xt<NF, LDH>(S, qa, Ks);
        product_xt<NF, LDH>(dP, doa, Vs);
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int c = lane_column(c0, j, r), i = r * kLdS + c;
            float ds = 0.f;
            if (visible(t1, seg1, k0 + c, kseg_s[c])) ds = expf(S[i] * scale - lse_r) * (dP[i] - delta_r);
            dS[r * kLdP + c] = __float2bfloat16_rn(ds);
        }
        __syncwarp();
        accumulate_px<NF, LDH>(dq, dS, Ks);
    }
    store_rows<NF>(dqkv + (size_t)qh.b * Tn * qh.QKV + (size_t)qh.h * HS, qh.QKV, q0 + warp * kRows, Tn, HS, dq, S,
                   scale);
}

// dk, dv of kv head g: grid (ceil(T / 64), B*NKV). Same contract and sum
// order over (h, query tiles) as causal_attention_backward_dkdv_kernel; a
// warp's 16 keys are the rows of S^T = K Q^T and dP^T = V dO^T.
template <int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    causal_attention_backward_dkdv_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                                             const float* delta, const int32_t* mask, int Tn, int NH, int NKV,
                                             int HS, float scale) {
    using namespace tc;
    using S_ = Shape<NDL>;
    constexpr int HSP = S_::HSP, LDH = S_::LDH, NF = S_::NF;
    constexpr int kWarpBytes = 2 * kScoreBytes + 2 * kPBytes;  // S^T, dP^T (fp32), P^T, dS^T (bf16)
    __shared__ __align__(32) unsigned char scratch[cmax(S_::kStageBytes, kWarps * kWarpBytes)];
    __shared__ __align__(32) bf16 Qs[kTileRows * LDH];
    __shared__ __align__(32) bf16 dOs[kTileRows * LDH];
    __shared__ float lse_s[kTileRows], delta_s[kTileRows];
    __shared__ int qseg_s[kTileRows];

    const int bg = blockIdx.y, b = bg / NKV, g = bg % NKV, G = NH / NKV;
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k0 = blockIdx.x * kBlockRows;
    const bf16* base = qkv + (size_t)b * Tn * QKV;
    const int32_t* mrow = mask + (size_t)b * Tn;
    float* S = reinterpret_cast<float*>(scratch + warp * kWarpBytes);
    float* dP = reinterpret_cast<float*>(scratch + warp * kWarpBytes + kScoreBytes);
    bf16* P = reinterpret_cast<bf16*>(scratch + warp * kWarpBytes + 2 * kScoreBytes);
    bf16* dS = reinterpret_cast<bf16*>(scratch + warp * kWarpBytes + 2 * kScoreBytes + kPBytes);
    const bf16* staged = reinterpret_cast<const bf16*>(scratch) + warp * kRows * LDH;

    FragA ka[NF], va[NF];
    stage_rows<HSP, LDH>(reinterpret_cast<bf16*>(scratch), kBlockRows, base + (size_t)(NH + g) * HS, QKV, k0, Tn, HS);
    __syncthreads();
    load_rows_a<NF, LDH>(ka, staged);
    __syncthreads();
    stage_rows<HSP, LDH>(reinterpret_cast<bf16*>(scratch), kBlockRows, base + (size_t)(NH + NKV + g) * HS, QKV, k0,
                         Tn, HS);
    __syncthreads();
    load_rows_a<NF, LDH>(va, staged);

    // lane: key row r of the warp's 16, query columns c0 .. c0+15 of each tile
    const int r = lane >> 1, c0 = (lane & 1) * 16;
    const int t2 = k0 + warp * kRows + r;
    const int seg2 = t2 < Tn ? mrow[t2] : 0;
    FragC dk[NF], dv[NF];
#pragma unroll
    for (int n = 0; n < NF; n++) {
        wmma::fill_fragment(dk[n], 0.f);
        wmma::fill_fragment(dv[n], 0.f);
    }

    for (int h = g * G; h < (g + 1) * G; h++) {
        const bf16* qh = base + (size_t)h * HS;
        const bf16* doh = dout + (size_t)b * Tn * OC + (size_t)h * HS;
        const float* lse_h = lse + ((size_t)b * NH + h) * Tn;
        const float* delta_h = delta + ((size_t)b * NH + h) * Tn;
        for (int q0 = k0; q0 < Tn; q0 += kTileRows) {  // earlier queries see none of the block's keys
            __syncthreads();
            stage_rows<HSP, LDH>(Qs, kTileRows, qh, QKV, q0, Tn, HS);
            stage_rows<HSP, LDH>(dOs, kTileRows, doh, OC, q0, Tn, HS);
            if (threadIdx.x < kTileRows) {
                const int t = q0 + (int)threadIdx.x;
                lse_s[threadIdx.x] = t < Tn ? lse_h[t] : 0.f;
                delta_s[threadIdx.x] = t < Tn ? delta_h[t] : 0.f;
                qseg_s[threadIdx.x] = t < Tn ? mrow[t] : 0;
            }
            __syncthreads();
            product_xt<NF, LDH>(S, ka, Qs);
            product_xt<NF, LDH>(dP, va, dOs);
            __syncwarp();
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const int c = lane_column(c0, j, r), i = r * kLdS + c;
                float p = 0.f, ds = 0.f;
                if (visible(q0 + c, qseg_s[c], t2, seg2)) {
                    p = expf(S[i] * scale - lse_s[c]);
                    ds = p * (dP[i] - delta_s[c]);
                }
                P[r * kLdP + c] = __float2bfloat16_rn(p);
                dS[r * kLdP + c] = __float2bfloat16_rn(ds);
            }
            __syncwarp();
            accumulate_px<NF, LDH>(dv, P, dOs);
            accumulate_px<NF, LDH>(dk, dS, Qs);
        }
    }
    bf16* rows = dqkv + (size_t)b * Tn * QKV;
    store_rows<NF>(rows + (size_t)(NH + g) * HS, QKV, k0 + warp * kRows, Tn, HS, dk, S, scale);
    store_rows<NF>(rows + (size_t)(NH + NKV + g) * HS, QKV, k0 + warp * kRows, Tn, HS, dv, S, 1.f);
}

// ---- generation ---------------------------------------------------------------
// kcache/vcache (B, NKV, cap, HS) columns col0.. <- the k/v heads of qkv (B, Tn).
template <typename T>
__global__ void kv_cache_store_kernel(T* kcache, T* vcache, const T* qkv, int B, int Tn, int NH,
                                      int NKV, int HS, int col0, int cap) {
    const size_t n = (size_t)B * Tn * NKV * HS, QKV = (size_t)(NH + 2 * NKV) * HS;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < n;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(idx % HS);
        size_t rest = idx / HS;
        const int g = (int)(rest % NKV);
        rest /= NKV;
        const int t = (int)(rest % Tn);
        const size_t b = rest / Tn;
        const T* src = qkv + (b * Tn + t) * QKV;
        const size_t dst = ((b * NKV + g) * cap + (size_t)(col0 + t)) * HS + d;
        kcache[dst] = src[(size_t)(NH + g) * HS + d];
        vcache[dst] = src[(size_t)(NH + NKV + g) * HS + d];
    }
}

// One query per (b, h) against ncols cache columns: grid B*NH, block
// 32*kWarps. Warp w takes the key tiles w, w+kWarps, .. (lane j <-> key) with
// its own online softmax; the kWarps partial (m, l, o) merge in warp order.
template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    decode_attention_kernel(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                            const int32_t* mask, int NH, int NKV, int HS, int ncols, int cap,
                            float scale) {
    constexpr int HSMAX = 32 * NDL;
    __shared__ float qs[HSMAX];
    __shared__ float m_s[kWarps], l_s[kWarps];
    __shared__ float o_s[kWarps * HSMAX];

    const int bh = blockIdx.x, b = bh / NH, h = bh % NH, g = h / (NH / NKV);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T* qh = q + (size_t)b * q_stride + (size_t)h * HS;
    const T* Kc = kcache + ((size_t)b * NKV + g) * cap * HS;
    const T* Vc = vcache + ((size_t)b * NKV + g) * cap * HS;
    const int32_t* mrow = mask + (size_t)b * cap;
    for (int d = threadIdx.x; d < HSMAX; d += blockDim.x) qs[d] = d < HS ? to_f(qh[d]) : 0.f;
    __syncthreads();

    float m = -INFINITY, l = 0.f, o[NDL];
#pragma unroll
    for (int k = 0; k < NDL; k++) o[k] = 0.f;
    for (int k0 = warp * kTile; k0 < ncols; k0 += kTile * kWarps) {
        const int j = k0 + lane;
        const bool live = j < ncols && mrow[j] != 0;
        float s = -INFINITY;
        if (live) {  // the key row straight from global memory (lane-strided; cached)
            const T* krow = Kc + (size_t)j * HS;
            float acc = 0.f;
            for (int d = 0; d < HS; d++) acc += qs[d] * to_f(krow[d]);
            s = acc * scale;
        }
        const float m_new = fmaxf(m, warp_max(s));
        float pj = 0.f, alpha = 1.f;
        if (m_new != -INFINITY) {
            alpha = expf(m - m_new);
            pj = live ? expf(s - m_new) : 0.f;
        } else if (live && isnan(s)) {
            pj = s;  // as in the forward: the max skips a NaN score, l must not
        }
        l = l * alpha + warp_sum(pj);
        m = m_new;
#pragma unroll
        for (int k = 0; k < NDL; k++) o[k] *= alpha;
#pragma unroll 8
        for (int jj = 0; jj < kTile; jj++) {
            const float w = __shfl_sync(kFull, pj, jj);
            if (w == 0.f) continue;  // warp-uniform: masked and absent columns are never read
            const T* vrow = Vc + (size_t)(k0 + jj) * HS;
#pragma unroll
            for (int k = 0; k < NDL; k++) {
                const int d = lane + 32 * k;
                if (d < HS) o[k] += w * to_f(vrow[d]);
            }
        }
    }
    if (lane == 0) {
        m_s[warp] = m;
        l_s[warp] = l;
    }
#pragma unroll
    for (int k = 0; k < NDL; k++) o_s[warp * HSMAX + lane + 32 * k] = o[k];
    __syncthreads();

    float M = -INFINITY;
    for (int w = 0; w < kWarps; w++) M = fmaxf(M, m_s[w]);
    float L = 0.f, c[kWarps];
    for (int w = 0; w < kWarps; w++) {
        c[w] = m_s[w] == -INFINITY ? 0.f : expf(m_s[w] - M);
        L += l_s[w] * c[w];
    }
    T* orow = out + (size_t)b * NH * HS + (size_t)h * HS;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0.f;
        for (int w = 0; w < kWarps; w++) acc += o_s[w * HSMAX + d] * c[w];
        orow[d] = from_f<T>(L == 0.f ? 0.f : acc / L);  // no real key: 0; a NaN score: NaN
    }
}

std::string shape_of(int B, int Tn, int NH, int NKV, int HS) {
    return "B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " NH=" + std::to_string(NH) +
           " NKV=" + std::to_string(NKV) + " HS=" + std::to_string(HS);
}

// Shapes every kernel here needs: heads, GQA grouping, HS even and <= 128.
void check_heads(const char* k, int B, int Tn, int NH, int NKV, int HS) {
    const std::string shape = shape_of(B, Tn, NH, NKV, HS);
    detail::require(B >= 0 && Tn >= 0, k, "B and T must be >= 0: " + shape);
    detail::require(NH > 0 && NKV > 0 && NH % NKV == 0, k,
                    "NH (num_attention_heads) must be a positive multiple of NKV "
                    "(num_key_value_heads): " + shape);
    detail::require(HS > 0 && HS % 2 == 0 && HS <= 128, k,
                    "HS (head_dim) must be even and <= 128: " + shape);
}

// Forward / backward: grid.y = B*NH (and B*NKV <= it) must fit 65535.
void check_args(const char* k, int B, int Tn, int NH, int NKV, int HS) {
    check_heads(k, B, Tn, NH, NKV, HS);
    detail::require((long long)B * NH <= 65535, k,
                    "B*NH must be <= 65535 (grid.y): " + shape_of(B, Tn, NH, NKV, HS));
}

// fp32: the scalar kernels; bf16: the tensor-core kernels.
// The bf16 kernels read and write head rows as bf16 pairs (4 bytes): HS,
// head offsets and row strides are even (check_heads), the buffers must be too.
void check_pairs(const char* k, std::initializer_list<const void*> ptrs) {
    for (const void* p : ptrs)
        detail::require(reinterpret_cast<uintptr_t>(p) % 4 == 0, k, "bf16 buffers must be 4-byte aligned");
}

template <typename T, int NDL>
void launch_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B, int Tn, int NH,
                    int NKV, int HS, float scale, cudaStream_t stream) {
    if constexpr (std::is_same<T, bf16>::value) {
        const dim3 grid((Tn + tc::kBlockRows - 1) / tc::kBlockRows, B * NH);
        causal_attention_forward_tc_kernel<NDL><<<grid, 32 * kWarps, 0, stream>>>(out, lse, qkv, mask, Tn, NH,
                                                                                 NKV, HS, scale);
        check_launch("causal_attention_forward_tc_kernel");
    } else {
        const dim3 grid((Tn + Cfg<NDL>::ROWS - 1) / Cfg<NDL>::ROWS, B * NH);
        causal_attention_forward_kernel<T, NDL><<<grid, 32 * kWarps, 0, stream>>>(out, lse, qkv, mask, Tn, NH,
                                                                                 NKV, HS, scale);
        check_launch("causal_attention_forward_kernel");
    }
}

template <typename T, int NDL>
void launch_backward(T* dqkv, const float* delta, const T* dout, const T* qkv, const float* lse,
                     const int32_t* mask, int B, int Tn, int NH, int NKV, int HS, float scale,
                     cudaStream_t stream) {
    if constexpr (std::is_same<T, bf16>::value) {
        const unsigned tiles = (Tn + tc::kBlockRows - 1) / tc::kBlockRows;
        causal_attention_backward_dq_tc_kernel<NDL><<<dim3(tiles, B * NH), 32 * kWarps, 0, stream>>>(
            dqkv, dout, qkv, lse, delta, mask, Tn, NH, NKV, HS, scale);
        check_launch("causal_attention_backward_dq_tc_kernel");
        causal_attention_backward_dkdv_tc_kernel<NDL><<<dim3(tiles, B * NKV), 32 * kWarps, 0, stream>>>(
            dqkv, dout, qkv, lse, delta, mask, Tn, NH, NKV, HS, scale);
        check_launch("causal_attention_backward_dkdv_tc_kernel");
    } else {
        const unsigned tiles = (Tn + Cfg<NDL>::ROWS - 1) / Cfg<NDL>::ROWS;
        causal_attention_backward_dq_kernel<T, NDL><<<dim3(tiles, B * NH), 32 * kWarps, 0, stream>>>(
            dqkv, dout, qkv, lse, delta, mask, Tn, NH, NKV, HS, scale);
        check_launch("causal_attention_backward_dq_kernel");
        causal_attention_backward_dkdv_kernel<T, NDL><<<dim3(tiles, B * NKV), 32 * kWarps, 0, stream>>>(
            dqkv, dout, qkv, lse, delta, mask, Tn, NH, NKV, HS, scale);
        check_launch("causal_attention_backward_dkdv_kernel");
    }
}

template <typename T, int NDL>
void launch_decode(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                   const int32_t* mask, int B, int NH, int NKV, int HS, int ncols, int cap,
                   float scale, cudaStream_t stream) {
    decode_attention_kernel<T, NDL><<<B * NH, 32 * kWarps, 0, stream>>>(out, q, q_stride, kcache, vcache,
                                                                       mask, NH, NKV, HS, ncols, cap, scale);
    check_launch("decode_attention_kernel");
}
}  // namespace

template <typename T>
void causal_attention_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B,
                              int Tn, int NH, int NKV, int HS, cudaStream_t stream) {
    check_args("causal_attention_forward", B, Tn, NH, NKV, HS);
    if (std::is_same<T, bf16>::value) check_pairs("causal_attention_forward", {out, qkv});
    if (B == 0 || Tn == 0) return;
    const float scale = 1.f / sqrtf((float)HS);
    switch ((HS + 31) / 32) {
        case 1: launch_forward<T, 1>(out, lse, qkv, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        case 2: launch_forward<T, 2>(out, lse, qkv, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        case 3: launch_forward<T, 3>(out, lse, qkv, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        default: launch_forward<T, 4>(out, lse, qkv, mask, B, Tn, NH, NKV, HS, scale, stream); break;
    }
}

template <typename T>
void causal_attention_backward(T* dqkv, float* delta, const T* dout, const T* out, const T* qkv,
                               const float* lse, const int32_t* mask, int B, int Tn, int NH,
                               int NKV, int HS, cudaStream_t stream) {
    check_args("causal_attention_backward", B, Tn, NH, NKV, HS);
    if (std::is_same<T, bf16>::value) check_pairs("causal_attention_backward", {dqkv, dout, qkv});
    if (B == 0 || Tn == 0) return;
    const float scale = 1.f / sqrtf((float)HS);
    const size_t rows = (size_t)B * NH * Tn;
    detail::require(rows / 8 < 0x7fffffffu, "causal_attention_backward",
                    "B*NH*T too large for the delta grid: " + shape_of(B, Tn, NH, NKV, HS));
    causal_attention_delta_kernel<T><<<detail::grid_for(rows, 8), 256, 0, stream>>>(delta, dout, out, B,
                                                                                   Tn, NH, HS);
    check_launch("causal_attention_delta_kernel");
    switch ((HS + 31) / 32) {
        case 1: launch_backward<T, 1>(dqkv, delta, dout, qkv, lse, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        case 2: launch_backward<T, 2>(dqkv, delta, dout, qkv, lse, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        case 3: launch_backward<T, 3>(dqkv, delta, dout, qkv, lse, mask, B, Tn, NH, NKV, HS, scale, stream); break;
        default: launch_backward<T, 4>(dqkv, delta, dout, qkv, lse, mask, B, Tn, NH, NKV, HS, scale, stream); break;
    }
}

template <typename T>
void kv_cache_store(T* kcache, T* vcache, const T* qkv, int B, int Tn, int NH, int NKV, int HS,
                    int col0, int cap, cudaStream_t stream) {
    const char* k = "kv_cache_store";
    check_heads(k, B, Tn, NH, NKV, HS);
    detail::require(col0 >= 0 && cap >= 0 && (long long)col0 + Tn <= cap, k,
                    "columns col0=" + std::to_string(col0) + " .. col0+T-1 (T=" + std::to_string(Tn) +
                        ") must lie in the cache's cap=" + std::to_string(cap));
    const size_t n = (size_t)B * Tn * NKV * HS;
    if (n == 0) return;
    const unsigned grid = std::min(detail::grid_for(n, 256), 65535u);  // grid-stride beyond
    kv_cache_store_kernel<T><<<grid, 256, 0, stream>>>(kcache, vcache, qkv, B, Tn, NH, NKV, HS, col0, cap);
    check_launch("kv_cache_store_kernel");
}

template <typename T>
void decode_attention(T* out, const T* q, int q_stride, const T* kcache, const T* vcache,
                      const int32_t* mask, int B, int NH, int NKV, int HS, int ncols, int cap,
                      cudaStream_t stream) {
    const char* k = "decode_attention";
    check_heads(k, B, 1, NH, NKV, HS);
    detail::require(ncols >= 0 && ncols <= cap, k,
                    "ncols=" + std::to_string(ncols) + " must be in [0, cap=" + std::to_string(cap) + "]");
    detail::require(q_stride >= NH * HS, k,
                    "q_stride=" + std::to_string(q_stride) + " must be >= NH*HS=" + std::to_string(NH * HS));
    detail::require((long long)B * NH <= 0x7fffffffLL, k, "B*NH must fit grid.x");
    if (B == 0) return;
    const float scale = 1.f / sqrtf((float)HS);
    switch ((HS + 31) / 32) {
        case 1: launch_decode<T, 1>(out, q, q_stride, kcache, vcache, mask, B, NH, NKV, HS, ncols, cap, scale, stream); break;
        case 2: launch_decode<T, 2>(out, q, q_stride, kcache, vcache, mask, B, NH, NKV, HS, ncols, cap, scale, stream); break;
        case 3: launch_decode<T, 3>(out, q, q_stride, kcache, vcache, mask, B, NH, NKV, HS, ncols, cap, scale, stream); break;
        default: launch_decode<T, 4>(out, q, q_stride, kcache, vcache, mask, B, NH, NKV, HS, ncols, cap, scale, stream); break;
    }
}

#define NT_INSTANTIATE(T)                                                                         \
    template void causal_attention_forward<T>(T*, float*, const T*, const int32_t*, int, int, int, \
                                              int, int, cudaStream_t);                            \
    template void causal_attention_backward<T>(T*, float*, const T*, const T*, const T*,          \
                                               const float*, const int32_t*, int, int, int, int,  \
                                               int, cudaStream_t);                                \
    template void kv_cache_store<T>(T*, T*, const T*, int, int, int, int, int, int, int,          \
                                    cudaStream_t);                                                \
    template void decode_attention<T>(T*, const T*, int, const T*, const T*, const int32_t*, int, \
                                      int, int, int, int, int, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
