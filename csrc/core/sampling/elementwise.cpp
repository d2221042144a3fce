// Elementwise products with a leaf (model-agnostic sampling): z = a * x with `a` a leaf
// that requires grad saves x only for a's gradient, so x may be stored Bernoulli-sampled:
// the kept values (scaled by 1/p) + (seed, counter), from which the mask is regenerated.
#include "detail.h"

namespace spad {

using namespace sampling_detail;

// ElementPayload: the kept elements of the factor, each scaled by 1/keep, in order; the
// mask (element i kept when its uniform < keep) is regenerated from the stream.
struct ElementPayload final : SampledPayload {
    Tensor values;  // (kept)
    RandomStream rs;
    int64_t numel = 0;
    double keep = 1.0;
    std::vector<Tensor> kept() const override { return {values}; }
    Tensor unpack(const Shape &shape) const {
        Tensor out = zeros(shape, values->dtype);
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        SPAD_FLOAT(values->dtype, T, {
            const T *pv = values->data<T>();
            T *po = out->data<T>();
            for (int64_t i = 0, o = 0; i < numel; ++i)
                if (draws.uniform((uint64_t)i) < keep) po[i] = pv[o++];
        });
        return out;
    }
};

void pack_leaf_factor(SavedTensor &slot, const Tensor &other) {
    PackScope scope(active_policy().get(), nullptr);
    if (scope.exact()) return scope.pack_exact(slot, other);
    Policy *pol = scope.pol;
    Tensor x = contiguous(other);
    auto p = std::make_unique<ElementPayload>();
    const int64_t N = p->numel = x->numel();
    const double keep = p->keep = pol->cfg.keep;
    const RandomStream &rs = p->rs = reserve(*pol, (uint64_t)N);
    int64_t kept = 0;
    for (int64_t i = 0; i < N; ++i) kept += rs.uniform((uint64_t)i) < keep;
    p->values = empty({kept}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = p->values->data<T>();
        for (int64_t i = 0, o = 0; i < N; ++i)
            if (rs.uniform((uint64_t)i) < keep) pv[o++] = px[i] / (T)keep;
    });
    slot.pack_sampled(std::move(p), other);
    slot.ctx = payload_ctx(nullptr, scope.step);
}

Tensor unpack_leaf_factor(const SavedTensor &slot, const Shape &shape, const char *op) {
    check_first_order(slot, op);
    mark_read(slot);
    return payload_as<ElementPayload>(slot, op).unpack(shape);
}

}  // namespace spad
