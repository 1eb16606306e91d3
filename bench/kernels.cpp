// Kernel micro-benchmarks against the machine's own limits (Google Benchmark).
//
// One benchmark per CPU kernel per shape of a BERT training step, plus two
// ceilings measured in the same run: a large square sgemm (the fp32 GEMM
// ceiling, on the same OpenBLAS the kernels use) and a large parallel copy
// (memory bandwidth, read + write counted). Each benchmark reports, per
// iteration, the FLOPs it does and the minimum bytes it must move, counted in
// code next to it; `nodetune bench kernels` (src/bench/kernels.ts) turns the
// median of the repetitions into GFLOP/s, GB/s and a roofline fraction:
//   fraction = max(flop / sgemm_ceiling, bytes / copy_ceiling) / time,
// i.e. achieved throughput over the lower of the two roofs for that kernel.
//
// Contract with src/bench/kernels.ts (a CUDA suite should keep it too):
//   counters flop_per_iter, bytes_per_iter and calls_per_step on every benchmark; the two
//   ceilings are named ceiling/sgemm and ceiling/copy; the label is the shape;
//   custom context keys nt_* describe the model shape and thread count.
//
// Flags (besides Google Benchmark's own --benchmark_*):
//   --model=minilm-l6|bert-tiny|bert-base   shapes (default minilm-l6)
//   --batch=B --seq=T                       (default 32, 128)
//   --threads=N                             OpenMP/OpenBLAS threads (default: OpenMP's)
//   --tiny  (or NODETUNE_BENCH_TINY=1)      tiny shapes and short runs, for tests
// Defaults injected before the user's flags (which override them):
//   --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   --benchmark_min_time=0.2 (tiny: 3 repetitions, 0.01 s)
#include <benchmark/benchmark.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace {

// A BertForSequenceClassification shape and the batch it trains on.
struct Shape {
    std::string model;
    int layers, C, NH, I, V, P, TV, L;  // L = num_labels
    int B, T;
    int N() const { return B * T; }
    // Every parameter of the model: the AdamW arena size.
    size_t params() const {
        const size_t c = C, i = I;
        const size_t layer = 4 * c * c + 4 * c + 2 * c * i + i + c + 4 * c;
        return (size_t)V * c + (size_t)P * c + (size_t)TV * c + 2 * c + layers * layer + c * c +
               c + (size_t)L * c + L;
    }
};

Shape model_shape(const std::string& name) {
    // HF config.json values of the three reference models; 77 labels (Banking77).
    if (name == "bert-tiny") return {name, 2, 128, 2, 512, 30522, 512, 2, 77, 32, 128};
    if (name == "bert-base") return {name, 12, 768, 12, 3072, 30522, 512, 2, 77, 32, 128};
    if (name == "minilm-l6") return {name, 6, 384, 12, 1536, 30522, 512, 2, 77, 32, 128};
    if (name == "tiny") return {name, 2, 64, 2, 128, 1000, 64, 2, 7, 2, 16};
    throw std::invalid_argument("--model=" + name +
                                ": expected minilm-l6, bert-tiny, bert-base or tiny");
}

constexpr float kDropout = 0.1f;  // BERT's attention_probs_dropout_prob

// Deterministic uniform fill in [-scale, scale) (splitmix64: fast, no <random> cost
// on the 90 M floats of the AdamW arena).
void fill(std::vector<float>& x, float scale, uint64_t seed) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (float& v : x) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v = scale * (2.0f * (float)(z >> 40) / (float)(1 << 24) - 1.0f);
    }
}

std::vector<float> random(size_t n, float scale, uint64_t seed) {
    std::vector<float> x(n);
    fill(x, scale, seed);
    return x;
}

std::vector<int32_t> random_ids(size_t n, int lo, int hi, uint64_t seed) {
    std::vector<float> u = random(n, 0.5f, seed);
    std::vector<int32_t> ids(n);
    for (size_t i = 0; i < n; i++) ids[i] = lo + std::min(hi - lo - 1, (int)((u[i] + 0.5f) * (hi - lo)));
    return ids;
}

// Reports the work of one iteration; src/bench/kernels.ts reads the two plain
// counters, the rate counters are for people running this binary directly.
void count(benchmark::State& state, double flop, double bytes, const std::string& shape) {
    using benchmark::Counter;
    state.counters["flop_per_iter"] = flop;
    state.counters["bytes_per_iter"] = bytes;
    if (flop > 0) state.counters["FLOPS"] = Counter(flop, Counter::kIsIterationInvariantRate);
    state.SetBytesProcessed((int64_t)(bytes * (double)state.iterations()));
    state.SetLabel(shape);
}

// Runs `body` twice untimed (first touch, thread pool, BLAS buffers), then times it.
void run(benchmark::State& state, const std::function<void()>& body) {
    body();
    body();
    for (auto _ : state) {
        body();
        benchmark::ClobberMemory();
    }
}

// calls_per_step: how often one training step of the model runs this kernel
// at this shape (0 for the ceilings); the report weighs kernels by it.
benchmark::internal::Benchmark* reg(const std::string& name, int calls_per_step,
                                    std::function<void(benchmark::State&)> fn) {
    return benchmark::RegisterBenchmark(name.c_str(), [fn, calls_per_step](benchmark::State& s) {
        fn(s);
        s.counters["calls_per_step"] = calls_per_step;
    })
        ->UseRealTime()  // the kernels are multi-threaded: wall time is what counts
        ->Unit(benchmark::kMillisecond);
}

std::string dims(const std::vector<std::pair<const char*, long>>& d) {
    std::string s;
    for (auto& [k, v] : d) s += (s.empty() ? "" : " ") + std::string(k) + "=" + std::to_string(v);
    return s;
}

// ---- ceilings -------------------------------------------------------------

// A ceiling is what the machine can do, so the report takes the fastest
// repetition ("min" aggregate) for these two, and the median for kernels:
// interference from other processes only ever slows a repetition down.
double fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// dst = src with non-temporal stores where AVX has them: the stores bypass the
// cache, so DRAM traffic equals the bytes counted (no write-allocate reads),
// and it beats glibc's memcpy on the machines we measured. Threads copy
// contiguous halves.
void stream_copy(float* dst, const float* src, size_t n) {
#pragma omp parallel
    {
        const size_t nth = omp_get_num_threads(), t = omp_get_thread_num();
        size_t lo = n * t / nth, hi = n * (t + 1) / nth;
#ifdef __AVX__
        for (; lo < hi && ((uintptr_t)(dst + lo) & 31); lo++) dst[lo] = src[lo];
        for (; lo + 8 <= hi; lo += 8) _mm256_stream_ps(dst + lo, _mm256_loadu_ps(src + lo));
        _mm_sfence();
#endif
        std::memcpy(dst + lo, src + lo, (hi - lo) * sizeof(float));
    }
}

void register_ceilings(bool tiny) {
    const int n = tiny ? 256 : 2048;
    reg("ceiling/sgemm", 0, [n](benchmark::State& s) {
        auto A = random((size_t)n * n, 1, 1), B = random((size_t)n * n, 1, 2);
        std::vector<float> C((size_t)n * n);
        // FLOPs: 2 n^3 (a multiply and an add per inner-product term).
        // Bytes: A and B read, C written once: 3 n^2 floats.
        run(s, [&] { nt::gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n); });
        count(s, 2.0 * n * n * n, 4.0 * 3 * n * n, dims({{"M", n}, {"N", n}, {"K", n}}));
    })->ComputeStatistics("min", fastest);
    // 128 MiB each way: four times the largest L3 in sight, so DRAM is measured.
    const size_t bytes = tiny ? (8u << 20) : (128u << 20);
    reg("ceiling/copy", 0, [bytes](benchmark::State& s) {
        const size_t n = bytes / sizeof(float);
        auto src = random(n, 1, 3);
        std::vector<float> dst(n);
        run(s, [&] { stream_copy(dst.data(), src.data(), n); });
        // Bytes: every byte read once and written once (the STREAM copy count).
        count(s, 0, 2.0 * bytes, std::to_string(bytes >> 20) + " MiB read + written");
    })->ComputeStatistics("min", fastest);
}

// ---- GEMM in the shapes nt::linear_forward / linear_backward issue ----------

// One nn.Linear(IC -> OC) on N rows: forward out = X W^T, backward
// dX = dY W and dW += dY^T X, with the operand layouts of native/cpu/linear.cpp.
void register_linear(const std::string& tag, int layers, int N, int IC, int OC) {
    auto reg_gemm = [&](const std::string& pass, bool ta, bool tb, int M, int Nn, int K,
                        float beta) {
        reg("gemm/" + tag + "/" + pass, layers, [=](benchmark::State& s) {
            const int lda = ta ? M : K, ldb = tb ? K : Nn;
            auto A = random((size_t)M * K, 1, 11), B = random((size_t)K * Nn, 1, 12);
            std::vector<float> C((size_t)M * Nn);
            run(s, [&] { nt::gemm<float>(ta, tb, M, Nn, K, 1.f, A.data(), lda, B.data(), ldb, beta, C.data(), Nn); });
            // FLOPs: 2 M N K. Bytes: A, B read once; C written (and read when beta != 0).
            const double c_traffic = beta != 0.f ? 2.0 : 1.0;
            count(s, 2.0 * M * Nn * K, 4.0 * ((double)M * K + (double)K * Nn + c_traffic * M * Nn),
                  dims({{"M", M}, {"N", Nn}, {"K", K}}));
        });
    };
    reg_gemm("fwd", false, true, N, OC, IC, 0.f);    // out(N,OC) = X(N,IC) W(OC,IC)^T
    reg_gemm("dX", false, false, N, IC, OC, 0.f);    // dX(N,IC) = dY(N,OC) W(OC,IC)
    reg_gemm("dW", true, false, OC, IC, N, 1.f);     // dW(OC,IC) += dY(N,OC)^T X(N,IC)
}

// ---- LayerNorm, GELU ---------------------------------------------------------

void register_layernorm(const Shape& sh) {
    const int N = sh.N(), C = sh.C;
    const std::string d = dims({{"N", N}, {"C", C}});
    reg("layernorm/fwd", 2 * sh.layers + 1, [=](benchmark::State& s) {
        auto x = random((size_t)N * C, 1, 21), w = random(C, 1, 22), b = random(C, 1, 23);
        std::vector<float> out((size_t)N * C), mean(N), rstd(N);
        run(s, [&] { nt::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-12f); });
        // FLOPs per element: mean 1, variance 3, normalise + affine 4.
        // Bytes: x read, out written (N C each); weight, bias read; mean, rstd written.
        count(s, 8.0 * N * C, 4.0 * (2.0 * N * C + 2.0 * C + 2.0 * N), d);
    });
    reg("layernorm/bwd", 2 * sh.layers + 1, [=](benchmark::State& s) {
        auto x = random((size_t)N * C, 1, 24), dy = random((size_t)N * C, 1, 25), w = random(C, 1, 26);
        std::vector<float> mean(N), rstd(N), out((size_t)N * C), dx((size_t)N * C), dw(C), db(C);
        nt::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), N, C, 1e-12f);
        run(s, [&] { nt::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C); });
        // FLOPs per element: x_hat 2, dy*w 1, dbias 1, dweight 2, two row sums 3, dx 4.
        // Bytes: dy, x read and dx written (N C each); weight read, dweight and
        // dbias read + written (5 C); mean, rstd read (2 N).
        count(s, 13.0 * N * C, 4.0 * (3.0 * N * C + 5.0 * C + 2.0 * N), d);
    });
}

void register_gelu(const Shape& sh) {
    const size_t n = (size_t)sh.N() * sh.I;
    const std::string d = dims({{"N", sh.N()}, {"I", sh.I}});
    reg("gelu/fwd", sh.layers, [=](benchmark::State& s) {
        auto x = random(n, 3, 31);
        std::vector<float> y(n);
        run(s, [&] { nt::gelu_forward(y.data(), x.data(), n); });
        // FLOPs per element: 4 arithmetic + erf counted as 1. Bytes: x read, y written.
        count(s, 5.0 * n, 8.0 * n, d);
    });
    reg("gelu/bwd", sh.layers, [=](benchmark::State& s) {
        auto x = random(n, 3, 32), dy = random(n, 1, 33);
        std::vector<float> dx(n);
        run(s, [&] { nt::gelu_backward(dx.data(), x.data(), dy.data(), n); });
        // FLOPs per element: cdf 4, pdf 5 (exp as 1), combine 3. Bytes: x, dy read, dx written.
        count(s, 12.0 * n, 12.0 * n, d);
    });
}

// ---- attention -----------------------------------------------------------------

void register_attention(const Shape& sh) {
    const int B = sh.B, T = sh.T, C = sh.C, NH = sh.NH, HS = C / NH;
    const double N = (double)B * T, TT = (double)T * T, BH = (double)B * NH;
    const std::string d = dims({{"B", B}, {"T", T}, {"C", C}, {"NH", NH}});
    // Bytes shared by both passes: the mask (B T int32) and the saved probabilities.
    const double att_bytes = 4.0 * BH * TT, mask_bytes = 4.0 * N;
    reg("attention/fwd", sh.layers, [=](benchmark::State& s) {
        auto qkv = random((size_t)N * 3 * C, 1, 41);
        std::vector<float> out((size_t)N * C), att((size_t)(BH * TT));
        std::vector<int32_t> mask((size_t)N, 1);
        const nt::DropoutKey key{1, 0, 7};
        run(s, [&] { nt::attention_forward(out.data(), att.data(), qkv.data(), mask.data(), B, T, C, NH, kDropout, key); });
        // FLOPs per (b, h): Q K^T 2 T^2 HS, P V 2 T^2 HS; scale, mask-free softmax
        // (max, exp, sum, normalise) and dropout scale ~5 T^2 (Philox not counted).
        // Bytes: qkv read (3 N C), out written (N C), probabilities written, mask read.
        count(s, BH * (4.0 * TT * HS + 5.0 * TT), 4.0 * (3.0 * N * C + N * C) + att_bytes + mask_bytes, d);
    });
    reg("attention/bwd", sh.layers, [=](benchmark::State& s) {
        auto qkv = random((size_t)N * 3 * C, 1, 42), dout = random((size_t)N * C, 1, 43);
        std::vector<float> out((size_t)N * C), att((size_t)(BH * TT)), scratch((size_t)(BH * TT));
        std::vector<float> dqkv((size_t)N * 3 * C);
        std::vector<int32_t> mask((size_t)N, 1);
        const nt::DropoutKey key{1, 0, 7};
        nt::attention_forward(out.data(), att.data(), qkv.data(), mask.data(), B, T, C, NH, kDropout, key);
        run(s, [&] { nt::attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), mask.data(), B, T, C, NH, kDropout, key); });
        // FLOPs per (b, h): dV, dP', dQ, dK four GEMMs of 2 T^2 HS; dropout,
        // P * (dP - rowsum(P dP)) and the 1/sqrt(HS) scale ~5 T^2.
        // Bytes: qkv and dout read, dqkv written, probabilities and mask read
        // (the scratch workspace is not minimum traffic).
        count(s, BH * (8.0 * TT * HS + 5.0 * TT), 4.0 * (3.0 * N * C + N * C + 3.0 * N * C) + att_bytes + mask_bytes, d);
    });
}

// ---- loss, optimizer, embeddings -------------------------------------------------

void register_loss_optimizer(const Shape& sh) {
    const int B = sh.B, L = sh.L;
    reg("crossentropy/fwd_bwd", 1, [=](benchmark::State& s) {
        auto logits = random((size_t)B * L, 4, 51);
        auto labels = random_ids(B, 0, L, 52);
        std::vector<float> dlogits((size_t)B * L);
        run(s, [&] { benchmark::DoNotOptimize(nt::crossentropy_softmax_forward_backward<float>(dlogits.data(), logits.data(), labels.data(), nullptr, B, L, 0.f, 1.f)); });
        // FLOPs per logit: max 1, exp 1, sum 1, log-prob 1, gradient 1.
        // Bytes: logits read, dlogits written, labels read.
        count(s, 5.0 * B * L, 4.0 * (2.0 * B * L + B), dims({{"B", B}, {"L", L}}));
    });
    const size_t n = sh.params();
    reg("adamw/arena", 1, [=](benchmark::State& s) {
        auto p = random(n, 0.02f, 61), g = random(n, 1e-3f, 62), m = random(n, 1e-3f, 63);
        auto v = random(n, 1e-6f, 64);
        for (float& x : v) x = x * x;  // second moments are non-negative
        run(s, [&] { nt::adamw_update(p.data(), g.data(), m.data(), v.data(), n, 5e-5f, 0.9f, 0.999f, 1e-8f, 0.01f, 10, 1.f); });
        // FLOPs per parameter: scale g 1, decay 1, m lerp 3, v 4, sqrt and
        // bias correction 3, update 3. Bytes: p, m, v read + written, g read (7 n).
        count(s, 15.0 * n, 4.0 * 7.0 * n, dims({{"params", (long)n}}));
    });
}

void register_embedding(const Shape& sh) {
    const int B = sh.B, T = sh.T, C = sh.C, V = sh.V;
    const size_t N = (size_t)B * T;
    const auto ids = random_ids(N, 1, V, 71);
    const double unique = (double)std::set<int32_t>(ids.begin(), ids.end()).size();
    const std::string d = dims({{"B", B}, {"T", T}, {"C", C}, {"V", V}});
    reg("embedding/fwd", 1, [=](benchmark::State& s) {
        auto wte = random((size_t)V * C, 1, 72), wpe = random((size_t)sh.P * C, 1, 73), wtt = random((size_t)sh.TV * C, 1, 74);
        std::vector<int32_t> tt(N, 0);
        std::vector<float> out(N * C);
        run(s, [&] { nt::embedding_forward(out.data(), ids.data(), tt.data(), wte.data(), wpe.data(), wtt.data(), B, T, C); });
        // FLOPs: 2 adds per output. Bytes: out written; the distinct word rows,
        // T position rows and one token-type row read; ids and token types read.
        count(s, 2.0 * N * C, 4.0 * (N * C + (unique + T + 1) * C + 2.0 * N), d);
    });
    reg("embedding/bwd", 1, [=](benchmark::State& s) {
        auto dout = random(N * C, 1, 75);
        std::vector<float> dwte((size_t)V * C), dwpe((size_t)sh.P * C), dwtt((size_t)sh.TV * C);
        std::vector<int32_t> tt(N, 0);
        run(s, [&] { nt::embedding_backward(dwte.data(), dwpe.data(), dwtt.data(), dout.data(), ids.data(), tt.data(), B, T, C); });
        // FLOPs: 3 adds per dout element (word, position, token-type tables).
        // Bytes: dout read; the touched rows of the three tables read + written;
        // ids and token types read.
        count(s, 3.0 * N * C, 4.0 * (N * C + 2.0 * (unique + T + 1) * C + 2.0 * N), d);
    });
}

void register_all(const Shape& sh, bool tiny) {
    register_ceilings(tiny);
    const int N = sh.N(), C = sh.C, I = sh.I;
    register_linear("qkv", sh.layers, N, C, 3 * C);       // fused Q, K, V projections
    register_linear("attn_out", sh.layers, N, C, C);      // attention.output.dense
    register_linear("ffn_up", sh.layers, N, C, I);        // intermediate.dense
    register_linear("ffn_down", sh.layers, N, I, C);      // output.dense
    register_layernorm(sh);
    register_gelu(sh);
    register_attention(sh);
    register_loss_optimizer(sh);
    register_embedding(sh);
}

// Removes `--name=value` / `--name` flags of our own from argv; returns the value.
bool take_flag(std::vector<char*>& args, const std::string& name, std::string* value) {
    for (size_t i = 1; i < args.size(); i++) {
        const std::string a = args[i];
        if (a == "--" + name || a.rfind("--" + name + "=", 0) == 0) {
            if (value) *value = a.size() > name.size() + 2 ? a.substr(name.size() + 3) : "";
            args.erase(args.begin() + (long)i);
            return true;
        }
    }
    return false;
}

int parse_positive(const std::string& flag, const std::string& v) {
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || x < 1 || x > 1 << 20)
        throw std::invalid_argument("--" + flag + "=" + v + ": expected a positive integer");
    return (int)x;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    std::string model = "minilm-l6", batch, seq, threads;
    const char* env_tiny = std::getenv("NODETUNE_BENCH_TINY");
    const bool tiny = take_flag(args, "tiny", nullptr) || (env_tiny && std::string(env_tiny) == "1");
    Shape sh;
    try {
        take_flag(args, "model", &model);
        sh = model_shape(tiny ? "tiny" : model);
        if (take_flag(args, "batch", &batch)) sh.B = parse_positive("batch", batch);
        if (take_flag(args, "seq", &seq)) sh.T = parse_positive("seq", seq);
        if (sh.T > sh.P) throw std::invalid_argument("--seq=" + seq + ": exceeds max_position_embeddings " + std::to_string(sh.P));
        if (take_flag(args, "threads", &threads)) {
            const int n = parse_positive("threads", threads);
            omp_set_num_threads(n);
            openblas_set_num_threads(n);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nodetune_bench_kernels: %s\n", e.what());
        return 2;
    }

    // Our defaults first, so the user's --benchmark_* flags (parsed later) win.
    std::string reps = tiny ? "--benchmark_repetitions=3" : "--benchmark_repetitions=5";
    std::string min_time = tiny ? "--benchmark_min_time=0.01" : "--benchmark_min_time=0.2";
    std::string agg = "--benchmark_report_aggregates_only=true";
    args.insert(args.begin() + 1, {reps.data(), min_time.data(), agg.data()});
    int n = (int)args.size();
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 2;

    const auto put = [](const char* k, const std::string& v) { benchmark::AddCustomContext(k, v); };
    put("nt_model", sh.model);
    put("nt_B", std::to_string(sh.B));
    put("nt_T", std::to_string(sh.T));
    put("nt_C", std::to_string(sh.C));
    put("nt_NH", std::to_string(sh.NH));
    put("nt_I", std::to_string(sh.I));
    put("nt_L", std::to_string(sh.L));
    put("nt_V", std::to_string(sh.V));
    put("nt_layers", std::to_string(sh.layers));
    put("nt_params", std::to_string(sh.params()));
    put("nt_threads", std::to_string(omp_get_max_threads()));
    put("nt_device", "cpu");
    put("nt_blas", "OpenBLAS " + std::string(openblas_get_config()));

    register_all(sh, tiny);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
