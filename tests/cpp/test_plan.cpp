// test_plan.cpp — compiled plans through the C API: a step (MLP 3-16-2, MSE, SGD with momentum)
// recorded in C++ with the replay Recorder, saved, loaded with spad_plan_load and trained with
// spad_plan_step (which runs the lowered executor, replay/lower.h) must follow the eager step
// bit for bit, exact and under a sampling policy saved with the plan (RAD, SPAD); a too-small
// step arena, a corrupt file and wrong inputs are refused with clear status codes.
#include <spad/spad.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"
#include "core/ops.h"
#include "core/optim.h"
#include "core/replay/plan_file.h"
#include "core/replay/program.h"
#include "core/sampling/sampling.h"

using namespace spad;

namespace {

struct Net {
    std::vector<Tensor> params, bufs;
};

Net make_net() {
    Net n;
    const int64_t shapes[4][2] = {{3, 16}, {1, 16}, {16, 2}, {1, 2}};
    for (int k = 0; k < 4; ++k) {
        Shape s = k % 2 ? Shape{shapes[k][1]} : Shape{shapes[k][0], shapes[k][1]};
        Tensor p = empty(s, DType::F32);
        for (int64_t i = 0; i < p->numel(); ++i) p->data<float>()[i] = 0.05f * (float)((i * 7 + k * 3) % 11) - 0.25f;
        p->requires_grad = true;
        p->storage->is_param = true;
        n.params.push_back(p);
        n.bufs.push_back(zeros(s, DType::F32));
    }
    return n;
}

void batch(int step, Tensor &x, Tensor &y) {
    x = empty({4, 3}, DType::F32);
    y = empty({4, 2}, DType::F32);
    for (int i = 0; i < 12; ++i) x->data<float>()[i] = 0.1f * (float)((i + step) % 9) - 0.3f;
    for (int i = 0; i < 8; ++i) y->data<float>()[i] = 0.2f * (float)((i * 3 + step) % 5) - 0.4f;
}

// One step, either eagerly or through a recorder (the same calls the Python bindings make),
// its forward pass under `pol` when given (as spad.sampling.use records it).
Tensor step(Net &n, const Tensor &x, const Tensor &y, replay::Recorder *r,
            const std::shared_ptr<Policy> &pol = nullptr) {
    using replay::Op;
    const std::vector<std::shared_ptr<Policy>> pols = pol ? std::vector<std::shared_ptr<Policy>>{pol}
                                                          : std::vector<std::shared_ptr<Policy>>{};
    auto call = [&](Op op, std::vector<const Tensor *> ts, std::vector<int64_t> is, std::vector<double> ds) {
        if (r) return r->call_list(op, ts, is, ds);
        return replay::exec(op, ts.data(), ts.size(), is.data(), is.size(), ds.data(), ds.size(), pols);
    };
    if (pol) call(Op::SET_POLICY, {}, {r ? r->policy_index(pol) : 0}, {});
    Tensor h = call(Op::LINEAR, {&x, &n.params[0], &n.params[1]}, {}, {});
    h = call(Op::RELU, {&h}, {}, {});
    Tensor out = call(Op::LINEAR, {&h, &n.params[2], &n.params[3]}, {}, {});
    Tensor loss = call(Op::MSE, {&out, &y}, {}, {});
    if (pol) call(Op::SET_POLICY, {}, {-1}, {});
    std::vector<const Tensor *> ps;
    for (const Tensor &p : n.params) ps.push_back(&p);
    call(Op::CLEAR_GRADS, ps, {}, {});
    Tensor none;
    call(Op::BACKWARD, {&loss, &none}, {0, 0}, {});
    for (const Tensor &b : n.bufs) ps.push_back(&b);
    call(Op::SGD, ps, {4, 0}, {0.1, 0.9, 0.0});
    return loss;
}

// One step of the loaded plan on (x, y) through the C API, its loss in `loss`.
void plan_step(spad_ctx_t *ctx, spad_plan_t *plan, const Tensor &x, const Tensor &y, double &loss) {
    spad_tensor_t *in[2];
    int64_t xs[2] = {4, 3}, ys[2] = {4, 2};
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, xs, x->data<float>(), &in[0]));
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, ys, y->data<float>(), &in[1]));
    loss = -1;
    OK(spad_plan_step(ctx, plan, 2, in, &loss));
}

// The plan's parameters equal the eager net's, bit for bit.
void check_params(spad_ctx_t *ctx, spad_plan_t *plan, const Net &eager) {
    for (int32_t i = 0; i < 4; ++i) {
        spad_tensor_t *p = nullptr;
        OK(spad_plan_param(ctx, plan, i, &p));
        CHECK(std::memcmp(spad_tensor_data(p), eager.params[(size_t)i]->data<float>(),
                          (size_t)eager.params[(size_t)i]->numel() * 4) == 0);
    }
}

void test_plan_trains_like_eager(const std::string &path) {
    Net eager = make_net(), rec = make_net();
    Tensor x, y;
    batch(0, x, y);
    step(eager, x, y, nullptr);
    {
        replay::Recorder r({x, y});
        Tensor loss = step(rec, x, y, &r);
        std::vector<std::string> warnings;
        auto prog = r.finish(loss, warnings);
        CHECK(warnings.empty());
        CHECK(prog->records.size() == 7);
        replay::save_program(*prog, path);
    }
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    spad_plan_t *plan = nullptr;
    OK(spad_plan_load(ctx, path.c_str(), &plan));
    CHECK(spad_plan_num_records(plan) == 7);
    CHECK(spad_plan_num_params(plan) == 4);
    for (int s = 1; s <= 20; ++s) {
        batch(s, x, y);
        Tensor le = step(eager, x, y, nullptr);
        double loss;
        plan_step(ctx, plan, x, y, loss);
        CHECK(loss == item(le));
    }
    check_params(ctx, plan, eager);
    // The same file loaded into a Program runs lowered (replay/lower.h), still bit for bit.
    {
        Net ref = make_net();
        batch(0, x, y);
        step(ref, x, y, nullptr);  // the state the file holds
        auto prog = replay::load_program(path);
        for (int s = 1; s <= 5; ++s) {
            batch(s, x, y);
            Tensor le = step(ref, x, y, nullptr);
            Tensor l = prog->run({x, y});
            CHECK(l && item(l) == item(le));
        }
        CHECK(prog->lower_state == 1 && prog->lowered_runs == 5);
        size_t i = 0;
        for (const Tensor &c : prog->consts) {
            if (!c || !c->requires_grad) continue;
            CHECK(i < ref.params.size() &&
                  std::memcmp(c->data<float>(), ref.params[i]->data<float>(), (size_t)c->numel() * 4) == 0);
            ++i;
        }
        CHECK(i == 4);
    }
    // Wrong inputs: a clear error, nothing run.
    spad_tensor_t *bad[2];
    int64_t s1[2] = {5, 3}, s2[2] = {4, 2};
    float zeros15[15] = {0};
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, s1, zeros15, &bad[0]));
    OK(spad_tensor_from_data(ctx, SPAD_F32, 2, s2, zeros15, &bad[1]));
    CHECK_STATUS(spad_plan_step(ctx, plan, 2, bad, nullptr), SPAD_ERR_VALUE, "recorded with");
    CHECK_STATUS(spad_plan_step(ctx, plan, 1, bad, nullptr), SPAD_ERR_INVALID_ARG, "takes 2 inputs");
    spad_plan_free(plan);
    spad_ctx_free(ctx);
}

// A step recorded under a policy is saved with it; the device follows the eager step (its own
// policy with the same settings, from the same state) sample for sample.
void test_sampled_plan_trains_like_eager(const std::string &path, PolicyKind kind, Estimator est) {
    PolicyConfig c;
    c.kind = kind;
    c.estimator = est;
    c.keep = 0.5;
    c.refresh = 2;
    c.seed = 99;
    auto pe = std::make_shared<Policy>(c), pr = std::make_shared<Policy>(c);
    Net eager = make_net(), rec = make_net();
    Tensor x, y;
    for (int s = 0; s < 3; ++s) {  // the policies' clocks and site states move first
        batch(s, x, y);
        step(eager, x, y, nullptr, pe);
        if (s < 2) step(rec, x, y, nullptr, pr);
    }
    {
        replay::Recorder r({x, y});
        Tensor loss = step(rec, x, y, &r, pr);
        std::vector<std::string> warnings;
        auto prog = r.finish(loss, warnings);
        CHECK(prog->records.size() == 9 && prog->policies.size() == 1);
        replay::save_program(*prog, path);
    }
    // A persistent arena: loading moves the parameters and the site state into it (new
    // storages), and the policy's per-weight state must follow them.
    static std::vector<unsigned char> persistent(1 << 20), scratch(1 << 20);
    spad_ctx_params cp = spad_ctx_default_params();
    cp.persistent_arena = persistent.data();
    cp.persistent_arena_bytes = persistent.size();
    cp.step_arena = scratch.data();
    cp.step_arena_bytes = scratch.size();
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(&cp, &ctx));
    spad_plan_t *plan = nullptr;
    OK(spad_plan_load(ctx, path.c_str(), &plan));
    const size_t mark = spad_ctx_mark(ctx);
    for (int s = 3; s <= 12; ++s) {
        batch(s, x, y);
        Tensor le = step(eager, x, y, nullptr, pe);
        double loss;
        plan_step(ctx, plan, x, y, loss);
        CHECK(loss == item(le));
        OK(spad_ctx_rewind(ctx, mark));
    }
    check_params(ctx, plan, eager);
    CHECK(pe->step == 13);
    spad_plan_free(plan);
    spad_ctx_free(ctx);
}

void test_arena_checked_before_the_first_step(const std::string &path) {
    spad_ctx_params p = spad_ctx_default_params();
    p.step_arena_bytes = 64;  // far below the step's buffers
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(&p, &ctx));
    spad_plan_t *plan = nullptr;
    CHECK_STATUS(spad_plan_load(ctx, path.c_str(), &plan), SPAD_ERR_ALLOC, "step arena");
    CHECK(plan == nullptr);
    spad_ctx_free(ctx);
}

void test_bad_files_refused(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "rb");
    CHECK(f != nullptr);
    if (!f) return;
    std::vector<unsigned char> bytes(1 << 16);
    bytes.resize(std::fread(bytes.data(), 1, bytes.size(), f));
    std::fclose(f);
    spad_ctx_t *ctx = nullptr;
    OK(spad_ctx_init(nullptr, &ctx));
    const std::string bad = path + ".bad";
    for (size_t cut : {(size_t)4, bytes.size() / 3, bytes.size() - 1}) {
        FILE *g = std::fopen(bad.c_str(), "wb");
        std::fwrite(bytes.data(), 1, cut, g);
        std::fclose(g);
        spad_plan_t *plan = nullptr;
        CHECK_STATUS(spad_plan_load(ctx, bad.c_str(), &plan), SPAD_ERR_VALUE, "plan file");
        CHECK(plan == nullptr);
    }
    // Flipped bytes: loads and refuses or trains, but never reads out of bounds (ASan build).
    unsigned seed = 12345;
    for (int trial = 0; trial < 300; ++trial) {
        std::vector<unsigned char> b = bytes;
        for (int k = 0; k < 3; ++k) {
            seed = seed * 1103515245u + 12345u;
            b[8 + (seed >> 8) % (b.size() - 8)] ^= (unsigned char)(1u << ((seed >> 4) % 8));
        }
        FILE *g = std::fopen(bad.c_str(), "wb");
        std::fwrite(b.data(), 1, b.size(), g);
        std::fclose(g);
        spad_plan_t *plan = nullptr;
        if (spad_plan_load(ctx, bad.c_str(), &plan) == SPAD_OK) {
            Tensor x, y;
            batch(0, x, y);
            spad_tensor_t *in[2];
            int64_t xs[2] = {4, 3}, ys[2] = {4, 2};
            OK(spad_tensor_from_data(ctx, SPAD_F32, 2, xs, x->data<float>(), &in[0]));
            OK(spad_tensor_from_data(ctx, SPAD_F32, 2, ys, y->data<float>(), &in[1]));
            (void)spad_plan_step(ctx, plan, 2, in, nullptr);  // any status; only memory safety matters
            spad_plan_free(plan);
        }
    }
    std::remove(bad.c_str());
    spad_ctx_free(ctx);
}

}  // namespace

int main() {
    const std::string path = "test_plan.spadplan";
    test_plan_trains_like_eager(path);
    test_arena_checked_before_the_first_step(path);
    test_bad_files_refused(path);
    const std::string sampled = "test_plan_sampled.spadplan";
    test_sampled_plan_trains_like_eager(sampled, PolicyKind::RAD, Estimator::RAD_SAME);
    test_sampled_plan_trains_like_eager(sampled, PolicyKind::CRS, Estimator::CRS);
    test_sampled_plan_trains_like_eager(sampled, PolicyKind::SPAD, Estimator::SPAD);
    test_bad_files_refused(sampled);  // flipped bytes in the policy section too
    std::remove(path.c_str());
    std::remove(sampled.c_str());
    std::printf("test_plan: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
