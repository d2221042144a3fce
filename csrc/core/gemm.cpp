#include "gemm.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>
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
char *scipy_openblas_get_corename(void);
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

// Note [Column blocks for OpenBLAS's small-matrix kernels]
//   On its AVX-512 cores OpenBLAS has direct sgemm kernels that skip packing; its interface
//   takes them only below 1e6 multiply-adds (and, for the layout of our dx = g @ W^T, only
//   for outputs of at most 1200 elements). A training batch's products sit just above that:
//   the digits MLP's 32x256x256 runs at 80-90 GF/s packed and at 106-115 GF/s as column
//   blocks the small kernels take. So with one BLAS thread on such a core (the small kernels
//   are single-threaded; a threaded call is faster on two cores) gemm splits C's columns into
//   blocks under those limits. Every element of C is still one K-long product computed by one
//   call, so the split never mixes partial sums; which kernel computes it depends only on the
//   shape and the thread count, so results are reproducible run to run (a dx product may
//   differ in its last bits between one and several BLAS threads, as between BLAS builds).
//   Where the measured split loses, it is not made: blocks under 32 columns (nn/tn), K < 128
//   for dx (the small kernel's dot products are short), and wide outputs (N > 512, rows
//   4 KiB apart and more) unless the blocks stay wide. Measured by
//   benchmarks/bench_gemm_blocks.py (spad's products with the split on and off) and
//   benchmarks/gemm_blocks_grid.c (the grid of raw calls the rule was drawn from; keep its
//   copy of the rule in step with blas_column_block). SPAD_GEMM_BLOCKS=0 in the environment
//   turns the split off.
static bool blas_small_kernels() {
    static const bool yes = [] {
        const char *off = std::getenv("SPAD_GEMM_BLOCKS");  // "0": one call per product (to measure)
        if (off && std::string(off) == "0") return false;
        const char *c = scipy_openblas_get_corename();
        std::string s = c ? c : "";
        for (char &ch : s) ch = (char)std::tolower((unsigned char)ch);
        return s == "skylakex" || s == "cooperlake" || s == "sapphirerapids";
    }();
    return yes;
}

// Columns per block for C = op(A) @ op(B) (row-major M x N, inner K), or N for no split.
static int64_t blas_column_block(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
    if ((ta && tb) || M <= 0 || K <= 0 || N <= 32) return N;
    int64_t nb = 1000000 / (M * K);
    if (tb) {  // the interface's transposed-A small kernel: at most 1200 outputs, K >= 32
        if (K < 128 && !(M <= 16 && K >= 64)) return N;
        nb = std::min<int64_t>(nb, 1200 / M);
        nb = nb / 16 * 16;
        return nb >= 16 && nb < N ? nb : N;
    }
    if (M * N * K <= 1000000) return N;  // the whole product already takes the small kernel
    nb = nb / 16 * 16;
    if (nb < 32 || nb >= N || (N > 512 && nb < 240)) return N;
    return nb;
}
#endif

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
          const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
#ifdef SPAD_CBLAS
    if (use_blas(M, N, K)) {
        const int64_t nb = blas_small_kernels() && scipy_openblas_get_num_threads() == 1
                               ? blas_column_block(ta, tb, M, N, K) : N;
        for (int64_t n0 = 0; n0 < N; n0 += nb) {  // op(B)'s columns n0.. are B's rows when tb
            const int64_t nn = std::min(nb, N - n0);
            scipy_cblas_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, (int)M, (int)nn, (int)K, alpha, A, (int)lda,
                              tb ? B + n0 * ldb : B + n0, (int)ldb, beta, C + n0, (int)ldc);
        }
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
