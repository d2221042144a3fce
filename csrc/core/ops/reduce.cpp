// Reductions (sum, mean, max) and the one place broadcasting is undone (sum_to).
#include <algorithm>
#include <limits>

#include "../ops.h"

namespace spad {
namespace ops {

int64_t norm_axis(const char *op, int64_t axis, int64_t ndim) {
    SPAD_CHECK(axis >= -ndim && axis < std::max<int64_t>(ndim, 1), ValueError, op, ": axis ", axis,
               " is out of bounds for a tensor of rank ", ndim);
    return axis < 0 ? axis + ndim : axis;
}

// Sorted, unique, normalized axes; empty input means all axes.
static std::vector<int64_t> norm_axes(const char *op, std::vector<int64_t> axes, int64_t ndim) {
    if (axes.empty()) {
        for (int64_t i = 0; i < ndim; ++i) axes.push_back(i);
        return axes;
    }
    for (int64_t &a : axes) a = norm_axis(op, a, ndim);
    std::sort(axes.begin(), axes.end());
    SPAD_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(), ValueError, op, ": repeated axis");
    return axes;
}

static Shape reduced_shape(const Shape &s, const std::vector<int64_t> &axes, bool keepdims) {
    Shape out;
    for (int64_t i = 0; i < (int64_t)s.size(); ++i) {
        bool red = std::binary_search(axes.begin(), axes.end(), i);
        if (!red)
            out.push_back(s[i]);
        else if (keepdims)
            out.push_back(1);
    }
    return out;
}

Tensor sum(const Tensor &x, std::vector<int64_t> axes_in, bool keepdims) {
    std::vector<int64_t> axes = norm_axes("sum", axes_in, x->ndim());
    Shape kshape = reduced_shape(x->shape, axes, true);
    Tensor out = zeros(kshape, x->dtype);
    Shape ostr = out->strides;
    for (int64_t a : axes) ostr[a] = 0;
    Shape zero(x->shape.size(), 0);
    SPAD_FLOAT(x->dtype, T, {
        T *o = out->data<T>();
        const T *p = x->data<T>();
        nd_runs(x->shape, ostr.data(), x->strides.data(), zero.data(),
                [&](int64_t oo, int64_t ao, int64_t, int64_t n, int64_t so, int64_t sa, int64_t) {
                    if (so == 0) {
                        double acc = 0;  // a run reduces into one output: accumulate in double
                        for (int64_t i = 0; i < n; ++i) acc += p[ao + i * sa];
                        o[oo] += (T)acc;
                    } else {
                        for (int64_t i = 0; i < n; ++i) o[oo + i * so] += p[ao + i * sa];
                    }
                });
    });
    if (!keepdims) out = view(out, reduced_shape(x->shape, axes, false),
                              contiguous_strides(reduced_shape(x->shape, axes, false)), 0);
    auto node = make_node(OpKind::SUM, {&x});
    if (node) {
        node->at.ints = axes;
        node->at.flag = keepdims;
    }
    attach(out, node);
    return out;
}
}  // namespace ops
using namespace ops;
void backward_SUM(Node &n, const Tensor &g, Tensor *gin) {
    Shape kshape = n.in_shape[0];
    for (int64_t a : n.at.ints) kshape[a] = 1;
    gin[0] = expand(reshape(g, kshape), n.in_shape[0]);
}
namespace ops {

Tensor mean(const Tensor &x, std::vector<int64_t> axes_in, bool keepdims) {
    std::vector<int64_t> axes = norm_axes("mean", axes_in, x->ndim());
    int64_t count = 1;
    for (int64_t a : axes) count *= x->shape[a];
    SPAD_CHECK(count > 0, ValueError, "mean: reduction over zero elements (shape ", shape_str(x->shape), ")");
    return mul_scalar(sum(x, axes, keepdims), 1.0 / (double)count);
}

Tensor max(const Tensor &x, std::vector<int64_t> axes_in, bool keepdims) {
    std::vector<int64_t> axes = norm_axes("max", axes_in, x->ndim());
    // Move the reduced axes last; then every output element reduces one contiguous block.
    std::vector<int64_t> perm;
    for (int64_t i = 0; i < x->ndim(); ++i)
        if (!std::binary_search(axes.begin(), axes.end(), i)) perm.push_back(i);
    for (int64_t a : axes) perm.push_back(a);
    Tensor xp;
    {
        NoGradGuard ng;
        xp = contiguous(permute(x, perm));
    }
    int64_t R = 1;
    for (int64_t a : axes) R = checked_mul(R, x->shape[a], "max");
    const int64_t M = R ? x->numel() / R : 0;
    SPAD_CHECK(R > 0 || x->numel() == 0, ValueError, "max: zero-size reduction over axes of shape ",
               shape_str(x->shape));
    SPAD_CHECK(R > 0, ValueError, "max: zero-size reduction (shape ", shape_str(x->shape), ")");
    Shape oshape = reduced_shape(x->shape, axes, keepdims);
    Tensor out = empty(oshape, x->dtype);
    Tensor idx = empty({M}, DType::I64);
    int64_t *pi = idx->data<int64_t>();
    SPAD_FLOAT(x->dtype, T, {
        const T *p = xp->data<T>();
        T *o = out->data<T>();
        for (int64_t m = 0; m < M; ++m) {
            const T *blk = p + m * R;
            int64_t best = 0;
            // NaN propagates (numpy, PyTorch): the first NaN wins and ends the scan.
            for (int64_t r = 0; r < R; ++r) {
                if (blk[r] != blk[r]) {
                    best = r;
                    break;
                }
                if (blk[r] > blk[best]) best = r;
            }
            o[m] = blk[best];
            pi[m] = m * R + best;
        }
    });
    auto node = make_node(OpKind::MAX, {&x});
    if (node) {
        node->at.ints = perm;
        node->saved[0].pack_exact(idx, false, SaveKind::INDEX);
    }
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_MAX(Node &n, const Tensor &g, Tensor *gin) {
    const Tensor &idx = n.saved[0].get("max");
    const Shape &xs = n.in_shape[0];
    const std::vector<int64_t> &perm = n.at.ints;
    Shape pshape;
    for (int64_t a : perm) pshape.push_back(xs[a]);
    Tensor flat = scatter_add(reshape(g, {-1}), idx, {numel_of(xs)});
    std::vector<int64_t> inv(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) inv[perm[i]] = (int64_t)i;
    gin[0] = permute(reshape(flat, pshape), inv);
}
namespace ops {

Tensor expand(const Tensor &x, const Shape &shape) {
    Shape bs = broadcast_shapes("expand", x->shape, shape);
    SPAD_CHECK(bs == shape, ValueError, "expand: cannot broadcast shape ", shape_str(x->shape), " to ",
               shape_str(shape));
    if (x->shape == shape) return x;
    Tensor out = view(x, shape, broadcast_strides(*x, shape), x->offset);
    auto node = make_node(OpKind::EXPAND, {&x});
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_EXPAND(Node &n, const Tensor &g, Tensor *gin) { gin[0] = sum_to(g, n.in_shape[0]); }
namespace ops {

Tensor sum_to(const Tensor &g, const Shape &shape) {
    if (g->shape == shape) return g;
    const int64_t lead = g->ndim() - (int64_t)shape.size();
    SPAD_CHECK(lead >= 0, ValueError, "sum_to: cannot reduce shape ", shape_str(g->shape), " to ", shape_str(shape));
    std::vector<int64_t> axes;
    for (int64_t i = 0; i < g->ndim(); ++i)
        if (i < lead || (shape[i - lead] == 1 && g->shape[i] != 1)) axes.push_back(i);
    if (axes.empty()) return reshape(g, shape);
    return reshape(sum(g, axes, true), shape);
}

}  // namespace ops
}  // namespace spad
