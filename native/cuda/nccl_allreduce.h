// Data-parallel gradient sum on GPUs: NCCL's ncclAllReduce over the ranks of
// the MPI world (engine/distributed.h), one GPU per rank, as llm.c does it:
// rank 0 makes the NCCL unique id (ncclGetUniqueId), the world broadcasts it
// over MPI, and every rank joins one NCCL communicator on its own device
// (ncclCommInitRankConfig). The sum then runs in place on the engine's own
// stream (Model::device_gradients()), so the gradients never leave the GPU.
//
// Faults keep the Communicator's contract: every rank first passes its
// arrival check (a rank that does not come within the timeout is named);
// the communicator is non-blocking (NCCL's config.blocking = 0), and its
// creation and each all-reduce are polled against the same timeout
// (ncclCommGetAsyncError, cudaStreamQuery). When the timeout passes, or NCCL
// or CUDA report an error, the communicator is aborted (ncclCommAbort), the
// world is spent (its later collectives throw, and the process ends the MPI
// job at exit) and an EngineError naming the collective and the failed call
// is thrown: never a hang, never a process abort.
//
// Threads: calls may come from any thread, one at a time (the binding's
// collective lock); each selects the device first.
//
// Built only with the CUDA engine, MPI and NCCL (NODETUNE_WITH_NCCL; CMake
// finds NCCL from the nvidia-nccl-cu13 wheel that scripts/cuda-toolkit.sh
// installs, or NCCL_ROOT).
#pragma once
#include <cstddef>
#include <string>

namespace nt {

class Communicator;  // engine/distributed.h

// data[i] (float32, device memory on cuda:`device`, n elements) = the sum of
// data[i] over all ranks of `world`, in place, enqueued on `stream` (a
// cudaStream_t, idle on entry) and complete on return. The first call creates
// the NCCL communicator on `device`; a later call with another device throws
// (one GPU per process). One rank works too (a plain copy). `what` names the
// collective in errors ("the gradient all-reduce of optimizer step 12").
// Throws EngineError on timeout (after ncclCommAbort), on an NCCL or CUDA
// error (naming the call), or after an earlier failure.
void nccl_allreduce_sum(Communicator& world, float* data, size_t n, void* stream, int device,
                        const std::string& what);

// Destroys the communicator after a clean run (ncclCommFinalize, polled
// against the world's timeout, then ncclCommDestroy; ncclCommAbort if the
// finalize fails or stalls). Never throws; nothing when none was created.
void nccl_finish(Communicator& world);

// "2.28.9": the NCCL library loaded (ncclGetVersion).
std::string nccl_version();

}  // namespace nt
