// GPU-vs-CPU parity of every CUDA kernel (native/cuda) against the CPU
// kernels (native/cpu, nodetune_core) on the same random inputs.
//
// Reference: the CPU kernel instantiated in float64 on the very values the GPU
// sees (bf16 cases: the bf16-rounded values), so the reported error is the
// GPU's own; the CPU float32 kernel's error against the same reference is
// shown beside it for scale. Error metric, per output tensor:
//   max_rel_err = max_i |gpu_i - ref_i| / max_i |ref_i|
// (a non-finite GPU value counts as infinite). Outputs are poisoned with NaN
// before each launch, so an element a kernel forgets to write fails; outputs
// that are accumulated (+=) start from random values instead.
// Tolerances: fp32 1e-5; dropout masks, Philox words, conversions and the
// residual add 0 (bit-identical); bf16 per kernel below (bf16 keeps 8 bits,
// one rounding of an output is <= 2^-9 relative).
//
// Usage: nodetune_cuda_check [--quick] [--json FILE]
//   --quick: small attention shapes (what test/gpu/emulate.sh runs on the CPU)
// Exit: 0 all pass, or no CUDA device ("no CUDA device: <reason>");
//       1 some check failed; 2 a CUDA/C++ error was thrown.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"

namespace {

using nt::cuda::bf16;

// ---- host bf16 (round to nearest even; NaN stays NaN) ------------------------
uint16_t f2bf(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
float bf2f(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <typename T>
struct Act;
template <>
struct Act<float> {
    using H = float;
    static H from(float x) { return x; }
    static float to(H h) { return h; }
    static constexpr const char* name = "fp32";
};
template <>
struct Act<bf16> {
    using H = uint16_t;
    static H from(float x) { return f2bf(x); }
    static float to(H h) { return bf2f(h); }
    static constexpr const char* name = "bf16";
};
template <typename T>
float round_to(float x) {
    return Act<T>::to(Act<T>::from(x));
}

// ---- device buffers -----------------------------------------------------------
template <typename T>
struct Dev {
    T* p = nullptr;
    size_t n = 0;
    explicit Dev(size_t count) : n(count) {
        NT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), (n ? n : 1) * sizeof(T)));
        poison();
    }
    ~Dev() { cudaFree(p); }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    void poison() { NT_CUDA_CHECK(cudaMemset(p, 0xff, (n ? n : 1) * sizeof(T))); }  // NaN in fp32 and bf16
    template <typename H>
    void up(const std::vector<H>& h) {
        static_assert(sizeof(H) == sizeof(T), "host/device element size");
        if (h.size() != n) throw std::runtime_error("upload size mismatch");
        NT_CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    template <typename H>
    std::vector<H> down() const {
        static_assert(sizeof(H) == sizeof(T), "host/device element size");
        std::vector<H> h(n);
        NT_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// Float values exactly representable in T, uploaded as T.
template <typename T>
std::vector<typename Act<T>::H> host_of(const std::vector<float>& x) {
    std::vector<typename Act<T>::H> h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = Act<T>::from(x[i]);
    return h;
}
template <typename T>
void upload(Dev<T>& d, const std::vector<float>& x) {
    d.up(host_of<T>(x));
}
template <typename T>
std::vector<double> download(const Dev<T>& d) {
    const auto h = d.template down<typename Act<T>::H>();
    std::vector<double> r(h.size());
    for (size_t i = 0; i < h.size(); i++) r[i] = Act<T>::to(h[i]);
    return r;
}
template <typename T>
std::vector<float> rounded(std::vector<float> x) {
    for (auto& v : x) v = round_to<T>(v);
    return x;
}
template <typename S>
std::vector<S> as(const std::vector<float>& x) {
    return std::vector<S>(x.begin(), x.end());
}
template <typename S>
std::vector<double> dbl(const std::vector<S>& x) {
    return std::vector<double>(x.begin(), x.end());
}

// ---- random inputs ------------------------------------------------------------
std::mt19937_64 rng(20240607);
std::vector<float> normal(size_t n, float mean = 0.f, float sd = 1.f) {
    std::normal_distribution<float> d(mean, sd);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
std::vector<float> uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
std::vector<int32_t> ints(size_t n, int lo, int hi) {
    std::uniform_int_distribution<int> d(lo, hi);
    std::vector<int32_t> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

// ---- results ------------------------------------------------------------------
double max_rel_err(const std::vector<double>& gpu, const std::vector<double>& ref) {
    if (gpu.size() != ref.size()) return INFINITY;
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < gpu.size(); i++) {
        if (!std::isfinite(gpu[i])) return INFINITY;
        maxref = std::max(maxref, std::fabs(ref[i]));
        maxdiff = std::max(maxdiff, std::fabs(gpu[i] - ref[i]));
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

struct Result {
    std::string kernel, dtype;
    double err, tol, cpu_err;  // cpu_err < 0: not measured
    bool pass;
};
std::vector<Result> results;
cudaStream_t stream = nullptr;
bool quick = false;  // --quick: small attention shapes (for test/gpu/emulate.sh)

void record(const std::string& kernel, const char* dtype, double err, double tol,
            double cpu_err = -1) {
    results.push_back({kernel, dtype, err, tol, cpu_err, err <= tol});
}
void compare(const std::string& kernel, const char* dtype, const std::vector<double>& gpu,
             const std::vector<double>& ref, double tol, const std::vector<double>* cpu = nullptr) {
    record(kernel, dtype, max_rel_err(gpu, ref), tol, cpu ? max_rel_err(*cpu, ref) : -1);
}
void sync() { NT_CUDA_CHECK(cudaStreamSynchronize(stream)); }

// Tolerances, per output kind, for T.
template <typename T>
struct Tol {
    static constexpr bool bf = std::is_same<T, bf16>::value;
    static constexpr double fp32 = 1e-5;
    static constexpr double out = bf ? 8e-3 : fp32;      // one bf16 rounding of an output
    static constexpr double norm = bf ? 1.6e-2 : fp32;   // LayerNorm / softmax outputs
    static constexpr double attn_out = bf ? 1.6e-2 : fp32;
    static constexpr double attn_grad = bf ? 3e-2 : fp32;  // delta from the bf16-rounded out
    static constexpr double accum = bf ? 5e-5 : fp32;      // fp32 sums of exact bf16 products
};

// ---- checks -----------------------------------------------------------------
nt::DropoutKey test_key(uint32_t tensor_id) {
    return nt::DropoutKey{0x0123456789abcdefull, (1ull << 32) + 7, tensor_id};
}

void check_philox() {
    const size_t n = 4099;
    const uint64_t index0 = (1ull << 34) + 3;  // exercises hi32(q) and unaligned blocks
    const nt::DropoutKey key = test_key(11);
    Dev<float> u(n);
    nt::cuda::dropout_uniform_fill(u.p, n, index0, key, stream);
    sync();
    const auto g = u.down<float>();
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += g[i] != nt::dropout_uniform(key, index0 + i);
    record("philox dropout_uniform (mismatches)", "u32", (double)bad, 0);
}

template <typename T>
void check_embedding() {
    const int B = 4, Tn = 77, C = 384, V = 1000, P = 512, TV = 2, N = B * Tn;
    auto ids = ints(N, 0, V - 1);
    for (int i = 0; i < N; i += 3) ids[i] = 0;  // many repeats of one id
    const auto types = ints(N, 0, TV - 1);
    const auto wte = rounded<T>(normal((size_t)V * C)), wpe = rounded<T>(normal((size_t)P * C)),
               wtt = rounded<T>(normal((size_t)TV * C));
    Dev<int32_t> d_ids(N), d_types(N);
    d_ids.up(ids);
    d_types.up(types);
    Dev<T> d_wte(wte.size()), d_wpe(wpe.size()), d_wtt(wtt.size()), d_out((size_t)N * C);
    upload(d_wte, wte);
    upload(d_wpe, wpe);
    upload(d_wtt, wtt);
    nt::cuda::embedding_forward<T>(d_out.p, d_ids.p, d_types.p, d_wte.p, d_wpe.p, d_wtt.p, B, Tn, C, stream);
    sync();
    std::vector<double> ref((size_t)N * C);
    const auto wte_d = dbl(wte), wpe_d = dbl(wpe), wtt_d = dbl(wtt);
    nt::embedding_forward<double>(ref.data(), ids.data(), types.data(), wte_d.data(), wpe_d.data(),
                                  wtt_d.data(), B, Tn, C);
    // The sum is rounded once to T on the GPU and once per add on the CPU.
    compare("embedding_forward", Act<T>::name, download(d_out), ref, Tol<T>::out);

    // backward: dwte/dwpe/dwtt accumulate onto random fp32 starting values.
    const auto dout = rounded<T>(normal((size_t)N * C));
    const auto g_te = normal((size_t)V * C, 0, 0.1f), g_pe = normal((size_t)P * C, 0, 0.1f),
               g_tt = normal((size_t)TV * C, 0, 0.1f);
    std::vector<double> r_te = dbl(g_te), r_pe = dbl(g_pe), r_tt = dbl(g_tt);
    const auto dout_d = dbl(dout);
    nt::embedding_backward<double>(r_te.data(), r_pe.data(), r_tt.data(), dout_d.data(), ids.data(),
                                   types.data(), B, Tn, C);
    Dev<T> d_dout(dout.size());
    upload(d_dout, dout);
    for (int sorted = 0; sorted < 2; sorted++) {
        Dev<float> te(g_te.size()), pe(g_pe.size()), tt(g_tt.size());
        te.up(g_te);
        pe.up(g_pe);
        tt.up(g_tt);
        const std::string name = sorted ? "embedding_backward_sorted" : "embedding_backward(atomic)";
        if (sorted) {
            const auto wb = nt::cuda::make_id_buckets(ids.data(), N, V);
            const auto tb = nt::cuda::make_id_buckets(types.data(), N, TV);
            Dev<int32_t> wo(wb.order.size()), woff(wb.offsets.size()), wid(wb.ids.size());
            Dev<int32_t> to(tb.order.size()), toff(tb.offsets.size()), tid(tb.ids.size());
            wo.up(wb.order), woff.up(wb.offsets), wid.up(wb.ids);
            to.up(tb.order), toff.up(tb.offsets), tid.up(tb.ids);
            const nt::cuda::DeviceBuckets words{wo.p, woff.p, wid.p, (int)wb.ids.size()};
            const nt::cuda::DeviceBuckets typesb{to.p, toff.p, tid.p, (int)tb.ids.size()};
            nt::cuda::embedding_backward_sorted<T>(te.p, pe.p, tt.p, d_dout.p, words, typesb, B, Tn, C, stream);
            sync();
        } else {
            nt::cuda::embedding_backward<T>(te.p, pe.p, tt.p, d_dout.p, d_ids.p, d_types.p, B, Tn, C, stream);
            sync();
        }
        compare(name + " dwte", Act<T>::name, download(te), r_te, Tol<T>::accum);
        compare(name + " dwpe", Act<T>::name, download(pe), r_pe, Tol<T>::accum);
        compare(name + " dwtt", Act<T>::name, download(tt), r_tt, Tol<T>::accum);
    }
}

template <typename T>
void check_layernorm() {
    const int N = 4 * 77, C = 384;
    const float eps = 1e-12f;
    const auto x = rounded<T>(normal((size_t)N * C, 0.5f, 2.f));
    const auto w = rounded<T>(normal(C, 1.f, 0.1f)), b = rounded<T>(normal(C, 0.f, 0.1f));
    const auto xd = dbl(x), wd = dbl(w), bd = dbl(b);
    std::vector<double> ref((size_t)N * C), mean(N), rstd(N);
    nt::layernorm_forward<double>(ref.data(), mean.data(), rstd.data(), xd.data(), wd.data(), bd.data(), N, C, eps);
    std::vector<float> cpu_o((size_t)N * C), cpu_m(N), cpu_r(N);
    const auto xf = as<float>(x);
    nt::layernorm_forward<float>(cpu_o.data(), cpu_m.data(), cpu_r.data(), xf.data(), w.data(), b.data(), N, C, eps);
    const auto cpu_od = dbl(cpu_o);

    Dev<T> d_x(x.size()), d_w(C), d_b(C), d_o(x.size());
    Dev<float> d_m(N), d_r(N);
    upload(d_x, x);
    upload(d_w, w);
    upload(d_b, b);
    nt::cuda::layernorm_forward<T>(d_o.p, d_m.p, d_r.p, d_x.p, d_w.p, d_b.p, N, C, eps, stream);
    sync();
    compare("layernorm_forward out", Act<T>::name, download(d_o), ref, Tol<T>::norm, &cpu_od);
    compare("layernorm_forward mean", Act<T>::name, download(d_m), mean, Tol<T>::fp32);
    compare("layernorm_forward rstd", Act<T>::name, download(d_r), rstd, Tol<T>::fp32);

    // fused residual: residual = round_T(a + b) exactly as on the host.
    {
        const auto a = rounded<T>(normal((size_t)N * C)), bb = rounded<T>(normal((size_t)N * C, 0.3f, 1.5f));
        std::vector<float> res((size_t)N * C);
        for (size_t i = 0; i < res.size(); i++) res[i] = round_to<T>(a[i] + bb[i]);
        const auto rd = dbl(res);
        std::vector<double> r_out((size_t)N * C), r_m(N), r_r(N);
        nt::layernorm_forward<double>(r_out.data(), r_m.data(), r_r.data(), rd.data(), wd.data(), bd.data(), N, C, eps);
        Dev<T> d_a(a.size()), d_bb(bb.size()), d_res(a.size()), d_out(a.size());
        upload(d_a, a);
        upload(d_bb, bb);
        nt::cuda::residual_layernorm_forward<T>(d_res.p, d_out.p, d_m.p, d_r.p, d_a.p, d_bb.p, d_w.p, d_b.p, N, C, eps, stream);
        sync();
        compare("residual_layernorm_forward residual", Act<T>::name, download(d_res), rd, 0);
        compare("residual_layernorm_forward out", Act<T>::name, download(d_out), r_out, Tol<T>::norm);
        // in place: residual aliases a
        nt::cuda::residual_layernorm_forward<T>(d_a.p, d_out.p, d_m.p, d_r.p, d_a.p, d_bb.p, d_w.p, d_b.p, N, C, eps, stream);
        sync();
        compare("residual_layernorm_forward in-place", Act<T>::name, download(d_out), r_out, Tol<T>::norm);
    }

    // backward with the forward's statistics (rounded to fp32, as the GPU stores them)
    std::vector<float> mf(N), rf(N);
    for (int i = 0; i < N; i++) mf[i] = (float)mean[i], rf[i] = (float)rstd[i];
    const auto dout = rounded<T>(normal((size_t)N * C));
    const auto gw0 = normal(C, 0, 0.1f), gb0 = normal(C, 0, 0.1f), dx0 = rounded<T>(normal((size_t)N * C));
    std::vector<double> r_dx((size_t)N * C), r_gw = dbl(gw0), r_gb = dbl(gb0);
    const auto doutd = dbl(dout), mfd = dbl(mf), rfd = dbl(rf);
    nt::layernorm_backward<double>(r_dx.data(), r_gw.data(), r_gb.data(), doutd.data(), xd.data(), wd.data(), mfd.data(), rfd.data(), N, C);
    std::vector<float> c_dx((size_t)N * C), c_gw = gw0, c_gb = gb0;
    const auto doutf = as<float>(dout);
    nt::layernorm_backward<float>(c_dx.data(), c_gw.data(), c_gb.data(), doutf.data(), xf.data(), w.data(), mf.data(), rf.data(), N, C);
    const auto c_dxd = dbl(c_dx), c_gwd = dbl(c_gw), c_gbd = dbl(c_gb);

    Dev<T> d_dout(dout.size()), d_dx(dout.size());
    Dev<float> d_gw(C), d_gb(C), scratch(nt::cuda::layernorm_backward_scratch_floats(N, C));
    upload(d_dout, dout);
    d_m.up(mf);
    d_r.up(rf);
    d_gw.up(gw0);
    d_gb.up(gb0);
    nt::cuda::layernorm_backward<T>(d_dx.p, d_gw.p, d_gb.p, d_dout.p, d_x.p, d_w.p, d_m.p, d_r.p, N, C, scratch.p, false, stream);
    sync();
    compare("layernorm_backward dinp", Act<T>::name, download(d_dx), r_dx, Tol<T>::out, &c_dxd);
    compare("layernorm_backward dweight", Act<T>::name, download(d_gw), r_gw, Tol<T>::accum, &c_gwd);
    compare("layernorm_backward dbias", Act<T>::name, download(d_gb), r_gb, Tol<T>::accum, &c_gbd);
    // accumulate_dinp, no parameter gradients
    upload(d_dx, dx0);
    nt::cuda::layernorm_backward<T>(d_dx.p, nullptr, nullptr, d_dout.p, d_x.p, d_w.p, d_m.p, d_r.p, N, C, nullptr, true, stream);
    sync();
    std::vector<double> r_acc(r_dx);
    for (size_t i = 0; i < r_acc.size(); i++) r_acc[i] += dx0[i];
    compare("layernorm_backward dinp (accumulate)", Act<T>::name, download(d_dx), r_acc, Tol<T>::out);
}

template <typename T>
void check_elementwise() {
    const size_t n = 100003;
    const auto x = rounded<T>(normal(n, 0.f, 3.f)), dout = rounded<T>(normal(n));
    const auto xd = dbl(x), doutd = dbl(dout);
    const auto xf = as<float>(x), doutf = as<float>(dout);
    Dev<T> d_x(n), d_dout(n), d_y(n);
    upload(d_x, x);
    upload(d_dout, dout);
    std::vector<double> ref(n);
    std::vector<float> cpu(n);

    nt::gelu_forward<double>(ref.data(), xd.data(), n);
    nt::gelu_forward<float>(cpu.data(), xf.data(), n);
    auto cpud = dbl(cpu);
    nt::cuda::gelu_forward<T>(d_y.p, d_x.p, n, stream);
    sync();
    compare("gelu_forward", Act<T>::name, download(d_y), ref, Tol<T>::out, &cpud);

    d_y.poison();
    nt::gelu_backward<double>(ref.data(), xd.data(), doutd.data(), n);
    nt::gelu_backward<float>(cpu.data(), xf.data(), doutf.data(), n);
    cpud = dbl(cpu);
    nt::cuda::gelu_backward<T>(d_y.p, d_x.p, d_dout.p, n, stream);
    sync();
    compare("gelu_backward", Act<T>::name, download(d_y), ref, Tol<T>::out, &cpud);

    d_y.poison();
    nt::tanh_forward<double>(ref.data(), xd.data(), n);
    nt::tanh_forward<float>(cpu.data(), xf.data(), n);
    cpud = dbl(cpu);
    nt::cuda::tanh_forward<T>(d_y.p, d_x.p, n, stream);
    sync();
    compare("tanh_forward", Act<T>::name, download(d_y), ref, Tol<T>::out, &cpud);

    // backward from a saved output (rounded to T like the GPU's own)
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) out[i] = round_to<T>(std::tanh(x[i]));
    const auto outd = dbl(out);
    Dev<T> d_out(n);
    upload(d_out, out);
    d_y.poison();
    nt::tanh_backward<double>(ref.data(), outd.data(), doutd.data(), n);
    nt::cuda::tanh_backward<T>(d_y.p, d_out.p, d_dout.p, n, stream);
    sync();
    compare("tanh_backward", Act<T>::name, download(d_y), ref, Tol<T>::out);

    // add_inplace and scale_inplace: one fp32 op then one rounding, as on the host
    std::vector<double> r_add(n), r_scale(n);
    for (size_t i = 0; i < n; i++) {
        r_add[i] = round_to<T>(dout[i] + x[i]);
        r_scale[i] = round_to<T>(x[i] * 0.37f);
    }
    upload(d_y, dout);
    nt::cuda::add_inplace<T>(d_y.p, d_x.p, n, stream);
    sync();
    compare("add_inplace", Act<T>::name, download(d_y), r_add, 0);
    upload(d_y, x);
    nt::cuda::scale_inplace<T>(d_y.p, n, 0.37f, stream);
    sync();
    compare("scale_inplace", Act<T>::name, download(d_y), r_scale, 0);
}

void check_convert() {
    const size_t n = 65537;
    auto x = normal(n, 0.f, 10.f);
    x[0] = 0.f, x[1] = -0.f, x[2] = 1e-40f, x[3] = 3.0e38f;
    Dev<float> d_x(n), d_back(n);
    Dev<bf16> d_b(n);
    d_x.up(x);
    nt::cuda::convert(d_b.p, d_x.p, n, stream);
    nt::cuda::convert(d_back.p, d_b.p, n, stream);
    sync();
    const auto hb = d_b.down<uint16_t>();
    const auto back = d_back.down<float>();
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += hb[i] != f2bf(x[i]) || back[i] != bf2f(f2bf(x[i]));
    record("convert fp32<->bf16 (mismatches)", "bf16", (double)bad, 0);
}

template <typename T>
void check_dropout() {
    const size_t n = 100003;  // not a multiple of 4
    const float p = 0.1f;
    const nt::DropoutKey key = test_key(5);
    const auto x = rounded<T>(normal(n));
    // CPU fp32 on the same values; then one rounding to T (identical fp32 ops).
    std::vector<float> cpu(n), cpub(n);
    nt::dropout_forward<float>(cpu.data(), x.data(), n, p, key);
    std::vector<double> ref(n);
    for (size_t i = 0; i < n; i++) ref[i] = round_to<T>(cpu[i]);
    Dev<T> d_x(n), d_y(n);
    upload(d_x, x);
    nt::cuda::dropout_forward<T>(d_y.p, d_x.p, n, p, key, stream);
    sync();
    compare("dropout_forward (bitwise)", Act<T>::name, download(d_y), ref, 0);
    nt::dropout_backward<float>(cpub.data(), x.data(), n, p, key);
    for (size_t i = 0; i < n; i++) ref[i] = round_to<T>(cpub[i]);
    nt::cuda::dropout_backward<T>(d_x.p, d_x.p, n, p, key, stream);  // in place
    sync();
    compare("dropout_backward in-place (bitwise)", Act<T>::name, download(d_x), ref, 0);
    // p = 1 drops everything
    nt::cuda::dropout_forward<T>(d_y.p, d_x.p, n, 1.f, key, stream);
    sync();
    compare("dropout_forward p=1", Act<T>::name, download(d_y), std::vector<double>(n, 0.0), 0);
}

struct AttnCase {
    int B, Tn, C, NH;
    float p;
};

template <typename T>
void check_attention(const AttnCase& c) {
    const int B = c.B, Tn = c.Tn, C = c.C, NH = c.NH;
    const size_t N = (size_t)B * Tn;
    const std::string tag = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " HS=" +
                            std::to_string(C / NH) + " p=" + (c.p > 0 ? "0.1" : "0");
    const nt::DropoutKey key = test_key(7);
    const auto qkv = rounded<T>(normal(N * 3 * C));
    // example 0 full, 1 padded after Tn/2+3, 2 fully masked, the rest random lengths
    std::vector<int32_t> mask(N, 1);
    for (int b = 1; b < B; b++) {
        const int len = b == 1 ? std::min(Tn, Tn / 2 + 3) : b == 2 ? 0 : ints(1, 1, Tn)[0];
        for (int t = len; t < Tn; t++) mask[(size_t)b * Tn + t] = 0;
    }
    const auto qkvd = dbl(qkv);
    std::vector<double> r_out(N * C), r_att((size_t)B * NH * Tn * Tn);
    nt::attention_forward<double>(r_out.data(), r_att.data(), qkvd.data(), mask.data(), B, Tn, C, NH, c.p, key);
    std::vector<float> c_out(N * C), c_att((size_t)B * NH * Tn * Tn);
    const auto qkvf = as<float>(qkv);
    nt::attention_forward<float>(c_out.data(), c_att.data(), qkvf.data(), mask.data(), B, Tn, C, NH, c.p, key);
    const auto c_outd = dbl(c_out);

    Dev<T> d_qkv(qkv.size()), d_out(N * C), d_dout(N * C), d_dqkv(qkv.size());
    Dev<float> d_lse((size_t)B * NH * Tn), d_delta((size_t)B * NH * Tn);
    Dev<int32_t> d_mask(N);
    upload(d_qkv, qkv);
    d_mask.up(mask);
    nt::cuda::attention_forward<T>(d_out.p, d_lse.p, d_qkv.p, d_mask.p, B, Tn, C, NH, c.p, key, stream);
    sync();
    compare("attention_forward out" + tag, Act<T>::name, download(d_out), r_out, Tol<T>::attn_out, &c_outd);

    const auto dout = rounded<T>(normal(N * C));
    const auto doutd = dbl(dout);
    std::vector<double> r_dqkv(qkv.size()), scratch((size_t)B * NH * Tn * Tn);
    nt::attention_backward<double>(r_dqkv.data(), scratch.data(), doutd.data(), qkvd.data(), r_att.data(), mask.data(), B, Tn, C, NH, c.p, key);
    std::vector<float> c_dqkv(qkv.size()), c_scr((size_t)B * NH * Tn * Tn);
    const auto doutf = as<float>(dout);
    nt::attention_backward<float>(c_dqkv.data(), c_scr.data(), doutf.data(), qkvf.data(), c_att.data(), mask.data(), B, Tn, C, NH, c.p, key);
    const auto c_dqkvd = dbl(c_dqkv);
    upload(d_dout, dout);
    nt::cuda::attention_backward<T>(d_dqkv.p, d_delta.p, d_dout.p, d_out.p, d_qkv.p, d_lse.p, d_mask.p, B, Tn, C, NH, c.p, key, stream);
    sync();
    compare("attention_backward dqkv" + tag, Act<T>::name, download(d_dqkv), r_dqkv, Tol<T>::attn_grad, &c_dqkvd);
}

template <typename T>
void check_crossentropy(int B, int L, bool weights, float eps, bool all_ignored) {
    const auto logits = rounded<T>(normal((size_t)B * L, 0.f, 2.f));
    auto labels = ints(B, 0, L - 1);
    for (int i = 0; i < B; i++)
        if (all_ignored || i % 5 == 3) labels[i] = -100;
    const auto w = uniform(L, 0.5f, 2.f);
    const float gs = 0.5f;
    const auto ld = dbl(logits), wd = dbl(w);
    std::vector<double> r_d((size_t)B * L);
    const double r_loss = nt::crossentropy_softmax_forward_backward<double>(
        r_d.data(), ld.data(), labels.data(), weights ? wd.data() : nullptr, B, L, eps, gs);
    Dev<T> d_logits(logits.size()), d_dl(logits.size());
    Dev<float> d_w(L), d_loss(1);
    Dev<int32_t> d_labels(B);
    upload(d_logits, logits);
    d_w.up(w);
    d_labels.up(labels);
    nt::cuda::crossentropy_softmax_forward_backward<T>(d_loss.p, d_dl.p, d_logits.p, d_labels.p, weights ? d_w.p : nullptr, B, L, eps, gs, stream);
    sync();
    const std::string tag = " B=" + std::to_string(B) + " L=" + std::to_string(L) +
                            (weights ? " weighted" : "") + (eps > 0 ? " smoothed" : "") +
                            (all_ignored ? " all-ignored" : "");
    compare("crossentropy loss" + tag, Act<T>::name, download(d_loss), {r_loss}, all_ignored ? 0 : Tol<T>::fp32);
    compare("crossentropy dlogits" + tag, Act<T>::name, download(d_dl), r_d, all_ignored ? 0 : Tol<T>::out);
    // forward only (dlogits null)
    d_loss.poison();
    nt::cuda::crossentropy_softmax_forward_backward<T>(d_loss.p, (T*)nullptr, d_logits.p, d_labels.p, weights ? d_w.p : nullptr, B, L, eps, gs, stream);
    sync();
    compare("crossentropy loss (forward only)" + tag, Act<T>::name, download(d_loss), {r_loss}, all_ignored ? 0 : Tol<T>::fp32);
}

// Row-major M x N matrix with row stride ld, padding filled with random junk.
std::vector<float> matrix(int rows, int cols, int ld) {
    (void)cols;
    return normal((size_t)rows * ld);
}

template <typename TA, typename TC>
void check_gemm(nt::cuda::Blas& blas, double tol) {
    const int M = 67, N = 129, K = 95;
    const float alpha = 0.7f, beta = 0.3f;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
            const auto A = rounded<TA>(matrix(ta ? K : M, ta ? M : K, lda));
            const auto Bm = rounded<TA>(matrix(tb ? N : K, tb ? K : N, ldb));
            const auto C0 = rounded<TC>(normal((size_t)M * ldc));
            const auto Ad = dbl(A), Bd = dbl(Bm);
            auto ref = dbl(C0);
            nt::gemm<double>(ta, tb, M, N, K, alpha, Ad.data(), lda, Bd.data(), ldb, beta, ref.data(), ldc);
            Dev<TA> dA(A.size()), dB(Bm.size());
            Dev<TC> dC(C0.size());
            upload(dA, A);
            upload(dB, Bm);
            upload(dC, C0);
            blas.gemm<TA, TC>(stream, ta, tb, M, N, K, alpha, dA.p, lda, dB.p, ldb, beta, dC.p, ldc);
            sync();
            const std::string name = std::string("gemm ") + (ta ? "T" : "N") + (tb ? "T" : "N") +
                                     " -> " + Act<TC>::name + " (alpha, beta, padded ld)";
            compare(name, Act<TA>::name, download(dC), ref, tol);
        }
}

template <typename T>
void check_linear(nt::cuda::Blas& blas) {
    const int N = 2 * 77, IC = 384, OC = 1536;
    const auto x = rounded<T>(normal((size_t)N * IC)), w = rounded<T>(normal((size_t)OC * IC, 0, 0.05f)),
               b = rounded<T>(normal(OC, 0, 0.1f));
    const auto xd = dbl(x), wd = dbl(w), bd = dbl(b);
    std::vector<double> ref((size_t)N * OC);
    nt::linear_forward<double>(ref.data(), xd.data(), wd.data(), bd.data(), N, IC, OC);
    Dev<T> dx(x.size()), dw(w.size()), db(b.size()), dy((size_t)N * OC);
    upload(dx, x);
    upload(dw, w);
    upload(db, b);
    blas.linear_forward<T>(stream, dy.p, dx.p, dw.p, db.p, N, IC, OC);
    sync();
    compare("linear_forward (bias epilogue)", Act<T>::name, download(dy), ref, Tol<T>::out);

    const auto dout = rounded<T>(normal((size_t)N * OC));
    const auto gw0 = normal((size_t)OC * IC, 0, 0.1f), gb0 = normal(OC, 0, 0.1f);
    const auto dx0 = rounded<T>(normal((size_t)N * IC));
    const auto doutd = dbl(dout);
    std::vector<double> r_dx((size_t)N * IC), r_gw = dbl(gw0), r_gb = dbl(gb0);
    nt::linear_backward<double>(r_dx.data(), r_gw.data(), r_gb.data(), doutd.data(), xd.data(), wd.data(), N, IC, OC, false);
    Dev<T> ddout(dout.size()), ddx(dx0.size());
    Dev<float> dgw(gw0.size()), dgb(gb0.size()), scratch(nt::cuda::bias_backward_scratch_floats(N, OC));
    upload(ddout, dout);
    dgw.up(gw0);
    dgb.up(gb0);
    blas.linear_backward<T>(stream, ddx.p, dgw.p, dgb.p, ddout.p, dx.p, dw.p, N, IC, OC, false, scratch.p);
    sync();
    compare("linear_backward dinp", Act<T>::name, download(ddx), r_dx, Tol<T>::out);
    compare("linear_backward dweight (fp32 +=)", Act<T>::name, download(dgw), r_gw, Tol<T>::accum);
    compare("linear_backward dbias (fp32 +=)", Act<T>::name, download(dgb), r_gb, Tol<T>::accum);
    upload(ddx, dx0);
    blas.linear_backward<T>(stream, ddx.p, nullptr, nullptr, ddout.p, dx.p, dw.p, N, IC, OC, true, nullptr);
    sync();
    for (size_t i = 0; i < r_dx.size(); i++) r_dx[i] += dx0[i];
    compare("linear_backward dinp (accumulate)", Act<T>::name, download(ddx), r_dx, Tol<T>::out);
}

void check_grad_norm() {
    const size_t n = 3000001;
    const auto g = normal(n, 0.f, 0.01f);
    const double r_ss = nt::sum_squares<float>(g.data(), n);  // accumulates in double
    const double r_norm = std::sqrt(r_ss);
    const float max_norm = 1.f;
    const double r_clip = std::min(1.0, (double)max_norm / ((float)r_norm + 1e-6f));
    Dev<float> dg(n), dnorm(1), dclip(1);
    Dev<double> scratch(nt::cuda::grad_norm_scratch_doubles()), dss(1);
    dg.up(g);
    nt::cuda::global_grad_norm(dnorm.p, dclip.p, dg.p, n, max_norm, scratch.p, stream);
    nt::cuda::sum_squares(dss.p, dg.p, n, scratch.p, stream);
    sync();
    compare("global_grad_norm norm", "fp32", dbl(dnorm.down<float>()), {r_norm}, 1e-6);
    compare("global_grad_norm clip_scale", "fp32", dbl(dclip.down<float>()), {r_clip}, 1e-6);
    compare("sum_squares (double)", "fp64", dss.down<double>(), {r_ss}, 1e-12);
    // a non-finite gradient: the norm is inf/NaN and the clip scale NaN (adamw skips)
    auto bad = g;
    bad[n / 2] = INFINITY;
    dg.up(bad);
    nt::cuda::global_grad_norm(dnorm.p, dclip.p, dg.p, n, max_norm, scratch.p, stream);
    sync();
    const float bn = dnorm.down<float>()[0], bc = dclip.down<float>()[0];
    record("global_grad_norm inf gradient -> norm inf, clip NaN", "fp32", std::isinf(bn) && std::isnan(bc) ? 0 : 1, 0);
    // an exactly zero gradient (everything frozen, or a batch that touches no
    // weight): norm 0 and clip scale 1, never 0/0
    dg.up(std::vector<float>(n, 0.f));
    nt::cuda::global_grad_norm(dnorm.p, dclip.p, dg.p, n, max_norm, scratch.p, stream);
    sync();
    compare("global_grad_norm zero gradient -> norm 0", "fp32", dbl(dnorm.down<float>()), {0.0}, 0);
    compare("global_grad_norm zero gradient -> clip 1", "fp32", dbl(dclip.down<float>()), {1.0}, 0);
}

// The first step of a weight whose gradient is exactly zero (a padding row,
// an unused token type): m = v = 0, so the Adam term is 0 / (0 + eps) = 0 and
// only weight decay moves the weight, in both precisions; never NaN.
void check_adamw_zero_gradient() {
    const size_t n = 4099;
    const float lr = 1e-2f, wd = 0.01f;
    const auto p0 = normal(n);
    std::vector<double> rp = dbl(p0), rm(n, 0.0), rv(n, 0.0);
    const std::vector<double> zero(n, 0.0);
    nt::adamw_update<double>(rp.data(), zero.data(), rm.data(), rv.data(), n, lr, 0.9f, 0.999f, 1e-8f, wd, 1, 1.f);
    Dev<float> dp(n), dg(n), dm(n), dv(n);
    Dev<bf16> dpb(n);
    dp.up(p0), dg.up(std::vector<float>(n, 0.f)), dm.up(std::vector<float>(n, 0.f)), dv.up(std::vector<float>(n, 0.f));
    nt::cuda::adamw_update(dp.p, dpb.p, dg.p, dm.p, dv.p, nullptr, n, lr, 0.9f, 0.999f, 1e-8f, wd, 1, 1.f, nullptr, stream);
    sync();
    compare("adamw_update zero gradient params (decay only)", "fp32", dbl(dp.down<float>()), rp, 1e-6);
    compare("adamw_update zero gradient exp_avg", "fp32", dbl(dm.down<float>()), rm, 0);
    compare("adamw_update zero gradient exp_avg_sq", "fp32", dbl(dv.down<float>()), rv, 0);
    const auto gb = dpb.down<uint16_t>();
    size_t nonfinite = 0;
    for (uint16_t h : gb) nonfinite += !std::isfinite(bf2f(h));
    record("adamw_update zero gradient bf16 copy (non-finite)", "bf16", (double)nonfinite, 0);
}

void check_adamw() {
    const size_t n = 1000003;
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, gs_host = 0.7f, gs_dev = 0.5f;
    const int64_t t = 3;
    const auto p0 = normal(n), g = normal(n, 0.f, 0.1f), m0 = normal(n, 0.f, 0.01f);
    const auto v0 = uniform(n, 0.f, 1e-3f);
    auto flags = ints(n, 0, 2);
    std::vector<uint8_t> f8(flags.begin(), flags.end());
    // CPU fp64 with and without decay over everything, then picked per flag.
    const float gs = gs_host * gs_dev;
    auto run_cpu = [&](float decay, std::vector<double>& p, std::vector<double>& m, std::vector<double>& v) {
        p = dbl(p0), m = dbl(m0), v = dbl(v0);
        const auto gd = dbl(g);
        nt::adamw_update<double>(p.data(), gd.data(), m.data(), v.data(), n, lr, b1, b2, eps, decay, t, gs);
    };
    std::vector<double> pd, md, vd, pn, mn, vn;
    run_cpu(wd, pd, md, vd);
    run_cpu(0.f, pn, mn, vn);
    std::vector<double> rp(n), rm(n), rv(n);
    for (size_t i = 0; i < n; i++) {
        rp[i] = f8[i] == 0 ? p0[i] : f8[i] == 1 ? pn[i] : pd[i];
        rm[i] = f8[i] == 0 ? m0[i] : f8[i] == 1 ? mn[i] : md[i];
        rv[i] = f8[i] == 0 ? v0[i] : f8[i] == 1 ? vn[i] : vd[i];
    }
    Dev<float> dp(n), dg(n), dm(n), dv(n), dscale(1);
    Dev<bf16> dpb(n);
    Dev<uint8_t> dflags(n);
    dp.up(p0), dg.up(g), dm.up(m0), dv.up(v0), dflags.up(f8);
    dscale.up(std::vector<float>{gs_dev});
    // frozen elements' bf16 copy is not written: start it from the bf16 of p0
    std::vector<uint16_t> pb0(n);
    for (size_t i = 0; i < n; i++) pb0[i] = f2bf(p0[i]);
    dpb.up(pb0);
    nt::cuda::adamw_update(dp.p, dpb.p, dg.p, dm.p, dv.p, dflags.p, n, lr, b1, b2, eps, wd, t, gs_host, dscale.p, stream);
    sync();
    const auto gp = dp.down<float>();
    compare("adamw_update params", "fp32", dbl(gp), rp, 1e-5);
    compare("adamw_update exp_avg", "fp32", dbl(dm.down<float>()), rm, 1e-5);
    compare("adamw_update exp_avg_sq", "fp32", dbl(dv.down<float>()), rv, 1e-5);
    const auto gb = dpb.down<uint16_t>();
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += gb[i] != f2bf(gp[i]);
    record("adamw_update bf16 copy (mismatches)", "bf16", (double)bad, 0);
    // NaN device scale (non-finite norm): nothing changes, bit for bit
    const auto gm = dm.down<float>(), gv = dv.down<float>();
    dscale.up(std::vector<float>{NAN});
    nt::cuda::adamw_update(dp.p, dpb.p, dg.p, dm.p, dv.p, dflags.p, n, lr, b1, b2, eps, wd, t + 1, gs_host, dscale.p, stream);
    sync();
    size_t changed = 0;
    const auto gp2 = dp.down<float>(), gm2 = dm.down<float>(), gv2 = dv.down<float>();
    const auto gb2 = dpb.down<uint16_t>();
    for (size_t i = 0; i < n; i++)
        changed += std::memcmp(&gp2[i], &gp[i], 4) != 0 || std::memcmp(&gm2[i], &gm[i], 4) != 0 ||
                   std::memcmp(&gv2[i], &gv[i], 4) != 0 || gb2[i] != gb[i];
    record("adamw_update NaN scale skips (changed elements)", "fp32", (double)changed, 0);
    check_adamw_zero_gradient();
}

// Runs one check; an exception becomes a failed row naming it, and the
// remaining checks still run (a sticky CUDA error will fail them too).
// ---- decoder checks: causal attention (GQA, segments), KV cache, decode ------
// Shapes: qkv (B, T, (NH + 2 NKV) HS), out (B, T, NH HS), lse (B, NH, T) fp32.
struct DecAttnCase {
    int B, Tn, NH, NKV, HS;
};

// Decoder masks, by row b % 5: 0 full; 1 left padding (a generation-style
// batch of prompts); 2 right padding; 3 packed: segments 1, 2, 3 then 2
// padding tokens; 4 fully padded (no visible key anywhere).
std::vector<int32_t> decoder_mask(int B, int Tn) {
    std::vector<int32_t> mask((size_t)B * Tn, 1);
    for (int b = 0; b < B; b++) {
        int32_t* m = mask.data() + (size_t)b * Tn;
        const int a = Tn / 4, c = a + Tn / 3, e = Tn - 2;
        for (int t = 0; t < Tn; t++) {
            switch (b % 5) {
                case 1: m[t] = t < Tn / 3 ? 0 : 1; break;
                case 2: m[t] = t >= Tn - Tn / 4 ? 0 : 1; break;
                case 3: m[t] = t < a ? 1 : t < c ? 2 : t < e ? 3 : 0; break;
                case 4: m[t] = 0; break;
                default: break;
            }
        }
    }
    return mask;
}

// max |x| over the elements of rows (b, t) with mask 0, x (B*T, width): a
// padding row's out, lse and gradients must be exactly 0.
double padding_max_abs(const std::vector<double>& x, const std::vector<int32_t>& mask, size_t width) {
    double mx = 0;
    for (size_t n = 0; n < mask.size(); n++)
        if (mask[n] == 0)
            for (size_t i = 0; i < width; i++) {
                const double v = x[n * width + i];
                mx = std::max(mx, std::isfinite(v) ? std::fabs(v) : INFINITY);
            }
    return mx;
}

// Tolerances. fp32: 1e-5 (as every fp32 kernel). lse is fp32 for both dtypes
// and computed in fp32 from the exact inputs: 1e-5 for both. bf16 out, dqkv
// and decode out: the GPU computes in fp32 from the bf16 values the reference
// also uses (the backward's reference reads the GPU's own out and lse), so its
// error is one bf16 rounding of each output (8-bit significand: <= 2^-8 |x|
// <= 2^-8 max|ref|, ~3.9e-3) plus fp32 sums (~1e-6); the bf16 forward and
// backward run their products on tensor cores and so also round P and dS to
// bf16 (<= 2^-9 relative per term, averaging out over the terms): Tol::out
// (8e-3); seen on the emulator: 1.8e-3 .. 4.0e-3. decode_attention keeps P
// in fp32, so decode vs the GPU forward's last row holds both effects (seen:
// 1.4e-3 .. 2.8e-3).
template <typename T>
void check_causal_attention(const DecAttnCase& c) {
    const int B = c.B, Tn = c.Tn, NH = c.NH, NKV = c.NKV, HS = c.HS;
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const size_t N = (size_t)B * Tn, L = (size_t)B * NH * Tn;
    const std::string tag = " B=" + std::to_string(B) + " T=" + std::to_string(Tn) + " NH=" +
                            std::to_string(NH) + " NKV=" + std::to_string(NKV) + " HS=" + std::to_string(HS);
    const char* dt = Act<T>::name;
    const auto qkv = rounded<T>(normal(N * QKV));
    const auto mask = decoder_mask(B, Tn);
    const auto qkvd = dbl(qkv);
    const auto qkvf = as<float>(qkv);
    // lse: the CPU writes -inf for a padding row, the CUDA contract 0
    auto lse_zeroed = [&](std::vector<double> l) {
        for (auto& v : l) v = std::isfinite(v) ? v : 0.0;
        return l;
    };
    std::vector<double> r_out(N * OC), r_lse(L);
    nt::causal_attention_forward<double>(r_out.data(), r_lse.data(), qkvd.data(), mask.data(), B, Tn, NH, NKV, HS);
    r_lse = lse_zeroed(r_lse);
    std::vector<float> c_out(N * OC), c_lse(L);
    nt::causal_attention_forward<float>(c_out.data(), c_lse.data(), qkvf.data(), mask.data(), B, Tn, NH, NKV, HS);
    const auto c_outd = dbl(c_out);
    const auto c_lsed = lse_zeroed(dbl(c_lse));

    Dev<T> d_qkv(qkv.size()), d_out(N * OC), d_dout(N * OC), d_dqkv(qkv.size());
    Dev<float> d_lse(L), d_delta(L);
    Dev<int32_t> d_mask(N);
    upload(d_qkv, qkv);
    d_mask.up(mask);
    nt::cuda::causal_attention_forward<T>(d_out.p, d_lse.p, d_qkv.p, d_mask.p, B, Tn, NH, NKV, HS, stream);
    sync();
    const auto g_out = download(d_out);
    const auto g_lse = dbl(d_lse.down<float>());
    compare("causal_attention_forward out" + tag, dt, g_out, r_out, Tol<T>::out, &c_outd);
    compare("causal_attention_forward lse" + tag, dt, g_lse, r_lse, Tol<T>::fp32, &c_lsed);

    // backward, on the GPU's own out and lse (what it sees); padding rows' lse
    // back to the CPU's -inf
    std::vector<double> lse_in = g_lse;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++)
                if (mask[(size_t)b * Tn + t] == 0) lse_in[((size_t)b * NH + h) * Tn + t] = -INFINITY;
    const auto dout = rounded<T>(normal(N * OC));
    const auto doutd = dbl(dout);
    std::vector<double> r_dqkv(qkv.size());
    nt::causal_attention_backward<double>(r_dqkv.data(), doutd.data(), g_out.data(), qkvd.data(), lse_in.data(), mask.data(), B, Tn, NH, NKV, HS);
    std::vector<float> c_dqkv(qkv.size());
    const auto doutf = as<float>(dout);
    const std::vector<float> g_outf(g_out.begin(), g_out.end());
    const std::vector<float> lse_inf(lse_in.begin(), lse_in.end());
    nt::causal_attention_backward<float>(c_dqkv.data(), doutf.data(), g_outf.data(), qkvf.data(), lse_inf.data(), mask.data(), B, Tn, NH, NKV, HS);
    const auto c_dqkvd = dbl(c_dqkv);
    upload(d_dout, dout);
    nt::cuda::causal_attention_backward<T>(d_dqkv.p, d_delta.p, d_dout.p, d_out.p, d_qkv.p, d_lse.p, d_mask.p, B, Tn, NH, NKV, HS, stream);
    sync();
    const auto g_dqkv = download(d_dqkv);
    compare("causal_attention_backward dqkv" + tag, dt, g_dqkv, r_dqkv, Tol<T>::out, &c_dqkvd);

    // padding rows (rows 4 mod 5 whole, and the padded ends): exactly 0
    std::vector<double> lse_bt(N * NH);  // (B, T, NH) view of lse for padding_max_abs
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < Tn; t++) lse_bt[((size_t)b * Tn + t) * NH + h] = g_lse[((size_t)b * NH + h) * Tn + t];
    const double pad = std::max({padding_max_abs(g_out, mask, OC), padding_max_abs(lse_bt, mask, NH),
                                 padding_max_abs(g_dqkv, mask, QKV)});
    record("causal_attention padding rows: out, lse, dqkv == 0" + tag, dt, pad, 0);
}

// Generation: left-padded prompts of Tp tokens (row B-1 all padding), one new
// token. kv_cache_store fills the cache from the prefill's qkv (col0 = 0) and
// the new token's (col0 = Tp); decode_attention on the new token's q must
// equal the CPU decode_attention and causal_attention_forward's last row on
// the whole Tp+1 tokens. The cache has 3 columns past ncols, NaN, masked 1:
// decode must not read them.
template <typename T>
void check_decode(const DecAttnCase& c) {
    const int B = c.B, Tp = c.Tn, Tn = Tp + 1, NH = c.NH, NKV = c.NKV, HS = c.HS, cap = Tn + 3;
    const int QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const std::string tag = " B=" + std::to_string(B) + " T=" + std::to_string(Tp) + "+1 NH=" +
                            std::to_string(NH) + " NKV=" + std::to_string(NKV) + " HS=" + std::to_string(HS);
    const char* dt = Act<T>::name;
    const auto qkv = rounded<T>(normal((size_t)B * Tn * QKV));
    std::vector<int32_t> mask((size_t)B * Tn, 1), cmask((size_t)B * cap, 1);
    for (int b = 0; b < B; b++) {
        const int pad = b == B - 1 ? Tp : b * Tp / B;
        for (int t = 0; t < pad; t++) mask[(size_t)b * Tn + t] = 0;
        for (int t = 0; t < Tn; t++) cmask[(size_t)b * cap + t] = mask[(size_t)b * Tn + t];
    }
    std::vector<float> prefill((size_t)B * Tp * QKV), next((size_t)B * QKV);
    for (int b = 0; b < B; b++) {
        const float* src = qkv.data() + (size_t)b * Tn * QKV;
        std::copy(src, src + (size_t)Tp * QKV, prefill.begin() + (size_t)b * Tp * QKV);
        std::copy(src + (size_t)Tp * QKV, src + (size_t)Tn * QKV, next.begin() + (size_t)b * QKV);
    }
    // the cache the CPU expects: (B, NKV, cap, HS), columns >= Tn unused
    const size_t csize = (size_t)B * NKV * cap * HS;
    std::vector<double> hk(csize, 0.0), hv(csize, 0.0), ek, ev, gk, gv;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < NKV; g++)
            for (int t = 0; t < Tn; t++)
                for (int d = 0; d < HS; d++) {
                    const size_t i = (((size_t)b * NKV + g) * cap + t) * HS + d;
                    const float* row = qkv.data() + ((size_t)b * Tn + t) * QKV;
                    hk[i] = row[(NH + g) * HS + d];
                    hv[i] = row[(NH + NKV + g) * HS + d];
                }

    Dev<T> d_pre(prefill.size()), d_next(next.size()), d_kc(csize), d_vc(csize), d_out((size_t)B * OC);
    Dev<T> d_qkv(qkv.size()), d_fout((size_t)B * Tn * OC);
    Dev<float> d_lse((size_t)B * NH * Tn);
    Dev<int32_t> d_cmask(cmask.size()), d_mask(mask.size());
    upload(d_pre, prefill);
    upload(d_next, next);
    upload(d_qkv, qkv);
    d_cmask.up(cmask);
    d_mask.up(mask);
    nt::cuda::kv_cache_store<T>(d_kc.p, d_vc.p, d_pre.p, B, Tp, NH, NKV, HS, 0, cap, stream);
    nt::cuda::kv_cache_store<T>(d_kc.p, d_vc.p, d_next.p, B, 1, NH, NKV, HS, Tp, cap, stream);
    sync();
    const auto kc = download(d_kc), vc = download(d_vc);
    for (size_t i = 0; i < csize; i++)
        if ((i / HS) % cap < (size_t)Tn) {  // the stored columns
            ek.push_back(hk[i]), ev.push_back(hv[i]), gk.push_back(kc[i]), gv.push_back(vc[i]);
        }
    compare("kv_cache_store k (bitwise)" + tag, dt, gk, ek, 0);
    compare("kv_cache_store v (bitwise)" + tag, dt, gv, ev, 0);

    nt::cuda::decode_attention<T>(d_out.p, d_next.p, QKV, d_kc.p, d_vc.p, d_cmask.p, B, NH, NKV, HS, Tn, cap, stream);
    nt::cuda::causal_attention_forward<T>(d_fout.p, d_lse.p, d_qkv.p, d_mask.p, B, Tn, NH, NKV, HS, stream);
    sync();
    const auto g_out = download(d_out), g_fout = download(d_fout);
    const auto nextd = dbl(next);
    std::vector<double> r_dec((size_t)B * OC);
    nt::decode_attention<double>(r_dec.data(), nextd.data(), QKV, hk.data(), hv.data(), cmask.data(), B, NH, NKV, HS, Tn, cap);
    const std::vector<float> hkf(hk.begin(), hk.end()), hvf(hv.begin(), hv.end());
    std::vector<float> c_dec((size_t)B * OC);
    nt::decode_attention<float>(c_dec.data(), next.data(), QKV, hkf.data(), hvf.data(), cmask.data(), B, NH, NKV, HS, Tn, cap);
    const auto c_decd = dbl(c_dec);
    compare("decode_attention out vs CPU decode" + tag, dt, g_out, r_dec, Tol<T>::out, &c_decd);

    // the forward's last row, CPU (double) and GPU
    const auto qkvd = dbl(qkv);
    std::vector<double> r_fout((size_t)B * Tn * OC), r_lse((size_t)B * NH * Tn), r_last, g_last;
    nt::causal_attention_forward<double>(r_fout.data(), r_lse.data(), qkvd.data(), mask.data(), B, Tn, NH, NKV, HS);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < OC; i++) {
            r_last.push_back(r_fout[((size_t)b * Tn + Tp) * OC + i]);
            g_last.push_back(g_fout[((size_t)b * Tn + Tp) * OC + i]);
        }
    compare("decode_attention out vs CPU forward last row" + tag, dt, g_out, r_last, Tol<T>::out);
    compare("decode_attention out vs GPU forward last row" + tag, dt, g_out, g_last, Tol<T>::out);
}

// A NaN score gives NaN, as on the CPU twin (and torch's softmax): each
// element's NaN-ness must be the CPU's (it has some: a check without would
// prove nothing), the other elements compare as usual. The kernels' running
// max skips NaN, so a query whose scores are all NaN looks like one with
// nothing to attend to: its NaN must not become a padding row's zeros, nor
// vanish when the NaN keys fill a whole tile (or one warp's share of a
// decode) before finite ones come.
void compare_nans(const std::string& kernel, const char* dtype, std::vector<double> gpu,
                  std::vector<double> ref, double tol) {
    size_t differ = 0, nans = 0;
    for (size_t i = 0; i < gpu.size() && i < ref.size(); i++) {
        nans += std::isnan(ref[i]);
        differ += std::isnan(gpu[i]) != std::isnan(ref[i]);
        if (std::isnan(gpu[i]) || std::isnan(ref[i])) gpu[i] = ref[i] = 0;
    }
    record(kernel + " NaN where the CPU's (mismatches)", dtype, (double)differ, 0);
    record(kernel + " NaN present on the CPU (0 = yes)", dtype, nans > 0 ? 0 : 1, 0);
    compare(kernel + " finite rest", dtype, gpu, ref, tol);
}

// Forward with NaN inputs, masks as decoder_mask (row 1: 23 padding tokens of
// 70): row 0, head 0, token 5 has a NaN q (that query's scores are all NaN);
// row 1, kv head 1, the real tokens 23..31 of the first key tile have NaN k,
// so later queries meet a tile of only NaN scores before finite ones. (A NaN
// v is not checked: a masked key's v enters the CPU's and the tensor cores'
// products with weight 0, so inputs must be finite there, as documented.)
template <typename T>
void check_causal_attention_nan() {
    const int B = 5, Tn = 70, NH = 4, NKV = 2, HS = 64, QKV = (NH + 2 * NKV) * HS, OC = NH * HS;
    const size_t N = (size_t)B * Tn, L = (size_t)B * NH * Tn;
    const char* dt = Act<T>::name;
    auto qkv = rounded<T>(normal(N * QKV));
    const auto mask = decoder_mask(B, Tn);
    auto row = [&](int b, int t) { return qkv.data() + ((size_t)b * Tn + t) * QKV; };
    for (int d = 0; d < HS; d++) row(0, 5)[d] = NAN;
    for (int t = Tn / 3; t < 32; t++)
        for (int d = 0; d < HS; d++) row(1, t)[(NH + 1) * HS + d] = NAN;
    const auto qkvd = dbl(qkv);
    std::vector<double> r_out(N * OC), r_lse(L);
    nt::causal_attention_forward<double>(r_out.data(), r_lse.data(), qkvd.data(), mask.data(), B, Tn, NH, NKV, HS);
    for (auto& v : r_lse) v = std::isinf(v) ? 0.0 : v;  // padding: the CPU's -inf, the CUDA contract's 0
    Dev<T> d_qkv(qkv.size()), d_out(N * OC);
    Dev<float> d_lse(L);
    Dev<int32_t> d_mask(N);
    upload(d_qkv, qkv);
    d_mask.up(mask);
    nt::cuda::causal_attention_forward<T>(d_out.p, d_lse.p, d_qkv.p, d_mask.p, B, Tn, NH, NKV, HS, stream);
    sync();
    compare_nans("causal_attention_forward out, NaN inputs", dt, download(d_out), r_out, Tol<T>::out);
    compare_nans("causal_attention_forward lse, NaN inputs", dt, dbl(d_lse.down<float>()), r_lse, Tol<T>::fp32);
}

// Decode with NaN inputs: 3 sequences, 150 cache columns (each warp's share of
// the key tiles is 32-column tiles w, w+4, ..). Row 0: head 1's q is NaN (all
// its scores); row 1: 40 padding columns, kv head 0's k NaN on columns 40..63,
// all of warp 1's real columns; row 2: no real column (out 0).
template <typename T>
void check_decode_nan() {
    const int B = 3, NH = 4, NKV = 2, HS = 64, ncols = 150, cap = 160, QKV = (NH + 2 * NKV) * HS;
    const char* dt = Act<T>::name;
    auto q = rounded<T>(normal((size_t)B * QKV));
    const size_t csize = (size_t)B * NKV * cap * HS;
    auto kc = rounded<T>(normal(csize)), vc = rounded<T>(normal(csize));
    std::vector<int32_t> cmask((size_t)B * cap, 1);
    for (int j = 0; j < 40; j++) cmask[(size_t)cap + j] = 0;
    for (int j = 0; j < cap; j++) cmask[(size_t)2 * cap + j] = 0;
    for (int d = 0; d < HS; d++) q[(size_t)1 * HS + d] = NAN;
    for (int j = 40; j < 64; j++)
        for (int d = 0; d < HS; d++) kc[(((size_t)1 * NKV + 0) * cap + j) * HS + d] = NAN;
    std::vector<double> r_out((size_t)B * NH * HS);
    const auto qd = dbl(q), kd = dbl(kc), vd = dbl(vc);
    nt::decode_attention<double>(r_out.data(), qd.data(), QKV, kd.data(), vd.data(), cmask.data(), B, NH, NKV, HS, ncols, cap);
    Dev<T> d_q(q.size()), d_k(csize), d_v(csize), d_out(r_out.size());
    Dev<int32_t> d_m(cmask.size());
    upload(d_q, q);
    upload(d_k, kc);
    upload(d_v, vc);
    d_m.up(cmask);
    nt::cuda::decode_attention<T>(d_out.p, d_q.p, QKV, d_k.p, d_v.p, d_m.p, B, NH, NKV, HS, ncols, cap, stream);
    sync();
    compare_nans("decode_attention out, NaN inputs", dt, download(d_out), r_out, Tol<T>::out);
}

// Bad shapes throw std::invalid_argument naming the kernel (before any launch).
template <typename T>
void check_decoder_attention_args() {
    auto expect = [](const std::string& what, const char* kernel, const std::function<void()>& fn) {
        double err = INFINITY;
        try {
            fn();
        } catch (const std::invalid_argument& e) {
            err = std::string(e.what()).find(kernel) != std::string::npos ? 0 : INFINITY;
        }
        record(std::string(kernel) + " throws on " + what, Act<T>::name, err, 0);
    };
    T* p = nullptr;
    const int32_t* m = nullptr;
    float* f = nullptr;
    expect("HS=130", "causal_attention_forward", [&] { nt::cuda::causal_attention_forward<T>(p, f, p, m, 1, 4, 2, 1, 130, stream); });
    expect("odd HS=33", "causal_attention_backward", [&] { nt::cuda::causal_attention_backward<T>(p, f, p, p, p, f, m, 1, 4, 2, 1, 33, stream); });
    expect("NH=3 NKV=2", "causal_attention_forward", [&] { nt::cuda::causal_attention_forward<T>(p, f, p, m, 1, 4, 3, 2, 64, stream); });
    expect("B*NH > 65535", "causal_attention_forward", [&] { nt::cuda::causal_attention_forward<T>(p, f, p, m, 20000, 4, 4, 1, 64, stream); });
    expect("col0+T > cap", "kv_cache_store", [&] { nt::cuda::kv_cache_store<T>(p, p, p, 1, 4, 2, 1, 64, 7, 10, stream); });
    expect("ncols > cap", "decode_attention", [&] { nt::cuda::decode_attention<T>(p, p, 256, p, p, m, 1, 2, 1, 64, 11, 10, stream); });
    if (std::is_same<T, bf16>::value) {  // the tensor-core kernels move bf16 pairs
        alignas(4) static T words[4];  // never read: the argument check comes first
        T* odd = words + 1;
        expect("a 2-byte-aligned qkv", "causal_attention_forward", [&] { nt::cuda::causal_attention_forward<T>(p, f, odd, m, 1, 4, 2, 1, 64, stream); });
        expect("a 2-byte-aligned dout", "causal_attention_backward", [&] { nt::cuda::causal_attention_backward<T>(p, f, odd, p, p, f, m, 1, 4, 2, 1, 64, stream); });
    }
}
// (end of the attention checks)

// ---- decoder checks: token embedding, RMSNorm, RoPE, SwiGLU, lm_head loss, LoRA
// Decoder tolerances beyond Tol<T> (bf16 only; fp32 keeps Tol<T>::fp32):
// - lm_head dh and dW: the GPU rounds dlogits to bf16 for the two backward
//   GEMMs (Blas needs A and B of one type): <= 2^-9 relative per logit, so
//   dh, a sum over V of dlogit * W, and dW (+= dlogit^T h) carry up to that
//   on each term, and dh one more rounding of its own: 8e-3 (Tol::out).
// - LoRA: t (and dt) are rounded to bf16 before the second product, then the
//   accumulated output once more (dinp with dropout: product, mask scale and
//   add each rounded): 1.6e-2 for out and dinp, 8e-3 for dA (fp32 output,
//   dt's rounding only), Tol::accum for dB (fp32 sums of exact bf16 products).
template <typename T>
void check_token_embedding() {
    const int N = 2 * 77, C = 96, V = 500;
    auto ids = ints(N, 0, V - 1);
    for (int i = 0; i < N; i += 5) ids[i] = 7;  // repeats
    const auto wte = rounded<T>(normal((size_t)V * C));
    Dev<int32_t> d_ids(N);
    d_ids.up(ids);
    Dev<T> d_wte(wte.size()), d_out((size_t)N * C);
    upload(d_wte, wte);
    nt::cuda::token_embedding_forward<T>(d_out.p, d_ids.p, d_wte.p, N, C, stream);
    sync();
    std::vector<double> ref((size_t)N * C);
    const auto wte_d = dbl(wte);
    nt::token_embedding_forward<double>(ref.data(), ids.data(), wte_d.data(), N, C);
    compare("token_embedding_forward (bitwise)", Act<T>::name, download(d_out), ref, 0);
}

template <typename T>
void check_rmsnorm() {
    const int N = quick ? 2 * 37 : 4 * 77, C = quick ? 200 : 576;  // C not a multiple of 32
    const float eps = 1e-6f;
    const auto x = rounded<T>(normal((size_t)N * C, 0.3f, 2.f));
    const auto w = rounded<T>(normal(C, 1.f, 0.2f));
    const auto xd = dbl(x), wd = dbl(w);
    std::vector<double> ref((size_t)N * C), rstd(N);
    nt::rmsnorm_forward<double>(ref.data(), rstd.data(), xd.data(), wd.data(), N, C, eps);
    std::vector<float> cpu_o((size_t)N * C), cpu_r(N);
    const auto xf = as<float>(x);
    nt::rmsnorm_forward<float>(cpu_o.data(), cpu_r.data(), xf.data(), w.data(), N, C, eps);
    const auto cpu_od = dbl(cpu_o);

    Dev<T> d_x(x.size()), d_w(C), d_o(x.size());
    Dev<float> d_r(N);
    upload(d_x, x);
    upload(d_w, w);
    nt::cuda::rmsnorm_forward<T>(d_o.p, d_r.p, d_x.p, d_w.p, N, C, eps, stream);
    sync();
    compare("rmsnorm_forward out", Act<T>::name, download(d_o), ref, Tol<T>::norm, &cpu_od);
    compare("rmsnorm_forward rstd (fp32)", Act<T>::name, download(d_r), rstd, Tol<T>::fp32);

    // fused residual: residual = round_T(a + b) exactly as on the host
    {
        const auto a = rounded<T>(normal((size_t)N * C)), b = rounded<T>(normal((size_t)N * C, 0.2f, 1.5f));
        std::vector<float> res((size_t)N * C);
        for (size_t i = 0; i < res.size(); i++) res[i] = round_to<T>(a[i] + b[i]);
        const auto rd = dbl(res);
        std::vector<double> r_out((size_t)N * C), r_r(N);
        nt::rmsnorm_forward<double>(r_out.data(), r_r.data(), rd.data(), wd.data(), N, C, eps);
        Dev<T> d_a(a.size()), d_b(b.size()), d_res(a.size()), d_out(a.size());
        upload(d_a, a);
        upload(d_b, b);
        nt::cuda::residual_rmsnorm_forward<T>(d_res.p, d_out.p, d_r.p, d_a.p, d_b.p, d_w.p, N, C, eps, stream);
        sync();
        compare("residual_rmsnorm_forward residual", Act<T>::name, download(d_res), rd, 0);
        compare("residual_rmsnorm_forward out", Act<T>::name, download(d_out), r_out, Tol<T>::norm);
        compare("residual_rmsnorm_forward rstd", Act<T>::name, download(d_r), r_r, Tol<T>::fp32);
        // in place: residual aliases a, then (fresh inputs) b
        d_out.poison();
        nt::cuda::residual_rmsnorm_forward<T>(d_a.p, d_out.p, d_r.p, d_a.p, d_b.p, d_w.p, N, C, eps, stream);
        sync();
        compare("residual_rmsnorm_forward residual=a", Act<T>::name, download(d_a), rd, 0);
        compare("residual_rmsnorm_forward out (residual=a)", Act<T>::name, download(d_out), r_out, Tol<T>::norm);
        upload(d_a, a);
        d_out.poison();
        nt::cuda::residual_rmsnorm_forward<T>(d_b.p, d_out.p, d_r.p, d_a.p, d_b.p, d_w.p, N, C, eps, stream);
        sync();
        compare("residual_rmsnorm_forward residual=b", Act<T>::name, download(d_b), rd, 0);
        compare("residual_rmsnorm_forward out (residual=b)", Act<T>::name, download(d_out), r_out, Tol<T>::norm);
    }

    // backward with the forward's rstd rounded to fp32, as the GPU stores it
    std::vector<float> rf(N);
    for (int i = 0; i < N; i++) rf[i] = (float)rstd[i];
    const auto rfd = dbl(rf);
    const auto dout = rounded<T>(normal((size_t)N * C));
    const auto gw0 = normal(C, 0, 0.1f), dx0 = rounded<T>(normal((size_t)N * C));
    const auto doutd = dbl(dout);
    std::vector<double> r_dx((size_t)N * C), r_gw = dbl(gw0);
    nt::rmsnorm_backward<double>(r_dx.data(), r_gw.data(), doutd.data(), xd.data(), wd.data(), rfd.data(), N, C, false);
    std::vector<float> c_dx((size_t)N * C), c_gw = gw0;
    const auto doutf = as<float>(dout);
    nt::rmsnorm_backward<float>(c_dx.data(), c_gw.data(), doutf.data(), xf.data(), w.data(), rf.data(), N, C, false);
    const auto c_dxd = dbl(c_dx), c_gwd = dbl(c_gw);

    Dev<T> d_dout(dout.size()), d_dx(dout.size());
    Dev<float> d_gw(C), scratch(nt::cuda::rmsnorm_backward_scratch_floats(N, C));
    upload(d_dout, dout);
    d_r.up(rf);
    d_gw.up(gw0);
    nt::cuda::rmsnorm_backward<T>(d_dx.p, d_gw.p, d_dout.p, d_x.p, d_w.p, d_r.p, N, C, scratch.p, false, stream);
    sync();
    compare("rmsnorm_backward dinp", Act<T>::name, download(d_dx), r_dx, Tol<T>::out, &c_dxd);
    compare("rmsnorm_backward dweight (fp32 +=)", Act<T>::name, download(d_gw), r_gw, Tol<T>::accum, &c_gwd);
    // accumulate_dinp, no dweight
    upload(d_dx, dx0);
    nt::cuda::rmsnorm_backward<T>(d_dx.p, nullptr, d_dout.p, d_x.p, d_w.p, d_r.p, N, C, nullptr, true, stream);
    sync();
    std::vector<double> r_acc(r_dx);
    for (size_t i = 0; i < r_acc.size(); i++) r_acc[i] += dx0[i];
    compare("rmsnorm_backward dinp (accumulate)", Act<T>::name, download(d_dx), r_acc, Tol<T>::out);
    // dinp null: dweight only (starts again from gw0)
    d_gw.up(gw0);
    scratch.poison();
    nt::cuda::rmsnorm_backward<T>(nullptr, d_gw.p, d_dout.p, d_x.p, d_w.p, d_r.p, N, C, scratch.p, false, stream);
    sync();
    compare("rmsnorm_backward dweight only (dinp null)", Act<T>::name, download(d_gw), r_gw, Tol<T>::accum);
}

// RoPE in place on a packed qkv buffer: q heads at column 0, k heads at
// NH*HS, v heads untouched, row stride (NH + 2 NKV) HS (the decoder's use).
template <typename T>
void check_rope() {
    const int N = quick ? 2 * 37 : 4 * 77, NH = 4, NKV = 2, HS = 64, P = 160;
    const int W = (NH + 2 * NKV) * HS, half = HS / 2;
    std::vector<double> inv(half), cos_d((size_t)P * half), sin_d((size_t)P * half);
    nt::rope_inv_freq(inv.data(), HS, 10000.0, nt::RopeScaling{});
    nt::rope_tables<double>(cos_d.data(), sin_d.data(), inv.data(), P, HS);
    std::vector<float> cos_f(cos_d.begin(), cos_d.end()), sin_f(sin_d.begin(), sin_d.end());
    const auto cos_r = dbl(cos_f), sin_r = dbl(sin_f);  // the fp32 tables the GPU reads
    auto pos = ints(N, 0, P - 1);
    for (int i = 0; i < N && i < P; i += 7) pos[i] = i;
    Dev<float> d_cos(cos_f.size()), d_sin(sin_f.size());
    d_cos.up(cos_f);
    d_sin.up(sin_f);
    Dev<int32_t> d_pos(N);
    d_pos.up(pos);
    const auto x = rounded<T>(normal((size_t)N * W));
    for (int backward = 0; backward < 2; backward++) {
        auto ref = dbl(x);
        auto rope = backward ? nt::rope_backward<double> : nt::rope_forward<double>;
        rope(ref.data(), cos_r.data(), sin_r.data(), pos.data(), N, W, NH, HS);
        rope(ref.data() + (size_t)NH * HS, cos_r.data(), sin_r.data(), pos.data(), N, W, NKV, HS);
        Dev<T> d_x(x.size());
        upload(d_x, x);
        auto grope = backward ? nt::cuda::rope_backward<T> : nt::cuda::rope_forward<T>;
        grope(d_x.p, d_cos.p, d_sin.p, d_pos.p, N, W, NH, HS, stream);
        grope(d_x.p + (size_t)NH * HS, d_cos.p, d_sin.p, d_pos.p, N, W, NKV, HS, stream);
        sync();
        const std::string name = backward ? "rope_backward" : "rope_forward";
        // one rounding of each output (v columns must come back unchanged)
        compare(name + " (q and k of packed qkv, stride)", Act<T>::name, download(d_x), ref, Tol<T>::out);
    }
}

template <typename T>
void check_swiglu() {
    const int N = quick ? 2 * 37 : 4 * 77, I = quick ? 200 : 1536;
    const auto gu = rounded<T>(normal((size_t)N * 2 * I, 0.f, 2.f)), dout = rounded<T>(normal((size_t)N * I));
    const auto gud = dbl(gu), doutd = dbl(dout);
    const auto guf = as<float>(gu), doutf = as<float>(dout);
    Dev<T> d_gu(gu.size()), d_dout(dout.size()), d_out(dout.size()), d_dgu(gu.size());
    upload(d_gu, gu);
    upload(d_dout, dout);
    std::vector<double> ref((size_t)N * I), rg((size_t)N * 2 * I);
    std::vector<float> cpu((size_t)N * I), cpug((size_t)N * 2 * I);
    nt::swiglu_forward<double>(ref.data(), gud.data(), N, I);
    nt::swiglu_forward<float>(cpu.data(), guf.data(), N, I);
    const auto cpud = dbl(cpu);
    nt::cuda::swiglu_forward<T>(d_out.p, d_gu.p, N, I, stream);
    sync();
    compare("swiglu_forward", Act<T>::name, download(d_out), ref, Tol<T>::out, &cpud);
    nt::swiglu_backward<double>(rg.data(), doutd.data(), gud.data(), N, I);
    nt::swiglu_backward<float>(cpug.data(), doutf.data(), guf.data(), N, I);
    const auto cpugd = dbl(cpug);
    nt::cuda::swiglu_backward<T>(d_dgu.p, d_dout.p, d_gu.p, N, I, stream);
    sync();
    compare("swiglu_backward dgu", Act<T>::name, download(d_dgu), rg, Tol<T>::out, &cpugd);
}

// lm_head loss over the rows with a target (about a third ignored, compacted
// away on the host as the engine does); dh / dW optional.
template <typename T>
void check_lmhead(nt::cuda::Blas& blas, int chunk, bool backward, bool with_dW) {
    const int N = quick ? 2 * 37 : 4 * 77, C = quick ? 64 : 384, V = quick ? 301 : 4099;
    const float grad_scale = 1.f / 37;
    const auto h = rounded<T>(normal((size_t)N * C)), Wt = rounded<T>(normal((size_t)V * C, 0.f, 0.3f));
    auto targets = ints(N, 0, V - 1);
    for (int i = 0; i < N; i++)
        if (i % 3 == 1 || i < 4) targets[i] = -100;
    std::vector<int32_t> rows, tg;
    for (int i = 0; i < N; i++)
        if (targets[i] != -100) rows.push_back(i), tg.push_back(targets[i]);
    const int n = (int)rows.size();
    const auto hd = dbl(h), Wd = dbl(Wt);
    const auto gW0 = normal((size_t)V * C, 0, 0.1f);
    std::vector<double> r_dh((size_t)N * C), r_dW = dbl(gW0), cs((size_t)chunk * (V + C));
    const double r_loss = nt::lmhead_crossentropy<double>(backward ? r_dh.data() : nullptr, with_dW ? r_dW.data() : nullptr,
                                                          hd.data(), Wd.data(), targets.data(), N, C, V, grad_scale,
                                                          cs.data(), chunk);
    Dev<T> d_h(h.size()), d_W(Wt.size()), d_dh(h.size());
    Dev<float> d_dW(gW0.size());
    Dev<int32_t> d_rows(n), d_tg(n);
    Dev<double> d_loss(1);
    Dev<char> scratch(nt::cuda::lmhead_scratch_bytes(chunk, C, V));
    upload(d_h, h);
    upload(d_W, Wt);
    d_dW.up(gW0);
    d_rows.up(rows);
    d_tg.up(tg);
    nt::cuda::lmhead_crossentropy<T>(blas, stream, d_loss.p, backward ? d_dh.p : nullptr, with_dW ? d_dW.p : nullptr,
                                     d_h.p, d_W.p, d_rows.p, d_tg.p, n, N, C, V, grad_scale, scratch.p, chunk);
    sync();
    const std::string tag = " (n=" + std::to_string(n) + ", chunk=" + std::to_string(chunk) + ")";
    // fp32 logits from exact T inputs, fp32 logsumexp, row losses summed in double
    compare("lmhead_crossentropy loss_sum" + tag, Act<T>::name, d_loss.down<double>(), {r_loss}, Tol<T>::fp32);
    if (!backward) return;
    compare("lmhead_crossentropy dh (ignored rows 0)" + tag, Act<T>::name, download(d_dh), r_dh, Tol<T>::out);
    compare(std::string("lmhead_crossentropy dW ") + (with_dW ? "(fp32 +=)" : "(null: untouched)") + tag,
            Act<T>::name, dbl(d_dW.down<float>()), with_dW ? r_dW : dbl(gW0), with_dW ? Tol<T>::out : 0);
}

// LoRA on a column block [col0, col0 + OC) of a packed output of row width
// ldo (ldo == OC: the whole output), dropout from a key with an offset.
template <typename T>
void check_lora(nt::cuda::Blas& blas, float p, bool column_block, bool with_dinp) {
    constexpr bool bf = std::is_same<T, bf16>::value;
    const int N = quick ? 2 * 37 : 4 * 77, IC = quick ? 96 : 576, OC = quick ? 80 : 192, r = 8;
    const int col0 = column_block ? 16 : 0, ldo = column_block ? OC + 48 : OC;
    const float scale = 16.f / r;
    nt::DropoutKey key = test_key(23);
    key.offset = column_block ? (1ull << 20) + 6 : 0;  // 6: Philox blocks straddled
    const auto x = rounded<T>(normal((size_t)N * IC)), A = rounded<T>(normal((size_t)r * IC, 0, 0.1f)),
               B = rounded<T>(normal((size_t)OC * r, 0, 0.1f)), out0 = rounded<T>(normal((size_t)N * ldo));
    const auto xd = dbl(x), Ad = dbl(A), Bd = dbl(B);
    std::vector<double> r_out = dbl(out0), r_t((size_t)N * r), r_xd((size_t)N * IC);
    std::vector<uint8_t> keep(((size_t)N * IC + 7) / 8);
    nt::lora_forward<double>(r_out.data() + col0, ldo, r_t.data(), r_xd.data(), keep.data(), xd.data(), Ad.data(),
                             Bd.data(), N, IC, OC, r, scale, p, key);
    Dev<T> d_x(x.size()), d_A(A.size()), d_B(B.size()), d_out(out0.size()), d_t((size_t)N * r), d_xd(x.size());
    upload(d_x, x);
    upload(d_A, A);
    upload(d_B, B);
    upload(d_out, out0);
    nt::cuda::lora_forward<T>(blas, stream, d_out.p + col0, ldo, d_t.p, d_xd.p, d_x.p, d_A.p, d_B.p, N, IC, OC, r,
                              scale, p, key);
    sync();
    char tag[96];
    std::snprintf(tag, sizeof tag, " (p=%.1f, ldo=%d, offset=%" PRIu64 ")", p, ldo, key.offset);
    compare(std::string("lora_forward out +=") + tag, Act<T>::name, download(d_out), r_out, bf ? 1.6e-2 : 1e-5);
    compare(std::string("lora_forward t") + tag, Act<T>::name, download(d_t), r_t, Tol<T>::out);

    // backward from the t the GPU saved (both sides read the same values)
    const auto t_gpu = download(d_t);
    std::vector<float> tf(t_gpu.begin(), t_gpu.end());
    const auto dout = rounded<T>(normal((size_t)N * ldo)), dx0 = rounded<T>(normal((size_t)N * IC));
    const auto gA0 = normal((size_t)r * IC, 0, 0.1f), gB0 = normal((size_t)OC * r, 0, 0.1f);
    const auto doutd = dbl(dout);
    std::vector<double> r_dx = dbl(dx0), r_dA = dbl(gA0), r_dB = dbl(gB0), r_dt((size_t)N * r);
    nt::lora_backward<double>(with_dinp ? r_dx.data() : nullptr, r_dA.data(), r_dB.data(), r_dt.data(), r_xd.data(),
                              keep.data(), doutd.data() + col0, ldo, xd.data(), t_gpu.data(), Ad.data(), Bd.data(), N,
                              IC, OC, r, scale, p);
    Dev<T> d_dout(dout.size()), d_dx(dx0.size()), d_dt((size_t)N * r);
    Dev<float> d_dA(gA0.size()), d_dB(gB0.size());
    upload(d_dout, dout);
    upload(d_dx, dx0);
    d_dA.up(gA0);
    d_dB.up(gB0);
    d_xd.poison();
    nt::cuda::lora_backward<T>(blas, stream, with_dinp ? d_dx.p : nullptr, d_dA.p, d_dB.p, d_dt.p, d_xd.p,
                               d_dout.p + col0, ldo, d_x.p, d_t.p, d_A.p, d_B.p, N, IC, OC, r, scale, p, key);
    sync();
    compare(std::string("lora_backward dinp ") + (with_dinp ? "+=" : "(null: untouched)") + tag, Act<T>::name,
            download(d_dx), r_dx, !with_dinp ? 0 : bf ? 1.6e-2 : 1e-5);
    compare(std::string("lora_backward dA (fp32 +=)") + tag, Act<T>::name, dbl(d_dA.down<float>()), r_dA,
            Tol<T>::out);
    compare(std::string("lora_backward dB (fp32 +=)") + tag, Act<T>::name, dbl(d_dB.down<float>()), r_dB,
            Tol<T>::accum);
}
// (end of the elementwise/lm_head checks)

void guarded(const char* name, const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kernel_check: %s: error: %s\n", name, e.what());
        results.push_back({std::string(name) + " ERROR: " + e.what(), "-", INFINITY, 0, -1, false});
    }
}

template <typename T>
void check_all_for(nt::cuda::Blas& blas) {
    guarded("embedding", check_embedding<T>);
    guarded("layernorm", check_layernorm<T>);
    guarded("elementwise", check_elementwise<T>);
    guarded("dropout", check_dropout<T>);
    // head sizes 32, 64, 96, 128 (every NDL instantiation); B >= 3 so one
    // example is fully masked; T not a multiple of the 16-row/32-key tiles.
    const std::vector<AttnCase> full = {{3, 77, 384, 12, 0.1f}, {3, 128, 768, 12, 0.f},
                                        {4, 33, 192, 2, 0.1f}, {3, 512, 256, 2, 0.1f}};
    const std::vector<AttnCase> small = {{3, 37, 64, 2, 0.1f}, {3, 40, 128, 2, 0.f},
                                         {3, 33, 192, 2, 0.1f}, {3, 20, 256, 2, 0.1f}};
    for (const AttnCase& c : quick ? small : full) guarded("attention", [&] { check_attention<T>(c); });
    guarded("crossentropy", [] { check_crossentropy<T>(37, 77, true, 0.1f, false); });
    guarded("crossentropy", [] { check_crossentropy<T>(64, 2, false, 0.f, false); });
    guarded("crossentropy", [] { check_crossentropy<T>(8, 5, true, 0.1f, true); });
    guarded("linear", [&] { check_linear<T>(blas); });
    // decoder: causal attention, KV cache, decode
    {
        // GQA 4:2, 3:1 and MHA; HS 32, 48, 64, 96, 128; T not a multiple of the
        // 16/8-row and 32-key tiles nor of the tensor-core kernels' 64-row
        // blocks (--quick keeps one case past a block: 150 = 2 blocks + 22);
        // every case has all five mask rows.
        const std::vector<DecAttnCase> full = {{5, 77, 4, 2, 64}, {5, 130, 3, 1, 48}, {5, 200, 8, 8, 128},
                                               {5, 64, 4, 1, 32}, {5, 300, 6, 2, 96}};
        const std::vector<DecAttnCase> small = {{5, 37, 4, 2, 64}, {5, 33, 3, 1, 48}, {5, 40, 2, 2, 128},
                                                {5, 21, 4, 1, 32}, {5, 26, 3, 3, 96}, {5, 150, 2, 1, 64}};
        for (const DecAttnCase& c : quick ? small : full)
            guarded("causal_attention", [&] { check_causal_attention<T>(c); });
        const std::vector<DecAttnCase> dfull = {{4, 300, 4, 2, 64}, {4, 200, 6, 1, 128}, {4, 77, 2, 2, 32}};
        const std::vector<DecAttnCase> dsmall = {{4, 36, 4, 2, 64}, {4, 20, 3, 1, 96}};
        for (const DecAttnCase& c : quick ? dsmall : dfull) guarded("decode", [&] { check_decode<T>(c); });
        guarded("causal_attention NaN", check_causal_attention_nan<T>);
        guarded("decode NaN", check_decode_nan<T>);
        guarded("causal_attention args", check_decoder_attention_args<T>);
    }
    // decoder: token embedding, RMSNorm, RoPE, SwiGLU, lm_head loss, LoRA
    guarded("token_embedding", check_token_embedding<T>);
    guarded("rmsnorm", check_rmsnorm<T>);
    guarded("rope", check_rope<T>);
    guarded("swiglu", check_swiglu<T>);
    // chunk 16 does not divide n (46 target rows at --quick), chunk 7 neither
    guarded("lmhead", [&] { check_lmhead<T>(blas, 16, true, true); });
    guarded("lmhead", [&] { check_lmhead<T>(blas, 7, true, false); });
    guarded("lmhead", [&] { check_lmhead<T>(blas, 16, false, false); });
    guarded("lora", [&] { check_lora<T>(blas, 0.f, false, true); });
    guarded("lora", [&] { check_lora<T>(blas, 0.3f, true, true); });
    guarded("lora", [&] { check_lora<T>(blas, 0.3f, true, false); });
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') o += '\\';
        o += ch;
    }
    return o;
}

std::string num(double x) {
    if (std::isnan(x)) return "null";
    if (std::isinf(x)) return "1e999";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3e", x);
    return buf;
}

}  // namespace

int main(int argc, char** argv) {
    const char* json_path = nullptr;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (std::strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else {
            std::fprintf(stderr, "usage: %s [--quick] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (nt::cuda::cuda_device_count() == 0) {
        std::printf("no CUDA device: %s\nkernel_check skipped (built and linked fine).\n",
                    nt::cuda::cuda_unavailable_reason().c_str());
        return 0;
    }
    std::string device;
    try {
        const auto info = nt::cuda::cuda_device_info(0);
        char buf[256];
        std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB, driver %d, runtime %d)",
                      info.name.c_str(), info.major, info.minor, info.multiprocessors,
                      info.total_memory / 1073741824.0, info.driver_version, info.runtime_version);
        device = buf;
        std::printf("device: %s\n", device.c_str());
        NT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        nt::cuda::Blas blas;
        guarded("philox", check_philox);
        guarded("convert", check_convert);
        guarded("gemm", [&] { check_gemm<float, float>(blas, 1e-5); });
        guarded("gemm", [&] { check_gemm<bf16, bf16>(blas, 8e-3); });
        guarded("gemm", [&] { check_gemm<bf16, float>(blas, 5e-5); });
        check_all_for<float>(blas);
        check_all_for<bf16>(blas);
        guarded("grad_norm", check_grad_norm);
        guarded("adamw", check_adamw);
        NT_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kernel_check: error: %s\n", e.what());
        std::printf("%zu checks ran before the error\n", results.size());
        return 2;
    }

    int failed = 0;
    std::printf("\n%-62s %-5s %11s %9s %11s  %s\n", "kernel / output", "dtype", "max_rel_err", "tol",
                "cpu_fp32", "");
    for (const auto& r : results) {
        failed += !r.pass;
        std::printf("%-62s %-5s %11s %9s %11s  %s\n", r.kernel.c_str(), r.dtype.c_str(), num(r.err).c_str(),
                    num(r.tol).c_str(), r.cpu_err < 0 ? "-" : num(r.cpu_err).c_str(), r.pass ? "ok" : "FAIL");
    }
    std::printf("\n%d of %zu checks failed\n", failed, results.size());

    std::string json = "{\"device\":\"" + json_escape(device) + "\",\"metric\":\"max_i |gpu-ref| / max_i |ref|, ref = CPU kernel in float64\",\"results\":[";
    for (size_t i = 0; i < results.size(); i++) {
        const auto& r = results[i];
        json += (i ? "," : "");
        json += "{\"kernel\":\"" + json_escape(r.kernel) + "\",\"dtype\":\"" + r.dtype +
                "\",\"max_rel_err\":" + num(r.err) + ",\"tol\":" + num(r.tol) +
                ",\"cpu_fp32_err\":" + (r.cpu_err < 0 ? std::string("null") : num(r.cpu_err)) +
                ",\"pass\":" + (r.pass ? "true" : "false") + "}";
    }
    json += "],\"failed\":" + std::to_string(failed) + "}";
    if (!json_path) {
        std::printf("JSON %s\n", json.c_str());
    } else if (FILE* f = std::fopen(json_path, "w")) {
        std::fprintf(f, "%s\n", json.c_str());
        std::fclose(f);
        std::printf("JSON written to %s\n", json_path);
    } else {
        std::fprintf(stderr, "kernel_check: cannot write %s\n", json_path);
        return 2;
    }
    return failed ? 1 : 0;
}
