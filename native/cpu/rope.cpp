// Rotary position embedding (Su et al. 2021, RoFormer) in Hugging Face's
// rotate_half layout (modeling_llama.py apply_rotary_pos_emb): channel i pairs
// with channel i + HS/2, not with its neighbour as in the paper and in
// llama.cpp's GGUF layout. The rotation is orthogonal, so the backward is the
// same map with the angle negated.
#include <cmath>

#include "cpu/kernels.h"

namespace nt {

void rope_inv_freq(double* inv_freq, int HS, double theta, const RopeScaling& s) {
    const int half = HS / 2;
    for (int i = 0; i < half; i++) {
        // HF: 1 / base^(arange(0, dim, 2) / dim)
        double f = 1.0 / std::pow(theta, (2.0 * i) / HS);
        if (s.llama3) {
            // transformers modeling_rope_utils._compute_llama3_parameters
            const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            const double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / s.factor;
            } else if (wavelen >= high_wavelen) {
                const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                                      (s.high_freq_factor - s.low_freq_factor);
                f = (1.0 - smooth) * f / s.factor + smooth * f;
            }
        }
        inv_freq[i] = f;
    }
}

template <typename T>
void rope_tables(T* cos_t, T* sin_t, const double* inv_freq, int P, int HS) {
    const int half = HS / 2;
#pragma omp parallel for schedule(static)
    for (int p = 0; p < P; p++)
        for (int i = 0; i < half; i++) {
            const double a = (double)p * inv_freq[i];
            cos_t[(size_t)p * half + i] = (T)std::cos(a);
            sin_t[(size_t)p * half + i] = (T)std::sin(a);
        }
}

namespace {
template <typename T>
void rotate(T* x, const T* cos_t, const T* sin_t, const int32_t* pos, int N, int stride,
            int n_heads, int HS, T sign) {
    const int half = HS / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const T* c = cos_t + (size_t)pos[n] * half;
        const T* s = sin_t + (size_t)pos[n] * half;
        for (int h = 0; h < n_heads; h++) {
            T* x1 = x + (size_t)n * stride + (size_t)h * HS;
            T* x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                const T a = x1[i], b = x2[i], si = sign * s[i];
                x1[i] = a * c[i] - b * si;
                x2[i] = b * c[i] + a * si;
            }
        }
    }
}
}  // namespace

template <typename T>
void rope_forward(T* x, const T* cos_t, const T* sin_t, const int32_t* pos, int N, int stride,
                  int n_heads, int HS) {
    rotate(x, cos_t, sin_t, pos, N, stride, n_heads, HS, T(1));
}

template <typename T>
void rope_backward(T* dx, const T* cos_t, const T* sin_t, const int32_t* pos, int N, int stride,
                   int n_heads, int HS) {
    rotate(dx, cos_t, sin_t, pos, N, stride, n_heads, HS, T(-1));
}

#define NT_INSTANTIATE(T)                                                                  \
    template void rope_tables<T>(T*, T*, const double*, int, int);                         \
    template void rope_forward<T>(T*, const T*, const T*, const int32_t*, int, int, int, int); \
    template void rope_backward<T>(T*, const T*, const T*, const int32_t*, int, int, int, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
