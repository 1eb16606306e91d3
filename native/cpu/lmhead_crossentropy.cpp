// The causal LM's last step, lm_head + softmax cross-entropy, fused and chunked
// so that the (tokens x vocab) logits are never held whole (with a 49,152-token
// vocabulary they would be the largest tensor of a training step). Only rows
// that carry a target are computed at all: in supervised fine-tuning most
// prompt tokens are ignored (-100) and never need the head.
//
// Per chunk of up to `chunk` target rows H (gathered into scratch):
//   Z = H W^T (+ b);  loss_n = logsumexp(Z_n) - Z_n[y_n]
//   dZ = grad_scale (softmax(Z) - onehot(y));  dH = dZ W;  dW += dZ^T H;  db += sum_n dZ_n.
// The bias is BertForMaskedLM's decoder bias (cls.predictions.bias); Llama heads have none.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "cpu/onednn.h"
#include "cpu/kernels.h"
#include "cpu/simd_math.h"

namespace nt {

template <typename T>
double lmhead_crossentropy(T* dh, T* dW, const T* h, const T* W, const int32_t* targets, int N,
                           int C, int V, T grad_scale, T* scratch, int chunk, const uint16_t* Wbf16,
                           const T* bias, T* dbias, const Q8Weights* Wq8) {
    if (Wbf16 && (!std::is_same_v<T, float> || dW))
        throw std::invalid_argument("lmhead_crossentropy: a bf16 head is float only and frozen (dW must be null)");
    if (Wq8 && (!std::is_same_v<T, float> || dh || dW))
        throw std::invalid_argument("lmhead_crossentropy: a Q8_0 head is float only and gives the loss only (dh, dW null)");
    // linear_q8_0's workspace: a chunk's rows quantized
    std::vector<int8_t> xq(Wq8 ? (size_t)chunk * C : 0);
    std::vector<float> xd(xq.size() / 32);
    std::vector<int32_t> xs(xq.size() / 32);
    // Z = A W^T (transB) or A W, through the bf16 or Q8_0 copy when there is one.
    auto times_W = [&](bool transB, int M, int Nc, int K, const T* A, T* out) {
        if constexpr (std::is_same_v<T, float>) {
            if (Wbf16) return gemm_bf16w(transB, M, Nc, K, A, K, Wbf16, 0.0f, out, Nc);
            if (Wq8) return linear_q8_0(out, A, *Wq8, M, xq.data(), xd.data(), xs.data());
        }
        gemm<T>(false, transB, M, Nc, K, T(1), A, K, W, C, T(0), out, Nc);
    };
    std::vector<int> rows;
    rows.reserve(N);
    for (int n = 0; n < N; n++)
        if (targets[n] != -100) rows.push_back(n);
    if (dh) std::memset(dh, 0, (size_t)N * C * sizeof(T));
    T* Z = scratch;
    T* H = scratch + (size_t)chunk * V;
    double total = 0;
    for (size_t r0 = 0; r0 < rows.size(); r0 += chunk) {
        const int nr = (int)std::min<size_t>(chunk, rows.size() - r0);
        for (int r = 0; r < nr; r++) std::memcpy(H + (size_t)r * C, h + (size_t)rows[r0 + r] * C, C * sizeof(T));
        times_W(true, nr, V, C, H, Z);
        double chunk_loss = 0;
#pragma omp parallel for schedule(static) reduction(+ : chunk_loss)
        for (int r = 0; r < nr; r++) {
            T* z = Z + (size_t)r * V;
            const int y = targets[rows[r0 + r]];
            if (bias) {
#pragma omp simd
                for (int v = 0; v < V; v++) z[v] += bias[v];
            }
            T mx = -INFINITY;
#pragma omp simd reduction(max : mx)
            for (int v = 0; v < V; v++) mx = z[v] > mx ? z[v] : mx;
            T sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int v = 0; v < V; v++) sum += simd::exp(z[v] - mx);
            const T lse = mx + std::log(sum);
            chunk_loss += (double)(lse - z[y]);
            if (dh) {
#pragma omp simd
                for (int v = 0; v < V; v++) z[v] = grad_scale * simd::exp(z[v] - lse);
                z[y] -= grad_scale;
            }
        }
        total += chunk_loss;
        if (!dh) continue;
        // dH into H's rows (H is no longer needed once dW has used it)
        if (dW) gemm<T>(true, false, V, C, nr, T(1), Z, V, H, C, T(1), dW, C);
        if (dbias) {
#pragma omp parallel for schedule(static)
            for (int v = 0; v < V; v++) {
                T s = 0;
                for (int r = 0; r < nr; r++) s += Z[(size_t)r * V + v];
                dbias[v] += s;
            }
        }
        times_W(false, nr, C, V, Z, H);
        for (int r = 0; r < nr; r++) std::memcpy(dh + (size_t)rows[r0 + r] * C, H + (size_t)r * C, C * sizeof(T));
    }
    return total;
}

#define NT_INSTANTIATE(T)                                                                  \
    template double lmhead_crossentropy<T>(T*, T*, const T*, const T*, const int32_t*, int, \
                                           int, int, T, T*, int, const uint16_t*, const T*, T*,   \
                                           const Q8Weights*);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
