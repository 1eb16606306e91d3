// Shapes, work counts and flags shared by the CPU and CUDA kernel suites (suite.h).
#include "suite.h"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <stdexcept>

namespace ntbench {

size_t Shape::params() const {
    const size_t c = C, i = I;
    const size_t layer = 4 * c * c + 4 * c + 2 * c * i + i + c + 4 * c;
    return (size_t)V * c + (size_t)P * c + (size_t)TV * c + 2 * c + layers * layer + c * c + c +
           (size_t)L * c + L;
}

Shape model_shape(const std::string& name) {
    if (name == "bert-tiny") return {name, 2, 128, 2, 512, 30522, 512, 2, 77, 32, 128};
    if (name == "bert-base") return {name, 12, 768, 12, 3072, 30522, 512, 2, 77, 32, 128};
    if (name == "minilm-l6") return {name, 6, 384, 12, 1536, 30522, 512, 2, 77, 32, 128};
    if (name == "tiny") return {name, 2, 64, 2, 128, 1000, 64, 2, 7, 2, 16};
    throw std::invalid_argument("--model=" + name +
                                ": expected minilm-l6, bert-tiny, bert-base or tiny");
}

// splitmix64: fast, no <random> cost on the 110 M floats of bert-base's AdamW arena.
std::vector<float> random(size_t n, float scale, uint64_t seed) {
    std::vector<float> x(n);
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (float& v : x) {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        v = scale * (2.0f * (float)(z >> 40) / (float)(1 << 24) - 1.0f);
    }
    return x;
}

std::vector<int32_t> random_ids(size_t n, int lo, int hi, uint64_t seed) {
    std::vector<float> u = random(n, 0.5f, seed);
    std::vector<int32_t> ids(n);
    for (size_t i = 0; i < n; i++) ids[i] = lo + std::min(hi - lo - 1, (int)((u[i] + 0.5f) * (hi - lo)));
    return ids;
}

double distinct(const std::vector<int32_t>& ids) {
    return (double)std::set<int32_t>(ids.begin(), ids.end()).size();
}

std::string dims(const std::vector<std::pair<const char*, long>>& d) {
    std::string s;
    for (auto& [k, v] : d) s += (s.empty() ? "" : " ") + std::string(k) + "=" + std::to_string(v);
    return s;
}

// ---- work per call ---------------------------------------------------------------

Work gemm_work(int M, int N, int K, int ab_bytes, int c_bytes, bool accumulate) {
    const double mk = (double)M * K, kn = (double)K * N, mn = (double)M * N;
    return {2.0 * M * N * K, ab_bytes * (mk + kn) + c_bytes * (accumulate ? 2.0 : 1.0) * mn,
            dims({{"M", M}, {"N", N}, {"K", K}})};
}

Work layernorm_fwd_work(const Shape& s, int act, bool residual) {
    const double NC = (double)s.N() * s.C;
    // FLOPs per element: mean 1, variance 3, normalise + affine 4 (+1 residual add).
    // Bytes: x read, out written (+ the second addend read and the sum saved);
    // weight, bias read; mean, rstd written (fp32).
    const double elems = residual ? 4.0 : 2.0;
    return {(residual ? 9.0 : 8.0) * NC, act * (elems * NC + 2.0 * s.C) + 4.0 * 2.0 * s.N(),
            dims({{"N", s.N()}, {"C", s.C}})};
}

Work layernorm_bwd_work(const Shape& s, int act) {
    const double NC = (double)s.N() * s.C;
    // FLOPs per element: x_hat 2, dy*w 1, dbias 1, dweight 2, two row sums 3, dx 4.
    // Bytes: dy, x read and dx written; weight read; dweight and dbias (fp32)
    // read + written; mean, rstd read.
    return {13.0 * NC, act * (3.0 * NC + s.C) + 4.0 * (4.0 * s.C + 2.0 * s.N()),
            dims({{"N", s.N()}, {"C", s.C}})};
}

Work gelu_fwd_work(const Shape& s, int act) {
    const double n = (double)s.N() * s.I;
    // FLOPs per element: 4 arithmetic + erf counted as 1. Bytes: x read, y written.
    return {5.0 * n, 2.0 * act * n, dims({{"N", s.N()}, {"I", s.I}})};
}

Work gelu_bwd_work(const Shape& s, int act) {
    const double n = (double)s.N() * s.I;
    // FLOPs per element: cdf 4, pdf 5 (exp as 1), combine 3. Bytes: x, dy read, dx written.
    return {12.0 * n, 3.0 * act * n, dims({{"N", s.N()}, {"I", s.I}})};
}

namespace {
std::string attention_dims(const Shape& s) {
    return dims({{"B", s.B}, {"T", s.T}, {"C", s.C}, {"NH", s.NH}});
}
}  // namespace

Work attention_fwd_work(const Shape& s, int act, bool flash) {
    const double N = s.N(), C = s.C, TT = (double)s.T * s.T, BH = (double)s.B * s.NH;
    // FLOPs per (b, h): Q K^T 2 T^2 HS, P V 2 T^2 HS; scale, softmax (max, exp,
    // sum, normalise) and dropout scale ~5 T^2 (Philox not counted).
    const double flop = BH * (4.0 * TT * s.HS() + 5.0 * TT);
    // Bytes: qkv read (3 N C), out written (N C), mask read (B T int32), plus
    // the (B,NH,T,T) probabilities written (CPU) or the (B,NH,T) logsumexp (flash).
    const double saved = flash ? 4.0 * BH * s.T : 4.0 * BH * TT;
    return {flop, act * 4.0 * N * C + saved + 4.0 * N, attention_dims(s)};
}

Work attention_bwd_work(const Shape& s, int act, bool flash) {
    const double N = s.N(), C = s.C, TT = (double)s.T * s.T, BH = (double)s.B * s.NH;
    // FLOPs per (b, h): dV, dP, dQ, dK four GEMMs of 2 T^2 HS, plus the Q K^T
    // a flash backward recomputes (FlashAttention-2's 2.5x-forward count);
    // dropout, P * (dP - rowsum(P dP)) and the scale ~5 T^2.
    const double gemms = flash ? 10.0 : 8.0;
    const double flop = BH * (gemms * TT * s.HS() + 5.0 * TT);
    // Bytes: qkv and dout read, dqkv written, mask read; the probabilities
    // read (CPU) or out, logsumexp read and delta = rowsum(dout * out) written
    // and read (flash). Scratch workspaces are not minimum traffic.
    const double saved = flash ? act * N * C + 4.0 * 3.0 * BH * s.T : 4.0 * BH * TT;
    return {flop, act * 7.0 * N * C + saved + 4.0 * N, attention_dims(s)};
}

Work crossentropy_work(const Shape& s, int act) {
    const double BL = (double)s.B * s.L;
    // FLOPs per logit: max 1, exp 1, sum 1, log-prob 1, gradient 1.
    // Bytes: logits read, dlogits written, labels read.
    return {5.0 * BL, act * 2.0 * BL + 4.0 * s.B, dims({{"B", s.B}, {"L", s.L}})};
}

Work adamw_work(size_t n, bool bf16_copy) {
    // FLOPs per parameter: scale g 1, decay 1, m lerp 3, v 4, sqrt and bias
    // correction 3, update 3. Bytes: fp32 p, m, v read + written, g read
    // (7 x 4 n); the bf16 weight copy written (2 n) in mixed precision.
    return {15.0 * n, 28.0 * n + (bf16_copy ? 2.0 * n : 0.0), dims({{"params", (long)n}})};
}

Work embedding_fwd_work(const Shape& s, double unique_ids, int act) {
    const double NC = (double)s.N() * s.C;
    // FLOPs: 2 adds per output. Bytes: out written; the distinct word rows, T
    // position rows and one token-type row read; ids and token types read.
    return {2.0 * NC, act * (NC + (unique_ids + s.T + 1) * s.C) + 4.0 * 2.0 * s.N(),
            dims({{"B", s.B}, {"T", s.T}, {"C", s.C}, {"V", s.V}})};
}

Work embedding_bwd_work(const Shape& s, double unique_ids, int act, bool sorted) {
    const double NC = (double)s.N() * s.C;
    // FLOPs: 3 adds per dout element (word, position, token-type tables).
    // Bytes: dout read; the touched rows of the three fp32 tables read +
    // written; ids and token types read; the sorted backward's bucket order
    // (N), offsets and ids (U + 1, U) read instead of the ids.
    const double ids = sorted ? 4.0 * (2.0 * s.N() + 2.0 * unique_ids + 1) : 4.0 * 2.0 * s.N();
    return {3.0 * NC, act * NC + 4.0 * 2.0 * (unique_ids + s.T + 1) * s.C + ids,
            dims({{"B", s.B}, {"T", s.T}, {"C", s.C}, {"V", s.V}})};
}

std::vector<LayerLinear> layer_linears(const Shape& s) {
    return {{"qkv", s.C, 3 * s.C},      // fused Q, K, V projections
            {"attn_out", s.C, s.C},     // attention.output.dense
            {"ffn_up", s.C, s.I},       // intermediate.dense
            {"ffn_down", s.I, s.C}};    // output.dense
}

// ---- Google Benchmark glue -----------------------------------------------------------

void count(benchmark::State& state, const Work& w) {
    using benchmark::Counter;
    state.counters["flop_per_iter"] = w.flop;
    state.counters["bytes_per_iter"] = w.bytes;
    // Rate counters for people running the binary directly; the report reads the two above.
    if (w.flop > 0) state.counters["FLOPS"] = Counter(w.flop, Counter::kIsIterationInvariantRate);
    state.SetBytesProcessed((int64_t)(w.bytes * (double)state.iterations()));
    state.SetLabel(w.shape);
}

double fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

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

Options parse_shape_flags(std::vector<char*>& args) {
    Options o;
    std::string model = "minilm-l6", batch, seq;
    const char* env_tiny = std::getenv("NODETUNE_BENCH_TINY");
    o.tiny = take_flag(args, "tiny", nullptr) || (env_tiny && std::string(env_tiny) == "1");
    take_flag(args, "model", &model);
    o.shape = model_shape(o.tiny ? "tiny" : model);
    if (take_flag(args, "batch", &batch)) o.shape.B = parse_positive("batch", batch);
    if (take_flag(args, "seq", &seq)) o.shape.T = parse_positive("seq", seq);
    if (o.shape.T > o.shape.P)
        throw std::invalid_argument("--seq=" + seq + ": exceeds max_position_embeddings " +
                                    std::to_string(o.shape.P));
    return o;
}

bool init_benchmark(std::vector<char*>& args, bool tiny, const char* min_time) {
    // Our defaults first, so the user's --benchmark_* flags (parsed later) win.
    std::string reps = tiny ? "--benchmark_repetitions=3" : "--benchmark_repetitions=5";
    std::string min = std::string("--benchmark_min_time=") + (tiny ? "0.01" : min_time);
    std::string agg = "--benchmark_report_aggregates_only=true";
    args.insert(args.begin() + 1, {reps.data(), min.data(), agg.data()});
    int n = (int)args.size();
    benchmark::Initialize(&n, args.data());
    return !benchmark::ReportUnrecognizedArguments(n, args.data());
}

void add_context(const Shape& s, const std::string& device, const std::string& precision) {
    const auto put = [](const char* k, const std::string& v) { benchmark::AddCustomContext(k, v); };
    put("nt_model", s.model);
    put("nt_B", std::to_string(s.B));
    put("nt_T", std::to_string(s.T));
    put("nt_C", std::to_string(s.C));
    put("nt_NH", std::to_string(s.NH));
    put("nt_I", std::to_string(s.I));
    put("nt_L", std::to_string(s.L));
    put("nt_V", std::to_string(s.V));
    put("nt_layers", std::to_string(s.layers));
    put("nt_params", std::to_string(s.params()));
    put("nt_device", device);
    put("nt_precision", precision);
}

}  // namespace ntbench
