// test_core.cpp — tests of the core through the C API, without Python and without a
// test framework (minctest-style macros): gradients against central finite differences
// in float64, error statuses and their messages, the tape budget, SGD training, and tape
// misuse. Run by ctest, also under AddressSanitizer + UBSan (SPAD_SANITIZE=ON).
#include <spad/spad.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "check.h"

// Frees the context on every way out of a test, early returns included, so that a
// failing check does not turn into a leak report under AddressSanitizer.
struct CtxGuard {
    spad_ctx_t *&ctx;
    explicit CtxGuard(spad_ctx_t *&c) : ctx(c) {}
    ~CtxGuard() { spad_ctx_free(ctx); }
};

// Deterministic values in [-1, 1) without <random> (identical on every platform).
struct Lcg {
    uint64_t s;
    explicit Lcg(uint64_t seed) : s(seed * 6364136223846793005ULL + 1442695040888963407ULL) {}
    double next() {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(s >> 11) / (double)(1ULL << 53) * 2.0 - 1.0;
    }
};

static spad_tensor_t *make(spad_ctx_t *ctx, std::vector<int64_t> shape, Lcg &rng, spad_dtype dt = SPAD_F64,
                           double scale = 1.0) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    spad_tensor_t *t = nullptr;
    if (dt == SPAD_F64) {
        std::vector<double> v((size_t)n);
        for (double &x : v) x = scale * rng.next();
        spad_tensor_from_data(ctx, dt, (int32_t)shape.size(), shape.data(), v.data(), &t);
    } else {
        std::vector<float> v((size_t)n);
        for (float &x : v) x = (float)(scale * rng.next());
        spad_tensor_from_data(ctx, dt, (int32_t)shape.size(), shape.data(), v.data(), &t);
    }
    return t;
}

static double scalar(const spad_tensor_t *t) {
    double v = NAN;
    spad_tensor_item(t, &v);
    return v;
}

// Builds a scalar loss from the inputs (a forward pass); returns nullptr on error.
using LossFn = std::function<spad_tensor_t *(spad_ctx_t *, const std::vector<spad_tensor_t *> &)>;

// Backward once, then compare every input's gradient with central differences of the loss.
static void check_grads(const char *name, const std::vector<std::vector<int64_t>> &shapes, const LossFn &f) {
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    CtxGuard guard_(ctx);
    Lcg rng(std::strlen(name));
    std::vector<spad_tensor_t *> in;
    for (const auto &s : shapes) {
        in.push_back(make(ctx, s, rng));
        OK(spad_tensor_set_requires_grad(ctx, in.back(), 1));
    }
    const size_t base = spad_ctx_mark(ctx);
    spad_tensor_t *loss = f(ctx, in);
    CHECK(loss != nullptr);
    if (!loss) return;
    OK(spad_backward(ctx, loss));
    const double eps = 1e-6;
    double worst = 0;
    for (size_t i = 0; i < in.size(); ++i) {
        spad_tensor_t *g = nullptr;
        OK(spad_tensor_grad(ctx, in[i], &g));
        CHECK(g != nullptr);
        if (!g) continue;
        double *x = static_cast<double *>(spad_tensor_data(in[i]));
        const double *ga = static_cast<const double *>(spad_tensor_data(g));
        for (int64_t j = 0; j < spad_tensor_numel(in[i]); ++j) {
            const double old = x[j];
            const size_t m = spad_ctx_mark(ctx);
            x[j] = old + eps;
            const double fp = scalar(f(ctx, in));
            x[j] = old - eps;
            const double fm = scalar(f(ctx, in));
            x[j] = old;
            OK(spad_ctx_rewind(ctx, m));
            const double num = (fp - fm) / (2 * eps);
            const double err = std::fabs(num - ga[j]) / std::max(1.0, std::fabs(num));
            worst = std::max(worst, err);
        }
    }
    if (!(worst < 1e-6)) std::fprintf(stderr, "check_grads(%s): worst relative error %g\n", name, worst);
    CHECK(worst < 1e-6);
    OK(spad_ctx_rewind(ctx, base));
    spad_mem_stats m;
    OK(spad_mem_stats_get(&m));
    CHECK(m.tape_bytes == 0);  // every graph is gone, so nothing may stay charged
}

// sum(out * R) with a fixed random R, so that every output element gets a distinct weight.
static spad_tensor_t *weighted_sum(spad_ctx_t *ctx, spad_tensor_t *out) {
    if (!out) return nullptr;
    Lcg rng(99);
    std::vector<int64_t> shape;
    for (int32_t i = 0; i < spad_tensor_ndim(out); ++i) shape.push_back(spad_tensor_dim(out, i));
    spad_tensor_t *R = make(ctx, shape, rng), *p = nullptr, *s = nullptr;
    if (spad_mul(ctx, out, R, &p) != SPAD_OK || spad_sum(ctx, p, &s) != SPAD_OK) return nullptr;
    return s;
}

static void test_gradients() {
    using V = std::vector<spad_tensor_t *>;
    check_grads("add", {{3, 4}, {4}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_add(c, in[0], in[1], &o) == SPAD_OK ? weighted_sum(c, o) : nullptr;
    });
    check_grads("mul", {{3, 4}, {3, 1}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_mul(c, in[0], in[1], &o) == SPAD_OK ? weighted_sum(c, o) : nullptr;
    });
    check_grads("matmul", {{3, 5}, {5, 2}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_matmul(c, in[0], in[1], &o) == SPAD_OK ? weighted_sum(c, o) : nullptr;
    });
    check_grads("matmul_vec", {{3}, {3}}, [](spad_ctx_t *c, const V &in) {  // regression: 1-D @ 1-D
        spad_tensor_t *o = nullptr;
        if (spad_matmul(c, in[0], in[1], &o) != SPAD_OK || spad_tensor_ndim(o) != 0) return (spad_tensor_t *)nullptr;
        return weighted_sum(c, o);
    });
    check_grads("tanh", {{2, 6}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_tanh(c, in[0], &o) == SPAD_OK ? weighted_sum(c, o) : nullptr;
    });
    check_grads("linear", {{4, 3}, {3, 5}, {5}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_linear(c, in[0], in[1], in[2], &o) == SPAD_OK ? weighted_sum(c, o) : nullptr;
    });
    check_grads("mse_loss", {{4, 3}, {4, 3}}, [](spad_ctx_t *c, const V &in) {
        spad_tensor_t *o = nullptr;
        return spad_mse_loss(c, in[0], in[1], &o) == SPAD_OK ? o : nullptr;
    });
    check_grads("cross_entropy", {{4, 3}}, [](spad_ctx_t *c, const V &in) {
        const int64_t lab[4] = {0, 2, 1, 2}, n = 4;
        spad_tensor_t *labels = nullptr, *o = nullptr;
        if (spad_tensor_from_data(c, SPAD_I64, 1, &n, lab, &labels) != SPAD_OK) return (spad_tensor_t *)nullptr;
        return spad_cross_entropy(c, in[0], labels, &o) == SPAD_OK ? o : nullptr;
    });
    // A small composite: mean(relu(tanh(x @ W) - 0.1)), away from ReLU's kink at 0.
    check_grads("composite", {{3, 4}, {4, 4}}, [](spad_ctx_t *c, const V &in) {
        const double v = 0.1;
        const int64_t one = 1;
        spad_tensor_t *h = nullptr, *t = nullptr, *k = nullptr, *d = nullptr, *r = nullptr, *o = nullptr;
        if (spad_matmul(c, in[0], in[1], &h) || spad_tanh(c, h, &t) ||
            spad_tensor_from_data(c, SPAD_F64, 1, &one, &v, &k) || spad_sub(c, t, k, &d) || spad_relu(c, d, &r) ||
            spad_mean(c, r, &o))
            return (spad_tensor_t *)nullptr;
        return o;
    });
}

static void test_errors() {
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    CtxGuard guard_(ctx);
    Lcg rng(1);
    spad_tensor_t *a = make(ctx, {2, 3}, rng), *b = make(ctx, {4, 5}, rng), *o = nullptr;
    CHECK_STATUS(spad_matmul(ctx, a, b, &o), SPAD_ERR_VALUE, "matmul");
    CHECK(o == nullptr);
    CHECK_STATUS(spad_add(ctx, a, b, &o), SPAD_ERR_VALUE, "add");
    CHECK_STATUS(spad_mse_loss(ctx, a, b, &o), SPAD_ERR_VALUE, "mse_loss");
    CHECK_STATUS(spad_linear(ctx, a, b, nullptr, &o), SPAD_ERR_VALUE, "linear");

    const int64_t lab[2] = {0, 3}, n = 2;  // 3 is out of range for 3 classes
    spad_tensor_t *labels = nullptr;
    OK(spad_tensor_from_data(ctx, SPAD_I64, 1, &n, lab, &labels));
    CHECK_STATUS(spad_cross_entropy(ctx, a, labels, &o), SPAD_ERR_VALUE, "cross_entropy");
    CHECK(std::strstr(spad_last_error(), "out of range") != nullptr);
    CHECK_STATUS(spad_cross_entropy(ctx, a, a, &o), SPAD_ERR_TYPE, "cross_entropy");

    spad_tensor_t *f32 = make(ctx, {2, 3}, rng, SPAD_F32);
    CHECK_STATUS(spad_add(ctx, a, f32, &o), SPAD_ERR_TYPE, "add");
    CHECK_STATUS(spad_add(ctx, nullptr, a, &o), SPAD_ERR_INVALID_ARG, "NULL");
    CHECK_STATUS(spad_tensor_set_requires_grad(ctx, labels, 1), SPAD_ERR_TYPE, "float");
    const int64_t neg = -1;
    CHECK_STATUS(spad_tensor_new(ctx, SPAD_F32, 1, &neg, &o), SPAD_ERR_VALUE, "negative");
    CHECK_STATUS(spad_tensor_new(ctx, (spad_dtype)3, 1, &n, &o), SPAD_ERR_INVALID_ARG, "dtype");
    CHECK_STATUS(spad_backward(ctx, a), SPAD_ERR_RUNTIME, "requires_grad");
    CHECK_STATUS(spad_ctx_rewind(ctx, 1000), SPAD_ERR_INVALID_ARG, "mark");
    OK(spad_add(ctx, a, a, &o));  // a failure leaves the context usable
    CHECK(std::strcmp(spad_last_error(), "") == 0);
}

static void test_backward_twice() {
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    CtxGuard guard_(ctx);
    Lcg rng(2);
    spad_tensor_t *x = make(ctx, {4, 3}, rng), *W = make(ctx, {3, 2}, rng), *y = make(ctx, {4, 2}, rng);
    spad_tensor_t *h = nullptr, *loss = nullptr, *g = nullptr;
    OK(spad_tensor_set_param(ctx, W));
    OK(spad_linear(ctx, x, W, nullptr, &h));
    OK(spad_mse_loss(ctx, h, y, &loss));
    OK(spad_backward(ctx, loss));
    CHECK_STATUS(spad_backward(ctx, loss), SPAD_ERR_RUNTIME, "second time");
    OK(spad_tensor_grad(ctx, W, &g));
    CHECK(g != nullptr);
}

// Forward under a budget too small for the tape: a BUDGET status, nothing recorded, and
// the training step stops before the optimizer, so the parameters keep their values.
static void test_budget() {
    spad_ctx_t *ctx = nullptr;
    spad_ctx_params p = spad_ctx_default_params();
    p.tape_budget = 64;  // bytes; x below is 8*4*4 = 128 bytes
    OK(spad_ctx_init(&p, &ctx));
    CtxGuard guard_(ctx);
    Lcg rng(3);
    spad_tensor_t *x = make(ctx, {8, 4}, rng, SPAD_F32), *W = make(ctx, {4, 3}, rng, SPAD_F32);
    OK(spad_tensor_set_param(ctx, W));
    std::vector<float> before((const float *)spad_tensor_data(W), (const float *)spad_tensor_data(W) + 12);

    spad_tensor_t *h = nullptr;
    spad_status s = spad_linear(ctx, x, W, nullptr, &h);
    CHECK(s == SPAD_ERR_BUDGET);
    CHECK(h == nullptr);
    CHECK(std::strstr(spad_last_error(), "budget") != nullptr);
    if (s == SPAD_OK) {  // a training step only continues on success
        spad_tensor_t *loss = nullptr;
        spad_mean(ctx, h, &loss);
        spad_backward(ctx, loss);
        spad_sgd_step(ctx, &W, 1, 0.1);
    }
    CHECK(std::memcmp(before.data(), spad_tensor_data(W), before.size() * sizeof(float)) == 0);
    spad_mem_stats m;
    OK(spad_mem_stats_get(&m));
    CHECK(m.tape_bytes == 0);
    CHECK(m.budget == 64);

    // Raising the cap makes the same step work; the parameter itself is never charged.
    OK(spad_tape_budget_set(128));
    OK(spad_linear(ctx, x, W, nullptr, &h));
    OK(spad_mem_stats_get(&m));
    CHECK(m.tape_bytes == 128);
    CHECK(m.peak_tape_bytes >= 128);
    CHECK_STATUS(spad_tape_budget_set(-2), SPAD_ERR_INVALID_ARG, "budget");
    OK(spad_tape_budget_set(-1));
    spad_ctx_free(ctx);
    ctx = nullptr;
    OK(spad_mem_stats_get(&m));
    CHECK(m.tape_bytes == 0);
}

// XOR with a 2-8-1 tanh MLP, float32, full batch: 200 SGD steps must cut the loss a lot.
static void test_sgd_xor() {
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    CtxGuard guard_(ctx);
    const float X[8] = {0, 0, 0, 1, 1, 0, 1, 1}, Y[4] = {0, 1, 1, 0};
    const int64_t xs[2] = {4, 2}, ys[2] = {4, 1};
    spad_tensor_t *x = nullptr, *y = nullptr;
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, xs, X, &x));
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, ys, Y, &y));
    Lcg rng(4);
    spad_tensor_t *W1 = make(ctx, {2, 8}, rng, SPAD_F32, 1.0), *b1 = make(ctx, {8}, rng, SPAD_F32, 0.1);
    spad_tensor_t *W2 = make(ctx, {8, 1}, rng, SPAD_F32, 0.5), *b2 = make(ctx, {1}, rng, SPAD_F32, 0.1);
    spad_tensor_t *params[4] = {W1, b1, W2, b2};
    for (spad_tensor_t *p : params) OK(spad_tensor_set_param(ctx, p));
    const size_t mark = spad_ctx_mark(ctx);
    double first = -1, last = -1;
    for (int step = 0; step < 200; ++step) {
        spad_tensor_t *h = nullptr, *a = nullptr, *out = nullptr, *loss = nullptr;
        OK(spad_linear(ctx, x, W1, b1, &h));
        OK(spad_tanh(ctx, h, &a));
        OK(spad_linear(ctx, a, W2, b2, &out));
        OK(spad_mse_loss(ctx, out, y, &loss));
        last = scalar(loss);
        if (step == 0) first = last;
        for (spad_tensor_t *p : params) OK(spad_tensor_zero_grad(ctx, p));
        OK(spad_backward(ctx, loss));
        OK(spad_sgd_step(ctx, params, 4, 0.2));
        OK(spad_ctx_rewind(ctx, mark));  // drop the step's tensors; the context stays small
    }
    std::printf("  xor: loss %.3g -> %.3g after 200 steps\n", first, last);
    CHECK(last < 0.05 * first);
    CHECK(spad_ctx_mark(ctx) == mark);
}

// An SGD step bumps the parameter's version: a graph recorded before it refuses to run.
static void test_sgd_version() {
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    CtxGuard guard_(ctx);
    Lcg rng(5);
    spad_tensor_t *x = make(ctx, {3, 2}, rng), *W = make(ctx, {2, 2}, rng);
    OK(spad_tensor_set_requires_grad(ctx, x, 1));
    OK(spad_tensor_set_param(ctx, W));
    spad_tensor_t *h1 = nullptr, *l1 = nullptr, *h2 = nullptr, *l2 = nullptr;
    OK(spad_matmul(ctx, x, W, &h1));
    OK(spad_sum(ctx, h1, &l1));
    OK(spad_matmul(ctx, x, W, &h2));  // saves W (for dx)
    OK(spad_sum(ctx, h2, &l2));
    OK(spad_backward(ctx, l1));
    OK(spad_sgd_step(ctx, &W, 1, 0.1));
    CHECK_STATUS(spad_backward(ctx, l2), SPAD_ERR_RUNTIME, "modified by an in-place operation");
    spad_tensor_t *notleaf[1] = {h1};
    CHECK_STATUS(spad_sgd_step(ctx, notleaf, 1, 0.1), SPAD_ERR_RUNTIME, "leaf");
}

int main() {
    struct {
        const char *name;
        void (*fn)();
    } tests[] = {
        {"gradients", test_gradients},       {"errors", test_errors}, {"backward_twice", test_backward_twice},
        {"budget", test_budget},             {"sgd_xor", test_sgd_xor}, {"sgd_version", test_sgd_version},
    };
    for (const auto &t : tests) {
        const int before = g_failures;
        t.fn();
        std::printf("%-16s %s\n", t.name, g_failures == before ? "ok" : "FAILED");
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
