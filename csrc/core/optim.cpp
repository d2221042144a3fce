// optim.cpp — the fused update loops. Arithmetic is done in the parameter's dtype
// except the bias corrections, which are computed once per step in double.
#include "optim.h"

#include <cmath>
#include <cstring>

namespace spad {
namespace optim {

namespace {

// The gradient of p as a contiguous tensor, or null when p has none. Gradients the tape
// accumulates are already contiguous; a user-assigned strided grad is packed here.
Tensor checked_grad(const char *op, const Tensor &p) {
    SPAD_CHECK(p, ValueError, op, ": got None instead of a parameter tensor");
    SPAD_CHECK(is_floating(p->dtype), TypeError, op, ": parameters must be float32 or float64, got ",
               dtype_name(p->dtype));
    SPAD_CHECK(p->is_contiguous(), ValueError, op, ": parameter of shape ", shape_str(p->shape),
               " is not contiguous; optimizers update parameters in place");
    if (!p->grad) return nullptr;
    SPAD_CHECK(p->grad->shape == p->shape && p->grad->dtype == p->dtype, ValueError, op, ": grad of shape ",
               shape_str(p->grad->shape), " (", dtype_name(p->grad->dtype), ") does not match parameter of shape ",
               shape_str(p->shape), " (", dtype_name(p->dtype), ")");
    return contiguous(p->grad);
}

void check_state(const char *op, const char *what, const Tensor &p, const Tensor &s) {
    SPAD_CHECK(s, ValueError, op, ": missing ", what, " state for parameter of shape ", shape_str(p->shape));
    SPAD_CHECK(s->shape == p->shape && s->dtype == p->dtype && s->is_contiguous(), ValueError, op, ": ", what,
               " state of shape ", shape_str(s->shape), " (", dtype_name(s->dtype),
               ") must be contiguous and match parameter of shape ", shape_str(p->shape), " (",
               dtype_name(p->dtype), ")");
}

void check_lists(const char *op, size_t n, size_t k) {
    SPAD_CHECK(n == k, ValueError, op, ": ", n, " parameters but ", k, " state tensors");
}

}  // namespace

void sgd(const std::vector<Tensor> &params, const std::vector<Tensor> &bufs, double lr, double momentum,
         bool nesterov, double weight_decay) {
    const bool use_buf = momentum != 0.0;
    if (use_buf) check_lists("SGD", params.size(), bufs.size());
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor &p = params[i];
        Tensor g = checked_grad("SGD", p);
        if (!g) continue;
        if (use_buf) check_state("SGD", "momentum", p, bufs[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            // One branch-free loop per variant over non-aliasing pointers, so the compiler
            // vectorizes it (a loop testing b and nesterov per element stayed scalar and cost a
            // quarter of a small MLP's step). Same arithmetic per element as the update rule.
            T *__restrict w = p->data<T>();
            const T *__restrict d = g->data<T>();
            T *__restrict b = use_buf ? bufs[i]->data<T>() : nullptr;
            const T a = (T)lr, mu = (T)momentum, wd = (T)weight_decay;
            if (!b) {
                for (int64_t j = 0; j < n; ++j) w[j] -= a * (d[j] + wd * w[j]);
            } else if (!nesterov) {
                for (int64_t j = 0; j < n; ++j) {
                    const T bj = mu * b[j] + (d[j] + wd * w[j]);
                    b[j] = bj;
                    w[j] -= a * bj;
                }
            } else {
                for (int64_t j = 0; j < n; ++j) {
                    const T gj = d[j] + wd * w[j], bj = mu * b[j] + gj;
                    b[j] = bj;
                    w[j] -= a * (gj + mu * bj);
                }
            }
        });
        ++p->storage->version;
    }
}

void adagrad(const std::vector<Tensor> &params, const std::vector<Tensor> &sq, double lr, double eps,
             double weight_decay) {
    check_lists("Adagrad", params.size(), sq.size());
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor &p = params[i];
        Tensor g = checked_grad("Adagrad", p);
        if (!g) continue;
        check_state("Adagrad", "sum of squares", p, sq[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *w = p->data<T>(), *r = sq[i]->data<T>();
            const T *d = g->data<T>();
            const T a = (T)lr, e = (T)eps, wd = (T)weight_decay;
            for (int64_t j = 0; j < n; ++j) {
                const T gj = d[j] + wd * w[j];
                r[j] += gj * gj;
                w[j] -= a * gj / (std::sqrt(r[j]) + e);
            }
        });
        ++p->storage->version;
    }
}

void rmsprop(const std::vector<Tensor> &params, const std::vector<Tensor> &sq, const std::vector<Tensor> &bufs,
             double lr, double alpha, double eps, double momentum, bool nesterov, double weight_decay) {
    const bool use_buf = momentum != 0.0;
    check_lists("RMSprop", params.size(), sq.size());
    if (use_buf) check_lists("RMSprop", params.size(), bufs.size());
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor &p = params[i];
        Tensor g = checked_grad("RMSprop", p);
        if (!g) continue;
        check_state("RMSprop", "square average", p, sq[i]);
        if (use_buf) check_state("RMSprop", "momentum", p, bufs[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *w = p->data<T>(), *r = sq[i]->data<T>();
            T *b = use_buf ? bufs[i]->data<T>() : nullptr;
            const T *d = g->data<T>();
            const T a = (T)lr, rho = (T)alpha, e = (T)eps, mu = (T)momentum, wd = (T)weight_decay;
            for (int64_t j = 0; j < n; ++j) {
                const T gj = d[j] + wd * w[j];
                r[j] = rho * r[j] + (T(1) - rho) * gj * gj;
                T s = gj / (std::sqrt(r[j]) + e);
                if (b) {
                    b[j] = mu * b[j] + s;
                    s = nesterov ? s + mu * b[j] : b[j];
                }
                w[j] -= a * s;
            }
        });
        ++p->storage->version;
    }
}

void adam(const std::vector<Tensor> &params, const std::vector<Tensor> &m, const std::vector<Tensor> &v,
          double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, int64_t step) {
    const char *op = decoupled ? "AdamW" : "Adam";
    SPAD_CHECK(step >= 1, ValueError, op, ": step count must be >= 1, got ", step);
    check_lists(op, params.size(), m.size());
    check_lists(op, params.size(), v.size());
    const double bc1 = 1.0 - std::pow(beta1, (double)step), bc2 = 1.0 - std::pow(beta2, (double)step);
    for (size_t i = 0; i < params.size(); ++i) {
        const Tensor &p = params[i];
        Tensor g = checked_grad(op, p);
        if (!g) continue;
        check_state(op, "first moment", p, m[i]);
        check_state(op, "second moment", p, v[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *w = p->data<T>(), *mm = m[i]->data<T>(), *vv = v[i]->data<T>();
            const T *d = g->data<T>();
            const T b1 = (T)beta1, b2 = (T)beta2, e = (T)eps;
            const T step_size = (T)(lr / bc1), inv_sqrt_bc2 = (T)(1.0 / std::sqrt(bc2));
            const T shrink = decoupled ? (T)(1.0 - lr * weight_decay) : T(1);
            const T l2 = decoupled ? T(0) : (T)weight_decay;
            for (int64_t j = 0; j < n; ++j) {
                const T gj = d[j] + l2 * w[j];
                mm[j] = b1 * mm[j] + (T(1) - b1) * gj;
                vv[j] = b2 * vv[j] + (T(1) - b2) * gj * gj;
                w[j] = w[j] * shrink - step_size * mm[j] / (std::sqrt(vv[j]) * inv_sqrt_bc2 + e);
            }
        });
        ++p->storage->version;
    }
}

void assign(const Tensor &dst, const Tensor &src) {
    SPAD_CHECK(dst->shape == src->shape, ValueError, "assign: source of shape ", shape_str(src->shape),
               " does not match destination of shape ", shape_str(dst->shape));
    SPAD_CHECK(dst->dtype == src->dtype, TypeError, "assign: source of dtype ", dtype_name(src->dtype),
               " does not match destination of dtype ", dtype_name(dst->dtype));
    SPAD_CHECK(dst->is_contiguous(), ValueError, "assign: destination of shape ", shape_str(dst->shape),
               " is not contiguous");
    Tensor s = contiguous(src);
    const size_t nbytes = (size_t)dst->numel() * dtype_size(dst->dtype);
    if (nbytes) std::memmove(dst->raw(), s->raw(), nbytes);  // memmove: src may alias dst
    ++dst->storage->version;
}

void bump_version(const Tensor &t) { ++t->storage->version; }

}  // namespace optim
}  // namespace spad
