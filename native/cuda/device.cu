// CUDA errors as C++ exceptions, and device discovery.
#include <cuda_runtime.h>

#include <string>

#include "cuda/kernels.h"

namespace nt {
namespace cuda {

namespace {
std::string describe(cudaError_t e) {
    return std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")";
}
std::string version_string(int v) {
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}
}  // namespace

void check(cudaError_t e, const char* where) {
    if (e == cudaSuccess) return;
    throw CudaError(e, std::string(where) + ": " + describe(e));
}

void check_launch(const char* kernel) {
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return;
    throw CudaError(e, std::string("launch of ") + kernel + ": " + describe(e));
}

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        return 0;
    }
    return n;
}

std::string cuda_unavailable_reason() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    cudaGetLastError();
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    if (e == cudaSuccess && n > 0) return "";
    if (e == cudaErrorInsufficientDriver) {
        if (driver == 0)
            return "no NVIDIA driver found (libcuda.so not loadable); this build needs a driver "
                   "for CUDA " + version_string(runtime) + " or newer";
        return "the NVIDIA driver supports CUDA " + version_string(driver) +
               " but this build uses the CUDA " + version_string(runtime) + " runtime";
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0))
        return "the NVIDIA driver is loaded but reports no CUDA device";
    return "CUDA unavailable: " + describe(e);
}

DeviceInfo cuda_device_info(int device) {
    const int n = cuda_device_count();
    if (n == 0) throw CudaError(cudaErrorNoDevice, "no CUDA device: " + cuda_unavailable_reason());
    if (device < 0 || device >= n)
        throw CudaError(cudaErrorInvalidDevice, "CUDA device " + std::to_string(device) +
                                                    " does not exist (" + std::to_string(n) +
                                                    " device(s) present)");
    cudaDeviceProp prop;
    NT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    DeviceInfo info;
    info.index = device;
    info.name = prop.name;
    info.major = prop.major;
    info.minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    info.total_memory = prop.totalGlobalMem;
    NT_CUDA_CHECK(cudaDriverGetVersion(&info.driver_version));
    NT_CUDA_CHECK(cudaRuntimeGetVersion(&info.runtime_version));
    return info;
}

}  // namespace cuda
}  // namespace nt
