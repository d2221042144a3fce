// capi_internal.h — what the C API's source files share: the handle structs, the
// exception-to-status guard, and the scope that points the core at a context's arenas
// and sampling policy for the duration of one call. Not installed; not for users.
#pragma once
#include "spad/spad.h"

#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/arena.h"
#include "../core/ops.h"
#include "../core/rng.h"
#include "../core/sampling/sampling.h"

struct spad_tensor {
    spad::Tensor t;
};

struct spad_model;  // model_c.cpp
void spad_model_destroy(spad_model *m);

struct spad_ctx {
    // Declared first so that they are destroyed last: every tensor below may live in them.
    std::unique_ptr<spad::Arena> step;     // per-step tensors; null = heap
    std::unique_ptr<spad::Arena> persist;  // parameters, sampler state; null = heap
    // Handles in creation order, so spad_ctx_rewind(mark) can drop a step's tensors.
    std::vector<std::unique_ptr<spad_tensor>> owned;
    std::vector<spad_model *> models;  // owned; freed before the arenas
    std::shared_ptr<spad::Policy> policy;  // null = exact
    bool update_in_backward = false;       // spad_ctx_params.update_in_backward
};

namespace spad_capi {

std::string &last_error();  // per thread

inline spad_status fail(spad_status s, const char *msg) {
    last_error() = msg;
    return s;
}

// A NULL handle, a bad dtype or rank: thrown so that guard() reports it like any other
// error, but under its own status (the caller's bug, not a bad value in the data).
struct ArgError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// Runs f() and turns whatever it throws into a status. Order matters: the core's error
// kinds derive from std::runtime_error, so they must be caught before it.
template <class F> spad_status guard(F &&f) {
    try {
        last_error().clear();
        f();
        return SPAD_OK;
    } catch (const ArgError &e) {
        return fail(SPAD_ERR_INVALID_ARG, e.what());
    } catch (const spad::ValueError &e) {
        return fail(SPAD_ERR_VALUE, e.what());
    } catch (const spad::TypeError &e) {
        return fail(SPAD_ERR_TYPE, e.what());
    } catch (const spad::RuntimeError &e) {
        return fail(SPAD_ERR_RUNTIME, e.what());
    } catch (const spad::BudgetError &e) {
        return fail(SPAD_ERR_BUDGET, e.what());
    } catch (const spad::AllocError &e) {
        return fail(SPAD_ERR_ALLOC, e.what());
    } catch (const std::bad_alloc &) {
        return fail(SPAD_ERR_ALLOC, "out of memory");
    } catch (const std::exception &e) {
        return fail(SPAD_ERR_INTERNAL, e.what());
    } catch (...) {
        return fail(SPAD_ERR_INTERNAL, "unknown error in the spad core");
    }
}

// A C caller may pass any integer where an enum is declared; loading an out-of-range value
// as the C++ enum type is undefined behaviour (UBSan: "invalid value for type"). So the
// bytes are read as the underlying integer and validated before any enum-typed use.
template <class E> inline long long enum_int(const E &e) {
    typename std::underlying_type<E>::type v;
    static_assert(sizeof v == sizeof e, "enum size");
    std::memcpy(&v, &e, sizeof v);
    // As the C caller wrote it: the compiler may pick an unsigned underlying type.
    return (long long)(typename std::make_signed<decltype(v)>::type)v;
}

inline void need(bool ok, const char *fn, const char *what) {
    if (!ok) throw ArgError(spad::str(fn, ": ", what));
}

inline spad_tensor_t *keep(spad_ctx_t *ctx, spad::Tensor t) {
    ctx->owned.push_back(std::unique_ptr<spad_tensor>(new spad_tensor{std::move(t)}));
    return ctx->owned.back().get();
}

inline const spad::Tensor &T(const spad_tensor_t *t, const char *fn, const char *name) {
    if (!t) throw ArgError(spad::str(fn, ": ", name, " is NULL"));
    return t->t;
}

// For one API call: new storages go to the context's step arena, state that outlives the
// step to its persistent arena, and ops see the context's sampling policy. Restores the
// previous settings on exit, so contexts (and Python, which uses none) do not interfere.
struct CtxScope {
    spad::ArenaScope step;
    spad::PersistentArenaScope persist;
    std::shared_ptr<spad::Policy> prev_policy;
    explicit CtxScope(spad_ctx_t *c)
        : step(c ? c->step.get() : nullptr), persist(c ? c->persist.get() : nullptr),
          prev_policy(spad::active_policy()) {
        spad::set_active_policy(c ? c->policy : nullptr);
    }
    ~CtxScope() { spad::set_active_policy(prev_policy); }
};

// The same tensor with its data moved into the persistent arena (if the context has one
// and it is not there yet): parameters must survive every step-arena reset.
void make_persistent(spad_ctx_t *ctx, const spad::Tensor &t);

}  // namespace spad_capi
