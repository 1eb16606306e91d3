// Inverted dropout (torch.nn.Dropout) with a counter-based RNG, so backward
// regenerates the mask instead of storing it.
//
// RNG: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As
// Easy as 1, 2, 3", SC'11), checked against the Random123 known-answer vectors
// in native/test/gradcheck.cpp. One Philox call yields four 32-bit words, used
// by four consecutive element indices. The exact mapping, which the CUDA port
// must reproduce bit for bit:
//
//   element index i (uint64), q = i >> 2, word j = i & 3
//   counter = { lo32(q), hi32(q), tensor_id, lo32(step) }
//   key     = { lo32(seed), hi32(seed) }
//   x       = philox4x32_10(counter, key)[j]
//   u       = (x >> 8) * 2^-24            (top 24 bits, exact in float, [0, 1))
//   keep    = u >= p;  out = keep ? inp * (1 / (1 - p)) : 0
//
// hi32(step) is not used: keys repeat only after 2^32 optimizer steps.
// 1 / (1 - p) is computed in T from the float p (1 - p rounded in T first).
#include <cmath>

#include "cpu/kernels.h"

namespace nt {
namespace detail {

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // round multipliers
    constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)M0 * c0, p1 = (uint64_t)M1 * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += W0;
        k1 += W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

namespace {
inline void uniform_words(const DropoutKey& key, uint64_t q, uint32_t x[4]) {
    const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), key.tensor_id,
                             (uint32_t)key.step};
    const uint32_t k[2] = {(uint32_t)key.seed, (uint32_t)(key.seed >> 32)};
    philox4x32_10(ctr, k, x);
}
inline float to_uniform(uint32_t x) { return (float)(x >> 8) * 0x1p-24f; }
}  // namespace

// out[i] = in[i] * mask(index0 + i) * scale for i in [0, n); serial. out may
// alias in. Used by dropout_* and by attention (probability dropout).
template <typename T>
void dropout_apply(T* out, const T* in, size_t n, uint64_t index0, float p,
                   const DropoutKey& key) {
    if (n == 0) return;
    if (p <= 0.f) {
        if (out != in)
            for (size_t i = 0; i < n; i++) out[i] = in[i];
        return;
    }
    if (p >= 1.f) {  // torch: everything dropped
        for (size_t i = 0; i < n; i++) out[i] = T(0);
        return;
    }
    const T scale = T(1) / (T(1) - T(p));
    const uint64_t first = index0 >> 2, last = (index0 + n - 1) >> 2;
    for (uint64_t q = first; q <= last; q++) {
        uint32_t x[4];
        uniform_words(key, q, x);
        for (int j = 0; j < 4; j++) {
            const uint64_t idx = (q << 2) + j;
            if (idx < index0 || idx >= index0 + n) continue;
            const size_t i = idx - index0;
            out[i] = to_uniform(x[j]) >= p ? in[i] * scale : T(0);
        }
    }
}
template void dropout_apply<float>(float*, const float*, size_t, uint64_t, float,
                                   const DropoutKey&);
template void dropout_apply<double>(double*, const double*, size_t, uint64_t, float,
                                    const DropoutKey&);

}  // namespace detail

float dropout_uniform(const DropoutKey& key, uint64_t index) {
    uint32_t x[4];
    detail::uniform_words(key, index >> 2, x);
    return detail::to_uniform(x[index & 3]);
}

namespace {
// Chunks start at multiples of 4 * 1024 elements, so no Philox block is split.
template <typename T>
void dropout_parallel(T* out, const T* in, size_t n, float p, const DropoutKey& key) {
    constexpr size_t kChunk = 4096;
    const long long nchunks = (long long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
    for (long long c = 0; c < nchunks; c++) {
        const size_t i0 = (size_t)c * kChunk, len = n - i0 < kChunk ? n - i0 : kChunk;
        detail::dropout_apply(out + i0, in + i0, len, i0, p, key);
    }
}
}  // namespace

template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, float p, const DropoutKey& key) {
    dropout_parallel(out, inp, n, p, key);
}

// The mask is linear: dinp = dout * mask * scale, the same map as forward.
template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, float p, const DropoutKey& key) {
    dropout_parallel(dinp, dout, n, p, key);
}

template void dropout_forward<float>(float*, const float*, size_t, float, const DropoutKey&);
template void dropout_forward<double>(double*, const double*, size_t, float,
                                      const DropoutKey&);
template void dropout_backward<float>(float*, const float*, size_t, float, const DropoutKey&);
template void dropout_backward<double>(double*, const double*, size_t, float,
                                       const DropoutKey&);

}  // namespace nt
