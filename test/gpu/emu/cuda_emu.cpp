// The CPU emulator's runtime: fiber scheduler, barriers and warp shuffles,
// the CUDA runtime calls native/cuda and kernel_check use (memory is host
// memory), and a reference cuBLASLt (column-major GEMM in double) that
// validates every descriptor the way the library documents them.
#include <cublasLt.h>
#include <ucontext.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#define EMU_RUNTIME
#include "cuda_emu.h"

namespace emu {

Coords* current = nullptr;
uint3 g_blockIdx;
dim3 g_blockDim, g_gridDim;

namespace {
constexpr size_t kStack = 256 * 1024;

struct Fiber {
    ucontext_t ctx;
    Coords coords;
    bool done = false;
};
struct WarpBar {
    int count = 0;
    unsigned gen = 0;
    uint64_t slot[32];
};
struct BlockState {
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;
    ucontext_t sched;
    Fiber* cur = nullptr;
    int nthreads = 0;
    int bar_count = 0, bar_or = 0, bar_result = 0;
    unsigned bar_gen = 0;
    WarpBar warps[32];
};
BlockState* blk = nullptr;
const std::function<void()>* body = nullptr;
cudaError_t last_error = cudaSuccess;
unsigned long progress = 0;  // barrier openings and finished threads

void yield() { swapcontext(&blk->cur->ctx, &blk->sched); }

void trampoline() {
    (*body)();
    blk->cur->done = true;  // uc_link returns to the scheduler
    progress++;
}

int warp_size(int warp) {
    const int rest = blk->nthreads - warp * 32;
    return rest < 32 ? rest : 32;
}
}  // namespace

void record_launch_error(cudaError_t e) { last_error = e; }

void run_grid(const Cfg& cfg, const std::function<void()>& fn) {
    BlockState state;
    blk = &state;
    body = &fn;
    const int n = (int)(cfg.block.x * cfg.block.y * cfg.block.z);
    state.nthreads = n;
    state.fibers.resize(n);
    for (int i = 0; i < n; i++) state.stacks.emplace_back(new char[kStack]);
    g_blockDim = cfg.block;
    g_gridDim = cfg.grid;
    for (unsigned bz = 0; bz < cfg.grid.z; bz++)
        for (unsigned by = 0; by < cfg.grid.y; by++)
            for (unsigned bx = 0; bx < cfg.grid.x; bx++) {
                g_blockIdx = make_uint3(bx, by, bz);
                state.bar_count = state.bar_or = 0;
                for (auto& w : state.warps) w.count = 0;
                for (int i = 0; i < n; i++) {
                    Fiber& f = state.fibers[i];
                    f.done = false;
                    f.coords.threadIdx = make_uint3(i % cfg.block.x, (i / cfg.block.x) % cfg.block.y,
                                                    i / (cfg.block.x * cfg.block.y));
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = state.stacks[i].get();
                    f.ctx.uc_stack.ss_size = kStack;
                    f.ctx.uc_link = &state.sched;
                    makecontext(&f.ctx, trampoline, 0);
                }
                for (bool running = true; running;) {
                    running = false;
                    const unsigned long progress_before_pass = progress;
                    for (int i = 0; i < n; i++) {
                        Fiber& f = state.fibers[i];
                        if (f.done) continue;
                        state.cur = &f;
                        current = &f.coords;
                        swapcontext(&state.sched, &f.ctx);
                        running = running || !f.done;
                    }
                    // a full pass in which no barrier opened and no thread
                    // finished: some threads wait for others that exited
                    if (running && progress == progress_before_pass) {
                        std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u): a barrier or warp "
                                     "shuffle is not reached by every thread\n", bx, by, bz);
                        std::abort();
                    }
                }
            }
    blk = nullptr;
    current = nullptr;
}

int syncthreads_or(int pred) {
    BlockState& b = *blk;
    const unsigned gen = b.bar_gen;
    b.bar_or |= (pred != 0);
    if (++b.bar_count == b.nthreads) {
        b.bar_result = b.bar_or;
        b.bar_or = 0;
        b.bar_count = 0;
        b.bar_gen++;
        progress++;
    } else {
        while (b.bar_gen == gen) yield();
    }
    return b.bar_result;
}

namespace {
void warp_barrier(WarpBar& w, int size) {
    const unsigned gen = w.gen;
    if (++w.count == size) {
        w.count = 0;
        w.gen++;
        progress++;
    } else {
        while (w.gen == gen) yield();
    }
}
}  // namespace

void warp_sync() {
    const int warp = (int)current->threadIdx.x >> 5;  // 1-D blocks in native/cuda
    warp_barrier(blk->warps[warp], warp_size(warp));
}

void fault(const char* what) {
    std::fprintf(stderr, "emu: %s (block %u,%u,%u thread %u)\n", what, g_blockIdx.x, g_blockIdx.y,
                 g_blockIdx.z, current ? current->threadIdx.x : 0u);
    std::abort();
}

void warp_exchange(uint64_t value, int src_lane, uint64_t* out) {
    const int t = (int)current->threadIdx.x;  // 1-D blocks in native/cuda
    const int warp = t >> 5, lane = t & 31;
    WarpBar& w = blk->warps[warp];
    const int size = warp_size(warp);
    w.slot[lane] = value;
    warp_barrier(w, size);
    *out = w.slot[src_lane < size ? src_lane : lane];
    warp_barrier(w, size);
}

}  // namespace emu

// ---- CUDA runtime --------------------------------------------------------------
extern "C" {

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}
const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
    *v = 4;  // few "SMs": grid-stride loops get exercised
    return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t n) {
    *p = std::malloc(n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
    std::free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
    std::memmove(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t) {
    std::memmove(d, s, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void* d, int v, size_t n) {
    std::memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) {
    std::memset(d, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemset2DAsync(void* d, size_t pitch, int v, size_t w, size_t h, cudaStream_t) {
    for (size_t r = 0; r < h; r++) std::memset((char*)d + r * pitch, v, w);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int) {
    static int dummy;
    *s = reinterpret_cast<cudaStream_t>(&dummy);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
// The engine (native/cuda/engine_cuda.cu) also uses these.
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
    *free_b = *total_b = size_t(1) << 30;
    return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* d, size_t dpitch, const void* s, size_t spitch, size_t w, size_t h,
                              cudaMemcpyKind, cudaStream_t) {
    for (size_t r = 0; r < h; r++) std::memmove((char*)d + r * dpitch, (const char*)s + r * spitch, w);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t n) { return cudaMalloc(p, n); }
cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
// Events (bench/kernels_cuda.cpp times with them): launches run synchronously
// here, so recording the host clock gives the elapsed time of what ran between.
cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = reinterpret_cast<cudaEvent_t>(new std::chrono::steady_clock::time_point());
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    *reinterpret_cast<std::chrono::steady_clock::time_point*>(e) = std::chrono::steady_clock::now();
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t stop) {
    using tp = std::chrono::steady_clock::time_point;
    *ms = std::chrono::duration<float, std::milli>(*reinterpret_cast<tp*>(stop) - *reinterpret_cast<tp*>(start)).count();
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete reinterpret_cast<std::chrono::steady_clock::time_point*>(e);
    return cudaSuccess;
}

}  // extern "C"

// cudaGetDeviceProperties may be a macro for a versioned symbol.
extern "C" cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    std::memset(p, 0, sizeof(*p));
    std::strcpy(p->name, "CPU emulator");
    p->major = 9;
    p->multiProcessorCount = 4;
    p->totalGlobalMem = size_t(1) << 30;
    return cudaSuccess;
}

// ---- cuBLASLt -------------------------------------------------------------------
namespace {
struct Desc {
    int compute, scale, transa, transb, epilogue, bias_type;
    const void* bias;
};
struct Layout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
};
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "desc storage");
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout storage");
Desc& D(cublasLtMatmulDesc_t d) { return *reinterpret_cast<Desc*>(d); }
Layout& L(cublasLtMatrixLayout_t l) { return *reinterpret_cast<Layout*>(l); }

double load(int type, const void* p, size_t i) {
    if (type == CUDA_R_32F) return ((const float*)p)[i];
    if (type == CUDA_R_16BF) return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    throw std::runtime_error("emu cuBLASLt: unsupported type");
}
void store(int type, void* p, size_t i, double v) {
    if (type == CUDA_R_32F) ((float*)p)[i] = (float)v;
    else ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn((float)v);
}
bool bad(const char* what) {
    std::fprintf(stderr, "emu cuBLASLt: invalid value: %s\n", what);
    return true;
}
}  // namespace

extern "C" {
const char* cublasLtGetStatusName(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE"; }
const char* cublasLtGetStatusString(cublasStatus_t) { return "emulated"; }
cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
    static int dummy;
    *h = reinterpret_cast<cublasLtHandle_t>(&dummy);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t c, cudaDataType_t s) {
    *d = new cublasLtMatmulDescOpaque_t();
    D(*d) = Desc{(int)c, (int)s, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, -1, nullptr};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a,
                                              const void* buf, size_t size) {
    Desc& x = D(d);
    int32_t v = 0;
    if (size == 4) std::memcpy(&v, buf, 4);
    switch (a) {
        case CUBLASLT_MATMUL_DESC_TRANSA: x.transa = v; break;
        case CUBLASLT_MATMUL_DESC_TRANSB: x.transb = v; break;
        case CUBLASLT_MATMUL_DESC_EPILOGUE: x.epilogue = v; break;
        case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: x.bias_type = v; break;
        case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
            if (size != sizeof(void*)) return CUBLAS_STATUS_INVALID_VALUE;
            std::memcpy(&x.bias, buf, sizeof(void*));
            break;
        default: return CUBLAS_STATUS_INVALID_VALUE;
    }
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld) {
    if (ld < (int64_t)rows) return CUBLAS_STATUS_INVALID_VALUE;  // column-major: ld >= rows
    *l = new cublasLtMatrixLayoutOpaque_t();
    L(*l) = Layout{(int)t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
    *p = new cublasLtMatmulPreferenceOpaque_t();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t, cublasLtMatmulPreferenceAttributes_t,
                                                    const void*, size_t) {
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t* results, int* found) {
    if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
    // EMU_NO_BIAS_EPILOGUE=1: no algorithm with the bias epilogue (exercises Blas's fallback)
    if (D(desc).epilogue == CUBLASLT_EPILOGUE_BIAS && std::getenv("EMU_NO_BIAS_EPILOGUE")) {
        *found = 0;
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    std::memset(results, 0, sizeof(*results));
    *found = 1;
    return CUBLAS_STATUS_SUCCESS;
}
// D(m,n) = alpha op(A) op(B) + beta C (+ bias[i]), column-major, double accumulation.
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* Dp,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t*, void*, size_t,
                              cudaStream_t) {
    const Desc& d = D(desc);
    const Layout &a = L(Adesc), &b = L(Bdesc), &c = L(Cdesc), &dd = L(Ddesc);
    const uint64_t m = dd.rows, n = dd.cols;
    const bool ta = d.transa == CUBLAS_OP_T, tb = d.transb == CUBLAS_OP_T;
    const uint64_t k = ta ? a.rows : a.cols;
    if ((ta ? a.cols : a.rows) != m && bad("A rows != m")) return CUBLAS_STATUS_INVALID_VALUE;
    if ((tb ? b.cols : b.rows) != k && bad("B inner dim != k")) return CUBLAS_STATUS_INVALID_VALUE;
    if ((tb ? b.rows : b.cols) != n && bad("B cols != n")) return CUBLAS_STATUS_INVALID_VALUE;
    if ((c.rows != m || c.cols != n) && bad("C shape")) return CUBLAS_STATUS_INVALID_VALUE;
    if (a.type != b.type && bad("A/B types differ")) return CUBLAS_STATUS_INVALID_VALUE;
    if (d.scale != CUDA_R_32F && bad("scale type")) return CUBLAS_STATUS_INVALID_VALUE;
    const bool has_bias = d.epilogue == CUBLASLT_EPILOGUE_BIAS;
    if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && !has_bias && bad("epilogue")) return CUBLAS_STATUS_INVALID_VALUE;
    if (has_bias && (!d.bias || (d.bias_type != -1 && d.bias_type != dd.type)) && bad("bias")) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float*)alpha, be = *(const float*)beta;
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double s = 0;
            for (uint64_t p = 0; p < k; p++) {
                const double x = load(a.type, A, ta ? p + i * a.ld : i + p * a.ld);
                const double y = load(b.type, B, tb ? j + p * b.ld : p + j * b.ld);
                s += x * y;
            }
            double v = al * s;
            if (be != 0.f) v += be * load(c.type, C, i + j * c.ld);
            if (has_bias) v += load(dd.type, d.bias, i);
            store(dd.type, Dp, i + j * dd.ld, v);
        }
    return CUBLAS_STATUS_SUCCESS;
}
}  // extern "C"
