// LlamaForCausalLM (Hugging Face modeling_llama.py) on the CPU kernels, fully
// trainable or with PEFT LoRA adapters on a frozen base. The plan is driven by
// the config alone, so the same class runs Llama 2/3, SmolLM/SmolLM2,
// TinyLlama and, with biases on q/k/v, Qwen2/Qwen2.5:
//
//   h0 = embed_tokens[input_ids]
//   per layer: a = h + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),
//              n1 = input_layernorm(h)
//              h' = a + down_proj(silu(gate_proj(n2)) * up_proj(n2)),
//              n2 = post_attention_layernorm(a)
//   logits = lm_head(norm(hL))   (lm_head = embed_tokens when tied)
//
// Position ids follow the attention mask (cumsum(mask) - 1, clamped at 0), so
// left- and right-padded rows give the same logits for their real tokens.
// Loss: next-token cross-entropy, labels (B, T) shifted by one inside the
// engine, -100 ignored, mean over the micro-batch's targets; accumulate()'s
// loss_scale is the micro-batch's share of the optimizer step's targets, so
// accumulated gradients are those of the mean over all of the step's targets.
//
// Memory: weights in one arena; gradients and AdamW moments only for what
// trains (LoRA: the adapters alone); activations sized by B x T; the lm_head
// logits exist one chunk of target rows at a time (lmhead_crossentropy).
#pragma once
#include <array>
#include <initializer_list>
#include <utility>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu/kernels.h"
#include "engine/engine.h"

namespace nt {

// Hugging Face LlamaConfig field names (Qwen2Config's map onto them).
struct LlamaConfig {
    int vocab_size = 0;
    int hidden_size = 0;
    int intermediate_size = 0;
    int num_hidden_layers = 0;
    int num_attention_heads = 0;
    int num_key_value_heads = 0;  // grouped-query attention; = heads for MHA
    int head_dim = 0;             // HF: hidden_size / num_attention_heads unless set
    int max_position_embeddings = 0;
    float rms_norm_eps = 1e-6f;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;     // HF rope_scaling null or {"rope_type": "llama3", ...}
    bool tie_word_embeddings = false;
    bool attention_bias = false;  // biases on q_proj, k_proj, v_proj
    bool o_proj_bias = false;     // Llama's attention_bias covers o_proj too; Qwen2's does not
    bool mlp_bias = false;
};

// The linear layers LoRA can adapt, by their Hugging Face module names.
enum LoraTarget { kQ, kK, kV, kO, kGate, kUp, kDown, kNumTargets };
extern const char* const kLoraTargetNames[kNumTargets];  // "q_proj", ...

// PEFT LoraConfig names. r == 0: no adapters, every parameter trains.
struct LoraConfig {
    int r = 0;
    float lora_alpha = 8.0f;
    float lora_dropout = 0.0f;
    bool use_rslora = false;  // scale alpha / sqrt(r) instead of alpha / r
    std::array<bool, kNumTargets> target{};
    // PEFT layers_to_transform: the layers that get adapters (empty = all).
    // Backward stops at the lowest one, so adapting only the top layers is cheaper.
    std::vector<int> layers_to_transform;
};

// Parameters of the base model (no adapters), in double so an absurd config
// cannot overflow.
double count_parameters(const LlamaConfig& config);

// The architecture itself, shared by every engine that runs it (the CPU
// engine below, the CUDA engine in cuda/llama_cuda.h): the config's checks,
// the parameter table (Hugging Face / PEFT names, shapes, packed q|k|v and
// gate|up groups, which parameters train), PEFT's LoRA initialisation, the
// batch checks, HF's position ids and the shifted next-token targets. An
// engine adds memory, kernels and the optimizer.
class LlamaPlan {
public:
    static constexpr size_t kNone = (size_t)-1;
    struct Layer {
        size_t in_norm, qkv_w, qkv_b = kNone, o_w, o_b = kNone, post_norm, gu_w, gu_b = kNone, down_w,
                        down_b = kNone;
        std::array<size_t, kNumTargets> lora_A{}, lora_B{};  // kNone when not adapted
    };

    // Throws EngineError naming the config field and the expected value.
    // trainable false (no LoRA): nothing trains, no gradient buffers.
    // q8_linears: the layers' linear weights (q, k, v, o, gate, up, down)
    // get no place in the weight arena (offset kNone): the engine holds them
    // as Q8_0 only.
    LlamaPlan(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train, bool trainable,
              bool q8_linears = false);

    const LlamaConfig& config() const { return cfg_; }
    // Throws EngineError naming the expected key form.
    const ParamInfo& find_param(const std::string& name) const;
    // Checks ids, mask (0, 1 or a segment number), labels (-100 or a token
    // id) and T against the config; throws EngineError naming tensor,
    // position and range.
    void validate(const Batch& batch, bool need_labels) const;
    // The generation contract's checks (CausalLM): validate, max_new_tokens
    // >= 1, prompts left-padded, T + max_new_tokens within
    // max_position_embeddings. Returns the KV cache's columns (T +
    // max_new_tokens). Throws EngineError saying which.
    int check_prefill(const Batch& prompts, int max_new_tokens) const;
    // Each of the B decode tokens a vocabulary id; throws EngineError naming it.
    void check_decode_tokens(const int32_t* tokens, int B) const;
    // HF position ids (B*T): cumsum(attention_mask != 0) - 1 clamped at 0;
    // packed examples (segments 1, 2, ...) each count from 0.
    static void position_ids(const Batch& batch, int32_t* pos);
    // LlamaForCausalLM's shift (B*T): targets[n] = labels[n + 1] within a
    // row and a segment, else -100. Returns the number of targets.
    static int shifted_targets(const Batch& batch, int32_t* targets);
    // PEFT LoraLayer.reset_lora_parameters for lora_A of layer l, target t:
    // kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), drawn from
    // the Philox stream of the seed (one id per tensor). dst: numel floats.
    void lora_A_init(int l, int target, float* dst) const;
    // The lowest layer whose backward is needed (-1: the embeddings train;
    // num_hidden_layers: nothing below the final norm trains).
    int first_trained_layer() const;
    // Flips a parameter's trainable flag; throws EngineError for a parameter
    // frozen at construction (it has no gradient or moment buffers).
    size_t mark_trainable(const std::string& name, bool trainable);

protected:
    size_t add_param(const std::string& name, std::vector<int64_t> shape, bool trainable, bool packed_with_previous,
                     bool linear_weight = false);
    void build_param_table();
    uint32_t lora_tensor(int l, int target) const { return (uint32_t)(l * kNumTargets + target); }
    size_t lora_in_features(int target) const;
    size_t lm_head_index() const { return lm_head_ != kNone ? lm_head_ : embed_; }

    LlamaConfig cfg_;
    LoraConfig lora_;
    TrainConfig tc_;
    bool trainable_ = true;
    bool q8_linears_ = false;
    float lora_scale_ = 0.0f;
    int QKV_ = 0;  // (NH + 2 NKV) * head_dim: the fused q|k|v width
    std::vector<ParamInfo> params_;
    std::vector<size_t> goff_;  // offset in the gradient/moment arenas, kNone if none
    size_t n_params_ = 0, w_size_ = 0, g_size_ = 0;
    size_t embed_ = 0, norm_ = 0, lm_head_ = kNone;
    std::vector<Layer> layers_;
    std::vector<double> inv_freq_;  // rope_inv_freq (head_dim / 2)
};

class LlamaEngine final : public CausalLM, protected LlamaPlan {
public:
    // Throws EngineError naming the config field and the expected value.
    // gradient_checkpointing keeps only each layer's input and recomputes the
    // layer in backward (HF TrainingArguments.gradient_checkpointing).
    // base BaseWeights::bf16 (LoRA, or trainable false): the frozen base's
    // GEMMs read a bf16 copy of its weights (cpu/onednn.h; activations rounded
    // to bf16 going in, fp32 out); adapters, norms, attention and the
    // optimizer stay fp32. Throws EngineError when the base trains or without
    // bf16 GEMMs on this build and CPU.
    // BaseWeights::q8_0 (for generation): the layers' linear weights, the
    // token embedding and the lm_head are held as Q8_0 only (cpu/kernels.h
    // linear_q8_0, ggml's format and arithmetic; quantized as they are
    // written, read back as d q; embedding rows looked up dequantized, a
    // forward's loss through the Q8_0 head); norms, adapters and attention
    // stay fp32. Throws EngineError when the base trains,
    // from accumulate(), on a CPU without AVX2, and unless hidden_size,
    // intermediate_size and num_attention_heads * head_dim are multiples of
    // 32 (Q8_0 blocks).
    // trainable false (no LoRA): nothing trains, so no gradient or AdamW
    // buffer exists (3x the weights' memory saved); forward, prefill and
    // decode only, as for generation and evaluation.
    enum class BaseWeights { fp32, bf16, q8_0 };
    LlamaEngine(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train,
                bool gradient_checkpointing = false, BaseWeights base = BaseWeights::fp32, bool trainable = true);

    using LlamaPlan::config;
    using LlamaPlan::validate;
    const std::vector<ParamInfo>& params() const override { return params_; }
    const ParamInfo& param(const std::string& name) const override { return find_param(name); }
    size_t num_parameters() const override { return n_params_; }
    std::string device() const override { return "cpu"; }
    size_t activation_bytes() const override {
        return (acts_.size() + dacts_.size()) * sizeof(float) + iacts_.size() * sizeof(int32_t);
    }
    void read(const ParamInfo& p, Slot slot, float* dst) override;
    void write(const ParamInfo& p, Slot slot, const float* src) override;
    // Only parameters that train since construction have gradient and moment
    // buffers: a frozen base weight cannot be made trainable (EngineError).
    void set_trainable(const std::string& name, bool trainable) override;

    bool labels_per_token() const override { return true; }
    size_t logits_size(int B, int T) const override { return (size_t)B * T * cfg_.vocab_size; }
    // logits (B, T, vocab_size) when not null; the mean loss over the shifted
    // targets when batch.labels is set (0 when it has no target).
    float forward(const Batch& batch, float* logits, bool train) override;
    float accumulate(const Batch& batch, float loss_scale) override;
    float step(float learning_rate) override;
    void zero_grad() override;
    std::pair<float*, size_t> host_gradients() override { return {g_.data(), g_.size()}; }

    // Generation with a KV cache (HF generate()'s use_cache): prefill runs the
    // prompts (B, T), left-padded so every row's last token sits in column
    // T-1, stores every layer's rotated keys and values, and writes the
    // logits of each row's last token (B, vocab_size). Each decode() then
    // feeds one token per row (B) at the next position and writes the next
    // logits. Dropout off. Throws EngineError when T + max_new_tokens would
    // pass max_position_embeddings, or decode() is called past that budget or
    // before prefill().
    void prefill(const Batch& prompts, int max_new_tokens, float* logits) override;
    void decode(const int32_t* tokens, float* logits) override;
    int generation_batch() const override { return gen_.B; }

    int64_t optimizer_step() const override { return t_; }
    void set_optimizer_step(int64_t t) override { t_ = t; }
    uint64_t micro_step() const override { return micro_step_; }
    void set_micro_step(uint64_t s) override { micro_step_ = s; }

private:
    // Per-layer activations (views into acts_); with gradient checkpointing
    // every layer shares one set except h (its input), recomputed in backward.
    // act (silu(gate) * up) is one buffer shared by all layers, recomputed in backward.
    struct Acts {
        float *h, *n1, *rstd1, *qkv, *att, *lse, *a, *n2, *rstd2, *gu, *act;
        std::array<float*, kNumTargets> t{};  // LoRA: dropout(x) A^T, (N, r)
        std::array<uint8_t*, kNumTargets> keep{};  // LoRA dropout's mask, a bit per input element
    };

    void init_lora();
    void ensure_activations(int B, int T, bool train);
    void set_threads() const;
    void forward_impl(const Batch& b, bool train);
    void layer_forward(int l, const int32_t* mask, bool train);
    void layer_backward(int l, const int32_t* mask, bool need_dinp);
    void backward_impl(const Batch& b);
    // Linear with optional LoRA adapters on column blocks of its output.
    // `group` is the number of packed weights (3 for q|k|v, 2 for gate|up).
    using Blocks = std::initializer_list<std::pair<LoraTarget, int>>;  // adapter, first output column
    void linear_fwd(float* out, const float* in, size_t w, size_t bias, int IC, int OC, int l, Blocks blocks,
                    bool train);
    void linear_bwd(float* din, const float* dout, const float* in, size_t w, size_t bias, int group, int IC, int OC,
                    int l, Blocks blocks);
    // A parameter's fp32 values; EngineError for one held as Q8_0 only (a
    // q8_0 engine's layer weights), which no fp32 path may read.
    float* W(size_t i) {
        if (params_[i].offset == kNone) throw EngineError("internal: '" + params_[i].name + "' is held as Q8_0 only");
        return w_.data() + params_[i].offset;
    }
    // The bf16 copy of a frozen packed group (q|k|v, gate|up, or one weight),
    // or null when that group is read in fp32.
    const uint16_t* WB(size_t first, size_t count);
    // The Q8_0 weights of a packed group (or of the embedding / lm_head), or
    // null when it is held in fp32.
    const Q8Weights* WQ(size_t first) const;
    // out (rows, C) = the token embedding's rows ids (dequantized under q8_0).
    void embed(float* out, const int32_t* ids, int rows);
    // EngineError for a training call (accumulate, step) on a q8_0 engine.
    void check_not_q8() const;
    // out (N, w.OC) = in (N, w.IC) W^T through linear_q8_0 and its workspace.
    void q8_linear(float* out, const float* in, const Q8Weights& w, int N);
    // Rounds (bf16) the frozen weights again after any of them was written (a
    // checkpoint or model load writes each tensor once, before the first
    // step). Q8_0 weights are quantized as they are written.
    void refresh_frozen();
    float* G(size_t i) { return i != kNone && params_[i].trainable && goff_[i] != kNone ? g_.data() + goff_[i] : nullptr; }
    // A packed group (q|k|v or gate|up) shares one GEMM: its gradient pointer
    // when any member trains; frozen members' slices are cleared after.
    float* G_group(size_t first, size_t count);
    void clear_frozen(size_t first, size_t count);
    // per_row: the tensor's elements per batch row (see EngineBase::key).
    DropoutKey key(uint32_t tensor, size_t per_row) const {
        return DropoutKey{tc_.seed, micro_step_, tensor, (uint64_t)row_offset_ * per_row};
    }
    void lm_head_rows(float* logits, const float* h, int rows);
    void capture_kv(int l);

    std::vector<float> w_, g_, m_, v_;
    std::vector<float> acts_, dacts_;
    std::vector<Acts> la_;
    struct {
        float *hL, *rstdf, *hf, *cos, *sin, *lm_scratch;
        int32_t *pos, *targets;
    } a_{};
    struct {
        float *dh, *dn, *dqkv, *datt, *dgu, *dact, *dt, *xd;
    } d_{};
    std::vector<int32_t> iacts_;
    int cur_B_ = 0, cur_T_ = 0;
    size_t acts_for_ = 0;  // B*T the arenas are laid out for
    int64_t t_ = 0;
    uint64_t micro_step_ = 0;
    int64_t row_offset_ = 0;  // Batch::row_offset of the batch being run
    int n_targets_ = 0;       // the batch's shifted targets (-100 excluded)
    bool checkpointing_ = false;
    bool bf16_ = false, q8_ = false, wb_stale_ = true;
    std::vector<uint16_t> wb_;  // bf16 copies of the frozen weights, at their w_ offsets
    // q8_0: each layer's linear groups (q|k|v, o, gate|up, down), held only
    // so, and a copy of the lm_head, at their first param's index; q8_home_
    // gives a layer weight's group and first row.
    std::vector<Q8Weights> wq_;
    std::vector<std::pair<size_t, int>> q8_home_;
    std::vector<int8_t> q8x_;    // linear_q8_0's workspace: the input rows quantized
    std::vector<float> q8d_;
    std::vector<int32_t> q8s_;
    // The KV cache: per layer (B, NKV, cap, HS) keys and values, the key mask
    // (B, cap), each row's next position id, columns filled.
    struct {
        int B = 0, cap = 0, len = 0;
        std::vector<float> k, v, cos, sin, x;
        std::vector<int32_t> mask, pos;
        bool capturing = false, decoding = false;
    } gen_;
    // Target rows per lm_head chunk. fp32 (OpenBLAS packs the whole vocab x
    // hidden head for each chunk): 256 rows, 14% faster a LoRA step at B=8,
    // T=128 than 64, for 50 MB of scratch at a 49,152 vocabulary. The bf16
    // head (oneDNN) is as fast at 64, whose logits stay in cache.
    int lm_chunk(int N) const { return std::min(bf16_ ? 64 : 256, N); }
    // Up to this many rows in a decode step, an fp32 product with a weight
    // goes through gemm_thin: OpenBLAS would pack the whole weight.
    static constexpr int kFewRows = 16;
};

}  // namespace nt
