// Whole-engine parity for the decoder: CudaLlamaEngine (native/cuda/llama_cuda.cu)
// against LlamaEngine (native/models/llama.cpp) through the Model / CausalLM
// API the binding uses, on the same random LlamaForCausalLM weights and
// batches. Two fixtures: a tiny Llama (GQA 4/2, untied head, llama3 rope
// scaling) and a tiny Qwen2 (biases on q/k/v, GQA 4/1, tied head).
//
// Cases per fixture (fp32 unless named):
//   forward     logits and loss of a batch with a left-padded, a right-padded
//               and a packed (3 segments) row and ignored labels
//   full        full fine-tuning: one accumulate (loss, every gradient), then
//               3 AdamW steps with clipping (losses, norms, every weight)
//   lora        LoRA r 4 on all linear layers, lora_dropout 0.1, row_offset 3
//               (a data-parallel shard's masks): the same, plus gradient
//               checkpointing against the CPU engine without it
//   freeze      full, with one of q|k|v and the embeddings frozen: their
//               gradients exactly 0
//   generate    prefill of left-padded prompts + 4 decode steps: logits, and
//               the greedy tokens equal to the CPU engine's
//   bf16        (GPU only: bf16 needs no CPU twin) LoRA 20 steps, bf16 mixed
//               precision against fp32 on the GPU: per-step loss difference;
//               bf16 logits against the CPU's fp32
// Error metric per tensor: max_i |gpu_i - cpu_i| / max_i |cpu_i|; for the
// q/k/v biases the denominator is the max over the three (the key bias's
// gradient is analytically zero: a shift shared by all keys leaves softmax
// unchanged, so alone it is round-off against round-off).
//
// Benchmark (--bench): LoRA r 16 on all linear layers (lora_alpha 32, no
// dropout), bf16 mixed precision, random weights, batch 8 of full sequences
// of 1024 and 2048 tokens, SmolLM2-135M's shape and Llama-3.2-1B's (16
// layers, hidden 2048, 32 heads, 8 key-value heads, intermediate 8192, vocab
// 128,256, tied head); median of timed steps (accumulate + AdamW step).
// Reports tokens/s, TFLOP/s and MFU against the GPU's own measured bf16 GEMM
// ceiling (cuBLASLt, 8192^3), and peak device memory (cudaMemGetInfo's used
// bytes after the steps minus before the engine: every cudaMalloc of the
// engine, its cuBLASLt workspace included). FLOPs per token with a frozen
// base: 4 x (layer parameters + the lm_head) + 6 x LoRA parameters + causal
// attention 6 x T x NH x HS per layer (forward 2 T^2 NH HS a sequence, the
// backward twice that). Then one layer's attention alone (forward +
// backward, bf16, all rows real): its time, its share of the step (times the
// layers) and its TFLOP/s, to tell how much of the step attention is.
// test/gpu/bench_llm.sh puts PyTorch + PEFT beside it.
//
// Usage: nodetune_llama_check [--quick] [--json FILE]
//        nodetune_llama_check --bench [--steps N] [--tiny] [--json FILE]
//   --tiny: the benchmark's code path on the tiny fixtures' shapes (the emulator)
// Exit: 0 all pass, or no CUDA device; 1 a check failed; 2 an error was thrown.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/device_memory.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/llama_cuda.h"
#include "models/llama.h"

namespace {

using nt::Batch;
using nt::CausalLM;
using nt::LlamaConfig;
using nt::LoraConfig;
using nt::Model;
using nt::OwnedBatch;
using nt::TrainConfig;
using Slot = Model::Slot;
using Weights = std::vector<std::vector<float>>;

struct Fixture {
    std::string name;
    LlamaConfig cfg;
};

LlamaConfig tiny_llama() {
    LlamaConfig c;
    c.vocab_size = 97;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0;
    c.rope_scaling.llama3 = true;
    c.rope_scaling.factor = 8;
    c.rope_scaling.low_freq_factor = 1;
    c.rope_scaling.high_freq_factor = 4;
    c.rope_scaling.original_max_position_embeddings = 16;
    return c;
}

LlamaConfig tiny_qwen2() {
    LlamaConfig c = tiny_llama();
    c.rope_scaling = nt::RopeScaling{};
    c.rope_theta = 1000000.0;
    c.num_key_value_heads = 1;
    c.hidden_size = 48;  // head_dim 16 x 4 heads = 64 != hidden_size, as Qwen2 allows
    c.attention_bias = true;
    c.tie_word_embeddings = true;
    c.rms_norm_eps = 1e-6f;
    return c;
}

bool ends_with(const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// Norm weights near 1, projections N(0, 0.1) so the attention is not
// uniform; lora_B random too (PEFT starts it at zero, which would leave
// lora_A's first gradient zero and untested).
Weights random_weights(const Model& e, uint64_t seed) {
    std::mt19937_64 rng(seed);
    Weights w;
    for (const auto& p : e.params()) {
        const bool norm = p.name.find("norm") != std::string::npos;
        std::normal_distribution<float> d(norm ? 1.0f : 0.0f, 0.1f);
        std::vector<float> v(p.numel);
        for (auto& x : v) x = d(rng);
        w.push_back(std::move(v));
    }
    return w;
}

void load(Model& e, const Weights& w, bool skip_lora_A = false) {
    for (size_t i = 0; i < e.params().size(); i++) {
        if (skip_lora_A && ends_with(e.params()[i].name, "lora_A.weight")) continue;
        e.write(e.params()[i], Slot::Weight, w[i].data());
    }
}

std::vector<float> get(Model& e, size_t i, Slot slot) {
    std::vector<float> v(e.params()[i].numel);
    e.read(e.params()[i], slot, v.data());
    return v;
}

// Row 0 full; row 1 left-padded; row 2 right-padded; row 3 (when B > 3)
// three packed segments and a padded tail. Labels = ids with a few -100.
OwnedBatch make_batch(const LlamaConfig& c, int B, int T, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> tok(1, c.vocab_size - 1);
    OwnedBatch h;
    h.B = B;
    h.T = T;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int m = 1;
            if (b == 1) m = t >= T / 3;
            if (b == 2) m = t < T - T / 4;
            if (b == 3) m = t < T / 3 ? 1 : t < 2 * T / 3 ? 2 : t < T - 2 ? 3 : 0;
            h.input_ids.push_back(m ? tok(rng) : 0);
            h.attention_mask.push_back(m);
            h.labels.push_back(m && (t % 7 != 3) ? h.input_ids.back() : -100);
        }
    return h;
}

// ---- results -----------------------------------------------------------------------------
struct Result {
    std::string fixture, check, detail;
    double err, tol;
    bool pass;
};
std::vector<Result> results;
std::string current;

void record(const std::string& check, double err, double tol, const std::string& detail = "") {
    results.push_back({current, check, detail, err, tol, std::isfinite(err) && err <= tol});
}

double rel_err(const std::vector<float>& gpu, const std::vector<float>& ref, double den_floor = 0) {
    if (gpu.size() != ref.size()) return INFINITY;
    double num = 0, den = den_floor;
    for (size_t i = 0; i < gpu.size(); i++) {
        if (!std::isfinite(gpu[i])) return INFINITY;
        num = std::max(num, (double)std::fabs(gpu[i] - ref[i]));
        den = std::max(den, (double)std::fabs(ref[i]));
    }
    return den > 0 ? num / den : num;
}

double rel(double a, double b) { return std::fabs(a - b) / std::max(std::fabs(b), 1e-30); }

// Worst per-tensor error of a slot over all parameters, as one row.
void compare_slot(const std::string& check, Model& gpu, Model& cpu, Slot slot, double tol) {
    const auto& ps = cpu.params();
    std::vector<std::vector<float>> ref(ps.size());
    for (size_t i = 0; i < ps.size(); i++) ref[i] = get(cpu, i, slot);
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < ps.size(); i++) {
        double floor = 0;
        if (ends_with(ps[i].name, "_proj.bias") && ps[i].name.find("self_attn.o_proj") == std::string::npos) {
            const std::string stem = ps[i].name.substr(0, ps[i].name.size() - std::string("q_proj.bias").size());
            for (size_t j = 0; j < ps.size(); j++)
                if (ps[j].name.rfind(stem, 0) == 0 && ends_with(ps[j].name, "_proj.bias"))
                    for (float x : ref[j]) floor = std::max(floor, (double)std::fabs(x));
        }
        const double err = rel_err(get(gpu, i, slot), ref[i], floor);
        if (!(err <= worst)) {
            worst = err;
            worst_name = ps[i].name;
        }
    }
    record(check, worst, tol, "worst: " + worst_name);
}

void compare_logits(const std::string& check, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol) {
    record(check, rel_err(gpu, cpu), tol);
}

LoraConfig lora_all(float dropout) {
    LoraConfig l;
    l.r = 4;
    l.lora_alpha = 8;
    l.lora_dropout = dropout;
    l.target.fill(true);
    return l;
}

struct Pair {
    std::unique_ptr<CausalLM> gpu, cpu;
};

Pair make_pair(const LlamaConfig& c, const LoraConfig& lora, bool bf16 = false, bool checkpointing = false,
               bool trainable = true) {
    // adam_epsilon 1e-6 (HF default 1e-8): AdamW's first steps move an
    // element by about lr * g / (|g| + eps), so where |g| is near eps (an
    // element whose gradient nearly cancels, the key bias's zero gradient) a
    // round-off difference becomes an O(lr) update difference; 1e-6 keeps
    // that below the bar without changing what is computed.
    TrainConfig tc;
    tc.adam_epsilon = 1e-6f;
    tc.max_grad_norm = 0.5f;  // clipping active
    tc.weight_decay = 0.01f;
    Pair p;
    p.gpu.reset(new nt::cuda::CudaLlamaEngine(c, lora, tc, 0, bf16, checkpointing, trainable));
    p.cpu.reset(new nt::LlamaEngine(c, lora, tc, false, nt::LlamaEngine::BaseWeights::fp32, trainable));
    return p;
}

void train_and_compare(Pair& p, const LlamaConfig& c, const std::string& what, int64_t row_offset) {
    OwnedBatch h = make_batch(c, 4, 19, 7);
    h.row_offset = row_offset;
    // An inference forward first lays the activations out as one set shared
    // by every layer; the backward needs each layer's own, so accumulate must
    // lay them out again.
    p.gpu->forward(h.view(), nullptr, false);
    p.cpu->forward(h.view(), nullptr, false);
    const float lg = p.gpu->accumulate(h.view(), 1.0f), lc = p.cpu->accumulate(h.view(), 1.0f);
    record(what + " loss", rel(lg, lc), 1e-5, "cpu " + std::to_string(lc));
    compare_slot(what + " gradients", *p.gpu, *p.cpu, Slot::Grad, 1e-5);
    p.gpu->zero_grad();
    p.cpu->zero_grad();
    double worst_loss = 0, worst_norm = 0;
    for (int s = 0; s < 3; s++) {
        OwnedBatch b = make_batch(c, 4, 19, 100 + s);
        b.row_offset = row_offset;
        worst_loss = std::max(worst_loss, rel(p.gpu->accumulate(b.view(), 0.5f), p.cpu->accumulate(b.view(), 0.5f)));
        worst_norm = std::max(worst_norm, rel(p.gpu->step(1e-3f), p.cpu->step(1e-3f)));
    }
    record(what + " 3 steps: losses", worst_loss, 1e-5);
    record(what + " 3 steps: grad norms", worst_norm, 1e-5);
    compare_slot(what + " 3 steps: weights", *p.gpu, *p.cpu, Slot::Weight, 1e-5);
    compare_slot(what + " 3 steps: exp_avg_sq", *p.gpu, *p.cpu, Slot::ExpAvgSq, 1e-4);
}

void case_forward(const LlamaConfig& c) {
    Pair p = make_pair(c, LoraConfig{}, false, false, false);
    const Weights w = random_weights(*p.cpu, 1);
    load(*p.gpu, w);
    load(*p.cpu, w);
    const OwnedBatch h = make_batch(c, 4, 23, 3);
    std::vector<float> lg(p.cpu->logits_size(h.B, h.T)), lc(lg.size());
    const float loss_g = p.gpu->forward(h.view(), lg.data(), false), loss_c = p.cpu->forward(h.view(), lc.data(), false);
    compare_logits("forward logits", lg, lc, 1e-5);
    record("forward loss", rel(loss_g, loss_c), 1e-5, "cpu " + std::to_string(loss_c));
}

void case_full(const LlamaConfig& c) {
    Pair p = make_pair(c, LoraConfig{});
    const Weights w = random_weights(*p.cpu, 2);
    load(*p.gpu, w);
    load(*p.cpu, w);
    train_and_compare(p, c, "full", 0);
}

void case_lora(const LlamaConfig& c, bool checkpointing) {
    Pair p = make_pair(c, lora_all(0.1f), false, checkpointing);
    Weights w = random_weights(*p.cpu, 3);
    load(*p.gpu, w, true);  // lora_A keeps PEFT's init (the same on both engines)
    load(*p.cpu, w, true);
    const auto& ps = p.cpu->params();
    double init = 0;
    for (size_t i = 0; i < ps.size(); i++)
        if (ends_with(ps[i].name, "lora_A.weight")) init = std::max(init, rel_err(get(*p.gpu, i, Slot::Weight), get(*p.cpu, i, Slot::Weight)));
    record("lora_A initialisation", init, 0.0);
    train_and_compare(p, c, checkpointing ? "lora + checkpointing" : "lora", 3);
}

void case_freeze(const LlamaConfig& c) {
    Pair p = make_pair(c, LoraConfig{});
    const Weights w = random_weights(*p.cpu, 4);
    load(*p.gpu, w);
    load(*p.cpu, w);
    for (CausalLM* e : {p.gpu.get(), p.cpu.get()}) {
        e->set_trainable("model.embed_tokens.weight", false);
        e->set_trainable("model.layers.1.self_attn.k_proj.weight", false);
        e->set_trainable("model.layers.0.input_layernorm.weight", false);
    }
    const OwnedBatch h = make_batch(c, 4, 19, 9);
    p.gpu->accumulate(h.view(), 1.0f);
    p.cpu->accumulate(h.view(), 1.0f);
    compare_slot("freeze gradients", *p.gpu, *p.cpu, Slot::Grad, 1e-5);
    double frozen = 0;
    for (const char* n : {"model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight",
                          "model.layers.0.input_layernorm.weight"}) {
        const size_t i = &p.gpu->param(n) - p.gpu->params().data();
        for (float x : get(*p.gpu, i, Slot::Grad)) frozen = std::max(frozen, (double)std::fabs(x));
    }
    record("freeze: frozen gradients", frozen, 0.0);
}

// Greedy generation from left-padded prompts on both engines.
void case_generate(const LlamaConfig& c, double tol, bool bf16) {
    Pair p = make_pair(c, LoraConfig{}, bf16, false, false);
    const Weights w = random_weights(*p.cpu, 5);
    load(*p.gpu, w);
    load(*p.cpu, w);
    const int B = 3, T = 9, V = c.vocab_size, steps = 4;
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<int> tok(1, V - 1);
    OwnedBatch h;
    h.B = B;
    h.T = T;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const bool real = t >= b * 3;  // row b left-padded by 3b
            h.input_ids.push_back(real ? tok(rng) : 0);
            h.attention_mask.push_back(real);
        }
    std::vector<float> lg((size_t)B * V), lc(lg.size());
    p.gpu->prefill(h.view(), steps, lg.data());
    p.cpu->prefill(h.view(), steps, lc.data());
    const std::string tag = bf16 ? " (bf16 vs cpu fp32)" : "";
    double worst = rel_err(lg, lc);
    int same = 0, total = 0;
    for (int s = 0; s < steps; s++) {
        std::vector<int32_t> next(B);
        for (int b = 0; b < B; b++) {
            const float* row = lc.data() + (size_t)b * V;
            next[b] = (int32_t)(std::max_element(row, row + V) - row);
            const float* rg = lg.data() + (size_t)b * V;
            same += (std::max_element(rg, rg + V) - rg) == next[b];
            total++;
        }
        if (s + 1 == steps) break;
        p.gpu->decode(next.data(), lg.data());  // both fed the CPU's tokens: logits stay comparable
        p.cpu->decode(next.data(), lc.data());
        worst = std::max(worst, rel_err(lg, lc));
    }
    record("generate: prefill + decode logits" + tag, worst, tol);
    record("generate: greedy tokens differing" + tag, total - same, bf16 ? total / 4.0 : 0.0,
           std::to_string(same) + " of " + std::to_string(total) + " equal");
}

// bf16 mixed precision against fp32, both on the GPU, LoRA, `steps` steps
// (20; 6 at --quick sizes, for the emulator).
void case_bf16(const LlamaConfig& c, int steps) {
    TrainConfig tc;
    std::unique_ptr<CausalLM> a(new nt::cuda::CudaLlamaEngine(c, lora_all(0.1f), tc, 0, true, false, true));
    std::unique_ptr<CausalLM> b(new nt::cuda::CudaLlamaEngine(c, lora_all(0.1f), tc, 0, false, false, true));
    const Weights w = random_weights(*b, 6);
    load(*a, w, true);
    load(*b, w, true);
    double worst = 0, first = 0, last = 0;
    for (int s = 0; s < steps; s++) {
        const OwnedBatch h = make_batch(c, 4, 19, 200 + s % 5);
        const float la = a->accumulate(h.view(), 1.0f), lb = b->accumulate(h.view(), 1.0f);
        a->step(5e-3f);
        b->step(5e-3f);
        worst = std::max(worst, rel(la, lb));
        if (s == 0) first = lb;
        last = lb;
    }
    record("bf16 vs fp32: " + std::to_string(steps) + " LoRA steps, loss", worst, 2e-2,
           "fp32 loss " + std::to_string(first) + " -> " + std::to_string(last));
    record("bf16: the loss falls", last < first ? 0.0 : 1.0, 0.0);
}

void guarded(const char* name, const std::function<void()>& fn) {
    try {
        fn();
    } catch (const std::exception& e) {
        record(std::string(name) + " threw", INFINITY, 0, e.what());
    }
}

std::string num(double x) {
    if (std::isnan(x)) return "null";
    if (std::isinf(x)) return "1e999";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3e", x);
    return buf;
}

std::string json_escape(const std::string& s) {
    std::string o;
    for (char ch : s) {
        if (ch == '"' || ch == '\\') o += '\\';
        o += ch;
    }
    return o;
}

// ---- benchmark ------------------------------------------------------------------------------
struct BenchShape {
    std::string name;
    LlamaConfig cfg;
};

LlamaConfig smollm2_135m() {
    LlamaConfig c;
    c.vocab_size = 49152;
    c.hidden_size = 576;
    c.intermediate_size = 1536;
    c.num_hidden_layers = 30;
    c.num_attention_heads = 9;
    c.num_key_value_heads = 3;
    c.head_dim = 64;
    c.max_position_embeddings = 8192;
    c.rope_theta = 100000.0;
    c.tie_word_embeddings = true;
    return c;
}

LlamaConfig llama32_1b() {
    LlamaConfig c;
    c.vocab_size = 128256;
    c.hidden_size = 2048;
    c.intermediate_size = 8192;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.head_dim = 64;
    c.max_position_embeddings = 131072;
    c.rope_theta = 500000.0;
    c.tie_word_embeddings = true;
    return c;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The GPU's bf16 GEMM ceiling as cuBLASLt reaches it: n^3 (8192), median of 10.
double gemm_ceiling_tflops(int n) {
    nt::cuda::Blas blas;
    nt::cuda::bf16 *a = nullptr, *c = nullptr;
    NT_CUDA_CHECK(cudaMalloc((void**)&a, (size_t)n * n * sizeof(nt::cuda::bf16)));
    NT_CUDA_CHECK(cudaMalloc((void**)&c, (size_t)n * n * sizeof(nt::cuda::bf16)));
    NT_CUDA_CHECK(cudaMemset(a, 0, (size_t)n * n * sizeof(nt::cuda::bf16)));
    std::vector<double> t;
    for (int i = 0; i < 13; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        blas.gemm<nt::cuda::bf16, nt::cuda::bf16>(nullptr, false, true, n, n, n, 1.0f, a, n, a, n, 0.0f, c, n);
        NT_CUDA_CHECK(cudaStreamSynchronize(nullptr));
        if (i >= 3) t.push_back(seconds_since(t0));
    }
    cudaFree(a);
    cudaFree(c);
    std::sort(t.begin(), t.end());
    return 2.0 * n * n * (double)n / t[t.size() / 2] / 1e12;
}

// One layer's causal attention, forward + backward (the bf16 kernels the
// engine runs) at (B, T, NH, NKV, HS), all rows real: median of 5 seconds.
double attention_seconds(int B, int T, int NH, int NKV, int HS) {
    using nt::cuda::bf16;
    const size_t N = (size_t)B * T, QKV = (size_t)(NH + 2 * NKV) * HS, OC = (size_t)NH * HS;
    const size_t L = (size_t)B * NH * T;
    nt::cuda::engine_detail::DeviceBuffer bufs[7];  // freed on return, and when a check throws
    int used = 0;
    auto dev = [&](size_t bytes) {
        nt::cuda::engine_detail::DeviceBuffer& b = bufs[used++];
        NT_CUDA_CHECK(b.allocate(bytes));
        NT_CUDA_CHECK(cudaMemset(b.get(), 0, bytes));  // zero scores: every visible key weighs the same
        return static_cast<void*>(b.get());
    };
    auto* qkv = (bf16*)dev(N * QKV * 2);
    auto* dqkv = (bf16*)dev(N * QKV * 2);
    auto* out = (bf16*)dev(N * OC * 2);
    auto* dout = (bf16*)dev(N * OC * 2);
    auto* lse = (float*)dev(L * 4);
    auto* delta = (float*)dev(L * 4);
    auto* mask = (int32_t*)dev(N * 4);
    const std::vector<int32_t> ones(N, 1);
    NT_CUDA_CHECK(cudaMemcpy(mask, ones.data(), N * 4, cudaMemcpyHostToDevice));
    std::vector<double> t;
    for (int i = 0; i < 7; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        nt::cuda::causal_attention_forward<bf16>(out, lse, qkv, mask, B, T, NH, NKV, HS, nullptr);
        nt::cuda::causal_attention_backward<bf16>(dqkv, delta, dout, out, qkv, lse, mask, B, T, NH, NKV, HS, nullptr);
        NT_CUDA_CHECK(cudaStreamSynchronize(nullptr));
        if (i >= 2) t.push_back(seconds_since(t0));
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

size_t device_used() {
    size_t free_b = 0, total_b = 0;
    NT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return total_b - free_b;
}

// tiny: the same code path on small shapes (T 32, 64), for the emulator.
int run_bench(int steps, bool tiny, const char* json_path) {
    const int gemm_n = tiny ? 128 : 8192;
    const double ceiling = gemm_ceiling_tflops(gemm_n);
    std::printf("bf16 GEMM ceiling (cuBLASLt %d^3): %.1f TFLOP/s\n", gemm_n, ceiling);
    std::vector<BenchShape> shapes = {{"SmolLM2-135M", smollm2_135m()}, {"Llama-3.2-1B", llama32_1b()}};
    if (tiny) shapes = {{"tiny-llama", tiny_llama()}, {"tiny-qwen2", tiny_qwen2()}};
    LoraConfig lora;
    lora.r = 16;
    lora.lora_alpha = 32;
    lora.target.fill(true);
    std::string json = "{\"gemm_ceiling_tflops\":" + num(ceiling) + ",\"rows\":[";
    bool first_row = true;
    int failed = 0;
    std::printf("%-14s %5s %6s %12s %9s %7s %11s %9s %7s %11s\n", "shape", "batch", "seq", "tokens/s", "TFLOP/s",
                "MFU", "peak MiB", "attn ms", "attn %", "attn TF/s");
    for (const BenchShape& sh : shapes)
        for (int T : tiny ? std::vector<int>{32, 64} : std::vector<int>{1024, 2048}) {
            const int B = tiny ? 2 : 8;
            try {
                const size_t before = device_used();
                TrainConfig tc;
                nt::cuda::CudaLlamaEngine e(sh.cfg, lora, tc, 0, true, false, true);
                std::mt19937_64 rng(1);
                std::normal_distribution<float> d(0.0f, 0.02f);
                for (const auto& p : e.params()) {
                    if (ends_with(p.name, "lora_A.weight")) continue;
                    std::vector<float> v(p.numel);
                    const bool norm = p.name.find("norm") != std::string::npos;
                    for (auto& x : v) x = norm ? 1.0f : d(rng);
                    e.write(p, Slot::Weight, v.data());
                }
                OwnedBatch h;
                h.B = B;
                h.T = T;
                std::uniform_int_distribution<int> tok(0, sh.cfg.vocab_size - 1);
                for (int i = 0; i < B * T; i++) {
                    h.input_ids.push_back(tok(rng));
                    h.attention_mask.push_back(1);
                    h.labels.push_back(h.input_ids.back());
                }
                std::vector<double> t;
                for (int s = 0; s < steps + 2; s++) {
                    const auto t0 = std::chrono::steady_clock::now();
                    e.accumulate(h.view(), 1.0f);
                    e.step(1e-4f);
                    if (s >= 2) t.push_back(seconds_since(t0));
                }
                const size_t peak = device_used() - before;
                std::sort(t.begin(), t.end());
                const double step = t[t.size() / 2];
                const LlamaConfig& c = sh.cfg;
                // attention alone: its share of the step (all layers) and its
                // rate (causal: forward 2 T^2 NH HS per sequence, backward 2x)
                const double attn = attention_seconds(B, T, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
                const double attn_share = attn * c.num_hidden_layers / step;
                const double attn_flops = 6.0 * B * (double)T * T * c.num_attention_heads * c.head_dim;  // one layer
                const double attn_tflops = attn_flops / attn / 1e12;
                double layer_params = 0, lora_params = 0;
                for (const auto& p : e.params()) {
                    if (p.name.find("lora_") != std::string::npos) lora_params += p.numel;
                    else if (p.name.find(".layers.") != std::string::npos) layer_params += p.numel;
                }
                const double head = (double)c.vocab_size * c.hidden_size;
                const double tokens = (double)B * T;
                const double per_token =
                    4 * (layer_params + head) + 6 * lora_params + attn_flops * c.num_hidden_layers / tokens;
                const double tflops = per_token * tokens / step / 1e12;
                std::printf("%-14s %5d %6d %12.0f %9.1f %6.1f%% %11.0f %9.2f %6.1f%% %11.1f\n", sh.name.c_str(), B, T,
                            tokens / step, tflops, 100 * tflops / ceiling, peak / 1048576.0, attn * 1e3,
                            100 * attn_share, attn_tflops);
                json += std::string(first_row ? "" : ",") + "{\"shape\":\"" + sh.name + "\",\"batch\":" +
                        std::to_string(B) + ",\"seq\":" + std::to_string(T) + ",\"step_s\":" + num(step) +
                        ",\"tokens_per_s\":" + num(tokens / step) + ",\"tflops\":" + num(tflops) +
                        ",\"mfu\":" + num(tflops / ceiling) + ",\"peak_bytes\":" + std::to_string(peak) +
                        ",\"attention_layer_s\":" + num(attn) + ",\"attention_share\":" + num(attn_share) +
                        ",\"attention_tflops\":" + num(attn_tflops) + "}";
                first_row = false;
            } catch (const std::exception& ex) {
                failed++;
                std::printf("%-14s %5d %6d  error: %s\n", sh.name.c_str(), B, T, ex.what());
            }
        }
    json += "]}";
    if (json_path)
        if (FILE* fp = std::fopen(json_path, "w")) {
            std::fprintf(fp, "%s\n", json.c_str());
            std::fclose(fp);
        }
    return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    const char* json_path = nullptr;
    bool quick = false, bench = false, tiny = false;
    int steps = 5;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
        else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
        else if (std::strcmp(argv[i], "--bench") == 0) bench = true;
        else if (std::strcmp(argv[i], "--tiny") == 0) tiny = true;
        else if (std::strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
        else {
            std::fprintf(stderr, "usage: %s [--quick] [--json FILE] | --bench [--steps N] [--tiny] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    if (nt::cuda::cuda_device_count() == 0) {
        std::printf("no CUDA device: %s\nllama_check skipped (built and linked fine).\n",
                    nt::cuda::cuda_unavailable_reason().c_str());
        return 0;
    }
    if (bench) {
        try {
            return run_bench(steps, tiny, json_path);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "llama_check --bench: error: %s\n", e.what());
            return 2;
        }
    }
    const Fixture fixtures[] = {{"tiny-llama", tiny_llama()}, {"tiny-qwen2", tiny_qwen2()}};
    for (const Fixture& f : fixtures) {
        current = f.name;
        const LlamaConfig& c = f.cfg;
        guarded("forward", [&] { case_forward(c); });
        guarded("full", [&] { case_full(c); });
        guarded("lora", [&] { case_lora(c, false); });
        guarded("lora + checkpointing", [&] { case_lora(c, true); });
        guarded("freeze", [&] { case_freeze(c); });
        guarded("generate", [&] { case_generate(c, 1e-5, false); });
        guarded("generate bf16", [&] { case_generate(c, 5e-2, true); });
        guarded("bf16", [&] { case_bf16(c, quick ? 6 : 20); });
    }
    int failed = 0;
    std::printf("\n%-12s %-46s %11s %9s  %-4s %s\n", "fixture", "check", "error", "tol", "", "detail");
    for (const auto& r : results) {
        failed += !r.pass;
        std::printf("%-12s %-46s %11s %9s  %-4s %s\n", r.fixture.c_str(), r.check.c_str(), num(r.err).c_str(),
                    num(r.tol).c_str(), r.pass ? "ok" : "FAIL", r.detail.c_str());
    }
    std::printf("\n%d of %zu decoder engine checks failed\n", failed, results.size());
    std::string json = "{\"results\":[";
    for (size_t i = 0; i < results.size(); i++) {
        const auto& r = results[i];
        json += (i ? "," : "");
        json += "{\"fixture\":\"" + r.fixture + "\",\"check\":\"" + json_escape(r.check) + "\",\"error\":" + num(r.err) +
                ",\"tol\":" + num(r.tol) + ",\"pass\":" + (r.pass ? "true" : "false") + ",\"detail\":\"" +
                json_escape(r.detail) + "\"}";
    }
    json += "],\"failed\":" + std::to_string(failed) + "}";
    if (json_path) {
        if (FILE* fp = std::fopen(json_path, "w")) {
            std::fprintf(fp, "%s\n", json.c_str());
            std::fclose(fp);
        }
    }
    return failed ? 1 : 0;
}
