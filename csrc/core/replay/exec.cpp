// exec.cpp — the op-id -> core-call table of compiled replay (program.h). One switch maps an
// op id and its flattened arguments to the core function eager mode calls, so a recording
// wrapper and a replayed record cannot disagree about what an op does.
#include "../ops.h"
#include "../optim.h"
#include "../sampling/sampling.h"
#include "program.h"

namespace spad {
namespace replay {

const char *op_name(Op op) {
    static const char *names[] = {
        "add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
        "sum", "mean", "max", "reshape", "permute", "take", "concatenate", "expand",
        "matmul", "linear", "softmax", "log_softmax", "cross_entropy", "mse_loss",
        "conv2d", "max_pool2d", "avg_pool2d", "dropout", "detach", "contiguous",
        "backward", "clear_grads", "set_grad", "sgd_step", "adagrad_step", "rmsprop_step", "adam_step", "assign_",
        "bump_version", "set_grad_enabled", "set_active_policy", "begin_step", "view",
        "grad", "linear_chain"};
    static_assert(sizeof(names) / sizeof(names[0]) == (size_t)Op::COUNT_, "one name per op id");
    return (int)op >= 0 && op < Op::COUNT_ ? names[(int)op] : "?";
}

namespace {
std::vector<Tensor> list(const Tensor *const *t, size_t from, size_t n) {
    std::vector<Tensor> v;
    v.reserve(n);
    for (size_t k = 0; k < n; ++k) v.push_back(*t[from + k]);
    return v;
}
std::vector<int64_t> ivec(const int64_t *i, size_t from, size_t ni) { return std::vector<int64_t>(i + from, i + ni); }

void need(bool ok, Op op) {
    SPAD_CHECK(ok, RuntimeError, "replay: malformed record for ", op_name(op));
}
}  // namespace

// Argument conventions (tensors t, ints i, doubles d):
//   unary ops: t0;  binary: t0, t1;  POW: t0, d0;  SOFTMAX/LOG_SOFTMAX: t0, i0 axis
//   SUM/MEAN/MAX: t0, i0 keepdims, i1.. axes;  RESHAPE/EXPAND/PERMUTE: t0, i = shape/perm
//   TAKE: t0 x, t1 idx, i = out shape;  CONCAT: t = parts, i0 axis
//   LINEAR: x, W, b?;  CONV2D: x, w, b?, i = stride h, w, padding h, w;  pools: t0, i0 k
//   DROPOUT: t0, d0 p, i0 training;  BACKWARD: root, grad?, i0 retain, i1 create
//   CLEAR_GRADS: t = params;  SET_GRAD: t0 tensor, t1 grad?
//   SGD: t = params, bufs; i0 n params, i1 nesterov; d = lr, momentum, weight_decay
//   ADAGRAD: t = params, sq; d = lr, eps, wd
//   RMSPROP: t = params, sq, bufs; i0 n, i1 nbufs, i2 nesterov; d = lr, alpha, eps, momentum, wd
//   ADAM: t = params, m, v; i0 step, i1 decoupled; d = lr, b1, b2, eps, wd
//   ASSIGN: t0 dst, t1 src;  BUMP_VERSION: t0;  SET_GRAD_ENABLED: i0
//   SET_POLICY / BEGIN_STEP: i0 policy index (-1: none);  VIEW: t0 base, i = dtype, offset, ndim, shape, strides
//   GET_GRAD: t0 (its current .grad, a value of the step)
//   LINEAR_CHAIN: t = x, W0, b0?, W1, b1?, ...; i = relu flag of each layer
Tensor exec(Op op, const Tensor *const *t, size_t nt, const int64_t *i, size_t ni, const double *d, size_t nd,
            const std::vector<std::shared_ptr<Policy>> &policies) {
    switch (op) {
        case Op::ADD: return ops::add(*t[0], *t[1]);
        case Op::SUB: return ops::sub(*t[0], *t[1]);
        case Op::MUL: return ops::mul(*t[0], *t[1]);
        case Op::DIV: return ops::div(*t[0], *t[1]);
        case Op::NEG: return ops::neg(*t[0]);
        case Op::POW: return ops::pow(*t[0], d[0]);
        case Op::EXP: return ops::exp(*t[0]);
        case Op::LOG: return ops::log(*t[0]);
        case Op::SQRT: return ops::sqrt(*t[0]);
        case Op::TANH: return ops::tanh(*t[0]);
        case Op::SIGMOID: return ops::sigmoid(*t[0]);
        case Op::RELU: return ops::relu(*t[0]);
        case Op::SUM: return ops::sum(*t[0], ivec(i, 1, ni), i[0] != 0);
        case Op::MEAN: return ops::mean(*t[0], ivec(i, 1, ni), i[0] != 0);
        case Op::MAX: return ops::max(*t[0], ivec(i, 1, ni), i[0] != 0);
        case Op::RESHAPE: return ops::reshape(*t[0], Shape(i, i + ni));
        case Op::PERMUTE: return ops::permute(*t[0], ivec(i, 0, ni));
        case Op::TAKE: return ops::take(*t[0], *t[1], Shape(i, i + ni));
        case Op::CONCAT: return ops::concat(list(t, 0, nt), i[0]);
        case Op::EXPAND: return ops::expand(*t[0], Shape(i, i + ni));
        case Op::MATMUL: return ops::matmul(*t[0], *t[1]);
        case Op::LINEAR: return ops::linear(*t[0], *t[1], *t[2]);
        case Op::SOFTMAX: return ops::softmax(*t[0], i[0]);
        case Op::LOG_SOFTMAX: return ops::log_softmax(*t[0], i[0]);
        case Op::CROSS_ENTROPY: return ops::cross_entropy(*t[0], *t[1]);
        case Op::MSE: return ops::mse_loss(*t[0], *t[1]);
        case Op::CONV2D:
            need(ni == 4, op);
            return ops::conv2d(*t[0], *t[1], *t[2], {i[0], i[1]}, {i[2], i[3]});
        case Op::MAX_POOL2D: return ops::max_pool2d(*t[0], i[0]);
        case Op::AVG_POOL2D: return ops::avg_pool2d(*t[0], i[0]);
        case Op::DROPOUT: return ops::dropout(*t[0], d[0], i[0] != 0);
        case Op::DETACH: return view(*t[0], (*t[0])->shape, (*t[0])->strides, (*t[0])->offset);
        case Op::CONTIGUOUS: return contiguous(*t[0]);
        case Op::BACKWARD: backward(*t[0], *t[1], i[0] != 0, i[1] != 0); return Tensor();
        case Op::CLEAR_GRADS:
            for (size_t k = 0; k < nt; ++k) (*t[k])->grad.reset();
            return Tensor();
        case Op::SET_GRAD: (*t[0])->grad = *t[1]; return Tensor();
        case Op::SGD: {
            need(ni == 2 && nd == 3 && (size_t)i[0] <= nt, op);
            optim::sgd(list(t, 0, i[0]), list(t, i[0], nt - i[0]), d[0], d[1], i[1] != 0, d[2]);
            return Tensor();
        }
        case Op::ADAGRAD: {
            need(nd == 3 && nt % 2 == 0, op);
            optim::adagrad(list(t, 0, nt / 2), list(t, nt / 2, nt / 2), d[0], d[1], d[2]);
            return Tensor();
        }
        case Op::RMSPROP: {
            need(ni == 3 && nd == 5 && (size_t)(2 * i[0] + i[1]) == nt, op);
            optim::rmsprop(list(t, 0, i[0]), list(t, i[0], i[0]), list(t, 2 * i[0], i[1]), d[0], d[1], d[2], d[3],
                           i[2] != 0, d[4]);
            return Tensor();
        }
        case Op::ADAM: {
            need(ni == 2 && nd == 5 && nt % 3 == 0, op);
            const size_t n = nt / 3;
            optim::adam(list(t, 0, n), list(t, n, n), list(t, 2 * n, n), d[0], d[1], d[2], d[3], d[4], i[1] != 0,
                        i[0]);
            return Tensor();
        }
        case Op::ASSIGN: optim::assign(*t[0], *t[1]); return Tensor();
        case Op::BUMP_VERSION: optim::bump_version(*t[0]); return Tensor();
        case Op::SET_GRAD_ENABLED: set_grad_enabled(i[0] != 0); return Tensor();
        case Op::SET_POLICY:
            set_active_policy(i[0] < 0 ? std::shared_ptr<Policy>() : policies.at((size_t)i[0]));
            return Tensor();
        case Op::BEGIN_STEP:
            // The policy clock is pass-based now (sampling.h): there is no step hook to replay.
            // The id stays reserved so old plan files fail loudly instead of shifting op ids.
            throw RuntimeError("replay: begin_step records are no longer supported (the sampling policy "
                               "advances per pass); re-record the step");
        case Op::VIEW: {
            need(ni >= 3 && ni == (size_t)(3 + 2 * i[2]), op);
            const int64_t nd_ = i[2];
            // Bounds of the view inside its base's storage (records from a file are not trusted).
            const Tensor &b = *t[0];
            const int64_t es = (int64_t)dtype_size((DType)i[0]), off = b->offset + i[1];
            int64_t hi = off;
            bool ok = i[0] >= 0 && i[0] <= (int64_t)DType::I32 && off >= 0 && (DType)i[0] == b->dtype;
            for (int64_t k = 0; k < nd_ && ok; ++k) {
                const int64_t n = i[3 + k], st = i[3 + nd_ + k];
                ok = n >= 0 && st >= 0 && (n == 0 || st <= (int64_t)b->storage->nbytes);
                if (ok && n > 0) hi += (n - 1) * st;
            }
            need(ok && (hi + 1) * es <= (int64_t)b->storage->nbytes, op);
            Tensor v = view(*t[0], Shape(i + 3, i + 3 + nd_), Shape(i + 3 + nd_, i + 3 + 2 * nd_),
                            (*t[0])->offset + i[1]);
            v->dtype = (DType)i[0];
            return v;
        }
        case Op::GET_GRAD: return (*t[0])->grad;
        case Op::LINEAR_CHAIN: {
            need(ni >= 1 && nt == 1 + 2 * ni, op);
            std::vector<ops::ChainLayer> layers(ni);
            for (size_t k = 0; k < ni; ++k) {
                layers[k].W = *t[1 + 2 * k];
                layers[k].b = *t[2 + 2 * k];
                layers[k].relu = i[k] != 0;
            }
            return ops::linear_chain(*t[0], layers);
        }
        case Op::COUNT_: break;
    }
    throw RuntimeError(str("replay: unknown op id ", (int)op));
}

}  // namespace replay
}  // namespace spad
