// BertForSequenceClassification and BertForMaskedLM training steps on the CPU kernels.
// Source followed: Hugging Face transformers, models/bert/modeling_bert.py
// (BertEmbeddings, BertSelfAttention eager path, BertSelfOutput, BertIntermediate,
// BertOutput, BertPooler, BertLMPredictionHead) and torch.optim.AdamW / clip_grad_norm_.
#include "engine/engine.h"

#include "engine/training.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include <cblas.h>

namespace nt {

namespace {

constexpr size_t kAlign = 16;  // floats: 64-byte aligned tensor starts

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}


// "22.7 M parameters: vocab_size 30522, hidden_size 384, num_hidden_layers 6, intermediate_size 1536"
std::string describe_size(const BertConfig& c, double params) {
    std::ostringstream s;
    s.precision(3);
    s << params / 1e6 << " M parameters: vocab_size " << c.vocab_size << ", hidden_size " << c.hidden_size
      << ", num_hidden_layers " << c.num_hidden_layers << ", intermediate_size " << c.intermediate_size;
    return s.str();
}

void add_into(float* out, const float* a, const float* b, size_t n) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

}  // namespace

size_t available_memory_bytes() {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    size_t kib = 0;
    while (meminfo >> key >> kib) {
        if (key == "MemAvailable:") return kib * 1024;
        meminfo.ignore(256, '\n');
    }
#if defined(_SC_AVPHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (size_t)pages * (size_t)page;
#endif
    return 0;
}

void require_memory(size_t bytes, const std::string& what) {
    const size_t avail = available_memory_bytes();
    if (avail == 0 || bytes <= avail) return;
    throw EngineError(what + " needs " + std::to_string(bytes >> 20) + " MiB, but only " +
                      std::to_string(avail >> 20) + " MiB of memory is available");
}

double count_parameters(const BertConfig& c) {
    const double C = c.hidden_size, I = c.intermediate_size, L = c.num_labels;
    const double embeddings = ((double)c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * C + 2 * C;
    const double layer = 4 * C * C + 4 * C + 2 * C * I + I + C + 4 * C;  // attention, FFN, two LayerNorms
    const double head = c.masked_lm ? C * C + 3 * C + (double)c.vocab_size : C * C + C + L * C + L;
    return embeddings + c.num_hidden_layers * layer + head;
}

EngineBase::EngineBase(const BertConfig& config, const TrainConfig& train) : cfg_(config), tc_(train) {
    auto positive = [](const char* name, int v) {
        if (v <= 0) throw EngineError(std::string("config.") + name + " must be a positive integer, got " + std::to_string(v));
    };
    positive("vocab_size", cfg_.vocab_size);
    positive("hidden_size", cfg_.hidden_size);
    positive("num_hidden_layers", cfg_.num_hidden_layers);
    positive("num_attention_heads", cfg_.num_attention_heads);
    positive("intermediate_size", cfg_.intermediate_size);
    positive("max_position_embeddings", cfg_.max_position_embeddings);
    positive("type_vocab_size", cfg_.type_vocab_size);
    positive("num_labels", cfg_.num_labels);
    auto at_most = [](const char* name, int v, int max) {
        if (v > max)
            throw EngineError(std::string("config.") + name + " = " + std::to_string(v) + " is too large: at most " +
                              std::to_string(max) + " is supported");
    };
    using Max = BertConfigLimits;
    at_most("vocab_size", cfg_.vocab_size, Max::vocab_size);
    at_most("hidden_size", cfg_.hidden_size, Max::hidden_size);
    at_most("num_hidden_layers", cfg_.num_hidden_layers, Max::num_hidden_layers);
    at_most("num_attention_heads", cfg_.num_attention_heads, Max::num_attention_heads);
    at_most("intermediate_size", cfg_.intermediate_size, Max::intermediate_size);
    at_most("max_position_embeddings", cfg_.max_position_embeddings, Max::max_position_embeddings);
    at_most("type_vocab_size", cfg_.type_vocab_size, Max::type_vocab_size);
    at_most("num_labels", cfg_.num_labels, Max::num_labels);
    if (!(cfg_.layer_norm_eps >= 0.0f) || !std::isfinite(cfg_.layer_norm_eps))
        throw EngineError("config.layer_norm_eps must be a finite number >= 0, got " + std::to_string(cfg_.layer_norm_eps));
    if (cfg_.hidden_size % cfg_.num_attention_heads != 0)
        throw EngineError("config.hidden_size (" + std::to_string(cfg_.hidden_size) +
                          ") must be a multiple of config.num_attention_heads (" +
                          std::to_string(cfg_.num_attention_heads) + ")");
    auto prob = [](const char* name, float p) {
        if (!(p >= 0.0f && p < 1.0f)) throw EngineError(std::string(name) + " must be in [0, 1), got " + std::to_string(p));
    };
    prob("config.hidden_dropout_prob", cfg_.hidden_dropout_prob);
    prob("config.attention_probs_dropout_prob", cfg_.attention_probs_dropout_prob);
    prob("config.classifier_dropout", cfg_.classifier_dropout);
    validate_train_config(tc_);
    if (cfg_.masked_lm && (!tc_.class_weights.empty() || tc_.label_smoothing_factor != 0.0f))
        throw EngineError("class_weights and label_smoothing_factor are for BertForSequenceClassification: "
                          "BertForMaskedLM's loss is the plain cross-entropy over the masked positions");
    if (!tc_.class_weights.empty() && (int)tc_.class_weights.size() != cfg_.num_labels)
        throw EngineError("class_weights has " + std::to_string(tc_.class_weights.size()) +
                          " entries, expected num_labels = " + std::to_string(cfg_.num_labels));
    // Before the parameter table (16 entries a layer) is built: every engine
    // keeps at least one float32 copy of the weights on the host.
    const double n = count_parameters(cfg_);
    require_memory((size_t)std::min(n * 4.0, 1e18), "this config (" + describe_size(cfg_, n) + ")");
    build_param_table();
}

CpuEngine::CpuEngine(const BertConfig& config, const TrainConfig& train) : EngineBase(config, train) {
    // Weights, gradients and the two AdamW moments, zero-filled up front.
    require_memory(4 * arena_size_ * sizeof(float), "the CPU engine's weights, gradients and AdamW moments for this config (" +
                                                        describe_size(cfg_, (double)n_params_) + ")");
    w_.assign(arena_size_, 0.0f);
    g_.assign(arena_size_, 0.0f);
    m_.assign(arena_size_, 0.0f);
    v_.assign(arena_size_, 0.0f);
}

// ---- the parameter table ----------------------------------------------------

void EngineBase::add_param(const std::string& name, std::vector<int64_t> shape) {
    ParamInfo p;
    p.name = name;
    p.shape = std::move(shape);
    p.numel = 1;
    for (auto d : p.shape) p.numel *= (size_t)d;
    p.offset = arena_size_;
    // Hugging Face Trainer: no weight decay on biases and LayerNorm parameters.
    p.decay = !(ends_with(name, ".bias") || name.find("LayerNorm") != std::string::npos);
    params_.push_back(p);
    n_params_ += p.numel;
    arena_size_ += align_up(p.numel);
}

void EngineBase::build_param_table() {
    const int64_t C = cfg_.hidden_size, I = cfg_.intermediate_size;
    emb_w_ = params_.size(); add_param("bert.embeddings.word_embeddings.weight", {cfg_.vocab_size, C});
    emb_p_ = params_.size(); add_param("bert.embeddings.position_embeddings.weight", {cfg_.max_position_embeddings, C});
    emb_t_ = params_.size(); add_param("bert.embeddings.token_type_embeddings.weight", {cfg_.type_vocab_size, C});
    emb_ln_w_ = params_.size(); add_param("bert.embeddings.LayerNorm.weight", {C});
    emb_ln_b_ = params_.size(); add_param("bert.embeddings.LayerNorm.bias", {C});
    for (int l = 0; l < cfg_.num_hidden_layers; l++) {
        const std::string p = "bert.encoder.layer." + std::to_string(l) + ".";
        LayerIdx li{};
        // query/key/value weights and then their biases are adjacent (and C*C,
        // C are multiples of... not necessarily of kAlign), so they are laid
        // out without padding between them: one (3C, C) weight, one (3C) bias.
        li.qkv_w = params_.size();
        for (const char* n : {"query", "key", "value"}) {
            add_param(p + "attention.self." + n + ".weight", {C, C});
            arena_size_ -= align_up((size_t)(C * C)) - (size_t)(C * C);  // pack tightly
        }
        arena_size_ = align_up(arena_size_);
        li.qkv_b = params_.size();
        for (const char* n : {"query", "key", "value"}) {
            add_param(p + "attention.self." + n + ".bias", {C});
            arena_size_ -= align_up((size_t)C) - (size_t)C;
        }
        arena_size_ = align_up(arena_size_);
        li.ao_w = params_.size(); add_param(p + "attention.output.dense.weight", {C, C});
        li.ao_b = params_.size(); add_param(p + "attention.output.dense.bias", {C});
        li.ln1_w = params_.size(); add_param(p + "attention.output.LayerNorm.weight", {C});
        li.ln1_b = params_.size(); add_param(p + "attention.output.LayerNorm.bias", {C});
        li.ff1_w = params_.size(); add_param(p + "intermediate.dense.weight", {I, C});
        li.ff1_b = params_.size(); add_param(p + "intermediate.dense.bias", {I});
        li.ff2_w = params_.size(); add_param(p + "output.dense.weight", {C, I});
        li.ff2_b = params_.size(); add_param(p + "output.dense.bias", {C});
        li.ln2_w = params_.size(); add_param(p + "output.LayerNorm.weight", {C});
        li.ln2_b = params_.size(); add_param(p + "output.LayerNorm.bias", {C});
        lidx_.push_back(li);
    }
    if (cfg_.masked_lm) {
        // BertLMPredictionHead; its decoder weight is the word embeddings (tied), its decoder bias cls.predictions.bias.
        mlm_dense_w_ = params_.size(); add_param("cls.predictions.transform.dense.weight", {C, C});
        mlm_dense_b_ = params_.size(); add_param("cls.predictions.transform.dense.bias", {C});
        mlm_ln_w_ = params_.size(); add_param("cls.predictions.transform.LayerNorm.weight", {C});
        mlm_ln_b_ = params_.size(); add_param("cls.predictions.transform.LayerNorm.bias", {C});
        mlm_bias_ = params_.size(); add_param("cls.predictions.bias", {cfg_.vocab_size});
        return;
    }
    pool_w_ = params_.size(); add_param("bert.pooler.dense.weight", {C, C});
    pool_b_ = params_.size(); add_param("bert.pooler.dense.bias", {C});
    cls_w_ = params_.size(); add_param("classifier.weight", {cfg_.num_labels, C});
    cls_b_ = params_.size(); add_param("classifier.bias", {cfg_.num_labels});
}

const ParamInfo& EngineBase::param(const std::string& name) const {
    for (const auto& p : params_)
        if (p.name == name) return p;
    throw EngineError("unknown parameter '" + name + "': expected a Hugging Face " +
                      (cfg_.masked_lm ? "BertForMaskedLM key such as 'bert.encoder.layer.0.attention.self.query.weight' or 'cls.predictions.bias'"
                                      : "BertForSequenceClassification key such as 'bert.encoder.layer.0.attention.self.query.weight' or 'classifier.weight'"));
}

void EngineBase::set_trainable(const std::string& name, bool trainable) {
    for (auto& p : params_)
        if (p.name == name) {
            p.trainable = trainable;
            if (!trainable) on_frozen(p);
            return;
        }
    param(name);  // throws the unknown-parameter error
}

bool EngineBase::any_trainable(size_t first, size_t count) const {
    for (size_t i = first; i < first + count; i++)
        if (params_[i].trainable) return true;
    return false;
}

// ---- input validation -------------------------------------------------------

void EngineBase::validate(const Batch& b, bool need_labels) const {
    check_batch_size(b, cfg_.max_position_embeddings);
    auto where = [&](const char* name, size_t i) { return batch_where(name, i, b.T); };
    const size_t n = (size_t)b.B * b.T;
    for (size_t i = 0; i < n; i++) {
        check_token_id("input_ids", i, b.T, b.input_ids[i], cfg_.vocab_size);
        const int32_t tt = b.token_type_ids[i];
        if (tt < 0 || tt >= cfg_.type_vocab_size)
            throw EngineError(where("token_type_ids", i) + " = " + std::to_string(tt) +
                              " is out of range: expected 0 <= id < type_vocab_size (" + std::to_string(cfg_.type_vocab_size) + ")");
        const int32_t m = b.attention_mask[i];
        if (m != 0 && m != 1)
            throw EngineError(where("attention_mask", i) + " = " + std::to_string(m) + ": expected 0 or 1");
    }
    if (cfg_.masked_lm) return check_token_labels(b, need_labels, cfg_.vocab_size);
    if (need_labels && !b.labels) throw EngineError("labels are required for training: expected an Int32Array of length B");
    if (b.labels)
        for (int i = 0; i < b.B; i++) {
            const int32_t y = b.labels[i];
            if (y != -100 && (y < 0 || y >= cfg_.num_labels))
                throw EngineError("labels[" + std::to_string(i) + "] = " + std::to_string(y) +
                                  " is out of range: expected 0 <= label < num_labels (" + std::to_string(cfg_.num_labels) +
                                  ") or -100 (ignored)");
        }
}

// ---- activation arena -------------------------------------------------------

void CpuEngine::ensure_activations(int B, int T) {
    // Floats for this (B, T), in double so that no shape overflows before the
    // memory check has refused it; the same sums as lay_out_activations takes.
    const double N = (double)B * T, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const double TT = (double)B * cfg_.num_attention_heads * T * T, Bc = B, L = cfg_.num_labels;
    auto al = [](double n) { return std::ceil(n / kAlign) * kAlign; };
    const double per_layer = al(N * 3 * C) + al(TT) + 5 * al(N * C) + 4 * al(N) + 2 * al(N * I) + 2 * al(N * C);
    // The masked-LM head: three (N, C) activations, two (N) statistics, the
    // fused head's scratch (mlm_rows x (V + C)) and one (N, C) gradient.
    const double rows = std::min((double)kMlmChunk, N), V = cfg_.vocab_size;
    const double mlm = cfg_.masked_lm ? 3 * al(N * C) + 2 * al(N) + al(rows * (V + C)) : 0;
    const double total = 2 * al(N * C) + 2 * al(N) + per_layer * cfg_.num_hidden_layers + 3 * al(Bc * C) + al(Bc * L) + mlm;
    const double dtotal = 3 * al(N * C) + 2 * al(N * I) + al(N * 3 * C) + al(TT) + 3 * al(Bc * C) + al(Bc * L) +
                          (cfg_.masked_lm ? al(N * C) : 0);
    const double held = (double)acts_.size() + (double)dacts_.size();
    // Grow to exactly what this batch needs (not max B × max T of all batches
    // so far), and give memory back when a batch needs under a quarter of what
    // is held, so one long batch does not pin its arena for every short one.
    if (total > (double)acts_.size() || dtotal > (double)dacts_.size() || 4 * (total + dtotal) < held) {
        // Free first: the old arena is not needed, and MemAvailable then counts it.
        std::vector<float>().swap(acts_);
        std::vector<float>().swap(dacts_);
        const double bytes = (total + dtotal) * sizeof(float);
        const std::string what = "activations for batchSize=" + std::to_string(B) + ", seqLen=" + std::to_string(T);
        try {
            require_memory((size_t)std::min(bytes, 1e18), what + " (use a smaller batch size or max_length)");
            acts_.assign((size_t)total, 0.0f);
            dacts_.assign((size_t)dtotal, 0.0f);
        } catch (const std::bad_alloc&) {
            std::vector<float>().swap(acts_);
            std::vector<float>().swap(dacts_);
            throw EngineError("out of memory: " + what + " need " + std::to_string((size_t)(bytes / (1 << 20))) +
                              " MiB; use a smaller batch size or max_length");
        }
    }
    cur_B_ = B;
    cur_T_ = T;
    lay_out_activations();
}

void CpuEngine::lay_out_activations() {
    const size_t N = (size_t)cur_B_ * cur_T_, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const size_t TT = (size_t)cur_B_ * cfg_.num_attention_heads * cur_T_ * cur_T_;
    const size_t Bc = cur_B_, L = cfg_.num_labels;
    float* p = acts_.data();
    auto take = [&p](size_t n) { float* r = p; p += align_up(n); return r; };
    a_.emb = take(N * C);
    a_.emb_ln = take(N * C);
    a_.emb_mean = take(N);
    a_.emb_rstd = take(N);
    la_.assign(cfg_.num_hidden_layers, LayerActs{});
    for (auto& la : la_) {
        la.qkv = take(N * 3 * C);
        la.att = take(TT);
        la.attv = take(N * C);
        la.attproj = take(N * C);
        la.res1 = take(N * C);
        la.ln1 = take(N * C);
        la.ln1_mean = take(N);
        la.ln1_rstd = take(N);
        la.ffn_h = take(N * I);
        la.ffn_g = take(N * I);
        la.ffn_o = take(N * C);
        la.res2 = take(N * C);
        la.ln2 = take(N * C);
        la.ln2_mean = take(N);
        la.ln2_rstd = take(N);
    }
    a_.pooled_in = take(Bc * C);
    a_.pooled = take(Bc * C);
    a_.pooled_drop = take(Bc * C);
    a_.logits = take(Bc * L);
    a_.mlm_h = a_.mlm_g = a_.mlm_ln = a_.mlm_mean = a_.mlm_rstd = a_.mlm_scratch = d_.dmlm = nullptr;
    if (cfg_.masked_lm) {
        a_.mlm_h = take(N * C);
        a_.mlm_g = take(N * C);
        a_.mlm_ln = take(N * C);
        a_.mlm_mean = take(N);
        a_.mlm_rstd = take(N);
        a_.mlm_scratch = take((size_t)mlm_rows() * (cfg_.vocab_size + C));
    }
    float* q = dacts_.data();
    auto dtake = [&q](size_t n) { float* r = q; q += align_up(n); return r; };
    d_.dh = dtake(N * C);
    d_.dres = dtake(N * C);
    d_.dC = dtake(N * C);
    d_.dI1 = dtake(N * I);
    d_.dI2 = dtake(N * I);
    d_.dqkv = dtake(N * 3 * C);
    d_.datt = dtake(TT);
    d_.dC2 = dtake(Bc * C);
    d_.dpool1 = dtake(Bc * C);
    d_.dpool2 = dtake(Bc * C);
    d_.dlogits = dtake(Bc * L);
    if (cfg_.masked_lm) d_.dmlm = dtake(N * C);
}

void CpuEngine::set_threads() const {
    if (tc_.threads > 0) {
        omp_set_num_threads(tc_.threads);
        openblas_set_num_threads(tc_.threads);
    }
}

// ---- forward ------------------------------------------------------------------

void CpuEngine::layer_forward(int l, const float* x, const int32_t* mask, bool train) {
    const int B = cur_B_, T = cur_T_, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const int N = B * T;
    const size_t NC = (size_t)N * C;
    const LayerIdx& li = lidx_[l];
    LayerActs& a = la_[l];
    const float p_att = train ? cfg_.attention_probs_dropout_prob : 0.0f;
    const float p_hid = train ? cfg_.hidden_dropout_prob : 0.0f;
    // BertSelfAttention: one GEMM for [q | k | v]
    linear_forward(a.qkv, x, W(li.qkv_w), W(li.qkv_b), N, C, 3 * C);
    attention_forward(a.attv, a.att, a.qkv, mask, B, T, C, cfg_.num_attention_heads, p_att, key(tid_att_probs(l), (size_t)cfg_.num_attention_heads * T * T));
    // BertSelfOutput: LayerNorm(dropout(dense(attv)) + x)
    linear_forward(a.attproj, a.attv, W(li.ao_w), W(li.ao_b), N, C, C);
    if (p_hid > 0) dropout_forward(a.attproj, a.attproj, NC, p_hid, key(tid_att_out(l), (size_t)T * C));
    add_into(a.res1, a.attproj, x, NC);
    layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, a.res1, W(li.ln1_w), W(li.ln1_b), N, C, cfg_.layer_norm_eps);
    // BertIntermediate + BertOutput: LayerNorm(dropout(dense(gelu(dense(h)))) + h)
    linear_forward(a.ffn_h, a.ln1, W(li.ff1_w), W(li.ff1_b), N, C, I);
    gelu_forward(a.ffn_g, a.ffn_h, (size_t)N * I);
    linear_forward(a.ffn_o, a.ffn_g, W(li.ff2_w), W(li.ff2_b), N, I, C);
    if (p_hid > 0) dropout_forward(a.ffn_o, a.ffn_o, NC, p_hid, key(tid_ffn_out(l), (size_t)T * C));
    add_into(a.res2, a.ffn_o, a.ln1, NC);
    layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, W(li.ln2_w), W(li.ln2_b), N, C, cfg_.layer_norm_eps);
}

void CpuEngine::forward_impl(const Batch& b, bool train) {
    ensure_activations(b.B, b.T);
    row_offset_ = b.row_offset;
    const int B = b.B, T = b.T, C = cfg_.hidden_size, L = cfg_.num_labels;
    const int N = B * T;
    const size_t NC = (size_t)N * C;
    embedding_forward(a_.emb, b.input_ids, b.token_type_ids, W(emb_w_), W(emb_p_), W(emb_t_), B, T, C);
    layernorm_forward(a_.emb_ln, a_.emb_mean, a_.emb_rstd, a_.emb, W(emb_ln_w_), W(emb_ln_b_), N, C,
                      cfg_.layer_norm_eps);
    if (train && cfg_.hidden_dropout_prob > 0)
        dropout_forward(a_.emb_ln, a_.emb_ln, NC, cfg_.hidden_dropout_prob, key(0, (size_t)T * C));
    const float* x = a_.emb_ln;
    for (int l = 0; l < cfg_.num_hidden_layers; l++) {
        layer_forward(l, x, b.attention_mask, train);
        x = la_[l].ln2;
    }
    if (cfg_.masked_lm) return mlm_head_forward(x);
    // BertPooler: tanh(dense(h[:, 0])); then classifier dropout and linear.
    for (int i = 0; i < B; i++) std::memcpy(a_.pooled_in + (size_t)i * C, x + (size_t)i * T * C, C * sizeof(float));
    linear_forward(a_.pooled, a_.pooled_in, W(pool_w_), W(pool_b_), B, C, C);
    tanh_forward(a_.pooled, a_.pooled, (size_t)B * C);
    const float p_cls = train ? cfg_.classifier_dropout : 0.0f;
    if (p_cls > 0)
        dropout_forward(a_.pooled_drop, a_.pooled, (size_t)B * C, p_cls, key(tid_classifier(), C));
    else
        std::memcpy(a_.pooled_drop, a_.pooled, (size_t)B * C * sizeof(float));
    linear_forward(a_.logits, a_.pooled_drop, W(cls_w_), W(cls_b_), B, C, L);
}

// BertPredictionHeadTransform: LayerNorm(gelu(dense(x))); the decoder comes in mlm_loss / forward.
void CpuEngine::mlm_head_forward(const float* x) {
    const int N = cur_B_ * cur_T_, C = cfg_.hidden_size;
    linear_forward(a_.mlm_h, x, W(mlm_dense_w_), W(mlm_dense_b_), N, C, C);
    gelu_forward(a_.mlm_g, a_.mlm_h, (size_t)N * C);
    layernorm_forward(a_.mlm_ln, a_.mlm_mean, a_.mlm_rstd, a_.mlm_g, W(mlm_ln_w_), W(mlm_ln_b_), N, C,
                      cfg_.layer_norm_eps);
}

double CpuEngine::mlm_loss(const Batch& b, bool backward, float grad_scale) {
    const int N = b.B * b.T, C = cfg_.hidden_size, V = cfg_.vocab_size;
    if (!backward)
        return lmhead_crossentropy<float>(nullptr, nullptr, a_.mlm_ln, W(emb_w_), b.labels, N, C, V, 1.0f,
                                          a_.mlm_scratch, mlm_rows(), nullptr, W(mlm_bias_));
    const double sum = lmhead_crossentropy<float>(d_.dmlm, G(emb_w_), a_.mlm_ln, W(emb_w_), b.labels, N, C, V, grad_scale,
                                                  a_.mlm_scratch, mlm_rows(), nullptr, W(mlm_bias_), G(mlm_bias_));
    const int NL = cfg_.num_hidden_layers;
    const float* x = la_[NL - 1].ln2;
    layernorm_backward(d_.dres, G(mlm_ln_w_), G(mlm_ln_b_), d_.dmlm, a_.mlm_g, W(mlm_ln_w_), a_.mlm_mean, a_.mlm_rstd,
                       N, C);
    gelu_backward(d_.dmlm, a_.mlm_h, d_.dres, (size_t)N * C);
    linear_backward(first_trainable() < NL ? d_.dh : nullptr, G(mlm_dense_w_), G(mlm_dense_b_), d_.dmlm, x,
                    W(mlm_dense_w_), N, C, C, false);
    return sum;
}

float CpuEngine::forward(const Batch& b, float* logits, bool train) {
    set_threads();
    validate(b, false);
    forward_impl(b, train);
    if (cfg_.masked_lm) {
        const int N = b.B * b.T, C = cfg_.hidden_size, V = cfg_.vocab_size;
        if (logits) {  // the caller asked for the whole (N, V): decoder = tied embeddings + bias
            linear_forward(logits, a_.mlm_ln, W(emb_w_), W(mlm_bias_), N, C, V);
        }
        if (!b.labels) return 0.0f;
        int n = 0;
        for (int i = 0; i < N; i++) n += b.labels[i] != -100;
        return n == 0 ? 0.0f : (float)(mlm_loss(b, false, 1.0f) / n);
    }
    const int L = cfg_.num_labels;
    if (logits) std::memcpy(logits, a_.logits, (size_t)b.B * L * sizeof(float));
    if (!b.labels) return 0.0f;
    const float* cw = tc_.class_weights.empty() ? nullptr : tc_.class_weights.data();
    return crossentropy_softmax_forward(a_.logits, b.labels, cw, b.B, L, tc_.label_smoothing_factor);
}

// ---- backward -----------------------------------------------------------------

int EngineBase::first_trainable() const {
    for (size_t i = 0; i <= emb_ln_b_; i++)
        if (params_[i].trainable) return -1;
    for (int l = 0; l < cfg_.num_hidden_layers; l++)
        for (size_t i = lidx_[l].qkv_w; i <= lidx_[l].ln2_b; i++)
            if (params_[i].trainable) return l;
    return cfg_.num_hidden_layers;
}

void CpuEngine::layer_backward(int l, const float* x, float* dx, const int32_t* mask, bool need_dinp) {
    const int B = cur_B_, T = cur_T_, C = cfg_.hidden_size, I = cfg_.intermediate_size;
    const int N = B * T;
    const size_t NC = (size_t)N * C;
    const LayerIdx& li = lidx_[l];
    LayerActs& a = la_[l];
    const float p_hid = cfg_.hidden_dropout_prob;
    // output LayerNorm: dres2 = dLN2(dx); the residual sends dres2 to ln1 too
    layernorm_backward(d_.dres, G(li.ln2_w), G(li.ln2_b), dx, a.res2, W(li.ln2_w), a.ln2_mean, a.ln2_rstd, N, C);
    if (p_hid > 0) dropout_backward(d_.dC, d_.dres, NC, p_hid, key(tid_ffn_out(l), (size_t)T * C));
    else std::memcpy(d_.dC, d_.dres, NC * sizeof(float));
    linear_backward(d_.dI1, G(li.ff2_w), G(li.ff2_b), d_.dC, a.ffn_g, W(li.ff2_w), N, I, C, false);
    gelu_backward(d_.dI2, a.ffn_h, d_.dI1, (size_t)N * I);
    // dx <- dres2 + dI2 @ W1 : gradient at ln1 (the residual plus the FFN path)
    std::memcpy(dx, d_.dres, NC * sizeof(float));
    linear_backward(dx, G(li.ff1_w), G(li.ff1_b), d_.dI2, a.ln1, W(li.ff1_w), N, C, I, true);
    // attention LayerNorm
    layernorm_backward(d_.dres, G(li.ln1_w), G(li.ln1_b), dx, a.res1, W(li.ln1_w), a.ln1_mean, a.ln1_rstd, N, C);
    if (p_hid > 0) dropout_backward(d_.dC, d_.dres, NC, p_hid, key(tid_att_out(l), (size_t)T * C));
    else std::memcpy(d_.dC, d_.dres, NC * sizeof(float));
    linear_backward(dx, G(li.ao_w), G(li.ao_b), d_.dC, a.attv, W(li.ao_w), N, C, C, false);
    attention_backward(d_.dqkv, d_.datt, dx, a.qkv, a.att, mask, B, T, C, cfg_.num_attention_heads,
                       cfg_.attention_probs_dropout_prob, key(tid_att_probs(l), (size_t)cfg_.num_attention_heads * T * T));
    // dx <- dres1 + dqkv @ Wqkv (residual to the layer input), when below needs it
    if (need_dinp) std::memcpy(dx, d_.dres, NC * sizeof(float));
    linear_backward(need_dinp ? dx : nullptr, G_fused(li.qkv_w), G_fused(li.qkv_b), d_.dqkv, x, W(li.qkv_w), N, C,
                    3 * C, true);
    clear_frozen(li.qkv_w, 3);
    clear_frozen(li.qkv_b, 3);
}

void CpuEngine::clear_frozen(size_t first, size_t count) {
    for (size_t i = first; i < first + count; i++)
        if (!params_[i].trainable) std::fill_n(g_.data() + params_[i].offset, params_[i].numel, 0.0f);
}

void CpuEngine::backward_impl(const Batch& b) {
    const int B = b.B, T = b.T, C = cfg_.hidden_size, L = cfg_.num_labels;
    const int N = B * T;
    const size_t NC = (size_t)N * C;
    const int NL = cfg_.num_hidden_layers;
    const int first = first_trainable();
    if (cfg_.masked_lm) {  // mlm_loss has put dLoss/d(encoder output) in d_.dh
        if (first < NL) encoder_backward(b, first);
        return;
    }
    // classifier, classifier dropout, pooler
    linear_backward(d_.dpool1, G(cls_w_), G(cls_b_), d_.dlogits, a_.pooled_drop, W(cls_w_), B, C, L, false);
    if (cfg_.classifier_dropout > 0)
        dropout_backward(d_.dpool2, d_.dpool1, (size_t)B * C, cfg_.classifier_dropout, key(tid_classifier(), C));
    else
        std::memcpy(d_.dpool2, d_.dpool1, (size_t)B * C * sizeof(float));
    tanh_backward(d_.dpool1, a_.pooled, d_.dpool2, (size_t)B * C);
    // Backpropagate only as deep as the lowest trainable parameter (freezing).
    const bool need_encoder = first < NL;
    linear_backward(need_encoder ? d_.dC2 : nullptr, G(pool_w_), G(pool_b_), d_.dpool1, a_.pooled_in, W(pool_w_),
                    B, C, C, false);
    if (!need_encoder) return;
    // only token 0 of each sequence feeds the pooler
    std::memset(d_.dh, 0, NC * sizeof(float));
    for (int i = 0; i < B; i++) std::memcpy(d_.dh + (size_t)i * T * C, d_.dC2 + (size_t)i * C, C * sizeof(float));
    encoder_backward(b, first);
}

void CpuEngine::encoder_backward(const Batch& b, int first) {
    const int B = b.B, T = b.T, C = cfg_.hidden_size, N = B * T;
    const size_t NC = (size_t)N * C;
    const int NL = cfg_.num_hidden_layers;
    for (int l = NL - 1; l >= std::max(first, 0); l--) {
        const float* x = l == 0 ? a_.emb_ln : la_[l - 1].ln2;
        layer_backward(l, x, d_.dh, b.attention_mask, l > first);
    }
    if (first >= 0) return;
    // embeddings: dropout, LayerNorm, the three lookups
    if (cfg_.hidden_dropout_prob > 0) dropout_backward(d_.dh, d_.dh, NC, cfg_.hidden_dropout_prob, key(0, (size_t)T * C));
    layernorm_backward(d_.dres, G(emb_ln_w_), G(emb_ln_b_), d_.dh, a_.emb, W(emb_ln_w_), a_.emb_mean, a_.emb_rstd, N, C);
    // HF: nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id): the lookup adds nothing to the
    // padding row. What the row holds already stays: a masked LM's tied decoder does train it.
    float* dwte = G(emb_w_);
    const bool pad_row = dwte && cfg_.pad_token_id >= 0 && cfg_.pad_token_id < cfg_.vocab_size;
    std::vector<float> kept;
    if (pad_row) kept.assign(dwte + (size_t)cfg_.pad_token_id * C, dwte + (size_t)(cfg_.pad_token_id + 1) * C);
    embedding_backward(dwte, G(emb_p_), G(emb_t_), d_.dres, b.input_ids, b.token_type_ids, B, T, C);
    if (pad_row) std::copy(kept.begin(), kept.end(), dwte + (size_t)cfg_.pad_token_id * C);
}

float CpuEngine::accumulate(const Batch& b, float loss_scale) {
    set_threads();
    validate(b, true);
    forward_impl(b, true);
    if (cfg_.masked_lm) {
        // Mean over the micro-batch's masked positions; a batch with none adds no gradient (0 loss).
        int n = 0;
        for (size_t i = 0; i < (size_t)b.B * b.T; i++) n += b.labels[i] != -100;
        float loss = 0.0f;
        if (n > 0) {
            loss = (float)(mlm_loss(b, true, loss_scale / (float)n) / n);
            backward_impl(b);
        }
        micro_step_++;
        return loss;
    }
    const float* cw = tc_.class_weights.empty() ? nullptr : tc_.class_weights.data();
    const float loss = crossentropy_softmax_forward_backward(d_.dlogits, a_.logits, b.labels, cw, b.B, cfg_.num_labels,
                                                             tc_.label_smoothing_factor, loss_scale);
    backward_impl(b);
    micro_step_++;
    return loss;
}

// ---- optimizer ------------------------------------------------------------------

float CpuEngine::step(float lr) {
    set_threads();
    double ss = 0.0;
    for (const auto& p : params_)
        if (p.trainable) ss += sum_squares(g_.data() + p.offset, p.numel);
    const float norm = (float)std::sqrt(ss);
    // A NaN/inf gradient would poison every weight and moment: skip the
    // update (and the step count) and let the caller decide; see the Trainer.
    if (!std::isfinite(norm)) {
        zero_grad();
        return norm;
    }
    const float scale = clip_scale(norm, tc_.max_grad_norm);
    t_++;
    for (const auto& p : params_) {
        if (!p.trainable) continue;
        adamw_update(w_.data() + p.offset, g_.data() + p.offset, m_.data() + p.offset, v_.data() + p.offset, p.numel, lr,
                     tc_.adam_beta1, tc_.adam_beta2, tc_.adam_epsilon, p.decay ? tc_.weight_decay : 0.0f, t_, scale);
    }
    zero_grad();
    return norm;
}

void CpuEngine::zero_grad() { std::fill(g_.begin(), g_.end(), 0.0f); }

// ---- parameter access ---------------------------------------------------------

float* CpuEngine::arena(Slot slot) {
    switch (slot) {
        case Slot::Weight: return w_.data();
        case Slot::Grad: return g_.data();
        case Slot::ExpAvg: return m_.data();
        case Slot::ExpAvgSq: return v_.data();
    }
    throw EngineError("unknown parameter slot");
}

void CpuEngine::read(const ParamInfo& p, Slot slot, float* dst) {
    const float* src = arena(slot) + p.offset;
    std::copy(src, src + p.numel, dst);
}

void CpuEngine::write(const ParamInfo& p, Slot slot, const float* src) {
    std::copy(src, src + p.numel, arena(slot) + p.offset);
}

void CpuEngine::on_frozen(const ParamInfo& p) { std::fill_n(g_.data() + p.offset, p.numel, 0.0f); }

}  // namespace nt
