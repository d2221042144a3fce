/* gemm_blocks_grid.c — the measurements behind gemm's column-block rule (Note [Column blocks
 * for OpenBLAS's small-matrix kernels] in csrc/core/gemm.cpp): for a grid of row-major
 * products C = op(A) @ op(B) (nn, tn as in dW = x^T g, nt as in dx = g W^T), one sgemm call
 * vs the same product as column blocks under OpenBLAS's small-kernel limits, with whether
 * spad's rule splits it. One thread, process CPU time, best of 3. Build against the OpenBLAS
 * spad links (the scipy-openblas32 wheel):
 *
 *   L=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir())")
 *   cc -O2 benchmarks/gemm_blocks_grid.c -o /tmp/grid -L$L -lscipy_openblas -Wl,-rpath,$L && /tmp/grid
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void scipy_cblas_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc);
void scipy_openblas_set_num_threads(int);
char *scipy_openblas_get_corename(void);

static float *A, *B, *C;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The widest block under the interface's limits (>= 16 columns), or N: the candidate split. */
static long candidate(int ta, int tb, long M, long N, long K) {
    long nb;
    if ((ta && tb) || N <= 32) return N;
    nb = 1000000L / (M * K);
    if (tb) {
        if (K < 32) return N;
        if (1200 / M < nb) nb = 1200 / M;
    } else if (M * N * K <= 1000000L) {
        return N;
    }
    nb = nb / 16 * 16;
    return nb >= 16 && nb < N ? nb : N;
}

/* spad's rule (csrc/core/gemm.cpp, blas_column_block): the candidate where it was measured to win. */
static long rule(int ta, int tb, long M, long N, long K) {
    long nb = candidate(ta, tb, M, N, K);
    if (nb == N) return N;
    if (tb) return (K < 128 && !(M <= 16 && K >= 64)) ? N : nb;
    return (nb < 32 || (N > 512 && nb < 240)) ? N : nb;
}

static void run(int ta, int tb, int M, int N, int K, long nb) {
    int lda = ta ? M : K, ldb = tb ? K : N, n0;
    for (n0 = 0; n0 < N; n0 += (int)nb) {
        int nn = N - n0 < nb ? N - n0 : (int)nb;
        scipy_cblas_sgemm(101, ta ? 112 : 111, tb ? 112 : 111, M, nn, K, 1.f, A, lda, tb ? B + (long)n0 * ldb : B + n0,
                          ldb, 0.f, C + n0, N);
    }
}

static double best_us(int ta, int tb, int M, int N, int K, long nb) {
    int reps = (int)(2e8 / (2.0 * M * N * K)) + 3, i, r;
    double best = 1e30;
    for (i = 0; i < reps / 10 + 2; ++i) run(ta, tb, M, N, K, nb);
    for (r = 0; r < 3; ++r) {
        double t = now(), us;
        for (i = 0; i < reps; ++i) run(ta, tb, M, N, K, nb);
        us = (now() - t) / reps * 1e6;
        if (us < best) best = us;
    }
    return best;
}

int main(void) {
    static const int Ms[] = {1, 4, 16, 32, 64, 128, 256, 1024}, Ks[] = {10, 32, 64, 256, 784, 1024},
                     Ns[] = {10, 64, 256, 1024};
    static const char *names[] = {"nn", "tn", "nt"};
    static const int TA[] = {0, 1, 0}, TB[] = {0, 0, 1};
    int l, a, b, c, i, splits = 0, wins = 0, kept = 0, avoided = 0;
    scipy_openblas_set_num_threads(1);
    A = malloc(sizeof(float) << 22);
    B = malloc(sizeof(float) << 22);
    C = malloc(sizeof(float) << 22);
    for (i = 0; i < (1 << 22); ++i) {
        A[i] = rand() / (float)RAND_MAX - .5f;
        B[i] = rand() / (float)RAND_MAX - .5f;
    }
    printf("OpenBLAS core %s, one thread; best of 3, µs\n\n", scipy_openblas_get_corename());
    printf("| layout | M | K | N | block | one call | blocks | blocks / one call | spad splits |\n|---|---|---|---|---|---|---|---|---|\n");
    for (l = 0; l < 3; ++l)
        for (a = 0; a < 8; ++a)
            for (b = 0; b < 6; ++b)
                for (c = 0; c < 4; ++c) {
                    int M = Ms[a], K = Ks[b], N = Ns[c];
                    long nb = candidate(TA[l], TB[l], M, N, K);
                    double w, s;
                    int yes;
                    if (nb == N) continue;
                    w = best_us(TA[l], TB[l], M, N, K, N);
                    s = best_us(TA[l], TB[l], M, N, K, nb);
                    yes = rule(TA[l], TB[l], M, N, K) != N;
                    printf("| %s | %d | %d | %d | %ld | %.2f | %.2f | %.2f | %s |\n", names[l], M, K, N, nb, w, s, s / w,
                           yes ? "yes" : "no");
                    if (yes) splits++, wins += s < w;
                    else kept++, avoided += s >= w;
                }
    printf("\nspad splits %d shapes, faster in %d; leaves %d whole, of which blocks would be slower in %d\n", splits,
           wins, kept, avoided);
    return 0;
}
