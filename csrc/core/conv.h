// conv.h — geometry and im2col building blocks of conv2d, shared by its forward and
// backward (ops/conv.cpp) and by the sampled conv payloads (sampling/conv.cpp).
//
// Note [im2col rows]
//   conv2d is a GEMM over the im2col matrix X_col of shape (N*Ho*Wo, C*kh*kw): row
//   r = (n*Ho + oh)*Wo + ow holds the input patch under the kernel at output position
//   (n, oh, ow) (zeros where the patch hangs over the padding). Then
//       out[n, :, oh, ow] = W2 @ X_col[r]         (W2 = W reshaped to (O, C*kh*kw))
//       dW2 = sum_r  g_r ⊗ X_col[r]               (g_r = g[n, :, oh, ow], an O-vector)
//   dW is a sum over rows, i.e. over spatial positions. A sampling policy estimates it
//   from a subset of rows with per-row weights (1/(k q_r) for an unbiased estimate), so
//   the building blocks below take a RowSet instead of assuming all rows. The tape keeps
//   the input x, never X_col (kh*kw times larger); rows are rebuilt in backward.
#pragma once
#include "tensor.h"

namespace spad {

struct ConvGeom {
    int64_t N = 0, C = 0, H = 0, W = 0;      // input (N, C, H, W)
    int64_t O = 0, kh = 0, kw = 0;           // weight (O, C, kh, kw)
    int64_t sh = 1, sw = 1, ph = 0, pw = 0;  // stride, zero padding
    int64_t Ho = 0, Wo = 0;                  // output (N, O, Ho, Wo)
    int64_t rows() const { return N * Ho * Wo; }  // rows of X_col: one per output position
    int64_t cols() const { return C * kh * kw; }  // columns of X_col: one per weight of a filter
};

// Checks the shapes (errors name "conv2d" and the shapes) and derives the output size.
ConvGeom conv_geom(const Shape &x, const Shape &w, int64_t sh, int64_t sw, int64_t ph, int64_t pw);

// A subset of the rows of X_col with a weight per row. With idx == nullptr the rows are
// the range [first, first + count); with weight == nullptr every weight is 1. The
// pointers are borrowed: they must outlive the call they are passed to.
struct RowSet {
    const int64_t *idx = nullptr;
    const double *weight = nullptr;
    int64_t first = 0, count = 0;

    static RowSet range(int64_t first, int64_t count) {
        RowSet r;
        r.first = first;
        r.count = count;
        return r;
    }
    int64_t row(int64_t i) const { return idx ? idx[i] : first + i; }
    double w(int64_t i) const { return weight ? weight[i] : 1.0; }
    // Entries [i, i + n) of this set, as a set of their own.
    RowSet slice(int64_t i, int64_t n) const {
        RowSet r = *this;
        if (idx)
            r.idx = idx + i;
        else
            r.first = first + i;
        if (weight) r.weight = weight + i;
        r.count = n;
        return r;
    }
};

// The selected rows of X_col, unweighted: a (rows.count, C*kh*kw) tensor. x: (N, C, H, W).
Tensor im2col(const Tensor &x, const ConvGeom &g, const RowSet &rows);

// dW2 += sum_i rows.w(i) * g_{rows.row(i)} ⊗ cols[i], where cols holds those rows of X_col
// (as im2col returns them, or as a policy stored them). g: (N, O, Ho, Wo); dW2: a
// contiguous (O, C, kh, kw) tensor, accumulated into.
void add_weight_grad_from_cols(const Tensor &cols, const Tensor &g, const ConvGeom &geom, const RowSet &rows,
                               const Tensor &dW2);

// dW as above with X_col rows rebuilt from x chunk by chunk (bounded scratch memory).
// With rows = all rows and unit weights this is the exact dW.
Tensor conv_weight_grad_rows(const Tensor &x, const Tensor &g, const ConvGeom &geom, const RowSet &rows);

}  // namespace spad
