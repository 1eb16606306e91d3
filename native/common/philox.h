// Philox4x32-10 counter-based RNG (Salmon, Moraes, Dror, Shaw, "Parallel Random
// Numbers: As Easy as 1, 2, 3", SC'11) and the dropout key -> uniform mapping,
// in one header that both the C++ compiler and nvcc compile, so the CPU and
// CUDA dropout masks are bit-identical by construction.
//
// The mapping (documented with the CPU kernel in native/cpu/dropout.cpp):
//   element index i (uint64), q = i >> 2, word j = i & 3
//   counter = { lo32(q), hi32(q), tensor_id, lo32(step) }
//   key     = { lo32(seed), hi32(seed) }
//   u       = (philox4x32_10(counter, key)[j] >> 8) * 2^-24      in [0, 1)
//   keep    = u >= p
// Only integer ops and one exact int->float conversion: no rounding-mode or
// fast-math dependence on either compiler.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define NT_HD __host__ __device__ __forceinline__
#else
#define NT_HD inline
#endif

namespace nt {
namespace philox {

struct Words {
    uint32_t x[4];
};

// 32x32 -> 64-bit product split in hi/lo words (__umulhi on the device).
NT_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
    hi = __umulhi(a, b);
    lo = a * b;
#else
    const uint64_t p = (uint64_t)a * b;
    hi = (uint32_t)(p >> 32);
    lo = (uint32_t)p;
#endif
}

NT_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                          uint32_t k1) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // round multipliers
    const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(M0, c0, hi0, lo0);
        mulhilo(M1, c2, hi1, lo1);
        const uint32_t n0 = hi1 ^ c1 ^ k0;
        const uint32_t n2 = hi0 ^ c3 ^ k1;
        c1 = lo1;
        c3 = lo0;
        c0 = n0;
        c2 = n2;
        k0 += W0;
        k1 += W1;
    }
    Words w;
    w.x[0] = c0;
    w.x[1] = c1;
    w.x[2] = c2;
    w.x[3] = c3;
    return w;
}

// The four words of Philox block q = index >> 2 for a dropout key.
NT_HD Words dropout_block(uint64_t seed, uint64_t step, uint32_t tensor_id, uint64_t q) {
    return philox4x32_10((uint32_t)q, (uint32_t)(q >> 32), tensor_id, (uint32_t)step,
                         (uint32_t)seed, (uint32_t)(seed >> 32));
}

// Top 24 bits as a float in [0, 1): exact, no rounding.
NT_HD float to_uniform(uint32_t x) { return (float)(x >> 8) * 5.9604644775390625e-08f; }

// Word j (0..3) by selects, so a device compiler keeps the block in registers.
NT_HD uint32_t word(const Words& w, unsigned j) {
    return j == 0 ? w.x[0] : j == 1 ? w.x[1] : j == 2 ? w.x[2] : w.x[3];
}

NT_HD float dropout_uniform(uint64_t seed, uint64_t step, uint32_t tensor_id, uint64_t index) {
    return to_uniform(word(dropout_block(seed, step, tensor_id, index >> 2), (unsigned)(index & 3)));
}

}  // namespace philox
}  // namespace nt
