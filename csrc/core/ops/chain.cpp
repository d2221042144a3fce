// linear_chain: a run of Linear (+ ReLU) layers recorded from one call, the same nodes as
// calling ops::linear and ops::relu one by one, but with every intermediate activation
// owned by this loop alone. That is what lets each layer write its output over its input
// once the tape no longer needs the input (a sampled payload, or ReLU's 1-bit mask), so a
// sampled forward pass holds one activation at a time instead of two
// (Note [Buffer reuse] in reuse.h). Called from nn.Sequential for such runs.
#include "../ops.h"

namespace spad {
namespace ops {

Tensor linear_chain(const Tensor &x, const std::vector<ChainLayer> &layers) {
    Tensor cur = x;  // the caller's tensor: never reused (its owner still holds it)
    for (size_t i = 0; i < layers.size(); ++i) {
        const ChainLayer &L = layers[i];
        SPAD_CHECK(L.W, ValueError, "linear_chain: layer ", i, " has no weight");
        Tensor y = linear(cur, L.W, L.b);
        cur = std::move(y);  // the previous activation dies here unless the tape keeps it
        if (L.relu) {
            Tensor a = relu(cur);
            cur = std::move(a);
        }
    }
    return cur;
}

}  // namespace ops
}  // namespace spad
