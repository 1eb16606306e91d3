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

}  // namespace engine_detail
}  // namespace cuda
}  // namespace nt
