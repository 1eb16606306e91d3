// Device memory for the CUDA engines (BERT: engine_cuda.cu, Llama:
// llama_cuda.cu): owning buffers, alignment, and the device checks and
// out-of-memory wording both use. Internal to native/cuda.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "cuda/kernels.h"
#include "engine/engine.h"  // EngineError

namespace nt {
namespace cuda {
// Named, not anonymous: the engines' state classes (with linkage) hold these.
namespace engine_detail {

constexpr size_t kAlignBytes = 256;  // every view starts 256-byte aligned (cuBLASLt, vector loads)

inline size_t align_bytes(size_t n) { return (n + kAlignBytes - 1) / kAlignBytes * kAlignBytes; }

inline std::string mib(size_t bytes) { return std::to_string((bytes + (size_t(1) << 20) - 1) >> 20) + " MiB"; }

// One cudaMalloc, released on destruction. allocate() reports failure as a
// cudaError_t (clearing it), so the caller can word the out-of-memory error.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    ~DeviceBuffer() { reset(); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    cudaError_t allocate(size_t bytes) {
        reset();
        void* p = nullptr;
        const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return e;
        }
        p_ = p;
        bytes_ = bytes;
        return cudaSuccess;
    }
    void reset() {
        if (p_) cudaFree(p_);
        p_ = nullptr;
        bytes_ = 0;
    }
    char* get() const { return static_cast<char*>(p_); }

private:
    void* p_ = nullptr;
    size_t bytes_ = 0;
};

// Page-locked host memory for the batch upload (asynchronous copies).
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    ~PinnedBuffer() { reset(); }
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    void allocate(size_t bytes) {
        reset();
        check(cudaMallocHost(&p_, bytes ? bytes : 1), "cudaMallocHost(batch staging)");
    }
    void reset() {
        if (p_) cudaFreeHost(p_);
        p_ = nullptr;
    }
    int32_t* ints() const { return static_cast<int32_t*>(p_); }

private:
    void* p_ = nullptr;
};

// Throws EngineError unless device `index` exists; returns its properties.
inline DeviceInfo require_device(int index) {
    const int n = cuda_device_count();
    if (n == 0)
        throw EngineError("CUDA device " + std::to_string(index) + " requested, but " + cuda_unavailable_reason());
    if (index < 0 || index >= n) {
        const std::string present = n == 1 ? "only 1 device (cuda:0) is present"
                                           : "only " + std::to_string(n) + " devices (cuda:0 .. cuda:" +
                                                 std::to_string(n - 1) + ") are present";
        throw EngineError("CUDA device " + std::to_string(index) + " requested but " + present);
    }
    return cuda_device_info(index);
}

inline std::string free_memory_note(int index) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        return "";
    }
    return " (cuda:" + std::to_string(index) + " has " + mib(free_b) + " free of " + mib(total_b) + ")";
}

// The engines' optimizer step on a float32 arena of n elements (gradients,
// moments, master weights w and their bf16 copy wb, nullable, at one index):
// torch.nn.utils.clip_grad_norm_ (global_grad_norm), then AdamW
// (adamw_update, per-element flags) at 1-based step t, gradients zeroed, and
// the norm copied into *norm. A non-finite norm makes the clip scale NaN and
// adamw_update a no-op on the device, with no host sync in between. Enqueued
// on `stream`; the caller syncs before reading *norm.
inline void enqueue_optimizer_step(cudaStream_t stream, float* w, bf16* wb, float* g, float* m, float* v,
                                   const uint8_t* flags, size_t n, float lr, const TrainConfig& tc, int64_t t,
                                   float* norm_dev, float* clip_dev, double* scratch, float* norm) {
    global_grad_norm(norm_dev, clip_dev, g, n, tc.max_grad_norm, scratch, stream);
    adamw_update(w, wb, g, m, v, flags, n, lr, tc.adam_beta1, tc.adam_beta2, tc.adam_epsilon, tc.weight_decay, t, 1.0f,
                 clip_dev, stream);
    check(cudaMemsetAsync(g, 0, n * sizeof(float), stream), "cudaMemsetAsync(zero_grad)");
    check(cudaMemcpyAsync(norm, norm_dev, sizeof(float), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync(norm)");
}

}  // namespace engine_detail
}  // namespace cuda
}  // namespace nt
