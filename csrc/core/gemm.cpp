#include "gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef SPAD_CBLAS
// Declared by hand (not via cblas.h) so the core compiles without any BLAS headers.
extern "C" {
void scipy_cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc);
void scipy_cblas_dgemm(int order, int ta, int tb, int M, int N, int K, double alpha, const double *A, int lda,
                       const double *B, int ldb, double beta, double *C, int ldc);
void scipy_openblas_set_num_threads(int n);
int scipy_openblas_get_num_threads(void);
}
#endif

namespace spad {

// Portable kernel: pack op(A) and op(B) row-major, then an i-k-j loop over cache blocks
// whose inner loop (a row of B into a row of C) the compiler vectorizes.
template <class T>
static void gemm_portable(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T *A, int64_t lda,
                          const T *B, int64_t ldb, T beta, T *C, int64_t ldc) {
    for (int64_t i = 0; i < M; ++i) {
        T *c = C + i * ldc;
        if (beta == T(0))
            std::fill(c, c + N, T(0));
        else if (beta != T(1))
            for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
    if (M == 0 || N == 0 || K == 0) return;
    std::vector<T> bt;
    if (tb) {  // B is stored N x K; make it K x N
        bt.resize((size_t)K * N);
        for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) bt[k * N + n] = B[n * ldb + k];
        B = bt.data();
        ldb = N;
    }
    const int64_t KB = 256, NB = 512;
    for (int64_t k0 = 0; k0 < K; k0 += KB) {
        const int64_t k1 = std::min(K, k0 + KB);
        for (int64_t n0 = 0; n0 < N; n0 += NB) {
            const int64_t n1 = std::min(N, n0 + NB);
            for (int64_t i = 0; i < M; ++i) {
                T *c = C + i * ldc;
                for (int64_t k = k0; k < k1; ++k) {
                    const T a = alpha * (ta ? A[k * lda + i] : A[i * lda + k]);
                    if (a == T(0)) continue;
                    const T *b = B + k * ldb;
                    for (int64_t j = n0; j < n1; ++j) c[j] += a * b[j];
                }
            }
        }
    }
}

#ifdef SPAD_CBLAS
// Below this many multiply-adds a BLAS call's fixed cost dominates (measured in
// benchmarks/bench_ops.py); the portable kernel is faster for tiny layers.
static const int64_t kBlasMin = 4096;
static bool use_blas(int64_t M, int64_t N, int64_t K) {
    return M * N * K >= kBlasMin && M < (1LL << 31) && N < (1LL << 31) && K < (1LL << 31);
}
#endif

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
          const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
#ifdef SPAD_CBLAS
    if (use_blas(M, N, K)) {
        scipy_cblas_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                          (int)ldb, beta, C, (int)ldc);
        return;
    }
#endif
    gemm_portable(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A, int64_t lda,
          const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
#ifdef SPAD_CBLAS
    if (use_blas(M, N, K)) {
        scipy_cblas_dgemm(101, ta ? 112 : 111, tb ? 112 : 111, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                          (int)ldb, beta, C, (int)ldc);
        return;
    }
#endif
    gemm_portable(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

#ifdef SPAD_CBLAS
void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
int get_num_threads() { return scipy_openblas_get_num_threads(); }
const char *gemm_backend() { return "openblas (scipy-openblas32)"; }
#else
void set_num_threads(int) {}
int get_num_threads() { return 1; }
const char *gemm_backend() { return "portable"; }
#endif

}  // namespace spad
