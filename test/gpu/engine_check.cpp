// Whole-engine parity and benchmark: CudaEngine (native/cuda/engine_cuda.cu)
// against CpuEngine (native/engine/engine.cpp) through the EngineBase API the
// binding uses, on the same random BertForSequenceClassification and batches.
//
// Parity cases per model shape (fp32 unless named):
//   forward    inference logits and loss
//   train      one accumulate: loss and every parameter gradient; then the
//              gradient norms and losses of 3 AdamW steps (clipping active)
//              and every parameter after them
//   dropout    hidden/attention/classifier dropout 0.1: same Philox masks on
//              both devices, so losses and gradients agree to fp32 round-off
//   freeze     embeddings, layer 0 and one of layer 1's fused q/k/v frozen:
//              frozen gradients exactly 0, frozen weights bit-unchanged
//   accumulate class weights, label smoothing, an ignored label (-100) and
//              two micro-batches with lossScale 0.5
//   non-finite an infinite loss scale: the step is skipped (weights, moments,
//              step count unchanged), as CpuEngine::step does
//   bf16       20 steps of bf16 mixed precision against fp32 (both on the
//              GPU, same batches and dropout masks): loss difference per step
// Error metric per tensor: max_i |gpu_i - cpu_i| / max_i |cpu_i|; for the
// fused q/k/v weights and biases the denominator is the max over the three
// (the key bias gradient is analytically zero: softmax ignores a shift shared
// by all keys, so alone it is round-off against round-off).
//
// Benchmark (--bench): training steps (accumulate + step, dropout 0.1, full
// attention mask, as scripts/reference/bench_torch.py) of MiniLM-L6 and
// bert-base shapes at batch 32 and 128, sequence 128, bf16 and fp32; median
// of timed steps; FLOPs counted as 6 x encoder parameters x tokens + 6 x
// pooler/classifier parameters x B + attention 12 x B x T^2 x C per layer
// (forward 4 B T^2 C: QK^T and PV; backward twice that).
//
// Usage: nodetune_engine_check [--quick] [--json FILE]
//        nodetune_engine_check --bench [--steps N] [--peak TFLOPS] [--json FILE]
//   --quick: small shapes only (what test/gpu/emulate.sh runs on the CPU)
// Exit: 0 all pass, or no CUDA device; 1 a check failed; 2 an error was thrown.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/engine_cuda.h"
#include "cuda/kernels.h"
#include "engine/engine.h"

namespace {

using nt::Batch;
using nt::BertConfig;
using nt::EngineBase;
using nt::TrainConfig;
using Weights = std::vector<std::vector<float>>;  // one vector per parameter, params() order

// ---- model shapes -----------------------------------------------------------------
struct Shape {
    std::string name;
    BertConfig cfg;
    int B, T;  // parity batch
};

BertConfig bert_config(int V, int C, int layers, int NH, int I, int P, int L) {
    BertConfig c;
    c.vocab_size = V;
    c.hidden_size = C;
    c.num_hidden_layers = layers;
    c.num_attention_heads = NH;
    c.intermediate_size = I;
    c.max_position_embeddings = P;
    c.type_vocab_size = 2;
    c.num_labels = L;
    c.pad_token_id = 0;
    c.layer_norm_eps = 1e-12f;
    c.hidden_dropout_prob = c.attention_probs_dropout_prob = c.classifier_dropout = 0.0f;
    return c;
}
// test/fixtures/tiny-bert's config (head size 8)
Shape tiny_shape() { return {"tiny-bert", bert_config(100, 32, 2, 4, 64, 64, 5), 3, 7}; }
// head size 40 (not a multiple of 32) and T over one 32-key tile
Shape small_shape() { return {"small", bert_config(300, 80, 2, 2, 160, 64, 7), 4, 40}; }
// all-MiniLM-L6-v2 with the Banking77 head
Shape minilm_shape() { return {"MiniLM-L6", bert_config(30522, 384, 6, 12, 1536, 512, 77), 8, 64}; }
Shape bert_base_shape() { return {"bert-base", bert_config(30522, 768, 12, 12, 3072, 512, 77), 8, 64}; }

void set_dropout(BertConfig& c, float p) {
    c.hidden_dropout_prob = c.attention_probs_dropout_prob = c.classifier_dropout = p;
}

// ---- random model and batches ---------------------------------------------------------
bool ends_with(const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// HF BertPreTrainedModel._init_weights draws matrices and embeddings from
// N(0, 0.02); biases and LayerNorm parameters get noise too here, so that no
// gradient or update is trivially constant.
Weights random_weights(const EngineBase& e, uint64_t seed) {
    std::mt19937_64 rng(seed);
    Weights w;
    for (const auto& p : e.params()) {
        const bool ln = p.name.find("LayerNorm") != std::string::npos;
        const float mean = ln && ends_with(p.name, ".weight") ? 1.0f : 0.0f;
        const float sd = ln ? 0.1f : 0.02f;
        std::normal_distribution<float> d(mean, sd);
        std::vector<float> v(p.numel);
        for (auto& x : v) x = d(rng);
        w.push_back(std::move(v));
    }
    return w;
}

void load(EngineBase& e, const Weights& w) {
    for (size_t i = 0; i < e.params().size(); i++) e.write(e.params()[i], EngineBase::Slot::Weight, w[i].data());
}

std::vector<float> get(EngineBase& e, size_t i, EngineBase::Slot slot) {
    std::vector<float> v(e.params()[i].numel);
    e.read(e.params()[i], slot, v.data());
    return v;
}

using HostBatch = nt::OwnedBatch;

// Row 0 full, the others padded (pad_token_id, mask 0) to random lengths;
// two segments per row. `ignore_one`: label of the last row is -100.
HostBatch random_batch(const BertConfig& c, int B, int T, uint64_t seed, bool padded, bool ignore_one = false) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> tok(1, c.vocab_size - 1), lab(0, c.num_labels - 1);
    std::uniform_int_distribution<int> len(std::max(2, T / 3), T);
    HostBatch h;
    h.B = B;
    h.T = T;
    for (int b = 0; b < B; b++) {
        const int n = (!padded || b == 0) ? T : len(rng);
        const int split = std::max(1, n / 2);
        for (int t = 0; t < T; t++) {
            h.input_ids.push_back(t < n ? tok(rng) : c.pad_token_id);
            h.attention_mask.push_back(t < n);
            h.token_type_ids.push_back(t < n && t >= split);
        }
        h.labels.push_back(lab(rng));
    }
    if (ignore_one) h.labels.back() = -100;
    return h;
}

// ---- results --------------------------------------------------------------------------
struct Result {
    std::string shape, check, detail;
    double err, tol;
    bool pass;
};
std::vector<Result> results;
std::string current_shape;

void record(const std::string& check, double err, double tol, const std::string& detail = "") {
    const bool pass = std::isfinite(err) && err <= tol;
    results.push_back({current_shape, check, detail, err, tol, pass});
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

// q/k/v weight (or bias) triples are adjacent in params(): the index of the
// triple's query member, or -1 for a tensor outside one.
long fused_group(const std::vector<nt::ParamInfo>& ps, size_t i) {
    const std::string& n = ps[i].name;
    if (n.find("attention.self.query.") != std::string::npos) return (long)i;
    if (n.find("attention.self.key.") != std::string::npos) return (long)i - 1;
    if (n.find("attention.self.value.") != std::string::npos) return (long)i - 2;
    return -1;
}

// Worst per-tensor error of a slot over all parameters, recorded as one row.
void compare_slot(const std::string& check, EngineBase& gpu, EngineBase& cpu, EngineBase::Slot slot, double tol) {
    const auto& ps = cpu.params();
    std::vector<std::vector<float>> ref(ps.size());
    for (size_t i = 0; i < ps.size(); i++) ref[i] = get(cpu, i, slot);
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < ps.size(); i++) {
        double floor = 0;
        if (const long g0 = fused_group(ps, i); g0 >= 0)
            for (size_t j = (size_t)g0; j < (size_t)g0 + 3; j++)
                for (float x : ref[j]) floor = std::max(floor, (double)std::fabs(x));
        const double err = rel_err(get(gpu, i, slot), ref[i], floor);
        if (!(err <= worst)) {
            worst = err;
            worst_name = ps[i].name;
        }
    }
    record(check, worst, tol, "worst: " + worst_name);
}

// adam_epsilon 1e-6 (HF default 1e-8): AdamW's first steps move an element by
// about lr * g / (|g| + eps), so where |g| is near eps a round-off-level
// gradient difference becomes an O(lr) update difference; 1e-6 keeps that
// amplification below the 1e-4 bar without changing what is computed.
TrainConfig train_config(uint64_t seed) {
    TrainConfig tc;
    tc.adam_epsilon = 1e-6f;
    tc.weight_decay = 0.01f;
    tc.max_grad_norm = 0.5f;  // low enough that clipping is active
    tc.seed = seed;
    return tc;
}

struct Pair {
    std::unique_ptr<EngineBase> cpu, gpu;
};
Pair make_pair(const BertConfig& c, const TrainConfig& tc, const Weights& w) {
    Pair p{std::make_unique<nt::CpuEngine>(c, tc), nt::cuda::make_cuda_engine(c, tc, 0, false)};
    load(*p.cpu, w);
    load(*p.gpu, w);
    return p;
}

// ---- parity cases -----------------------------------------------------------------------
constexpr double kTol = 1e-4;  // the brief's bar for fp32 GPU vs CPU
constexpr float kLr = 1e-3f;

void case_forward_train(const Shape& s, const Weights& w) {
    auto p = make_pair(s.cfg, train_config(7), w);
    const HostBatch hb = random_batch(s.cfg, s.B, s.T, 1, true);
    const size_t BL = (size_t)s.B * s.cfg.num_labels;
    std::vector<float> lc(BL), lg(BL);
    const float loss_c = p.cpu->forward(hb.view(), lc.data(), false);
    const float loss_g = p.gpu->forward(hb.view(), lg.data(), false);
    record("forward logits", rel_err(lg, lc), kTol);
    record("forward loss", rel(loss_g, loss_c), kTol);

    const float a_c = p.cpu->accumulate(hb.view(), 1.0f), a_g = p.gpu->accumulate(hb.view(), 1.0f);
    record("train loss", rel(a_g, a_c), kTol);
    compare_slot("train gradients", *p.gpu, *p.cpu, EngineBase::Slot::Grad, kTol);
    double worst_norm = rel(p.gpu->step(kLr), p.cpu->step(kLr)), worst_loss = 0;
    for (int k = 0; k < 2; k++) {
        worst_loss = std::max(worst_loss, rel(p.gpu->accumulate(hb.view(), 1.0f), p.cpu->accumulate(hb.view(), 1.0f)));
        worst_norm = std::max(worst_norm, rel(p.gpu->step(kLr), p.cpu->step(kLr)));
    }
    record("train steps 2-3 loss", worst_loss, kTol);
    record("train grad_norm (3 steps)", worst_norm, kTol);
    compare_slot("weights after 3 AdamW steps", *p.gpu, *p.cpu, EngineBase::Slot::Weight, kTol);
    compare_slot("exp_avg after 3 steps", *p.gpu, *p.cpu, EngineBase::Slot::ExpAvg, kTol);
}

void case_dropout(const Shape& s, const Weights& w) {
    BertConfig c = s.cfg;
    set_dropout(c, 0.1f);
    auto p = make_pair(c, train_config(11), w);
    const HostBatch hb = random_batch(c, s.B, s.T, 2, true);
    record("dropout loss", rel(p.gpu->accumulate(hb.view(), 1.0f), p.cpu->accumulate(hb.view(), 1.0f)), kTol);
    compare_slot("dropout gradients", *p.gpu, *p.cpu, EngineBase::Slot::Grad, kTol);
    double worst = rel(p.gpu->step(kLr), p.cpu->step(kLr));
    for (int k = 0; k < 2; k++) {
        worst = std::max(worst, rel(p.gpu->accumulate(hb.view(), 1.0f), p.cpu->accumulate(hb.view(), 1.0f)));
        worst = std::max(worst, rel(p.gpu->step(kLr), p.cpu->step(kLr)));
    }
    record("dropout steps 2-3 loss, norm", worst, kTol);
}

void case_freeze(const Shape& s, const Weights& w) {
    auto p = make_pair(s.cfg, train_config(13), w);
    const auto& ps = p.cpu->params();
    std::vector<bool> frozen(ps.size(), false);
    for (size_t i = 0; i < ps.size(); i++) {
        const std::string& n = ps[i].name;
        frozen[i] = n.rfind("bert.embeddings.", 0) == 0 || n.rfind("bert.encoder.layer.0.", 0) == 0 ||
                    (s.cfg.num_hidden_layers > 1 && n == "bert.encoder.layer.1.attention.self.key.weight");
        if (frozen[i]) {
            p.cpu->set_trainable(n, false);
            p.gpu->set_trainable(n, false);
        }
    }
    const HostBatch hb = random_batch(s.cfg, s.B, s.T, 3, true);
    record("freeze loss", rel(p.gpu->accumulate(hb.view(), 1.0f), p.cpu->accumulate(hb.view(), 1.0f)), kTol);
    compare_slot("freeze gradients", *p.gpu, *p.cpu, EngineBase::Slot::Grad, kTol);
    double frozen_grad = 0, frozen_moved = 0;
    for (size_t i = 0; i < ps.size(); i++)
        if (frozen[i])
            for (float g : get(*p.gpu, i, EngineBase::Slot::Grad)) frozen_grad = std::max(frozen_grad, (double)std::fabs(g));
    record("freeze: frozen gradients (max |g|)", frozen_grad, 0.0);
    record("freeze grad_norm", rel(p.gpu->step(kLr), p.cpu->step(kLr)), kTol);
    for (size_t i = 0; i < ps.size(); i++)
        if (frozen[i]) frozen_moved = std::max(frozen_moved, rel_err(get(*p.gpu, i, EngineBase::Slot::Weight), w[i]));
    record("freeze: frozen weights moved", frozen_moved, 0.0);
    compare_slot("freeze weights after step", *p.gpu, *p.cpu, EngineBase::Slot::Weight, kTol);
}

void case_accumulate(const Shape& s, const Weights& w) {
    TrainConfig tc = train_config(17);
    tc.label_smoothing_factor = 0.1f;
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> cw(0.5f, 2.0f);
    for (int i = 0; i < s.cfg.num_labels; i++) tc.class_weights.push_back(cw(rng));
    auto p = make_pair(s.cfg, tc, w);
    const HostBatch h1 = random_batch(s.cfg, s.B, s.T, 4, true, true), h2 = random_batch(s.cfg, s.B, s.T, 5, true);
    double worst = 0;
    for (const HostBatch* h : {&h1, &h2})
        worst = std::max(worst, rel(p.gpu->accumulate(h->view(), 0.5f), p.cpu->accumulate(h->view(), 0.5f)));
    record("accumulate losses (weighted, smoothed)", worst, kTol);
    compare_slot("accumulate gradients (2 x 0.5)", *p.gpu, *p.cpu, EngineBase::Slot::Grad, kTol);
    record("accumulate grad_norm", rel(p.gpu->step(kLr), p.cpu->step(kLr)), kTol);
    compare_slot("accumulate weights after step", *p.gpu, *p.cpu, EngineBase::Slot::Weight, kTol);
}

// An overflowing loss scale: the loss stays finite, the gradients do not; the
// step must leave weights, moments and the step count as they were (CPU rule).
void case_nonfinite(const Shape& s, const Weights& w) {
    auto p = make_pair(s.cfg, train_config(29), w);
    const HostBatch hb = random_batch(s.cfg, s.B, s.T, 6, true);
    p.gpu->accumulate(hb.view(), 1.0f);
    p.gpu->step(kLr);
    const size_t cls = p.gpu->params().size() - 2;  // classifier.weight
    const auto w0 = get(*p.gpu, cls, EngineBase::Slot::Weight), m0 = get(*p.gpu, cls, EngineBase::Slot::ExpAvg);
    const float loss = p.gpu->accumulate(hb.view(), INFINITY);
    const float norm = p.gpu->step(kLr);
    const bool kept = get(*p.gpu, cls, EngineBase::Slot::Weight) == w0 && get(*p.gpu, cls, EngineBase::Slot::ExpAvg) == m0;
    double g = 0;
    for (float x : get(*p.gpu, cls, EngineBase::Slot::Grad)) g = std::max(g, (double)std::fabs(x));
    const bool ok = std::isfinite(loss) && !std::isfinite(norm) && kept && p.gpu->optimizer_step() == 1 && g == 0;
    record("non-finite grad norm skips the update", ok ? 0 : 1, 0,
           "norm " + std::to_string(norm) + ", optimizer_step " + std::to_string(p.gpu->optimizer_step()));
}

void case_bf16(const Shape& s, const Weights& w, int steps) {
    BertConfig c = s.cfg;
    set_dropout(c, 0.1f);
    const TrainConfig tc = train_config(19);
    auto f32 = nt::cuda::make_cuda_engine(c, tc, 0, false);
    auto b16 = nt::cuda::make_cuda_engine(c, tc, 0, true);
    load(*f32, w);
    load(*b16, w);
    std::vector<HostBatch> batches;
    for (int k = 0; k < 4; k++) batches.push_back(random_batch(c, s.B, s.T, 100 + k, true));
    const size_t BL = (size_t)s.B * c.num_labels;
    std::vector<float> l32(BL), l16(BL);
    f32->forward(batches[0].view(), l32.data(), false);
    b16->forward(batches[0].view(), l16.data(), false);
    record("bf16 forward logits vs fp32", rel_err(l16, l32), 5e-2);
    double worst = 0, first = 0, last = 0;
    const float lr = 2e-4f;
    for (int k = 0; k < steps; k++) {
        const Batch b = batches[k % batches.size()].view();
        const float a = f32->accumulate(b, 1.0f), h = b16->accumulate(b, 1.0f);
        f32->step(lr);
        b16->step(lr);
        worst = std::max(worst, (double)std::fabs(h - a));
        if (k == 0) first = a;
        last = a;
    }
    char detail[96];
    std::snprintf(detail, sizeof detail, "|loss diff|, fp32 loss %.3f -> %.3f", first, last);
    record("bf16 loss vs fp32 over " + std::to_string(steps) + " steps", worst, 2e-2, detail);
}

void run_parity(const Shape& s, bool bf16_case, int bf16_steps) {
    current_shape = s.name + " B=" + std::to_string(s.B) + " T=" + std::to_string(s.T);
    std::printf("-- %s\n", current_shape.c_str());
    std::fflush(stdout);
    const Weights w = random_weights(nt::CpuEngine(s.cfg, TrainConfig{}), 2024);
    const std::pair<const char*, std::function<void()>> cases[] = {
        {"forward/train", [&] { case_forward_train(s, w); }},
        {"dropout", [&] { case_dropout(s, w); }},
        {"freeze", [&] { case_freeze(s, w); }},
        {"accumulate", [&] { case_accumulate(s, w); }},
        {"non-finite", [&] { case_nonfinite(s, w); }},
        {"bf16", [&] {
             if (bf16_case) case_bf16(s, w, bf16_steps);
         }},
    };
    for (const auto& c : cases) {
        try {
            c.second();
        } catch (const std::exception& e) {
            record(std::string(c.first) + " threw", INFINITY, 0, e.what());
            std::printf("   %s: error: %s\n", c.first, e.what());
        }
    }
}

// ---- benchmark ----------------------------------------------------------------------------
struct BenchRow {
    std::string model, precision;
    int B, T;
    double step_ms, samples_s, flops, tflops, mfu;
};

double train_flops(const EngineBase& e, int B, int T) {
    const BertConfig& c = e.config();
    double encoder = 0, head = 0;
    for (const auto& p : e.params()) {
        if (p.name.rfind("bert.encoder.", 0) == 0) encoder += (double)p.numel;
        else if (p.name.rfind("bert.embeddings.", 0) != 0) head += (double)p.numel;  // pooler, classifier
    }
    const double tokens = (double)B * T;
    return 6 * encoder * tokens + 6 * head * B + 12.0 * B * T * T * c.hidden_size * c.num_hidden_layers;
}

BenchRow bench_one(const Shape& s, int B, int T, bool bf16, int steps, double peak) {
    BertConfig c = s.cfg;
    set_dropout(c, 0.1f);
    auto e = nt::cuda::make_cuda_engine(c, train_config(23), 0, bf16);
    load(*e, random_weights(*e, 31));
    const HostBatch hb = random_batch(c, B, T, 7, false);
    for (int k = 0; k < 3; k++) {
        e->accumulate(hb.view(), 1.0f);
        e->step(5e-5f);
    }
    std::vector<double> ms;
    for (int k = 0; k < steps; k++) {
        const auto t0 = std::chrono::steady_clock::now();
        e->accumulate(hb.view(), 1.0f);  // each call returns with the stream idle
        e->step(5e-5f);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    const double flops = train_flops(*e, B, T), tflops = flops / (med * 1e-3) / 1e12;
    return {s.name, bf16 ? "bf16" : "fp32", B, T, med, B / (med * 1e-3), flops, tflops, tflops / peak};
}

int run_bench(int steps, double peak, const char* json_path) {
    std::vector<BenchRow> rows;
    for (const Shape& s : {minilm_shape(), bert_base_shape()})
        for (int B : {32, 128})
            for (bool bf16 : {true, false}) {
                try {
                    rows.push_back(bench_one(s, B, 128, bf16, steps, peak));
                    const BenchRow& r = rows.back();
                    std::printf("bench %-10s %-4s B=%-4d T=%d  %8.2f ms  %9.1f samples/s  %6.1f TFLOP/s  MFU %5.1f%%\n",
                                r.model.c_str(), r.precision.c_str(), r.B, r.T, r.step_ms, r.samples_s, r.tflops,
                                100 * r.mfu);
                    std::fflush(stdout);
                } catch (const std::exception& e) {
                    std::printf("bench %s B=%d %s: error: %s\n", s.name.c_str(), B, bf16 ? "bf16" : "fp32", e.what());
                }
            }
    std::string json = "{\"peak_tflops\":" + std::to_string(peak) + ",\"rows\":[";
    for (size_t i = 0; i < rows.size(); i++) {
        const BenchRow& r = rows[i];
        char buf[320];
        std::snprintf(buf, sizeof buf,
                      "%s{\"model\":\"%s\",\"precision\":\"%s\",\"batch\":%d,\"seq\":%d,\"step_ms_median\":%.4f,"
                      "\"samples_per_s\":%.2f,\"flops_per_step\":%.6e,\"tflops\":%.3f,\"mfu\":%.5f}",
                      i ? "," : "", r.model.c_str(), r.precision.c_str(), r.B, r.T, r.step_ms, r.samples_s, r.flops,
                      r.tflops, r.mfu);
        json += buf;
    }
    json += "]}";
    if (json_path) {
        if (FILE* f = std::fopen(json_path, "w")) {
            std::fprintf(f, "%s\n", json.c_str());
            std::fclose(f);
        }
    } else {
        std::printf("JSON %s\n", json.c_str());
    }
    return rows.size() == 8 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    const char* json_path = nullptr;
    bool quick = false, bench = false;
    int steps = 10;
    double peak = 989.0;  // H200 SXM dense bf16, TFLOP/s (NVIDIA datasheet)
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        if (a == "--json" && i + 1 < argc) json_path = argv[++i];
        else if (a == "--quick") quick = true;
        else if (a == "--bench") bench = true;
        else if (a == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
        else if (a == "--peak" && i + 1 < argc) peak = std::atof(argv[++i]);
        else {
            std::fprintf(stderr, "usage: %s [--quick] [--json FILE] | --bench [--steps N] [--peak TFLOPS] [--json FILE]\n",
                         argv[0]);
            return 2;
        }
    }
    if (nt::cuda::cuda_device_count() == 0) {
        std::printf("no CUDA device: %s\nengine_check skipped (built and linked fine).\n",
                    nt::cuda::cuda_unavailable_reason().c_str());
        return 0;
    }
    try {
        const auto info = nt::cuda::cuda_device_info(0);
        std::printf("device: %s (sm_%d%d)\n", info.name.c_str(), info.major, info.minor);
        if (bench) return run_bench(steps, peak, json_path);
        run_parity(tiny_shape(), true, 20);
        run_parity(small_shape(), !quick, 20);
        if (!quick) run_parity(minilm_shape(), true, 20);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "engine_check: error: %s\n", e.what());
        return 2;
    }

    int failed = 0;
    std::printf("\n%-22s %-42s %11s %9s  %s\n", "shape", "check", "error", "tol", "");
    for (const auto& r : results) {
        failed += !r.pass;
        std::printf("%-22s %-42s %11.3e %9.1e  %-4s %s\n", r.shape.c_str(), r.check.c_str(), r.err, r.tol,
                    r.pass ? "ok" : "FAIL", r.detail.c_str());
    }
    std::printf("\n%d of %zu engine checks failed\n", failed, results.size());
    if (json_path) {
        if (FILE* f = std::fopen(json_path, "w")) {
            std::fprintf(f, "{\"metric\":\"max|gpu-cpu|/max|cpu| per tensor (worst tensor)\",\"results\":[");
            for (size_t i = 0; i < results.size(); i++) {
                const auto& r = results[i];
                std::fprintf(f, "%s{\"shape\":\"%s\",\"check\":\"%s\",\"err\":%.6e,\"tol\":%.1e,\"pass\":%s}", i ? "," : "",
                             r.shape.c_str(), r.check.c_str(), std::isfinite(r.err) ? r.err : 1e300, r.tol,
                             r.pass ? "true" : "false");
            }
            std::fprintf(f, "],\"failed\":%d}\n", failed);
            std::fclose(f);
        }
    }
    return failed ? 1 : 0;
}
