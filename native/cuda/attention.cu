// Fused scaled dot-product self-attention (Vaswani et al. 2017; HF
// BertSelfAttention), flash-style (Dao et al., FlashAttention, 2022/2023):
// the T x T scores never leave registers, softmax is computed online
// (Milakov & Gimelshein 2018) and the backward recomputes P from the saved
// per-row logsumexp.
//
// Forward, per (b, h) and query row t1, over key tiles of 32 (lane j <-> key):
//   s_j = q.k_j / sqrt(HS)  (-inf for a padding key; 0 for every key when the
//         example has no attended key at all, giving the CPU's uniform row)
//   m' = max(m, max_j s_j);  l = l e^(m-m') + sum_j e^(s_j-m')
//   o  = o e^(m-m') + sum_j e^(s_j-m') keep_j/(1-p) v_j
//   out = o / l,  lse = m + log l
// Backward (P = e^(s - lse), P' = P keep/(1-p), delta_t1 = dout_t1 . out_t1):
//   dP = keep/(1-p) (dout . v),  dS = P (dP - delta)  (0 for an all-masked example)
//   dq = sum_t2 dS k / sqrt(HS)   (kernel over query tiles)
//   dk = sum_t1 dS q / sqrt(HS),  dv = sum_t1 P' dout   (kernel over key tiles)
// Each output element has exactly one writer: no atomics, fixed sum order.
//
// Layout: a warp owns R rows (queries or keys), lane l owns head dims
// l, l+32, .. (NDL = ceil(HS/32) of them). Tiles of 32 rows sit in shared
// memory as fp32 with an odd row stride (HSMAX+1), so lane j reading row j
// at a common dim d hits 32 different banks.
#include <string>

#include "common/philox.h"
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

template <int NDL>
struct Cfg {
    static constexpr int HSMAX = 32 * NDL;
    static constexpr int STRIDE = HSMAX + 1;
    static constexpr int R = NDL >= 3 ? 2 : 4;  // rows per warp; keeps static smem < 48 KB
    static constexpr int ROWS = R * kWarps;
};

struct Drop {
    float p;       // > 0 enables dropout
    float scale;   // 1/(1-p), 0 when p >= 1
    uint64_t seed, step;
    uint32_t tensor_id;
    uint64_t offset;  // DropoutKey::offset: where this batch's rows start in the global batch
    __device__ bool keep(uint64_t local) const {
        const uint64_t index = offset + local;
        const philox::Words w = philox::dropout_block(seed, step, tensor_id, index >> 2);
        return philox::to_uniform(philox::word(w, (unsigned)(index & 3))) >= p;
    }
};

// rows [t0, t0+nrows) of a (T, row_stride) matrix at `src` (already offset to
// the head's first channel) -> dst[r*dst_stride + d], fp32, zero outside
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

// Whether example b attends to at least one key (block-uniform).
__device__ bool example_has_keys(const int32_t* mrow, int Tn) {
    int local = 0;
    if (mrow == nullptr) {
        local = 1;
    } else {
        for (int t = threadIdx.x; t < Tn; t += blockDim.x) local |= (mrow[t] != 0);
    }
    return __syncthreads_or(local) != 0;
}

// Key t takes part in the softmax: in range and (attended, or no key of the
// example is, which makes every key take part with score 0).
__device__ __forceinline__ bool key_live(const int32_t* mrow, int t, int Tn, bool any) {
    return t < Tn && (mrow == nullptr || !any || mrow[t] != 0);
}

template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    attention_forward_kernel(T* out, float* lse, const T* qkv, const int32_t* mask, int Tn,
                             int C, int NH, float scale, Drop drop) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Ks[32 * STRIDE];
    __shared__ float Vs[32 * STRIDE];
    __shared__ float Qs[K::ROWS * HSMAX];
    __shared__ int live_s[32];

    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int HS = C / NH, C3 = 3 * C;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * C3 + (size_t)h * HS;
    const int32_t* mrow = mask ? mask + (size_t)b * Tn : nullptr;
    const bool any = example_has_keys(mrow, Tn);

    load_rows<T, HSMAX>(Qs, HSMAX, K::ROWS, base, C3, q0, Tn, HS);
    float m[R], l[R], o[R][NDL];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY;
        l[r] = 0.f;
#pragma unroll
        for (int k = 0; k < NDL; k++) o[r][k] = 0.f;
    }

    for (int k0 = 0; k0 < Tn; k0 += 32) {
        __syncthreads();  // previous tile fully consumed
        load_rows<T, HSMAX>(Ks, STRIDE, 32, base + C, C3, k0, Tn, HS);
        load_rows<T, HSMAX>(Vs, STRIDE, 32, base + 2 * C, C3, k0, Tn, HS);
        if (threadIdx.x < 32) live_s[threadIdx.x] = key_live(mrow, k0 + (int)threadIdx.x, Tn, any);
        __syncthreads();
        const bool live = live_s[lane] != 0;
        const int t2 = k0 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int t1 = q0 + warp * R + r;
            float s = -INFINITY;
            if (live) s = any ? dot<HSMAX>(Qs + (warp * R + r) * HSMAX, Ks + lane * STRIDE) * scale : 0.f;
            const float m_new = fmaxf(m[r], warp_max(s));
            float pj = 0.f, alpha = 1.f;
            if (m_new != -INFINITY) {  // else nothing live yet: o and l stay 0
                alpha = expf(m[r] - m_new);
                pj = live ? expf(s - m_new) : 0.f;
            }
            l[r] = l[r] * alpha + warp_sum(pj);
            m[r] = m_new;
            float pd = pj;
            if (drop.p > 0.f && live && t1 < Tn) {
                const uint64_t idx = ((uint64_t)bh * Tn + t1) * Tn + t2;
                pd = drop.keep(idx) ? pj * drop.scale : 0.f;
            }
#pragma unroll
            for (int k = 0; k < NDL; k++) o[r][k] *= alpha;
#pragma unroll 8
            for (int j = 0; j < 32; j++) {
                const float w = __shfl_sync(kFull, pd, j);
#pragma unroll
                for (int k = 0; k < NDL; k++) o[r][k] += w * Vs[j * STRIDE + lane + 32 * k];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        if (t1 >= Tn) continue;
        const float inv = 1.f / l[r];
        T* orow = out + ((size_t)b * Tn + t1) * C + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) orow[d] = from_f<T>(o[r][k] * inv);
        }
        if (lane == 0) lse[(size_t)bh * Tn + t1] = m[r] + logf(l[r]);
    }
}

// delta[bh, t] = dout[b,t,h,:] . out[b,t,h,:]; one warp per (bh, t).
template <typename T>
__global__ void attention_delta_kernel(float* delta, const T* dout, const T* out, int B, int Tn,
                                       int C, int NH) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
    if (row >= (size_t)B * NH * Tn) return;
    const int lane = threadIdx.x & 31, HS = C / NH;
    const int t = (int)(row % Tn);
    const size_t bh = row / Tn;
    const int b = (int)(bh / NH), h = (int)(bh % NH);
    const size_t off = ((size_t)b * Tn + t) * C + (size_t)h * HS;
    float s = 0.f;
    for (int d = lane; d < HS; d += 32) s += to_f(dout[off + d]) * to_f(out[off + d]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    attention_backward_dq_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                 const float* delta, const int32_t* mask, int Tn, int C, int NH,
                                 float scale, Drop drop) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Ks[32 * STRIDE];
    __shared__ float Vs[32 * STRIDE];
    __shared__ float Qs[K::ROWS * HSMAX];
    __shared__ float dOs[K::ROWS * HSMAX];
    __shared__ int live_s[32];

    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int HS = C / NH, C3 = 3 * C;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * C3 + (size_t)h * HS;
    const int32_t* mrow = mask ? mask + (size_t)b * Tn : nullptr;
    const bool any = example_has_keys(mrow, Tn);

    float dq[R][NDL];
    float lse_r[R], delta_r[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        lse_r[r] = t1 < Tn ? lse[(size_t)bh * Tn + t1] : 0.f;
        delta_r[r] = t1 < Tn ? delta[(size_t)bh * Tn + t1] : 0.f;
#pragma unroll
        for (int k = 0; k < NDL; k++) dq[r][k] = 0.f;
    }

    if (any) {  // an all-masked example has dq = 0 (uniform rows do not depend on q)
        load_rows<T, HSMAX>(Qs, HSMAX, K::ROWS, base, C3, q0, Tn, HS);
        load_rows<T, HSMAX>(dOs, HSMAX, K::ROWS, dout + (size_t)b * Tn * C + (size_t)h * HS, C,
                            q0, Tn, HS);
        for (int k0 = 0; k0 < Tn; k0 += 32) {
            __syncthreads();
            load_rows<T, HSMAX>(Ks, STRIDE, 32, base + C, C3, k0, Tn, HS);
            load_rows<T, HSMAX>(Vs, STRIDE, 32, base + 2 * C, C3, k0, Tn, HS);
            if (threadIdx.x < 32) live_s[threadIdx.x] = key_live(mrow, k0 + (int)threadIdx.x, Tn, any);
            __syncthreads();
            const bool live = live_s[lane] != 0;
            const int t2 = k0 + lane;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int t1 = q0 + warp * R + r;
                float ds = 0.f;
                if (live && t1 < Tn) {
                    const float s = dot<HSMAX>(Qs + (warp * R + r) * HSMAX, Ks + lane * STRIDE) * scale;
                    const float P = expf(s - lse_r[r]);
                    float dP = dot<HSMAX>(dOs + (warp * R + r) * HSMAX, Vs + lane * STRIDE);
                    if (drop.p > 0.f)
                        dP = drop.keep(((uint64_t)bh * Tn + t1) * Tn + t2) ? dP * drop.scale : 0.f;
                    ds = P * (dP - delta_r[r]);
                }
#pragma unroll 8
                for (int j = 0; j < 32; j++) {
                    const float w = __shfl_sync(kFull, ds, j);
#pragma unroll
                    for (int k = 0; k < NDL; k++) dq[r][k] += w * Ks[j * STRIDE + lane + 32 * k];
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t1 = q0 + warp * R + r;
        if (t1 >= Tn) continue;
        T* row = dqkv + ((size_t)b * Tn + t1) * C3 + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) row[d] = from_f<T>(dq[r][k] * scale);
        }
    }
}

template <typename T, int NDL>
__global__ void __launch_bounds__(32 * kWarps)
    attention_backward_dkdv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse,
                                   const float* delta, const int32_t* mask, int Tn, int C,
                                   int NH, float scale, Drop drop) {
    using K = Cfg<NDL>;
    constexpr int HSMAX = K::HSMAX, STRIDE = K::STRIDE, R = K::R;
    __shared__ float Qs[32 * STRIDE];
    __shared__ float dOs[32 * STRIDE];
    __shared__ float Kr[K::ROWS * HSMAX];
    __shared__ float Vr[K::ROWS * HSMAX];
    __shared__ float lse_s[32], delta_s[32];

    const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int HS = C / NH, C3 = 3 * C;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k0 = blockIdx.x * K::ROWS;
    const T* base = qkv + (size_t)b * Tn * C3 + (size_t)h * HS;
    const T* dbase = dout + (size_t)b * Tn * C + (size_t)h * HS;
    const int32_t* mrow = mask ? mask + (size_t)b * Tn : nullptr;
    const bool any = example_has_keys(mrow, Tn);

    load_rows<T, HSMAX>(Kr, HSMAX, K::ROWS, base + C, C3, k0, Tn, HS);
    load_rows<T, HSMAX>(Vr, HSMAX, K::ROWS, base + 2 * C, C3, k0, Tn, HS);
    float dk[R][NDL], dv[R][NDL];
    bool live[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        live[r] = key_live(mrow, k0 + warp * R + r, Tn, any);
#pragma unroll
        for (int k = 0; k < NDL; k++) dk[r][k] = dv[r][k] = 0.f;
    }

    for (int q0 = 0; q0 < Tn; q0 += 32) {
        __syncthreads();
        load_rows<T, HSMAX>(Qs, STRIDE, 32, base, C3, q0, Tn, HS);
        load_rows<T, HSMAX>(dOs, STRIDE, 32, dbase, C, q0, Tn, HS);
        if (threadIdx.x < 32) {
            const int t = q0 + threadIdx.x;
            lse_s[threadIdx.x] = t < Tn ? lse[(size_t)bh * Tn + t] : 0.f;
            delta_s[threadIdx.x] = t < Tn ? delta[(size_t)bh * Tn + t] : 0.f;
        }
        __syncthreads();
        const int t1 = q0 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int t2 = k0 + warp * R + r;
            float pd = 0.f, ds = 0.f;
            if (live[r] && t1 < Tn) {
                const float s = any ? dot<HSMAX>(Qs + lane * STRIDE, Kr + (warp * R + r) * HSMAX) * scale : 0.f;
                const float P = expf(s - lse_s[lane]);
                float dP = dot<HSMAX>(dOs + lane * STRIDE, Vr + (warp * R + r) * HSMAX);
                pd = P;
                if (drop.p > 0.f) {
                    const bool keep = drop.keep(((uint64_t)bh * Tn + t1) * Tn + t2);
                    pd = keep ? P * drop.scale : 0.f;
                    dP = keep ? dP * drop.scale : 0.f;
                }
                ds = any ? P * (dP - delta_s[lane]) : 0.f;
            }
#pragma unroll 8
            for (int j = 0; j < 32; j++) {
                const float wp = __shfl_sync(kFull, pd, j);
                const float wd = __shfl_sync(kFull, ds, j);
#pragma unroll
                for (int k = 0; k < NDL; k++) {
                    dv[r][k] += wp * dOs[j * STRIDE + lane + 32 * k];
                    dk[r][k] += wd * Qs[j * STRIDE + lane + 32 * k];
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; r++) {
        const int t2 = k0 + warp * R + r;
        if (t2 >= Tn) continue;
        T* row = dqkv + ((size_t)b * Tn + t2) * C3 + (size_t)h * HS;
#pragma unroll
        for (int k = 0; k < NDL; k++) {
            const int d = lane + 32 * k;
            if (d < HS) {
                row[C + d] = from_f<T>(dk[r][k] * scale);
                row[2 * C + d] = from_f<T>(dv[r][k]);
            }
        }
    }
}

void check_args(const char* k, int B, int Tn, int C, int NH, float p) {
    const std::string shape = "B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                              " C=" + std::to_string(C) + " NH=" + std::to_string(NH);
    detail::require(B >= 0 && Tn >= 0 && C > 0 && NH > 0, k, "bad shape " + shape);
    detail::require(C % NH == 0, k, "hidden_size must be a multiple of num_attention_heads: " + shape);
    detail::require(C / NH <= 128, k, "head size C/NH must be <= 128: " + shape);
    detail::require((long long)B * NH <= 65535, k, "B*NH must be <= 65535 (grid.y): " + shape);
    detail::require(p == p, k, "dropout_p is NaN");
}

Drop make_drop(float p, const DropoutKey& key) {
    Drop d;
    d.p = p;
    d.scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
    d.seed = key.seed;
    d.step = key.step;
    d.tensor_id = key.tensor_id;
    d.offset = key.offset;
    return d;
}

template <typename T, int NDL>
void launch_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B, int Tn, int C,
                    int NH, float scale, Drop drop, cudaStream_t stream) {
    const dim3 grid((Tn + Cfg<NDL>::ROWS - 1) / Cfg<NDL>::ROWS, B * NH);
    attention_forward_kernel<T, NDL><<<grid, 32 * kWarps, 0, stream>>>(out, lse, qkv, mask, Tn, C,
                                                                      NH, scale, drop);
    check_launch("attention_forward_kernel");
}

template <typename T, int NDL>
void launch_backward(T* dqkv, const float* delta, const T* dout, const T* qkv, const float* lse,
                     const int32_t* mask, int B, int Tn, int C, int NH, float scale, Drop drop,
                     cudaStream_t stream) {
    const dim3 grid((Tn + Cfg<NDL>::ROWS - 1) / Cfg<NDL>::ROWS, B * NH);
    attention_backward_dq_kernel<T, NDL><<<grid, 32 * kWarps, 0, stream>>>(
        dqkv, dout, qkv, lse, delta, mask, Tn, C, NH, scale, drop);
    check_launch("attention_backward_dq_kernel");
    attention_backward_dkdv_kernel<T, NDL><<<grid, 32 * kWarps, 0, stream>>>(
        dqkv, dout, qkv, lse, delta, mask, Tn, C, NH, scale, drop);
    check_launch("attention_backward_dkdv_kernel");
}
}  // namespace

template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, const int32_t* mask, int B, int Tn,
                       int C, int NH, float dropout_p, const DropoutKey& key,
                       cudaStream_t stream) {
    check_args("attention_forward", B, Tn, C, NH, dropout_p);
    if (B == 0 || Tn == 0) return;
    const int HS = C / NH;
    const float scale = 1.f / sqrtf((float)HS);
    // p <= 0: no dropout (the CPU skips it); p >= 1 keeps nothing (u < 1 <= p).
    const Drop drop = make_drop(dropout_p > 0.f ? dropout_p : 0.f, key);
    switch ((HS + 31) / 32) {
        case 1: launch_forward<T, 1>(out, lse, qkv, mask, B, Tn, C, NH, scale, drop, stream); break;
        case 2: launch_forward<T, 2>(out, lse, qkv, mask, B, Tn, C, NH, scale, drop, stream); break;
        case 3: launch_forward<T, 3>(out, lse, qkv, mask, B, Tn, C, NH, scale, drop, stream); break;
        default: launch_forward<T, 4>(out, lse, qkv, mask, B, Tn, C, NH, scale, drop, stream); break;
    }
}

template <typename T>
void attention_backward(T* dqkv, float* delta, const T* dout, const T* out, const T* qkv,
                        const float* lse, const int32_t* mask, int B, int Tn, int C, int NH,
                        float dropout_p, const DropoutKey& key, cudaStream_t stream) {
    check_args("attention_backward", B, Tn, C, NH, dropout_p);
    if (B == 0 || Tn == 0) return;
    const int HS = C / NH;
    const float scale = 1.f / sqrtf((float)HS);
    const Drop drop = make_drop(dropout_p > 0.f ? dropout_p : 0.f, key);
    const size_t rows = (size_t)B * NH * Tn;
    attention_delta_kernel<T><<<detail::grid_for(rows, 8), 256, 0, stream>>>(delta, dout, out, B, Tn,
                                                                            C, NH);
    check_launch("attention_delta_kernel");
    switch ((HS + 31) / 32) {
        case 1: launch_backward<T, 1>(dqkv, delta, dout, qkv, lse, mask, B, Tn, C, NH, scale, drop, stream); break;
        case 2: launch_backward<T, 2>(dqkv, delta, dout, qkv, lse, mask, B, Tn, C, NH, scale, drop, stream); break;
        case 3: launch_backward<T, 3>(dqkv, delta, dout, qkv, lse, mask, B, Tn, C, NH, scale, drop, stream); break;
        default: launch_backward<T, 4>(dqkv, delta, dout, qkv, lse, mask, B, Tn, C, NH, scale, drop, stream); break;
    }
}

#define NT_INSTANTIATE(T)                                                                     \
    template void attention_forward<T>(T*, float*, const T*, const int32_t*, int, int, int,    \
                                       int, float, const DropoutKey&, cudaStream_t);          \
    template void attention_backward<T>(T*, float*, const T*, const T*, const T*, const float*, \
                                        const int32_t*, int, int, int, int, float,            \
                                        const DropoutKey&, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
