// CUDA kernel micro-benchmarks against the GPU's own limits (Google Benchmark).
//
// The CUDA twin of bench/kernels.cpp: the same benchmark names, shapes, work
// counts (bench/suite.cpp) and contract with src/bench/kernels.ts, for the
// kernels of native/cuda in the precision the engine trains in (--precision
// bf16: bf16 activations and weights, fp32 gradients of parameters and
// optimizer state; or fp32). The ceilings are measured the same way on the
// GPU: ceiling/gemm is a large square cuBLASLt GEMM in that precision (fp32
// accumulation, no TF32, like the engine) and ceiling/copy a device-to-device
// cudaMemcpyAsync (read + write counted).
//
// Timing: CUDA events on one stream (manual time). Each Google Benchmark
// iteration enqueues `inner` launches between two events and reports their
// mean; `inner` is picked during warm-up so an event pair spans >= 200 us,
// far above the events' resolution (~0.5 us) and the gaps between enqueues.
// Inputs are built once per benchmark (random values, uploaded), not per
// repetition.
//
// Flags: those of bench/suite.h, plus
//   --precision=bf16|fp32   (default bf16)
//   --gpu=N                 CUDA device index (default 0)
// Default minimum time per repetition: 0.1 s.
// Exit: 0 done; 2 bad flags, or no CUDA device ("no CUDA device: <reason>").
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "suite.h"

namespace {

using namespace ntbench;
using nt::cuda::bf16;

// The stream, timing events and cuBLASLt plans every benchmark uses.
struct Gpu {
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    std::unique_ptr<nt::cuda::Blas> blas;
};
Gpu* gpu = nullptr;

// A device buffer of n elements, shared by the launch closures that use it.
template <typename T>
struct Buf {
    T* p = nullptr;
    explicit Buf(size_t n) { NT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T))); }
    ~Buf() { cudaFree(p); }
    Buf(const Buf&) = delete;
    Buf& operator=(const Buf&) = delete;
};
template <typename T>
using DevPtr = std::shared_ptr<Buf<T>>;

template <typename T>
DevPtr<T> alloc(size_t n) {
    return std::make_shared<Buf<T>>(n);
}

// Uploads host floats as T (bf16: rounded on the device by nt::cuda::convert).
template <typename T>
DevPtr<T> upload(const std::vector<float>& h) {
    auto d = alloc<T>(h.size());
    if constexpr (std::is_same_v<T, float>) {
        NT_CUDA_CHECK(cudaMemcpy(d->p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
    } else {
        Buf<float> tmp(h.size());
        NT_CUDA_CHECK(cudaMemcpy(tmp.p, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
        nt::cuda::convert(d->p, tmp.p, h.size(), gpu->stream);
        NT_CUDA_CHECK(cudaStreamSynchronize(gpu->stream));
    }
    return d;
}

DevPtr<int32_t> upload_ids(const std::vector<int32_t>& h) {
    auto d = alloc<int32_t>(h.size());
    NT_CUDA_CHECK(cudaMemcpy(d->p, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
DevPtr<T> zeros(size_t n) {
    auto d = alloc<T>(n);
    NT_CUDA_CHECK(cudaMemset(d->p, 0, std::max<size_t>(n, 1) * sizeof(T)));
    return d;
}

// Seconds for `inner` launches between two events on the stream.
double time_launches(const std::function<void()>& launch, int inner) {
    NT_CUDA_CHECK(cudaEventRecord(gpu->start, gpu->stream));
    for (int i = 0; i < inner; i++) launch();
    NT_CUDA_CHECK(cudaEventRecord(gpu->stop, gpu->stream));
    NT_CUDA_CHECK(cudaEventSynchronize(gpu->stop));
    nt::cuda::check_launch("benchmarked kernel");
    float ms = 0;
    NT_CUDA_CHECK(cudaEventElapsedTime(&ms, gpu->start, gpu->stop));
    return ms * 1e-3;
}

// A benchmark ready to run: its launch (holding its device buffers) and the
// work one launch does.
struct Prepared {
    std::function<void()> launch;
    Work work;
};
using Setup = std::function<Prepared()>;

// The inputs of one benchmark at a time: Google Benchmark calls a benchmark
// once per repetition and per iteration-count probe, and building up to a GB
// of random inputs each time would dominate the suite's run time. Benchmarks
// run one after another, so the previous one's buffers are freed first.
std::string prepared_name;
std::shared_ptr<Prepared> prepared;

const Prepared& prepare(const std::string& name, const Setup& setup) {
    if (prepared_name != name || !prepared) {
        prepared.reset();
        prepared_name.clear();
        prepared = std::make_shared<Prepared>(setup());
        prepared_name = name;
    }
    return *prepared;
}

// Warms up (plan cache, first touch), then times the launch per iteration
// (events, manual time). A CUDA or setup error ends the benchmark with its
// message, which the report turns into an error naming it, instead of
// aborting the suite.
benchmark::internal::Benchmark* reg(const std::string& name, int calls_per_step, Setup setup) {
    return benchmark::RegisterBenchmark(name.c_str(), [name, calls_per_step, setup](benchmark::State& s) {
        try {
            const Prepared& p = prepare(name, setup);
            p.launch();
            const double once = time_launches(p.launch, 1);
            const int inner = (int)std::clamp(std::ceil(200e-6 / std::max(once, 1e-7)), 1.0, 1000.0);
            for (auto _ : s) s.SetIterationTime(time_launches(p.launch, inner) / inner);
            count(s, p.work);
        } catch (const std::exception& e) {
            s.SkipWithError(e.what());
        }
        s.counters["calls_per_step"] = calls_per_step;
    })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}

template <typename T>
constexpr int act_bytes() {
    return (int)sizeof(T);
}

// ---- ceilings -------------------------------------------------------------

template <typename T>
void register_ceilings(bool tiny) {
    const int n = tiny ? 256 : 8192;
    reg("ceiling/gemm", 0, [n] {
        auto A = upload<T>(random((size_t)n * n, 1, 1)), B = upload<T>(random((size_t)n * n, 1, 2));
        auto C = alloc<T>((size_t)n * n);
        Work w = gemm_work(n, n, n, act_bytes<T>(), act_bytes<T>(), false);
        w.shape = std::string(sizeof(T) == 2 ? "bf16" : "fp32") + " cuBLASLt " + w.shape;
        return Prepared{[=] { gpu->blas->gemm<T, T>(gpu->stream, false, false, n, n, n, 1.f, A->p, n, B->p, n, 0.f, C->p, n); }, w};
    })->ComputeStatistics("min", fastest);
    // 512 MiB each way: ten times the largest L2 (H100/H200: 50 MiB), so HBM is measured.
    const size_t bytes = tiny ? (8u << 20) : (512u << 20);
    reg("ceiling/copy", 0, [bytes] {
        auto src = alloc<char>(bytes), dst = alloc<char>(bytes);
        NT_CUDA_CHECK(cudaMemset(src->p, 1, bytes));
        return Prepared{[=] { NT_CUDA_CHECK(cudaMemcpyAsync(dst->p, src->p, bytes, cudaMemcpyDeviceToDevice, gpu->stream)); },
                        {0, 2.0 * bytes, std::to_string(bytes >> 20) + " MiB read + written (cudaMemcpyAsync)"}};
    })->ComputeStatistics("min", fastest);
}

// ---- GEMM in the shapes Blas::linear_forward / linear_backward issue ---------

// The layouts of native/cuda/gemm.cu: out = X W^T and dX = dY W in T, the
// weight gradient dW += dY^T X accumulated in fp32.
template <typename T>
void register_linear(const LayerLinear& l, int layers, int N) {
    const auto name = [&](const char* pass) { return std::string("gemm/") + l.tag + "/" + pass; };
    auto fwd_or_dx = [&](const char* pass, bool tb, int M, int Nn, int K) {
        reg(name(pass), layers, [=] {
            auto A = upload<T>(random((size_t)M * K, 1, 11)), B = upload<T>(random((size_t)K * Nn, 1, 12));
            auto C = alloc<T>((size_t)M * Nn);
            return Prepared{[=] { gpu->blas->gemm<T, T>(gpu->stream, false, tb, M, Nn, K, 1.f, A->p, K, B->p, tb ? K : Nn, 0.f, C->p, Nn); },
                            gemm_work(M, Nn, K, act_bytes<T>(), act_bytes<T>(), false)};
        });
    };
    fwd_or_dx("fwd", true, N, l.OC, l.IC);   // out(N,OC) = X(N,IC) W(OC,IC)^T
    fwd_or_dx("dX", false, N, l.IC, l.OC);   // dX(N,IC) = dY(N,OC) W(OC,IC)
    const int M = l.OC, Nn = l.IC, K = N;    // dW(OC,IC) += dY(N,OC)^T X(N,IC)
    reg(name("dW"), layers, [=] {
        auto A = upload<T>(random((size_t)K * M, 1, 13)), B = upload<T>(random((size_t)K * Nn, 1, 14));
        auto C = zeros<float>((size_t)M * Nn);
        return Prepared{[=] { gpu->blas->gemm<T, float>(gpu->stream, true, false, M, Nn, K, 1.f, A->p, M, B->p, Nn, 1.f, C->p, Nn); },
                        gemm_work(M, Nn, K, act_bytes<T>(), sizeof(float), true)};
    });
}

// ---- LayerNorm, GELU ---------------------------------------------------------

template <typename T>
void register_layernorm(const Shape& sh) {
    const int N = sh.N(), C = sh.C;
    const size_t NC = (size_t)N * C;
    // The engine runs the plain form once (embeddings) and the fused residual
    // form twice per layer; the CPU suite's layernorm/fwd counts all 2L+1.
    reg("layernorm/fwd", 1, [=] {
        auto x = upload<T>(random(NC, 1, 21)), w = upload<T>(random(C, 1, 22)), b = upload<T>(random(C, 1, 23));
        auto out = alloc<T>(NC);
        auto mean = alloc<float>(N), rstd = alloc<float>(N);
        return Prepared{[=] { nt::cuda::layernorm_forward<T>(out->p, mean->p, rstd->p, x->p, w->p, b->p, N, C, 1e-12f, gpu->stream); },
                        layernorm_fwd_work(sh, act_bytes<T>(), false)};
    });
    reg("layernorm/residual_fwd", 2 * sh.layers, [=] {
        auto a = upload<T>(random(NC, 1, 27)), x = upload<T>(random(NC, 1, 28));
        auto w = upload<T>(random(C, 1, 22)), b = upload<T>(random(C, 1, 23));
        auto res = alloc<T>(NC), out = alloc<T>(NC);
        auto mean = alloc<float>(N), rstd = alloc<float>(N);
        return Prepared{[=] { nt::cuda::residual_layernorm_forward<T>(res->p, out->p, mean->p, rstd->p, a->p, x->p, w->p, b->p, N, C, 1e-12f, gpu->stream); },
                        layernorm_fwd_work(sh, act_bytes<T>(), true)};
    });
    reg("layernorm/bwd", calls_layernorm(sh), [=] {
        auto x = upload<T>(random(NC, 1, 24)), dy = upload<T>(random(NC, 1, 25)), w = upload<T>(random(C, 1, 26));
        auto out = alloc<T>(NC), dx = alloc<T>(NC);
        auto mean = alloc<float>(N), rstd = alloc<float>(N);
        auto scratch = alloc<float>(nt::cuda::layernorm_backward_scratch_floats(N, C));
        auto dw = zeros<float>(C), db = zeros<float>(C);
        nt::cuda::layernorm_forward<T>(out->p, mean->p, rstd->p, x->p, w->p, w->p, N, C, 1e-12f, gpu->stream);
        return Prepared{[=] { nt::cuda::layernorm_backward<T>(dx->p, dw->p, db->p, dy->p, x->p, w->p, mean->p, rstd->p, N, C, scratch->p, false, gpu->stream); },
                        layernorm_bwd_work(sh, act_bytes<T>())};
    });
}

template <typename T>
void register_gelu(const Shape& sh) {
    const size_t n = (size_t)sh.N() * sh.I;
    reg("gelu/fwd", sh.layers, [=] {
        auto x = upload<T>(random(n, 3, 31));
        auto y = alloc<T>(n);
        return Prepared{[=] { nt::cuda::gelu_forward<T>(y->p, x->p, n, gpu->stream); }, gelu_fwd_work(sh, act_bytes<T>())};
    });
    reg("gelu/bwd", sh.layers, [=] {
        auto x = upload<T>(random(n, 3, 32)), dy = upload<T>(random(n, 1, 33));
        auto dx = alloc<T>(n);
        return Prepared{[=] { nt::cuda::gelu_backward<T>(dx->p, x->p, dy->p, n, gpu->stream); }, gelu_bwd_work(sh, act_bytes<T>())};
    });
}

// ---- attention (flash-style: the T x T scores never reach global memory) ------------

template <typename T>
void register_attention(const Shape& sh) {
    const int B = sh.B, Tn = sh.T, C = sh.C, NH = sh.NH;
    const size_t N = (size_t)B * Tn, rows = (size_t)B * NH * Tn;
    const nt::DropoutKey key{1, 0, 7};
    reg("attention/fwd", sh.layers, [=] {
        auto qkv = upload<T>(random(N * 3 * C, 1, 41));
        auto mask = upload_ids(std::vector<int32_t>(N, 1));
        auto out = alloc<T>(N * C);
        auto lse = alloc<float>(rows);
        return Prepared{[=] { nt::cuda::attention_forward<T>(out->p, lse->p, qkv->p, mask->p, B, Tn, C, NH, kDropout, key, gpu->stream); },
                        attention_fwd_work(sh, act_bytes<T>(), true)};
    });
    reg("attention/bwd", sh.layers, [=] {
        auto qkv = upload<T>(random(N * 3 * C, 1, 42)), dout = upload<T>(random(N * C, 1, 43));
        auto mask = upload_ids(std::vector<int32_t>(N, 1));
        auto out = alloc<T>(N * C), dqkv = alloc<T>(N * 3 * C);
        auto lse = alloc<float>(rows), delta = alloc<float>(rows);
        nt::cuda::attention_forward<T>(out->p, lse->p, qkv->p, mask->p, B, Tn, C, NH, kDropout, key, gpu->stream);
        return Prepared{[=] { nt::cuda::attention_backward<T>(dqkv->p, delta->p, dout->p, out->p, qkv->p, lse->p, mask->p, B, Tn, C, NH, kDropout, key, gpu->stream); },
                        attention_bwd_work(sh, act_bytes<T>(), true)};
    });
}

// ---- loss, optimizer, embeddings -------------------------------------------------

template <typename T>
void register_loss_optimizer(const Shape& sh) {
    const int B = sh.B, L = sh.L;
    reg("crossentropy/fwd_bwd", 1, [=] {
        auto logits = upload<T>(random((size_t)B * L, 4, 51));
        auto labels = upload_ids(random_ids(B, 0, L, 52));
        auto dlogits = alloc<T>((size_t)B * L);
        auto loss = alloc<float>(1);
        return Prepared{[=] { nt::cuda::crossentropy_softmax_forward_backward<T>(loss->p, dlogits->p, logits->p, labels->p, nullptr, B, L, 0.f, 1.f, gpu->stream); },
                        crossentropy_work(sh, act_bytes<T>())};
    });
    const size_t n = sh.params();
    constexpr bool mixed = std::is_same_v<T, bf16>;
    reg("adamw/arena", 1, [=] {
        auto p = upload<float>(random(n, 0.02f, 61)), g = upload<float>(random(n, 1e-3f, 62));
        auto m = upload<float>(random(n, 1e-3f, 63));
        auto v_host = random(n, 1e-6f, 64);
        for (float& x : v_host) x = x * x;  // second moments are non-negative
        auto v = upload<float>(v_host);
        auto copy = alloc<bf16>(mixed ? n : 0);  // the bf16 weights, written in mixed precision only
        return Prepared{[=] { nt::cuda::adamw_update(p->p, mixed ? copy->p : nullptr, g->p, m->p, v->p, nullptr, n, 5e-5f, 0.9f, 0.999f, 1e-8f, 0.01f, 10, 1.f, nullptr, gpu->stream); },
                        adamw_work(n, mixed)};
    });
}

// Device copies of make_id_buckets' arrays.
struct Buckets {
    DevPtr<int32_t> order, offsets, ids;
    nt::cuda::DeviceBuckets view;
    Buckets(const std::vector<int32_t>& host_ids, int N, int num_ids) {
        const nt::cuda::IdBuckets b = nt::cuda::make_id_buckets(host_ids.data(), N, num_ids);
        order = upload_ids(b.order);
        offsets = upload_ids(b.offsets);
        ids = upload_ids(b.ids);
        view = {order->p, offsets->p, ids->p, (int)b.ids.size()};
    }
};

template <typename T>
void register_embedding(const Shape& sh) {
    const int B = sh.B, Tn = sh.T, C = sh.C, V = sh.V;
    const size_t N = (size_t)B * Tn;
    const auto ids = random_ids(N, 1, V, 71);
    const double unique = distinct(ids);
    reg("embedding/fwd", 1, [=] {
        auto wte = upload<T>(random((size_t)V * C, 1, 72)), wpe = upload<T>(random((size_t)sh.P * C, 1, 73));
        auto wtt = upload<T>(random((size_t)sh.TV * C, 1, 74));
        auto d_ids = upload_ids(ids), tt = upload_ids(std::vector<int32_t>(N, 0));
        auto out = alloc<T>(N * C);
        return Prepared{[=] { nt::cuda::embedding_forward<T>(out->p, d_ids->p, tt->p, wte->p, wpe->p, wtt->p, B, Tn, C, gpu->stream); },
                        embedding_fwd_work(sh, unique, act_bytes<T>())};
    });
    // The deterministic backward the engine runs (buckets built on the host per batch, not timed).
    reg("embedding/bwd", 1, [=] {
        auto dout = upload<T>(random(N * C, 1, 75));
        auto dwte = zeros<float>((size_t)V * C), dwpe = zeros<float>((size_t)sh.P * C), dwtt = zeros<float>((size_t)sh.TV * C);
        auto words = std::make_shared<Buckets>(ids, (int)N, V);
        auto types = std::make_shared<Buckets>(std::vector<int32_t>(N, 0), (int)N, sh.TV);
        return Prepared{[=] { nt::cuda::embedding_backward_sorted<T>(dwte->p, dwpe->p, dwtt->p, dout->p, words->view, types->view, B, Tn, C, gpu->stream); },
                        embedding_bwd_work(sh, unique, act_bytes<T>(), true)};
    });
}

template <typename T>
void register_all(const Shape& sh, bool tiny) {
    register_ceilings<T>(tiny);
    for (const LayerLinear& l : layer_linears(sh)) register_linear<T>(l, sh.layers, sh.N());
    register_layernorm<T>(sh);
    register_gelu<T>(sh);
    register_attention<T>(sh);
    register_loss_optimizer<T>(sh);
    register_embedding<T>(sh);
}

int parse_index(const std::string& v) {
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || x < 0 || x > 1024)
        throw std::invalid_argument("--gpu=" + v + ": expected a CUDA device index >= 0");
    return (int)x;
}

int fail(const std::string& msg) {
    std::fprintf(stderr, "nodetune_bench_cuda: %s\n", msg.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<char*> args(argv, argv + argc);
    Options o;
    std::string precision = "bf16", device = "0";
    int index = 0;
    try {
        o = parse_shape_flags(args);
        take_flag(args, "precision", &precision);
        if (precision != "bf16" && precision != "fp32")
            throw std::invalid_argument("--precision=" + precision + ": expected bf16 or fp32");
        if (take_flag(args, "gpu", &device)) index = parse_index(device);
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    if (!init_benchmark(args, o.tiny, "0.1")) return 2;
    Gpu g;
    nt::cuda::DeviceInfo info;
    try {
        if (nt::cuda::cuda_device_count() == 0) return fail("no CUDA device: " + nt::cuda::cuda_unavailable_reason());
        info = nt::cuda::cuda_device_info(index);
        NT_CUDA_CHECK(cudaSetDevice(index));
        NT_CUDA_CHECK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
        NT_CUDA_CHECK(cudaEventCreate(&g.start));
        NT_CUDA_CHECK(cudaEventCreate(&g.stop));
        g.blas = std::make_unique<nt::cuda::Blas>();
    } catch (const std::exception& e) {
        return fail(e.what());
    }
    gpu = &g;
    add_context(o.shape, "cuda", precision);
    benchmark::AddCustomContext("nt_gpu", info.name + " (sm_" + std::to_string(info.major) + std::to_string(info.minor) + ", " +
                                              std::to_string(info.multiprocessors) + " SMs)");
    benchmark::AddCustomContext("nt_cuda", "driver " + std::to_string(info.driver_version) + ", runtime " + std::to_string(info.runtime_version));
    if (precision == "bf16") register_all<bf16>(o.shape, o.tiny);
    else register_all<float>(o.shape, o.tiny);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    prepared.reset();  // device buffers go before the stream and the handle
    g.blas.reset();
    cudaEventDestroy(g.start);
    cudaEventDestroy(g.stop);
    cudaStreamDestroy(g.stream);
    return 0;
}
