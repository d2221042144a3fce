// gemm.h — the one matrix-multiply entry point of the core.
//
// C[M,N] = alpha * op(A) @ op(B) + beta * C, row-major, leading dimensions in elements.
// The Python build defines SPAD_CBLAS (an OpenBLAS with prefixed symbols whose names do
// not clash with numpy's) and uses it above a size threshold; everything else, and the
// standalone build, runs the portable blocked kernel in gemm.cpp (no dependencies).
#pragma once
#include <cstdint>

namespace spad {

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
          const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A, int64_t lda,
          const double *B, int64_t ldb, double beta, double *C, int64_t ldc);

void set_num_threads(int n);  // BLAS threads (no-op for the portable kernel)
int get_num_threads();
const char *gemm_backend();

}  // namespace spad
