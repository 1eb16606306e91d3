// Checks of every CPU kernel in native/cpu/kernels.h, printed as one JSON
// object on stdout and asserted by test/kernels.test.ts:
//   {"checks":[{"kernel":"layernorm_backward","input":"inp","method":
//     "finite_difference","case":"...","threads":1,"max_rel_err":1e-10,
//     "tol":1e-6,"pass":true}, ...]}
// Exit status 1 when any check fails.
//
// Methods:
//   finite_difference  float64 analytic gradient vs central differences
//                      (step 1e-6) of sum(out * R) for a fixed random R;
//   reference          float64 kernel output vs a direct loop transcription
//                      of the formula (HF / PyTorch semantics);
//   float32_vs_float64 float instantiation vs double on the same inputs;
//   property           RNG known answers, mask rate, key sensitivity,
//                      determinism, error handling.
// Error measure: max|got - want| / max(max|want|, 1e-12); NaN fails.
// Outputs are poisoned with NaN before each call so an unwritten element
// fails; accumulated (+=) gradients are pre-filled with random values that are
// subtracted afterwards, so a write (=) instead of += fails too.
// The whole suite runs twice, with 1 and with 3 OpenMP threads.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/onednn.h"
#include "cpu/kernels.h"

namespace nt::detail {
// Defined in native/cpu/dropout.cpp; not part of the engine-facing header.
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
}  // namespace nt::detail

namespace {

using V = std::vector<double>;
using FV = std::vector<float>;
using IV = std::vector<int32_t>;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

constexpr double kFdTol = 1e-6;    // float64 central differences, step 1e-6
constexpr double kRefTol = 1e-12;  // float64 kernel vs float64 transcription
constexpr double kF32Tol = 1e-5;   // float32 vs float64 forward

struct Check {
    std::string kernel, input, method, kase;
    int threads;
    double err, tol;
    bool pass;
};
std::vector<Check> g_checks;
int g_threads = 1;

void record(const std::string& kernel, const std::string& input, const std::string& method,
            const std::string& kase, double err, double tol) {
    const bool pass = std::isfinite(err) && err < tol;
    g_checks.push_back({kernel, input, method, kase, g_threads, err, tol, pass});
}

struct Rng {
    std::mt19937_64 gen;
    explicit Rng(uint64_t seed) : gen(seed) {}
    double uni(double a, double b) { return std::uniform_real_distribution<double>(a, b)(gen); }
    V vec(size_t n, double a = -1, double b = 1) {
        V v(n);
        for (auto& x : v) x = uni(a, b);
        return v;
    }
    int32_t randint(int lo, int hi) {  // [lo, hi]
        return std::uniform_int_distribution<int32_t>(lo, hi)(gen);
    }
};

double rel_err(const V& got, const V& want) {
    if (got.size() != want.size()) return kNaN;
    double md = 0, mw = 0;
    for (size_t i = 0; i < got.size(); i++) {
        const double d = std::fabs(got[i] - want[i]);
        if (std::isnan(d)) return kNaN;
        md = std::max(md, d);
        mw = std::max(mw, std::fabs(want[i]));
    }
    return md / std::max(mw, 1e-12);
}
double rel_err(const FV& got, const V& want) { return rel_err(V(got.begin(), got.end()), want); }

FV to_f(const V& v) { return FV(v.begin(), v.end()); }
V nans(size_t n) { return V(n, kNaN); }
FV fnans(size_t n) { return FV(n, std::numeric_limits<float>::quiet_NaN()); }
V minus(const V& a, const V& b) {
    V r(a.size());
    for (size_t i = 0; i < a.size(); i++) r[i] = a[i] - b[i];
    return r;
}
double dot(const V& a, const V& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// Central-difference gradient of objective() with respect to x (perturbed in place).
V numgrad(V& x, const std::function<double()>& objective) {
    const double h = 1e-6;
    V g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        const double xi = x[i];
        x[i] = xi + h;
        const double fp = objective();
        x[i] = xi - h;
        const double fm = objective();
        x[i] = xi;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

void fd(const std::string& kernel, const std::string& input, const std::string& kase, V& x,
        const V& analytic, const std::function<double()>& objective) {
    record(kernel, input, "finite_difference", kase, rel_err(analytic, numgrad(x, objective)),
           kFdTol);
}

// ---------------------------------------------------------------- gemm ----
void check_gemm(Rng& rng) {
    const int M = 5, N = 7, K = 6, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int arows = ta ? K : M, acols = ta ? M : K;
            const int brows = tb ? N : K, bcols = tb ? K : N;
            const int lda = acols + pad, ldb = bcols + pad, ldc = N + pad;
            V A = rng.vec((size_t)arows * lda), Bm = rng.vec((size_t)brows * ldb);
            V C0 = rng.vec((size_t)M * ldc);
            const double alpha = 0.7, beta = -1.3;
            V want = C0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                             (tb ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j]);
                    want[(size_t)i * ldc + j] = alpha * s + beta * C0[(size_t)i * ldc + j];
                }
            const std::string kase = std::string("transA=") + (ta ? "1" : "0") +
                                     ",transB=" + (tb ? "1" : "0") + ",alpha,beta,ld>cols";
            V C = C0;
            nt::gemm<double>(ta, tb, M, N, K, alpha, A.data(), lda, Bm.data(), ldb, beta,
                             C.data(), ldc);
            record("gemm", "C", "reference", kase, rel_err(C, want), kRefTol);
            FV Af = to_f(A), Bf = to_f(Bm), Cf = to_f(C0);
            nt::gemm<float>(ta, tb, M, N, K, (float)alpha, Af.data(), lda, Bf.data(), ldb,
                            (float)beta, Cf.data(), ldc);
            record("gemm", "C", "float32_vs_float64", kase, rel_err(Cf, want), kF32Tol);
        }
    // beta = 0 must ignore (NaN) contents of C, as BLAS specifies.
    V A = rng.vec(M * K), Bm = rng.vec(K * N), C = nans(M * N), want(M * N, 0.0);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            for (int k = 0; k < K; k++) want[i * N + j] += A[i * K + k] * Bm[k * N + j];
    nt::gemm<double>(false, false, M, N, K, 1.0, A.data(), K, Bm.data(), N, 0.0, C.data(), N);
    record("gemm", "C", "reference", "beta=0 over NaN-poisoned C", rel_err(C, want), kRefTol);
}

// ----------------------------------------------------------- embedding ----
void check_embedding(Rng& rng) {
    const int B = 2, T = 5, C = 32, Vn = 4, P = 7, TV = 2;
    IV ids(B * T), tt(B * T);
    for (auto& x : ids) x = rng.randint(0, Vn - 1);  // Vn < B*T: repeated ids
    for (auto& x : tt) x = rng.randint(0, TV - 1);
    V wte = rng.vec(Vn * C), wpe = rng.vec(P * C), wtt = rng.vec(TV * C);
    V R = rng.vec(B * T * C);
    auto forward = [&](V& out) {
        out = nans(B * T * C);
        nt::embedding_forward<double>(out.data(), ids.data(), tt.data(), wte.data(), wpe.data(),
                                      wtt.data(), B, T, C);
    };
    V out, want(B * T * C);
    forward(out);
    for (int bt = 0; bt < B * T; bt++)
        for (int c = 0; c < C; c++)
            want[bt * C + c] = wte[ids[bt] * C + c] + wpe[(bt % T) * C + c] + wtt[tt[bt] * C + c];
    record("embedding_forward", "out", "reference", "B=2,T=5,C=32", rel_err(out, want), kRefTol);
    FV fo = fnans(B * T * C), fte = to_f(wte), fpe = to_f(wpe), ftt = to_f(wtt);
    nt::embedding_forward<float>(fo.data(), ids.data(), tt.data(), fte.data(), fpe.data(),
                                 ftt.data(), B, T, C);
    record("embedding_forward", "out", "float32_vs_float64", "B=2,T=5,C=32", rel_err(fo, out),
           kF32Tol);

    V g0te = rng.vec(Vn * C), g0pe = rng.vec(P * C), g0tt = rng.vec(TV * C);
    V dte = g0te, dpe = g0pe, dtt = g0tt;
    nt::embedding_backward<double>(dte.data(), dpe.data(), dtt.data(), R.data(), ids.data(),
                                   tt.data(), B, T, C);
    auto obj = [&]() {
        V o;
        forward(o);
        return dot(o, R);
    };
    const std::string kase = "repeated ids, accumulate onto random dweight";
    fd("embedding_backward", "wte", kase, wte, minus(dte, g0te), obj);
    fd("embedding_backward", "wpe", kase, wpe, minus(dpe, g0pe), obj);
    fd("embedding_backward", "wtt", kase, wtt, minus(dtt, g0tt), obj);
    // Frozen tables (null gradients) leave the others unchanged.
    V dte2 = g0te;
    nt::embedding_backward<double>(dte2.data(), nullptr, nullptr, R.data(), ids.data(),
                                   tt.data(), B, T, C);
    record("embedding_backward", "wte", "reference", "dwpe=dwtt=null", rel_err(dte2, dte),
           kRefTol);
}

// ----------------------------------------------------------- layernorm ----
void check_layernorm(Rng& rng) {
    const int N = 10, C = 32;
    const double eps = 1e-12;
    V inp = rng.vec(N * C, 2.0, 4.0);  // mean far from 0: two-pass variance matters
    V w = rng.vec(C, 0.5, 1.5), b = rng.vec(C), R = rng.vec(N * C);
    auto forward = [&](V& out, V& mean, V& rstd) {
        out = nans(N * C);
        mean = nans(N);
        rstd = nans(N);
        nt::layernorm_forward<double>(out.data(), mean.data(), rstd.data(), inp.data(),
                                      w.data(), b.data(), N, C, eps);
    };
    V out, mean, rstd, want(N * C), wmean(N), wrstd(N);
    forward(out, mean, rstd);
    for (int n = 0; n < N; n++) {
        double s = 0, v = 0;
        for (int c = 0; c < C; c++) s += inp[n * C + c];
        wmean[n] = s / C;
        for (int c = 0; c < C; c++) v += std::pow(inp[n * C + c] - wmean[n], 2);
        wrstd[n] = 1 / std::sqrt(v / C + eps);
        for (int c = 0; c < C; c++)
            want[n * C + c] = (inp[n * C + c] - wmean[n]) * wrstd[n] * w[c] + b[c];
    }
    const std::string kf = "N=10,C=32,eps=1e-12";
    record("layernorm_forward", "out", "reference", kf, rel_err(out, want), kRefTol);
    record("layernorm_forward", "mean", "reference", kf, rel_err(mean, wmean), kRefTol);
    record("layernorm_forward", "rstd", "reference", kf, rel_err(rstd, wrstd), kRefTol);
    FV fo = fnans(N * C), fm = fnans(N), fr = fnans(N), fi = to_f(inp), fw = to_f(w),
       fb = to_f(b);
    nt::layernorm_forward<float>(fo.data(), fm.data(), fr.data(), fi.data(), fw.data(),
                                 fb.data(), N, C, 1e-12f);
    record("layernorm_forward", "out", "float32_vs_float64", kf, rel_err(fo, out), kF32Tol);

    V dinp = nans(N * C), g0w = rng.vec(C), g0b = rng.vec(C), dw = g0w, db = g0b;
    nt::layernorm_backward<double>(dinp.data(), dw.data(), db.data(), R.data(), inp.data(),
                                   w.data(), mean.data(), rstd.data(), N, C);
    auto obj = [&]() {
        V o, m, r;
        forward(o, m, r);
        return dot(o, R);
    };
    const std::string kb = "N=10,C=32, dweight/dbias accumulate";
    fd("layernorm_backward", "inp", kb, inp, dinp, obj);
    fd("layernorm_backward", "weight", kb, w, minus(dw, g0w), obj);
    fd("layernorm_backward", "bias", kb, b, minus(db, g0b), obj);
    V dinp2 = nans(N * C);
    nt::layernorm_backward<double>(dinp2.data(), nullptr, nullptr, R.data(), inp.data(),
                                   w.data(), mean.data(), rstd.data(), N, C);
    record("layernorm_backward", "inp", "reference", "dweight=dbias=null", rel_err(dinp2, dinp),
           kRefTol);
}

// -------------------------------------------------------------- linear ----
void check_linear(Rng& rng, bool with_bias, bool accumulate) {
    const int N = 10, IC = 12, OC = 7;
    V inp = rng.vec(N * IC), w = rng.vec(OC * IC), b = rng.vec(OC), R = rng.vec(N * OC);
    const double* bp = with_bias ? b.data() : nullptr;
    auto forward = [&](V& out) {
        out = nans(N * OC);
        nt::linear_forward<double>(out.data(), inp.data(), w.data(), with_bias ? b.data() : nullptr,
                                   N, IC, OC);
    };
    const std::string kase = std::string(with_bias ? "bias" : "no bias") +
                             (accumulate ? ", accumulate_dinp" : "") + ",N=10,IC=12,OC=7";
    V out, want(N * OC);
    forward(out);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bp ? bp[o] : 0.0;
            for (int i = 0; i < IC; i++) s += inp[n * IC + i] * w[o * IC + i];
            want[n * OC + o] = s;
        }
    record("linear_forward", "out", "reference", kase, rel_err(out, want), kRefTol);
    FV fo = fnans(N * OC), fi = to_f(inp), fw = to_f(w), fb = to_f(b);
    nt::linear_forward<float>(fo.data(), fi.data(), fw.data(), with_bias ? fb.data() : nullptr, N,
                              IC, OC);
    record("linear_forward", "out", "float32_vs_float64", kase, rel_err(fo, out), kF32Tol);

    V g0i = accumulate ? rng.vec(N * IC) : nans(N * IC), dinp = g0i;
    V g0w = rng.vec(OC * IC), dw = g0w, g0b = rng.vec(OC), db = g0b;
    nt::linear_backward<double>(dinp.data(), dw.data(), with_bias ? db.data() : nullptr,
                                R.data(), inp.data(), w.data(), N, IC, OC, accumulate);
    if (!accumulate) std::fill(g0i.begin(), g0i.end(), 0.0);
    auto obj = [&]() {
        V o;
        forward(o);
        return dot(o, R);
    };
    fd("linear_backward", "inp", kase, inp, minus(dinp, g0i), obj);
    fd("linear_backward", "weight", kase, w, minus(dw, g0w), obj);
    if (with_bias) fd("linear_backward", "bias", kase, b, minus(db, g0b), obj);
    else record("linear_backward", "bias", "reference", kase + ", dbias untouched",
                rel_err(db, g0b), kRefTol);
}

// ---------------------------------------------------- gelu, tanh ----------
void check_pointwise(Rng& rng) {
    const size_t n = 64;
    V x = rng.vec(n, -5, 5), R = rng.vec(n);
    x[0] = 0;
    for (int which = 0; which < 2; which++) {
        const bool gelu = which == 0;
        const std::string fwd = gelu ? "gelu_forward" : "tanh_forward";
        const std::string bwd = gelu ? "gelu_backward" : "tanh_backward";
        auto forward = [&](V& out) {
            out = nans(n);
            if (gelu) nt::gelu_forward<double>(out.data(), x.data(), n);
            else nt::tanh_forward<double>(out.data(), x.data(), n);
        };
        V out, want(n);
        forward(out);
        for (size_t i = 0; i < n; i++)
            want[i] = gelu ? 0.5 * x[i] * std::erfc(-x[i] / std::sqrt(2.0)) : std::tanh(x[i]);
        record(fwd, "out", "reference", "x in [-5,5]", rel_err(out, want), kRefTol);
        // Large n exercises the vectorised body and its tail in float.
        const size_t nf = 4099;
        V xb = rng.vec(nf, -6, 6), ob = nans(nf);
        FV xf = to_f(xb), of = fnans(nf);
        if (gelu) {
            nt::gelu_forward<double>(ob.data(), xb.data(), nf);
            nt::gelu_forward<float>(of.data(), xf.data(), nf);
        } else {
            nt::tanh_forward<double>(ob.data(), xb.data(), nf);
            nt::tanh_forward<float>(of.data(), xf.data(), nf);
        }
        record(fwd, "out", "float32_vs_float64", "n=4099, x in [-6,6]", rel_err(of, ob), kF32Tol);
        V dob = rng.vec(nf), gb = nans(nf);
        FV dof = to_f(dob), gf = fnans(nf);
        if (gelu) {
            nt::gelu_backward<double>(gb.data(), xb.data(), dob.data(), nf);
            nt::gelu_backward<float>(gf.data(), xf.data(), dof.data(), nf);
        } else {
            nt::tanh_backward<double>(gb.data(), ob.data(), dob.data(), nf);
            FV of2 = to_f(ob);
            nt::tanh_backward<float>(gf.data(), of2.data(), dof.data(), nf);
        }
        record(bwd, "inp", "float32_vs_float64", "n=4099, x in [-6,6]", rel_err(gf, gb), kF32Tol);

        V dinp = nans(n);
        if (gelu) nt::gelu_backward<double>(dinp.data(), x.data(), R.data(), n);
        else nt::tanh_backward<double>(dinp.data(), out.data(), R.data(), n);
        fd(bwd, "inp", "x in [-5,5]", x, dinp, [&]() {
            V o;
            forward(o);
            return dot(o, R);
        });
    }
}

// ------------------------------------------------------------- dropout ----
uint32_t top24_equal(float u, uint32_t word) { return u == (float)(word >> 8) * 0x1p-24f; }

void check_dropout(Rng& rng) {
    // Random123 known-answer vectors for Philox4x32-10.
    const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1}};
    int bad = 0;
    for (auto& k : kat) {
        uint32_t out[4];
        nt::detail::philox4x32_10(k, k + 4, out);
        for (int j = 0; j < 4; j++) bad += out[j] != k[6 + j];
    }
    record("dropout_uniform", "philox4x32_10", "property", "Random123 known answers (12 words wrong)",
           bad, 0.5);
    // The documented mapping: counter = {lo(q), hi(q), tensor_id, lo(step)},
    // key = {lo(seed), hi(seed)}, q = index >> 2, word index & 3.
    bad = 0;
    const nt::DropoutKey k1{0x299f31d0a4093822ull, 0x03707344ull, 0x13198a2eu};
    uint32_t words[4];
    const uint32_t ctr[4] = {0x243f6a88, 0x05a308d3, 0x13198a2e, 0x03707344};
    const uint32_t key[2] = {0xa4093822, 0x299f31d0};
    nt::detail::philox4x32_10(ctr, key, words);
    const uint64_t q = 0x05a308d3243f6a88ull;
    for (int j = 0; j < 4; j++) bad += !top24_equal(nt::dropout_uniform(k1, q * 4 + j), words[j]);
    for (int j = 0; j < 4; j++)
        bad += !top24_equal(nt::dropout_uniform({0, 0, 0}, j), kat[0][6 + j]);
    record("dropout_uniform", "index", "property", "counter/key mapping (words wrong)", bad, 0.5);

    // Mask rate over 1e6 draws within 5 standard deviations of p.
    const float p = 0.1f;
    const size_t n = 1000000;
    V ones(n, 1.0), out = nans(n);
    const nt::DropoutKey key0{1234567, 42, 7};
    nt::dropout_forward<double>(out.data(), ones.data(), n, p, key0);
    size_t dropped = 0, bad_values = 0;
    const double scale = 1.0 / (1.0 - (double)p);
    for (double v : out) {
        dropped += v == 0.0;
        bad_values += v != 0.0 && std::fabs(v - scale) > 1e-15;
    }
    const double sigma = std::sqrt(p * (1 - p) / n);
    record("dropout_forward", "mask", "property", "|drop rate - p| over 1e6 draws, p=0.1 (tol 5 sigma)",
           std::fabs((double)dropped / n - p), 5 * sigma);
    record("dropout_forward", "out", "property", "kept values equal 1/(1-p) (count wrong)",
           (double)bad_values, 0.5);
    double usum = 0;
    for (size_t i = 0; i < n; i++) usum += nt::dropout_uniform(key0, i);
    record("dropout_uniform", "u", "property", "|mean - 0.5| over 1e6 draws (tol 5 sigma)",
           std::fabs(usum / n - 0.5), 5 * std::sqrt(1.0 / 12 / n));

    auto mask = [&](const nt::DropoutKey& k, float pp) {
        V o = nans(n);
        nt::dropout_forward<double>(o.data(), ones.data(), n, pp, k);
        return o;
    };
    auto mismatch = [&](const V& a, const V& b) {
        double d = 0;
        for (size_t i = 0; i < n; i++) d += a[i] != b[i];
        return d;
    };
    record("dropout_forward", "mask", "property", "same key, same mask (elements differing)",
           mismatch(mask(key0, p), out), 0.5);
    // p = 0.5: independent masks agree on ~50% of elements.
    const V half = mask(key0, 0.5f);
    const nt::DropoutKey others[3] = {{1234568, 42, 7}, {1234567, 43, 7}, {1234567, 42, 8}};
    const char* names[3] = {"seed", "step", "tensor_id"};
    for (int i = 0; i < 3; i++)
        record("dropout_forward", "mask", "property",
               std::string("other ") + names[i] + ": fraction of elements agreeing, p=0.5",
               1.0 - mismatch(mask(others[i], 0.5f), half) / n, 0.51);
    V back = nans(n);
    nt::dropout_backward<double>(back.data(), ones.data(), n, p, key0);
    record("dropout_backward", "mask", "property", "backward mask equals forward mask",
           mismatch(back, out), 0.5);

    // Forward against per-element dropout_uniform, across parallel chunks.
    const size_t nr = 10007;
    V x = rng.vec(nr), o = nans(nr), want(nr);
    nt::dropout_forward<double>(o.data(), x.data(), nr, 0.3f, key0);
    for (size_t i = 0; i < nr; i++)
        want[i] = nt::dropout_uniform(key0, i) >= 0.3f ? x[i] / (1.0 - (double)0.3f) : 0.0;
    record("dropout_forward", "out", "reference", "n=10007,p=0.3", rel_err(o, want), kRefTol);
    FV xf = to_f(x), of = fnans(nr);
    nt::dropout_forward<float>(of.data(), xf.data(), nr, 0.3f, key0);
    record("dropout_forward", "out", "float32_vs_float64", "n=10007,p=0.3", rel_err(of, o), kF32Tol);
    V o0 = nans(nr), o1 = nans(nr);
    nt::dropout_forward<double>(o0.data(), x.data(), nr, 0.0f, key0);
    nt::dropout_forward<double>(o1.data(), x.data(), nr, 1.0f, key0);
    record("dropout_forward", "out", "reference", "p=0 is identity", rel_err(o0, x), kRefTol);
    record("dropout_forward", "out", "reference", "p=1 drops everything", rel_err(o1, V(nr, 0.0)),
           kRefTol);

    const size_t nf = 40;
    V xs = rng.vec(nf), R = rng.vec(nf), dinp = nans(nf);
    nt::dropout_backward<double>(dinp.data(), R.data(), nf, 0.3f, key0);
    fd("dropout_backward", "inp", "n=40,p=0.3", xs, dinp, [&]() {
        V oo = nans(nf);
        nt::dropout_forward<double>(oo.data(), xs.data(), nf, 0.3f, key0);
        return dot(oo, R);
    });
}

// ----------------------------------------------------------- attention ----
// Direct transcription of HF BertSelfAttention (eager): additive mask of the
// most negative double on padding keys, softmax, dropout, P V.
void attention_ref(V& out, V& att, const V& qkv, const IV& mask, int B, int T, int C, int NH,
                   float p, const nt::DropoutKey& key) {
    const int HS = C / NH;
    out.assign((size_t)B * T * C, 0.0);
    att.assign((size_t)B * NH * T * T, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t1 = 0; t1 < T; t1++) {
                V s(T);
                double mx = -std::numeric_limits<double>::infinity();
                for (int t2 = 0; t2 < T; t2++) {
                    double d = 0;
                    for (int e = 0; e < HS; e++)
                        d += qkv[((size_t)b * T + t1) * 3 * C + h * HS + e] *
                             qkv[((size_t)b * T + t2) * 3 * C + C + h * HS + e];
                    s[t2] = d / std::sqrt((double)HS) +
                            (mask[b * T + t2] ? 0.0 : -std::numeric_limits<double>::max());
                    mx = std::max(mx, s[t2]);
                }
                double z = 0;
                for (int t2 = 0; t2 < T; t2++) z += (s[t2] = std::exp(s[t2] - mx));
                for (int t2 = 0; t2 < T; t2++) {
                    const size_t idx = (((size_t)b * NH + h) * T + t1) * T + t2;
                    const double pr = s[t2] / z;
                    att[idx] = pr;
                    const double pd = p > 0 ? (nt::dropout_uniform(key, idx) >= p
                                                   ? pr / (1.0 - (double)p) : 0.0) : pr;
                    for (int e = 0; e < HS; e++)
                        out[((size_t)b * T + t1) * C + h * HS + e] +=
                            pd * qkv[((size_t)b * T + t2) * 3 * C + 2 * C + h * HS + e];
                }
            }
}

void check_attention(Rng& rng, float p) {
    const int B = 3, T = 5, C = 32, NH = 2;
    // Example 0 attends everywhere, 1 has two padding keys, 2 is all padding.
    const IV mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
    const nt::DropoutKey key{99, 3, 11};
    V qkv = rng.vec((size_t)B * T * 3 * C, -1.5, 1.5), R = rng.vec((size_t)B * T * C);
    const size_t natt = (size_t)B * NH * T * T;
    auto forward = [&](V& out, V& att) {
        out = nans((size_t)B * T * C);
        att = nans(natt);
        nt::attention_forward<double>(out.data(), att.data(), qkv.data(), mask.data(), B, T, C,
                                      NH, p, key);
    };
    const std::string kase = std::string("B=3,T=5,C=32,NH=2, padding + all-padding example, dropout_p=") +
                             (p > 0 ? "0.2" : "0");
    V out, att, wout, watt;
    forward(out, att);
    attention_ref(wout, watt, qkv, mask, B, T, C, NH, p, key);
    record("attention_forward", "out", "reference", kase, rel_err(out, wout), kRefTol);
    record("attention_forward", "att", "reference", kase, rel_err(att, watt), kRefTol);
    FV fq = to_f(qkv), fo = fnans(out.size()), fa = fnans(natt);
    nt::attention_forward<float>(fo.data(), fa.data(), fq.data(), mask.data(), B, T, C, NH, p,
                                 key);
    record("attention_forward", "out", "float32_vs_float64", kase, rel_err(fo, out), kF32Tol);
    record("attention_forward", "att", "float32_vs_float64", kase, rel_err(fa, att), kF32Tol);

    V dqkv = nans(qkv.size()), scratch = nans(natt);
    nt::attention_backward<double>(dqkv.data(), scratch.data(), R.data(), qkv.data(), att.data(),
                                   mask.data(), B, T, C, NH, p, key);
    fd("attention_backward", "qkv", kase, qkv, dqkv, [&]() {
        V o, a;
        forward(o, a);
        return dot(o, R);
    });
    FV fdq = fnans(qkv.size()), fsc = fnans(natt), fR = to_f(R);
    nt::attention_backward<float>(fdq.data(), fsc.data(), fR.data(), fq.data(), fa.data(),
                                  mask.data(), B, T, C, NH, p, key);
    record("attention_backward", "qkv", "float32_vs_float64", kase, rel_err(fdq, dqkv), kF32Tol);
    // Calling twice gives bit-identical results.
    FV fdq2 = fnans(qkv.size()), fo2 = fnans(out.size()), fa2 = fnans(natt);
    nt::attention_forward<float>(fo2.data(), fa2.data(), fq.data(), mask.data(), B, T, C, NH, p,
                                 key);
    nt::attention_backward<float>(fdq2.data(), fsc.data(), fR.data(), fq.data(), fa2.data(),
                                  mask.data(), B, T, C, NH, p, key);
    double diff = 0;
    for (size_t i = 0; i < fdq.size(); i++) diff += fdq[i] != fdq2[i];
    for (size_t i = 0; i < fo.size(); i++) diff += fo[i] != fo2[i];
    record("attention_backward", "qkv", "property", kase + ": repeat is bit-identical (elements differing)",
           diff, 0.5);
}

// -------------------------------------------------------- crossentropy ----
// torch.nn.CrossEntropyLoss(weight, ignore_index=-100, label_smoothing, 'mean').
double ce_ref(const V& z, const IV& y, const V* w, int B, int L, double eps) {
    double num = 0, den = 0;
    for (int i = 0; i < B; i++) {
        if (y[i] == -100) continue;
        double se = 0;
        for (int c = 0; c < L; c++) se += std::exp(z[i * L + c]);
        auto nll = [&](int c) { return std::log(se) - z[i * L + c]; };
        auto wt = [&](int c) { return w ? (*w)[c] : 1.0; };
        double smooth = 0;
        for (int c = 0; c < L; c++) smooth += wt(c) * nll(c);
        num += (1 - eps) * wt(y[i]) * nll(y[i]) + eps / L * smooth;
        den += wt(y[i]);
    }
    return den != 0 ? num / den : 0.0;
}

void check_crossentropy(Rng& rng, bool weighted, double eps, bool ignore, bool all_ignored) {
    const int B = 6, L = 5;
    V z = rng.vec(B * L, -3, 3), w = rng.vec(L, 0.2, 2.0);
    IV y(B);
    for (auto& v : y) v = rng.randint(0, L - 1);
    if (ignore) y[2] = -100;
    if (all_ignored) std::fill(y.begin(), y.end(), -100);
    const double* wp = weighted ? w.data() : nullptr;
    const double gs = 0.5;
    std::string kase = std::string(weighted ? "class weights" : "no weights") +
                       ", label_smoothing=" + (eps > 0 ? "0.1" : "0") +
                       (ignore ? ", one label -100" : "") + (all_ignored ? ", all labels -100" : "");
    V dz = nans(B * L);
    const double loss = nt::crossentropy_softmax_forward_backward<double>(
        dz.data(), z.data(), y.data(), wp, B, L, eps, gs);
    const double want = ce_ref(z, y, weighted ? &w : nullptr, B, L, eps);
    record("crossentropy_softmax_forward_backward", "loss", "reference", kase,
           std::fabs(loss - want) / std::max(std::fabs(want), 1e-12), kRefTol);
    const double loss_f = nt::crossentropy_softmax_forward<double>(z.data(), y.data(), wp, B, L, eps);
    record("crossentropy_softmax_forward", "loss", "reference", kase,
           std::fabs(loss_f - want) / std::max(std::fabs(want), 1e-12), kRefTol);
    FV fz = to_f(z), fw = to_f(w), fdz = fnans(B * L);
    const float lf = nt::crossentropy_softmax_forward_backward<float>(
        fdz.data(), fz.data(), y.data(), weighted ? fw.data() : nullptr, B, L, (float)eps, (float)gs);
    record("crossentropy_softmax_forward_backward", "loss", "float32_vs_float64", kase,
           std::fabs(lf - loss) / std::max(std::fabs(loss), 1e-12), kF32Tol);
    record("crossentropy_softmax_forward_backward", "logits", "float32_vs_float64", kase,
           rel_err(fdz, dz), kF32Tol);
    V unscaled(dz.size());
    for (size_t i = 0; i < dz.size(); i++) unscaled[i] = dz[i] / gs;
    if (all_ignored) {
        record("crossentropy_softmax_forward_backward", "logits", "reference", kase + ": zero gradient",
               rel_err(dz, V(B * L, 0.0)), kRefTol);
        return;
    }
    fd("crossentropy_softmax_forward_backward", "logits", kase + ", grad_scale=0.5", z, unscaled,
       [&]() { return ce_ref(z, y, weighted ? &w : nullptr, B, L, eps); });
    // And against the kernel's own forward, so forward and gradient agree.
    fd("crossentropy_softmax_forward_backward", "logits", kase + ", kernel forward", z, unscaled,
       [&]() { return nt::crossentropy_softmax_forward<double>(z.data(), y.data(), wp, B, L, eps); });
}

void check_crossentropy_errors() {
    V z(6, 0.0), dz(6);
    IV y = {0, 3};
    double thrown = 1;
    try {
        nt::crossentropy_softmax_forward_backward<double>(dz.data(), z.data(), y.data(), nullptr,
                                                          2, 3, 0.0, 1.0);
    } catch (const std::invalid_argument& e) {
        thrown = std::string(e.what()).find("labels[1]") != std::string::npos ? 0 : 1;
    }
    record("crossentropy_softmax_forward_backward", "labels", "property",
           "label outside [0,L) and != -100 throws naming labels[1]", thrown, 0.5);
}

// ----------------------------------------------------------- optimizer ----
void check_optimizer(Rng& rng) {
    const size_t n = 1001;
    V g = rng.vec(n);
    double want = 0;
    for (double x : g) want += x * x;
    record("sum_squares", "g", "reference", "n=1001",
           std::fabs(nt::sum_squares<double>(g.data(), n) - want) / want, kRefTol);
    FV gf = to_f(g);
    record("sum_squares", "g", "float32_vs_float64", "n=1001",
           std::fabs(nt::sum_squares<float>(gf.data(), n) - want) / want, kF32Tol);
    V s = g;
    nt::scale_inplace<double>(s.data(), n, 0.37);
    V ws(n);
    for (size_t i = 0; i < n; i++) ws[i] = g[i] * 0.37;
    record("scale_inplace", "x", "reference", "n=1001,s=0.37", rel_err(s, ws), kRefTol);

    // AdamW: 3 steps against a float64 transcription of torch.optim.AdamW.
    const float lr = 0.01f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, gs = 0.7f;
    const size_t np = 50;
    V p0 = rng.vec(np), p = p0, m(np, 0.0), v(np, 0.0), rp = p0, rm(np, 0.0), rv(np, 0.0);
    FV pf = to_f(p0), mf(np, 0.f), vf(np, 0.f);
    for (int t = 1; t <= 3; t++) {
        V grad = rng.vec(np, -2, 2);
        grad[0] = 0;  // exercises the eps term
        FV gradf = to_f(grad);
        nt::adamw_update<double>(p.data(), grad.data(), m.data(), v.data(), np, lr, b1, b2, eps, wd,
                                 t, gs);
        nt::adamw_update<float>(pf.data(), gradf.data(), mf.data(), vf.data(), np, lr, b1, b2, eps,
                                wd, t, gs);
        for (size_t i = 0; i < np; i++) {
            const double gi = grad[i] * (double)gs;
            rp[i] -= (double)lr * (double)wd * rp[i];
            rm[i] = (double)b1 * rm[i] + (1 - (double)b1) * gi;
            rv[i] = (double)b2 * rv[i] + (1 - (double)b2) * gi * gi;
            const double bc1 = 1 - std::pow((double)b1, t), bc2 = 1 - std::pow((double)b2, t);
            rp[i] -= (double)lr / bc1 * rm[i] / (std::sqrt(rv[i]) / std::sqrt(bc2) + (double)eps);
        }
    }
    const std::string kase = "3 steps, lr=0.01, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01, grad_scale=0.7";
    // Parameters are compared by their change, which is what the update computes.
    V dp = minus(p, p0), rdp = minus(rp, p0);
    record("adamw_update", "params", "reference", kase + " (param change)", rel_err(dp, rdp), kRefTol);
    record("adamw_update", "m", "reference", kase, rel_err(m, rm), kRefTol);
    record("adamw_update", "v", "reference", kase, rel_err(v, rv), kRefTol);
    V dpf(np);
    for (size_t i = 0; i < np; i++) dpf[i] = (double)pf[i] - p0[i];
    // float32 params near 1 carry ~6e-8 absolute rounding per step on a change of ~0.03.
    record("adamw_update", "params", "float32_vs_float64", kase + " (param change)",
           rel_err(dpf, rdp), 1e-4);
    record("adamw_update", "m", "float32_vs_float64", kase, rel_err(mf, rm), kF32Tol);
    record("adamw_update", "v", "float32_vs_float64", kase, rel_err(vf, rv), kF32Tol);
}

// ----------------------------------------------- thread-count invariance ----
// Channel-split parameter gradients sum rows in order, so they are bitwise
// identical across thread counts.
void check_thread_invariance(Rng& rng) {
    const int N = 64, C = 96, Vn = 30, T = 16;
    FV inp = to_f(rng.vec(N * C)), w = to_f(rng.vec(C)), dout = to_f(rng.vec(N * C));
    FV mean(N), rstd(N), out(N * C);
    nt::layernorm_forward<float>(out.data(), mean.data(), rstd.data(), inp.data(), w.data(),
                                 w.data(), N, C, 1e-12f);
    IV ids(N);
    for (auto& x : ids) x = rng.randint(0, Vn - 1);
    auto grads = [&](int threads) {
        omp_set_num_threads(threads);
        FV dw(C, 0.f), db(C, 0.f), dinp(N * C), dte(Vn * C, 0.f), dpe(T * C, 0.f), dbl(C, 0.f);
        nt::layernorm_backward<float>(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                                      w.data(), mean.data(), rstd.data(), N, C);
        nt::embedding_backward<float>(dte.data(), dpe.data(), nullptr, dout.data(), ids.data(),
                                      nullptr, N / T, T, C);
        nt::linear_backward<float>(nullptr, nullptr, dbl.data(), dout.data(), nullptr, nullptr, N,
                                   1, C, false);
        FV all = dw;
        for (const FV* v : {&db, &dinp, &dte, &dpe, &dbl}) all.insert(all.end(), v->begin(), v->end());
        return all;
    };
    const FV a = grads(1), b = grads(3);
    omp_set_num_threads(g_threads);
    double diff = 0;
    for (size_t i = 0; i < a.size(); i++) diff += a[i] != b[i];
    record("layernorm_backward", "weight,bias", "property",
           "1 vs 3 threads bit-identical (with embedding_backward, linear_backward dbias; elements differing)",
           diff, 0.5);
}


// ============================================================ decoder ====

void check_token_embedding(Rng& rng) {
    const int N = 9, C = 20, Vn = 4;
    IV ids(N);
    for (auto& x : ids) x = rng.randint(0, Vn - 1);
    V wte = rng.vec(Vn * C), out = nans(N * C), want(N * C);
    nt::token_embedding_forward<double>(out.data(), ids.data(), wte.data(), N, C);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) want[n * C + c] = wte[ids[n] * C + c];
    record("token_embedding_forward", "out", "reference", "N=9,C=20,repeated ids", rel_err(out, want), kRefTol);
}

void check_rmsnorm(Rng& rng, bool accumulate) {
    const int N = 10, C = 32;
    const double eps = 1e-6;
    V inp = rng.vec(N * C, -2, 3), w = rng.vec(C, 0.5, 1.5), R = rng.vec(N * C);
    auto forward = [&](V& out, V& rstd) {
        out = nans(N * C);
        rstd = nans(N);
        nt::rmsnorm_forward<double>(out.data(), rstd.data(), inp.data(), w.data(), N, C, eps);
    };
    V out, rstd, want(N * C), wr(N);
    forward(out, rstd);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += inp[n * C + c] * inp[n * C + c];
        wr[n] = 1 / std::sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) want[n * C + c] = inp[n * C + c] * wr[n] * w[c];
    }
    const std::string kf = "N=10,C=32,eps=1e-6";
    if (!accumulate) {
        record("rmsnorm_forward", "out", "reference", kf, rel_err(out, want), kRefTol);
        record("rmsnorm_forward", "rstd", "reference", kf, rel_err(rstd, wr), kRefTol);
        FV fo = fnans(N * C), fr = fnans(N), fi = to_f(inp), fw = to_f(w);
        nt::rmsnorm_forward<float>(fo.data(), fr.data(), fi.data(), fw.data(), N, C, 1e-6f);
        record("rmsnorm_forward", "out", "float32_vs_float64", kf, rel_err(fo, out), kF32Tol);
    }
    V g0i = accumulate ? rng.vec(N * C) : nans(N * C), dinp = g0i, g0w = rng.vec(C), dw = g0w;
    nt::rmsnorm_backward<double>(dinp.data(), dw.data(), R.data(), inp.data(), w.data(), rstd.data(), N, C,
                                 accumulate);
    if (!accumulate) std::fill(g0i.begin(), g0i.end(), 0.0);
    auto obj = [&]() {
        V o, r;
        forward(o, r);
        return dot(o, R);
    };
    const std::string kb = std::string("N=10,C=32, dweight accumulates") + (accumulate ? ", accumulate_dinp" : "");
    fd("rmsnorm_backward", "inp", kb, inp, minus(dinp, g0i), obj);
    fd("rmsnorm_backward", "weight", kb, w, minus(dw, g0w), obj);
}

void check_rope(Rng& rng) {
    const int N = 7, HS = 8, half = HS / 2, nh = 3, stride = nh * HS + 5, P = 12;
    // llama3 scaling against a direct transcription of transformers'
    // _compute_llama3_parameters, with wavelengths on both sides of the band.
    nt::RopeScaling sc;
    sc.llama3 = true;
    sc.factor = 8;
    sc.low_freq_factor = 1;
    sc.high_freq_factor = 4;
    sc.original_max_position_embeddings = 16;
    std::vector<double> inv(half), want_inv(half);
    nt::rope_inv_freq(inv.data(), HS, 10000.0, sc);
    int kept = 0, divided = 0, smoothed = 0;
    for (int i = 0; i < half; i++) {
        const double f = std::pow(10000.0, -2.0 * i / HS), wl = 2 * M_PI / f;
        if (wl < 16.0 / 4) { want_inv[i] = f; kept++; }
        else if (wl > 16.0 / 1) { want_inv[i] = f / 8; divided++; }
        else {
            const double s = (16.0 / wl - 1) / (4 - 1);
            want_inv[i] = (1 - s) * f / 8 + s * f;
            smoothed++;
        }
    }
    record("rope_inv_freq", "inv_freq", "reference",
           "llama3 scaling: " + std::to_string(kept) + " kept, " + std::to_string(smoothed) + " smoothed, " +
               std::to_string(divided) + " divided",
           rel_err(inv, want_inv), kRefTol);
    V cos_t(P * half), sin_t(P * half);
    nt::rope_tables<double>(cos_t.data(), sin_t.data(), inv.data(), P, HS);
    V want_cs(2 * P * half), got_cs(cos_t);
    got_cs.insert(got_cs.end(), sin_t.begin(), sin_t.end());
    for (int q = 0; q < P; q++)
        for (int i = 0; i < half; i++) {
            want_cs[q * half + i] = std::cos(q * inv[i]);
            want_cs[P * half + q * half + i] = std::sin(q * inv[i]);
        }
    record("rope_tables", "cos,sin", "reference", "P=12,HS=8", rel_err(got_cs, want_cs), kRefTol);
    IV pos(N);
    for (auto& p : pos) p = rng.randint(0, P - 1);
    V x0 = rng.vec(N * stride), R = rng.vec(N * stride);
    auto forward = [&](const V& in) {
        V x = in;
        nt::rope_forward<double>(x.data(), cos_t.data(), sin_t.data(), pos.data(), N, stride, nh, HS);
        return x;
    };
    V out = forward(x0), want = x0;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < HS; i++) {
                // HF: q * cos + rotate_half(q) * sin, cos/sin = cat(freqs, freqs)
                const double a = pos[n] * inv[i % half];
                const double* xr = x0.data() + n * stride + h * HS;
                const double rot = i < half ? -xr[i + half] : xr[i - half];
                want[n * stride + h * HS + i] = xr[i] * std::cos(a) + rot * std::sin(a);
            }
    record("rope_forward", "x", "reference", "rotate_half, 3 heads, row stride > heads (tail untouched)",
           rel_err(out, want), kRefTol);
    FV fc = to_f(cos_t), fs = to_f(sin_t), fx = to_f(x0);
    nt::rope_forward<float>(fx.data(), fc.data(), fs.data(), pos.data(), N, stride, nh, HS);
    record("rope_forward", "x", "float32_vs_float64", "rotate_half", rel_err(fx, out), kF32Tol);
    V dx = R;
    nt::rope_backward<double>(dx.data(), cos_t.data(), sin_t.data(), pos.data(), N, stride, nh, HS);
    V x = x0;
    fd("rope_backward", "x", "in place, 3 heads", x, dx, [&]() { return dot(forward(x), R); });
}

void check_swiglu(Rng& rng) {
    const int N = 6, I = 40;
    V gu = rng.vec(N * 2 * I, -6, 6), R = rng.vec(N * I);
    auto forward = [&]() {
        V out = nans(N * I);
        nt::swiglu_forward<double>(out.data(), gu.data(), N, I);
        return out;
    };
    V out = forward(), want(N * I);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            const double g = gu[n * 2 * I + i], u = gu[n * 2 * I + I + i];
            want[n * I + i] = g / (1 + std::exp(-g)) * u;
        }
    record("swiglu_forward", "out", "reference", "N=6,I=40,gate in [-6,6]", rel_err(out, want), kRefTol);
    FV fo = fnans(N * I), fg = to_f(gu);
    nt::swiglu_forward<float>(fo.data(), fg.data(), N, I);
    record("swiglu_forward", "out", "float32_vs_float64", "N=6,I=40", rel_err(fo, out), kF32Tol);
    V dgu = nans(N * 2 * I);
    nt::swiglu_backward<double>(dgu.data(), R.data(), gu.data(), N, I);
    fd("swiglu_backward", "gate_up", "N=6,I=40", gu, dgu, [&]() { return dot(forward(), R); });
}

// Direct transcription: per (b, h), scores over keys j <= i in query i's
// segment (mask[j] == mask[i] != 0), softmax, weighted values; a row with no
// key gives 0.
void causal_attention_ref(V& out, const V& qkv, const IV& mask, int B, int T, int NH, int NKV, int HS) {
    const int QKV = (NH + 2 * NKV) * HS;
    out.assign((size_t)B * T * NH * HS, 0.0);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const int kvh = h / (NH / NKV);
            for (int i = 0; i < T; i++) {
                std::vector<double> s(T, -INFINITY);
                double mx = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    if (mask[b * T + i] == 0 || mask[b * T + j] != mask[b * T + i]) continue;
                    double d = 0;
                    for (int c = 0; c < HS; c++)
                        d += qkv[(size_t)(b * T + i) * QKV + h * HS + c] * qkv[(size_t)(b * T + j) * QKV + (NH + kvh) * HS + c];
                    s[j] = d / std::sqrt((double)HS);
                    mx = std::max(mx, s[j]);
                }
                if (mx == -INFINITY) continue;
                double sum = 0;
                for (int j = 0; j <= i; j++) sum += s[j] == -INFINITY ? 0 : std::exp(s[j] - mx);
                for (int j = 0; j <= i; j++) {
                    if (s[j] == -INFINITY) continue;
                    const double p = std::exp(s[j] - mx) / sum;
                    for (int c = 0; c < HS; c++)
                        out[(size_t)(b * T + i) * NH * HS + h * HS + c] += p * qkv[(size_t)(b * T + j) * QKV + (NH + NKV + kvh) * HS + c];
                }
            }
        }
}

void check_causal_attention(Rng& rng, int T, int NH, int NKV) {
    const int B = 3, HS = 4, QKV = (NH + 2 * NKV) * HS;
    IV mask(B * T, 1);
    for (int t = 0; t < 3; t++) mask[0 * T + t] = 0;       // row 0 left-padded
    for (int t = T - 5; t < T; t++) mask[1 * T + t] = 0;   // row 1 right-padded
    for (int t = T / 3; t < T; t++) mask[2 * T + t] = t < T - 1 ? 2 : 0;  // row 2: two packed segments, a pad
    V qkv = rng.vec((size_t)B * T * QKV, -2, 2), R = rng.vec((size_t)B * T * NH * HS);
    V lse;
    auto forward = [&]() {
        V out = nans((size_t)B * T * NH * HS);
        lse = nans((size_t)B * NH * T);
        nt::causal_attention_forward<double>(out.data(), lse.data(), qkv.data(), mask.data(), B, T, NH, NKV, HS);
        return out;
    };
    const std::string kase = "B=3,T=" + std::to_string(T) + ",NH=" + std::to_string(NH) + ",NKV=" +
                             std::to_string(NKV) + ",left+right padding, packed segments";
    V out = forward(), want;
    causal_attention_ref(want, qkv, mask, B, T, NH, NKV, HS);
    record("causal_attention_forward", "out", "reference", kase, rel_err(out, want), kRefTol);
    FV fo = fnans(out.size()), fl = fnans(lse.size()), fq = to_f(qkv);
    nt::causal_attention_forward<float>(fo.data(), fl.data(), fq.data(), mask.data(), B, T, NH, NKV, HS);
    record("causal_attention_forward", "out", "float32_vs_float64", kase, rel_err(fo, out), kF32Tol);
    const V saved_lse = lse;
    V dqkv = nans(qkv.size());
    nt::causal_attention_backward<double>(dqkv.data(), R.data(), out.data(), qkv.data(), saved_lse.data(), mask.data(),
                                          B, T, NH, NKV, HS);
    fd("causal_attention_backward", "qkv", kase, qkv, dqkv, [&]() { return dot(forward(), R); });
}

// The decode step's attention equals the last row of the full causal
// attention when the cache holds the same (rotated) keys and values.
void check_decode_attention(Rng& rng) {
    const int B = 3, T = 7, NH = 4, NKV = 2, HS = 4, QKV = (NH + 2 * NKV) * HS, cap = 10;
    IV mask(B * T, 1);
    for (int t = 0; t < 2; t++) mask[2 * T + t] = 0;  // row 2 left-padded
    mask[1 * T + 3] = 0;                               // a masked key inside row 1
    V qkv = rng.vec((size_t)B * T * QKV), out(B * T * NH * HS), lse(B * NH * T);
    nt::causal_attention_forward<double>(out.data(), lse.data(), qkv.data(), mask.data(), B, T, NH, NKV, HS);
    V kc = nans((size_t)B * NKV * cap * HS), vc = nans((size_t)B * NKV * cap * HS);
    IV cmask(B * cap, 0);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            cmask[b * cap + t] = mask[b * T + t];
            for (int h = 0; h < NKV; h++)
                for (int c = 0; c < HS; c++) {
                    const size_t row = (size_t)(b * T + t) * QKV;
                    kc[((size_t)(b * NKV + h) * cap + t) * HS + c] = qkv[row + (NH + h) * HS + c];
                    vc[((size_t)(b * NKV + h) * cap + t) * HS + c] = qkv[row + (NH + NKV + h) * HS + c];
                }
        }
    V got = nans(B * NH * HS), want(B * NH * HS);
    nt::decode_attention<double>(got.data(), qkv.data() + (size_t)(T - 1) * QKV, T * QKV, kc.data(), vc.data(),
                                 cmask.data(), B, NH, NKV, HS, T, cap);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < NH * HS; i++) want[b * NH * HS + i] = out[(size_t)(b * T + T - 1) * NH * HS + i];
    record("decode_attention", "out", "reference", "last row of causal_attention_forward, GQA, masked keys, cap > ncols",
           rel_err(got, want), kRefTol);

    // Row 0's head 1 with a NaN query (every score NaN, which a max skips): NaN,
    // as the full forward gives; row 2 with no real column: 0; the rest as above.
    for (int c = 0; c < HS; c++) qkv[(size_t)(T - 1) * QKV + 1 * HS + c] = kNaN;
    for (int t = 0; t < cap; t++) cmask[2 * cap + t] = 0;
    V bad = nans(B * NH * HS);
    nt::decode_attention<double>(bad.data(), qkv.data() + (size_t)(T - 1) * QKV, T * QKV, kc.data(), vc.data(),
                                 cmask.data(), B, NH, NKV, HS, T, cap);
    double wrong = 0;
    for (int i = 0; i < B * NH * HS; i++) {
        const int b = i / (NH * HS), h = i % (NH * HS) / HS;
        const bool ok = b == 0 && h == 1 ? std::isnan(bad[i]) : b == 2 ? bad[i] == 0 : bad[i] == got[i];
        wrong += !ok;
    }
    record("decode_attention", "out", "exact", "NaN query -> NaN, no real column -> 0 (elements wrong)", wrong, 0.5);
}

void check_lmhead_crossentropy(Rng& rng, int chunk, bool with_dW, bool with_bias = false) {
    const int N = 11, C = 6, Vn = 13;
    V h = rng.vec(N * C, -2, 2), W = rng.vec(Vn * C, -2, 2), bias = rng.vec(Vn, -1, 1);
    IV y(N);
    for (auto& t : y) t = rng.randint(0, Vn - 1);
    y[0] = y[4] = y[5] = -100;
    const double gs = 0.37;
    const double* b = with_bias ? bias.data() : nullptr;
    V scratch((size_t)chunk * (Vn + C));
    auto loss = [&]() {
        return nt::lmhead_crossentropy<double>(nullptr, nullptr, h.data(), W.data(), y.data(), N, C, Vn, gs,
                                               scratch.data(), chunk, nullptr, b);
    };
    double want = 0;
    for (int n = 0; n < N; n++) {
        if (y[n] == -100) continue;
        std::vector<double> z(Vn);
        double mx = -INFINITY;
        for (int v = 0; v < Vn; v++) {
            z[v] = with_bias ? bias[v] : 0;
            for (int c = 0; c < C; c++) z[v] += h[n * C + c] * W[v * C + c];
            mx = std::max(mx, z[v]);
        }
        double s = 0;
        for (int v = 0; v < Vn; v++) s += std::exp(z[v] - mx);
        want += mx + std::log(s) - z[y[n]];
    }
    const std::string kase = "N=11 (3 ignored),V=13,chunk=" + std::to_string(chunk) + (with_dW ? "" : ", dW=null") +
                             (with_bias ? ", bias" : "");
    record("lmhead_crossentropy", "loss", "reference", kase, std::fabs(loss() - want) / std::fabs(want), kRefTol);
    FV fh = to_f(h), fW = to_f(W), fb = to_f(bias), fs((size_t)chunk * (Vn + C));
    const double fl = nt::lmhead_crossentropy<float>(nullptr, nullptr, fh.data(), fW.data(), y.data(), N, C, Vn, 0.37f,
                                                     fs.data(), chunk, nullptr, with_bias ? fb.data() : nullptr);
    record("lmhead_crossentropy", "loss", "float32_vs_float64", kase, std::fabs(fl - want) / std::fabs(want), kF32Tol);
    V dh = nans(N * C), g0W = rng.vec(Vn * C), dW = g0W, g0b = rng.vec(Vn), db = g0b;
    const double l2 = nt::lmhead_crossentropy<double>(dh.data(), with_dW ? dW.data() : nullptr, h.data(), W.data(),
                                                      y.data(), N, C, Vn, gs, scratch.data(), chunk, nullptr, b,
                                                      with_bias ? db.data() : nullptr);
    record("lmhead_crossentropy", "loss", "reference", kase + ", with backward", std::fabs(l2 - want) / std::fabs(want),
           kRefTol);
    auto obj = [&]() { return gs * loss(); };
    V ddh(dh);
    fd("lmhead_crossentropy", "h", kase, h, ddh, obj);
    if (with_dW) fd("lmhead_crossentropy", "W", kase, W, minus(dW, g0W), obj);
    else record("lmhead_crossentropy", "W", "reference", kase + ", dW untouched", rel_err(dW, g0W), kRefTol);
    if (with_bias) fd("lmhead_crossentropy", "bias", kase, bias, minus(db, g0b), obj);
}

void check_lora(Rng& rng, float p) {
    const int N = 9, IC = 10, OC = 7, r = 3, ldo = OC + 4;
    const double scale = 8.0 / r;
    const nt::DropoutKey key{11, 3, 5};
    V inp = rng.vec(N * IC), A = rng.vec(r * IC), Bm = rng.vec(OC * r), base = rng.vec(N * ldo), R = rng.vec(N * ldo);
    for (int n = 0; n < N; n++)
        for (int c = OC; c < ldo; c++) R[n * ldo + c] = 0;  // columns outside the adapter's block
    V t(N * r), xd(N * IC);
    std::vector<uint8_t> keep((N * IC + 7) / 8, 0xA5);  // poisoned: the forward must write every bit used
    auto forward = [&]() {
        V out = base;
        nt::lora_forward<double>(out.data(), ldo, t.data(), xd.data(), keep.data(), inp.data(), A.data(), Bm.data(), N,
                                 IC, OC, r, scale, p, key);
        return out;
    };
    V out = forward(), want = base;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int k = 0; k < r; k++) {
                double a = 0;
                for (int i = 0; i < IC; i++) {
                    const double keep = p > 0 ? (nt::dropout_uniform(key, (uint64_t)n * IC + i) >= p ? 1.0 / (1.0 - p) : 0.0) : 1.0;
                    a += inp[n * IC + i] * keep * A[k * IC + i];
                }
                s += a * Bm[o * r + k];
            }
            want[n * ldo + o] += scale * s;
        }
    const std::string kase = "N=9,IC=10,OC=7,r=3,ldo=11,dropout=" + std::to_string(p).substr(0, 3);
    record("lora_forward", "out", "reference", kase + " (columns past OC untouched)", rel_err(out, want), kRefTol);
    V g0i = rng.vec(N * IC), dinp = g0i, g0A = rng.vec(r * IC), dA = g0A, g0B = rng.vec(OC * r), dB = g0B, dt(N * r);
    forward();  // t for the current weights
    nt::lora_backward<double>(dinp.data(), dA.data(), dB.data(), dt.data(), xd.data(), keep.data(), R.data(), ldo,
                              inp.data(), t.data(), A.data(), Bm.data(), N, IC, OC, r, scale, p);
    // float: the thin products go through oneDNN where it is built in (cpu/onednn.h)
    {
        FV fout = to_f(base), ft(N * r), fxd(N * IC), fdinp = to_f(g0i), fdA = to_f(g0A), fdB = to_f(g0B), fdt(N * r);
        const FV fin = to_f(inp), fa = to_f(A), fb = to_f(Bm), fR = to_f(R);
        std::vector<uint8_t> fkeep((N * IC + 7) / 8, 0xA5);
        nt::lora_forward<float>(fout.data(), ldo, ft.data(), fxd.data(), fkeep.data(), fin.data(), fa.data(), fb.data(), N,
                                IC, OC, r, (float)scale, p, key);
        record("lora_forward", "out", "float32_vs_float64", kase, rel_err(V(fout.begin(), fout.end()), want), kF32Tol);
        nt::lora_backward<float>(fdinp.data(), fdA.data(), fdB.data(), fdt.data(), fxd.data(), fkeep.data(), fR.data(),
                                 ldo, fin.data(), ft.data(), fa.data(), fb.data(), N, IC, OC, r, (float)scale, p);
        record("lora_backward", "inp", "float32_vs_float64", kase, rel_err(V(fdinp.begin(), fdinp.end()), dinp), kF32Tol);
        record("lora_backward", "A", "float32_vs_float64", kase, rel_err(V(fdA.begin(), fdA.end()), dA), kF32Tol);
        record("lora_backward", "B", "float32_vs_float64", kase, rel_err(V(fdB.begin(), fdB.end()), dB), kF32Tol);
    }
    auto obj = [&]() { return dot(forward(), R); };
    fd("lora_backward", "inp", kase + ", dinp accumulates", inp, minus(dinp, g0i), obj);
    fd("lora_backward", "A", kase, A, minus(dA, g0A), obj);
    fd("lora_backward", "B", kase, Bm, minus(dB, g0B), obj);
}

// The recorded-mask dropout: the same outputs as dropout_forward and
// dropout_backward bit for bit, over several thread chunks (4096 elements)
// and an odd tail, and every bit of the mask written.
void check_dropout_mask(Rng& rng) {
    const size_t n = 3 * 4096 + 77;
    const nt::DropoutKey key{5, 2, 9};
    for (const float p : {0.0f, 0.1f, 0.5f, 1.0f}) {
        const FV x = to_f(rng.vec(n));
        FV ref(n), out(n, NAN), back(n, NAN), ref_back(n);
        std::vector<uint8_t> keep((n + 7) / 8, 0xA5);
        nt::dropout_forward<float>(ref.data(), x.data(), n, p, key);
        nt::dropout_forward_mask<float>(out.data(), x.data(), keep.data(), n, p, key);
        nt::dropout_backward<float>(ref_back.data(), x.data(), n, p, key);
        nt::dropout_apply_mask<float>(back.data(), x.data(), keep.data(), n, p);
        size_t diff_f = 0, diff_b = 0, diff_bits = 0;
        for (size_t i = 0; i < n; i++) {
            diff_f += !(out[i] == ref[i]);
            diff_b += !(back[i] == ref_back[i]);
            const bool kept = p <= 0.f || (p < 1.f && nt::dropout_uniform(key, i) >= p);
            diff_bits += (((keep[i >> 3] >> (i & 7)) & 1) != 0) != kept;
        }
        const std::string kase = "n=3*4096+77,p=" + std::to_string(p).substr(0, 3);
        record("dropout_forward_mask", "out", "property", kase + ": equals dropout_forward", (double)diff_f, 0.5);
        record("dropout_forward_mask", "keep", "property", kase + ": bit i = kept(i)", (double)diff_bits, 0.5);
        record("dropout_apply_mask", "out", "property", kase + ": equals dropout_backward", (double)diff_b, 0.5);
        FV acc = to_f(rng.vec(n)), acc0 = acc;
        nt::dropout_apply_mask<float>(acc.data(), x.data(), keep.data(), n, p, true);
        V got(acc.begin(), acc.end()), want(n);
        for (size_t i = 0; i < n; i++) want[i] = (double)acc0[i] + ref_back[i];
        // one float rounding (or none, with a fused multiply-add) from the double sum
        record("dropout_apply_mask", "out", "float32_vs_float64", kase + ", accumulate: out + dropout_backward",
               rel_err(got, want), 1e-6);
    }
}

// DropoutKey::offset (data parallel): a shard that starts at element `off` of
// the global tensor draws exactly that slice of the global masks, at offsets
// that are and are not multiples of 4 and 8 (the bulk paths' alignments), for
// dropout_forward, the recorded mask, and attention's probabilities.
void check_dropout_offset(Rng& rng) {
    const size_t n = 2 * 4096 + 333;
    const nt::DropoutKey whole{77, 5, 3};
    const FV x = to_f(rng.vec(n));
    FV ref(n);
    nt::dropout_forward<float>(ref.data(), x.data(), n, 0.4f, whole);
    for (const size_t off : {(size_t)4, (size_t)8, (size_t)5, (size_t)4099, (size_t)6002}) {
        const size_t m = n - off;
        nt::DropoutKey k = whole;
        k.offset = off;
        FV out(m, NAN), outm(m, NAN);
        std::vector<uint8_t> keep((m + 7) / 8, 0xA5);
        nt::dropout_forward<float>(out.data(), x.data() + off, m, 0.4f, k);
        nt::dropout_forward_mask<float>(outm.data(), x.data() + off, keep.data(), m, 0.4f, k);
        size_t diff = 0, diff_m = 0, diff_bits = 0;
        for (size_t i = 0; i < m; i++) {
            diff += !(out[i] == ref[off + i]);
            diff_m += !(outm[i] == ref[off + i]);
            diff_bits += (((keep[i >> 3] >> (i & 7)) & 1) != 0) != (nt::dropout_uniform(whole, off + i) >= 0.4f);
        }
        const std::string kase = "n=" + std::to_string(n) + ",offset=" + std::to_string(off);
        record("dropout_forward", "out", "property", kase + ": equals the global tensor's slice", (double)diff, 0.5);
        record("dropout_forward_mask", "out", "property", kase + ": equals the global tensor's slice", (double)diff_m, 0.5);
        record("dropout_forward_mask", "keep", "property", kase + ": bit i = global kept(offset + i)", (double)diff_bits, 0.5);
    }
    // attention: rows [1, 3) of a B=3 batch with offset 1 × NH × T × T
    const int B = 3, T = 7, C = 16, NH = 2;
    const FV qkv = to_f(rng.vec((size_t)B * T * 3 * C));
    std::vector<int32_t> mask((size_t)B * T, 1);
    mask[(size_t)2 * T + 6] = 0;
    FV out((size_t)B * T * C), att((size_t)B * NH * T * T);
    nt::attention_forward<float>(out.data(), att.data(), qkv.data(), mask.data(), B, T, C, NH, 0.3f, whole);
    nt::DropoutKey k = whole;
    k.offset = (uint64_t)NH * T * T;
    FV out2((size_t)(B - 1) * T * C), att2((size_t)(B - 1) * NH * T * T);
    nt::attention_forward<float>(out2.data(), att2.data(), qkv.data() + (size_t)T * 3 * C, mask.data() + T, B - 1, T, C,
                                 NH, 0.3f, k);
    size_t diff = 0;
    for (size_t i = 0; i < out2.size(); i++) diff += !(out2[i] == out[(size_t)T * C + i]);
    record("attention_forward", "out", "property", "B=3,T=7,NH=2,p=0.3: rows 1..2 with offset = the whole batch's rows",
           (double)diff, 0.5);
}

// ------------------------------------------------------------ bf16 GEMM ----
// gemm_bf16w rounds A to bf16 and multiplies by bf16 B with fp32 sums: the
// reference is the float64 product of the same rounded values, so the only
// error left is fp32 accumulation. Without bf16 support here (no oneDNN, or a
// CPU without AVX512_BF16/AMX) the call must throw, with the reason.
void check_gemm_bf16(Rng& rng) {
    {
        // round to nearest even: 1 + 2^-8 is a tie (to 1), 1 + 3*2^-8 a tie up
        const float in[] = {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, -2.5f, 3.4e38f, NAN};
        const double want[] = {1.0, 1.0 + 4.0 / 256, -2.5, INFINITY, NAN};
        uint16_t out[5];
        nt::to_bf16(out, in, 5);
        bool ok = true;
        for (int i = 0; i < 5; i++) {
            const double got = nt::from_bf16(out[i]);
            ok = ok && (std::isnan(want[i]) ? std::isnan(got) : got == want[i]);
        }
        record("to_bf16", "dst", "property", "ties to even, overflow to inf, NaN kept", ok ? 0 : 1, 0.5);
    }
    const std::string why = nt::bf16_gemm_support();
    if (!why.empty()) {
        bool threw = false;
        FV A(4), B(4), C(4);
        std::vector<uint16_t> Bb(4);
        try {
            nt::gemm_bf16w(true, 2, 2, 2, A.data(), 2, Bb.data(), 0.0f, C.data(), 2);
        } catch (const std::exception& e) {
            threw = std::string(e.what()).find(why) != std::string::npos;
        }
        record("gemm_bf16w", "C", "property", "unsupported here, throws: " + why, threw ? 0 : 1, 0.5);
        return;
    }
    struct Case { bool tb; int M, N, K, pad; float beta; };
    for (const Case c : {Case{true, 37, 29, 70, 3, 0.0f}, Case{false, 37, 29, 70, 5, 1.0f}, Case{true, 1, 40, 33, 0, 0.0f},
                         Case{false, 130, 64, 96, 0, 0.0f}, Case{true, 3, 17, 5, 2, 1.0f}}) {
        const int lda = c.K + c.pad, ldc = c.N + c.pad;
        FV A = to_f(rng.vec((size_t)c.M * lda)), Bf = to_f(rng.vec((size_t)c.N * c.K)), C = to_f(rng.vec((size_t)c.M * ldc));
        std::vector<uint16_t> Ab(A.size()), Bb(Bf.size());
        nt::to_bf16(Ab.data(), A.data(), A.size());
        nt::to_bf16(Bb.data(), Bf.data(), Bf.size());
        V want(C.begin(), C.end());
        for (int i = 0; i < c.M; i++)
            for (int j = 0; j < c.N; j++) {
                double s = 0;
                for (int k = 0; k < c.K; k++)
                    s += (double)nt::from_bf16(Ab[(size_t)i * lda + k]) *
                         nt::from_bf16(c.tb ? Bb[(size_t)j * c.K + k] : Bb[(size_t)k * c.N + j]);
                want[(size_t)i * ldc + j] = s + (c.beta != 0.0f ? (double)C[(size_t)i * ldc + j] : 0.0);
            }
        if (c.beta == 0.0f)
            for (int i = 0; i < c.M; i++)
                for (int j = 0; j < c.N; j++) C[(size_t)i * ldc + j] = NAN;  // beta 0 ignores C
        nt::gemm_bf16w(c.tb, c.M, c.N, c.K, A.data(), lda, Bb.data(), c.beta, C.data(), ldc);
        // the padding columns of C are not the GEMM's: compare the M x N block only
        V got(want.size()), ref(want.size());
        for (size_t i = 0; i < want.size(); i++) {
            const bool inside = (int)(i % ldc) < c.N;
            got[i] = inside ? C[i] : 0.0;
            ref[i] = inside ? want[i] : 0.0;
        }
        const std::string kase = std::string("transB=") + (c.tb ? "1" : "0") + ",M=" + std::to_string(c.M) +
                                 ",N=" + std::to_string(c.N) + ",K=" + std::to_string(c.K) +
                                 ",lda,ldc pad " + std::to_string(c.pad) + ",beta=" + (c.beta != 0.0f ? "1" : "0");
        record("gemm_bf16w", "C", "reference", kase, rel_err(got, ref), kF32Tol);
    }
}

// ------------------------------------------------------------------- Q8_0 ----
// ggml's quantize_row_q8_0_ref transcribed: per block of 32, d = amax / 127,
// id = 1/d (0 when d = 0), q = roundf(x id), d stored as fp16 (weights); or
// as its SIMD quantize_row_q8_0 does activations (fp16_d false here): q =
// x id rounded to nearest even, d kept in fp32.
void q8_0_reference(const float* x, int n, bool fp16_d, std::vector<int>& q, std::vector<double>& d) {
    q.assign(n, 0);
    d.assign(n / 32, 0.0);
    for (int b = 0; b < n / 32; b++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = std::max(amax, std::fabs(x[b * 32 + i]));
        const float dd = amax / 127.0f;
        const float id = dd ? 1.0f / dd : 0.0f;
        d[b] = fp16_d ? (double)(float)(_Float16)dd : (double)dd;
        for (int i = 0; i < 32; i++)
            q[b * 32 + i] = (int)(fp16_d ? std::round(x[b * 32 + i] * id) : std::nearbyint(x[b * 32 + i] * id));
    }
}

void check_q8_0(Rng& rng) {
    const int OC = 37, IC = 96;  // OC past two 16-row groups, an odd number of blocks
    FV W = to_f(rng.vec((size_t)OC * IC, -0.3, 0.3));
    for (int i = 0; i < 32; i++) W[32 + i] = 0.0f;            // an all-zero block: d = 0
    for (int i = 0; i < 32; i++) W[64 + i] = (i - 16) * 0.25f;  // an exact grid
    nt::Q8Weights w(OC, IC);
    // In two calls, as the engine fills a packed group one member at a time.
    nt::quantize_q8_0(w, W.data(), 0, 21);
    nt::quantize_q8_0(w, W.data() + (size_t)21 * IC, 21, OC - 21);
    FV deq = fnans((size_t)OC * IC);
    nt::dequantize_q8_0(deq.data(), w, 0, 5);
    nt::dequantize_q8_0(deq.data() + (size_t)5 * IC, w, 5, OC - 5);
    std::vector<int> q;
    std::vector<double> d;
    V want((size_t)OC * IC), bound((size_t)OC * IC);
    for (int o = 0; o < OC; o++) {
        q8_0_reference(&W[(size_t)o * IC], IC, true, q, d);
        for (int i = 0; i < IC; i++) want[(size_t)o * IC + i] = d[i / 32] * q[i];
    }
    const std::string kase = "OC=" + std::to_string(OC) + ",IC=" + std::to_string(IC) +
                             ", rows in two calls, a zero block, a grid block";
    record("quantize_q8_0", "d q", "reference", kase + ", vs ggml's quantize_row_q8_0_ref", rel_err(deq, want), kRefTol);
    record("dequantize_q8_0", "W", "reference", kase + ", d q exactly", rel_err(deq, want), kRefTol);
    double worst = 0;  // |d q - x| <= d/2 up to d's fp16 rounding (2^-11 relative)
    for (int o = 0; o < OC; o++)
        for (int b = 0; b < IC / 32; b++) {
            float amax = 0.0f;
            for (int i = 0; i < 32; i++) amax = std::max(amax, std::fabs(W[(size_t)o * IC + b * 32 + i]));
            const double half = amax / 127.0 * (0.5 + 128 * std::ldexp(1.0, -11)) + 1e-30;
            for (int i = 0; i < 32; i++) {
                const size_t k = (size_t)o * IC + b * 32 + i;
                worst = std::max(worst, std::fabs(deq[k] - W[k]) / half);
            }
        }
    record("quantize_q8_0", "d q", "property", kase + ", |d q - x| <= d/2 (+ fp16 rounding of d)", worst / 1.0001, 1.0);
    int threw = 0;
    const auto throws = [&](const std::function<void()>& f) {
        try {
            f();
        } catch (const std::invalid_argument&) {
            threw++;
        }
    };
    throws([&] { nt::Q8Weights bad(OC, 48); });
    throws([&] { nt::quantize_q8_0(w, W.data(), 30, 8); });
    throws([&] { nt::dequantize_q8_0(deq.data(), w, -1, 2); });
    record("quantize_q8_0", "IC", "property", "IC=48 (not a multiple of 32), rows past OC, a negative row: all throw",
           threw == 3 ? 0 : 1, 0.5);

    const std::string native_isa = nt::q8_0_isa();
    for (const char* isa : {"scalar", "avx2", "avx512vnni"}) {
        if (!nt::q8_0_use_isa(isa)) continue;  // this CPU lacks it
        for (int N : {1, 3, 4, 9}) {
            const FV x = to_f(rng.vec((size_t)N * IC));
            V ref((size_t)N * OC);
            for (int n = 0; n < N; n++) {
                std::vector<int> xq;
                std::vector<double> xd;
                q8_0_reference(&x[(size_t)n * IC], IC, false, xq, xd);
                for (int o = 0; o < OC; o++) {
                    q8_0_reference(&W[(size_t)o * IC], IC, true, q, d);
                    double s = 0;
                    for (int b = 0; b < IC / 32; b++) {
                        long long dot = 0;
                        for (int i = 0; i < 32; i++) dot += (long long)q[b * 32 + i] * xq[b * 32 + i];
                        s += d[b] * xd[b] * (double)dot;
                    }
                    ref[(size_t)n * OC + o] = s;
                }
            }
            FV out = fnans((size_t)N * OC), xd((size_t)N * IC / 32);
            std::vector<int8_t> xq((size_t)N * IC);
            std::vector<int32_t> xs((size_t)N * IC / 32);
            nt::linear_q8_0(out.data(), x.data(), w, N, xq.data(), xd.data(), xs.data());
            record("linear_q8_0", "out", "reference", std::string(isa) + ",N=" + std::to_string(N) + ",OC=" + std::to_string(OC) + ",IC=" + std::to_string(IC),
                   rel_err(out, ref), kF32Tol);
        }
    }
    nt::q8_0_use_isa(native_isa);

    // The loss through a Q8_0 head: logits as linear_q8_0 gives them (checked
    // above), cross-entropy in double; rows without a target skipped; chunk 4
    // does not divide the 7 target rows. A gradient asked of it throws.
    {
        const int N = 9, V = OC, C = IC, chunk = 4;
        const FV h = to_f(rng.vec((size_t)N * C, -2, 2));
        IV y(N);
        for (auto& t : y) t = rng.randint(0, V - 1);
        y[2] = y[6] = -100;
        FV z((size_t)N * V), xd((size_t)N * C / 32);
        std::vector<int8_t> xq((size_t)N * C);
        std::vector<int32_t> xs((size_t)N * C / 32);
        nt::linear_q8_0(z.data(), h.data(), w, N, xq.data(), xd.data(), xs.data());
        double want = 0;
        for (int n = 0; n < N; n++) {
            if (y[n] == -100) continue;
            double mx = -INFINITY, sum = 0;
            for (int v = 0; v < V; v++) mx = std::max(mx, (double)z[(size_t)n * V + v]);
            for (int v = 0; v < V; v++) sum += std::exp(z[(size_t)n * V + v] - mx);
            want += mx + std::log(sum) - z[(size_t)n * V + y[n]];
        }
        FV scratch((size_t)chunk * (V + C));
        const double got = nt::lmhead_crossentropy<float>(nullptr, nullptr, h.data(), nullptr, y.data(), N, C, V, 1.0f,
                                                          scratch.data(), chunk, nullptr, nullptr, nullptr, &w);
        record("lmhead_crossentropy", "loss", "reference", "Q8_0 head, N=9 (2 ignored), chunk=4: linear_q8_0's logits",
               std::fabs(got - want) / std::fabs(want), kF32Tol);
        FV dh((size_t)N * C);
        bool refused = false;
        try {
            nt::lmhead_crossentropy<float>(dh.data(), nullptr, h.data(), nullptr, y.data(), N, C, V, 1.0f,
                                           scratch.data(), chunk, nullptr, nullptr, nullptr, &w);
        } catch (const std::invalid_argument&) {
            refused = true;
        }
        record("lmhead_crossentropy", "dh", "property", "Q8_0 head: a gradient throws", refused ? 0 : 1, 0.5);
    }
}

void run_suite(int threads) {
    g_threads = threads;
    omp_set_num_threads(threads);
    Rng rng(20240601);
    check_gemm(rng);
    check_gemm_bf16(rng);
    check_embedding(rng);
    check_layernorm(rng);
    for (int bias = 0; bias < 2; bias++)
        for (int acc = 0; acc < 2; acc++) check_linear(rng, bias, acc);
    check_pointwise(rng);
    check_dropout(rng);
    check_dropout_mask(rng);
    check_dropout_offset(rng);
    check_attention(rng, 0.f);
    check_attention(rng, 0.2f);
    check_crossentropy(rng, false, 0.0, false, false);
    check_crossentropy(rng, true, 0.0, false, false);
    check_crossentropy(rng, false, 0.1, false, false);
    check_crossentropy(rng, true, 0.1, true, false);
    check_crossentropy(rng, true, 0.1, false, true);
    check_crossentropy_errors();
    check_optimizer(rng);
    check_thread_invariance(rng);
    check_token_embedding(rng);
    check_rmsnorm(rng, false);
    check_rmsnorm(rng, true);
    check_rope(rng);
    check_swiglu(rng);
    check_causal_attention(rng, 9, 4, 2);   // GQA, one query block
    check_causal_attention(rng, 70, 2, 1);  // two query blocks (64 + 6 rows)
    check_causal_attention(rng, 6, 3, 3);   // plain multi-head
    check_decode_attention(rng);
    check_lmhead_crossentropy(rng, 3, true);  // 8 target rows in chunks of 3
    check_lmhead_crossentropy(rng, 64, false);
    check_lmhead_crossentropy(rng, 3, true, true);  // BertForMaskedLM's decoder bias
    check_lora(rng, 0.f);
    check_lora(rng, 0.3f);
    check_q8_0(rng);
}

std::string json_str(const std::string& s) {
    std::string o = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        o += c;
    }
    return o + "\"";
}

std::string json_num(double x) {
    if (!std::isfinite(x)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3e", x);
    return buf;
}

}  // namespace

int main() {
    try {
        run_suite(1);
        run_suite(3);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "gradcheck: %s\n", e.what());
        return 2;
    }
    bool ok = true;
    std::printf("{\"checks\":[\n");
    for (size_t i = 0; i < g_checks.size(); i++) {
        const Check& c = g_checks[i];
        ok = ok && c.pass;
        std::printf("{\"kernel\":%s,\"input\":%s,\"method\":%s,\"case\":%s,\"threads\":%d,"
                    "\"max_rel_err\":%s,\"tol\":%s,\"pass\":%s}%s\n",
                    json_str(c.kernel).c_str(), json_str(c.input).c_str(),
                    json_str(c.method).c_str(), json_str(c.kase).c_str(), c.threads,
                    json_num(c.err).c_str(), json_num(c.tol).c_str(), c.pass ? "true" : "false",
                    i + 1 < g_checks.size() ? "," : "");
    }
    std::printf("]}\n");
    return ok ? 0 : 1;
}
