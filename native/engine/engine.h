// The BERT sequence-classification engine: the model plan (parameter table,
// arenas), forward, backward and the optimizer step, on the CPU kernels.
// Follows Hugging Face BertForSequenceClassification (modeling_bert.py):
// post-LayerNorm encoder, pooler = tanh(dense(h[:, 0])), classifier linear.
//
// Memory: one arena each for parameters, gradients, AdamW first and second
// moments (all laid out by the same parameter table), and one activation
// arena sized for the largest (B, T) seen; a step allocates nothing once the
// activation arena fits the batch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/kernels.h"

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

class Engine {
public:
    Engine(const BertConfig& config, const TrainConfig& train);

    const BertConfig& config() const { return cfg_; }
    const TrainConfig& train_config() const { return tc_; }
    const std::vector<ParamInfo>& params() const { return params_; }
    const ParamInfo& param(const std::string& name) const;  // throws EngineError
    size_t num_parameters() const { return n_params_; }

    float* weights(const ParamInfo& p) { return w_.data() + p.offset; }
    float* grads(const ParamInfo& p) { return g_.data() + p.offset; }
    float* exp_avg(const ParamInfo& p) { return m_.data() + p.offset; }
    float* exp_avg_sq(const ParamInfo& p) { return v_.data() + p.offset; }
    void set_trainable(const std::string& name, bool trainable);

    // Checks ids, mask, token types, labels and T against the config; throws
    // EngineError naming the tensor, the position and the allowed range.
    void validate(const Batch& batch, bool need_labels) const;

    // logits (B, num_labels) written to `logits`. train=false disables
    // dropout. Returns the mean loss when batch.labels is set, else 0.
    float forward(const Batch& batch, float* logits, bool train);
    // forward(train) + loss + backward; parameter gradients are ADDED to the
    // gradient arena with the loss scaled by `loss_scale` (a micro-batch's
    // share of the examples under gradient accumulation). Returns the
    // micro-batch's mean loss (unscaled).
    float accumulate(const Batch& batch, float loss_scale);
    // Global-norm clipping (torch.nn.utils.clip_grad_norm_), fused AdamW on
    // every trainable parameter, then zeroes the gradients. Returns the norm
    // before clipping.
    float step(float learning_rate);
    void zero_grad();

    int64_t optimizer_step() const { return t_; }
    void set_optimizer_step(int64_t t) { t_ = t; }
    uint64_t micro_step() const { return micro_step_; }
    void set_micro_step(uint64_t s) { micro_step_ = s; }

private:
    // Per-layer activations, each a view into acts_ (N = B*T rows).
    struct LayerActs {
        float *qkv, *att, *attv, *attproj, *res1, *ln1, *ln1_mean, *ln1_rstd;
        float *ffn_h, *ffn_g, *ffn_o, *res2, *ln2, *ln2_mean, *ln2_rstd;
    };
    // Indices into params_ of one encoder layer's tensors.
    struct LayerIdx {
        size_t qkv_w, qkv_b, ao_w, ao_b, ln1_w, ln1_b, ff1_w, ff1_b, ff2_w, ff2_b, ln2_w, ln2_b;
    };
    void add_param(const std::string& name, std::vector<int64_t> shape);
    void build_param_table();
    void ensure_activations(int B, int T);
    void forward_impl(const Batch& batch, bool train);
    void backward_impl(const Batch& batch);
    void layer_forward(int l, const float* x, const int32_t* mask, bool train);
    // dx: gradient of the layer output in, gradient of its input out (same buffer).
    void layer_backward(int l, const float* x, float* dx, const int32_t* mask, bool need_dinp);
    DropoutKey key(uint32_t tensor) const { return DropoutKey{tc_.seed, micro_step_, tensor}; }
    float* W(size_t idx) { return w_.data() + params_[idx].offset; }
    float* G(size_t idx) { return params_[idx].trainable ? g_.data() + params_[idx].offset : nullptr; }
    float* G_fused(size_t first);  // gradient of a fused q/k/v group (3 tensors)
    void clear_frozen(size_t first, size_t count);
    // -1 when an embedding trains, else the lowest layer with a trainable
    // tensor (num_hidden_layers when only the pooler/classifier train).
    int first_trainable() const;
    void set_threads() const;

    BertConfig cfg_;
    TrainConfig tc_;
    std::vector<ParamInfo> params_;
    size_t n_params_ = 0;   // real parameter count (without alignment padding)
    size_t arena_size_ = 0; // floats in each parameter-shaped arena
    std::vector<float> w_, g_, m_, v_;  // parameters, gradients, AdamW moments
    std::vector<float> acts_, dacts_;   // activations and their gradients
    size_t emb_w_ = 0, emb_p_ = 0, emb_t_ = 0, emb_ln_w_ = 0, emb_ln_b_ = 0;
    size_t pool_w_ = 0, pool_b_ = 0, cls_w_ = 0, cls_b_ = 0;
    std::vector<LayerIdx> lidx_;
    std::vector<LayerActs> la_;
    struct {
        float *emb, *emb_ln, *emb_mean, *emb_rstd;  // emb_ln holds dropout(LN(emb)) = encoder input
        float *pooled_in, *pooled, *pooled_drop, *logits;
    } a_{};
    struct {
        float *dh, *dres, *dI1, *dI2, *dqkv, *datt, *dC, *dC2, *dlogits, *dpool1, *dpool2;
    } d_{};
    int cap_B_ = 0, cap_T_ = 0;  // activation arena capacity
    int cur_B_ = 0, cur_T_ = 0;
    int64_t t_ = 0;             // optimizer steps taken (AdamW's t)
    uint64_t micro_step_ = 0;   // training forwards so far: the dropout RNG's step
};

}  // namespace nt
