// The CUDA engine: the same BertForSequenceClassification training step as
// CpuEngine (native/engine/engine.cpp), on one NVIDIA GPU, with the CUDA
// kernels of native/cuda and cuBLASLt GEMMs, all on one stream.
//
// Semantics are CpuEngine's, so a model trains the same on either device:
// the same parameter table (EngineBase), dropout keys and tensor ids (the
// Philox masks are bit-identical), freezing (first_trainable, fused q/k/v
// gradient cleared for frozen members), pad_token_id row of the word-embedding
// gradient zeroed, torch.nn.utils.clip_grad_norm_ then torch.optim.AdamW, the
// loss scale of gradient accumulation, and the counters t_ / micro_step_.
//
// Precision: fp32 (CUBLAS_COMPUTE_32F, no TF32: matches the CPU to ~1e-6) or
// bf16 mixed precision: bf16 weights (a copy refreshed by AdamW and write())
// and activations, fp32 master weights, gradients, moments, LayerNorm
// statistics, attention logsumexp and loss, as torch.autocast does.
//
// Memory (device): one arena each for master weights, gradients, exp_avg,
// exp_avg_sq (float32, EngineBase's layout), the bf16 weight copy in bf16
// mode, an update-flag byte per arena element, and one activation arena
// sized for the largest (B, T) seen. A step allocates nothing once the
// activation arena fits; attention never stores T x T (flash-style kernel).
//
// Threads: every public method may run on a different host thread (the
// binding uses the libuv pool); each selects the engine's device first. Calls
// must not overlap (the binding's busy flag guarantees it). Each public call
// returns with the stream idle.
//
// Errors: no driver, a missing device, out of memory and failed launches
// throw EngineError / std::runtime_error with a message naming the device and
// the cause; nothing aborts the process.
#pragma once
#include <memory>
#include <string>

#include "engine/engine.h"

namespace nt {
namespace cuda {

struct CudaState;                       // device memory, stream, cuBLASLt (engine_cuda.cu)
template <typename T>
struct CudaPass;                        // forward/backward for activation type T

class CudaEngine final : public EngineBase {
public:
    // Throws EngineError when the device is absent (naming the devices that
    // exist, or why none does) or the parameter arenas do not fit.
    CudaEngine(const BertConfig& config, const TrainConfig& train, int device, bool use_bf16);
    ~CudaEngine() override;
    std::string device() const override { return device_name_; }  // "cuda:0 (NVIDIA H200, bf16)"
    void read(const ParamInfo& p, Slot slot, float* dst) override;
    void write(const ParamInfo& p, Slot slot, const float* src) override;
    float forward(const Batch& batch, float* logits, bool train) override;
    float accumulate(const Batch& batch, float loss_scale) override;
    float step(float learning_rate) override;
    void zero_grad() override;
    // The float32 gradient arena (the whole arena: frozen slices and padding
    // hold zeros) and the engine's stream, for the NCCL all-reduce.
    DeviceGradients device_gradients() override;

private:
    template <typename T>
    friend struct CudaPass;
    void on_frozen(const ParamInfo& p) override;
    void activate() const;                                   // cudaSetDevice for this thread
    void ensure_activations(int B, int T);                   // throws on out of memory
    void upload_batch(const Batch& b, bool embedding_grads); // ids, mask, types, labels (+ id buckets)
    void run_forward(bool train);                            // on the uploaded batch
    void run_backward();                                     // needs run_forward(true) and dlogits
    void upload_flags();                                     // AdamW per-element flags from params_
    void sync(const char* what);

    int device_ = 0;
    bool bf16_ = false;
    std::string device_name_;
    std::unique_ptr<CudaState> s_;
};

// The factory's entry (native/engine/factory.cpp): a CudaEngine on device
// `device` in fp32 or bf16 mixed precision.
std::unique_ptr<EngineBase> make_cuda_engine(const BertConfig& config, const TrainConfig& train, int device,
                                             bool use_bf16);

}  // namespace cuda
}  // namespace nt
