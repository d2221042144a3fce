#include "saved.h"

#include <algorithm>

namespace spad {

// An alias shares storage but carries no grad_fn: saving an op's own output must not
// make the node own itself (a reference cycle).
static Tensor alias(const Tensor &t) { return view(t, t->shape, t->strides, t->offset); }

SavedTensor &SavedTensor::operator=(SavedTensor &&o) noexcept {
    if (this != &o) {
        release();
        kind = o.kind;
        value = std::move(o.value);
        payload = std::move(o.payload);
        exact_src = std::move(o.exact_src);
        ctx = std::move(o.ctx);
        version = o.version;
        seed = o.seed;
        counter = o.counter;
        uncounted = o.uncounted;
        released = o.released;
        o.kind = SaveKind::NONE;
        o.released = true;
    }
    return *this;
}

void SavedTensor::pack_exact(const Tensor &t, bool is_output, SaveKind as) {
    release();
    // Note [Tape accounting]: a leaf that requires grad lives anyway, like a parameter.
    uncounted = t->is_leaf() && t->requires_grad;
    charge_tape(t->storage, +1, uncounted);
    kind = as;
    value = is_output ? alias(t) : t;
    if (!uncounted) {
        exact_src = exact_token(t->storage);
        charge_exact(exact_src, +1);
    }
    version = t->storage->version;
    released = false;
}

void SavedTensor::pack_mask(const Tensor &bits, const Tensor &source) {
    release();
    (void)source;
    charge_tape(bits->storage, +1);
    kind = SaveKind::MASK1;
    value = bits;
    exact_src = exact_token(bits->storage);  // the exact engine saves the same 1-bit mask
    charge_exact(exact_src, +1);
    released = false;
}

void SavedTensor::pack_seed(uint64_t s, uint64_t c, const Tensor &source) {
    release();
    (void)source;
    kind = SaveKind::SEED;
    seed = s;
    counter = c;
    released = false;
}

void SavedTensor::pack_sampled(std::unique_ptr<SampledPayload> p, const Tensor &source) {
    release();
    const std::vector<Tensor> held = p->kept();
    size_t charged = 0;
    try {
        for (; charged < held.size(); ++charged)
            if (held[charged]) charge_tape(held[charged]->storage, +1);
    } catch (...) {
        while (charged-- > 0)
            if (held[charged]) charge_tape(held[charged]->storage, -1);
        throw;
    }
    kind = SaveKind::SAMPLED;
    payload = std::move(p);
    exact_src = exact_token(source->storage);  // bytes only: the source itself may go
    charge_exact(exact_src, +1);
    released = false;
}

const Tensor &SavedTensor::get(const char *op) const {
    SPAD_CHECK(!released, RuntimeError, op,
               ": trying to backward through the graph a second time (or directly access saved tensors after "
               "they have already been freed). Saved intermediate values of the graph are freed when you call "
               "backward(); specify retain_graph=True if you need to backward through the graph a second time.");
    if (kind == SaveKind::EXACT)
        SPAD_CHECK(value->storage->version == version, RuntimeError, op,
                   ": one of the tensors needed for gradient computation (shape ", shape_str(value->shape),
                   ") has been modified by an in-place operation (version ", version, " -> ",
                   value->storage->version, "); did an optimizer step run between forward and backward?");
    return value;
}

void SavedTensor::release() {
    if (released || kind == SaveKind::NONE) {
        released = true;
        return;
    }
    if (kind == SaveKind::SAMPLED) {
        for (const Tensor &t : payload->kept())
            if (t) charge_tape(t->storage, -1);
    } else if (kind != SaveKind::SEED) {
        charge_tape(value->storage, -1, uncounted);
    }
    charge_exact(exact_src, -1);
    value.reset();
    payload.reset();
    exact_src.reset();
    ctx.reset();
    released = true;
}

}  // namespace spad

// ---- global RNG state (rng.h) ----
#include "rng.h"
namespace spad {
RngState &rng_state() {
    static RngState s;
    return s;
}
void manual_seed(uint64_t seed) {
    rng_state().seed = seed;
    rng_state().counter = 0;
}
uint64_t next_counter(uint64_t blocks) {
    uint64_t c = rng_state().counter;
    rng_state().counter += blocks + 1;
    return c;
}
}  // namespace spad
