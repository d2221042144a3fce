#include "reuse.h"

#include <algorithm>
#include <cstring>

#include "gemm.h"
#include "replay/alloc_hook.h"

namespace spad {

bool reusable(const Tensor &t, long extra) {
    if (!t || !t->storage) return false;
    // A compiled step (recorded or replayed through its plan) allocates exactly the buffers it
    // traced: reuse depends on who holds references, which differs between the recording (Python
    // names) and the replay (slots), so a reused buffer would shift the planned allocation order
    // and drop the plan. The plan's liveness arena already reuses memory across the step.
    if (replay::t_storage_hook) return false;
    const Storage &s = *t->storage;
    return t.use_count() == 1 + extra && t->storage.use_count() == 1 && s.counted && s.tape_refs.load() == 0 &&
           !s.is_param && s.category == MemCategory::OTHER && t->offset == 0 && t->is_contiguous();
}

void gemm_rows_in_place(DType dt, void *buf, int64_t R, int64_t K, int64_t N, const void *W, bool tw, int64_t ldw,
                        const void *bias) {
    SPAD_CHECK(N <= K, RuntimeError, "gemm_rows_in_place: output rows (", N, ") wider than input rows (", K, ")");
    // At most 1 MiB and an eighth of the output, but 32 rows when there are that many:
    // small next to the activation it replaces, large enough for GEMM efficiency.
    const int64_t cap = std::max<int64_t>(1, (int64_t)(1 << 18) / std::max<int64_t>(N, 1));
    const int64_t block = std::max<int64_t>(std::min<int64_t>(cap, (R + 7) / 8), std::min<int64_t>(R, 32));
    SPAD_FLOAT(dt, T, {
        T *p = static_cast<T *>(buf);
        const T *w = static_cast<const T *>(W);
        const T *b = static_cast<const T *>(bias);
        Tensor scratch = empty({std::min(block, R), N}, dt);
        T *sc = scratch->data<T>();
        for (int64_t r0 = 0; r0 < R; r0 += block) {
            const int64_t rows = std::min(block, R - r0);
            T beta = 0;
            if (b) {
                for (int64_t r = 0; r < rows; ++r) std::copy(b, b + N, sc + r * N);
                beta = 1;
            }
            gemm(false, tw, rows, N, K, T(1), p + r0 * K, K, w, ldw, beta, sc, N);
            // Rows [r0, r0 + rows) of the input are consumed; their output goes at or below them.
            std::memmove(p + r0 * N, sc, (size_t)(rows * N) * sizeof(T));
        }
    });
}

}  // namespace spad
