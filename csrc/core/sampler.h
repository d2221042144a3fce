// sampler.h — where sampling policies meet the tape.
//
// An op whose saved tensor feeds only a parameter's gradient (the input x of
// y = x @ W, used for dW = x^T dy) asks pack_weight_input() to save it. With no active
// policy this is an exact save. A policy may instead store a sampled payload (values +
// RNG seed/counter + scale) from which weight_grad() computes an unbiased (or, by
// choice, biased) estimate of dW directly, without densifying.
#pragma once
#include "conv.h"
#include "node.h"

namespace spad {

void pack_weight_input(Node &n, SavedTensor &slot, const Tensor &x2d, const Tensor &W);
Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape);

// conv2d: the saved tensor is the input x (N, C, H, W), never its im2col matrix. A
// policy may instead keep a subset of spatial positions (rows of the im2col matrix, see
// Note [im2col rows] in conv.h) and compute dW from them with add_weight_grad_from_cols.
// Exact by default: dW summed over all rows. g: the output gradient (N, C_out, Ho, Wo).
void pack_conv_input(Node &n, SavedTensor &slot, const Tensor &x, const ConvGeom &geom);
Tensor conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom);

}  // namespace spad
