// CPU kernel micro-benchmarks against the machine's own limits (Google Benchmark).
//
// One benchmark per CPU kernel (native/cpu) per shape of a BERT training
// step, plus two ceilings measured in the same run: a large square sgemm (the
// fp32 GEMM ceiling, on the same OpenBLAS the kernels use) and a large
// parallel copy (memory bandwidth, read + write counted). The work of each
// kernel (FLOPs, minimum bytes) is counted in bench/suite.cpp, shared with the
// CUDA suite; `nodetune bench kernels` (src/bench/kernels.ts) turns the median
// of the repetitions into GFLOP/s, GB/s and a roofline fraction:
//   fraction = max(flop / gemm_ceiling, bytes / copy_ceiling) / time.
//
// Flags: those of bench/suite.h, plus
//   --threads=N     OpenMP/OpenBLAS threads (default: OpenMP's)
// Default minimum time per repetition: 0.2 s.
#include <benchmark/benchmark.h>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <cblas.h>
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "suite.h"

namespace {

using namespace ntbench;

constexpr int kF32 = sizeof(float);

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
// at this shape (0 for the ceilings).
benchmark::internal::Benchmark* reg(const std::string& name, int calls_per_step,
                                    std::function<void(benchmark::State&)> fn) {
    return benchmark::RegisterBenchmark(name.c_str(), [fn, calls_per_step](benchmark::State& s) {
        fn(s);
        s.counters["calls_per_step"] = calls_per_step;
    })
        ->UseRealTime()  // the kernels are multi-threaded: wall time is what counts
        ->Unit(benchmark::kMillisecond);
}

// ---- ceilings -------------------------------------------------------------

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
    reg("ceiling/gemm", 0, [n](benchmark::State& s) {
        auto A = random((size_t)n * n, 1, 1), B = random((size_t)n * n, 1, 2);
        std::vector<float> C((size_t)n * n);
        run(s, [&] { nt::gemm<float>(false, false, n, n, n, 1.f, A.data(), n, B.data(), n, 0.f, C.data(), n); });
        Work w = gemm_work(n, n, n, kF32, kF32, false);
        w.shape = "sgemm " + w.shape;
        count(s, w);
    })->ComputeStatistics("min", fastest);
    // 128 MiB each way: four times the largest L3 in sight, so DRAM is measured.
    const size_t bytes = tiny ? (8u << 20) : (128u << 20);
    reg("ceiling/copy", 0, [bytes](benchmark::State& s) {
        const size_t n = bytes / sizeof(float);
        auto src = random(n, 1, 3);
        std::vector<float> dst(n);
        run(s, [&] { stream_copy(dst.data(), src.data(), n); });
        // Every byte read once and written once (the STREAM copy count).
        count(s, {0, 2.0 * bytes, std::to_string(bytes >> 20) + " MiB read + written"});
    })->ComputeStatistics("min", fastest);
}

// ---- GEMM in the shapes nt::linear_forward / linear_backward issue ----------

// One nn.Linear(IC -> OC) on N rows: forward out = X W^T, backward
// dX = dY W and dW += dY^T X, with the operand layouts of native/cpu/linear.cpp.
void register_linear(const LayerLinear& l, int layers, int N) {
    auto reg_gemm = [&](const char* pass, bool ta, bool tb, int M, int Nn, int K, float beta) {
        reg(std::string("gemm/") + l.tag + "/" + pass, layers, [=](benchmark::State& s) {
            const int lda = ta ? M : K, ldb = tb ? K : Nn;
            auto A = random((size_t)M * K, 1, 11), B = random((size_t)K * Nn, 1, 12);
            std::vector<float> C((size_t)M * Nn);
            run(s, [&] { nt::gemm<float>(ta, tb, M, Nn, K, 1.f, A.data(), lda, B.data(), ldb, beta, C.data(), Nn); });
            count(s, gemm_work(M, Nn, K, kF32, kF32, beta != 0.f));
        });
    };
    reg_gemm("fwd", false, true, N, l.OC, l.IC, 0.f);  // out(N,OC) = X(N,IC) W(OC,IC)^T
    reg_gemm("dX", false, false, N, l.IC, l.OC, 0.f);  // dX(N,IC) = dY(N,OC) W(OC,IC)
    reg_gemm("dW", true, false, l.OC, l.IC, N, 1.f);   // dW(OC,IC) += dY(N,OC)^T X(N,IC)
}

// ---- LayerNorm, GELU ---------------------------------------------------------

void register_layernorm(const Shape& sh) {
    const int N = sh.N(), C = sh.C;
    reg("layernorm/fwd", calls_layernorm(sh), [=](benchmark::State& s) {
        auto x = random((size_t)N * C, 1, 21), w = random(C, 1, 22), b = random(C, 1, 23);
        std::vector<float> out((size_t)N * C), mean(N), rstd(N);
        run(s, [&] { nt::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, 1e-12f); });
        count(s, layernorm_fwd_work(sh, kF32, false));
    });
    reg("layernorm/bwd", calls_layernorm(sh), [=](benchmark::State& s) {
        auto x = random((size_t)N * C, 1, 24), dy = random((size_t)N * C, 1, 25), w = random(C, 1, 26);
        std::vector<float> mean(N), rstd(N), out((size_t)N * C), dx((size_t)N * C), dw(C), db(C);
        nt::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), N, C, 1e-12f);
        run(s, [&] { nt::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C); });
        count(s, layernorm_bwd_work(sh, kF32));
    });
}

void register_gelu(const Shape& sh) {
    const size_t n = (size_t)sh.N() * sh.I;
    reg("gelu/fwd", sh.layers, [=](benchmark::State& s) {
        auto x = random(n, 3, 31);
        std::vector<float> y(n);
        run(s, [&] { nt::gelu_forward(y.data(), x.data(), n); });
        count(s, gelu_fwd_work(sh, kF32));
    });
    reg("gelu/bwd", sh.layers, [=](benchmark::State& s) {
        auto x = random(n, 3, 32), dy = random(n, 1, 33);
        std::vector<float> dx(n);
        run(s, [&] { nt::gelu_backward(dx.data(), x.data(), dy.data(), n); });
        count(s, gelu_bwd_work(sh, kF32));
    });
}

// ---- attention -----------------------------------------------------------------

void register_attention(const Shape& sh) {
    const int B = sh.B, T = sh.T, C = sh.C, NH = sh.NH;
    const size_t N = (size_t)B * T, probs = (size_t)B * NH * T * T;
    const nt::DropoutKey key{1, 0, 7};
    reg("attention/fwd", sh.layers, [=](benchmark::State& s) {
        auto qkv = random(N * 3 * C, 1, 41);
        std::vector<float> out(N * C), att(probs);
        std::vector<int32_t> mask(N, 1);
        run(s, [&] { nt::attention_forward(out.data(), att.data(), qkv.data(), mask.data(), B, T, C, NH, kDropout, key); });
        count(s, attention_fwd_work(sh, kF32, false));
    });
    reg("attention/bwd", sh.layers, [=](benchmark::State& s) {
        auto qkv = random(N * 3 * C, 1, 42), dout = random(N * C, 1, 43);
        std::vector<float> out(N * C), att(probs), scratch(probs), dqkv(N * 3 * C);
        std::vector<int32_t> mask(N, 1);
        nt::attention_forward(out.data(), att.data(), qkv.data(), mask.data(), B, T, C, NH, kDropout, key);
        run(s, [&] { nt::attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), mask.data(), B, T, C, NH, kDropout, key); });
        count(s, attention_bwd_work(sh, kF32, false));
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
        count(s, crossentropy_work(sh, kF32));
    });
    const size_t n = sh.params();
    reg("adamw/arena", 1, [=](benchmark::State& s) {
        auto p = random(n, 0.02f, 61), g = random(n, 1e-3f, 62), m = random(n, 1e-3f, 63);
        auto v = random(n, 1e-6f, 64);
        for (float& x : v) x = x * x;  // second moments are non-negative
        run(s, [&] { nt::adamw_update(p.data(), g.data(), m.data(), v.data(), n, 5e-5f, 0.9f, 0.999f, 1e-8f, 0.01f, 10, 1.f); });
        count(s, adamw_work(n, false));
    });
}

void register_embedding(const Shape& sh) {
    const int B = sh.B, T = sh.T, C = sh.C, V = sh.V;
    const size_t N = (size_t)B * T;
    const auto ids = random_ids(N, 1, V, 71);
    const double unique = distinct(ids);
    reg("embedding/fwd", 1, [=](benchmark::State& s) {
        auto wte = random((size_t)V * C, 1, 72), wpe = random((size_t)sh.P * C, 1, 73), wtt = random((size_t)sh.TV * C, 1, 74);
        std::vector<int32_t> tt(N, 0);
        std::vector<float> out(N * C);
        run(s, [&] { nt::embedding_forward(out.data(), ids.data(), tt.data(), wte.data(), wpe.data(), wtt.data(), B, T, C); });
        count(s, embedding_fwd_work(sh, unique, kF32));
    });
    reg("embedding/bwd", 1, [=](benchmark::State& s) {
        auto dout = random(N * C, 1, 75);
        std::vector<float> dwte((size_t)V * C), dwpe((size_t)sh.P * C), dwtt((size_t)sh.TV * C);
        std::vector<int32_t> tt(N, 0);
        run(s, [&] { nt::embedding_backward(dwte.data(), dwpe.data(), dwtt.data(), dout.data(), ids.data(), tt.data(), B, T, C); });
        count(s, embedding_bwd_work(sh, unique, kF32, false));
    });
}

void register_all(const Shape& sh, bool tiny) {
    register_ceilings(tiny);
    for (const LayerLinear& l : layer_linears(sh)) register_linear(l, sh.layers, sh.N());
    register_layernorm(sh);
    register_gelu(sh);
    register_attention(sh);
    register_loss_optimizer(sh);
    register_embedding(sh);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    Options o;
    try {
        o = parse_shape_flags(args);
        std::string threads;
        if (take_flag(args, "threads", &threads)) {
            const int n = parse_positive("threads", threads);
            omp_set_num_threads(n);
            openblas_set_num_threads(n);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "nodetune_bench_kernels: %s\n", e.what());
        return 2;
    }
    if (!init_benchmark(args, o.tiny, "0.2")) return 2;
    add_context(o.shape, "cpu", "fp32");
    benchmark::AddCustomContext("nt_threads", std::to_string(omp_get_max_threads()));
    benchmark::AddCustomContext("nt_blas", openblas_get_config());
    register_all(o.shape, o.tiny);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
