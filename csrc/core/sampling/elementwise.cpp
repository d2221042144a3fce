// Elementwise products with a leaf (model-agnostic sampling): z = a * x with `a` a leaf
// that requires grad saves x only for a's gradient, so x may be stored Bernoulli-sampled:
// the kept values (scaled by 1/p) + (seed, counter), from which the mask is regenerated.
#include "detail.h"

namespace spad {

using namespace sampling_detail;

// ---- elementwise leaf factors ----------------------------------------------------------
void pack_leaf_factor(SavedTensor &slot, const Tensor &other) {
    PackScope scope(active_policy().get(), nullptr);
    if (scope.exact()) return scope.pack_exact(slot, other);
    Policy *pol = scope.pol;
    Tensor x = contiguous(other);
    const int64_t N = x->numel();
    const double p = pol->cfg.keep;
    RandomStream rs = reserve(*pol, (uint64_t)N);
    int64_t kept = 0;
    for (int64_t i = 0; i < N; ++i) kept += rs.uniform((uint64_t)i) < p;
    Tensor vals = empty({kept}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = vals->data<T>();
        for (int64_t i = 0, o = 0; i < N; ++i)
            if (rs.uniform((uint64_t)i) < p) pv[o++] = px[i] / (T)p;
    });
    slot.pack_sampled(vals, nullptr, other);
    slot.seed = rs.seed;
    slot.counter = rs.counter;
    slot.k = N;
    slot.scale = p;  // keep probability: the mask is regenerated from (seed, counter)
    slot.mode = (uint8_t)Estimator::ELEMENT;
    slot.ctx = payload_ctx(nullptr, scope.step);
}

Tensor unpack_leaf_factor(const SavedTensor &slot, const Shape &shape, const char *op) {
    check_first_order(slot, op);
    mark_read(slot);
    const Tensor &vals = slot.value;
    Tensor out = zeros(shape, vals->dtype);
    const RandomStream rs = stream_of(slot);
    SPAD_FLOAT(vals->dtype, T, {
        const T *pv = vals->data<T>();
        T *po = out->data<T>();
        for (int64_t i = 0, o = 0; i < slot.k; ++i)
            if (rs.uniform((uint64_t)i) < slot.scale) po[i] = pv[o++];
    });
    return out;
}

}  // namespace spad

