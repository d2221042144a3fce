// optim.cpp — the fused update loops. Arithmetic is done in the parameter's dtype
// except the bias corrections, which are computed once per step in double.
#include "optim.h"

#include <cmath>
#include <cstring>

#include "tape.h"

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

// The gradient one update applies: p->grad, or inside backward the implicit gradient a
// sampled weight rule hands over (Note [Implicit leaf gradients] in tape.h), read as rows
// when it is row-sparse. `any()` is false when p has neither (then p is skipped).
struct Grad {
    Tensor dense;
    const ImplicitGrad *implicit = nullptr;
    Tensor idx, vals;  // row-sparse form: distinct rows and their values
    bool any() const { return dense || implicit; }
};

// `adds`: the caller applies a gradient that is neither dense nor row-sparse by add_to().
Grad grad_of(const char *op, const Tensor &p, bool adds = false) {
    Grad g;
    g.dense = checked_grad(op, p);
    if (!g.dense && (g.implicit = implicit_grad(p)) != nullptr) {
        SPAD_CHECK(g.implicit->shape() == p->shape && g.implicit->dtype() == p->dtype, RuntimeError, op,
                   ": implicit gradient of shape ", shape_str(g.implicit->shape()), " does not match parameter of shape ",
                   shape_str(p->shape));
        // A consumer of rows only: a form it cannot read is written out (not expected: the
        // optimizers declare the forms they read when they attach their hooks).
        if (!g.implicit->rows(g.idx, g.vals) && !adds) g.dense = g.implicit->dense();
    }
    return g;
}

// body(offset, count, d) over p's n elements, d pointing at their gradient: once for a dense
// gradient; for a row-sparse one row by row, reading a zero row for the rows it leaves out,
// so every element gets exactly the dense update with g = 0 there (momentum and moment
// estimates decay as they would). `touched_only` skips those rows: for updates where g = 0
// leaves parameter and state unchanged. The loops themselves are the *_run functions below.
template <class T, class Body> void for_grad(const Grad &g, int64_t n, bool touched_only, Body body) {
    if (g.dense) return body(0, n, g.dense->data<T>());
    const int64_t rows = g.implicit->shape()[0], m = rows ? n / rows : 0, u = g.idx->numel();
    const int64_t *pi = g.idx->data<int64_t>();
    const T *pv = g.vals->data<T>();
    if (touched_only) {
        for (int64_t r = 0; r < u; ++r) body(pi[r] * m, m, pv + r * m);
        return;
    }
    std::vector<int64_t> at(rows, -1);
    for (int64_t r = 0; r < u; ++r) at[pi[r]] = r;
    const std::vector<T> zero(m, T(0));
    for (int64_t r = 0; r < rows; ++r) body(r * m, m, at[r] >= 0 ? pv + at[r] * m : zero.data());
}

// Kept out of line: inlined into the callers' larger bodies, the loops spilled their constants
// and reloaded them from the stack every element (dense Adam ran 1.3x slower).
#if defined(__GNUC__)
#define SPAD_OPTIM_LOOP __attribute__((noinline))
#else
#define SPAD_OPTIM_LOOP
#endif

// One branch-free loop per variant over non-aliasing pointers, so the compiler vectorizes it
// (a loop testing b and nesterov per element stayed scalar and cost a quarter of a small MLP's
// step). Same arithmetic per element as the update rule (optim.h).
template <class T>
SPAD_OPTIM_LOOP void sgd_run(T *__restrict w, T *__restrict b, const T *__restrict d, int64_t n, T a, T mu, T wd, bool nesterov) {
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
}

template <class T> SPAD_OPTIM_LOOP void adagrad_run(T *w, T *r, const T *d, int64_t n, T a, T e, T wd) {
    for (int64_t j = 0; j < n; ++j) {
        const T gj = d[j] + wd * w[j];
        r[j] += gj * gj;
        w[j] -= a * gj / (std::sqrt(r[j]) + e);
    }
}

template <class T>
SPAD_OPTIM_LOOP void rmsprop_run(T *w, T *r, T *b, const T *d, int64_t n, T a, T rho, T e, T mu, T wd, bool nesterov) {
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
}

template <class T>
SPAD_OPTIM_LOOP void adam_run(T *w, T *mm, T *vv, const T *d, int64_t n, T b1, T b2, T e, T step_size, T inv_sqrt_bc2, T shrink,
              T l2) {
    for (int64_t j = 0; j < n; ++j) {
        const T gj = d[j] + l2 * w[j];
        mm[j] = b1 * mm[j] + (T(1) - b1) * gj;
        vv[j] = b2 * vv[j] + (T(1) - b2) * gj * gj;
        w[j] = w[j] * shrink - step_size * mm[j] / (std::sqrt(vv[j]) * inv_sqrt_bc2 + e);
    }
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
        Grad g = grad_of("SGD", p, !use_buf);
        if (!g.any()) continue;
        if (use_buf) check_state("SGD", "momentum", p, bufs[i]);
        const int64_t n = p->numel();
        // Plain SGD takes an implicit gradient that is not row-sparse by adding -lr * dW into
        // p (weight decay first): no dense dW, and the same update up to rounding.
        const bool add = g.implicit && !g.idx && !g.dense;
        SPAD_FLOAT(p->dtype, T, {
            T *const w0 = p->data<T>();
            T *const b0 = use_buf ? bufs[i]->data<T>() : nullptr;
            const T a = (T)lr, mu = (T)momentum, wd = (T)weight_decay;
            if (add) {
                if (weight_decay != 0.0)
                    for (int64_t j = 0; j < n; ++j) w0[j] -= a * (wd * w0[j]);
                g.implicit->add_to(p, -lr);
            } else {
                for_grad<T>(g, n, !b0 && weight_decay == 0.0, [&](int64_t off, int64_t cnt, const T *d) {
                    sgd_run<T>(w0 + off, b0 ? b0 + off : nullptr, d, cnt, a, mu, wd, nesterov);
                });
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
        Grad g = grad_of("Adagrad", p);
        if (!g.any()) continue;
        check_state("Adagrad", "sum of squares", p, sq[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *const w0 = p->data<T>(), *const r0 = sq[i]->data<T>();
            const T a = (T)lr, e = (T)eps, wd = (T)weight_decay;
            // g = 0 (and no weight decay) leaves r and p as they are: rows outside the sample skip.
            for_grad<T>(g, n, weight_decay == 0.0, [&](int64_t off, int64_t cnt, const T *d) {
                adagrad_run<T>(w0 + off, r0 + off, d, cnt, a, e, wd);
            });
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
        Grad g = grad_of("RMSprop", p);
        if (!g.any()) continue;
        check_state("RMSprop", "square average", p, sq[i]);
        if (use_buf) check_state("RMSprop", "momentum", p, bufs[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *const w0 = p->data<T>(), *const r0 = sq[i]->data<T>();
            T *const b0 = use_buf ? bufs[i]->data<T>() : nullptr;
            const T a = (T)lr, rho = (T)alpha, e = (T)eps, mu = (T)momentum, wd = (T)weight_decay;
            for_grad<T>(g, n, false, [&](int64_t off, int64_t cnt, const T *d) {  // r decays where g = 0
                rmsprop_run<T>(w0 + off, r0 + off, b0 ? b0 + off : nullptr, d, cnt, a, rho, e, mu, wd, nesterov);
            });
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
        Grad g = grad_of(op, p);
        if (!g.any()) continue;
        check_state(op, "first moment", p, m[i]);
        check_state(op, "second moment", p, v[i]);
        const int64_t n = p->numel();
        SPAD_FLOAT(p->dtype, T, {
            T *const w0 = p->data<T>(), *const m0 = m[i]->data<T>(), *const v0 = v[i]->data<T>();
            const T b1 = (T)beta1, b2 = (T)beta2, e = (T)eps;
            const T step_size = (T)(lr / bc1), inv_sqrt_bc2 = (T)(1.0 / std::sqrt(bc2));
            const T shrink = decoupled ? (T)(1.0 - lr * weight_decay) : T(1);
            const T l2 = decoupled ? T(0) : (T)weight_decay;
            for_grad<T>(g, n, false, [&](int64_t off, int64_t cnt, const T *d) {  // moments decay where g = 0
                adam_run<T>(w0 + off, m0 + off, v0 + off, d, cnt, b1, b2, e, step_size, inv_sqrt_bc2, shrink, l2);
            });
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
