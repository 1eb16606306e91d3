// LlamaForCausalLM training step on the CPU kernels. Sources followed: Hugging
// Face transformers models/llama/modeling_llama.py (LlamaRMSNorm,
// LlamaRotaryEmbedding, LlamaAttention eager path, LlamaMLP, LlamaForCausalLM's
// shifted loss), models/qwen2 (biases on q/k/v only), PEFT tuners/lora
// (LoRA Linear, Kaiming-uniform A and zero B), torch.optim.AdamW and
// clip_grad_norm_ (shared with the BERT engine's rules).
#include "models/llama.h"

#include "cpu/onednn.h"
#include "engine/training.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include <cblas.h>

namespace nt {

const char* const kLoraTargetNames[kNumTargets] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};

namespace {

constexpr size_t kAlign = 16;  // floats: 64-byte aligned tensor starts
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Tensor id of the LoRA A initialisation stream: apart from dropout's ids
// (which count from 0 per micro-step) by using a step no run reaches.
constexpr uint64_t kInitStep = ~uint64_t(0);

// Frees a vector's memory: `v = {}` assigns an empty initializer_list and
// keeps the capacity (and clear() does too).
template <typename V>
void release(V& v) {
    V().swap(v);
}

// Buffers up to this size are kept for a smaller batch rather than given
// back: a generate call's prefill then decode would otherwise map, zero and
// unmap a few MB each time (measured: 8% of a 60-token q8_0 prefill).
constexpr size_t kKeepBytes = size_t(64) << 20;

void add_inplace(float* out, const float* x, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] += x[i];
}

void add_bias_rows(float* out, const float* bias, int N, int OC) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int c = 0; c < OC; c++) out[(size_t)n * OC + c] += bias[c];
}

}  // namespace

double count_parameters(const LlamaConfig& c) {
    const double C = c.hidden_size, I = c.intermediate_size, HS = c.head_dim;
    const double NH = c.num_attention_heads, NKV = c.num_key_value_heads;
    const double attn = C * (NH + 2 * NKV) * HS + NH * HS * C + (c.attention_bias ? (NH + 2 * NKV) * HS : 0) +
                        (c.o_proj_bias ? C : 0);
    const double mlp = 3 * C * I + (c.mlp_bias ? 2 * I + C : 0);
    const double layer = attn + mlp + 2 * C;
    return (double)c.vocab_size * C * (c.tie_word_embeddings ? 1 : 2) + C + c.num_hidden_layers * layer;
}

LlamaPlan::LlamaPlan(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train, bool trainable,
                     bool q8_linears)
    : cfg_(config), lora_(lora), tc_(train), trainable_(trainable), q8_linears_(q8_linears) {
    auto positive = [](const char* name, int v) {
        if (v <= 0) throw EngineError(std::string("config.") + name + " must be a positive integer, got " + std::to_string(v));
    };
    positive("vocab_size", cfg_.vocab_size);
    positive("hidden_size", cfg_.hidden_size);
    positive("intermediate_size", cfg_.intermediate_size);
    positive("num_hidden_layers", cfg_.num_hidden_layers);
    positive("num_attention_heads", cfg_.num_attention_heads);
    positive("num_key_value_heads", cfg_.num_key_value_heads);
    positive("head_dim", cfg_.head_dim);
    positive("max_position_embeddings", cfg_.max_position_embeddings);
    if (cfg_.num_attention_heads % cfg_.num_key_value_heads != 0)
        throw EngineError("config.num_attention_heads (" + std::to_string(cfg_.num_attention_heads) +
                          ") must be a multiple of config.num_key_value_heads (" +
                          std::to_string(cfg_.num_key_value_heads) + ")");
    if (cfg_.head_dim % 2 != 0)
        throw EngineError("config.head_dim must be even (rotary embeddings rotate channel pairs), got " +
                          std::to_string(cfg_.head_dim));
    if (!(cfg_.rms_norm_eps >= 0.0f) || !std::isfinite(cfg_.rms_norm_eps))
        throw EngineError("config.rms_norm_eps must be a finite number >= 0, got " + std::to_string(cfg_.rms_norm_eps));
    if (!(cfg_.rope_theta > 0.0) || !std::isfinite(cfg_.rope_theta))
        throw EngineError("config.rope_theta must be a finite number > 0, got " + std::to_string(cfg_.rope_theta));
    const RopeScaling& rs = cfg_.rope_scaling;
    if (rs.llama3 && !(rs.factor > 0 && rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor &&
                       rs.original_max_position_embeddings > 0 && std::isfinite(rs.factor) &&
                       std::isfinite(rs.high_freq_factor) && std::isfinite(rs.original_max_position_embeddings)))
        throw EngineError("config.rope_scaling (llama3) needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
                          "original_max_position_embeddings > 0");
    // Bounded before anything is looped over or allocated: the parameter
    // table has about 20 entries a layer, each with a name.
    if (cfg_.num_hidden_layers > 1024)
        throw EngineError("config.num_hidden_layers = " + std::to_string(cfg_.num_hidden_layers) +
                          " is larger than any Llama-family model (at most 1024 supported)");
    const double n = count_parameters(cfg_);
    require_memory((size_t)std::min(n * 4.0, 1e18), "this config (" + std::to_string((long long)(n / 1e6)) +
                                                        " M parameters: hidden_size " + std::to_string(cfg_.hidden_size) +
                                                        ", num_hidden_layers " + std::to_string(cfg_.num_hidden_layers) +
                                                        ", vocab_size " + std::to_string(cfg_.vocab_size) + ")");
    validate_train_config(tc_);
    if (lora_.r < 0) throw EngineError("lora r must be a positive integer, got " + std::to_string(lora_.r));
    const bool any_target = std::any_of(lora_.target.begin(), lora_.target.end(), [](bool b) { return b; });
    if (lora_.r > 0 && !any_target)
        throw EngineError("lora target_modules is empty: expected some of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                          "up_proj, down_proj (or all-linear)");
    if (lora_.r == 0 && any_target) throw EngineError("lora r must be a positive integer when target_modules are set, got 0");
    if (lora_.r > 0) {
        if (!std::isfinite(lora_.lora_alpha) || lora_.lora_alpha <= 0)
            throw EngineError("lora_alpha must be a finite number > 0, got " + std::to_string(lora_.lora_alpha));
        if (!(lora_.lora_dropout >= 0.0f && lora_.lora_dropout < 1.0f))
            throw EngineError("lora_dropout must be in [0, 1), got " + std::to_string(lora_.lora_dropout));
        if (lora_.r > std::min(cfg_.hidden_size, cfg_.intermediate_size))
            throw EngineError("lora r = " + std::to_string(lora_.r) + " exceeds the smallest adapted dimension (" +
                              std::to_string(std::min(cfg_.hidden_size, cfg_.intermediate_size)) + ")");
        lora_scale_ = lora_.use_rslora ? lora_.lora_alpha / std::sqrt((float)lora_.r) : lora_.lora_alpha / lora_.r;
        for (int l : lora_.layers_to_transform)
            if (l < 0 || l >= cfg_.num_hidden_layers)
                throw EngineError("lora layers_to_transform names layer " + std::to_string(l) + ": expected 0 <= layer < num_hidden_layers (" +
                                  std::to_string(cfg_.num_hidden_layers) + ")");
    }
    if (!trainable_ && lora_.r > 0)
        throw EngineError("options.trainable = false builds an engine that trains nothing, but options.lora adds "
                          "adapters to train: give one or the other");
    QKV_ = (cfg_.num_attention_heads + 2 * cfg_.num_key_value_heads) * cfg_.head_dim;
    build_param_table();
    inv_freq_.resize(cfg_.head_dim / 2);
    rope_inv_freq(inv_freq_.data(), cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling);
}

LlamaEngine::LlamaEngine(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train,
                         bool gradient_checkpointing, BaseWeights base, bool trainable)
    : LlamaPlan(config, lora, train, trainable, base == BaseWeights::q8_0), checkpointing_(gradient_checkpointing),
      bf16_(base == BaseWeights::bf16), q8_(base == BaseWeights::q8_0) {
    if (q8_ && lora_.r == 0 && trainable_)
        throw EngineError("precision 'q8_0' holds a frozen base in Q8_0 for generation: build the engine with "
                          "options.trainable = false (or LoRA adapters to apply), or train in 'fp32' or 'bf16'");
    if (q8_)
        for (auto [name, v] : {std::pair<const char*, int>{"hidden_size", cfg_.hidden_size},
                               {"intermediate_size", cfg_.intermediate_size},
                               {"num_attention_heads * head_dim", cfg_.num_attention_heads * cfg_.head_dim}})
            if (v % 32 != 0)
                throw EngineError("precision 'q8_0' quantizes in blocks of 32 inputs: config " + std::string(name) +
                                  " must be a multiple of 32, got " + std::to_string(v));
    // The portable path is 10x slower than the fp32 GEMMs: not worth choosing.
    if (q8_ && std::string(q8_0_isa()) == "scalar")
        throw EngineError("precision 'q8_0' on the CPU needs AVX2 or AVX-512 VNNI, and this CPU has neither: use 'fp32'");
    if (bf16_ && lora_.r == 0 && trainable_)
        throw EngineError("precision 'bf16' on the CPU holds a frozen base in bf16 and needs LoRA (options.lora) or "
                          "an engine that trains nothing (options.trainable = false): full fine-tuning on the CPU "
                          "trains in fp32");
    if (bf16_) {
        const std::string why = bf16_gemm_support();
        if (!why.empty()) throw EngineError("precision 'bf16' on the CPU: " + why);
    }
    const size_t w_floats = align_up(w_size_), g_floats = align_up(g_size_);
    require_memory((w_floats + 3 * g_floats) * sizeof(float), "the weights, gradients and AdamW moments of this model");
    if (bf16_) require_memory(w_floats * sizeof(uint16_t), "the bf16 copy of the frozen base");
    if (q8_) {
        // The layers' linear groups; their members are quantized as written.
        const int C = cfg_.hidden_size, I = cfg_.intermediate_size, QO = cfg_.num_attention_heads * cfg_.head_dim;
        const int KVO = cfg_.num_key_value_heads * cfg_.head_dim;
        struct Group {
            size_t first;
            int IC;
            std::vector<int> rows;  // each member's output rows
        };
        // The token embedding (the tied head) and an untied lm_head too: as in
        // llama.cpp's Q8_0 files; rows are looked up by dequantizing them.
        std::vector<Group> groups{{embed_, C, {cfg_.vocab_size}}};
        if (lm_head_ != kNone) groups.push_back({lm_head_, C, {cfg_.vocab_size}});
        for (const Layer& L : layers_) {
            groups.push_back({L.qkv_w, C, {QO, KVO, KVO}});
            groups.push_back({L.o_w, QO, {C}});
            groups.push_back({L.gu_w, C, {I, I}});
            groups.push_back({L.down_w, I, {C}});
        }
        size_t bytes = 0;
        for (const Group& g : groups)
            for (int r : g.rows) bytes += (size_t)r * g.IC * 17 / 16;
        require_memory(bytes, "the Q8_0 weights of this model");
        wq_.resize(params_.size());
        q8_home_.assign(params_.size(), {kNone, 0});
        for (const Group& g : groups) {
            int row0 = 0;
            for (size_t k = 0; k < g.rows.size(); k++) {
                q8_home_[g.first + k] = {g.first, row0};
                row0 += g.rows[k];
            }
            wq_[g.first] = Q8Weights(row0, g.IC);
        }
    }
    w_.assign(w_floats, 0.0f);
    if (bf16_) wb_.assign(w_floats, 0);
    g_.assign(g_floats, 0.0f);
    m_.assign(g_floats, 0.0f);
    v_.assign(g_floats, 0.0f);
    init_lora();
}

// ---- the parameter table ----------------------------------------------------

size_t LlamaPlan::add_param(const std::string& name, std::vector<int64_t> shape, bool trainable,
                              bool packed_with_previous, bool linear_weight) {
    ParamInfo p;
    p.name = name;
    p.shape = std::move(shape);
    p.numel = 1;
    for (auto d : p.shape) p.numel *= (size_t)d;
    // Packed members (q|k|v, gate|up) follow each other without padding so one
    // GEMM covers the group, in the weight arena and in the gradient arena.
    if (linear_weight && q8_linears_) {
        p.offset = kNone;
    } else {
        p.offset = packed_with_previous ? params_.back().offset + params_.back().numel : align_up(w_size_);
        w_size_ = p.offset + p.numel;
    }
    size_t goff = kNone;
    if (trainable) {
        goff = packed_with_previous && goff_.back() != kNone ? goff_.back() + params_.back().numel : align_up(g_size_);
        g_size_ = goff + p.numel;
    }
    // Hugging Face Trainer.get_decay_parameter_names: no decay on biases and norms.
    p.decay = !(ends_with(name, ".bias") || name.find("norm") != std::string::npos);
    p.trainable = trainable;
    params_.push_back(p);
    goff_.push_back(goff);
    n_params_ += p.numel;
    return params_.size() - 1;
}

void LlamaPlan::build_param_table() {
    const int64_t C = cfg_.hidden_size, I = cfg_.intermediate_size, HS = cfg_.head_dim;
    const int64_t QO = (int64_t)cfg_.num_attention_heads * HS, KVO = (int64_t)cfg_.num_key_value_heads * HS;
    const bool full = lora_.r == 0 && trainable_;  // without adapters every parameter trains
    embed_ = add_param("model.embed_tokens.weight", {cfg_.vocab_size, C}, full, false, true);
    layers_.resize(cfg_.num_hidden_layers);
    for (int l = 0; l < cfg_.num_hidden_layers; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        Layer& L = layers_[l];
        L.in_norm = add_param(p + "input_layernorm.weight", {C}, full, false);
        L.qkv_w = add_param(p + "self_attn.q_proj.weight", {QO, C}, full, false, true);
        add_param(p + "self_attn.k_proj.weight", {KVO, C}, full, true, true);
        add_param(p + "self_attn.v_proj.weight", {KVO, C}, full, true, true);
        if (cfg_.attention_bias) {
            L.qkv_b = add_param(p + "self_attn.q_proj.bias", {QO}, full, false);
            add_param(p + "self_attn.k_proj.bias", {KVO}, full, true);
            add_param(p + "self_attn.v_proj.bias", {KVO}, full, true);
        }
        L.o_w = add_param(p + "self_attn.o_proj.weight", {C, QO}, full, false, true);
        if (cfg_.o_proj_bias) L.o_b = add_param(p + "self_attn.o_proj.bias", {C}, full, false);
        L.post_norm = add_param(p + "post_attention_layernorm.weight", {C}, full, false);
        L.gu_w = add_param(p + "mlp.gate_proj.weight", {I, C}, full, false, true);
        add_param(p + "mlp.up_proj.weight", {I, C}, full, true, true);
        if (cfg_.mlp_bias) {
            L.gu_b = add_param(p + "mlp.gate_proj.bias", {I}, full, false);
            add_param(p + "mlp.up_proj.bias", {I}, full, true);
        }
        L.down_w = add_param(p + "mlp.down_proj.weight", {C, I}, full, false, true);
        if (cfg_.mlp_bias) L.down_b = add_param(p + "mlp.down_proj.bias", {C}, full, false);
        L.lora_A.fill(kNone);
        L.lora_B.fill(kNone);
        const auto& only = lora_.layers_to_transform;
        if (full || (!only.empty() && std::find(only.begin(), only.end(), l) == only.end())) continue;
        // PEFT names: base_model.model.<module>.lora_A.weight (r, in), lora_B.weight (out, r)
        const int64_t in[kNumTargets] = {C, C, C, QO, C, C, I};
        const int64_t out[kNumTargets] = {QO, KVO, KVO, C, I, I, C};
        const char* module[kNumTargets] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
        for (int t = 0; t < kNumTargets; t++) {
            if (!lora_.target[t]) continue;
            const std::string base = "base_model.model." + p + module[t];
            L.lora_A[t] = add_param(base + ".lora_A.weight", {lora_.r, in[t]}, true, false);
            L.lora_B[t] = add_param(base + ".lora_B.weight", {out[t], lora_.r}, true, false);
        }
    }
    norm_ = add_param("model.norm.weight", {C}, full, false);
    if (!cfg_.tie_word_embeddings) lm_head_ = add_param("lm_head.weight", {cfg_.vocab_size, C}, full, false, true);
}

void LlamaPlan::lora_A_init(int l, int target, float* dst) const {
    const ParamInfo& p = params_[layers_[l].lora_A[target]];
    const float bound = 1.0f / std::sqrt((float)p.shape[1]);
    const DropoutKey k{tc_.seed, kInitStep, lora_tensor(l, target)};
    for (size_t i = 0; i < p.numel; i++) dst[i] = (2.0f * dropout_uniform(k, i) - 1.0f) * bound;
}

void LlamaEngine::init_lora() {
    for (int l = 0; l < cfg_.num_hidden_layers; l++)
        for (int t = 0; t < kNumTargets; t++)
            if (layers_[l].lora_A[t] != kNone) lora_A_init(l, t, W(layers_[l].lora_A[t]));
}

const ParamInfo& LlamaPlan::find_param(const std::string& name) const {
    for (const auto& p : params_)
        if (p.name == name) return p;
    throw EngineError("unknown parameter '" + name +
                      "': expected a Hugging Face LlamaForCausalLM key such as 'model.layers.0.self_attn.q_proj.weight'" +
                      (lora_.r > 0 ? " or a PEFT key such as 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'"
                                   : ""));
}

size_t LlamaPlan::mark_trainable(const std::string& name, bool trainable) {
    const size_t i = &find_param(name) - params_.data();
    if (trainable && goff_[i] == kNone)
        throw EngineError("parameter '" + name + "' was frozen when the engine was built (a LoRA base weight, or "
                          "options.trainable = false) and has no gradient or optimizer buffers; build the engine "
                          "without LoRA and trainable to train it");
    params_[i].trainable = trainable;
    return i;
}

int LlamaPlan::first_trained_layer() const {
    if (params_[embed_].trainable) return -1;
    for (int l = 0; l < cfg_.num_hidden_layers; l++) {
        const size_t lo = layers_[l].in_norm;
        const size_t hi = l + 1 < cfg_.num_hidden_layers ? layers_[l + 1].in_norm : norm_;
        for (size_t i = lo; i < hi; i++)
            if (params_[i].trainable) return l;
    }
    return cfg_.num_hidden_layers;
}

void LlamaEngine::set_trainable(const std::string& name, bool trainable) {
    const size_t i = mark_trainable(name, trainable);
    wb_stale_ = true;
    if (!trainable && goff_[i] != kNone) std::fill_n(g_.data() + goff_[i], params_[i].numel, 0.0f);
}

void LlamaEngine::read(const ParamInfo& p, Slot slot, float* dst) {
    const size_t i = &p - params_.data();
    if (slot == Slot::Weight && p.offset == kNone) {  // held as Q8_0: its d q
        const auto [first, row0] = q8_home_[i];
        dequantize_q8_0(dst, wq_[first], row0, (int)p.shape[0]);
        return;
    }
    if (slot == Slot::Weight) {
        std::copy(w_.data() + p.offset, w_.data() + p.offset + p.numel, dst);
        return;
    }
    if (goff_[i] == kNone) {  // frozen since construction: no gradient, no moments
        std::fill_n(dst, p.numel, 0.0f);
        return;
    }
    const float* src = (slot == Slot::Grad ? g_ : slot == Slot::ExpAvg ? m_ : v_).data() + goff_[i];
    std::copy(src, src + p.numel, dst);
}

void LlamaEngine::write(const ParamInfo& p, Slot slot, const float* src) {
    const size_t i = &p - params_.data();
    if (slot == Slot::Weight && p.offset == kNone) {  // held as Q8_0: checked, then quantized
        const size_t cols = p.shape.size() == 2 ? (size_t)p.shape[1] : p.numel;
        for (size_t k = 0; k < p.numel; k++)
            if (!(std::fabs(src[k]) <= Q8Weights::kMaxMagnitude))
                throw EngineError("'" + p.name + "'[" + std::to_string(k / cols) + ", " + std::to_string(k % cols) +
                                  "] is " + std::to_string(src[k]) +
                                  ": precision 'q8_0' quantizes this weight to Q8_0, whose fp16 block scale needs "
                                  "finite values within +-8.3e6 (65504 x 127); nothing was written");
        const auto [first, row0] = q8_home_[i];
        quantize_q8_0(wq_[first], src, row0, (int)p.shape[0]);
        return;
    }
    if (slot == Slot::Weight) {
        std::copy(src, src + p.numel, w_.data() + p.offset);
        wb_stale_ = wb_stale_ || !p.trainable;
        return;
    }
    if (goff_[i] == kNone)
        throw EngineError("parameter '" + p.name + "' is frozen (a LoRA base weight, or options.trainable = false) and has no gradient or optimizer state");
    float* dst = (slot == Slot::Grad ? g_ : slot == Slot::ExpAvg ? m_ : v_).data() + goff_[i];
    std::copy(src, src + p.numel, dst);
}

// ---- input validation -------------------------------------------------------

void LlamaPlan::validate(const Batch& b, bool need_labels) const {
    check_batch_size(b, cfg_.max_position_embeddings);
    auto where = [&](const char* name, size_t i) { return batch_where(name, i, b.T); };
    const size_t n = (size_t)b.B * b.T;
    for (size_t i = 0; i < n; i++) {
        check_token_id("input_ids", i, b.T, b.input_ids[i], cfg_.vocab_size);
        const int32_t m = b.attention_mask[i];
        if (m < 0)
            throw EngineError(where("attention_mask", i) + " = " + std::to_string(m) +
                              ": expected 0 (padding), 1, or a packed example's segment number >= 1");
    }
    check_token_labels(b, need_labels, cfg_.vocab_size);
}

// ---- activation arena -------------------------------------------------------

void LlamaEngine::ensure_activations(int B, int T, bool train) {
    cur_B_ = B;
    cur_T_ = T;
    const size_t N = (size_t)B * T;
    // Sized by B x T, and given back when a much smaller batch follows (unless small anyway).
    const bool have_grads = !dacts_.empty();
    const bool keep = N * 4 > acts_for_ || (acts_.size() + dacts_.size()) * sizeof(float) <= kKeepBytes;
    if (N <= acts_for_ && keep && (have_grads || !train)) return;
    const size_t C = cfg_.hidden_size, I = cfg_.intermediate_size, HS = cfg_.head_dim;
    const size_t NH = cfg_.num_attention_heads, OC = NH * HS, V = cfg_.vocab_size, L = cfg_.num_hidden_layers;
    const size_t r = lora_.r;
    size_t n_lora = 0;
    for (bool t : lora_.target) n_lora += t;
    // LoRA dropout masks: a bit per adapter input element, in floats.
    auto keep_floats = [&](int t) { return lora_.lora_dropout > 0 ? (N * lora_in_features(t) + 31) / 32 : 0; };
    size_t n_keep = 0;
    for (int t = 0; t < kNumTargets; t++)
        if (lora_.target[t]) n_keep += align_up(keep_floats(t));
    // silu(gate) * up is not kept per layer: the backward recomputes it from
    // gate|up (an elementwise pass) into one shared buffer, N x I per layer less.
    const size_t inner = 2 * align_up(N * C) + 2 * align_up(N) + align_up(N * QKV_) + align_up(N * OC) +
                         align_up(N * NH) + align_up(N * C) + align_up(N * 2 * I) + n_lora * align_up(N * r) + n_keep;
    // Without a backward to come (forward, prefill, decode) nothing reads a
    // layer's activations after the layer, so every layer shares one set, as
    // under gradient checkpointing: a 16 x 60-token prefill of SmolLM2-135M
    // needs 25 MB instead of 740.
    const bool shared = checkpointing_ || !train;
    const size_t per_layer = align_up(N * C) + (shared ? 0 : inner);
    const size_t total = L * per_layer + (shared ? inner : 0) + align_up(N * I) + 2 * align_up(N * C) + align_up(N) +
                         2 * align_up(N * HS / 2 + HS) + align_up((size_t)lm_chunk((int)N) * (V + C));
    const size_t dtotal = train ? 2 * align_up(N * C) + align_up(N * QKV_) + align_up(N * OC) + align_up(N * 2 * I) +
                                      align_up(N * I) + align_up(N * std::max<size_t>(r, 1)) +
                                      align_up(N * std::max({C, I, OC}))
                                : 0;
    const std::string what = "activations for batchSize=" + std::to_string(B) + ", seqLen=" + std::to_string(T);
    release(acts_);
    release(dacts_);
    release(iacts_);
    acts_for_ = 0;
    try {
        require_memory((total + dtotal) * sizeof(float), what + " (use a smaller batch size or max_length" +
                                                             (shared ? ")" : ", or gradient checkpointing)"));
        acts_.assign(total, 0.0f);
        dacts_.assign(dtotal, 0.0f);
        iacts_.assign(2 * N, 0);
    } catch (const std::bad_alloc&) {
        release(acts_);
        release(dacts_);
        throw EngineError("out of memory: " + what + " need " + std::to_string((total + dtotal) * 4 >> 20) + " MiB");
    }
    acts_for_ = N;
    float* p = acts_.data();
    auto take = [&p](size_t n) { float* q = p; p += align_up(n); return q; };
    auto inner_views = [&](Acts& a) {
        a.n1 = take(N * C);
        a.rstd1 = take(N);
        a.qkv = take(N * QKV_);
        a.att = take(N * OC);
        a.lse = take(N * NH);
        a.a = take(N * C);
        a.n2 = take(N * C);
        a.rstd2 = take(N);
        a.gu = take(N * 2 * I);
        for (int t = 0; t < kNumTargets; t++) a.t[t] = lora_.target[t] ? take(N * r) : nullptr;
        for (int t = 0; t < kNumTargets; t++)
            a.keep[t] = lora_.target[t] && keep_floats(t) ? reinterpret_cast<uint8_t*>(take(keep_floats(t))) : nullptr;
    };
    la_.assign(L, Acts{});
    for (auto& a : la_) {
        a.h = take(N * C);
        if (!shared) inner_views(a);
    }
    if (shared) {
        Acts shared{};
        inner_views(shared);
        for (auto& a : la_) {
            float* h = a.h;
            a = shared;
            a.h = h;
        }
    }
    float* act = take(N * I);
    for (auto& a : la_) a.act = act;
    a_.hL = take(N * C);
    a_.hf = take(N * C);
    a_.rstdf = take(N);
    a_.cos = take(N * HS / 2 + HS);
    a_.sin = take(N * HS / 2 + HS);
    a_.lm_scratch = take((size_t)lm_chunk((int)N) * (V + C));
    a_.pos = iacts_.data();
    a_.targets = iacts_.data() + N;
    if (!train) return;
    float* q = dacts_.data();
    auto dtake = [&q](size_t n) { float* r = q; q += align_up(n); return r; };
    d_.dh = dtake(N * C);
    d_.dn = dtake(N * C);
    d_.dqkv = dtake(N * QKV_);
    d_.datt = dtake(N * OC);
    d_.dgu = dtake(N * 2 * I);
    d_.dact = dtake(N * I);
    d_.dt = dtake(N * std::max<size_t>(r, 1));
    d_.xd = dtake(N * std::max({C, I, OC}));
}

void LlamaEngine::set_threads() const {
    if (tc_.threads > 0) {
        omp_set_num_threads(tc_.threads);
        openblas_set_num_threads(tc_.threads);
    }
}

// ---- forward ------------------------------------------------------------------

size_t LlamaPlan::lora_in_features(int target) const {
    if (target == kO) return (size_t)cfg_.num_attention_heads * cfg_.head_dim;
    if (target == kDown) return (size_t)cfg_.intermediate_size;
    return (size_t)cfg_.hidden_size;
}

const uint16_t* LlamaEngine::WB(size_t first, size_t count) {
    if (!bf16_) return nullptr;
    for (size_t i = first; i < first + count; i++)
        if (params_[i].trainable) return nullptr;
    return wb_.data() + params_[first].offset;
}

const Q8Weights* LlamaEngine::WQ(size_t first) const {
    return params_[first].offset == kNone ? &wq_[first] : nullptr;
}

void LlamaEngine::refresh_frozen() {
    if (!wb_stale_) return;
    if (bf16_)
        for (const ParamInfo& p : params_)
            if (!p.trainable) to_bf16(wb_.data() + p.offset, w_.data() + p.offset, p.numel);
    wb_stale_ = false;
}

void LlamaEngine::q8_linear(float* out, const float* in, const Q8Weights& w, int N) {
    const size_t n = (size_t)N * w.IC;
    if (q8x_.size() < n) {
        q8x_.resize(n);
        q8d_.resize(n / 32);
        q8s_.resize(n / 32);
    }
    linear_q8_0(out, in, w, N, q8x_.data(), q8d_.data(), q8s_.data());
}

void LlamaEngine::linear_fwd(float* out, const float* in, size_t w, size_t bias, int IC, int OC, int l, Blocks blocks,
                             bool train) {
    const int N = cur_B_ * cur_T_;
    if (const Q8Weights* wq = WQ(w)) {
        q8_linear(out, in, *wq, N);
        if (bias != kNone) add_bias_rows(out, W(bias), N, OC);
    } else if (const uint16_t* wb = WB(w, blocks.size())) {
        gemm_bf16w(true, N, OC, IC, in, IC, wb, 0.0f, out, OC);
        if (bias != kNone) add_bias_rows(out, W(bias), N, OC);
    } else if (gen_.decoding && N <= kFewRows) {
        gemm_thin(false, true, N, OC, IC, 1.0f, in, IC, W(w), IC, 0.0f, out, OC);
        if (bias != kNone) add_bias_rows(out, W(bias), N, OC);
    } else {
        linear_forward(out, in, W(w), bias != kNone ? W(bias) : nullptr, N, IC, OC);
    }
    for (const auto& [target, col] : blocks) {
        const size_t A = layers_[l].lora_A[target];
        if (A == kNone) continue;
        const size_t B = layers_[l].lora_B[target];
        lora_forward(out + col, OC, la_[l].t[target], d_.xd, la_[l].keep[target], in, W(A), W(B), N, IC,
                     (int)params_[B].shape[0], lora_.r, lora_scale_, train ? lora_.lora_dropout : 0.0f,
                     key(lora_tensor(l, target), (size_t)cur_T_ * IC));
    }
}

void LlamaEngine::layer_forward(int l, const int32_t* mask, bool train) {
    const int B = cur_B_, T = cur_T_, N = B * T, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const int NH = cfg_.num_attention_heads, NKV = cfg_.num_key_value_heads, HS = cfg_.head_dim, OC = NH * HS;
    const Layer& L = layers_[l];
    Acts& a = la_[l];
    float* out = l + 1 < cfg_.num_hidden_layers ? la_[l + 1].h : a_.hL;
    rmsnorm_forward(a.n1, a.rstd1, a.h, W(L.in_norm), N, C, cfg_.rms_norm_eps);
    linear_fwd(a.qkv, a.n1, L.qkv_w, L.qkv_b, C, QKV_, l, {{kQ, 0}, {kK, OC}, {kV, OC + NKV * HS}}, train);
    // A decode step rotates at each row's own next position (a table over
    // the whole cache) and attends to the cache instead of to its batch.
    const float* cos_t = gen_.decoding ? gen_.cos.data() : a_.cos;
    const float* sin_t = gen_.decoding ? gen_.sin.data() : a_.sin;
    rope_forward(a.qkv, cos_t, sin_t, a_.pos, N, QKV_, NH, HS);
    rope_forward(a.qkv + OC, cos_t, sin_t, a_.pos, N, QKV_, NKV, HS);
    if (gen_.capturing || gen_.decoding) capture_kv(l);
    if (gen_.decoding) {
        const size_t layer = (size_t)B * NKV * gen_.cap * HS;
        decode_attention(a.att, a.qkv, QKV_, &gen_.k[l * layer], &gen_.v[l * layer], gen_.mask.data(), B, NH, NKV, HS,
                         gen_.len + 1, gen_.cap);
    } else {
        causal_attention_forward(a.att, a.lse, a.qkv, mask, B, T, NH, NKV, HS);
    }
    linear_fwd(a.a, a.att, L.o_w, L.o_b, OC, C, l, {{kO, 0}}, train);
    add_inplace(a.a, a.h, (size_t)N * C);
    rmsnorm_forward(a.n2, a.rstd2, a.a, W(L.post_norm), N, C, cfg_.rms_norm_eps);
    linear_fwd(a.gu, a.n2, L.gu_w, L.gu_b, C, 2 * I, l, {{kGate, 0}, {kUp, I}}, train);
    swiglu_forward(a.act, a.gu, N, I);
    linear_fwd(out, a.act, L.down_w, L.down_b, I, C, l, {{kDown, 0}}, train);
    add_inplace(out, a.a, (size_t)N * C);
}

void LlamaPlan::position_ids(const Batch& b, int32_t* pos) {
    for (int i = 0; i < b.B; i++) {
        const int32_t* m = b.attention_mask + (size_t)i * b.T;
        int seen = 0, in_segment = 0;
        for (int t = 0; t < b.T; t++) {
            seen += m[t] != 0;
            in_segment = m[t] != 0 && t > 0 && m[t - 1] == m[t] ? in_segment + 1 : 0;
            pos[(size_t)i * b.T + t] = m[t] == 0 ? std::max(seen - 1, 0) : in_segment;
        }
    }
}

// Never across a packed segment's end: the next example is not a continuation.
int LlamaPlan::shifted_targets(const Batch& b, int32_t* targets) {
    int count = 0;
    for (int i = 0; i < b.B; i++)
        for (int t = 0; t < b.T; t++) {
            const size_t n = (size_t)i * b.T + t;
            const bool same = t + 1 < b.T && b.attention_mask[n + 1] == b.attention_mask[n];
            targets[n] = same ? b.labels[n + 1] : -100;
            count += targets[n] != -100;
        }
    return count;
}

void LlamaEngine::forward_impl(const Batch& b, bool train) {
    refresh_frozen();
    ensure_activations(b.B, b.T, train);
    row_offset_ = b.row_offset;
    const int B = b.B, T = b.T, N = B * T, C = cfg_.hidden_size;
    position_ids(b, a_.pos);
    n_targets_ = b.labels ? shifted_targets(b, a_.targets) : 0;
    rope_tables(a_.cos, a_.sin, inv_freq_.data(), T, cfg_.head_dim);
    embed(la_[0].h, b.input_ids, N);
    for (int l = 0; l < cfg_.num_hidden_layers; l++) layer_forward(l, b.attention_mask, train);
    rmsnorm_forward(a_.hf, a_.rstdf, a_.hL, W(norm_), N, C, cfg_.rms_norm_eps);
}

float LlamaEngine::forward(const Batch& b, float* logits, bool train) {
    set_threads();
    validate(b, false);
    forward_impl(b, train);
    const int N = b.B * b.T, C = cfg_.hidden_size, V = cfg_.vocab_size;
    const size_t hi = lm_head_index();
    if (logits) lm_head_rows(logits, a_.hf, N);
    if (!b.labels) return 0.0f;
    const int n = n_targets_;
    if (n == 0) return 0.0f;
    const Q8Weights* wq = WQ(hi);
    const double sum = lmhead_crossentropy<float>(nullptr, nullptr, a_.hf, wq ? nullptr : W(hi), a_.targets, N, C, V,
                                                  1.0f, a_.lm_scratch, lm_chunk(N), WB(hi, 1), nullptr, nullptr, wq);
    return (float)(sum / n);
}

// ---- generation -----------------------------------------------------------------

void LlamaEngine::lm_head_rows(float* logits, const float* h, int rows) {
    const size_t hi = lm_head_index();
    if (const Q8Weights* wq = WQ(hi))
        q8_linear(logits, h, *wq, rows);
    else if (const uint16_t* wb = WB(hi, 1))
        gemm_bf16w(true, rows, cfg_.vocab_size, cfg_.hidden_size, h, cfg_.hidden_size, wb, 0.0f, logits, cfg_.vocab_size);
    else if (rows <= kFewRows)
        gemm_thin(false, true, rows, cfg_.vocab_size, cfg_.hidden_size, 1.0f, h, cfg_.hidden_size, W(hi), cfg_.hidden_size,
                  0.0f, logits, cfg_.vocab_size);
    else
        linear_forward(logits, h, W(hi), (const float*)nullptr, rows, cfg_.hidden_size, cfg_.vocab_size);
}

void LlamaEngine::embed(float* out, const int32_t* ids, int rows) {
    const int C = cfg_.hidden_size;
    if (const Q8Weights* wq = WQ(embed_)) {
        for (int n = 0; n < rows; n++) dequantize_q8_0(out + (size_t)n * C, *wq, ids[n], 1);
    } else {
        token_embedding_forward(out, ids, W(embed_), rows, C);
    }
}

// Copies layer l's rotated keys and values into the cache: a prefill's
// columns 0..T-1, or a decode step's one column.
void LlamaEngine::capture_kv(int l) {
    const int B = cur_B_, T = cur_T_, NH = cfg_.num_attention_heads, NKV = cfg_.num_key_value_heads, HS = cfg_.head_dim;
    const int col0 = gen_.decoding ? gen_.len : 0;
    const size_t layer = (size_t)B * NKV * gen_.cap * HS;
    const float* qkv = la_[l].qkv;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        const int b = bt / T, t = bt % T;
        for (int h = 0; h < NKV; h++) {
            const size_t dst = l * layer + (((size_t)b * NKV + h) * gen_.cap + col0 + t) * HS;
            std::memcpy(&gen_.k[dst], qkv + (size_t)bt * QKV_ + (size_t)(NH + h) * HS, HS * sizeof(float));
            std::memcpy(&gen_.v[dst], qkv + (size_t)bt * QKV_ + (size_t)(NH + NKV + h) * HS, HS * sizeof(float));
        }
    }
}

int LlamaPlan::check_prefill(const Batch& b, int max_new_tokens) const {
    validate(b, false);
    if (max_new_tokens < 1) throw EngineError("max_new_tokens must be >= 1, got " + std::to_string(max_new_tokens));
    for (int i = 0; i < b.B; i++)
        if (b.attention_mask[(size_t)i * b.T + b.T - 1] != 1)
            throw EngineError("prompt " + std::to_string(i) + " does not end in column T-1: generation needs left padding");
    const long long cap = (long long)b.T + max_new_tokens;
    if (cap > cfg_.max_position_embeddings)
        throw EngineError("prompt length " + std::to_string(b.T) + " + max_new_tokens " + std::to_string(max_new_tokens) +
                          " exceeds max_position_embeddings=" + std::to_string(cfg_.max_position_embeddings));
    return (int)cap;
}

void LlamaPlan::check_decode_tokens(const int32_t* tokens, int B) const {
    for (int i = 0; i < B; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
            throw EngineError("tokens[" + std::to_string(i) + "] = " + std::to_string(tokens[i]) +
                              " is out of range: expected 0 <= id < vocab_size (" + std::to_string(cfg_.vocab_size) + ")");
}

void LlamaEngine::prefill(const Batch& b, int max_new_tokens, float* logits) {
    set_threads();
    const size_t cap = check_prefill(b, max_new_tokens);
    const int L = cfg_.num_hidden_layers, NKV = cfg_.num_key_value_heads, HS = cfg_.head_dim, C = cfg_.hidden_size;
    const size_t cache = (size_t)L * b.B * NKV * cap * HS;
    require_memory(2 * cache * sizeof(float), "the KV cache for " + std::to_string(b.B) + " sequences of " +
                                                  std::to_string(cap) + " tokens");
    gen_.B = 0;  // invalid until the prefill completes
    gen_.cap = (int)cap;
    // Sized by this prefill, and given back when a much smaller one follows
    // (as the activations): a server would otherwise hold the cache of its
    // largest request for good. A larger one frees the old cache first, so
    // the two never exist together.
    if (cache > gen_.k.capacity() || (cache * 4 <= gen_.k.capacity() && gen_.k.capacity() * sizeof(float) > kKeepBytes)) {
        release(gen_.k);
        release(gen_.v);
    }
    gen_.k.assign(cache, 0.0f);
    gen_.v.assign(cache, 0.0f);
    gen_.mask.assign((size_t)b.B * cap, 0);
    gen_.pos.assign(b.B, 0);
    gen_.cos.resize(cap * HS / 2);
    gen_.sin.resize(cap * HS / 2);
    rope_tables(gen_.cos.data(), gen_.sin.data(), inv_freq_.data(), (int)cap, HS);
    gen_.capturing = true;
    try {
        forward_impl(b, false);
    } catch (...) {
        gen_.capturing = false;
        throw;
    }
    gen_.capturing = false;
    gen_.x.resize((size_t)b.B * C);
    for (int i = 0; i < b.B; i++) {
        std::memcpy(&gen_.x[(size_t)i * C], a_.hf + ((size_t)i * b.T + b.T - 1) * C, C * sizeof(float));
        int real = 0;
        for (int t = 0; t < b.T; t++) {
            gen_.mask[(size_t)i * cap + t] = b.attention_mask[(size_t)i * b.T + t];
            real += b.attention_mask[(size_t)i * b.T + t];
        }
        gen_.pos[i] = real;
    }
    lm_head_rows(logits, gen_.x.data(), b.B);
    gen_.len = b.T;
    gen_.B = b.B;
}

void LlamaEngine::decode(const int32_t* tokens, float* logits) {
    if (gen_.B == 0) throw EngineError("decode() needs a prefill() first");
    if (gen_.len >= gen_.cap)
        throw EngineError("decode(): the KV cache is full (" + std::to_string(gen_.cap) + " columns: prompt + max_new_tokens)");
    const int B = gen_.B, C = cfg_.hidden_size, cap = gen_.cap, col = gen_.len;
    check_decode_tokens(tokens, B);
    set_threads();
    refresh_frozen();
    ensure_activations(B, 1, false);
    for (int i = 0; i < B; i++) {
        a_.pos[i] = gen_.pos[i];
        gen_.mask[(size_t)i * cap + col] = 1;
    }
    embed(la_[0].h, tokens, B);
    gen_.decoding = true;
    for (int l = 0; l < cfg_.num_hidden_layers; l++) layer_forward(l, nullptr, false);
    gen_.decoding = false;
    rmsnorm_forward(a_.hf, a_.rstdf, a_.hL, W(norm_), B, C, cfg_.rms_norm_eps);
    lm_head_rows(logits, a_.hf, B);
    gen_.len++;
    for (int i = 0; i < B; i++) gen_.pos[i]++;
}

// ---- backward -----------------------------------------------------------------

float* LlamaEngine::G_group(size_t first, size_t count) {
    if (first == kNone || goff_[first] == kNone) return nullptr;
    for (size_t i = first; i < first + count; i++)
        if (params_[i].trainable) return g_.data() + goff_[first];
    return nullptr;
}

void LlamaEngine::clear_frozen(size_t first, size_t count) {
    if (first == kNone || goff_[first] == kNone) return;
    for (size_t i = first; i < first + count; i++)
        if (!params_[i].trainable) std::fill_n(g_.data() + goff_[i], params_[i].numel, 0.0f);
}

void LlamaEngine::linear_bwd(float* din, const float* dout, const float* in, size_t w, size_t bias, int group, int IC,
                             int OC, int l, Blocks blocks) {
    const int N = cur_B_ * cur_T_;
    const uint16_t* wb = WB(w, group);
    if (wb && !G_group(bias, group)) {  // a frozen group: only the input's gradient
        if (din) gemm_bf16w(false, N, IC, OC, dout, OC, wb, 0.0f, din, IC);
    } else {
        linear_backward(din, G_group(w, group), G_group(bias, group), dout, in, W(w), N, IC, OC, false);
        clear_frozen(w, group);
        clear_frozen(bias, group);
    }
    for (const auto& [target, col] : blocks) {
        const size_t A = layers_[l].lora_A[target];
        if (A == kNone) continue;
        const size_t B = layers_[l].lora_B[target];
        lora_backward(din, G(A), G(B), d_.dt, d_.xd, la_[l].keep[target], dout + col, OC, in, la_[l].t[target], W(A),
                      W(B), N, IC, (int)params_[B].shape[0], lora_.r, lora_scale_, lora_.lora_dropout);
    }
}

void LlamaEngine::layer_backward(int l, const int32_t* mask, bool need_dinp) {
    const int B = cur_B_, T = cur_T_, N = B * T, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const int NH = cfg_.num_attention_heads, NKV = cfg_.num_key_value_heads, HS = cfg_.head_dim, OC = NH * HS;
    if (checkpointing_) layer_forward(l, mask, true);  // same keys: the same dropout masks
    const Layer& L = layers_[l];
    Acts& a = la_[l];
    // d_.dh holds the gradient of the layer's output; it becomes that of `a`, then of h.
    if (!checkpointing_) swiglu_forward(a.act, a.gu, N, I);  // the down projection's input, recomputed
    linear_bwd(d_.dact, d_.dh, a.act, L.down_w, L.down_b, 1, I, C, l, {{kDown, 0}});
    swiglu_backward(d_.dgu, d_.dact, a.gu, N, I);
    linear_bwd(d_.dn, d_.dgu, a.n2, L.gu_w, L.gu_b, 2, C, 2 * I, l, {{kGate, 0}, {kUp, I}});
    rmsnorm_backward(d_.dh, G(L.post_norm), d_.dn, a.a, W(L.post_norm), a.rstd2, N, C, true);
    linear_bwd(d_.datt, d_.dh, a.att, L.o_w, L.o_b, 1, OC, C, l, {{kO, 0}});
    causal_attention_backward(d_.dqkv, d_.datt, a.att, a.qkv, a.lse, mask, B, T, NH, NKV, HS);
    rope_backward(d_.dqkv, a_.cos, a_.sin, a_.pos, N, QKV_, NH, HS);
    rope_backward(d_.dqkv + OC, a_.cos, a_.sin, a_.pos, N, QKV_, NKV, HS);
    float* in_norm_grad = G(L.in_norm);
    // The lowest trained layer needs no input gradient (nor, without a norm
    // weight to train, the normalised input's).
    const bool need_dn = need_dinp || in_norm_grad;
    linear_bwd(need_dn ? d_.dn : nullptr, d_.dqkv, a.n1, L.qkv_w, L.qkv_b, 3, C, QKV_, l,
               {{kQ, 0}, {kK, OC}, {kV, OC + NKV * HS}});
    if (need_dn)
        rmsnorm_backward(need_dinp ? d_.dh : nullptr, in_norm_grad, d_.dn, a.h, W(L.in_norm), a.rstd1, N, C, true);
}

void LlamaEngine::backward_impl(const Batch& b) {
    // Backpropagate only as deep as the lowest trainable parameter.
    const int first = first_trained_layer();
    rmsnorm_backward(d_.dh, G(norm_), d_.dn, a_.hL, W(norm_), a_.rstdf, b.B * b.T, cfg_.hidden_size, false);
    for (int l = cfg_.num_hidden_layers - 1; l >= std::max(first, 0); l--) layer_backward(l, b.attention_mask, l > first);
    if (first < 0)
        embedding_backward(G(embed_), (float*)nullptr, (float*)nullptr, d_.dh, b.input_ids, (const int32_t*)nullptr, 1,
                           b.B * b.T, cfg_.hidden_size);
}

float LlamaEngine::accumulate(const Batch& b, float loss_scale) {
    if (!trainable_)
        throw EngineError("this engine was built with options.trainable = false: it has no trainable parameter "
                          "(forward, prefill and decode only)");
    check_not_q8();
    set_threads();
    validate(b, true);
    forward_impl(b, true);
    const int N = b.B * b.T, C = cfg_.hidden_size, V = cfg_.vocab_size;
    const int n = n_targets_;
    if (n == 0) {  // nothing to learn from: no gradient (HF's mean would be NaN)
        micro_step_++;
        return 0.0f;
    }
    const size_t hi = lm_head_index();
    const double sum = lmhead_crossentropy<float>(d_.dn, G(hi), a_.hf, W(hi), a_.targets, N, C, V, loss_scale / (float)n,
                                                  a_.lm_scratch, lm_chunk(N), G(hi) ? nullptr : WB(hi, 1));
    backward_impl(b);
    micro_step_++;
    return (float)(sum / n);
}

// ---- optimizer ------------------------------------------------------------------

void LlamaEngine::check_not_q8() const {
    if (q8_)
        throw EngineError("precision 'q8_0' reads the base in Q8_0 for generation only (forward, prefill and decode): "
                          "train with precision 'fp32' or 'bf16'");
}

float LlamaEngine::step(float lr) {
    check_not_q8();
    set_threads();
    double ss = 0.0;
    for (size_t i = 0; i < params_.size(); i++)
        if (params_[i].trainable && goff_[i] != kNone) ss += sum_squares(g_.data() + goff_[i], params_[i].numel);
    const float norm = (float)std::sqrt(ss);
    if (!std::isfinite(norm)) {  // the same rule as the BERT engine: skip, report
        zero_grad();
        return norm;
    }
    const float scale = clip_scale(norm, tc_.max_grad_norm);
    t_++;
    for (size_t i = 0; i < params_.size(); i++) {
        const ParamInfo& p = params_[i];
        if (!p.trainable || goff_[i] == kNone) continue;
        adamw_update(w_.data() + p.offset, g_.data() + goff_[i], m_.data() + goff_[i], v_.data() + goff_[i], p.numel, lr,
                     tc_.adam_beta1, tc_.adam_beta2, tc_.adam_epsilon, p.decay ? tc_.weight_decay : 0.0f, t_, scale);
    }
    zero_grad();
    return norm;
}

void LlamaEngine::zero_grad() { std::fill(g_.begin(), g_.end(), 0.0f); }

}  // namespace nt
