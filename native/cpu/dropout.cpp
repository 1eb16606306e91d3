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
//   keep    = u >= p;  out = inp * (keep ? 1 / (1 - p) : 0)
//
// hi32(step) is not used: keys repeat only after 2^32 optimizer steps.
// 1 / (1 - p) is computed in T from the float p (1 - p rounded in T first).
#include <cmath>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/philox.h"
#include "cpu/kernels.h"

namespace nt {
namespace detail {

// The scalar Philox and the key -> counter mapping come from
// common/philox.h, the header the CUDA kernels compile too, so both devices
// draw the same words by construction.
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    const philox::Words w = philox::philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
    for (int j = 0; j < 4; j++) out[j] = w.x[j];
}

namespace {
inline void uniform_words(const DropoutKey& key, uint64_t q, uint32_t x[4]) {
    const philox::Words w = philox::dropout_block(key.seed, key.step, key.tensor_id, q);
    for (int j = 0; j < 4; j++) x[j] = w.x[j];
}
inline float to_uniform(uint32_t x) { return philox::to_uniform(x); }

// Philox for the 8 consecutive blocks q0..q0+7: x[4 l + j] = word j of block
// q0 + l, i.e. the word of element index 4 q0 + 4 l + j. Same arithmetic as
// philox4x32_10, eight lanes at a time.
#if defined(__AVX2__)
// 32x32 -> 64 multiply of all eight lanes by m: mul_epu32 covers the even
// lanes, a 32-bit shift brings the odd lanes down; blends put hi/lo back in
// lane order.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
    const __m256i pe = _mm256_mul_epu32(a, m);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

void philox_words8(const DropoutKey& key, uint64_t q0, uint32_t x[32]) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; l++) {
        lo[l] = (uint32_t)(q0 + l);
        hi[l] = (uint32_t)((q0 + l) >> 32);
    }
    __m256i c0 = _mm256_load_si256((const __m256i*)lo);
    __m256i c1 = _mm256_load_si256((const __m256i*)hi);
    __m256i c2 = _mm256_set1_epi32((int)key.tensor_id);
    __m256i c3 = _mm256_set1_epi32((int)(uint32_t)key.step);
    __m256i k0 = _mm256_set1_epi32((int)(uint32_t)key.seed);
    __m256i k1 = _mm256_set1_epi32((int)(uint32_t)(key.seed >> 32));
    const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
    const __m256i w0 = _mm256_set1_epi32((int)0x9E3779B9u), w1 = _mm256_set1_epi32((int)0xBB67AE85u);
    for (int r = 0; r < 10; r++) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, hi0, lo0);
        mulhilo8(c2, m1, hi1, lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
        c1 = lo1;
        c3 = lo0;
        k0 = _mm256_add_epi32(k0, w0);
        k1 = _mm256_add_epi32(k1, w1);
    }
    // 4 x 8 transpose to block-major order.
    const __m256i a0 = _mm256_unpacklo_epi32(c0, c1), a1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i b0 = _mm256_unpacklo_epi32(c2, c3), b1 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i d0 = _mm256_unpacklo_epi64(a0, b0), d1 = _mm256_unpackhi_epi64(a0, b0);
    const __m256i d2 = _mm256_unpacklo_epi64(a1, b1), d3 = _mm256_unpackhi_epi64(a1, b1);
    _mm256_storeu_si256((__m256i*)(x + 0), _mm256_permute2x128_si256(d0, d1, 0x20));
    _mm256_storeu_si256((__m256i*)(x + 8), _mm256_permute2x128_si256(d2, d3, 0x20));
    _mm256_storeu_si256((__m256i*)(x + 16), _mm256_permute2x128_si256(d0, d1, 0x31));
    _mm256_storeu_si256((__m256i*)(x + 24), _mm256_permute2x128_si256(d2, d3, 0x31));
}
#else
void philox_words8(const DropoutKey& key, uint64_t q0, uint32_t x[32]) {
    for (int l = 0; l < 8; l++) uniform_words(key, q0 + l, x + 4 * l);
}
#endif
}  // namespace

// out[i] = in[i] * (kept ? scale : 0) for element indices index0 + i, i in
// [0, n), each drawn at key.offset + index0 + i; serial; out may alias in. A
// multiply, as torch's input * mask, so NaN/inf inputs stay NaN. Used by
// dropout_* and by attention. keep, when set, records element index0 + i's
// kept flag as bit (index0 + i) % 8 of keep[(index0 + i) / 8] (local indices:
// the offset moves the draws, not the mask's layout).
template <typename T>
void dropout_apply(T* out, const T* in, size_t n, uint64_t index0, float p,
                   const DropoutKey& key, uint8_t* keep) {
    if (n == 0) return;
    auto record = [keep](uint64_t j, bool kept) {
        keep[j >> 3] = (uint8_t)((keep[j >> 3] & ~(1u << (j & 7))) | ((uint32_t)kept << (j & 7)));
    };
    if (p <= 0.f || p >= 1.f) {  // torch: p = 0 keeps everything, p = 1 drops everything
        const bool kept = p <= 0.f;
        if (!kept)
            for (size_t i = 0; i < n; i++) out[i] = T(0);
        else if (out != in)
            for (size_t i = 0; i < n; i++) out[i] = in[i];
        if (keep)
            for (size_t i = 0; i < n; i++) record(index0 + i, kept);
        return;
    }
    const T scale = T(1) / (T(1) - T(p));
    const uint64_t off = key.offset;
    auto one = [&](uint64_t j) {  // j: local element index
        uint32_t x[4];
        uniform_words(key, (off + j) >> 2, x);
        const bool kept = to_uniform(x[(off + j) & 3]) >= p;
        out[j - index0] = in[j - index0] * (kept ? scale : T(0));
        if (keep) record(j, kept);
    };
    const uint64_t end = index0 + n;
    uint64_t idx = index0;
    // Bulk: 32 elements (8 Philox blocks) at a time from a drawn index that is
    // a multiple of 4; the 32 flags go in as 4 whole bytes when the local
    // index is a multiple of 8, else bit by bit.
    while (idx < end && ((off + idx) & 3) != 0) one(idx++);
    for (; idx + 32 <= end; idx += 32) {
        uint32_t x[32];
        philox_words8(key, (off + idx) >> 2, x);
        T* o = out + (idx - index0);
        const T* s = in + (idx - index0);
        uint32_t bits = 0;
#pragma omp simd reduction(| : bits)
        for (int e = 0; e < 32; e++) {
            const bool kept = to_uniform(x[e]) >= p;
            o[e] = s[e] * (kept ? scale : T(0));
            bits |= (uint32_t)kept << e;
        }
        if (keep && (idx & 7) == 0)
            for (int b = 0; b < 4; b++) keep[(idx >> 3) + b] = (uint8_t)(bits >> (8 * b));
        else if (keep)
            for (int e = 0; e < 32; e++) record(idx + e, (bits >> e) & 1u);
    }
    for (; idx < end; idx++) one(idx);
}
template void dropout_apply<float>(float*, const float*, size_t, uint64_t, float,
                                   const DropoutKey&, uint8_t*);
template void dropout_apply<double>(double*, const double*, size_t, uint64_t, float,
                                    const DropoutKey&, uint8_t*);

}  // namespace detail

float dropout_uniform(const DropoutKey& key, uint64_t index) {
    const uint64_t g = key.offset + index;
    uint32_t x[4];
    detail::uniform_words(key, g >> 2, x);
    return detail::to_uniform(x[g & 3]);
}

namespace {
// Thread chunks start at multiples of 4096 (whole mask bytes); each runs the 8-block bulk path.
template <typename T>
void dropout_parallel(T* out, const T* in, size_t n, float p, const DropoutKey& key, uint8_t* keep = nullptr) {
    constexpr size_t kChunk = 4096;
    const long long nchunks = (long long)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
    for (long long c = 0; c < nchunks; c++) {
        const size_t i0 = (size_t)c * kChunk, len = n - i0 < kChunk ? n - i0 : kChunk;
        detail::dropout_apply(out + i0, in + i0, len, i0, p, key, keep);
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

template <typename T>
void dropout_forward_mask(T* out, const T* inp, uint8_t* keep, size_t n, float p, const DropoutKey& key) {
    dropout_parallel(out, inp, n, p, key, keep);
}

// A byte of the mask at a time, its 8 bits as an 8-wide vector shift, so the
// loop vectorises (a per-element bit index does not).
template <typename T>
void dropout_apply_mask(T* out, const T* inp, const uint8_t* keep, size_t n, float p, bool accumulate) {
    const T scale = p >= 1.f ? T(0) : T(1) / (T(1) - T(p));
    const long long nb = (long long)(n / 8);
#pragma omp parallel for schedule(static)
    for (long long b = 0; b < nb; b++) {
        const uint32_t m = keep[b];
        T* o = out + 8 * b;
        const T* x = inp + 8 * b;
        if (accumulate) {
#pragma omp simd
            for (int e = 0; e < 8; e++) o[e] += x[e] * (((m >> e) & 1u) ? scale : T(0));
        } else {
#pragma omp simd
            for (int e = 0; e < 8; e++) o[e] = x[e] * (((m >> e) & 1u) ? scale : T(0));
        }
    }
    for (size_t i = 8 * (size_t)nb; i < n; i++) {
        const T v = inp[i] * (((keep[i >> 3] >> (i & 7)) & 1) ? scale : T(0));
        out[i] = accumulate ? out[i] + v : v;
    }
}

template void dropout_forward_mask<float>(float*, const float*, uint8_t*, size_t, float, const DropoutKey&);
template void dropout_forward_mask<double>(double*, const double*, uint8_t*, size_t, float, const DropoutKey&);
template void dropout_apply_mask<float>(float*, const float*, const uint8_t*, size_t, float, bool);
template void dropout_apply_mask<double>(double*, const double*, const uint8_t*, size_t, float, bool);
template void dropout_forward<float>(float*, const float*, size_t, float, const DropoutKey&);
template void dropout_forward<double>(double*, const double*, size_t, float,
                                      const DropoutKey&);
template void dropout_backward<float>(float*, const float*, size_t, float, const DropoutKey&);
template void dropout_backward<double>(double*, const double*, size_t, float,
                                       const DropoutKey&);

}  // namespace nt
