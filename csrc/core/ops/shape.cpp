// Shape ops: reshape, permute, take (all numpy indexing lowers to it), scatter_add, concat.
#include <algorithm>
#include <cstring>

#include "../ops.h"

namespace spad {
namespace ops {

Tensor reshape(const Tensor &x, Shape shape) {
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] == -1) {
            SPAD_CHECK(infer < 0, ValueError, "reshape: only one dimension can be -1, got ", shape_str(shape));
            infer = (int64_t)i;
        } else {
            SPAD_CHECK(shape[i] >= 0, ValueError, "reshape: invalid shape ", shape_str(shape),
                       " (dimensions must be >= 0, or one -1)");
            SPAD_CHECK(shape[i] <= kMaxNumel, ValueError, "reshape: cannot reshape tensor of shape ",
                       shape_str(x->shape), " into shape ", shape_str(shape), ": dimension ", shape[i], " is too large");
            // The zero-free product (see Note [Checked sizes]); a 0 makes the count 0 anyway.
            if (shape[i] > 0) known = checked_mul(known, shape[i], "reshape");
        }
    }
    if (infer >= 0) {
        const bool has_zero = std::find(shape.begin(), shape.end(), 0) != shape.end();
        SPAD_CHECK(!has_zero && x->numel() % known == 0, ValueError, "reshape: cannot reshape tensor of shape ",
                   shape_str(x->shape), " into shape ", shape_str(shape));
        shape[infer] = x->numel() / known;
    }
    SPAD_CHECK(numel_of(shape) == x->numel(), ValueError, "reshape: cannot reshape tensor of shape ",
               shape_str(x->shape), " (", x->numel(), " elements) into shape ", shape_str(shape));
    if (shape == x->shape) return x;
    Tensor c = contiguous(x);
    Tensor out = view(c, shape, contiguous_strides(shape), c->offset);
    attach(out, make_node(OpKind::RESHAPE, {&x}));
    return out;
}
}  // namespace ops
using namespace ops;
void backward_RESHAPE(Node &n, const Tensor &g, Tensor *gin) { gin[0] = reshape(g, n.in_shape[0]); }
namespace ops {

Tensor permute(const Tensor &x, std::vector<int64_t> perm) {
    SPAD_CHECK((int64_t)perm.size() == x->ndim(), ValueError, "transpose: axes ", shape_str(perm),
               " don't match a tensor of shape ", shape_str(x->shape));
    std::vector<bool> seen(perm.size(), false);
    Shape shape(perm.size()), strides(perm.size());
    bool identity = true;
    for (size_t i = 0; i < perm.size(); ++i) {
        int64_t a = norm_axis("transpose", perm[i], x->ndim());
        SPAD_CHECK(!seen[a], ValueError, "transpose: repeated axis in ", shape_str(perm));
        seen[a] = true;
        perm[i] = a;
        identity = identity && a == (int64_t)i;
        shape[i] = x->shape[a];
        strides[i] = x->strides[a];
    }
    if (identity) return x;
    Tensor out = view(x, shape, strides, x->offset);
    auto node = make_node(OpKind::PERMUTE, {&x});
    if (node) node->at.ints = perm;
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_PERMUTE(Node &n, const Tensor &g, Tensor *gin) {
    std::vector<int64_t> inv(n.at.ints.size());
    for (size_t i = 0; i < inv.size(); ++i) inv[n.at.ints[i]] = (int64_t)i;
    gin[0] = permute(g, inv);
}
namespace ops {

Tensor transpose(const Tensor &x, int64_t a, int64_t b) {
    std::vector<int64_t> perm(x->ndim());
    for (int64_t i = 0; i < x->ndim(); ++i) perm[i] = i;
    a = norm_axis("transpose", a, x->ndim());
    b = norm_axis("transpose", b, x->ndim());
    std::swap(perm[a], perm[b]);
    return permute(x, perm);
}

static void check_index(const char *op, const Tensor &idx, int64_t n) {
    SPAD_CHECK(idx->dtype == DType::I64 && idx->is_contiguous(), TypeError, op, ": indices must be contiguous int64");
    const int64_t *pi = idx->data<int64_t>();
    for (int64_t i = 0, e = idx->numel(); i < e; ++i)
        SPAD_CHECK(pi[i] >= 0 && pi[i] < n, ValueError, op, ": index ", pi[i], " is out of bounds for a tensor with ",
                   n, " elements");
}

Tensor take(const Tensor &x_, const Tensor &idx, const Shape &out_shape) {
    SPAD_CHECK(numel_of(out_shape) == idx->numel(), ValueError, "index: result shape ", shape_str(out_shape),
               " does not match ", idx->numel(), " indices");
    Tensor x = contiguous(x_);
    check_index("index", idx, x->numel());
    Tensor out = empty(out_shape, x->dtype);
    const int64_t *pi = idx->data<int64_t>();
    SPAD_FLOAT(x->dtype, T, {
        const T *p = x->data<T>();
        T *o = out->data<T>();
        for (int64_t i = 0, e = idx->numel(); i < e; ++i) o[i] = p[pi[i]];
    });
    auto node = make_node(OpKind::TAKE, {&x_});
    if (node) node->saved[0].pack_exact(idx, false, SaveKind::INDEX);
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_TAKE(Node &n, const Tensor &g, Tensor *gin) {
    gin[0] = scatter_add(g, n.saved[0].get("index"), n.in_shape[0]);
}
namespace ops {

Tensor scatter_add(const Tensor &g_, const Tensor &idx, const Shape &shape) {
    SPAD_CHECK(g_->numel() == idx->numel(), ValueError, "scatter_add: ", g_->numel(), " values for ", idx->numel(),
               " indices");
    Tensor g = contiguous(g_);
    check_index("scatter_add", idx, numel_of(shape));
    Tensor out = zeros(shape, g->dtype);
    const int64_t *pi = idx->data<int64_t>();
    SPAD_FLOAT(g->dtype, T, {
        const T *p = g->data<T>();
        T *o = out->data<T>();
        for (int64_t i = 0, e = idx->numel(); i < e; ++i) o[pi[i]] += p[i];
    });
    auto node = make_node(OpKind::SCATTER_ADD, {&g_});
    if (node) node->saved[0].pack_exact(idx, false, SaveKind::INDEX);
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_SCATTER_ADD(Node &n, const Tensor &g, Tensor *gin) {
    gin[0] = take(g, n.saved[0].get("scatter_add"), n.in_shape[0]);
}
namespace ops {

Tensor concat(const std::vector<Tensor> &xs, int64_t axis) {
    SPAD_CHECK(!xs.empty(), ValueError, "concatenate: need at least one tensor");
    const Tensor &x0 = xs[0];
    SPAD_CHECK(x0->ndim() > 0, ValueError, "concatenate: zero-dimensional tensors cannot be concatenated");
    axis = norm_axis("concatenate", axis, x0->ndim());
    Shape shape = x0->shape;
    shape[axis] = 0;
    for (const Tensor &x : xs) {
        check_same_dtype("concatenate", x0, x);
        bool ok = x->ndim() == x0->ndim();
        for (int64_t d = 0; ok && d < x0->ndim(); ++d) ok = d == axis || x->shape[d] == x0->shape[d];
        SPAD_CHECK(ok, ValueError, "concatenate: shapes ", shape_str(x0->shape), " and ", shape_str(x->shape),
                   " differ outside axis ", axis);
        shape[axis] = checked_add(shape[axis], x->shape[axis], "concatenate");
    }
    Tensor out = empty(shape, x0->dtype);
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= shape[d];
    for (int64_t d = axis + 1; d < (int64_t)shape.size(); ++d) inner *= shape[d];
    const size_t es = dtype_size(x0->dtype);
    char *o = static_cast<char *>(out->raw());
    int64_t col = 0;
    for (const Tensor &x_ : xs) {
        Tensor x = contiguous(x_);
        const int64_t w = x->shape[axis] * inner;
        const char *p = static_cast<const char *>(x->raw());
        for (int64_t r = 0; r < outer; ++r)
            std::memcpy(o + (r * shape[axis] * inner + col) * es, p + r * w * es, (size_t)w * es);
        col += w;
    }
    auto node = make_node(OpKind::CONCAT, xs);
    if (node) node->at.i0 = axis;
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_CONCAT(Node &n, const Tensor &g, Tensor *gin) {
    const int64_t axis = n.at.i0;
    int64_t start = 0;
    for (size_t i = 0; i < n.next.size(); ++i) {
        const Shape &s = n.in_shape[i];
        if (n.needs(i)) {
            // The slice of g along `axis`: a strided view, or a differentiable take under create_graph.
            Tensor gc = contiguous(g);
            Tensor v = view(gc, s, gc->strides, gc->offset + start * gc->strides[axis]);
            if (grad_enabled()) {
                Tensor pos = empty(gc->shape, DType::I64);
                int64_t *pp = pos->data<int64_t>();
                for (int64_t j = 0, e = pos->numel(); j < e; ++j) pp[j] = j;
                Tensor pv = contiguous(view(pos, s, pos->strides, start * pos->strides[axis]));
                gin[i] = take(gc, pv, s);
            } else {
                gin[i] = contiguous(v);
            }
        }
        start += s[axis];
    }
}

}  // namespace spad
