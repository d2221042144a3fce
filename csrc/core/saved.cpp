#include "saved.h"

#include <algorithm>

namespace spad {

MemStats &mem_stats() {
    static MemStats s;
    return s;
}

void reset_peak_memory_stats() {
    MemStats &m = mem_stats();
    m.peak_tape_bytes = m.tape_bytes;
    m.peak_exact_tape_bytes = m.exact_tape_bytes;
}

// `leaf`: a save of a leaf that requires grad. It holds the storage (tape_refs: numpy views
// of it turn read-only) but costs no tape bytes; bytes are charged while any other save holds it.
static void charge_tape(const std::shared_ptr<Storage> &s, int sign, bool leaf = false) {
    if (!s || s->is_param) return;
    MemStats &m = mem_stats();
    const int32_t before = s->tape_refs - s->leaf_refs;
    s->tape_refs += sign;
    if (leaf) s->leaf_refs += sign;
    const int32_t after = s->tape_refs - s->leaf_refs;
    if (before == 0 && after == 1) {
        if (m.budget >= 0 && m.tape_bytes + (int64_t)s->nbytes > m.budget) {
            s->tape_refs -= sign;
            throw BudgetError(str("tape budget exceeded: saving ", s->nbytes, " bytes would bring the tape to ",
                                  m.tape_bytes + (int64_t)s->nbytes, " bytes, over the budget of ", m.budget,
                                  " bytes; lower the keep fraction, the batch size, or raise the budget"));
        }
        m.tape_bytes += (int64_t)s->nbytes;
        m.peak_tape_bytes = std::max(m.peak_tape_bytes, m.tape_bytes);
    } else if (before == 1 && after == 0) {
        m.tape_bytes -= (int64_t)s->nbytes;
    }
    // A borrowed numpy source turns read-only while any save holds it, charged or not (numpy_bridge.h).
    if (s->tape_hook && sign > 0 && s->tape_refs == 1) s->tape_hook(s->ctx, true);
    if (s->tape_hook && sign < 0 && s->tape_refs == 0) s->tape_hook(s->ctx, false);
}

static std::shared_ptr<ExactCharge> exact_token(const std::shared_ptr<Storage> &s) {
    if (!s) return nullptr;
    if (!s->exact_charge) {
        s->exact_charge = std::make_shared<ExactCharge>();
        s->exact_charge->nbytes = s->nbytes;
    }
    s->exact_charge->is_param = s->is_param;  // may be set after the storage was made
    return s->exact_charge;
}

static void charge_exact(const std::shared_ptr<ExactCharge> &s, int sign) {
    if (!s || s->is_param) return;
    MemStats &m = mem_stats();
    if (sign > 0) {
        if (s->refs++ == 0) {
            m.exact_tape_bytes += (int64_t)s->nbytes;
            m.peak_exact_tape_bytes = std::max(m.peak_exact_tape_bytes, m.exact_tape_bytes);
        }
    } else if (--s->refs == 0) {
        m.exact_tape_bytes -= (int64_t)s->nbytes;
    }
}

// An alias shares storage but carries no grad_fn: saving an op's own output must not
// make the node own itself (a reference cycle).
static Tensor alias(const Tensor &t) { return view(t, t->shape, t->strides, t->offset); }

SavedTensor &SavedTensor::operator=(SavedTensor &&o) noexcept {
    if (this != &o) {
        release();
        kind = o.kind;
        value = std::move(o.value);
        aux = std::move(o.aux);
        exact_src = std::move(o.exact_src);
        ctx = std::move(o.ctx);
        version = o.version;
        seed = o.seed;
        counter = o.counter;
        k = o.k;
        scale = o.scale;
        mode = o.mode;
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

void SavedTensor::pack_sampled(const Tensor &values, const Tensor &a, const Tensor &source) {
    release();
    if (values) charge_tape(values->storage, +1);
    try {
        if (a) charge_tape(a->storage, +1);
    } catch (...) {
        if (values) charge_tape(values->storage, -1);
        throw;
    }
    kind = SaveKind::SAMPLED;
    value = values;
    aux = a;
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
        if (value) charge_tape(value->storage, -1);
        if (aux) charge_tape(aux->storage, -1);
    } else if (kind != SaveKind::SEED) {
        charge_tape(value->storage, -1, uncounted);
    }
    charge_exact(exact_src, -1);
    value.reset();
    aux.reset();
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
