// Data-parallel collectives among the ranks an MPI launcher started
// (`mpirun -n N node ...`): Open MPI's all-reduce (MPI_Iallreduce), as llm.c
// and PyTorch's gloo/MPI backends use it. One world per process, initialised on first use.
// A CUDA engine's gradients are summed by NCCL instead (cuda/nccl_allreduce.h),
// which takes its unique id, arrival check, timeout and failure state from here.
//
// Faults: before each collective every rank tells every other that it has
// arrived (an 8-byte message each way, polled against a deadline). A rank that
// does not arrive within the timeout (dead, hung or far behind) makes the
// others throw an EngineError naming it and the collective, instead of
// blocking forever; the collective itself is non-blocking and polled against
// the same deadline, and a rank that stops inside it is named by a last probe
// (stalled()). After a failure the world is spent, and the
// process ends the MPI job at exit (MPI_Abort) rather than wait for a
// finalize that the missing rank would never join.
//
// Threads: calls come from whichever worker thread runs them, one at a time
// (MPI_THREAD_SERIALIZED; the TypeScript layer awaits each).
//
// Built without MPI (NODETUNE_WITH_MPI undefined: binding.gyp, or no
// libopenmpi-dev), available() is false and world() throws.
#pragma once
#include <cstddef>
#include <string>

namespace nt {

class Communicator {
public:
    // True when this build links MPI.
    static bool available();
    // The process's world (MPI_Init_thread on the first call). timeout_s > 0:
    // how long a collective waits for the other ranks to arrive. Throws
    // EngineError without MPI, or when MPI cannot give serialized threading.
    static Communicator& world(double timeout_s);

    int rank() const { return rank_; }
    int size() const { return size_; }
    // MPI_Get_processor_name: the host, for messages.
    const std::string& host() const { return host_; }
    void set_timeout(double timeout_s);
    double timeout() const { return timeout_s_; }

    // data[i] = the sum of data[i] over all ranks (in place, every rank gets
    // the result), in buckets of at most kBucket elements. `what` names the
    // collective in errors ("the gradient all-reduce of optimizer step 12").
    // Throws EngineError when a rank does not arrive in time (naming it), or
    // after an earlier failure.
    void allreduce_sum(float* data, size_t n, const std::string& what);
    void allreduce_sum(double* data, size_t n, const std::string& what);

    // data[0, bytes) of rank `root` into data on every rank (MPI_Ibcast,
    // polled against the deadline like the all-reduce); e.g. NCCL's unique id.
    // Throws EngineError as allreduce_sum does.
    void broadcast(void* data, size_t bytes, int root, const std::string& what);

    // For collectives run outside this class (NCCL's, on the device), which
    // keep its contract: arrive() before each (every rank gets there within
    // the timeout, or the missing one is named); on a failure fail() or
    // stalled(), which spend the world (later collectives throw, finish()
    // ends the job with MPI_Abort) and throw EngineError.
    void arrive(const std::string& what);
    [[noreturn]] void fail(const std::string& failure);
    // fail() with "rank k stopped responding during <what>: every rank
    // arrived, and it did not complete within <timeout> ...", naming the
    // ranks that do not answer a last probe from the others.
    [[noreturn]] void stalled(const std::string& what);

    // MPI_Finalize after a clean run; MPI_Abort (ending every rank of the job)
    // with abort, or after a failed collective. Idempotent; also run at
    // process exit (MPI_Finalize there would wait for ranks that may never come).
    void finish(bool abort = false);

    // 1 Mi elements per MPI_Iallreduce: measured fastest of 256 Ki to 16 Mi
    // for 91 MB on 2 ranks of one machine (Open MPI 4.1, shared memory).
    static constexpr size_t kBucket = size_t(1) << 20;

private:
    Communicator() = default;
    void init(double timeout_s);
    template <typename T>
    void allreduce(T* data, size_t n, const std::string& what);
    // Sends every other rank an 8-byte message (tag `tag`) and waits up to
    // wait_s for theirs: "" when all came, else the ranks not heard from
    // ("1" or "1, 3"; "?" when all came but a send is stuck). Throws EngineError
    // on an MPI error.
    std::string hear_from_all(int tag, double wait_s);
    // After a started collective was waited for: stalled(what) when it did
    // not finish in time, fail() naming `call` and MPI's error text when rc
    // is an error; nothing when it completed.
    void settle(bool in_time, int rc, const char* call, const std::string& what);

    int rank_ = 0, size_ = 1;
    std::string host_;
    double timeout_s_ = 1800.0;
    long long seq_ = 0;  // collectives so far: the arrival messages' tag
    bool failed_ = false, finished_ = false;
    std::string failure_;
};

}  // namespace nt
