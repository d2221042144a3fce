// spad_c.cpp — the C API (csrc/include/spad/spad.h) over core/.
//
// Every entry point runs its body through guard(), which catches every exception and maps
// it to a spad_status plus a thread-local message: no exception may unwind into C code
// (that is undefined behaviour, and an embedded caller has no way to catch it).
#include "capi_internal.h"

#include <cmath>

using namespace spad_capi;

std::string &spad_capi::last_error() {
    thread_local std::string msg;
    return msg;
}

namespace {

spad::DType to_dtype(const spad_dtype &d, const char *fn) {
    const long long v = enum_int(d);  // never load an unchecked value as the enum type
    if (v == SPAD_F32) return spad::DType::F32;
    if (v == SPAD_F64) return spad::DType::F64;
    if (v == SPAD_I64) return spad::DType::I64;
    throw ArgError(spad::str(fn, ": unknown dtype ", v, " (expected SPAD_F32, SPAD_F64 or SPAD_I64)"));
}

spad::Shape to_shape(int32_t ndim, const int64_t *shape, const char *fn) {
    need(ndim >= 0 && ndim <= SPAD_MAX_DIMS, fn, "ndim must be in 0..SPAD_MAX_DIMS");
    need(ndim == 0 || shape, fn, "shape is NULL");
    return spad::Shape(shape, shape + ndim);
}

// Shared body of the ops: check handles, run the core op, hand out the result.
template <class F> spad_status run_op(spad_ctx_t *ctx, spad_tensor_t **out, const char *fn, F &&op) {
    return guard([&] {
        need(ctx && out, fn, "ctx and out must not be NULL");
        *out = nullptr;
        CtxScope scope(ctx);
        spad::Tensor r = op();
        *out = keep(ctx, std::move(r));
    });
}

}  // namespace

extern "C" {

const char *spad_last_error(void) { return last_error().c_str(); }

const char *spad_status_str(spad_status status) {
    const long long v = enum_int(status);
    if (v < SPAD_OK || v > SPAD_ERR_INTERNAL) return "unknown status";
    switch ((spad_status)v) {
        case SPAD_OK: return "ok";
        case SPAD_ERR_VALUE: return "value error";
        case SPAD_ERR_TYPE: return "type error";
        case SPAD_ERR_RUNTIME: return "runtime error";
        case SPAD_ERR_BUDGET: return "tape budget exceeded";
        case SPAD_ERR_ALLOC: return "out of memory";
        case SPAD_ERR_INVALID_ARG: return "invalid argument";
        case SPAD_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

// ---- context ----
spad_ctx_params spad_ctx_default_params(void) {
    spad_ctx_params p;
    std::memset(&p, 0, sizeof p);  // no arenas: the heap
    p.tape_budget = -1;
    return p;
}

spad_status spad_ctx_init(const spad_ctx_params *params, spad_ctx_t **out) {
    return guard([&] {
        need(out != nullptr, "spad_ctx_init", "out is NULL");
        *out = nullptr;
        spad_ctx_params p = params ? *params : spad_ctx_default_params();
        need(p.tape_budget >= -1, "spad_ctx_init", "tape_budget must be >= 0 bytes, or -1 for none");
        std::unique_ptr<spad_ctx> ctx(new spad_ctx);
        // One arena per role; a NULL buffer with a size means "reserve it for me".
        auto make = [&](void *buf, size_t bytes) -> std::unique_ptr<spad::Arena> {
            if (p.measure) return std::unique_ptr<spad::Arena>(new spad::Arena(spad::Arena::measuring()));
            if (bytes == 0) return nullptr;
            // An owned arena is one heap block: refuse sizes that cannot be one (SIZE_MAX
            // used to round up to an empty arena) with a clear message, not a later failure.
            SPAD_CHECK(buf || bytes <= (size_t)INT64_MAX / 2, ValueError, "spad_ctx_init: an arena of ", bytes,
                       " bytes cannot be reserved (too large); pass a smaller size or your own buffer");
            return std::unique_ptr<spad::Arena>(buf ? new spad::Arena(buf, bytes) : new spad::Arena(bytes));
        };
        ctx->step = make(p.step_arena, p.step_arena_bytes);
        ctx->persist = make(p.persistent_arena, p.persistent_arena_bytes);
        need(p.update_in_backward == 0 || p.update_in_backward == 1, "spad_ctx_init",
             "update_in_backward must be 0 or 1");
        ctx->update_in_backward = p.update_in_backward != 0;
        spad::mem_stats().budget.store(p.tape_budget);
        spad::manual_seed(p.seed);
        *out = ctx.release();
    });
}

void spad_ctx_free(spad_ctx_t *ctx) {
    if (!ctx) return;
    // Everything that may hold arena memory goes before the arenas themselves.
    for (spad_model *m : ctx->models) spad_model_destroy(m);
    ctx->models.clear();
    // Drop handles newest first: a graph is released from its loss back to its leaves.
    while (!ctx->owned.empty()) ctx->owned.pop_back();
    ctx->policy.reset();
    delete ctx;
}

size_t spad_ctx_mark(const spad_ctx_t *ctx) { return ctx ? ctx->owned.size() : 0; }

spad_status spad_ctx_rewind(spad_ctx_t *ctx, size_t mark) {
    return guard([&] {
        need(ctx != nullptr, "spad_ctx_rewind", "ctx is NULL");
        need(mark <= ctx->owned.size(), "spad_ctx_rewind", "mark is newer than the context (already rewound?)");
        while (ctx->owned.size() > mark) ctx->owned.pop_back();
        // With nothing left in it, the step arena starts the next step empty (the free
        // list already reuses memory; a reset also drops holes it could not record).
        if (ctx->step && ctx->step->live_blocks() == 0) ctx->step->reset();
    });
}

// ---- tensors ----
spad_status spad_tensor_new(spad_ctx_t *ctx, spad_dtype dtype, int32_t ndim, const int64_t *shape,
                            spad_tensor_t **out) {
    const char *fn = "spad_tensor_new";
    return run_op(ctx, out, fn, [&] { return spad::zeros(to_shape(ndim, shape, fn), to_dtype(dtype, fn)); });
}

spad_status spad_tensor_from_data(spad_ctx_t *ctx, spad_dtype dtype, int32_t ndim, const int64_t *shape,
                                  const void *data, spad_tensor_t **out) {
    const char *fn = "spad_tensor_from_data";
    return run_op(ctx, out, fn, [&] {
        spad::Tensor t = spad::empty(to_shape(ndim, shape, fn), to_dtype(dtype, fn));
        const size_t n = spad::checked_bytes(t->numel(), spad::dtype_size(t->dtype), fn);
        need(data || n == 0, fn, "data is NULL");
        if (n) std::memcpy(t->raw(), data, n);
        return t;
    });
}

void *spad_tensor_data(const spad_tensor_t *t) { return t ? t->t->raw() : nullptr; }

spad_dtype spad_tensor_dtype(const spad_tensor_t *t) {
    if (t && t->t->dtype == spad::DType::F64) return SPAD_F64;
    if (t && t->t->dtype == spad::DType::I64) return SPAD_I64;
    return SPAD_F32;
}

int32_t spad_tensor_ndim(const spad_tensor_t *t) { return t ? (int32_t)t->t->ndim() : 0; }

int64_t spad_tensor_dim(const spad_tensor_t *t, int32_t axis) {
    if (!t || axis < 0 || axis >= t->t->ndim()) return -1;
    return t->t->shape[axis];
}

int64_t spad_tensor_numel(const spad_tensor_t *t) { return t ? t->t->numel() : 0; }

spad_status spad_tensor_item(const spad_tensor_t *t, double *out) {
    return guard([&] {
        need(out != nullptr, "spad_tensor_item", "out is NULL");
        *out = spad::item(T(t, "spad_tensor_item", "t"));
    });
}

spad_status spad_tensor_set_requires_grad(spad_ctx_t *ctx, spad_tensor_t *t, int on) {
    return guard([&] {
        const char *fn = "spad_tensor_set_requires_grad";
        need(ctx != nullptr, fn, "ctx is NULL");
        const spad::Tensor &x = T(t, fn, "t");
        SPAD_CHECK(x->is_leaf() || on, RuntimeError, fn, ": only leaf tensors can stop requiring grad");
        SPAD_CHECK(!on || spad::is_floating(x->dtype), TypeError, fn, ": only float tensors can require gradients, got ",
                   spad::dtype_name(x->dtype));
        x->requires_grad = on != 0;
    });
}

spad_status spad_tensor_set_param(spad_ctx_t *ctx, spad_tensor_t *t) {
    spad_status s = spad_tensor_set_requires_grad(ctx, t, 1);
    if (s != SPAD_OK) return s;
    return guard([&] {
        make_persistent(ctx, t->t);
        spad::set_category(*t->t->storage, spad::MemCategory::PARAMETERS);
    });
}

int spad_tensor_requires_grad(const spad_tensor_t *t) { return t && t->t->requires_grad ? 1 : 0; }

spad_status spad_tensor_grad(spad_ctx_t *ctx, const spad_tensor_t *t, spad_tensor_t **out) {
    return guard([&] {
        need(ctx && out, "spad_tensor_grad", "ctx and out must not be NULL");
        *out = nullptr;
        CtxScope scope(ctx);
        const spad::Tensor &x = T(t, "spad_tensor_grad", "t");
        if (x->grad) *out = keep(ctx, spad::contiguous(x->grad));
    });
}

spad_status spad_tensor_zero_grad(spad_ctx_t *ctx, spad_tensor_t *t) {
    return guard([&] {
        need(ctx != nullptr, "spad_tensor_zero_grad", "ctx is NULL");
        T(t, "spad_tensor_zero_grad", "t")->grad.reset();
    });
}

// ---- ops ----
#define SPAD_C_BINARY(NAME)                                                                        \
    spad_status spad_##NAME(spad_ctx_t *ctx, const spad_tensor_t *a, const spad_tensor_t *b,       \
                            spad_tensor_t **out) {                                                 \
        return run_op(ctx, out, "spad_" #NAME,                                                     \
                      [&] { return spad::ops::NAME(T(a, #NAME, "a"), T(b, #NAME, "b")); });        \
    }
SPAD_C_BINARY(add)
SPAD_C_BINARY(sub)
SPAD_C_BINARY(mul)
SPAD_C_BINARY(matmul)
#undef SPAD_C_BINARY

spad_status spad_linear(spad_ctx_t *ctx, const spad_tensor_t *x, const spad_tensor_t *W, const spad_tensor_t *b,
                        spad_tensor_t **out) {
    return run_op(ctx, out, "spad_linear", [&] {
        return spad::ops::linear(T(x, "linear", "x"), T(W, "linear", "W"), b ? b->t : spad::Tensor());
    });
}

spad_status spad_relu(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out) {
    return run_op(ctx, out, "spad_relu", [&] { return spad::ops::relu(T(x, "relu", "x")); });
}

spad_status spad_tanh(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out) {
    return run_op(ctx, out, "spad_tanh", [&] { return spad::ops::tanh(T(x, "tanh", "x")); });
}

spad_status spad_sum(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out) {
    return run_op(ctx, out, "spad_sum", [&] { return spad::ops::sum(T(x, "sum", "x"), {}, false); });
}

spad_status spad_mean(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out) {
    return run_op(ctx, out, "spad_mean", [&] { return spad::ops::mean(T(x, "mean", "x"), {}, false); });
}

spad_status spad_mse_loss(spad_ctx_t *ctx, const spad_tensor_t *pred, const spad_tensor_t *target,
                          spad_tensor_t **out) {
    return run_op(ctx, out, "spad_mse_loss", [&] {
        return spad::ops::mse_loss(T(pred, "mse_loss", "pred"), T(target, "mse_loss", "target"));
    });
}

spad_status spad_cross_entropy(spad_ctx_t *ctx, const spad_tensor_t *logits, const spad_tensor_t *labels,
                               spad_tensor_t **out) {
    return run_op(ctx, out, "spad_cross_entropy", [&] {
        return spad::ops::cross_entropy(T(logits, "cross_entropy", "logits"), T(labels, "cross_entropy", "labels"));
    });
}

// ---- training ----
spad_status spad_backward(spad_ctx_t *ctx, const spad_tensor_t *loss) {
    return guard([&] {
        need(ctx != nullptr, "spad_backward", "ctx is NULL");
        CtxScope scope(ctx);
        spad::backward(T(loss, "spad_backward", "loss"), nullptr, false, false);
    });
}

// Plain SGD over handles, all-or-nothing: every parameter is validated before any is updated.
spad_status spad_sgd_step(spad_ctx_t *ctx, spad_tensor_t *const *params, size_t n_params, double lr) {
    return guard([&] {
        const char *fn = "spad_sgd_step";
        need(ctx != nullptr, fn, "ctx is NULL");
        SPAD_CHECK(std::isfinite(lr), ValueError, fn, ": lr must be a finite number, got ", lr,
                   "; parameters left untouched");
        need(params || n_params == 0, fn, "params is NULL");
        CtxScope scope(ctx);
        // Validate everything first so that an error leaves every parameter untouched.
        for (size_t i = 0; i < n_params; ++i) {
            const spad::Tensor &p = T(params[i], fn, "a parameter");
            SPAD_CHECK(p->is_leaf() && p->requires_grad, RuntimeError, fn, ": parameter ", i, " of shape ",
                       spad::shape_str(p->shape), " is not a leaf that requires grad");
            SPAD_CHECK(p->is_contiguous(), ValueError, fn, ": parameter ", i, " is not contiguous");
            if (p->grad)
                SPAD_CHECK(p->grad->shape == p->shape && p->grad->dtype == p->dtype, RuntimeError, fn,
                           ": gradient of parameter ", i, " does not match it (shape ", spad::shape_str(p->shape), ")");
        }
        for (size_t i = 0; i < n_params; ++i) {
            const spad::Tensor &p = params[i]->t;
            if (!p->grad) continue;
            spad::Tensor g = spad::contiguous(p->grad);
            const int64_t n = p->numel();
            SPAD_FLOAT(p->dtype, S, {
                S *w = p->data<S>();
                const S *d = g->data<S>();
                const S step = (S)lr;
                for (int64_t j = 0; j < n; ++j) w[j] -= step * d[j];
            });
            // A tape that saved this parameter must now refuse to use it: see
            // Note [Saved tensor versions] in core/saved.h.
            p->storage->version++;
        }
    });
}

// ---- memory ----
spad_status spad_ctx_arena_stats(const spad_ctx_t *ctx, spad_arena_stats *out) {
    return guard([&] {
        need(ctx && out, "spad_ctx_arena_stats", "ctx and out must not be NULL");
        auto fill = [](const spad::Arena *a, int64_t &used, int64_t &high, int64_t &cap) {
            used = a ? (int64_t)a->used() : 0;
            high = a ? (int64_t)a->high_water() : 0;
            cap = a && !a->is_measuring() ? (int64_t)a->capacity() : -1;
        };
        fill(ctx->step.get(), out->step_used, out->step_high_water, out->step_capacity);
        fill(ctx->persist.get(), out->persistent_used, out->persistent_high_water, out->persistent_capacity);
    });
}

spad_status spad_ctx_arena_reset_peak(spad_ctx_t *ctx) {
    return guard([&] {
        need(ctx != nullptr, "spad_ctx_arena_reset_peak", "ctx is NULL");
        if (ctx->step) ctx->step->reset_peak();
        if (ctx->persist) ctx->persist->reset_peak();
    });
}

spad_status spad_mem_stats_get(spad_mem_stats *out) {
    return guard([&] {
        need(out != nullptr, "spad_mem_stats_get", "out is NULL");
        const spad::MemSnapshot m = spad::mem_snapshot();
        out->tape_bytes = m.tape_bytes;
        out->peak_tape_bytes = m.peak_tape_bytes;
        out->exact_tape_bytes = m.exact_tape_bytes;
        out->peak_exact_tape_bytes = m.peak_exact_tape_bytes;
        out->budget = m.budget;
        out->allocated_bytes = m.allocated_bytes;
        out->peak_allocated_bytes = m.peak_allocated_bytes;
        static_assert((int)SPAD_MEM_CATEGORIES == spad::kMemCategories, "spad.h categories follow memory.h");
        for (int i = 0; i < spad::kMemCategories; ++i) {
            out->category_bytes[i] = m.by_category[i];
            out->peak_category_bytes[i] = m.peak_by_category[i];
        }
    });
}

void spad_mem_stats_reset_peak(void) { spad::reset_peak_memory_stats(); }

spad_status spad_tape_budget_set(int64_t bytes) {
    return guard([&] {
        need(bytes >= -1, "spad_tape_budget_set", "budget must be >= 0 bytes, or -1 for none");
        spad::mem_stats().budget.store(bytes);
    });
}

}  // extern "C"

void spad_capi::make_persistent(spad_ctx_t *ctx, const spad::Tensor &t) {
    if (!ctx->persist || t->storage->ctx == ctx->persist.get()) return;
    spad::Tensor moved;
    {
        spad::ArenaScope in(ctx->persist.get());
        moved = spad::copy(t);
    }
    moved->storage->version = t->storage->version;
    t->storage = moved->storage;
    t->offset = 0;
    t->strides = moved->strides;
}
