// reuse.h — writing an op's result into a buffer that nothing else will read again.
//
// Note [Buffer reuse]
//   A tensor's data may be overwritten by the op consuming it only when that op is provably
//   its last reader: the consumer's reference is the only one to the TensorImpl (no Python
//   object, numpy view, saved payload or other node holds it) and the only one to its
//   Storage (no view shares the bytes), the storage is spad's own allocation (a borrowed
//   numpy buffer is the user's data), and it is contiguous from offset 0. Callers that
//   hold one extra reference of their own say so with `extra`. A call from Python never
//   qualifies (the Python object holds a reference), so user-visible tensors are never
//   overwritten; chains run inside the core (ops::linear_chain, the reverse sweep, where
//   the tape owns each incoming gradient) do. The storage's version is bumped, so a payload
//   that somehow still referred to the old contents would refuse to unpack.
//
// Linear layers reuse across shapes: y = x W (+ b) row by row needs only row r of x for row r
// of y, so y can be computed a block of rows at a time into a small scratch buffer and
// copied over x's consumed rows, as long as a row of y is no wider than a row of x (and at
// least half as wide: a narrow result would pin the wide buffer). The same holds for
// dx = g W^T over g.
#pragma once
#include "tensor.h"

namespace spad {

// Is `t` reusable in place (Note [Buffer reuse])? `extra` = references the caller itself
// holds besides the one it is consuming.
bool reusable(const Tensor &t, long extra = 0);

// dst_rows(r) = src(r) @ op(W) + bias for r in [0, R), where src (R x K) and dst (R x N)
// share one contiguous buffer starting at `buf` and N <= K. W is (K x N) when !tw, else
// stored (N x K); ldw its leading dimension. bias (N) may be null. Scratch is one block.
void gemm_rows_in_place(DType dt, void *buf, int64_t R, int64_t K, int64_t N, const void *W, bool tw, int64_t ldw,
                        const void *bias);

}  // namespace spad
