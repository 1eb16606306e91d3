// What the CPU kernel suite (bench/kernels.cpp) and the CUDA kernel suite
// (bench/kernels_cuda.cpp) share: the model shapes, the work each kernel does
// (FLOPs and minimum bytes moved, counted here once for both devices), the
// command-line flags, and the context keys src/bench/kernels.ts reads.
//
// Contract with src/bench/kernels.ts:
//   every benchmark sets the counters flop_per_iter, bytes_per_iter and
//   calls_per_step (0 for the ceilings) and labels itself with its shape; the
//   compute ceiling is named ceiling/gemm (a large square GEMM in the suite's
//   precision) and the bandwidth ceiling ceiling/copy (a large copy, read +
//   write counted); custom context keys nt_* describe the device, precision,
//   model shape and threads.
//
// Flags (besides Google Benchmark's own --benchmark_*):
//   --model=minilm-l6|bert-tiny|bert-base   shapes (default minilm-l6)
//   --batch=B --seq=T                       (default 32, 128)
//   --tiny  (or NODETUNE_BENCH_TINY=1)      tiny shapes and short runs, for tests
//   plus each suite's own (--threads on the CPU, --precision and --gpu on CUDA).
// Defaults injected before the user's flags (which override them):
//   --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   --benchmark_min_time=<suite's> (tiny: 3 repetitions, 0.01 s)
#pragma once
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace ntbench {

// A BertForSequenceClassification shape and the batch it trains on.
struct Shape {
    std::string model;
    int layers, C, NH, I, V, P, TV, L;  // L = num_labels
    int B, T;
    int N() const { return B * T; }
    int HS() const { return C / NH; }
    // Every parameter of the model: the AdamW arena size.
    size_t params() const;
};

// HF config.json values of minilm-l6, bert-tiny, bert-base (77 labels:
// Banking77), or "tiny" (tests). Throws std::invalid_argument otherwise.
Shape model_shape(const std::string& name);

constexpr float kDropout = 0.1f;  // BERT's attention_probs_dropout_prob

// Deterministic uniform values in [-scale, scale) (splitmix64).
std::vector<float> random(size_t n, float scale, uint64_t seed);
// n ids uniform in [lo, hi).
std::vector<int32_t> random_ids(size_t n, int lo, int hi, uint64_t seed);
// Number of distinct values in ids.
double distinct(const std::vector<int32_t>& ids);

// "M=1 N=2 K=3"
std::string dims(const std::vector<std::pair<const char*, long>>& d);

// ---- work per call ----------------------------------------------------------
// FLOPs a kernel does and the minimum bytes it must move (each input read once,
// each output written once), for one call. `act` is the bytes of one
// activation or weight element (4 fp32, 2 bf16); parameter gradients, LayerNorm
// statistics, logsumexp and optimizer state are fp32 on both devices.
struct Work {
    double flop, bytes;
    std::string shape;
};
// C(M,N) = op(A)(M,K) op(B)(K,N) [+ C]: 2 M N K FLOPs; A, B read, C written
// (and read when accumulating).
Work gemm_work(int M, int N, int K, int ab_bytes, int c_bytes, bool accumulate);
Work layernorm_fwd_work(const Shape& s, int act, bool residual);
Work layernorm_bwd_work(const Shape& s, int act);
Work gelu_fwd_work(const Shape& s, int act);
Work gelu_bwd_work(const Shape& s, int act);
// flash: scores stay on chip and only the logsumexp (B,NH,T) is saved (CUDA);
// otherwise the (B,NH,T,T) probabilities are written and read back (CPU).
Work attention_fwd_work(const Shape& s, int act, bool flash);
Work attention_bwd_work(const Shape& s, int act, bool flash);
Work crossentropy_work(const Shape& s, int act);
// bf16_copy: the mixed-precision step also writes a bf16 copy of the weights.
Work adamw_work(size_t n, bool bf16_copy);
Work embedding_fwd_work(const Shape& s, double unique_ids, int act);
// sorted: the deterministic CUDA backward also reads its id buckets.
Work embedding_bwd_work(const Shape& s, double unique_ids, int act, bool sorted);

// The four nn.Linear of a BERT layer: (tag, in_features, out_features).
struct LayerLinear {
    const char* tag;
    int IC, OC;
};
std::vector<LayerLinear> layer_linears(const Shape& s);

// How often one training step runs each kernel: per layer, plus the
// embedding LayerNorm; the report weighs kernels by it.
inline int calls_layernorm(const Shape& s) { return 2 * s.layers + 1; }

// ---- Google Benchmark glue ---------------------------------------------------
// Sets the counters of the contract and the label (the shape).
void count(benchmark::State& state, const Work& w);
// The fastest repetition: what a ceiling reports ("min" aggregate), since
// interference from other processes only ever slows a repetition down.
double fastest(const std::vector<double>& v);

// Removes `--name=value` / `--name` from args; true when present.
bool take_flag(std::vector<char*>& args, const std::string& name, std::string* value);
int parse_positive(const std::string& flag, const std::string& v);

// Parses --model --batch --seq --tiny out of args (throws std::invalid_argument
// naming the flag), injects the default repetitions and minimum time, and
// initialises Google Benchmark. Returns false (after printing) on an
// unrecognised flag.
struct Options {
    Shape shape;
    bool tiny = false;
};
Options parse_shape_flags(std::vector<char*>& args);
bool init_benchmark(std::vector<char*>& args, bool tiny, const char* min_time);

// Context keys nt_model, nt_B ... nt_params, nt_device, nt_precision.
void add_context(const Shape& s, const std::string& device, const std::string& precision);

}  // namespace ntbench
