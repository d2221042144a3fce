// test_bad_inputs.cpp — the C API's bad-input catalogue: every call below is a mistake a
// caller can make (NULL handles, out-of-range enums, absurd sizes, NaN/inf, wrong shapes,
// garbage files). Each must return the expected status with a message naming the problem:
// no crash, no hang, no SPAD_ERR_INTERNAL. Run by ctest, and under ASan + UBSan in the
// sanitizer build. Out-of-range enum values come from C callers: test_bad_enums.c.
#include <spad/spad.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "check.h"

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

spad_ctx_t *g_ctx = nullptr;
std::vector<const float *> g_params;  // data of the model under test (train_step_untouched)

spad_tensor_t *make(spad_dtype dt, std::vector<int64_t> shape, double fill = 1.0) {
    spad_tensor_t *t = nullptr;
    if (spad_tensor_new(g_ctx, dt, (int32_t)shape.size(), shape.data(), &t) != SPAD_OK) return nullptr;
    const int64_t n = spad_tensor_numel(t);
    if (dt == SPAD_F32)
        for (int64_t i = 0; i < n; ++i) static_cast<float *>(spad_tensor_data(t))[i] = (float)fill;
    if (dt == SPAD_F64)
        for (int64_t i = 0; i < n; ++i) static_cast<double *>(spad_tensor_data(t))[i] = fill;
    if (dt == SPAD_I64)
        for (int64_t i = 0; i < n; ++i) static_cast<int64_t *>(spad_tensor_data(t))[i] = (int64_t)fill;
    return t;
}

spad_tensor_t *param(std::vector<int64_t> shape, double fill = 1.0) {
    spad_tensor_t *t = make(SPAD_F32, shape, fill);
    if (t) spad_tensor_set_requires_grad(g_ctx, t, 1);
    return t;
}

spad_status ctx_init_with(size_t step, size_t persist, int64_t budget = -1) {
    spad_ctx_params p = spad_ctx_default_params();
    p.step_arena_bytes = step;
    p.persistent_arena_bytes = persist;
    p.tape_budget = budget;
    spad_ctx_t *c = nullptr;
    const spad_status s = spad_ctx_init(&p, &c);
    spad_ctx_free(c);
    return s;
}

spad_model_t *mlp(std::vector<int32_t> sizes) {
    spad_model_t *m = nullptr;
    spad_model_mlp(g_ctx, sizes.data(), (int32_t)sizes.size(), 0, &m);
    return m;
}

// A training step on a batch that makes the gradient non-finite must leave every
// parameter exactly as it was (spad.h promises SPAD_ERR_VALUE with parameters untouched).
spad_status train_step_untouched(double x_fill, double lr) {
    spad_model_t *m = mlp({3, 4, 2});
    spad_tensor_t *x = make(SPAD_F32, {2, 3}, x_fill), *y = make(SPAD_F32, {2, 2}, 0.0);
    std::vector<std::vector<float>> before;
    g_params.clear();
    for (int32_t i = 0; i < spad_model_num_params(m); ++i) {
        spad_tensor_t *p = nullptr;
        spad_model_param(g_ctx, m, i, &p);
        const float *d = static_cast<const float *>(spad_tensor_data(p));
        before.emplace_back(d, d + spad_tensor_numel(p));
        g_params.push_back(d);
    }
    double loss = 0;
    const spad_status s = spad_model_train_step(g_ctx, m, x, y, lr, &loss);
    // Compared through the data pointers: spad_model_param would reset the last error that
    // the caller's CHECK_STATUS reads.
    for (size_t i = 0; i < before.size(); ++i) CHECK(i < g_params.size());
    for (size_t i = 0; i < before.size() && i < g_params.size(); ++i)
        CHECK(std::memcmp(g_params[i], before[i].data(), before[i].size() * 4) == 0);
    return s;
}

struct Case {
    const char *name;
    std::function<spad_status()> call;
    spad_status expected;
    const char *fragment;
};

}  // namespace

int main() {
    if (spad_ctx_init(nullptr, &g_ctx) != SPAD_OK) return 1;
    const int64_t big = int64_t(1) << 62;
    const size_t kHuge = ~size_t(0);
    spad_tensor_t *out = nullptr;
    spad_model_t *model = nullptr;
    const unsigned char garbage[] = "SPADMODL\x01\0\0\0\xff\xff\xff\xff";
    const std::vector<Case> cases = {
        // (out-of-range enums are passed from C: tests/cpp/test_bad_enums.c)
        // ---- sizes ----
        {"shape_overflow", [&] { int64_t s[] = {big, 4}; return spad_tensor_new(g_ctx, SPAD_F32, 2, s, &out); },
         SPAD_ERR_VALUE, "too large"},
        {"shape_overflow_3d", [&] { int64_t s[] = {1 << 30, 1 << 30, 1 << 30};
             return spad_tensor_new(g_ctx, SPAD_F32, 3, s, &out); }, SPAD_ERR_VALUE, "too large"},
        {"shape_zero_times_huge", [&] { int64_t s[] = {0, big, big}; return spad_tensor_new(g_ctx, SPAD_F32, 3, s, &out); },
         SPAD_ERR_VALUE, "too large"},
        {"shape_negative", [&] { int64_t s[] = {-1}; return spad_tensor_new(g_ctx, SPAD_F32, 1, s, &out); },
         SPAD_ERR_VALUE, "negative"},
        {"shape_int64_min", [&] { int64_t s[] = {INT64_MIN, 2}; return spad_tensor_new(g_ctx, SPAD_F32, 2, s, &out); },
         SPAD_ERR_VALUE, "negative"},
        {"ndim_negative", [&] { int64_t s[] = {1}; return spad_tensor_new(g_ctx, SPAD_F32, -1, s, &out); },
         SPAD_ERR_INVALID_ARG, "ndim"},
        {"ndim_huge", [&] { int64_t s[] = {1}; return spad_tensor_new(g_ctx, SPAD_F32, 1000, s, &out); },
         SPAD_ERR_INVALID_ARG, "ndim"},
        {"shape_null", [&] { return spad_tensor_new(g_ctx, SPAD_F32, 2, nullptr, &out); }, SPAD_ERR_INVALID_ARG,
         "shape is NULL"},
        {"from_data_null", [&] { int64_t s[] = {3}; return spad_tensor_from_data(g_ctx, SPAD_F32, 1, s, nullptr, &out); },
         SPAD_ERR_INVALID_ARG, "data is NULL"},
        {"from_data_overflow", [&] { int64_t s[] = {big, big}; float d = 0;
             return spad_tensor_from_data(g_ctx, SPAD_F64, 2, s, &d, &out); }, SPAD_ERR_VALUE, "too large"},
        {"alloc_too_big", [&] { int64_t s[] = {int64_t(1) << 20, int64_t(1) << 20};
             return spad_tensor_new(g_ctx, SPAD_F32, 2, s, &out); },
         // 4 TiB: the heap refuses it on 64-bit hosts; a 32-bit device cannot even address it
         sizeof(void *) >= 8 ? SPAD_ERR_ALLOC : SPAD_ERR_VALUE, "bytes"},
        // ---- NULL handles ----
        {"tensor_new_ctx_null", [&] { int64_t s[] = {1}; return spad_tensor_new(nullptr, SPAD_F32, 1, s, &out); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        {"tensor_new_out_null", [&] { int64_t s[] = {1}; return spad_tensor_new(g_ctx, SPAD_F32, 1, s, nullptr); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        {"add_null", [&] { return spad_add(g_ctx, nullptr, make(SPAD_F32, {2}), &out); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"matmul_null", [&] { return spad_matmul(g_ctx, make(SPAD_F32, {2, 2}), nullptr, &out); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        {"relu_null", [&] { return spad_relu(g_ctx, nullptr, &out); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"backward_null", [&] { return spad_backward(g_ctx, nullptr); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"item_null", [&] { double v; return spad_tensor_item(nullptr, &v); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"item_out_null", [&] { return spad_tensor_item(make(SPAD_F32, {}), nullptr); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"grad_null", [&] { return spad_tensor_grad(g_ctx, nullptr, &out); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"mem_stats_null", [&] { return spad_mem_stats_get(nullptr); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"arena_stats_null", [&] { return spad_ctx_arena_stats(g_ctx, nullptr); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"rewind_future", [&] { return spad_ctx_rewind(g_ctx, spad_ctx_mark(g_ctx) + 10); }, SPAD_ERR_INVALID_ARG,
         "mark"},
        // ---- contexts ----
        {"ctx_init_out_null", [&] { return spad_ctx_init(nullptr, nullptr); }, SPAD_ERR_INVALID_ARG, "out is NULL"},
        {"ctx_step_arena_size_max", [&] { return ctx_init_with(kHuge, 0); }, SPAD_ERR_VALUE, "cannot be reserved"},
        {"ctx_persist_arena_size_max", [&] { return ctx_init_with(0, kHuge); }, SPAD_ERR_VALUE, "cannot be reserved"},
        {"ctx_arena_size_max_minus", [&] { return ctx_init_with(kHuge - 7, 0); }, SPAD_ERR_VALUE, "cannot be reserved"},
        {"ctx_budget_negative", [&] { return ctx_init_with(0, 0, -5); }, SPAD_ERR_INVALID_ARG, "tape_budget"},
        {"budget_set_negative", [&] { return spad_tape_budget_set(-2); }, SPAD_ERR_INVALID_ARG, "budget"},
        // ---- policies ----
        {"policy_keep_0", [&] { return spad_ctx_set_policy(g_ctx, SPAD_POLICY_RAD, 0.0, 1, 0); }, SPAD_ERR_VALUE, "keep"},
        {"policy_keep_nan", [&] { return spad_ctx_set_policy(g_ctx, SPAD_POLICY_RAD, kNaN, 1, 0); }, SPAD_ERR_VALUE,
         "keep"},
        {"policy_keep_2", [&] { return spad_ctx_set_policy(g_ctx, SPAD_POLICY_SPAD, 2.0, 1, 0); }, SPAD_ERR_VALUE,
         "keep"},
        {"policy_refresh_0", [&] { return spad_ctx_set_policy(g_ctx, SPAD_POLICY_SPAD, 0.5, 0, 0); }, SPAD_ERR_VALUE,
         "refresh"},
        {"policy_ctx_null", [&] { return spad_ctx_set_policy(nullptr, SPAD_POLICY_RAD, 0.5, 1, 0); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        // ---- ops ----
        {"matmul_shapes", [&] { return spad_matmul(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_F32, {4, 2}), &out); },
         SPAD_ERR_VALUE, "matmul"},
        {"add_broadcast", [&] { return spad_add(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_F32, {4}), &out); },
         SPAD_ERR_VALUE, "broadcast"},
        {"add_dtypes", [&] { return spad_add(g_ctx, make(SPAD_F32, {2}), make(SPAD_F64, {2}), &out); }, SPAD_ERR_TYPE,
         "float"},
        {"relu_int", [&] { return spad_relu(g_ctx, make(SPAD_I64, {2}), &out); }, SPAD_ERR_TYPE, "int64"},
        {"linear_shapes", [&] { return spad_linear(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_F32, {4, 2}), nullptr, &out); },
         SPAD_ERR_VALUE, "linear"},
        {"mse_shapes", [&] { return spad_mse_loss(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_F32, {3, 2}), &out); },
         SPAD_ERR_VALUE, "mse"},
        {"ce_label_range", [&] { return spad_cross_entropy(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_I64, {2}, 7), &out); },
         SPAD_ERR_VALUE, "label"},
        {"ce_label_negative", [&] { return spad_cross_entropy(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_I64, {2}, -1), &out); },
         SPAD_ERR_VALUE, "label"},
        {"ce_label_float", [&] { return spad_cross_entropy(g_ctx, make(SPAD_F32, {2, 3}), make(SPAD_F32, {2}), &out); },
         SPAD_ERR_TYPE, "integers"},
        {"ce_nan_logits", [&] { return spad_cross_entropy(g_ctx, make(SPAD_F32, {2, 3}, kNaN), make(SPAD_I64, {2}, 0), &out); },
         SPAD_ERR_VALUE, "NaN"},
        {"item_many", [&] { double v; return spad_tensor_item(make(SPAD_F32, {3}), &v); }, SPAD_ERR_VALUE, "one element"},
        {"backward_not_scalar", [&] { return spad_backward(g_ctx, param({3})); }, SPAD_ERR_RUNTIME, "scalar"},
        {"requires_grad_int", [&] { return spad_tensor_set_requires_grad(g_ctx, make(SPAD_I64, {2}), 1); }, SPAD_ERR_TYPE,
         "float"},
        // ---- optimizer ----
        {"sgd_lr_nan", [&] { spad_tensor_t *w = param({3}); return spad_sgd_step(g_ctx, &w, 1, kNaN); }, SPAD_ERR_VALUE,
         "finite"},
        {"sgd_lr_inf", [&] { spad_tensor_t *w = param({3}); return spad_sgd_step(g_ctx, &w, 1, kInf); }, SPAD_ERR_VALUE,
         "finite"},
        {"sgd_lr_neg_inf", [&] { spad_tensor_t *w = param({3}); return spad_sgd_step(g_ctx, &w, 1, -kInf); },
         SPAD_ERR_VALUE, "finite"},
        {"sgd_params_null", [&] { return spad_sgd_step(g_ctx, nullptr, 2, 0.1); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"sgd_param_entry_null", [&] { spad_tensor_t *ps[] = {param({2}), nullptr}; return spad_sgd_step(g_ctx, ps, 2, 0.1); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        {"sgd_not_leaf", [&] { spad_tensor_t *w = make(SPAD_F32, {2}); return spad_sgd_step(g_ctx, &w, 1, 0.1); },
         SPAD_ERR_RUNTIME, "leaf"},
        // ---- models ----
        {"load_path_null", [&] { return spad_model_load(g_ctx, nullptr, &model); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"load_missing", [&] { return spad_model_load(g_ctx, "/nonexistent/dir/m.spad", &model); }, SPAD_ERR_VALUE,
         "cannot open"},
        {"load_dev_zero", [&] { return spad_model_load(g_ctx, "/dev/zero", &model); }, SPAD_ERR_VALUE, "not a spad model"},
        {"load_directory", [&] { return spad_model_load(g_ctx, "/", &model); }, SPAD_ERR_VALUE, "spad_model_load"},
        {"load_buffer_null", [&] { return spad_model_load_buffer(g_ctx, nullptr, 16, &model); }, SPAD_ERR_INVALID_ARG,
         "NULL"},
        {"load_buffer_garbage", [&] { return spad_model_load_buffer(g_ctx, garbage, sizeof garbage - 1, &model); },
         SPAD_ERR_VALUE, "layer count"},
        {"load_out_null", [&] { return spad_model_load_buffer(g_ctx, garbage, 4, nullptr); }, SPAD_ERR_INVALID_ARG,
         "NULL"},
        {"mlp_zero_inputs", [&] { int32_t s[] = {0, 3}; return spad_model_mlp(g_ctx, s, 2, 0, &model); }, SPAD_ERR_VALUE,
         ">= 1"},
        {"mlp_negative", [&] { int32_t s[] = {3, -4, 2}; return spad_model_mlp(g_ctx, s, 3, 0, &model); }, SPAD_ERR_VALUE,
         ">= 1"},
        {"mlp_one_size", [&] { int32_t s[] = {3}; return spad_model_mlp(g_ctx, s, 1, 0, &model); }, SPAD_ERR_INVALID_ARG,
         "two sizes"},
        {"mlp_sizes_null", [&] { return spad_model_mlp(g_ctx, nullptr, 2, 0, &model); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"forward_shape", [&] { return spad_model_forward(g_ctx, mlp({3, 2}), make(SPAD_F32, {2, 5}), &out); },
         SPAD_ERR_VALUE, "linear"},
        {"forward_null_x", [&] { return spad_model_forward(g_ctx, mlp({3, 2}), nullptr, &out); }, SPAD_ERR_INVALID_ARG,
         "NULL"},
        {"train_nan_batch", [&] { return train_step_untouched(kNaN, 0.1); }, SPAD_ERR_VALUE, "NaN or inf"},
        {"train_inf_batch", [&] { return train_step_untouched(kInf, 0.1); }, SPAD_ERR_VALUE, "NaN or inf"},
        {"train_huge_batch", [&] { return train_step_untouched(1e38, 0.1); }, SPAD_ERR_VALUE, "untouched"},
        {"train_lr_nan", [&] { return train_step_untouched(1.0, kNaN); }, SPAD_ERR_VALUE, "lr"},
        {"train_lr_negative", [&] { return train_step_untouched(1.0, -1.0); }, SPAD_ERR_VALUE, "lr"},
        {"train_target_shape", [&] { double l;
             return spad_model_train_step(g_ctx, mlp({3, 2}), make(SPAD_F32, {2, 3}), make(SPAD_F32, {2, 7}), 0.1, &l); },
         SPAD_ERR_VALUE, "mse"},
        {"train_model_null", [&] { double l;
             return spad_model_train_step(g_ctx, nullptr, make(SPAD_F32, {2, 3}), make(SPAD_F32, {2, 2}), 0.1, &l); },
         SPAD_ERR_INVALID_ARG, "NULL"},
        {"save_null", [&] { return spad_model_save(nullptr, "/tmp/x.spad"); }, SPAD_ERR_INVALID_ARG, "NULL"},
        {"save_bad_path", [&] { return spad_model_save(mlp({2, 2}), "/nonexistent/dir/m.spad"); }, SPAD_ERR_VALUE,
         "cannot open"},
    };
    int n = 0;
    for (const Case &c : cases) {
        const int before = g_failures;
        const size_t mark = spad_ctx_mark(g_ctx);
        CHECK_STATUS(c.call(), c.expected, c.fragment);
        spad_ctx_set_policy(g_ctx, SPAD_POLICY_EXACT, 1.0, 1, 0);
        spad_ctx_rewind(g_ctx, mark);
        if (g_failures != before) std::fprintf(stderr, "  case %s (expected %s, '%s')\n", c.name,
                                               spad_status_str(c.expected), c.fragment);
        ++n;
    }
    // Not status-returning, but part of the contract: out-of-range inputs give neutral answers.
    CHECK(spad_tensor_dim(nullptr, 0) == -1);
    CHECK(spad_tensor_numel(nullptr) == 0);
    CHECK(spad_tensor_data(nullptr) == nullptr);
    CHECK(spad_model_num_params(nullptr) == 0);
    spad_ctx_free(nullptr);
    spad_model_free(g_ctx, nullptr);
    spad_ctx_free(g_ctx);
    std::printf("%d cases, %d checks, %d failures\n", n, g_checks, g_failures);
    return g_failures ? 1 : 0;
}
