// lower_exec.cpp — running a lowered step (lower.h): forward kernels, the generated backward
// and the recorded calls, on raw pointers. Each kernel is written to match the eager op's
// arithmetic exactly (cited per kernel): same gemm arguments, same loop expressions, same
// accumulation order, so lowered == eager bit for bit.
#include <algorithm>
#include <cmath>

#include "../arena.h"
#include "../gemm.h"
#include "../ops.h"
#include "../optim.h"
#include "../rng.h"
#include "../sampling/sampling.h"
#include "../tape.h"
#include "lower_ir.h"

namespace spad {
namespace replay {

namespace {

template <class T> T *at(const Lowered &L, int32_t v) { return reinterpret_cast<T *>(L.ptr[(size_t)v]); }

// Where the gradient of value v goes: its workspace slice, or its parameter's gradient tensor.
template <class T> T *grad_of(const Lowered &L, int32_t v) {
    const LVal &x = L.vals[(size_t)v];
    if (x.param >= 0) return L.grads[(size_t)x.param]->data<T>();
    return reinterpret_cast<T *>(L.ws->data<char>() + x.goff);
}

// ops::relu / tanh / sigmoid forward (elementwise.cpp), in place.
template <class T> void act_forward(Act a, const T *x, T *y, int64_t n) {
    switch (a) {
        case Act::RELU:
            for (int64_t i = 0; i < n; ++i) y[i] = !(x[i] <= T(0)) ? x[i] : T(0);  // NaN stays NaN
            break;
        case Act::TANH:
            for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
            break;
        case Act::SIGMOID:
            for (int64_t i = 0; i < n; ++i) {
                const T v = x[i];
                y[i] = v >= 0 ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v));
            }
            break;
        case Act::NONE:
            if (x != y) std::copy(x, x + n, y);
            break;
    }
}

// The activations' backward rules from their output y: relu's mask_mul (a positive output is
// a positive input; dead units give +0 as the bit mask does), tanh's fused rule, sigmoid's
// g * (y * (1 - y)) in the order its ops compute it.
template <class T> void act_backward(Act a, const T *y, const T *g, T *o, int64_t n) {
    switch (a) {
        case Act::RELU:
            for (int64_t i = 0; i < n; ++i) o[i] = y[i] > T(0) ? g[i] : T(0);
            break;
        case Act::TANH:
            for (int64_t i = 0; i < n; ++i) o[i] = g[i] * (T(1) - y[i] * y[i]);
            break;
        case Act::SIGMOID:
            for (int64_t i = 0; i < n; ++i) o[i] = g[i] * (y[i] * (-y[i] + T(1)));
            break;
        case Act::NONE:
            if (g != o) std::copy(g, g + n, o);
            break;
    }
}

bool all_finite_ptr(const void *p, DType dt, int64_t n) {
    bool ok = true;
    SPAD_FLOAT(dt, T, {
        const T *x = static_cast<const T *>(p);
        for (int64_t i = 0; i < n && ok; ++i) ok = std::isfinite(x[i]);
    });
    return ok;
}

// A (rows x cols) float tensor over the workspace at byte offset `off` (made once per pack).
Tensor ws_alias(const Lowered &L, int64_t off, int64_t rows, int64_t cols, DType dt) {
    Tensor t = view(L.ws, {rows, cols}, contiguous_strides({rows, cols}), off / (int64_t)dtype_size(dt));
    t->dtype = dt;
    return t;
}

// Value v as a (rows x cols) tensor, as ops::linear hands it to pack_weight_input.
Tensor value_2d(LPack &pk, const Lowered &L, int32_t v, int64_t rows, int64_t cols) {
    const LVal &x = L.vals[(size_t)v];
    if (x.kind == LVal::WORK) {
        if (!pk.x2d) pk.x2d = ws_alias(L, x.off, rows, cols, x.dt);
        pk.x_in_ws = true;
        return pk.x2d;
    }
    Tensor t;
    if (x.kind == LVal::INPUT) t = (*L.inputs)[(size_t)x.src];
    else if (x.kind == LVal::CONST) t = L.prog->consts[(size_t)x.src];
    else {  // a view of an input or a constant
        const LVal &b = L.vals[(size_t)x.src];
        const Tensor &base = b.kind == LVal::INPUT ? (*L.inputs)[(size_t)b.src] : L.prog->consts[(size_t)b.src];
        t = view(base, x.shape, contiguous_strides(x.shape), base->offset + x.off);
    }
    if (t->shape != Shape{rows, cols}) t = view(t, {rows, cols}, contiguous_strides({rows, cols}), t->offset);
    return t;
}

// Under a sampling policy, ops::linear saves x for dW through pack_weight_input: so do we.
void pack_input(Lowered &L, const LNode &n) {
    LPack &pk = L.packs[(size_t)n.pack];
    pk.slot = SavedTensor();  // a payload left by a step that never ran backward goes first
    Tensor x2d = value_2d(pk, L, n.a, n.R, n.K);
    if (L.vals[(size_t)n.a].kind != LVal::WORK) pk.x2d = x2d;
    pack_weight_input(*L.pack_node, pk.slot, x2d, L.prog->consts[(size_t)L.vals[(size_t)n.b].src]);
}

// ops::linear (linalg.cpp): bias rows, then gemm with beta 1; the activation in place.
template <class T> void linear_forward(Lowered &L, const LNode &n) {
    if (n.pack >= 0 && active_policy()) pack_input(L, n);
    T *o = at<T>(L, n.out);
    T beta = 0;
    if (n.c >= 0) {
        const T *pb = at<T>(L, n.c);
        for (int64_t r = 0; r < n.R; ++r) std::copy(pb, pb + n.N, o + r * n.N);
        beta = 1;
    }
    bool tw = false;
    int64_t ldw = 0;
    lowered_gemm_layout(n.K, n.N, n.ws0, n.ws1, tw, ldw);
    gemm(false, tw, n.R, n.N, n.K, T(1), at<T>(L, n.a), n.K, at<T>(L, n.b), ldw, beta, o, n.N);
    if (n.act != Act::NONE) act_forward<T>(n.act, o, o, n.R * n.N);
}

// backward_LINEAR (linalg.cpp), exact payload: dW = matmul(x^T, g), db = sum(g, 0),
// dx = matmul(g, W^T), with the layouts matmul_kernel derives for those views.
// A payload packed under a policy is read through the sampling calls eager mode makes
// (weight_input_grad, output_grad_for_dx) and released after the rule, as the tape does.
template <class T> void linear_backward(Lowered &L, const LNode &n) {
    const LVal &xv = L.vals[(size_t)n.a], &wv = L.vals[(size_t)n.b];
    LPack *pk = n.pack >= 0 && L.packs[(size_t)n.pack].slot.defined() ? &L.packs[(size_t)n.pack] : nullptr;
    T *g = grad_of<T>(L, n.out);
    if (n.act != Act::NONE) act_backward<T>(n.act, at<T>(L, n.out), g, g, n.R * n.N);
    if (pk && !pk->g2d) pk->g2d = ws_alias(L, L.vals[(size_t)n.out].goff, n.R, n.N, xv.dt);
    const Shape xs = contiguous_strides({n.R, n.K}), gs = contiguous_strides({n.R, n.N});
    bool ta = false, tb = false;
    int64_t lda = 0, ldb = 0;
    if (wv.reached && pk && is_sampled(pk->slot)) {
        Tensor dW = contiguous(sampled_weight_grad(*L.pack_node, pk->slot, pk->g2d, {n.K, n.N}));
        std::copy(dW->data<T>(), dW->data<T>() + n.K * n.N, grad_of<T>(L, n.b));
    } else if (wv.reached) {  // x^T is (K x R) with strides (xs1, xs0)
        if (pk) note_exact_read(pk->slot, pk->x2d, pk->g2d);
        lowered_gemm_layout(n.K, n.R, xs[1], xs[0], ta, lda);
        lowered_gemm_layout(n.R, n.N, gs[0], gs[1], tb, ldb);
        gemm(ta, tb, n.K, n.N, n.R, T(1), at<T>(L, n.a), lda, g, ldb, T(0), grad_of<T>(L, n.b), n.N);
    }
    if (n.c >= 0 && L.vals[(size_t)n.c].reached) {  // ops::sum over axis 0: rows added in order
        T *db = grad_of<T>(L, n.c);
        std::fill(db, db + n.N, T(0));
        for (int64_t r = 0; r < n.R; ++r)
            for (int64_t j = 0; j < n.N; ++j) db[j] += g[r * n.N + j];
    }
    if (xv.reached) {  // W^T is (N x K) with strides (ws1, ws0)
        Tensor gd = pk && wv.reached ? output_grad_for_dx(pk->slot, pk->g2d) : Tensor();
        lowered_gemm_layout(n.R, n.N, gs[0], gs[1], ta, lda);
        lowered_gemm_layout(n.N, n.K, n.ws1, n.ws0, tb, ldb);
        gemm(ta, tb, n.R, n.K, n.N, T(1), gd ? gd->data<T>() : g, lda, at<T>(L, n.b), ldb, T(0),
             grad_of<T>(L, n.a), n.K);
    }
    if (pk) pk->slot.release();
}

// ops::cross_entropy (loss.cpp): its checks, then its kernel (softmax into the workspace).
template <class T> void ce_forward(const Lowered &L, const LNode &n, T *loss) {
    const int64_t B = n.R, C = n.N;
    const T *x = at<T>(L, n.a);
    const int64_t *py = at<int64_t>(L, n.c);
    for (int64_t b = 0; b < B; ++b)
        SPAD_CHECK(py[b] >= 0 && py[b] < C, ValueError, "cross_entropy: label ", py[b], " at position ", b,
                   " is out of range for logits of shape ", shape_str(L.vals[(size_t)n.a].shape), " (classes 0..",
                   C - 1, ")");
    SPAD_CHECK(all_finite_ptr(x, L.vals[(size_t)n.a].dt, B * C), ValueError, "cross_entropy: logits of shape ",
               shape_str(L.vals[(size_t)n.a].shape), " contain NaN or inf");
    *loss = ops::cross_entropy_kernel<T>(x, py, B, C, reinterpret_cast<T *>(L.ws->data<char>() + n.aux));
}

// backward_CROSS_ENTROPY with the seed 1: (softmax - onehot) / B, over the softmax.
template <class T> void ce_backward(const Lowered &L, const LNode &n) {
    ops::cross_entropy_grad_kernel<T>(reinterpret_cast<const T *>(L.ws->data<char>() + n.aux), at<int64_t>(L, n.c), n.R,
                                      n.N, 1.0, grad_of<T>(L, n.a));
}

// ops::mse_loss: d = pred - target, mean of d^2 accumulated in double.
template <class T> void mse_forward(const Lowered &L, const LNode &n, T *loss) {
    const LVal &pv = L.vals[(size_t)n.a];
    SPAD_CHECK(all_finite_ptr(L.ptr[(size_t)n.a], pv.dt, n.N) && all_finite_ptr(L.ptr[(size_t)n.c], pv.dt, n.N),
               ValueError, "mse_loss: prediction or target of shape ", shape_str(pv.shape), " contains NaN or inf");
    const T *a = at<T>(L, n.a), *b = at<T>(L, n.c);
    T *d = reinterpret_cast<T *>(L.ws->data<char>() + n.aux);
    for (int64_t i = 0; i < n.N; ++i) d[i] = a[i] - b[i];  // ops::sub's same-shape loop
    *loss = ops::mean_square_kernel<T>(d, n.N);
}

// backward_MSE with the seed 1: d * (1 * (T)(2 / N)).
template <class T> void mse_backward(const Lowered &L, const LNode &n) {
    const T *d = reinterpret_cast<const T *>(L.ws->data<char>() + n.aux);
    T *o = grad_of<T>(L, n.a);
    const T c = T(1) * (T)(2.0 / (double)n.N);
    for (int64_t i = 0; i < n.N; ++i) o[i] = d[i] * c;
}

// ops::dropout in training mode: the mask's RNG counters are taken here, as the op takes them.
template <class T> void dropout_forward(Lowered &L, const LNode &n) {
    auto &rng = L.drop_rng[(size_t)n.rng];
    rng = {rng_state().seed, ops::dropout_counter(n.N)};
    ops::dropout_kernel<T>(at<T>(L, n.a), at<T>(L, n.out), n.N, n.p, rng.first, rng.second);
}

// backward_DROPOUT: the same mask and scale applied to the output gradient.
template <class T> void dropout_backward(const Lowered &L, const LNode &n) {
    const auto &rng = L.drop_rng[(size_t)n.rng];
    ops::dropout_kernel<T>(grad_of<T>(L, n.out), grad_of<T>(L, n.a), n.N, n.p, rng.first, rng.second);
}

void release_packs(Lowered &L) {
    for (LPack &pk : L.packs) {
        if (pk.slot.defined()) pk.slot = SavedTensor();
        if (!pk.x_in_ws) pk.x2d.reset();  // the caller's input: not held past the step
    }
}

void forward(Lowered &L, const LNode &n) {
    const DType dt = L.vals[(size_t)n.a].dt;
    SPAD_FLOAT(dt, T, {
        switch (n.kind) {
            case NodeKind::LINEAR: linear_forward<T>(L, n); break;
            case NodeKind::ACT: act_forward<T>(n.act, at<T>(L, n.a), at<T>(L, n.out), n.N); break;
            case NodeKind::CROSS_ENTROPY: ce_forward<T>(L, n, L.loss_t->data<T>()); break;
            case NodeKind::MSE: mse_forward<T>(L, n, L.loss_t->data<T>()); break;
            case NodeKind::DROPOUT: dropout_forward<T>(L, n); break;
        }
    });
}

// A gradient tensor for parameter i that nobody else holds (then it is overwritten), else a
// fresh one: a gradient the user kept from an earlier step must keep its values, as in eager.
void ready_grad(Lowered &L, size_t i) {
    Tensor &g = L.grads[i];
    const Tensor &p = L.params[i];
    const long mine = 1 + (p->grad == g ? 1 : 0);
    if (g && g.use_count() == mine && g->storage.use_count() == 1) return;
    ArenaScope persistent(persistent_arena());  // outlives every step (the C API's step arena)
    g = empty(p->shape, p->dtype);
    set_category(*g->storage, MemCategory::GRADIENTS);
}

void backward_pass(Lowered &L) {
    NoGradGuard no_grad;  // as the eager sweep runs its rules (create_graph is never lowered)
    for (size_t i = 0; i < L.params.size(); ++i) ready_grad(L, i);
    for (size_t k = L.nodes.size(); k-- > 0;) {
        const LNode &n = L.nodes[k];
        if (!L.vals[(size_t)n.out].reached) continue;
        SPAD_FLOAT(L.vals[(size_t)n.a].dt, T, {
            switch (n.kind) {
                case NodeKind::LINEAR: linear_backward<T>(L, n); break;
                case NodeKind::ACT:
                    if (L.vals[(size_t)n.a].reached)
                        act_backward<T>(n.act, at<T>(L, n.out), grad_of<T>(L, n.out), grad_of<T>(L, n.a), n.N);
                    break;
                case NodeKind::CROSS_ENTROPY: ce_backward<T>(L, n); break;
                case NodeKind::MSE: mse_backward<T>(L, n); break;
                case NodeKind::DROPOUT:
                    if (L.vals[(size_t)n.a].reached) dropout_backward<T>(L, n);
                    break;
            }
        });
    }
    for (size_t i = 0; i < L.params.size(); ++i) L.params[i]->grad = L.grads[i];
}

void run_actions(Lowered &L, Program &P) {
    for (const LAction &a : L.actions) {
        switch (a.kind) {
            case LAction::FORWARD: forward(L, L.nodes[(size_t)a.idx]); break;
            case LAction::BACKWARD: backward_pass(L); break;
            case LAction::CALL: {
                const Record &r = P.records[(size_t)a.idx];
                const auto &ps = L.ptr_lists[(size_t)a.list];
                exec(r.op, ps.data(), ps.size(), r.ints.data(), r.ints.size(), r.dbls.data(), r.dbls.size(),
                     P.policies);
                break;
            }
            case LAction::SGD: {
                const Record &r = P.records[(size_t)a.idx];
                optim::sgd(L.lists[(size_t)a.list], L.lists[(size_t)a.list + 1], r.dbls[0], r.dbls[1], r.ints[1] != 0,
                           r.dbls[2]);
                break;
            }
            case LAction::ADAM: {
                Record &r = P.records[(size_t)a.idx];
                ++r.ints[0];  // Adam's bias correction counts replayed steps (as Program::run does)
                optim::adam(L.lists[(size_t)a.list], L.lists[(size_t)a.list + 1], L.lists[(size_t)a.list + 2],
                            r.dbls[0], r.dbls[1], r.dbls[2], r.dbls[3], r.dbls[4], r.ints[1] != 0, r.ints[0]);
                break;
            }
        }
    }
}

}  // namespace

bool lowered_applies(const Lowered &L, const Program &, const std::vector<Tensor> &inputs, const char *&why) {
    if (!grad_enabled()) return why = "grad mode is off", false;
    // Only this step's parameters matter; the registry may still hold entries of leaves that
    // died (it drops them lazily), which must not keep every later step off the lowered path.
    if (any_grad_complete_hooks())
        for (const Tensor &p : L.params)
            if (has_grad_complete_hook(p))
                return why = "a parameter has a gradient-complete hook (optimizer in backward)", false;
    for (const Tensor &t : inputs)
        if (t->requires_grad || !t->is_contiguous()) return why = "an input requires grad or is strided", false;
    return true;
}

Tensor run_lowered(Lowered &L, Program &P, const std::vector<Tensor> &inputs) {
    if (!L.ws) {
        ArenaScope persistent(persistent_arena());
        L.ws = empty({(int64_t)std::max<size_t>(L.ws_bytes, 1)}, DType::U8);
    }
    if (!L.loss_t || L.loss_t.use_count() > 1 || L.loss_t->storage.use_count() > 1) {
        ArenaScope persistent(persistent_arena());
        L.loss_t = empty({}, L.loss_dt);
    }
    for (size_t v = 0; v < L.vals.size(); ++v) {
        const LVal &x = L.vals[v];
        switch (x.kind) {
            case LVal::INPUT: L.ptr[v] = static_cast<char *>(inputs[(size_t)x.src]->raw()); break;
            case LVal::CONST: L.ptr[v] = static_cast<char *>(P.consts[(size_t)x.src]->raw()); break;
            case LVal::WORK:
                L.ptr[v] = x.off < 0 ? static_cast<char *>(L.loss_t->raw()) : L.ws->data<char>() + x.off;
                break;
            case LVal::VIEW: L.ptr[v] = L.ptr[(size_t)x.src] + x.off * (int64_t)dtype_size(x.dt); break;
        }
    }
    L.inputs = &inputs;
    L.prog = &P;
    try {
        run_actions(L, P);
    } catch (...) {
        release_packs(L);  // as eager mode drops the graph of a failed step
        throw;
    }
    release_packs(L);  // payloads no backward read (a step without backward) die with the step
    return L.returns_loss ? L.loss_t : Tensor();
}


size_t lowered_workspace_bytes(const Lowered &L) { return L.ws_bytes; }
size_t lowered_n_kernels(const Lowered &L) { return L.nodes.size(); }

// Where a kernel's output, its gradient and a loss's softmax / residual sit in the workspace.
static std::string where(const Lowered &L, const LNode &n) {
    const LVal &o = L.vals[(size_t)n.out];
    std::string s;
    if (o.kind == LVal::WORK && o.off >= 0) s += str("  out @", o.off);
    if (o.goff >= 0) s += str(", grad @", o.goff);
    if (n.aux >= 0) s += str("  ", n.kind == NodeKind::CROSS_ENTROPY ? "softmax" : "residual", " @", n.aux);
    return s;
}

std::string lowered_dump(const Lowered &L) {
    static const char *acts[] = {"", "+relu", "+tanh", "+sigmoid"};
    static const char *kinds[] = {"linear", "act", "cross_entropy", "mse_loss", "dropout"};
    std::string s = str("lowered: ", L.nodes.size(), " forward kernels, workspace ", L.ws_bytes, " bytes (placed by liveness), ",
                        L.params.size(), " parameter gradients\n");
    for (size_t k = 0; k < L.nodes.size(); ++k) {
        const LNode &n = L.nodes[k];
        s += str("  k", k, ": v", n.out, " = ", n.kind == NodeKind::ACT ? acts[(int)n.act] + 1 : kinds[(int)n.kind],
                 n.kind == NodeKind::ACT ? "" : acts[(int)n.act],
                 "(v", n.a, n.b >= 0 ? str(", v", n.b) : std::string(), n.c >= 0 ? str(", v", n.c) : std::string(), ")",
                 n.kind == NodeKind::LINEAR ? str(" [", n.R, "x", n.K, " -> ", n.N, "]") : std::string(),
                 where(L, n), "\n");
    }
    return s;
}

}  // namespace replay
}  // namespace spad
