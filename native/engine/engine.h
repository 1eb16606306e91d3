// The BERT engine: the model plan (parameter table, arenas), forward, backward
// and the optimizer step, on the CPU kernels. One encoder, two heads, as
// Hugging Face modeling_bert.py defines them (post-LayerNorm encoder):
//  - BertForSequenceClassification: pooler = tanh(dense(h[:, 0])), classifier linear;
//  - BertForMaskedLM (config.masked_lm): cls.predictions = LayerNorm(gelu(dense(h))),
//    then the decoder tied to the word embeddings plus its own bias, fused with
//    the cross-entropy over the labelled (masked) positions and chunked, so the
//    (tokens x vocab_size) logits are never held whole in training.
//
// Memory: one arena each for parameters, gradients, AdamW first and second
// moments (all laid out by the same parameter table), and one activation
// arena sized for the batch's B × T: grown when a batch needs more, given back
// when one needs under a quarter of it; a step allocates nothing while the
// batch shape stays in that range.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "engine/model.h"

namespace nt {

// Hugging Face BertConfig field names.
struct BertConfig {
    int vocab_size = 0;
    int hidden_size = 0;
    int num_hidden_layers = 0;
    int num_attention_heads = 0;
    int intermediate_size = 0;
    int max_position_embeddings = 0;
    int type_vocab_size = 0;
    int num_labels = 0;
    int pad_token_id = 0;  // nn.Embedding(padding_idx): its row never gets a gradient
    float layer_norm_eps = 1e-12f;
    float hidden_dropout_prob = 0.1f;
    float attention_probs_dropout_prob = 0.1f;
    float classifier_dropout = 0.1f;  // resolved: HF's null means hidden_dropout_prob
    bool masked_lm = false;  // BertForMaskedLM's head (labels per token) instead of the pooler and classifier
};

// The largest config sizes an engine accepts, checked before anything is sized
// from a config: far above any released BERT (bert-large: hidden 1024, 24
// layers, vocab 30522, 512 positions), and small enough that a config cannot
// make the engine loop or allocate for long before the memory check refuses
// it, and that index products stay in range.
struct BertConfigLimits {
    static constexpr int vocab_size = 1 << 24;
    static constexpr int hidden_size = 1 << 16;
    static constexpr int num_hidden_layers = 1024;
    static constexpr int num_attention_heads = 1 << 16;
    static constexpr int intermediate_size = 1 << 18;
    static constexpr int max_position_embeddings = 1 << 20;
    static constexpr int type_vocab_size = 1 << 16;
    static constexpr int num_labels = 1 << 20;
};

// Optimizer and loss settings (Hugging Face TrainingArguments names).
struct TrainConfig {
    float adam_beta1 = 0.9f;
    float adam_beta2 = 0.999f;
    float adam_epsilon = 1e-8f;
    float weight_decay = 0.0f;
    float max_grad_norm = 1.0f;  // <= 0 disables clipping
    float label_smoothing_factor = 0.0f;
    std::vector<float> class_weights;  // empty, or num_labels entries
    uint64_t seed = 42;
    int threads = 0;  // 0 = OpenMP default
};

// A batch of B sequences of T tokens (B*T ids, row-major). labels may be null
// for inference. The engine copies nothing: the caller keeps it alive.
struct Batch {
    const int32_t* input_ids = nullptr;
    const int32_t* attention_mask = nullptr;
    const int32_t* token_type_ids = nullptr;
    const int32_t* labels = nullptr;
    int B = 0;
    int T = 0;
    // Data parallel: this batch is rows [row_offset, row_offset + B) of a
    // global batch padded to the same T; dropout draws that slice of the
    // global batch's masks. 0 for a whole batch.
    int64_t row_offset = 0;
};

// A batch that owns its arrays (the binding copies JS memory into one so the
// worker thread owns what it reads; tests build them); view() lends it as a Batch.
struct OwnedBatch {
    std::vector<int32_t> input_ids, attention_mask, token_type_ids, labels;  // labels may be empty
    int B = 0, T = 0;
    int64_t row_offset = 0;
    Batch view() const {
        Batch b;
        b.input_ids = input_ids.data();
        b.attention_mask = attention_mask.data();
        b.token_type_ids = token_type_ids.data();
        b.labels = labels.empty() ? nullptr : labels.data();
        b.B = B;
        b.T = T;
        b.row_offset = row_offset;
        return b;
    }
};

struct ParamInfo {
    std::string name;          // HF checkpoint key, e.g. bert.encoder.layer.0.attention.self.query.weight
    std::vector<int64_t> shape;
    size_t offset = 0;         // into every parameter-shaped arena
    size_t numel = 0;
    bool decay = true;         // false for biases and LayerNorm weights
    bool trainable = true;
};

// Thrown for bad input; the binding turns it into a JS Error with the message.
struct EngineError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Bytes of memory the OS can still hand out without swapping (Linux:
// MemAvailable of /proc/meminfo; elsewhere the free physical pages), or 0 when
// unknown. Used before large zero-filled allocations: with memory overcommit a
// huge allocation succeeds and filling it gets the process killed, which no
// exception can report.
size_t available_memory_bytes();
// Throws EngineError "<what> needs X MiB, but only Y MiB of memory is
// available" when `bytes` exceeds available_memory_bytes() (a known value).
void require_memory(size_t bytes, const std::string& what);

// Parameters of a BertForSequenceClassification (embeddings, encoder, pooler,
// classifier) or BertForMaskedLM (embeddings, encoder, prediction head; the
// decoder is the tied word embeddings) with this config, computed from the
// config alone, in double so an absurd config cannot overflow.
double count_parameters(const BertConfig& config);

// What every device's engine shares: the model plan (the parameter table in
// arena order, with q/k/v packed so one GEMM computes all three), input
// validation, freezing flags and the optimizer/dropout counters. A device
// engine (CpuEngine here, CudaEngine in native/cuda) owns the memory.
class EngineBase : public Model {
public:
    EngineBase(const BertConfig& config, const TrainConfig& train);  // throws EngineError
    virtual ~EngineBase() = default;
    EngineBase(const EngineBase&) = delete;
    EngineBase& operator=(const EngineBase&) = delete;

    const BertConfig& config() const { return cfg_; }
    const TrainConfig& train_config() const { return tc_; }
    const std::vector<ParamInfo>& params() const override { return params_; }
    const ParamInfo& param(const std::string& name) const override;  // throws EngineError
    size_t num_parameters() const override { return n_params_; }
    // A masked LM's labels are per token (not shifted); its logits (B, T, vocab_size).
    bool labels_per_token() const override { return cfg_.masked_lm; }
    size_t logits_size(int B, int T) const override {
        return cfg_.masked_lm ? (size_t)B * T * cfg_.vocab_size : (size_t)B * cfg_.num_labels;
    }
    // The four parameter-shaped arenas (Model::Slot) are copied in and out
    // in float32 by the device engine's read/write; activation_bytes() is the
    // device engine's too. Frozen parameters get no gradient (their slice is zeroed) and no update.
    void set_trainable(const std::string& name, bool trainable) override;

    // Checks ids, mask, token types, labels, T and B × T (at most 2^31 - 1
    // tokens) against the config; throws EngineError naming the tensor, the
    // position and the allowed range.
    void validate(const Batch& batch, bool need_labels) const;

    // forward() and accumulate() validate the batch first (EngineError).
    // logits (logits_size floats) written to `logits` when it is set.
    // train=false disables dropout. Returns the mean loss when batch.labels is
    // set (a masked LM's over its labelled positions; 0 when it has none), else 0.
    float forward(const Batch& batch, float* logits, bool train) override = 0;
    // forward(train) + loss + backward; parameter gradients are ADDED to the
    // gradient arena with the loss scaled by `loss_scale` (a micro-batch's
    // share of the examples under gradient accumulation). Returns the
    // micro-batch's mean loss (unscaled).
    float accumulate(const Batch& batch, float loss_scale) override = 0;
    // Global-norm clipping (torch.nn.utils.clip_grad_norm_), fused AdamW on
    // every trainable parameter, then zeroes the gradients. Returns the norm
    // before clipping. A non-finite norm skips the update (weights, moments
    // and the step count stay as they were) and is returned as is.
    float step(float learning_rate) override = 0;
    void zero_grad() override = 0;

    int64_t optimizer_step() const override { return t_; }
    void set_optimizer_step(int64_t t) override { t_ = t; }
    uint64_t micro_step() const override { return micro_step_; }
    void set_micro_step(uint64_t s) override { micro_step_ = s; }

protected:
    // Indices into params_ of one encoder layer's tensors.
    struct LayerIdx {
        size_t qkv_w, qkv_b, ao_w, ao_b, ln1_w, ln1_b, ff1_w, ff1_b, ff2_w, ff2_b, ln2_w, ln2_b;
    };
    // Dropout tensor ids: 0 embeddings, three per layer, then the classifier.
    static uint32_t tid_att_probs(int l) { return 1 + 3 * l; }
    static uint32_t tid_att_out(int l) { return 2 + 3 * l; }
    static uint32_t tid_ffn_out(int l) { return 3 + 3 * l; }
    uint32_t tid_classifier() const { return 1 + 3 * cfg_.num_hidden_layers; }
    // A tensor's dropout key; per_row: its elements per batch row, so a
    // data-parallel shard (batch.row_offset) draws its slice of the global batch's masks.
    DropoutKey key(uint32_t tensor, size_t per_row) const {
        return DropoutKey{tc_.seed, micro_step_, tensor, (uint64_t)row_offset_ * per_row};
    }
    // -1 when an embedding trains, else the lowest layer with a trainable
    // tensor (num_hidden_layers when only the pooler/classifier train).
    int first_trainable() const;
    bool any_trainable(size_t first, size_t count) const;
    virtual void on_frozen(const ParamInfo& p) = 0;  // zero p's gradient slice

    BertConfig cfg_;
    TrainConfig tc_;
    std::vector<ParamInfo> params_;
    size_t n_params_ = 0;    // real parameter count (without alignment padding)
    size_t arena_size_ = 0;  // floats in each parameter-shaped arena
    size_t emb_w_ = 0, emb_p_ = 0, emb_t_ = 0, emb_ln_w_ = 0, emb_ln_b_ = 0;
    size_t pool_w_ = 0, pool_b_ = 0, cls_w_ = 0, cls_b_ = 0;                      // classifier head
    size_t mlm_dense_w_ = 0, mlm_dense_b_ = 0, mlm_ln_w_ = 0, mlm_ln_b_ = 0, mlm_bias_ = 0;  // masked-LM head
    std::vector<LayerIdx> lidx_;
    int64_t t_ = 0;            // optimizer steps taken (AdamW's t)
    uint64_t micro_step_ = 0;  // training forwards so far: the dropout RNG's step
    int64_t row_offset_ = 0;   // the batch being run: its first row in the global batch (Batch::row_offset)

private:
    void add_param(const std::string& name, std::vector<int64_t> shape);
    void build_param_table();
};

// The CPU engine: float32 arenas in host memory, OpenMP + OpenBLAS kernels.
class CpuEngine final : public EngineBase {
public:
    CpuEngine(const BertConfig& config, const TrainConfig& train);
    std::string device() const override { return "cpu"; }
    size_t activation_bytes() const override { return (acts_.size() + dacts_.size()) * sizeof(float); }
    void read(const ParamInfo& p, Slot slot, float* dst) override;
    void write(const ParamInfo& p, Slot slot, const float* src) override;
    float forward(const Batch& batch, float* logits, bool train) override;
    float accumulate(const Batch& batch, float loss_scale) override;
    float step(float learning_rate) override;
    void zero_grad() override;
    std::pair<float*, size_t> host_gradients() override { return {g_.data(), g_.size()}; }

private:
    // Per-layer activations, each a view into acts_ (N = B*T rows).
    struct LayerActs {
        float *qkv, *att, *attv, *attproj, *res1, *ln1, *ln1_mean, *ln1_rstd;
        float *ffn_h, *ffn_g, *ffn_o, *res2, *ln2, *ln2_mean, *ln2_rstd;
    };
    void on_frozen(const ParamInfo& p) override;
    float* arena(Slot slot);
    // Sizes the activation arenas for (B, T) and lays out the views.
    void ensure_activations(int B, int T);
    void lay_out_activations();  // views into acts_/dacts_ for (cur_B_, cur_T_)
    void forward_impl(const Batch& batch, bool train);
    void backward_impl(const Batch& batch);
    // The encoder layers from d_.dh (the gradient at the last layer's output) down to `first`, then the embeddings.
    void encoder_backward(const Batch& batch, int first);
    void layer_forward(int l, const float* x, const int32_t* mask, bool train);
    // dx: gradient of the layer output in, gradient of its input out (same buffer).
    void layer_backward(int l, const float* x, float* dx, const int32_t* mask, bool need_dinp);
    // The masked-LM head on the encoder output x: forward into a_.mlm_*; the
    // loss sum over labelled positions (and, with backward, d_.dh = dLoss/dx
    // scaled by grad_scale, head and tied-decoder gradients added).
    void mlm_head_forward(const float* x);
    double mlm_loss(const Batch& b, bool backward, float grad_scale);
    // Masked rows the fused decoder + loss takes at a time (its scratch holds that many logit rows).
    static constexpr int kMlmChunk = 256;
    int mlm_rows() const { return std::min(kMlmChunk, cur_B_ * cur_T_); }
    float* W(size_t idx) { return w_.data() + params_[idx].offset; }
    float* G(size_t idx) { return params_[idx].trainable ? g_.data() + params_[idx].offset : nullptr; }
    // q/k/v share one GEMM: the group's gradient when any of the three trains.
    float* G_fused(size_t first) { return any_trainable(first, 3) ? g_.data() + params_[first].offset : nullptr; }
    void clear_frozen(size_t first, size_t count);
    void set_threads() const;

    std::vector<float> w_, g_, m_, v_;  // parameters, gradients, AdamW moments
    std::vector<float> acts_, dacts_;   // activations and their gradients
    std::vector<LayerActs> la_;
    struct {
        float *emb, *emb_ln, *emb_mean, *emb_rstd;  // emb_ln holds dropout(LN(emb)) = encoder input
        float *pooled_in, *pooled, *pooled_drop, *logits;
        float *mlm_h, *mlm_g, *mlm_ln, *mlm_mean, *mlm_rstd, *mlm_scratch;  // masked LM only (else null)
    } a_{};
    struct {
        float *dh, *dres, *dI1, *dI2, *dqkv, *datt, *dC, *dC2, *dlogits, *dpool1, *dpool2;
        float *dmlm;  // masked LM only
    } d_{};
    int cur_B_ = 0, cur_T_ = 0;  // the batch the activation views are laid out for
};

}  // namespace nt
