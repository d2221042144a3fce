#include "sampler.h"

#include "ops.h"

namespace spad {

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &) { slot.pack_exact(x2d); }

Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &) {
    return ops::matmul(ops::transpose(slot.get(op_name(n.op)), 0, 1), g2d);
}

}  // namespace spad
