#include "sampler.h"

#include "ops.h"

namespace spad {

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &) { slot.pack_exact(x2d); }

Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &) {
    return ops::matmul(ops::transpose(slot.get(op_name(n.op)), 0, 1), g2d);
}

void pack_conv_input(Node &, SavedTensor &slot, const Tensor &x, const ConvGeom &) { slot.pack_exact(x); }

Tensor conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom) {
    return conv_weight_grad_rows(slot.get(op_name(n.op)), g, geom, RowSet::range(0, geom.rows()));
}

}  // namespace spad
