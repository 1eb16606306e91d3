// What the binding sees of any model engine: a named parameter table with
// four float32 slots per parameter, a batch-in / loss-out training step, and
// the optimizer and dropout counters. Each architecture (BERT classifier in
// engine/engine.*, Llama-family causal LM in models/llama.*) is one subclass;
// the binding, the Trainer and checkpoints only use this interface. The
// types it names (ParamInfo, Batch, ...) are in engine/engine.h.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace nt {

struct ParamInfo;  // engine/engine.h
struct Batch;

class Model {
public:
    virtual ~Model() = default;
    Model() = default;
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    // Parameters in arena order; names are Hugging Face checkpoint keys (PEFT
    // keys for LoRA adapters).
    virtual const std::vector<ParamInfo>& params() const = 0;
    // Throws EngineError naming the expected key form.
    virtual const ParamInfo& param(const std::string& name) const = 0;
    virtual size_t num_parameters() const = 0;
    virtual std::string device() const = 0;  // "cpu", "cuda:0 (NVIDIA H200, bf16)"
    // Bytes the activation arena holds now (0 where not tracked).
    virtual size_t activation_bytes() const { return 0; }

    enum class Slot { Weight, Grad, ExpAvg, ExpAvgSq };
    virtual void read(const ParamInfo& p, Slot slot, float* dst) = 0;
    virtual void write(const ParamInfo& p, Slot slot, const float* src) = 0;
    virtual void set_trainable(const std::string& name, bool trainable) = 0;

    // The batch contract: labels hold one entry per sequence (a classifier)
    // or one per token (a causal LM: B*T, shifted inside the engine), and a
    // forward writes logits_size(B, T) floats.
    virtual bool labels_per_token() const = 0;
    virtual size_t logits_size(int B, int T) const = 0;

    // See EngineBase for the contracts (validation, loss scaling, clipping,
    // non-finite skip); both architectures keep them.
    virtual float forward(const Batch& batch, float* logits, bool train) = 0;
    virtual float accumulate(const Batch& batch, float loss_scale) = 0;
    virtual float step(float learning_rate) = 0;
    virtual void zero_grad() = 0;
    // The gradients of what trains as one span of host memory, which a
    // data-parallel step sums over ranks before step(); {nullptr, 0} where
    // they live on a device.
    virtual std::pair<float*, size_t> host_gradients() { return {nullptr, 0}; }
    // The gradients of what trains as one span of DEVICE memory (float32, n
    // elements) with the stream the engine runs on (a cudaStream_t) and its
    // device ordinal, which a data-parallel step sums over ranks with NCCL
    // before step(); empty (data null, device -1) for a host engine. The
    // stream is idle when the engine hands it over (every public call returns
    // so) and must be idle again before the next engine call.
    struct DeviceGradients {
        float* data = nullptr;
        size_t n = 0;
        void* stream = nullptr;
        int device = -1;
    };
    virtual DeviceGradients device_gradients() { return {}; }

    virtual int64_t optimizer_step() const = 0;
    virtual void set_optimizer_step(int64_t t) = 0;
    virtual uint64_t micro_step() const = 0;
    virtual void set_micro_step(uint64_t s) = 0;
};

// A causal LM that generates with a KV cache (HF generate()'s use_cache):
// prefill runs the prompts (B, T), left-padded so every row's last token sits
// in column T-1, keeps every layer's rotated keys and values, and writes the
// logits of each row's last token (B, vocab_size). Each decode() feeds one
// token per row (B) at the next position and writes the next logits. Dropout
// off. Throws EngineError when T + max_new_tokens would pass
// max_position_embeddings, or decode() is called past that budget or before
// prefill().
class CausalLM : public Model {
public:
    virtual void prefill(const Batch& prompts, int max_new_tokens, float* logits) = 0;
    virtual void decode(const int32_t* tokens, float* logits) = 0;
    // Rows of the current generation (0 before any prefill).
    virtual int generation_batch() const = 0;
};

}  // namespace nt
