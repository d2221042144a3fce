// sampler.h — where sampling policies meet the tape.
//
// An op whose saved tensor feeds only a parameter's gradient (the input x of
// y = x @ W, used for dW = x^T dy) asks pack_weight_input() to save it. With no active
// policy this is an exact save. A policy may instead store a sampled payload (values +
// RNG seed/counter + scale) from which weight_grad() computes an unbiased (or, by
// choice, biased) estimate of dW directly, without densifying.
#pragma once
#include "node.h"

namespace spad {

void pack_weight_input(Node &n, SavedTensor &slot, const Tensor &x2d, const Tensor &W);
Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape);

}  // namespace spad
