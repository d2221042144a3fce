// plan_c.cpp — training from a saved compiled step (spad_plan_*; format docs/plan_format.md).
#include "../core/memory.h"
#include "../core/replay/plan.h"
#include "../core/replay/plan_file.h"
#include "capi_internal.h"

using namespace spad_capi;

struct spad_plan {
    std::shared_ptr<spad::replay::Program> prog;
    std::vector<spad::Tensor> params;  // captured tensors that require grad, in slot order
};

spad_status spad_plan_load(spad_ctx_t *ctx, const char *path, spad_plan_t **out) {
    return guard([&] {
        need(ctx != nullptr && path != nullptr && out != nullptr, "spad_plan_load", "ctx, path or out is NULL");
        *out = nullptr;
        std::unique_ptr<spad_plan> p(new spad_plan);
        p->prog = spad::replay::load_program(path);
        const spad::replay::ArenaPlan &pl = *p->prog->plan;
        // The step's buffers come from the context's step arena when it has one: refuse a plan
        // that cannot fit before any step runs (the traced peak is a lower bound of its need).
        if (ctx->step && !ctx->step->is_measuring() && ctx->step->capacity() < pl.eager_peak_bytes)
            throw spad::AllocError(spad::str("spad_plan_load: the plan's step buffers peak at ", pl.eager_peak_bytes,
                                             " bytes (arena plan ", pl.arena_bytes, " bytes); the context's step arena "
                                             "holds ", ctx->step->capacity()));
        // Parameters, optimizer state and the policies' per-site tensors outlive every step.
        // (make_persistent copies the data into a new storage: its memory category goes along,
        // so parameters and the sampler's distributions are not counted as tape.)
        spad::replay::move_program_state(*p->prog, [&](const spad::Tensor &c) {
            const spad::MemCategory cat = spad::effective_category(*c->storage);
            make_persistent(ctx, c);
            if (cat != spad::MemCategory::TAPE) spad::set_category(*c->storage, cat);
        });
        for (const spad::Tensor &c : p->prog->consts)
            if (c && c->requires_grad) p->params.push_back(c);
        *out = p.release();
    });
}

spad_status spad_plan_step(spad_ctx_t *ctx, spad_plan_t *plan, int32_t n_inputs, const spad_tensor_t *const *inputs,
                           double *loss) {
    return guard([&] {
        need(ctx != nullptr && plan != nullptr, "spad_plan_step", "ctx or plan is NULL");
        const spad::replay::Program &P = *plan->prog;
        need(n_inputs == P.n_inputs, "spad_plan_step", spad::str("the plan takes ", P.n_inputs, " inputs, got ",
                                                                 n_inputs).c_str());
        need(n_inputs == 0 || inputs != nullptr, "spad_plan_step", "inputs is NULL");
        std::vector<spad::Tensor> in;
        for (int32_t i = 0; i < n_inputs; ++i) {
            const spad::Tensor &t = T(inputs[i], "spad_plan_step", "an input");
            SPAD_CHECK(t->dtype == P.in_dtypes[(size_t)i] && t->shape == P.in_shapes[(size_t)i], ValueError,
                       "spad_plan_step: input ", i, " is ", spad::dtype_name(t->dtype), spad::shape_str(t->shape),
                       ", the plan was recorded with ", spad::dtype_name(P.in_dtypes[(size_t)i]),
                       spad::shape_str(P.in_shapes[(size_t)i]));
            in.push_back(t);
        }
        CtxScope scope(ctx);
        spad::Tensor l = plan->prog->run(in);
        if (loss) *loss = l ? spad::item(l) : 0.0;
    });
}

void spad_plan_free(spad_plan_t *plan) {
    if (!plan) return;
    // The plan owns its parameters: drop their gradients first, so a gradient graph that
    // refers back to its parameter (a cycle) cannot keep them alive.
    for (const spad::Tensor &c : plan->prog->consts)
        if (c) c->grad.reset();
    delete plan;
}

int32_t spad_plan_num_records(const spad_plan_t *plan) { return plan ? (int32_t)plan->prog->records.size() : 0; }

size_t spad_plan_arena_bytes(const spad_plan_t *plan) { return plan ? (size_t)plan->prog->plan->arena_bytes : 0; }

int32_t spad_plan_num_params(const spad_plan_t *plan) { return plan ? (int32_t)plan->params.size() : 0; }

spad_status spad_plan_param(spad_ctx_t *ctx, const spad_plan_t *plan, int32_t i, spad_tensor_t **out) {
    return guard([&] {
        need(ctx != nullptr && plan != nullptr && out != nullptr, "spad_plan_param", "ctx, plan or out is NULL");
        need(i >= 0 && (size_t)i < plan->params.size(), "spad_plan_param", "index out of range");
        *out = keep(ctx, plan->params[(size_t)i]);
    });
}
