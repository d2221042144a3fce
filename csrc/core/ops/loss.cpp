// softmax, log_softmax, fused cross-entropy and MSE. The losses check their inputs
// (finite values, label range) because a NaN here silently poisons a whole training run.
#include <cmath>

#include "../ops.h"

namespace spad {
namespace ops {

// View a contiguous tensor as (outer, L, inner) around `axis`.
struct Around {
    int64_t outer = 1, L = 1, inner = 1;
};
static Around around(const Shape &s, int64_t axis) {
    Around a;
    for (int64_t d = 0; d < axis; ++d) a.outer *= s[d];
    a.L = s[axis];
    for (int64_t d = axis + 1; d < (int64_t)s.size(); ++d) a.inner *= s[d];
    return a;
}

// out = softmax (log=false) or log_softmax (log=true) along axis.
template <class T> static void softmax_kernel(const T *x, T *y, Around a, bool log) {
    for (int64_t o = 0; o < a.outer; ++o)
        for (int64_t i = 0; i < a.inner; ++i) {
            const T *px = x + o * a.L * a.inner + i;
            T *py = y + o * a.L * a.inner + i;
            T m = px[0];
            for (int64_t l = 1; l < a.L; ++l) m = std::max(m, px[l * a.inner]);
            T s = 0;
            for (int64_t l = 0; l < a.L; ++l) s += std::exp(px[l * a.inner] - m);
            if (log) {
                const T lse = m + std::log(s);
                for (int64_t l = 0; l < a.L; ++l) py[l * a.inner] = px[l * a.inner] - lse;
            } else {
                const T inv = T(1) / s;
                for (int64_t l = 0; l < a.L; ++l) py[l * a.inner] = std::exp(px[l * a.inner] - m) * inv;
            }
        }
}

static Tensor softmax_impl(const Tensor &x_, int64_t axis, bool log, OpKind kind) {
    const char *op = log ? "log_softmax" : "softmax";
    SPAD_CHECK(x_->ndim() >= 1, ValueError, op, ": expected at least one dimension, got shape ", shape_str(x_->shape));
    axis = norm_axis(op, axis, x_->ndim());
    Tensor x = contiguous(x_);
    Tensor out = empty(x->shape, x->dtype);
    SPAD_FLOAT(x->dtype, T, softmax_kernel<T>(x->data<T>(), out->data<T>(), around(x->shape, axis), log));
    auto node = make_node(kind, {&x_});
    if (node) {
        node->at.i0 = axis;
        node->saved[0].pack_exact(out, true);
    }
    attach(out, node);
    return out;
}

Tensor softmax(const Tensor &x, int64_t axis) { return softmax_impl(x, axis, false, OpKind::SOFTMAX); }
Tensor log_softmax(const Tensor &x, int64_t axis) { return softmax_impl(x, axis, true, OpKind::LOG_SOFTMAX); }
}  // namespace ops
using namespace ops;
void backward_SOFTMAX(Node &n, const Tensor &g, Tensor *gin) {
    Tensor y = saved_output(n, 0);
    gin[0] = mul(y, sub(g, sum(mul(g, y), {n.at.i0}, true)));
}
void backward_LOG_SOFTMAX(Node &n, const Tensor &g, Tensor *gin) {
    Tensor y = saved_output(n, 0);
    gin[0] = sub(g, mul(exp(y), sum(g, {n.at.i0}, true)));
}

// Under create_graph a fused loss's saved intermediate must be differentiable with respect
// to the loss's inputs: rebuild it as the output of a node of the unfused op that shares
// the loss node's input edges (no recomputation, no extra memory).
static Tensor relink(Node &n, OpKind op, const Tensor &value, size_t n_edges, int64_t axis) {
    if (!grad_enabled()) return value;
    auto m = std::make_shared<Node>();
    m->op = op;
    m->seq = next_seq();
    m->next.assign(n.next.begin(), n.next.begin() + n_edges);
    m->in_shape.assign(n.in_shape.begin(), n.in_shape.begin() + n_edges);
    m->dtype = n.dtype;
    m->at.i0 = axis;
    if (op == OpKind::SOFTMAX) m->saved[0].pack_exact(value, true);
    Tensor a = view(value, value->shape, value->strides, value->offset);
    attach(a, m);
    return a;
}

namespace ops {

template <class T> T cross_entropy_kernel(const T *x, const int64_t *py, int64_t B, int64_t C, T *P) {
    softmax_kernel<T>(x, P, {B, C, 1}, false);
    double loss = 0;
    for (int64_t b = 0; b < B; ++b) {
        const T *xb = x + b * C;
        T m = xb[0];
        for (int64_t c = 1; c < C; ++c) m = std::max(m, xb[c]);
        double s = 0;
        for (int64_t c = 0; c < C; ++c) s += std::exp((double)(xb[c] - m));
        loss += (double)m + std::log(s) - (double)xb[py[b]];  // logsumexp - x_y
    }
    return (T)(loss / (double)B);
}

template <class T>
void cross_entropy_grad_kernel(const T *p, const int64_t *py, int64_t B, int64_t C, double g, T *o) {
    const T s = (T)(g / (double)B);
    for (int64_t i = 0; i < B * C; ++i) o[i] = p[i] * s;
    for (int64_t b = 0; b < B; ++b) o[b * C + py[b]] -= s;
}

template <class T> T mean_square_kernel(const T *d, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += (double)d[i] * (double)d[i];
    return (T)(s / (double)n);
}

template float cross_entropy_kernel<float>(const float *, const int64_t *, int64_t, int64_t, float *);
template double cross_entropy_kernel<double>(const double *, const int64_t *, int64_t, int64_t, double *);
template void cross_entropy_grad_kernel<float>(const float *, const int64_t *, int64_t, int64_t, double, float *);
template void cross_entropy_grad_kernel<double>(const double *, const int64_t *, int64_t, int64_t, double, double *);
template float mean_square_kernel<float>(const float *, int64_t);
template double mean_square_kernel<double>(const double *, int64_t);

Tensor cross_entropy(const Tensor &logits_, const Tensor &labels) {
    SPAD_CHECK(logits_->ndim() == 2, ValueError, "cross_entropy: expected logits of shape (batch, classes), got ",
               shape_str(logits_->shape));
    SPAD_CHECK(is_floating(logits_->dtype), TypeError, "cross_entropy: logits must be float32 or float64, got ",
               dtype_name(logits_->dtype));
    const int64_t B = logits_->shape[0], C = logits_->shape[1];
    SPAD_CHECK(labels->dtype == DType::I64, TypeError, "cross_entropy: labels must be integers, got ",
               dtype_name(labels->dtype));
    SPAD_CHECK(labels->ndim() == 1 && labels->shape[0] == B, ValueError, "cross_entropy: labels of shape ",
               shape_str(labels->shape), " do not match logits of shape ", shape_str(logits_->shape),
               " (expected (", B, ",))");
    SPAD_CHECK(B > 0 && C > 0, ValueError, "cross_entropy: empty logits of shape ", shape_str(logits_->shape));
    Tensor lab = contiguous(labels);
    const int64_t *py = lab->data<int64_t>();
    for (int64_t b = 0; b < B; ++b)
        SPAD_CHECK(py[b] >= 0 && py[b] < C, ValueError, "cross_entropy: label ", py[b], " at position ", b,
                   " is out of range for logits of shape ", shape_str(logits_->shape), " (classes 0..", C - 1, ")");
    SPAD_CHECK(all_finite(logits_), ValueError, "cross_entropy: logits of shape ", shape_str(logits_->shape),
               " contain NaN or inf");
    Tensor logits = contiguous(logits_);
    Tensor P = empty(logits->shape, logits->dtype);
    Tensor out = empty({}, logits->dtype);
    SPAD_FLOAT(logits->dtype, T,
               *out->data<T>() = cross_entropy_kernel<T>(logits->data<T>(), py, B, C, P->data<T>()));
    auto node = make_node(OpKind::CROSS_ENTROPY, {&logits_});
    if (node) {
        node->saved[0].pack_exact(P, true);
        node->saved[1].pack_exact(lab, false, SaveKind::INDEX);
    }
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_CROSS_ENTROPY(Node &n, const Tensor &g, Tensor *gin) {
    const Tensor &P = n.saved[0].get("cross_entropy");
    const Tensor &lab = n.saved[1].get("cross_entropy");
    const int64_t B = P->shape[0], C = P->shape[1];
    const int64_t *py = lab->data<int64_t>();
    if (grad_enabled()) {  // differentiable form: g/B * (softmax(logits) - onehot)
        Tensor onehot = zeros(P->shape, P->dtype);
        SPAD_FLOAT(P->dtype, T, for (int64_t b = 0; b < B; ++b) onehot->data<T>()[b * C + py[b]] = T(1));
        Tensor Pl = relink(n, OpKind::SOFTMAX, P, 1, 1);
        gin[0] = mul(sub(Pl, onehot), mul_scalar(g, 1.0 / (double)B));
        return;
    }
    Tensor d = empty(P->shape, P->dtype);
    SPAD_FLOAT(P->dtype, T, cross_entropy_grad_kernel<T>(P->data<T>(), py, B, C, item(g), d->data<T>()));
    gin[0] = d;
}
namespace ops {

Tensor mse_loss(const Tensor &pred, const Tensor &target) {
    check_same_dtype("mse_loss", pred, target);
    SPAD_CHECK(pred->shape == target->shape, ValueError, "mse_loss: prediction of shape ", shape_str(pred->shape),
               " and target of shape ", shape_str(target->shape), " differ (broadcasting is not applied in losses)");
    SPAD_CHECK(pred->numel() > 0, ValueError, "mse_loss: empty input of shape ", shape_str(pred->shape));
    SPAD_CHECK(all_finite(pred) && all_finite(target), ValueError, "mse_loss: prediction or target of shape ",
               shape_str(pred->shape), " contains NaN or inf");
    Tensor d;
    {
        NoGradGuard ng;
        d = sub(pred, target);
    }
    Tensor out = empty({}, pred->dtype);
    const int64_t N = d->numel();
    SPAD_FLOAT(d->dtype, T, *out->data<T>() = mean_square_kernel<T>(d->data<T>(), N));
    auto node = make_node(OpKind::MSE, {&pred, &target});
    if (node) node->saved[0].pack_exact(d, true);
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_MSE(Node &n, const Tensor &g, Tensor *gin) {
    Tensor d = relink(n, OpKind::SUB, n.saved[0].get("mse_loss"), 2, 0);
    Tensor gd = mul(d, mul_scalar(g, 2.0 / (double)d->numel()));
    if (n.needs(0)) gin[0] = gd;
    if (n.needs(1)) gin[1] = neg(gd);
}

}  // namespace spad
