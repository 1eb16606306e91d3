// BERT embeddings (HF BertEmbeddings): word + absolute position + token type.
#include <omp.h>

#include <algorithm>

#include "cpu/kernels.h"

namespace nt {

template <typename T>
void embedding_forward(T* out, const int32_t* input_ids, const int32_t* token_type_ids,
                       const T* wte, const T* wpe, const T* wtt, int B, int Tn, int C) {
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * Tn; bt++) {
        const T* w = wte + (size_t)input_ids[bt] * C;
        const T* p = wpe + (size_t)(bt % Tn) * C;
        // HF defaults token_type_ids to zeros when absent.
        const T* tt = wtt + (size_t)(token_type_ids ? token_type_ids[bt] : 0) * C;
        T* o = out + (size_t)bt * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = w[c] + p[c] + tt[c];
    }
}

// Llama-family token embeddings (no position table: positions enter through RoPE).
template <typename T>
void token_embedding_forward(T* out, const int32_t* ids, const T* wte, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) std::copy(wte + (size_t)ids[n] * C, wte + (size_t)(ids[n] + 1) * C, out + (size_t)n * C);
}

// Each thread owns a contiguous channel range and walks every token in order,
// so repeated ids never race and the sum order does not depend on threads.
template <typename T>
void embedding_backward(T* dwte, T* dwpe, T* dwtt, const T* dout, const int32_t* input_ids,
                        const int32_t* token_type_ids, int B, int Tn, int C) {
#pragma omp parallel
    {
        const int nth = omp_get_num_threads(), tid = omp_get_thread_num();
        const int chunk = ((C + nth - 1) / nth + 15) / 16 * 16;  // whole cache lines
        const int c0 = std::min(C, tid * chunk), c1 = std::min(C, c0 + chunk);
        for (int bt = 0; bt < B * Tn && c0 < c1; bt++) {
            const T* d = dout + (size_t)bt * C;
            if (dwte) {
                T* g = dwte + (size_t)input_ids[bt] * C;
                for (int c = c0; c < c1; c++) g[c] += d[c];
            }
            if (dwpe) {
                T* g = dwpe + (size_t)(bt % Tn) * C;
                for (int c = c0; c < c1; c++) g[c] += d[c];
            }
            if (dwtt) {
                T* g = dwtt + (size_t)(token_type_ids ? token_type_ids[bt] : 0) * C;
                for (int c = c0; c < c1; c++) g[c] += d[c];
            }
        }
    }
}

#define NT_INSTANTIATE(T)                                                                     \
    template void token_embedding_forward<T>(T*, const int32_t*, const T*, int, int);         \
    template void embedding_forward<T>(T*, const int32_t*, const int32_t*, const T*, const T*, \
                                       const T*, int, int, int);                              \
    template void embedding_backward<T>(T*, T*, T*, const T*, const int32_t*, const int32_t*, \
                                        int, int, int);
NT_INSTANTIATE(float)
NT_INSTANTIATE(double)
#undef NT_INSTANTIATE

}  // namespace nt
