// BERT embeddings (HF BertEmbeddings): word + absolute position + token type.
// Forward: one thread per (token, channel). Backward: dwpe by a thread per
// (position, channel) summing over the batch in order; dwte/dwtt either by
// atomicAdd (embedding_backward) or by id buckets sorted on the host
// (embedding_backward_sorted, deterministic). The decoder's token embedding
// (no positions, no types) is a gather of one row per token.
#include <string>

#include "cuda/common.cuh"

namespace nt {
namespace cuda {

using detail::from_f;
using detail::to_f;

namespace {
constexpr int kThreads = 256;

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const int32_t* types,
                                         const T* wte, const T* wpe, const T* wtt, int N,
                                         int Tn, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    const int bt = (int)(i / C), c = (int)(i % C);
    const int t = bt % Tn;
    const int tt = types ? types[bt] : 0;
    // Sum in the CPU's order: (word + position) + type.
    const float v = to_f(wte[(size_t)ids[bt] * C + c]) + to_f(wpe[(size_t)t * C + c]);
    out[i] = from_f<T>(v + to_f(wtt[(size_t)tt * C + c]));
}

// out(N,C) = wte[ids]: one thread per (token, channel), a row's threads read
// one contiguous row of wte.
template <typename T>
__global__ void token_embedding_forward_kernel(T* out, const int32_t* ids, const T* wte, int N,
                                               int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    const size_t n = i / C, c = i % C;
    out[i] = wte[(size_t)ids[n] * C + c];
}

template <typename T>
__global__ void position_backward_kernel(float* dwpe, const T* dout, int B, int Tn, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)Tn * C) return;
    float s = 0.f;
    for (int b = 0; b < B; b++) s += to_f(dout[(size_t)b * Tn * C + i]);
    dwpe[i] += s;
}

template <typename T>
__global__ void atomic_backward_kernel(float* dwte, float* dwtt, const T* dout,
                                       const int32_t* ids, const int32_t* types, int N, int C) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * C) return;
    const int bt = (int)(i / C), c = (int)(i % C);
    const float d = to_f(dout[i]);
    if (dwte) atomicAdd(dwte + (size_t)ids[bt] * C + c, d);
    if (dwtt) atomicAdd(dwtt + (size_t)(types ? types[bt] : 0) * C + c, d);
}

// Block s owns segment s (one distinct id): threads over channels, rows of
// the segment summed in token order, then one += per element of the row.
template <typename T>
__global__ void sorted_backward_kernel(float* dw, const T* dout, const int32_t* order,
                                       const int32_t* offsets, const int32_t* seg_ids, int C) {
    const int s = blockIdx.x;
    const int r0 = offsets[s], r1 = offsets[s + 1];
    float* row = dw + (size_t)seg_ids[s] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0.f;
        for (int r = r0; r < r1; r++) acc += to_f(dout[(size_t)order[r] * C + c]);
        row[c] += acc;
    }
}

template <typename T>
void position_backward(float* dwpe, const T* dout, int B, int Tn, int C, cudaStream_t stream) {
    if (!dwpe) return;
    const size_t n = (size_t)Tn * C;
    position_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(dwpe, dout, B, Tn, C);
    check_launch("embedding_backward(position)");
}

void check_shape(const char* k, int B, int Tn, int C) {
    detail::require(B >= 0 && Tn >= 0 && C >= 0, k,
                    "negative shape B=" + std::to_string(B) + " T=" + std::to_string(Tn) +
                        " C=" + std::to_string(C));
}
}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* input_ids, const int32_t* token_type_ids,
                       const T* wte, const T* wpe, const T* wtt, int B, int Tn, int C,
                       cudaStream_t stream) {
    check_shape("embedding_forward", B, Tn, C);
    const size_t n = (size_t)B * Tn * C;
    if (n == 0) return;
    embedding_forward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
        out, input_ids, token_type_ids, wte, wpe, wtt, B * Tn, Tn, C);
    check_launch("embedding_forward");
}

template <typename T>
void token_embedding_forward(T* out, const int32_t* ids, const T* wte, int N, int C,
                             cudaStream_t stream) {
    check_shape("token_embedding_forward", 1, N, C);
    const size_t n = (size_t)N * C;
    if (n == 0) return;
    token_embedding_forward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
        out, ids, wte, N, C);
    check_launch("token_embedding_forward");
}

template <typename T>
void embedding_backward(float* dwte, float* dwpe, float* dwtt, const T* dout,
                        const int32_t* input_ids, const int32_t* token_type_ids, int B, int Tn,
                        int C, cudaStream_t stream) {
    check_shape("embedding_backward", B, Tn, C);
    const size_t n = (size_t)B * Tn * C;
    if (n == 0) return;
    position_backward(dwpe, dout, B, Tn, C, stream);
    if (dwte || dwtt) {
        atomic_backward_kernel<T><<<detail::grid_for(n, kThreads), kThreads, 0, stream>>>(
            dwte, dwtt, dout, input_ids, token_type_ids, B * Tn, C);
        check_launch("embedding_backward(atomic)");
    }
}

IdBuckets make_id_buckets(const int32_t* ids, int N, int num_ids) {
    detail::require(N >= 0 && num_ids > 0, "make_id_buckets",
                    "N=" + std::to_string(N) + ", num_ids=" + std::to_string(num_ids));
    std::vector<int32_t> count((size_t)num_ids + 1, 0);
    for (int i = 0; i < N; i++) {
        const int32_t id = ids ? ids[i] : 0;
        if (id < 0 || id >= num_ids)
            throw std::invalid_argument("nt::cuda::make_id_buckets: ids[" + std::to_string(i) +
                                        "] = " + std::to_string(id) + ", expected 0.." +
                                        std::to_string(num_ids - 1));
        count[(size_t)id + 1]++;
    }
    // Counts -> starts (prefix sums); then place token indices stably.
    for (int v = 0; v < num_ids; v++) count[(size_t)v + 1] += count[(size_t)v];
    IdBuckets b;
    for (int v = 0; v < num_ids; v++) {
        if (count[(size_t)v + 1] == count[(size_t)v]) continue;
        b.ids.push_back(v);
        b.offsets.push_back(count[(size_t)v]);
    }
    b.offsets.push_back(N);
    b.order.assign((size_t)N, 0);
    std::vector<int32_t> next(count.begin(), count.end() - 1);
    for (int i = 0; i < N; i++) b.order[(size_t)next[(size_t)(ids ? ids[i] : 0)]++] = i;
    return b;
}

template <typename T>
void embedding_backward_sorted(float* dwte, float* dwpe, float* dwtt, const T* dout,
                               const DeviceBuckets& words, const DeviceBuckets& types, int B,
                               int Tn, int C, cudaStream_t stream) {
    check_shape("embedding_backward_sorted", B, Tn, C);
    if ((size_t)B * Tn * C == 0) return;
    position_backward(dwpe, dout, B, Tn, C, stream);
    const int threads = C >= 256 ? 256 : ((C + 31) / 32) * 32;
    if (dwte && words.num_segments > 0) {
        sorted_backward_kernel<T><<<words.num_segments, threads, 0, stream>>>(
            dwte, dout, words.order, words.offsets, words.ids, C);
        check_launch("embedding_backward_sorted(words)");
    }
    if (dwtt && types.num_segments > 0) {
        sorted_backward_kernel<T><<<types.num_segments, threads, 0, stream>>>(
            dwtt, dout, types.order, types.offsets, types.ids, C);
        check_launch("embedding_backward_sorted(types)");
    }
}

#define NT_INSTANTIATE(T)                                                                      \
    template void token_embedding_forward<T>(T*, const int32_t*, const T*, int, int,           \
                                             cudaStream_t);                                    \
    template void embedding_forward<T>(T*, const int32_t*, const int32_t*, const T*, const T*,  \
                                       const T*, int, int, int, cudaStream_t);                 \
    template void embedding_backward<T>(float*, float*, float*, const T*, const int32_t*,      \
                                        const int32_t*, int, int, int, cudaStream_t);          \
    template void embedding_backward_sorted<T>(float*, float*, float*, const T*,               \
                                               const DeviceBuckets&, const DeviceBuckets&, int, \
                                               int, int, cudaStream_t);
NT_INSTANTIATE(float)
NT_INSTANTIATE(bf16)
#undef NT_INSTANTIATE

}  // namespace cuda
}  // namespace nt
