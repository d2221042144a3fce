// kernels.h — the hot loops of sampled backprop, compiled for several instruction sets and
// chosen at run time (Note [Kernel dispatch] in kernels.cpp). Plain pointers and sizes: no
// tensors, no tape; the callers in sampling/ own every buffer.
#pragma once
#include <cstdint>
#include <vector>

namespace spad {
namespace kern {

// The instruction set the kernels run with: "baseline", "avx", "avx2" or "avx512".
const char *isa();
// Those this build and this CPU can run, best last; and the same comma-separated (messages).
const std::vector<const char *> &isa_list();
const char *available_isas();
// Choose one of available_isas() (for tests and benchmarks; the default is the best).
// Returns false, changing nothing, for any other name.
bool set_isa(const char *name);

// The row tile of fold_block's value layout under the chosen instruction set.
int tile_rows();

// dW[i,:] = sum_{o in [start[i], start[i+1])} v[o] * g[ex[o], :] (n x m); g's rows are ld
// apart, ld a multiple of 16 floats / 8 doubles, readable up to ld columns.
void fold_features(float *dW, int64_t n, int64_t m, const float *g, int64_t ld, const int32_t *start,
                   const int32_t *ex, const float *v);
void fold_features(double *dW, int64_t n, int64_t m, const double *g, int64_t ld, const int32_t *start,
                   const int32_t *ex, const double *v);
// dW[0:rows, :] = sum_o v_o (x) g[goff[o] : goff[o] + m]; vs in tiles of tile_rows() rows:
// vs[(t*cnt + o)*tile_rows() + r] is row t*tile_rows() + r of entry o, zero past `rows`.
void fold_block(float *dW, int64_t m, int64_t rows, const float *g, const int64_t *goff, const float *vs,
                int32_t cnt);
void fold_block(double *dW, int64_t m, int64_t rows, const double *g, const int64_t *goff, const double *vs,
                int32_t cnt);
// The nonzero values of x[0:n] (NaN included) and their indices, in order; their count.
// nzv and nzi hold n + 16 values.
int64_t compress_nonzero(const float *x, int64_t n, float *nzv, int32_t *nzi);
int64_t compress_nonzero(const double *x, int64_t n, double *nzv, int32_t *nzi);
// mass[i] = sum_{j <= i} |xv[j]| in double; returns the total (0 for nn = 0).
double prefix_abs(const float *xv, int64_t nn, double *mass);
double prefix_abs(const double *xv, int64_t nn, double *mass);
// Systematic-draw counts: upto[0] = 0, upto[i+1] = min(ceil(mass[i]*inv_step - u), k+1);
// pair[2i] = pair[2i+1] = ±(nzi[i]+1) with the sign of xv[i]. Returns max_i upto[i+1]-upto[i].
int32_t draw_counts(const double *mass, const float *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,
                    int64_t k, int32_t *upto, int16_t *pair);
int32_t draw_counts(const double *mass, const float *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,
                    int64_t k, int32_t *upto, int32_t *pair);
int32_t draw_counts(const double *mass, const double *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,
                    int64_t k, int32_t *upto, int16_t *pair);
int32_t draw_counts(const double *mass, const double *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,
                    int64_t k, int32_t *upto, int32_t *pair);
// dW (n x m) = sum_b sum_t sign(c) * scale_b[b] * g[b, :] into row |c|-1 for the k codes c of
// example b (an example whose first code is 0 is skipped). Overwrites dW.
void add_code_rows(float *dW, int64_t n, int64_t m, const float *g, const int16_t *codes, const float *scale_b,
                   int64_t B, int64_t k);
void add_code_rows(float *dW, int64_t n, int64_t m, const float *g, const int32_t *codes, const float *scale_b,
                   int64_t B, int64_t k);
void add_code_rows(double *dW, int64_t n, int64_t m, const double *g, const int16_t *codes, const double *scale_b,
                   int64_t B, int64_t k);
void add_code_rows(double *dW, int64_t n, int64_t m, const double *g, const int32_t *codes, const double *scale_b,
                   int64_t B, int64_t k);

}  // namespace kern
}  // namespace spad
