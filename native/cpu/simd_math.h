// Float exp and erf written so that GCC/Clang vectorise them inside
// `#pragma omp simd` loops (libm's scalar expf/erff calls block
// vectorisation without -ffast-math). The double overloads are libm, so the
// float64 instantiations used by the finite-difference checks stay exact.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace nt::simd {

// e^x for x <= 88 (callers: softmax, x <= 0; GELU, -x^2/2 <= 0). Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2/2, then Cephes' degree-7 polynomial for
// e^r; about 1 ulp. Returns exactly 0 below ln(FLT_MIN) (no denormals) and
// for -inf; NaN stays NaN. Written without float branches or float min/max:
// under GCC's default -ftrapping-math those block if-conversion and so
// vectorisation; the clamp is on the integer exponent, underflow a bit mask.
inline float exp(float x) {
    const int32_t keep = -(int32_t)!(x < -87.33654475f);  // 0 where e^x < FLT_MIN
    int32_t ni = (int32_t)std::rint(x * 1.44269504088896341f);
    ni = std::max(std::min(ni, 127), -126);
    const float n = (float)ni;
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const int32_t pow2 = (ni + 127) << 23;  // bits of 2^n
    float scale;
    std::memcpy(&scale, &pow2, sizeof scale);
    const float res = y * scale;
    int32_t bits;
    std::memcpy(&bits, &res, sizeof bits);
    bits &= keep;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}
inline double exp(double x) { return std::exp(x); }

// erf(x) by Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 absolute, the
// formula PyTorch's vectorised CPU erf uses; ample for 1 + erf(x) in float.
inline float erf(float x) {
    const float ax = std::fabs(x);
    const float t = 1.0f / (1.0f + 0.3275911f * ax);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const float y = 1.0f - p * t * nt::simd::exp(-ax * ax);
    return std::copysign(y, x);
}
inline double erf(double x) { return std::erf(x); }

}  // namespace nt::simd
