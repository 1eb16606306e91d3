// NCCL all-reduce of a CUDA engine's gradients over the MPI world: see
// cuda/nccl_allreduce.h. Sources followed: llm.c's multi_gpu_config_init (the
// unique id over MPI_Bcast, one device per rank) and NCCL's documentation of
// non-blocking communicators and fault tolerance (ncclCommGetAsyncError,
// ncclCommAbort).
#include "cuda/nccl_allreduce.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "engine/distributed.h"
#include "engine/engine.h"  // EngineError

namespace nt {

namespace {

using Clock = std::chrono::steady_clock;

// The process's one communicator (one GPU per process). After a failure it
// is aborted and the world is spent: world.arrive() refuses what comes next.
struct NcclState {
    ncclComm_t comm = nullptr;
    int device = -1;
};
NcclState g_nccl;

double since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Polling pause: none for the first millisecond (a step's all-reduce is often
// that short), then growing to 200 us (the MPI path's arrival check likewise).
void pause(Clock::time_point start, std::chrono::microseconds& p) {
    if (since(start) < 1e-3) return;
    std::this_thread::sleep_for(p);
    p = std::min(p * 2, std::chrono::microseconds(200));
}

std::string nccl_text(ncclResult_t r, ncclComm_t comm) {
    std::string s = ncclGetErrorString(r);
    const char* last = ncclGetLastError(comm);
    if (last && *last) s += std::string(" (") + last + ")";
    return s;
}

// Aborts the communicator (ending whatever it has in flight) and spends the
// world; throws EngineError(message).
[[noreturn]] void fail(Communicator& world, const std::string& message) {
    if (g_nccl.comm) ncclCommAbort(g_nccl.comm);
    g_nccl.comm = nullptr;
    world.fail(message);
}

// As fail(), with the Communicator's "did not complete within ..." wording.
[[noreturn]] void stalled(Communicator& world, const std::string& what) {
    if (g_nccl.comm) ncclCommAbort(g_nccl.comm);
    g_nccl.comm = nullptr;
    world.stalled(what);
}

void check_cuda(Communicator& world, cudaError_t e, const char* call, const std::string& what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();
    fail(world, what + ": " + call + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// A non-blocking communicator answers ncclInProgress until the call `r` came
// from (the communicator's creation, or enqueueing a collective) is done;
// polls ncclCommGetAsyncError until it is, the timeout passes, or it fails.
void wait_issued(Communicator& world, ncclResult_t r, const char* call, const std::string& what,
                 Clock::time_point start) {
    auto p = std::chrono::microseconds(20);
    while (r == ncclInProgress) {
        if (since(start) > world.timeout()) stalled(world, what + " (" + call + ")");
        pause(start, p);
        const ncclResult_t q = ncclCommGetAsyncError(g_nccl.comm, &r);
        if (q != ncclSuccess) r = q;
    }
    if (r != ncclSuccess) fail(world, what + ": " + call + " failed: " + nccl_text(r, g_nccl.comm));
}

// Rank 0's unique id to every rank over MPI, then every rank's communicator
// on `device`.
void create_communicator(Communicator& world, int device, const std::string& what) {
    const std::string ctx = "creating the NCCL communicator for " + what;
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (world.rank() == 0) {
        const ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) fail(world, ctx + ": ncclGetUniqueId failed: " + nccl_text(r, nullptr));
    }
    world.broadcast(&id, sizeof id, 0, "the NCCL unique id broadcast (" + ctx + ")");
    check_cuda(world, cudaSetDevice(device), "cudaSetDevice", ctx);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every wait below is ours, polled against the timeout
    const auto start = Clock::now();
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, world.size(), id, world.rank(), &config);
    g_nccl.comm = comm;  // valid while ncclInProgress; aborted by fail()
    if (r != ncclSuccess && r != ncclInProgress) {
        g_nccl.comm = nullptr;  // nothing to abort: the call failed outright
        fail(world, ctx + ": ncclCommInitRankConfig failed: " + nccl_text(r, comm));
    }
    wait_issued(world, r, "ncclCommInitRankConfig", ctx, start);
    g_nccl.device = device;
}

}  // namespace

void nccl_allreduce_sum(Communicator& world, float* data, size_t n, void* stream, int device,
                        const std::string& what) {
    if (device < 0 || (n > 0 && !data)) throw EngineError(what + ": no device gradients to sum");
    if (g_nccl.comm && device != g_nccl.device)
        throw EngineError(what + ": this process's NCCL communicator is on cuda:" + std::to_string(g_nccl.device) +
                          ", the engine on cuda:" + std::to_string(device) + " (one GPU per process)");
    world.arrive(what);  // every rank is here, or the missing one is named
    if (!g_nccl.comm) create_communicator(world, device, what);
    check_cuda(world, cudaSetDevice(device), "cudaSetDevice", what);
    const auto start = Clock::now();
    auto* s = static_cast<cudaStream_t>(stream);
    const ncclResult_t r = ncclAllReduce(data, data, n, ncclFloat32, ncclSum, g_nccl.comm, s);
    wait_issued(world, r, "ncclAllReduce", what, start);
    // Done when the stream is: the engine's stream holds nothing else.
    auto p = std::chrono::microseconds(20);
    for (;;) {
        const cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess) return;
        if (e != cudaErrorNotReady) check_cuda(world, e, "cudaStreamQuery after ncclAllReduce", what);
        ncclResult_t async = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(g_nccl.comm, &async);
        if (q != ncclSuccess) async = q;
        if (async != ncclSuccess && async != ncclInProgress)
            fail(world, what + ": ncclAllReduce failed: " + nccl_text(async, g_nccl.comm));
        if (since(start) > world.timeout()) stalled(world, what);
        pause(start, p);
    }
}

void nccl_finish(Communicator& world) {
    if (!g_nccl.comm) return;
    ncclComm_t comm = g_nccl.comm;
    g_nccl.comm = nullptr;
    if (cudaSetDevice(g_nccl.device) != cudaSuccess) cudaGetLastError();
    const auto start = Clock::now();
    ncclResult_t r = ncclCommFinalize(comm);
    auto p = std::chrono::microseconds(20);
    while (r == ncclInProgress && since(start) <= world.timeout()) {
        pause(start, p);
        if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r == ncclSuccess)
        ncclCommDestroy(comm);
    else
        ncclCommAbort(comm);
}

std::string nccl_version() {
    int v = 0;
    if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
    // NCCL_VERSION(X, Y, Z) = X * 10000 + Y * 100 + Z since 2.9 (X * 1000 + Y * 100 + Z before).
    const int major = v >= 10000 ? v / 10000 : v / 1000;
    const int minor = v >= 10000 ? (v % 10000) / 100 : (v % 1000) / 100;
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
}

}  // namespace nt
