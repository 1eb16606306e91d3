// Q8_0 weights: ggml's block_q8_0 quantization (ggml-quants.c
// quantize_row_q8_0_ref) and its int8 dot product (vec_dot_q8_0_q8_0), for
// generation from weights a quarter the size of fp32.
//
// Layout (Q8Weights): output rows in groups of 16; within a group, for each
// block of 32 inputs and each 4 of its inputs, the 16 rows' 4 bytes side by
// side (64 bytes), so one 512-bit multiply-add (or two 256-bit ones) takes 4
// inputs of 16 rows against 4 bytes of x broadcast: no horizontal sums, x read
// once per group. Bytes hold q + 128 (unsigned), what VNNI's dpbusd multiplies
// by signed bytes; the 128 sum(x_q) it adds is taken off per block. The
// scales of a block are the 16 rows' d side by side.
//
// Paths, chosen once at first use by what the CPU has: AVX-512 VNNI, AVX2,
// and a portable one (other CPUs, builds for other architectures). The SIMD
// functions carry their own target attributes, so the file builds without
// -march flags (test/gpu/emulate.sh compiles it so).
#if defined(__x86_64__) || defined(_M_X64)
#define NT_Q8_X86 1
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "kernels.h"

namespace nt {

namespace {

constexpr int kBlock = 32, kRows = Q8Weights::kRows;

// A value rounded to binary16 and back (to nearest even), as ggml stores d.
inline float through_fp16(float x) { return (float)(_Float16)x; }

// A rounded value clamped to [-127, 127]; NaN to 0. -128 never appears, so
// q + 128 fits a byte and the sign trick below cannot overflow.
inline int8_t clamp_q(float r) {
    return (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r == r ? r : 0.0f);
}

// round-half-away-from-zero(v), clamped: ggml's reference rounding of weights.
inline int8_t to_q(float v) { return clamp_q(std::round(v)); }

// A block's scale before any rounding: amax / 127.
inline float block_scale(const float* x) {
    float amax = 0.0f;
    for (int i = 0; i < kBlock; i++) amax = std::fmax(amax, std::fabs(x[i]));
    return amax / 127.0f;
}

// A weight block: d = amax / 127, q = round-half-away(x id) with id = 1/d
// computed before d is rounded to fp16 and stored (ggml's reference).
inline void quantize_weight_block(int8_t* q, float* d, const float* x) {
    const float dd = block_scale(x);
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    *d = through_fp16(dd);
    for (int i = 0; i < kBlock; i++) q[i] = to_q(x[i] * id);
}

// The activations' blocks of a row of n values: d = amax / 127 kept in fp32,
// q = x id rounded to nearest, ties to even (as ggml's SIMD
// quantize_row_q8_0 rounds them), s = sum(q). A decode step quantizes ~100k
// values: 0.5 ms a step written plainly, ~20x less in AVX2.
void quantize_row_scalar(int8_t* q, float* d, int32_t* s, const float* x, int n) {
    for (int b = 0; b < n / kBlock; b++, q += kBlock, x += kBlock) {
        d[b] = block_scale(x);
        const float id = d[b] != 0.0f ? 1.0f / d[b] : 0.0f;
        int sum = 0;
        for (int i = 0; i < kBlock; i++) sum += q[i] = clamp_q(std::nearbyint(x[i] * id));
        s[b] = sum;
    }
}

#ifdef NT_Q8_X86
__attribute__((target("avx2,fma")))
void quantize_row_avx2(int8_t* q, float* d, int32_t* s, const float* x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f), lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
    for (int b = 0; b < n / kBlock; b++, q += kBlock, x += kBlock) {
        __m256 v[4], m = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        d[b] = _mm_cvtss_f32(h) / 127.0f;
        const __m256 id = _mm256_set1_ps(d[b] != 0.0f ? 1.0f / d[b] : 0.0f);
        __m256i i32[4];
        for (int j = 0; j < 4; j++) {
            // min/max return their second operand for NaN: clamped NaN -> 127, as
            // a NaN activation has no meaningful product anyway.
            const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[j], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            i32[j] = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(r, lim), nlim));
        }
        // int32 -> int8 packs lanes within 128-bit halves; the permute restores order.
        const __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
        const __m256i i8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16a, i16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), i8);
        __m256i t = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
        __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4E));
        u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0xB1));
        s[b] = _mm_cvtsi128_si32(u);
    }
}
#endif

inline int32_t load4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// The activations quantized per row (q, d, sum q per block), and up to 4
// rows of them taken at once so each weight load serves 4 products.
struct Rows {
    const int8_t* q;
    const float* d;
    const int32_t* s;
    int nb, IC;
};

// out[r][0..16) for the R rows starting at n of one group: the arithmetic
// every path does, written plainly.
template <int R>
void group_scalar(float (*out)[kRows], const uint8_t* wq, const float* wd, const Rows& x, int n) {
    for (int r = 0; r < R; r++)
        for (int lane = 0; lane < kRows; lane++) out[r][lane] = 0.0f;
    for (int b = 0; b < x.nb; b++)
        for (int r = 0; r < R; r++) {
            const int8_t* xq = x.q + (size_t)(n + r) * x.IC + b * kBlock;
            const float xd = x.d[(size_t)(n + r) * x.nb + b];
            for (int lane = 0; lane < kRows; lane++) {
                int32_t dot = 0;
                for (int i = 0; i < kBlock; i++)
                    dot += ((int32_t)wq[((size_t)b * 8 + i / 4) * 64 + lane * 4 + i % 4] - 128) * xq[i];
                out[r][lane] += wd[(size_t)b * kRows + lane] * xd * (float)dot;
            }
        }
}

#ifdef NT_Q8_X86
// The same on AVX2, per 8-row half of the group: maddubs multiplies |w| by x
// carrying w's sign (pair sums within int16: 2 * 127 * 127); the q + 128
// bytes become q again by flipping the top bit.
template <int R>
__attribute__((target("avx2,fma")))
void group_avx2(float (*out)[kRows], const uint8_t* wq, const float* wd, const Rows& x, int n) {
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8((char)0x80);
    for (int half = 0; half < 2; half++) {
        __m256 acc[R];
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
        for (int b = 0; b < x.nb; b++) {
            __m256i isum[R];
            for (int r = 0; r < R; r++) isum[r] = _mm256_setzero_si256();
            for (int k = 0; k < kBlock / 4; k++) {
                const __m256i w = _mm256_xor_si256(
                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + ((size_t)b * 8 + k) * 64 + 32 * half)), flip);
                const __m256i aw = _mm256_sign_epi8(w, w);
                for (int r = 0; r < R; r++) {
                    const __m256i xb = _mm256_set1_epi32(load4(x.q + (size_t)(n + r) * x.IC + b * kBlock + 4 * k));
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xb, w)), ones));
                }
            }
            const __m256 d = _mm256_loadu_ps(wd + (size_t)b * kRows + 8 * half);
            for (int r = 0; r < R; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x.d[(size_t)(n + r) * x.nb + b])),
                                         _mm256_cvtepi32_ps(isum[r]), acc[r]);
        }
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out[r] + 8 * half, acc[r]);
    }
}

// GCC 12's avx512fintrin.h builds _mm512_undefined_*() from a
// self-initialised variable, which -Wuninitialized reports at every use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void group_avx512vnni(float (*out)[kRows], const uint8_t* wq, const float* wd, const Rows& x, int n) {
    __m512 acc[R];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < x.nb; b++) {
        __m512i isum[R];
        for (int r = 0; r < R; r++) isum[r] = _mm512_setzero_si512();
        for (int k = 0; k < kBlock / 4; k++) {
            const __m512i w = _mm512_loadu_si512(wq + ((size_t)b * 8 + k) * 64);
            for (int r = 0; r < R; r++)
                isum[r] = _mm512_dpbusd_epi32(isum[r], w, _mm512_set1_epi32(load4(x.q + (size_t)(n + r) * x.IC + b * kBlock + 4 * k)));
        }
        const __m512 d = _mm512_loadu_ps(wd + (size_t)b * kRows);
        for (int r = 0; r < R; r++) {
            const size_t xb = (size_t)(n + r) * x.nb + b;
            const __m512i exact = _mm512_sub_epi32(isum[r], _mm512_set1_epi32(128 * x.s[xb]));
            acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x.d[xb])), _mm512_cvtepi32_ps(exact), acc[r]);
        }
    }
    for (int r = 0; r < R; r++) _mm512_storeu_ps(out[r], acc[r]);
}
#pragma GCC diagnostic pop
#endif  // NT_Q8_X86

enum class Isa { kUnset, kScalar, kAvx2, kAvx512Vnni };
const char* const kIsaNames[] = {"", "scalar", "avx2", "avx512vnni"};

bool cpu_has(Isa i) {
    if (i == Isa::kScalar) return true;
#ifdef NT_Q8_X86
    __builtin_cpu_init();
    if (i == Isa::kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (i == Isa::kAvx512Vnni)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return false;
}

std::atomic<Isa> g_isa{Isa::kUnset};

Isa isa() {
    Isa i = g_isa.load(std::memory_order_relaxed);
    if (i == Isa::kUnset) {
        i = cpu_has(Isa::kAvx512Vnni) ? Isa::kAvx512Vnni : cpu_has(Isa::kAvx2) ? Isa::kAvx2 : Isa::kScalar;
        // NODETUNE_Q8_ISA=avx2 (or scalar) takes a lesser path: the tests of
        // the engine's AVX2 paths, and benchmarks of them, on a VNNI machine.
        if (const char* name = std::getenv("NODETUNE_Q8_ISA"))
            for (Isa j : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni})
                if (std::string(name) == kIsaNames[(int)j] && cpu_has(j)) i = j;
        g_isa.store(i, std::memory_order_relaxed);
    }
    return i;
}

template <int R>
void group(Isa i, float (*out)[kRows], const uint8_t* wq, const float* wd, const Rows& x, int n) {
#ifdef NT_Q8_X86
    if (i == Isa::kAvx512Vnni) return group_avx512vnni<R>(out, wq, wd, x, n);
    if (i == Isa::kAvx2) return group_avx2<R>(out, wq, wd, x, n);
#endif
    group_scalar<R>(out, wq, wd, x, n);
}

}  // namespace

const char* q8_0_isa() { return kIsaNames[(int)isa()]; }

bool q8_0_use_isa(const std::string& name) {
    for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni})
        if (name == kIsaNames[(int)i]) {
            if (!cpu_has(i)) return false;
            g_isa.store(i);
            return true;
        }
    return false;
}

Q8Weights::Q8Weights(int OC_, int IC_) : OC(OC_), IC(IC_) {
    if (OC <= 0 || IC <= 0 || IC % kBlock != 0)
        throw std::invalid_argument("Q8Weights: expected OC > 0 and IC a positive multiple of 32, got OC " +
                                    std::to_string(OC) + ", IC " + std::to_string(IC));
    const size_t rows = (size_t)(OC + kRows - 1) / kRows * kRows;
    q.assign(rows * IC, 128);  // q = 0
    d.assign(rows * (IC / kBlock), 0.0f);
}

namespace {

void check_rows(const Q8Weights& w, int row0, int rows, const char* what) {
    if (row0 < 0 || rows < 0 || row0 + rows > w.OC)
        throw std::invalid_argument(std::string(what) + ": rows [" + std::to_string(row0) + ", " +
                                    std::to_string(row0 + rows) + ") are outside the " + std::to_string(w.OC) + " rows");
}

// Where row o's byte for input i and its block's scale sit in the layout.
inline size_t q_index(const Q8Weights& w, int o, int i) {
    return (size_t)(o / kRows) * kRows * w.IC + ((size_t)(i / kBlock) * 8 + (i % kBlock) / 4) * 64 + (o % kRows) * 4 + i % 4;
}
inline size_t d_index(const Q8Weights& w, int o, int b) {
    return (size_t)(o / kRows) * kRows * (w.IC / kBlock) + (size_t)b * kRows + o % kRows;
}

}  // namespace

// quantize_q8_0 and dequantize_q8_0 run single-threaded: they serve
// setWeight and getWeight, called on the JS thread, and an OpenMP team opened there
// (libgomp keeps one per calling thread) left the compute thread's decode
// steps 4x slower (more OpenMP threads than cores). Quantizing SmolLM2-135M
// this way adds about 0.5 s to its load (1.3 s against fp32 0.85-1.0 s).
void quantize_q8_0(Q8Weights& w, const float* W, int row0, int rows) {
    check_rows(w, row0, rows, "quantize_q8_0");
    const int nb = w.IC / kBlock;
    for (int r = 0; r < rows; r++) {
        const int o = row0 + r;
        for (int b = 0; b < nb; b++) {
            int8_t q[kBlock];
            quantize_weight_block(q, &w.d[d_index(w, o, b)], W + (size_t)r * w.IC + (size_t)b * kBlock);
            for (int i = 0; i < kBlock; i++) w.q[q_index(w, o, b * kBlock + i)] = (uint8_t)(q[i] + 128);
        }
    }
}

void dequantize_q8_0(float* W, const Q8Weights& w, int row0, int rows) {
    check_rows(w, row0, rows, "dequantize_q8_0");
    const int nb = w.IC / kBlock;
    // In the layout's order (each 64 bytes: 16 rows x 4 inputs), the group's
    // lanes inside [row0, row0 + rows) only.
    for (int g = row0 / kRows; g * kRows < row0 + rows; g++) {
        const int lo = std::max(row0 - g * kRows, 0), hi = std::min(row0 + rows - g * kRows, kRows);
        const uint8_t* gq = w.q.data() + (size_t)g * kRows * w.IC;
        const float* gd = w.d.data() + (size_t)g * kRows * nb;
        for (int b = 0; b < nb; b++)
            for (int k = 0; k < kBlock / 4; k++) {
                const uint8_t* src = gq + ((size_t)b * 8 + k) * 64;
                for (int lane = lo; lane < hi; lane++) {
                    float* dst = W + (size_t)(g * kRows + lane - row0) * w.IC + b * kBlock + 4 * k;
                    const float d = gd[(size_t)b * kRows + lane];
                    for (int j = 0; j < 4; j++) dst[j] = d * (float)((int)src[lane * 4 + j] - 128);
                }
            }
    }
}

void linear_q8_0(float* out, const float* x, const Q8Weights& w, int N, int8_t* xq, float* xd, int32_t* xs) {
    const int IC = w.IC, OC = w.OC, nb = IC / kBlock, groups = (OC + kRows - 1) / kRows;
    const Isa i = isa();
#pragma omp parallel for schedule(static) if ((size_t)N * nb > 1024)
    for (int n = 0; n < N; n++) {
        int8_t* q = xq + (size_t)n * IC;
        float* d = xd + (size_t)n * nb;
        int32_t* s = xs + (size_t)n * nb;
#ifdef NT_Q8_X86
        if (i != Isa::kScalar) {
            quantize_row_avx2(q, d, s, x + (size_t)n * IC, IC);
            continue;
        }
#endif
        quantize_row_scalar(q, d, s, x + (size_t)n * IC, IC);
    }
    const Rows rows{xq, xd, xs, nb, IC};
    // Each group's weights (16 x IC bytes) come from memory once and stay in
    // L1 while the rows pass, 4 at a time.
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) {
        const uint8_t* gq = w.q.data() + (size_t)g * kRows * IC;
        const float* gd = w.d.data() + (size_t)g * kRows * nb;
        const int width = std::min(kRows, OC - g * kRows);
        float tile[4][kRows];
        for (int n = 0; n < N;) {
            const int R = std::min(4, N - n);
            if (R == 4) group<4>(i, tile, gq, gd, rows, n);
            else if (R == 3) group<3>(i, tile, gq, gd, rows, n);
            else if (R == 2) group<2>(i, tile, gq, gd, rows, n);
            else group<1>(i, tile, gq, gd, rows, n);
            for (int r = 0; r < R; r++) std::memcpy(out + (size_t)(n + r) * OC + (size_t)g * kRows, tile[r], width * sizeof(float));
            n += R;
        }
    }
}

}  // namespace nt
