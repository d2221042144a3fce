// optim.h — fused, in-place parameter updates (SGD, AdaGrad, RMSProp, Adam/AdamW).
//
// Each call updates a whole list of parameters in one pass over contiguous float32 or
// float64 storage: no temporaries, no tape, one call per optimizer step. The Python
// optimizers (spad/optim.py) own the hyperparameters and the per-parameter state; the
// state tensors usually borrow numpy arrays, so users can inspect them without copies.
//
// Every update writes the parameter in place and therefore bumps its storage's version:
// a tape recorded before the step and replayed after it fails loudly instead of using the
// new weights (Note [Saved tensor versions] in saved.h).
//
// A parameter whose grad is null is skipped (it took no part in the loss), unless the call
// runs inside a gradient-complete hook that was handed an implicit gradient (Note [Implicit
// leaf gradients] in tape.h): then that is the gradient. Every update reads its row-sparse
// form (the rows it leaves out get the update with g = 0, exactly as dense zeros would);
// sgd without momentum also takes one added into p (p -= lr * wd * p, then p += -lr * dW).
// State tensors must match the parameter's shape and dtype and be contiguous; we check, not convert.
#pragma once
#include <vector>

#include "tensor.h"

namespace spad {
namespace optim {

// g = grad + weight_decay * p;  buf = momentum * buf + g;
// p -= lr * (nesterov ? g + momentum * buf : buf)   (buf unused when momentum == 0).
// This is Sutskever's formulation: with nesterov the stored parameters are the
// look-ahead point, so no second gradient evaluation is needed.
void sgd(const std::vector<Tensor> &params, const std::vector<Tensor> &bufs, double lr, double momentum,
         bool nesterov, double weight_decay);

// r += g^2;  p -= lr * g / (sqrt(r) + eps)        (Goodfellow Alg. 8.4)
void adagrad(const std::vector<Tensor> &params, const std::vector<Tensor> &sq, double lr, double eps,
             double weight_decay);

// r = alpha * r + (1 - alpha) * g^2;  s = g / (sqrt(r) + eps)   (Alg. 8.5)
// momentum == 0: p -= lr * s;  else buf = momentum * buf + s and
// p -= lr * buf (heavy ball) or p -= lr * (s + momentum * buf) (Nesterov, Alg. 8.6
// rewritten at the look-ahead point like sgd above).
void rmsprop(const std::vector<Tensor> &params, const std::vector<Tensor> &sq, const std::vector<Tensor> &bufs,
             double lr, double alpha, double eps, double momentum, bool nesterov, double weight_decay);

// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr * (m/bc1) / (sqrt(v/bc2) + eps)
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t (Alg. 8.7). decoupled (AdamW): p *= 1 - lr*wd first
// and g is not changed; otherwise weight decay is added to g (L2, as in Adam).
void adam(const std::vector<Tensor> &params, const std::vector<Tensor> &m, const std::vector<Tensor> &v,
          double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, int64_t step);

// dst[...] = src[...] (same shape and dtype), bumping dst's version: the one sanctioned
// way to overwrite a parameter (load_state_dict, parameter averages).
void assign(const Tensor &dst, const Tensor &src);

// Marks `t`'s storage as written by someone outside the core (a data loader refilling a
// reused batch buffer), so tapes that saved the old contents refuse to use them.
void bump_version(const Tensor &t);

}  // namespace optim
}  // namespace spad
