#include "engine/distributed.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "engine/engine.h"  // EngineError

#if defined(NODETUNE_WITH_MPI)
#include <dlfcn.h>
#include <mpi.h>
#endif

namespace nt {

#if defined(NODETUNE_WITH_MPI)

bool Communicator::available() { return true; }

namespace {
std::string seconds(double s) {
    std::string t = std::to_string(s);
    t.erase(t.find_last_not_of('0') + 1);
    if (!t.empty() && t.back() == '.') t.pop_back();
    return t + " s";
}

Communicator* g_world = nullptr;

void finish_at_exit() {
    if (g_world) g_world->finish();
}

// "<call> failed: <MPI's text for rc>".
std::string mpi_failure(int rc, const std::string& call) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return call + " failed: " + std::string(msg, len);
}

void check_mpi(int rc, const char* call) {
    if (rc != MPI_SUCCESS) throw EngineError(mpi_failure(rc, call));
}

// Drives a started non-blocking collective to completion. MPI_Test drives the
// transfer, so it is polled at once and only after 10 ms with short sleeps.
// False when `timeout_s` (counted from `start`) passes first; an MPI error is
// left in rc.
bool wait_request(MPI_Request& req, int& rc, std::chrono::steady_clock::time_point start, double timeout_s) {
    for (int done = 0; rc == MPI_SUCCESS && !done;) {
        rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (done || rc != MPI_SUCCESS) break;
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (waited > timeout_s) return false;
        if (waited > 0.01) std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return true;
}

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
}  // namespace

Communicator& Communicator::world(double timeout_s) {
    if (!g_world) {
        auto* c = new Communicator();
        c->init(timeout_s);
        g_world = c;
        std::atexit(finish_at_exit);
    } else {
        g_world->set_timeout(timeout_s);
    }
    return *g_world;
}

void Communicator::init(double timeout_s) {
    set_timeout(timeout_s);
    // Node loads the addon with RTLD_LOCAL; Open MPI's components (mca_*.so),
    // which it dlopens itself, need libmpi's symbols global. Promote the copy
    // the addon is linked against (as mpi4py does).
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&MPI_Init_thread), &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        int provided = 0;
        check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
        if (provided < MPI_THREAD_SERIALIZED)
            throw EngineError("MPI_Init_thread: this MPI gives no MPI_THREAD_SERIALIZED support (nodetune calls MPI from worker threads)");
    }
    // Errors come back as codes (thrown as EngineError) instead of aborting the job.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    char name[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(name, &len);
    host_.assign(name, len);
}

void Communicator::set_timeout(double timeout_s) {
    if (!(timeout_s > 0) || timeout_s > 1e9)
        throw EngineError("the distributed timeout must be a number of seconds > 0, got " + std::to_string(timeout_s));
    timeout_s_ = timeout_s;
}

std::string Communicator::hear_from_all(int tag, double wait_s) {
    const long long mine = seq_;
    std::vector<long long> got(size_, 0);
    std::vector<MPI_Request> recv(size_, MPI_REQUEST_NULL), send;
    for (int r = 0; r < size_; r++) {
        if (r == rank_) continue;
        check_mpi(MPI_Irecv(&got[r], 1, MPI_LONG_LONG, r, tag, MPI_COMM_WORLD, &recv[r]), "MPI_Irecv");
        send.emplace_back();
        check_mpi(MPI_Isend(&mine, 1, MPI_LONG_LONG, r, tag, MPI_COMM_WORLD, &send.back()), "MPI_Isend");
    }
    const auto start = std::chrono::steady_clock::now();
    auto pause = std::chrono::microseconds(50);
    for (;;) {
        int all = 1;
        for (int r = 0; r < size_; r++) {
            if (recv[r] == MPI_REQUEST_NULL) continue;
            int done = 0;
            check_mpi(MPI_Test(&recv[r], &done, MPI_STATUS_IGNORE), "MPI_Test");
            all &= done;
        }
        int sent = 1;
        if (!send.empty()) check_mpi(MPI_Testall((int)send.size(), send.data(), &sent, MPI_STATUSES_IGNORE), "MPI_Testall");
        if (all && sent) return "";
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > wait_s) break;
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(2000));
    }
    std::string missing;
    for (int r = 0; r < size_; r++) {
        if (recv[r] == MPI_REQUEST_NULL) continue;
        missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        MPI_Cancel(&recv[r]);
        MPI_Request_free(&recv[r]);
    }
    return missing.empty() ? "?" : missing;  // "?": every rank answered, but a send is stuck (a peer stopped receiving)
}

namespace {
std::string ranks_named(const std::string& list) {
    return (list.find(',') == std::string::npos ? "rank " : "ranks ") + list;
}
}  // namespace

void Communicator::arrive(const std::string& what) {
    if (failed_) throw EngineError("cannot run " + what + ": " + failure_);
    if (finished_) throw EngineError("cannot run " + what + ": the MPI world has been finalized");
    seq_++;
    if (size_ == 1) return;
    // MPI guarantees tags up to at least 32767; collectives run in order, so
    // a tag that wraps around cannot meet a message of its own turn.
    const std::string missing = hear_from_all((int)(seq_ % 32767), timeout_s_);
    if (missing.empty()) return;
    fail(ranks_named(missing) + " did not reach " + what + " within " + seconds(timeout_s_) + " (rank " +
         std::to_string(rank_) + " of " + std::to_string(size_) + " on " + host_ +
         " waited): a rank died, hung or fell behind; stopping (raise the timeout with --ddp-timeout if a rank is "
         "only slow)");
}

template <typename T>
void Communicator::allreduce(T* data, size_t n, const std::string& what) {
    arrive(what);
    if (size_ == 1) return;
    // Non-blocking, polled against the deadline: a rank that arrived and then
    // stopped (killed or frozen mid-collective) must not hang the others in
    // MPI_Allreduce. (Measured on 2 ranks of one machine, 91 MB: the blocking
    // call is ~25 ms faster alone, and no faster within a MiniLM training step.)
    const auto start = std::chrono::steady_clock::now();
    for (size_t off = 0; off < n; off += kBucket) {
        const int count = (int)std::min(kBucket, n - off);
        MPI_Request req = MPI_REQUEST_NULL;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, data + off, count, mpi_type<T>(), MPI_SUM, MPI_COMM_WORLD, &req);
        settle(wait_request(req, rc, start, timeout_s_), rc, "MPI_Iallreduce", what);
    }
}

void Communicator::allreduce_sum(float* data, size_t n, const std::string& what) { allreduce(data, n, what); }
void Communicator::allreduce_sum(double* data, size_t n, const std::string& what) { allreduce(data, n, what); }

void Communicator::broadcast(void* data, size_t bytes, int root, const std::string& what) {
    if (bytes > (size_t)INT_MAX) throw EngineError(what + ": " + std::to_string(bytes) + " bytes is more than one broadcast takes");
    if (root < 0 || root >= size_) throw EngineError(what + ": root rank " + std::to_string(root) + " is not in the world");
    arrive(what);
    if (size_ == 1) return;
    const auto start = std::chrono::steady_clock::now();
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibcast(data, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &req);
    settle(wait_request(req, rc, start, timeout_s_), rc, "MPI_Ibcast", what);
}

void Communicator::settle(bool in_time, int rc, const char* call, const std::string& what) {
    if (!in_time) stalled(what);
    if (rc != MPI_SUCCESS) fail(mpi_failure(rc, std::string(call) + " (" + what + ")"));
}

void Communicator::fail(const std::string& failure) {
    failed_ = true;
    failure_ = failure;
    throw EngineError(failure_);
}

void Communicator::stalled(const std::string& what) {
    // Every rank still running gets here at about the same time (its deadline
    // ran from the same arrival), so the one that does not answer a last probe
    // is the one that stopped. Tag 32767: above every arrival tag.
    std::string missing;
    try {
        missing = hear_from_all(32767, std::min(10.0, timeout_s_));
    } catch (const EngineError&) {
    }
    fail((missing.empty() || missing == "?" ? std::string("a rank") : ranks_named(missing)) + " stopped responding during " +
         what + ": every rank arrived, and it did not complete within " + seconds(timeout_s_) + " (rank " +
         std::to_string(rank_) + " of " + std::to_string(size_) + " on " + host_ + " waited); it died or hung; stopping");
}

void Communicator::finish(bool abort) {
    if (finished_) return;
    finished_ = true;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (failed_ || abort) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Finalize();
}

#else  // no MPI in this build

bool Communicator::available() { return false; }

Communicator& Communicator::world(double) {
    throw EngineError(
        "this nodetune addon was built without MPI: data-parallel training needs Open MPI "
        "(apt-get install libopenmpi-dev openmpi-bin, then rebuild with `npx cmake-js compile`)");
}
void Communicator::init(double) {}
void Communicator::set_timeout(double timeout_s) { timeout_s_ = timeout_s; }
void Communicator::arrive(const std::string&) {}
void Communicator::allreduce_sum(float*, size_t, const std::string& what) { throw EngineError(what + ": no MPI in this build"); }
void Communicator::allreduce_sum(double*, size_t, const std::string& what) { throw EngineError(what + ": no MPI in this build"); }
void Communicator::broadcast(void*, size_t, int, const std::string& what) { throw EngineError(what + ": no MPI in this build"); }
void Communicator::fail(const std::string& failure) { throw EngineError(failure); }
void Communicator::stalled(const std::string& what) { throw EngineError(what + " did not complete"); }
void Communicator::finish(bool) {}

#endif

}  // namespace nt
