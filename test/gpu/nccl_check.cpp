// The NCCL gradient all-reduce (native/cuda/nccl_allreduce.*) end to end:
// the MPI world (engine/distributed.*), NCCL's unique id broadcast over it,
// one communicator, and two in-place sums on each rank's GPU, through the
// very function the addon's Engine.step({allReduce: true}) calls.
//
// Each rank (local rank l on cuda:l, one GPU per rank) fills n floats on its
// device with rank + 1 and sums them over the ranks; every element must then
// be S = size * (size + 1) / 2, exactly (small integers in float32). A second
// call on the first 5 elements (the communicator reused) must give S * size
// there and leave the rest at S. The ranks agree on the result over MPI, and
// rank 0 prints one line.
//
// Usage: mpirun -n N nodetune_nccl_check [--n FLOATS] [--timeout SECONDS]
//   (one rank also runs without mpirun; NCCL works with one rank)
// Exit: 0 pass, or no CUDA device ("no CUDA device: <reason>", before MPI
//       starts); 1 a wrong sum; 2 an error (the message names the call;
//       after a failed collective MPI_Abort ends the job with its own code).
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "cuda/nccl_allreduce.h"
#include "engine/distributed.h"

namespace {

int local_rank() {
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"}) {
        const char* v = std::getenv(name);
        if (v && *v) return std::atoi(v);
    }
    return 0;
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    size_t n = (size_t(1) << 20) + 3;  // 4 MiB and not a multiple of anything NCCL chunks by
    double timeout = 60;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--n") == 0 && i + 1 < argc) {
            n = std::strtoull(argv[++i], nullptr, 10);
        } else if (std::strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            timeout = std::atof(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--n FLOATS] [--timeout SECONDS]\n", argv[0]);
            return 2;
        }
    }
    if (n < 5) n = 5;
    const int devices = nt::cuda::cuda_device_count();
    if (devices == 0) {
        std::printf("no CUDA device: %s\nnccl_check skipped (NCCL %s built and linked fine).\n",
                    nt::cuda::cuda_unavailable_reason().c_str(), nt::nccl_version().c_str());
        return 0;
    }
    nt::Communicator* world = nullptr;
    try {
        world = &nt::Communicator::world(timeout);
        const int rank = world->rank(), size = world->size(), device = local_rank();
        if (device >= devices)
            throw std::runtime_error("rank " + std::to_string(rank) + " is local rank " + std::to_string(device) +
                                     " and takes cuda:" + std::to_string(device) + ", but " + std::to_string(devices) +
                                     " device(s) are present (one GPU per rank)");
        const auto info = nt::cuda::cuda_device_info(device);
        NT_CUDA_CHECK(cudaSetDevice(device));
        cudaStream_t stream = nullptr;
        NT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        float* d = nullptr;
        NT_CUDA_CHECK(cudaMalloc(&d, n * sizeof(float)));
        std::vector<float> h(n, float(rank + 1));
        NT_CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));

        auto t0 = std::chrono::steady_clock::now();
        nt::nccl_allreduce_sum(*world, d, n, stream, device, "the check's all-reduce of " + std::to_string(n) + " floats");
        const double first_ms = ms_since(t0);  // creates the communicator
        t0 = std::chrono::steady_clock::now();
        nt::nccl_allreduce_sum(*world, d, 5, stream, device, "the check's second all-reduce (5 floats)");
        const double second_ms = ms_since(t0);

        NT_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
        const float S = float(size) * float(size + 1) / 2.0f;
        double wrong = 0;
        size_t first_bad = n;
        for (size_t i = 0; i < n; i++) {
            const float want = i < 5 ? S * float(size) : S;
            if (h[i] != want) {
                if (first_bad == n) first_bad = i;
                wrong++;
            }
        }
        if (wrong > 0)
            std::printf("nccl_check: FAIL on rank %d: %.0f of %zu elements wrong, first [%zu] = %g, expected %g\n", rank,
                        wrong, n, first_bad, h[first_bad], first_bad < 5 ? S * float(size) : S);
        world->allreduce_sum(&wrong, 1, "the check's count of wrong elements");
        NT_CUDA_CHECK(cudaFree(d));
        NT_CUDA_CHECK(cudaStreamDestroy(stream));
        nt::nccl_finish(*world);
        if (rank == 0)
            std::printf("nccl_check: %s: ncclAllReduce over %d rank(s), %zu floats summed to %g, then 5 to %g; "
                        "%.1f ms with the communicator's creation, %.2f ms after; NCCL %s, rank 0 on cuda:%d (%s)\n",
                        wrong > 0 ? "FAIL" : "ok", size, n, S, S * float(size), first_ms, second_ms,
                        nt::nccl_version().c_str(), device, info.name.c_str());
        std::fflush(stdout);
        world->finish();
        return wrong > 0 ? 1 : 0;
    } catch (const std::exception& e) {
        std::printf("nccl_check: error: %s\n", e.what());
        std::fflush(stdout);
        if (world) world->finish(true);  // ends the other ranks too (MPI_Abort)
        return 2;
    }
}
