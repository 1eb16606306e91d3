// LlamaForCausalLM on one NVIDIA GPU: the CPU engine's step (models/llama.cpp)
// on the CUDA kernels of native/cuda and cuBLASLt, all on one stream, with
// the same plan (LlamaPlan: names, packed groups, LoRA init, position ids,
// shifted targets), the same dropout keys (LoRA dropout masks are the CPU's,
// bit for bit), clip_grad_norm_ then torch.optim.AdamW, the same loss
// scaling, counters and generation contract (CausalLM).
//
// Precision: fp32 (CUBLAS_COMPUTE_32F, no TF32: matches the CPU to ~1e-6) or
// bf16 mixed precision as torch.autocast(bfloat16): bf16 weights and
// activations, float32 accumulation, RMSNorm statistics, attention
// logsumexp, logits of the loss, parameter gradients, AdamW master weights
// and moments. A frozen weight (the base under LoRA) exists in bf16 only, so
// reading it back gives its bf16 value; what trains has an fp32 master.
//
// Memory (device): the weights of what trains lie first, at their gradient
// offsets (LlamaPlan's goff), so one AdamW launch covers master, gradient,
// moments and bf16 copy with one index; frozen weights follow. Gradients and
// moments exist only for what trains. Activations: one arena sized by the
// largest B x T seen (per layer h, n1, q|k|v, attention output, its
// residual, n2, gate|up; with gradient checkpointing only h per layer); the
// lm_head logits one chunk of target rows at a time. A step allocates nothing
// once the arena fits. Generation: a KV cache (layers, B, NKV, cap, HS).
//
// Threads: every public method may run on a different host thread; each
// selects the engine's device first; calls must not overlap (the binding's
// busy flag). Each public call returns with the stream idle.
//
// Errors: no driver, a missing device, out of memory, a failed launch or a
// bad batch throw EngineError / std::runtime_error naming the device, call
// and cause; nothing aborts the process.
#pragma once
#include <memory>
#include <string>

#include "engine/model.h"
#include "models/llama.h"

namespace nt {
namespace cuda {

struct LlamaCudaState;  // device memory, stream, cuBLASLt (llama_cuda.cu)
template <typename T>
struct LlamaPass;       // forward/backward/decode for activation type T

class CudaLlamaEngine final : public CausalLM, protected LlamaPlan {
public:
    // Throws EngineError for a bad config (LlamaPlan), an absent device
    // (naming the devices that exist, or why none does), or arenas that do
    // not fit (naming the size and the device's free memory).
    CudaLlamaEngine(const LlamaConfig& config, const LoraConfig& lora, const TrainConfig& train, int device,
                    bool use_bf16, bool gradient_checkpointing, bool trainable);
    ~CudaLlamaEngine() override;

    const std::vector<ParamInfo>& params() const override { return params_; }
    const ParamInfo& param(const std::string& name) const override { return find_param(name); }
    size_t num_parameters() const override { return n_params_; }
    std::string device() const override { return device_name_; }  // "cuda:0 (NVIDIA H200, bf16)"
    size_t activation_bytes() const override;
    void read(const ParamInfo& p, Slot slot, float* dst) override;
    void write(const ParamInfo& p, Slot slot, const float* src) override;
    void set_trainable(const std::string& name, bool trainable) override;

    bool labels_per_token() const override { return true; }
    size_t logits_size(int B, int T) const override { return (size_t)B * T * cfg_.vocab_size; }
    float forward(const Batch& batch, float* logits, bool train) override;
    float accumulate(const Batch& batch, float loss_scale) override;
    float step(float learning_rate) override;
    void zero_grad() override;
    // The float32 gradient arena (frozen slices and padding hold zeros) and
    // the engine's stream, for the NCCL all-reduce.
    DeviceGradients device_gradients() override;

    void prefill(const Batch& prompts, int max_new_tokens, float* logits) override;
    void decode(const int32_t* tokens, float* logits) override;
    int generation_batch() const override;

    int64_t optimizer_step() const override { return t_; }
    void set_optimizer_step(int64_t t) override { t_ = t; }
    uint64_t micro_step() const override { return micro_step_; }
    void set_micro_step(uint64_t s) override { micro_step_ = s; }

private:
    template <typename T>
    friend struct LlamaPass;
    void activate() const;
    void sync(const char* what);
    void ensure_activations(int B, int T, bool train);
    void ensure_rope(int positions);
    // Uploads ids, mask, position ids; with targets, the compacted target
    // rows; with embedding gradients, the id buckets. Returns the targets.
    int upload_batch(const Batch& b, bool targets, bool embedding_grads);
    void upload_flags();
    float run_loss(int n_targets, float loss_scale, bool grad);
    void copy_logits(float* logits, int row0, int rows, int row_stride);
    DropoutKey key(uint32_t tensor, size_t per_row) const {
        return DropoutKey{tc_.seed, micro_step_, tensor, (uint64_t)row_offset_ * per_row};
    }

    int device_ = 0;
    bool bf16_ = false, checkpointing_ = false;
    std::string device_name_;
    std::vector<size_t> dev_off_;  // each parameter's offset in the device weight arena
    size_t w_total_ = 0;           // elements of the device weight arena
    int64_t t_ = 0;
    uint64_t micro_step_ = 0;
    int64_t row_offset_ = 0;
    std::unique_ptr<LlamaCudaState> s_;
};

// The factory's entry (native/engine/factory.cpp).
std::unique_ptr<CausalLM> make_cuda_causal_lm(const LlamaConfig& config, const LoraConfig& lora,
                                              const TrainConfig& train, int device, bool use_bf16,
                                              bool gradient_checkpointing, bool trainable);

}  // namespace cuda
}  // namespace nt
