// Convolution, pooling and dropout on NCHW tensors: forward kernel, backward rule and
// saved payload side by side.
//
// conv2d is im2col + GEMM (Note [im2col rows] in conv.h). Its saved input goes through
// pack_conv_input / sampled_conv_weight_grad (sampling/sampling.h), the place where a sampling policy may
// replace the exact input by a subset of spatial positions. Its backward runs kernels,
// not differentiable ops, so conv2d supports first derivatives only (create_graph
// through conv2d raises). Pooling and dropout backward rules stay differentiable.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../conv.h"
#include "../gemm.h"
#include "../ops.h"
#include "../rng.h"
#include "../sampling/sampling.h"

namespace spad {

// ---- im2col building blocks (conv.h) ------------------------------------------------
ConvGeom conv_geom(const Shape &x, const Shape &w, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    SPAD_CHECK(x.size() == 4, ValueError, "conv2d: input must be 4-D (N, C, H, W), got shape ", shape_str(x));
    SPAD_CHECK(w.size() == 4, ValueError, "conv2d: weight must be 4-D (C_out, C_in, kh, kw), got shape ",
               shape_str(w), " for input ", shape_str(x));
    SPAD_CHECK(x[1] == w[1], ValueError, "conv2d: input of shape ", shape_str(x), " has ", x[1],
               " channels but weight of shape ", shape_str(w), " expects ", w[1]);
    SPAD_CHECK(w[0] >= 1 && w[1] >= 1 && w[2] >= 1 && w[3] >= 1, ValueError, "conv2d: weight of shape ",
               shape_str(w), " has an empty dimension");
    SPAD_CHECK(sh >= 1 && sw >= 1, ValueError, "conv2d: stride must be >= 1, got (", sh, ", ", sw, ") for input ",
               shape_str(x));
    SPAD_CHECK(ph >= 0 && pw >= 0, ValueError, "conv2d: padding must be >= 0, got (", ph, ", ", pw,
               ") for input ", shape_str(x));
    // Padding beyond the kernel only adds output that sees zeros: bound it there (as a
    // model file must, see model_format.h), which also keeps H + 2p far from overflow.
    SPAD_CHECK(ph < w[2] && pw < w[3], ValueError, "conv2d: padding (", ph, ", ", pw,
               ") must be smaller than the kernel ", w[2], "x", w[3], " (input ", shape_str(x), ")");
    numel_of(x);
    numel_of(w);
    const int64_t Hp = checked_add(x[2], 2 * ph, "conv2d padded height"), Wp = checked_add(x[3], 2 * pw, "conv2d padded width");
    SPAD_CHECK(Hp >= w[2] && Wp >= w[3], ValueError, "conv2d: kernel ", w[2], "x", w[3],
               " is larger than the padded input ", Hp, "x", Wp, " (input ", shape_str(x),
               ", weight ", shape_str(w), ", padding (", ph, ", ", pw, "))");
    ConvGeom g;
    g.N = x[0];
    g.C = x[1];
    g.H = x[2];
    g.W = x[3];
    g.O = w[0];
    g.kh = w[2];
    g.kw = w[3];
    g.sh = sh;
    g.sw = sw;
    g.ph = ph;
    g.pw = pw;
    g.Ho = (Hp - g.kh) / sh + 1;
    g.Wo = (Wp - g.kw) / sw + 1;
    // The output, X_col and the weight's im2col width must all be addressable sizes.
    numel_of({g.N, g.O, g.Ho, g.Wo});
    checked_mul(checked_mul(g.N, g.Ho, "conv2d"), checked_mul(g.Wo, g.cols(), "conv2d"), "conv2d im2col");
    return g;
}

static void check_rows(const char *what, const ConvGeom &g, const RowSet &rows) {
    SPAD_CHECK(rows.count >= 0, ValueError, what, ": negative row count ", rows.count);
    const int64_t n = g.rows();
    for (int64_t i = 0; i < rows.count; ++i) {
        const int64_t r = rows.row(i);
        SPAD_CHECK(r >= 0 && r < n, ValueError, what, ": im2col row ", r, " is out of range for ", n,
                   " output positions (input (", g.N, ", ", g.C, ", ", g.H, ", ", g.W, "))");
    }
}

// The selected rows of X_col, row-major (rows.count, C*kh*kw): the general path, used
// for subsets of rows (sampling). Zero where the kernel hangs over the padding.
template <class T> static void im2col_kernel(const T *x, const ConvGeom &g, const RowSet &rows, T *out) {
    const int64_t P = g.Ho * g.Wo;
    for (int64_t i = 0; i < rows.count; ++i) {
        const int64_t r = rows.row(i);
        const int64_t n = r / P, p = r % P, oh = p / g.Wo, ow = p % g.Wo;
        const int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
        T *o = out + i * g.cols();
        for (int64_t c = 0; c < g.C; ++c) {
            const T *plane = x + (n * g.C + c) * g.H * g.W;
            for (int64_t a = 0; a < g.kh; ++a) {
                const int64_t h = h0 + a;
                for (int64_t b = 0; b < g.kw; ++b) {
                    const int64_t w = w0 + b;
                    *o++ = h >= 0 && h < g.H && w >= 0 && w < g.W ? plane[h * g.W + w] : T(0);
                }
            }
        }
    }
}

// The whole-image fast path (forward, dx and the exact dW): image n's patch matrix
// stored transposed, colT[j, p] with j the patch entry and p = oh*Wo + ow (Caffe's
// layout). Each (c, a, b) row of colT is a strided copy of input rows, so filling it is a
// few long loops instead of one short, branchy loop per output position.
//
// Output columns [lo, hi) whose input column ow*sw - pw + b lies inside [0, W).
static void inside_cols(const ConvGeom &g, int64_t b, int64_t &lo, int64_t &hi) {
    const int64_t last = g.W - 1 + g.pw - b;
    hi = last < 0 ? 0 : std::min(g.Wo, last / g.sw + 1);
    lo = std::min(hi, g.pw > b ? (g.pw - b + g.sw - 1) / g.sw : int64_t(0));
}

template <class T> static void im2col_image_T(const T *x, const ConvGeom &g, int64_t n, T *colT) {
    const int64_t P = g.Ho * g.Wo;
    for (int64_t c = 0; c < g.C; ++c)
        for (int64_t a = 0; a < g.kh; ++a)
            for (int64_t b = 0; b < g.kw; ++b) {
                T *row = colT + ((c * g.kh + a) * g.kw + b) * P;
                const T *plane = x + (n * g.C + c) * g.H * g.W;
                int64_t lo, hi;
                inside_cols(g, b, lo, hi);
                for (int64_t oh = 0; oh < g.Ho; ++oh) {
                    T *out = row + oh * g.Wo;
                    const int64_t h = oh * g.sh - g.ph + a;
                    if (h < 0 || h >= g.H) {
                        std::fill(out, out + g.Wo, T(0));
                        continue;
                    }
                    const T *in = plane + h * g.W;
                    std::fill(out, out + lo, T(0));
                    for (int64_t ow = lo; ow < hi; ++ow) out[ow] = in[ow * g.sw - g.pw + b];
                    std::fill(out + hi, out + g.Wo, T(0));
                }
            }
}

// dx[image n] += the adjoint of im2col_image_T applied to colT.
template <class T> static void col2im_image_T_add(const T *colT, const ConvGeom &g, int64_t n, T *dx) {
    const int64_t P = g.Ho * g.Wo;
    for (int64_t c = 0; c < g.C; ++c)
        for (int64_t a = 0; a < g.kh; ++a)
            for (int64_t b = 0; b < g.kw; ++b) {
                const T *row = colT + ((c * g.kh + a) * g.kw + b) * P;
                T *plane = dx + (n * g.C + c) * g.H * g.W;
                int64_t lo, hi;
                inside_cols(g, b, lo, hi);
                for (int64_t oh = 0; oh < g.Ho; ++oh) {
                    const int64_t h = oh * g.sh - g.ph + a;
                    if (h < 0 || h >= g.H) continue;
                    const T *src = row + oh * g.Wo;
                    T *in = plane + h * g.W;
                    for (int64_t ow = lo; ow < hi; ++ow) in[ow * g.sw - g.pw + b] += src[ow];
                }
            }
}

Tensor im2col(const Tensor &x_, const ConvGeom &g, const RowSet &rows) {
    SPAD_CHECK(x_->shape == Shape({g.N, g.C, g.H, g.W}), ValueError, "im2col: input of shape ",
               shape_str(x_->shape), " does not match the convolution's input (", g.N, ", ", g.C, ", ", g.H, ", ",
               g.W, ")");
    check_rows("im2col", g, rows);
    Tensor x = contiguous(x_);
    Tensor out = empty({rows.count, g.cols()}, x->dtype);
    SPAD_FLOAT(x->dtype, T, im2col_kernel(x->data<T>(), g, rows, out->data<T>()));
    return out;
}

void add_weight_grad_from_cols(const Tensor &cols_, const Tensor &g_, const ConvGeom &geom, const RowSet &rows,
                               const Tensor &dW) {
    const int64_t K = geom.cols(), O = geom.O, P = geom.Ho * geom.Wo;
    SPAD_CHECK(cols_->shape == Shape({rows.count, K}), ValueError, "conv2d weight grad: rows of shape ",
               shape_str(cols_->shape), " do not match ", rows.count, " rows of ", K, " patch entries");
    SPAD_CHECK(g_->shape == Shape({geom.N, O, geom.Ho, geom.Wo}), ValueError, "conv2d weight grad: gradient of shape ",
               shape_str(g_->shape), " does not match the output (", geom.N, ", ", O, ", ", geom.Ho, ", ", geom.Wo,
               ")");
    SPAD_CHECK(dW->is_contiguous() && dW->numel() == O * K && dW->dtype == g_->dtype && cols_->dtype == g_->dtype,
               ValueError, "conv2d weight grad: accumulator of shape ", shape_str(dW->shape), " (",
               dtype_name(dW->dtype), ") does not match a contiguous (", O, ", ", K, ") ", dtype_name(g_->dtype),
               " weight gradient");
    check_rows("conv2d weight grad", geom, rows);
    if (rows.count == 0) return;
    Tensor cols = contiguous(cols_), g = contiguous(g_);
    SPAD_FLOAT(g->dtype, T, {
        // Gather the weighted output-gradient rows g_r (one O-vector per selected row) so
        // that the sum over rows becomes one GEMM: dW2 += Gsel^T @ cols.
        std::vector<T> gsel((size_t)(rows.count * O));
        const T *pg = g->data<T>();
        for (int64_t i = 0; i < rows.count; ++i) {
            const int64_t r = rows.row(i), n = r / P, p = r % P;
            const T wi = (T)rows.w(i);
            for (int64_t o = 0; o < O; ++o) gsel[i * O + o] = wi * pg[(n * O + o) * P + p];
        }
        gemm(true, false, O, K, rows.count, T(1), gsel.data(), O, cols->data<T>(), K, T(1), dW->data<T>(), K);
    });
}

Tensor conv_weight_grad_rows(const Tensor &x_, const Tensor &g_, const ConvGeom &geom, const RowSet &rows) {
    Tensor x = contiguous(x_);
    Tensor dW = zeros({geom.O, geom.C, geom.kh, geom.kw}, x->dtype);
    const int64_t K = std::max<int64_t>(geom.cols(), 1), P = geom.Ho * geom.Wo;
    if (!rows.idx && !rows.weight && rows.first == 0 && rows.count == geom.rows()) {
        // Every row with weight 1 (the exact gradient): dW2 += g_n @ colT_n^T per image.
        SPAD_CHECK(g_->shape == Shape({geom.N, geom.O, geom.Ho, geom.Wo}), ValueError,
                   "conv2d weight grad: gradient of shape ", shape_str(g_->shape), " does not match the output (",
                   geom.N, ", ", geom.O, ", ", geom.Ho, ", ", geom.Wo, ")");
        Tensor g = contiguous(g_);
        SPAD_FLOAT(x->dtype, T, {
            std::vector<T> colT((size_t)(K * P));
            for (int64_t n = 0; n < geom.N; ++n) {
                im2col_image_T(x->data<T>(), geom, n, colT.data());
                gemm(false, true, geom.O, geom.cols(), P, T(1), g->data<T>() + n * geom.O * P, P, colT.data(), P,
                     T(1), dW->data<T>(), geom.cols());
            }
        });
        return dW;
    }
    // A subset: rebuild its X_col rows in chunks of about 1M entries, so backward never
    // holds a large patch matrix.
    const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 20) / K);
    for (int64_t i = 0; i < rows.count; i += chunk) {
        RowSet part = rows.slice(i, std::min(chunk, rows.count - i));
        add_weight_grad_from_cols(im2col(x, geom, part), g_, geom, part, dW);
    }
    return dW;
}

// ---- conv2d ---------------------------------------------------------------------------
namespace ops {

Tensor conv2d(const Tensor &x, const Tensor &w, const Tensor &b, std::array<int64_t, 2> stride,
              std::array<int64_t, 2> padding) {
    check_same_dtype("conv2d", x, w);
    const ConvGeom g = conv_geom(x->shape, w->shape, stride[0], stride[1], padding[0], padding[1]);
    if (b) {
        check_same_dtype("conv2d", x, b);
        SPAD_CHECK(b->ndim() == 1 && b->shape[0] == g.O, ValueError, "conv2d: bias of shape ", shape_str(b->shape),
                   " does not match weight of shape ", shape_str(w->shape), " (expected (", g.O, ",))");
    }
    const int64_t P = g.Ho * g.Wo, K = g.cols(), O = g.O;
    Tensor xc = contiguous(x), wc = contiguous(w), bc = b ? contiguous(b) : Tensor();
    Tensor out = empty({g.N, O, g.Ho, g.Wo}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        // One image at a time: W2 (O, K) @ colT (K, P) lands directly in NCHW.
        std::vector<T> colT((size_t)(K * P));
        const T *pw = wc->data<T>();
        for (int64_t n = 0; n < g.N; ++n) {
            im2col_image_T(xc->data<T>(), g, n, colT.data());
            T *o = out->data<T>() + n * O * P;
            if (bc)
                for (int64_t c = 0; c < O; ++c) std::fill(o + c * P, o + (c + 1) * P, bc->data<T>()[c]);
            gemm(false, false, O, P, K, T(1), pw, K, colT.data(), P, bc ? T(1) : T(0), o, P);
        }
    });
    std::shared_ptr<Node> node = b ? make_node(OpKind::CONV2D, {&x, &w, &b}) : make_node(OpKind::CONV2D, {&x, &w});
    if (node) {
        node->at.ints = {g.sh, g.sw, g.ph, g.pw};
        if (node->needs(1)) pack_conv_input(*node, node->saved[0], x, w, g);
        if (node->needs(0)) node->saved[1].pack_exact(w);
    }
    attach(out, node);
    return out;
}

// dx = col2im(W2^T @ g_n), one image at a time.
static Tensor conv_input_grad(const Tensor &g, const Tensor &w, const ConvGeom &geom) {
    const int64_t P = geom.Ho * geom.Wo, K = geom.cols(), O = geom.O;
    Tensor dx = zeros({geom.N, geom.C, geom.H, geom.W}, g->dtype);
    SPAD_FLOAT(g->dtype, T, {
        std::vector<T> dcolT((size_t)(K * P));
        for (int64_t n = 0; n < geom.N; ++n) {
            gemm(true, false, K, P, O, T(1), w->data<T>(), K, g->data<T>() + n * O * P, P, T(0), dcolT.data(), P);
            col2im_image_T_add(dcolT.data(), geom, n, dx->data<T>());
        }
    });
    return dx;
}

}  // namespace ops
using namespace ops;
void backward_CONV2D(Node &n, const Tensor &g_, Tensor *gin) {
    // The rule below runs kernels, so a recorded (create_graph) backward would return
    // gradients with no history and second derivatives would silently be zero.
    SPAD_CHECK(!grad_enabled(), RuntimeError,
               "conv2d: double backward (create_graph=True) through conv2d is not supported; use a finite-difference "
               "Hessian-vector product (method=\"fd\") for models with convolutions");
    const std::vector<int64_t> &a = n.at.ints;
    const ConvGeom geom = conv_geom(n.in_shape[0], n.in_shape[1], a[0], a[1], a[2], a[3]);
    Tensor g = contiguous(g_);
    if (n.needs(0)) gin[0] = conv_input_grad(g, contiguous(n.saved[1].get("conv2d")), geom);
    if (n.needs(1)) {
        const SavedTensor &slot = n.saved[0];
        if (is_sampled(slot)) {
            gin[1] = sampled_conv_weight_grad(n, slot, g, geom);
        } else {
            const Tensor &x = slot.get("conv2d");
            note_read(slot);
            gin[1] = conv_weight_grad_rows(x, g, geom, RowSet::range(0, geom.rows()));
        }
    }
    if (n.needs(2)) gin[2] = sum(g, {0, 2, 3}, false);
}
namespace ops {

// ---- pooling: kernel k, stride k, no padding; trailing rows/columns that do not fill a
// window are dropped (PyTorch's floor mode) -------------------------------------------
static void check_pool(const char *op, const Tensor &x, int64_t k) {
    check_same_dtype(op, x, x);
    SPAD_CHECK(x->ndim() == 4, ValueError, op, ": input must be 4-D (N, C, H, W), got shape ", shape_str(x->shape));
    SPAD_CHECK(k >= 1, ValueError, op, ": kernel size must be >= 1, got ", k, " for input ", shape_str(x->shape));
    SPAD_CHECK(x->shape[2] >= k && x->shape[3] >= k, ValueError, op, ": kernel size ", k,
               " is larger than the spatial size ", x->shape[2], "x", x->shape[3], " of input ", shape_str(x->shape));
}

Tensor max_pool2d(const Tensor &x, int64_t k) {
    check_pool("max_pool2d", x, k);
    // The tape keeps each maximum's position inside its k x k window, one byte per output
    // (an int64 flat offset would be 8): the window itself follows from the output position.
    SPAD_CHECK(k <= 16, ValueError, "max_pool2d: kernel size ", k, " is too large (k*k must be <= 256) for input ",
               shape_str(x->shape));
    const int64_t NC = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3], Ho = H / k, Wo = W / k;
    Tensor xc = contiguous(x);
    Tensor out = empty({x->shape[0], x->shape[1], Ho, Wo}, x->dtype);
    Tensor idx = empty(out->shape, DType::U8);
    uint8_t *pi = idx->data<uint8_t>();
    SPAD_FLOAT(x->dtype, T, {
        const T *px = xc->data<T>();
        T *o = out->data<T>();
        for (int64_t pl = 0; pl < NC; ++pl)
            for (int64_t oh = 0; oh < Ho; ++oh)
                for (int64_t ow = 0; ow < Wo; ++ow) {
                    int64_t best = pl * H * W + oh * k * W + ow * k, pos = 0;
                    for (int64_t a = 0; a < k; ++a)
                        for (int64_t b = 0; b < k; ++b) {
                            const int64_t at = pl * H * W + (oh * k + a) * W + ow * k + b;
                            // First maximum wins; a NaN wins over numbers (it propagates, as in numpy).
                            if (px[at] > px[best] || (std::isnan(px[at]) && !std::isnan(px[best]))) {
                                best = at;
                                pos = a * k + b;
                            }
                        }
                    const int64_t j = (pl * Ho + oh) * Wo + ow;
                    o[j] = px[best];
                    pi[j] = (uint8_t)pos;
                }
    });
    auto node = make_node(OpKind::MAX_POOL2D, {&x});
    if (node) {
        node->at.i0 = k;
        node->saved[0].pack_exact(idx, false, SaveKind::INDEX);
    }
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_MAX_POOL2D(Node &n, const Tensor &g, Tensor *gin) {
    const Tensor &idx = n.saved[0].get("max_pool2d");
    const Shape &xs = n.in_shape[0];
    const int64_t k = n.at.i0, H = xs[2], W = xs[3], Ho = H / k, Wo = W / k;
    // scatter_add (differentiable, its backward is take) wants int64 flat offsets: rebuild
    // them from the saved window positions in a temporary that lives only during this rule.
    Tensor wide = empty({idx->numel()}, DType::I64);
    const uint8_t *pi = idx->data<uint8_t>();
    int64_t *pw = wide->data<int64_t>();
    for (int64_t j = 0, e = idx->numel(); j < e; ++j) {
        const int64_t pl = j / (Ho * Wo), oh = j / Wo % Ho, ow = j % Wo, a = pi[j] / k, b = pi[j] % k;
        pw[j] = pl * H * W + (oh * k + a) * W + ow * k + b;
    }
    gin[0] = reshape(scatter_add(reshape(g, {-1}), wide, {numel_of(xs)}), xs);
}
namespace ops {

Tensor avg_pool2d(const Tensor &x, int64_t k) {
    check_pool("avg_pool2d", x, k);
    const int64_t NC = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3], Ho = H / k, Wo = W / k;
    Tensor xc = contiguous(x);
    Tensor out = empty({x->shape[0], x->shape[1], Ho, Wo}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = xc->data<T>();
        T *o = out->data<T>();
        const T inv = T(1) / T(k * k);
        for (int64_t pl = 0; pl < NC; ++pl)
            for (int64_t oh = 0; oh < Ho; ++oh)
                for (int64_t ow = 0; ow < Wo; ++ow) {
                    T s = 0;
                    for (int64_t a = 0; a < k; ++a)
                        for (int64_t b = 0; b < k; ++b) s += px[pl * H * W + (oh * k + a) * W + ow * k + b];
                    o[(pl * Ho + oh) * Wo + ow] = s * inv;
                }
    });
    auto node = make_node(OpKind::AVG_POOL2D, {&x});
    if (node) node->at.i0 = k;
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_AVG_POOL2D(Node &n, const Tensor &g_, Tensor *gin) {
    const Shape &xs = n.in_shape[0];
    const int64_t k = n.at.i0, N = xs[0], C = xs[1], H = xs[2], W = xs[3], Ho = H / k, Wo = W / k;
    const double inv = 1.0 / double(k * k);
    if (grad_enabled()) {
        // create_graph: spread g over each window with differentiable ops, then pad the
        // dropped trailing rows/columns with zeros.
        Tensor e = expand(reshape(g_, {N, C, Ho, 1, Wo, 1}), {N, C, Ho, k, Wo, k});
        Tensor d = reshape(mul_scalar(e, inv), {N, C, Ho * k, Wo * k});
        if (H > Ho * k) d = concat({d, zeros({N, C, H - Ho * k, Wo * k}, d->dtype)}, 2);
        if (W > Wo * k) d = concat({d, zeros({N, C, H, W - Wo * k}, d->dtype)}, 3);
        gin[0] = d;
        return;
    }
    Tensor g = contiguous(g_);
    Tensor dx = zeros(xs, g->dtype);
    SPAD_FLOAT(g->dtype, T, {
        const T *pg = g->data<T>();
        T *o = dx->data<T>();
        for (int64_t pl = 0; pl < N * C; ++pl)
            for (int64_t oh = 0; oh < Ho; ++oh)
                for (int64_t ow = 0; ow < Wo; ++ow) {
                    const T v = pg[(pl * Ho + oh) * Wo + ow] * T(inv);
                    for (int64_t a = 0; a < k; ++a)
                        for (int64_t b = 0; b < k; ++b) o[pl * H * W + (oh * k + a) * W + ow * k + b] = v;
                }
    });
    gin[0] = dx;
}
namespace ops {

// ---- dropout ---------------------------------------------------------------------------
// Inverted dropout: y = x * keep / (1 - p). The tape keeps only the RNG (seed, counter);
// backward regenerates the same keep mask bit for bit, so dropout costs no tape bytes.
// A stream of its own keeps dropout bits apart from sampler draws even for equal counters.
static constexpr uint32_t kDropoutStream = 0x44524f50u;  // "DROP"

template <class T> void dropout_kernel(const T *px, T *o, int64_t n, double p, uint64_t seed, uint64_t counter) {
    const T scale = T(1.0 / (1.0 - p));
    // Element i uses word i%4 of Philox block i/4, exactly as RandomStream::uniform(i),
    // but each block is computed once instead of four times.
    for (int64_t i0 = 0; i0 < n; i0 += 4) {
        const Philox blk(seed, counter + (uint64_t)(i0 >> 2), kDropoutStream);
        for (int64_t j = 0; j < 4 && i0 + j < n; ++j) {
            const double u = (blk.out[j] >> 8) * (1.0 / 16777216.0);
            o[i0 + j] = u >= p ? px[i0 + j] * scale : T(0);
        }
    }
}
template void dropout_kernel<float>(const float *, float *, int64_t, double, uint64_t, uint64_t);
template void dropout_kernel<double>(const double *, double *, int64_t, double, uint64_t, uint64_t);

uint64_t dropout_counter(int64_t n) { return next_counter(((uint64_t)n + 3) / 4); }

static Tensor dropout_apply(const Tensor &x, double p, uint64_t seed, uint64_t counter) {
    Tensor xc = contiguous(x);
    Tensor out = empty(x->shape, x->dtype);
    SPAD_FLOAT(x->dtype, T, { dropout_kernel<T>(xc->data<T>(), out->data<T>(), x->numel(), p, seed, counter); });
    auto node = make_node(OpKind::DROPOUT, {&x});
    if (node) {
        node->at.scalar = p;
        node->saved[0].pack_seed(seed, counter, x);
    }
    attach(out, node);
    return out;
}

Tensor dropout(const Tensor &x, double p, bool training) {
    check_same_dtype("dropout", x, x);
    SPAD_CHECK(p >= 0.0 && p < 1.0, ValueError, "dropout: p must be in [0, 1), got ", p, " for input ",
               shape_str(x->shape));
    if (!training || p == 0.0) return x;
    const uint64_t seed = rng_state().seed;
    const uint64_t counter = dropout_counter(x->numel());
    return dropout_apply(x, p, seed, counter);
}
}  // namespace ops
void backward_DROPOUT(Node &n, const Tensor &g, Tensor *gin) {
    const SavedTensor &s = n.saved[0];
    SPAD_CHECK(!s.released, RuntimeError, "dropout: trying to backward through the graph a second time; specify "
               "retain_graph=True if you need to");
    // The same mask and scale applied to g: dropout is linear, so this is also its own
    // differentiable backward under create_graph.
    gin[0] = dropout_apply(g, n.at.scalar, s.seed, s.counter);
}

}  // namespace spad
