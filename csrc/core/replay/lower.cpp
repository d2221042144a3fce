// lower.cpp — the lowering pass: a recorded program (program.h) to the flat kernel list of
// lower_ir.h, or a reason why not (Note [Lowered replay] in lower.h). The kernels that run
// the result are in lower_exec.cpp.
#include <algorithm>

#include "lower_ir.h"
#include "plan.h"

namespace spad {
namespace replay {

void LoweredDeleter::operator()(Lowered *l) const { delete l; }

namespace {

const Tensor kNullTensor;  // a CALL argument that was None

class Lowering {
   public:
    explicit Lowering(const Program &P) : P_(P), L_(new Lowered), val_of_(P.n_slots(), -1), uses_(P.n_slots(), 0) {
        for (const Record &r : P.records)
            for (int32_t s : r.in)
                if (s >= 0) uses_[(size_t)s]++;
    }

    LoweredPtr run(std::string &why) {
        for (size_t k = 0; k < P_.records.size(); ++k) {
            if (!record(k)) {
                why = str("record ", k, " (", op_name(P_.records[k].op), "): ", why_);
                return nullptr;
            }
        }
        if (!finish()) {
            why = why_;
            return nullptr;
        }
        return std::move(L_);
    }

   private:
    bool fail(std::string w) {
        why_ = std::move(w);
        return false;
    }

    int32_t new_val(LVal v) {
        L_->vals.push_back(std::move(v));
        return (int32_t)L_->vals.size() - 1;
    }

    // The value of a program slot: inputs and captured tensors on first use, else what a
    // lowered node produced (-1: a value no lowered node made).
    int32_t val(int32_t s) {
        if (s < 0) return -1;
        int32_t &v = val_of_[(size_t)s];
        if (v >= 0) return v;
        LVal x;
        if (P_.kinds[(size_t)s] == SlotKind::INPUT) {
            x.kind = LVal::INPUT;
            x.src = s;
            x.shape = P_.in_shapes[(size_t)s];
            x.dt = P_.in_dtypes[(size_t)s];
        } else if (P_.kinds[(size_t)s] == SlotKind::CONST) {
            const Tensor &c = P_.consts[(size_t)s];
            x.kind = LVal::CONST;
            x.src = s;
            x.shape = c->shape;
            x.dt = c->dtype;
            x.rg = c->requires_grad;
        } else {
            return -1;
        }
        v = new_val(std::move(x));
        return v;
    }

    int32_t work(const Shape &shape, DType dt, bool rg) {
        LVal x;
        x.kind = LVal::WORK;
        x.shape = shape;
        x.dt = dt;
        x.rg = rg;
        return new_val(std::move(x));
    }

    // A float value a kernel reads as one contiguous block.
    bool flat_float(int32_t v, const char *what) {
        if (v < 0) return fail(str(what, " is not produced by a lowered op"));
        const LVal &x = L_->vals[(size_t)v];
        if (!is_floating(x.dt)) return fail(str(what, " is not float32/float64"));
        if (x.kind == LVal::CONST && !P_.consts[(size_t)x.src]->is_contiguous())
            return fail(str(what, " is a non-contiguous captured tensor"));
        if (dt_set_ && x.dt != dt_) return fail("mixed float dtypes");
        dt_ = x.dt;
        dt_set_ = true;
        return true;
    }

    bool forward_ok() {
        if (seen_backward_) return fail("a forward op after backward");
        return true;
    }

    int32_t add_node(LNode n) {
        L_->nodes.push_back(n);
        const int32_t id = (int32_t)L_->nodes.size() - 1;
        producer_.resize(L_->vals.size(), -1);
        if (n.out >= 0) producer_[(size_t)n.out] = id;
        L_->actions.push_back({LAction::FORWARD, id});
        return id;
    }

    bool linear(int32_t x, int32_t W, int32_t b, Act act, int32_t &out) {
        if (!flat_float(x, "the input of linear")) return false;
        if (W < 0 || L_->vals[(size_t)W].kind != LVal::CONST) return fail("the weight of linear is not a captured tensor");
        const Tensor &w = P_.consts[(size_t)L_->vals[(size_t)W].src];
        const LVal &xv = L_->vals[(size_t)x];
        if (w->ndim() != 2 || w->dtype != xv.dt || xv.shape.empty() || xv.shape.back() != w->shape[0])
            return fail("linear shapes or dtypes do not fit");
        LNode n{NodeKind::LINEAR};
        n.K = w->shape[0];
        n.N = w->shape[1];
        n.R = n.K ? numel_of(xv.shape) / n.K : 0;
        if (n.R <= 0 || n.K <= 0 || n.N <= 0) return fail("an empty linear layer");
        bool t = false;
        int64_t ld = 0;
        if (!lowered_gemm_layout(n.K, n.N, w->strides[0], w->strides[1], t, ld))
            return fail("a weight layout gemm does not take directly");
        n.ws0 = w->strides[0];
        n.ws1 = w->strides[1];
        if (b >= 0) {
            if (!flat_float(b, "the bias of linear")) return false;
            const LVal &bv = L_->vals[(size_t)b];
            if (bv.kind != LVal::CONST || bv.shape != Shape{n.N}) return fail("the bias of linear is not a captured (out,) tensor");
        }
        n.a = x;
        n.b = W;
        n.c = b;
        n.act = act;
        Shape os = xv.shape;
        os.back() = n.N;
        const DType dt = xv.dt;
        const bool rg = xv.rg || L_->vals[(size_t)W].rg || (b >= 0 && L_->vals[(size_t)b].rg);
        n.out = out = work(os, dt, rg);
        if (L_->vals[(size_t)W].rg) n.pack = n_packs_++;
        add_node(n);
        return true;
    }

    bool activation(const Record &r, Act act) {
        const int32_t x = val(r.in[0]);
        if (!flat_float(x, "the input of the activation")) return false;
        const int32_t p = x < (int32_t)producer_.size() ? producer_[(size_t)x] : -1;
        // Fused: the activation runs in place on the linear layer's output when nothing else
        // reads the pre-activation (its backward needs only the activation's output).
        if (p >= 0 && L_->nodes[(size_t)p].kind == NodeKind::LINEAR && L_->nodes[(size_t)p].act == Act::NONE &&
            uses_[(size_t)r.in[0]] == 1 && r.in[0] != P_.loss) {
            L_->nodes[(size_t)p].act = act;
            val_of_[(size_t)r.out] = x;
            return true;
        }
        LNode n{NodeKind::ACT};
        n.act = act;
        return elementwise(r, n, x);
    }

    // A node of n's kind on every element of value x, writing a new value of x's shape.
    bool elementwise(const Record &r, LNode n, int32_t x) {
        n.a = x;
        const LVal xv = L_->vals[(size_t)x];
        n.N = numel_of(xv.shape);
        n.out = work(xv.shape, xv.dt, xv.rg);
        val_of_[(size_t)r.out] = n.out;
        add_node(n);
        return true;
    }

    // ops::dropout: in training mode (and p > 0) a kernel whose mask comes from the global RNG
    // at this point of the step, as eager; otherwise the op returns its input itself.
    bool dropout(const Record &r) {
        const int32_t x = val(r.in[0]);
        if (!flat_float(x, "the input of dropout")) return false;
        const double p = r.dbls[0];
        if (!(p >= 0.0 && p < 1.0)) return fail("a dropout probability outside [0, 1)");  // eager raises
        if (r.ints[0] == 0 || p == 0.0) {
            // The output is the input value itself: its readers and the input's other readers
            // read one value, so an activation fused in place must see all of them.
            val_of_[(size_t)r.out] = x;
            uses_[(size_t)r.out] += uses_[(size_t)r.in[0]] - 1;
            return true;
        }
        LNode n{NodeKind::DROPOUT};
        n.p = p;
        n.rng = (int32_t)n_drop_++;
        return elementwise(r, n, x);
    }

    bool loss(const Record &r, NodeKind kind) {
        if (L_->loss_node >= 0) return fail("a second loss");
        const int32_t a = val(r.in[0]), c = val(r.in[1]);
        if (!flat_float(a, "the loss input")) return false;
        const LVal &av = L_->vals[(size_t)a];
        if (c < 0) return fail("the loss target is not produced by a lowered op");
        const LVal &cv = L_->vals[(size_t)c];
        if (cv.rg) return fail("a loss target that requires grad");
        if (cv.kind == LVal::CONST && !P_.consts[(size_t)cv.src]->is_contiguous())
            return fail("a non-contiguous captured loss target");
        LNode n{kind};
        n.a = a;
        n.c = c;
        if (kind == NodeKind::CROSS_ENTROPY) {
            if (av.shape.size() != 2 || cv.dt != DType::I64 || cv.shape != Shape{av.shape[0]} || av.shape[0] <= 0 ||
                av.shape[1] <= 0)
                return fail("cross_entropy shapes or label dtype do not fit");
            n.R = av.shape[0];
            n.N = av.shape[1];
        } else {
            if (cv.dt != av.dt || cv.shape != av.shape || numel_of(av.shape) <= 0)
                return fail("mse_loss shapes or dtypes do not fit");
            n.N = numel_of(av.shape);
        }
        const DType dt = av.dt;
        const bool rg = av.rg;
        n.out = work({}, dt, rg);
        L_->vals[(size_t)n.out].off = -1;  // the loss tensor, not the workspace
        L_->loss_dt = dt;
        val_of_[(size_t)r.out] = n.out;
        L_->loss_node = add_node(n);
        return true;
    }

    bool view(const Record &r) {
        const int32_t base = val(r.in[0]);
        if (base < 0) return fail("a view of a value inside the step");
        const LVal &bv = L_->vals[(size_t)base];
        if (bv.kind != LVal::INPUT && !(bv.kind == LVal::CONST && !bv.rg)) return fail("a view of a parameter");
        if (bv.kind == LVal::CONST && !P_.consts[(size_t)bv.src]->is_contiguous()) return fail("a view of a strided tensor");
        const int64_t nd = r.ints.size() >= 3 ? r.ints[2] : -1;
        if (nd < 0 || r.ints.size() != (size_t)(3 + 2 * nd) || r.ints[0] != (int64_t)bv.dt) return fail("an unusual view");
        Shape shape(r.ints.begin() + 3, r.ints.begin() + 3 + nd), strides(r.ints.begin() + 3 + nd, r.ints.end());
        if (numel_of(shape) > 1 && strides != contiguous_strides(shape)) return fail("a strided view");
        if (r.ints[1] < 0 || r.ints[1] + numel_of(shape) > numel_of(bv.shape)) return fail("a view out of its base");
        LVal x;
        x.kind = LVal::VIEW;
        x.src = base;
        x.off = r.ints[1];
        x.shape = shape;
        x.dt = bv.dt;
        val_of_[(size_t)r.out] = new_val(std::move(x));
        return true;
    }

    // A record that reads only captured tensors and makes nothing: called as recorded.
    bool call(size_t k, LAction::Kind kind) {
        const Record &r = P_.records[k];
        if (r.out >= 0) return fail("it returns a value");
        for (int32_t s : r.in)
            if (s >= 0 && P_.kinds[(size_t)s] != SlotKind::CONST) return fail("it reads a value of the step");
        LAction a{kind, (int32_t)k};
        if (kind == LAction::CALL) {
            a.list = (int32_t)L_->ptr_lists.size();
            std::vector<const Tensor *> ps;
            for (int32_t s : r.in) ps.push_back(s < 0 ? &kNullTensor : &P_.consts[(size_t)s]);
            L_->ptr_lists.push_back(std::move(ps));
        } else {
            // SGD: params, bufs (split at ints[0]); ADAM: params, m, v (thirds).
            const size_t n = r.in.size();
            std::vector<size_t> cuts;
            if (kind == LAction::SGD) {
                if (r.ints.size() != 2 || r.dbls.size() != 3 || r.ints[0] < 0 || (size_t)r.ints[0] > n)
                    return fail("a malformed record");
                cuts = {0, (size_t)r.ints[0], n};
            } else {
                if (r.ints.size() != 2 || r.dbls.size() != 5 || n % 3) return fail("a malformed record");
                cuts = {0, n / 3, 2 * n / 3, n};
            }
            a.list = (int32_t)L_->lists.size();
            for (size_t j = 0; j + 1 < cuts.size(); ++j) {
                std::vector<Tensor> l;
                for (size_t i = cuts[j]; i < cuts[j + 1]; ++i) l.push_back(r.in[i] < 0 ? Tensor() : P_.consts[(size_t)r.in[i]]);
                L_->lists.push_back(std::move(l));
            }
        }
        L_->actions.push_back(a);
        return true;
    }

    bool record(size_t k) {
        const Record &r = P_.records[k];
        switch (r.op) {
            case Op::SET_POLICY:
                if (r.ints.size() != 1) return fail("a malformed record");
                return call(k, LAction::CALL);
            case Op::CLEAR_GRADS:
                for (int32_t s : r.in)
                    if (s >= 0 && !seen_backward_) cleared_.push_back(s);
                return call(k, LAction::CALL);
            case Op::SGD: return call(k, LAction::SGD);
            case Op::ADAM: return call(k, LAction::ADAM);
            case Op::ADAGRAD: case Op::RMSPROP: case Op::ASSIGN: case Op::BUMP_VERSION: return call(k, LAction::CALL);
            case Op::VIEW: return view(r);
            case Op::LINEAR_CHAIN: {
                if (!forward_ok()) return false;
                if (r.in.size() != 1 + 2 * r.ints.size() || r.ints.empty()) return fail("a malformed record");
                int32_t cur = val(r.in[0]);
                for (size_t l = 0; l < r.ints.size(); ++l) {
                    int32_t out;
                    if (!linear(cur, val(r.in[1 + 2 * l]), val(r.in[2 + 2 * l]), r.ints[l] ? Act::RELU : Act::NONE, out))
                        return false;
                    cur = out;
                }
                val_of_[(size_t)r.out] = cur;
                return true;
            }
            case Op::LINEAR: {
                if (!forward_ok()) return false;
                int32_t out;
                if (r.in.size() != 3 || !linear(val(r.in[0]), val(r.in[1]), val(r.in[2]), Act::NONE, out)) return false;
                val_of_[(size_t)r.out] = out;
                return true;
            }
            case Op::RELU: return forward_ok() && activation(r, Act::RELU);
            case Op::DROPOUT:
                if (r.in.size() != 1 || r.ints.size() != 1 || r.dbls.size() != 1) return fail("a malformed record");
                return forward_ok() && dropout(r);
            case Op::TANH: return forward_ok() && activation(r, Act::TANH);
            case Op::SIGMOID: return forward_ok() && activation(r, Act::SIGMOID);
            case Op::CROSS_ENTROPY: return forward_ok() && loss(r, NodeKind::CROSS_ENTROPY);
            case Op::MSE: return forward_ok() && loss(r, NodeKind::MSE);
            case Op::BACKWARD: {
                if (seen_backward_) return fail("a second backward");
                if (r.in.size() != 2 || r.in[1] >= 0 || r.ints.size() != 2 || r.ints[0] || r.ints[1])
                    return fail("backward with an explicit gradient, retain_graph or create_graph");
                const int32_t root = val(r.in[0]);
                if (L_->loss_node < 0 || root != L_->nodes[(size_t)L_->loss_node].out)
                    return fail("backward from something other than the lowered loss");
                if (!L_->vals[(size_t)root].rg) return fail("the loss does not require grad");
                seen_backward_ = true;
                cleared_at_backward_ = cleared_;
                L_->actions.push_back({LAction::BACKWARD, -1});
                return true;
            }
            default: return fail("not lowered");
        }
    }

    bool finish() {
        std::vector<LVal> &V = L_->vals;
        // Uses by the forward nodes; a gradient that two readers would accumulate is not lowered.
        for (const LNode &n : L_->nodes)
            for (int32_t v : {n.a, n.b, n.c})
                if (v >= 0) V[(size_t)v].uses++;
        for (const LVal &v : V)
            if (v.rg && v.uses > 1) return fail("a value or parameter read by two ops (its gradient would accumulate)");
        if (P_.loss >= 0) {
            const int32_t lv = val_of_[(size_t)P_.loss];
            if (L_->loss_node < 0 || lv != L_->nodes[(size_t)L_->loss_node].out)
                return fail("the step returns something other than the lowered loss");
            L_->returns_loss = true;
        }
        // Which values the backward sweep reaches (the eager sweep visits the same ones).
        if (seen_backward_) {
            V[(size_t)L_->nodes[(size_t)L_->loss_node].out].reached = true;
            for (size_t i = L_->nodes.size(); i-- > 0;) {
                const LNode &n = L_->nodes[i];
                if (!V[(size_t)n.out].reached) continue;
                for (int32_t v : {n.a, n.b, n.c})  // (loss targets and labels never require grad)
                    if (v >= 0 && V[(size_t)v].rg) V[(size_t)v].reached = true;
            }
        }
        for (size_t i = 0; i < V.size(); ++i) {
            LVal &v = V[i];
            if (v.kind != LVal::CONST || !v.reached) continue;
            if (std::find(cleared_at_backward_.begin(), cleared_at_backward_.end(), v.src) == cleared_at_backward_.end())
                return fail("a parameter's gradient is not cleared before backward (it would accumulate)");
            v.param = (int32_t)L_->params.size();
            L_->params.push_back(P_.consts[(size_t)v.src]);
        }
        L_->grads.resize(L_->params.size());
        place_workspace(seen_backward_);
        L_->packs.resize((size_t)n_packs_);
        L_->drop_rng.assign((size_t)n_drop_, {0, 0});
        L_->pack_node = std::make_shared<Node>();
        L_->pack_node->op = OpKind::LINEAR;
        L_->ptr.assign(V.size(), nullptr);
        return true;
    }

    // The workspace: every value, gradient and loss buffer of the step at an offset chosen by
    // liveness (ggml-alloc's idea: buffers whose lives do not overlap share bytes). Time runs
    // over the forward nodes (2k) and then their backward rules in reverse, each in two
    // halves: at 2r a linear layer's fused activation masks its output gradient (reading its
    // output), at 2r + 1 a rule reads its saved inputs and output gradient and writes its
    // input's gradient (r = 2n - 1 - k). Lives are inclusive. A forward value lives until
    // the last rule that reads it: a linear reader's dW half (the payload may alias it), its
    // own producer's mask half, a forward reader; a gradient from its reader's rule (which
    // writes it) to its producer's rule; a loss's softmax / residual from the loss to its rule.
    void place_workspace(bool backward) {
        std::vector<LVal> &V = L_->vals;
        const int64_t n = (int64_t)L_->nodes.size();
        auto rule = [&](int64_t k) { return 2 * (backward ? 2 * n - 1 - k : k); };  // its mask half
        struct Buf { int64_t bytes, t0, t1; int64_t *off; };
        std::vector<Buf> bufs;
        std::vector<int64_t> made(V.size(), -1), last(V.size(), -1), gmade(V.size(), -1);
        for (int64_t k = 0; k < n; ++k) {
            LNode &nd = L_->nodes[(size_t)k];
            if (nd.out >= 0) {
                made[(size_t)nd.out] = 2 * k;
                // its own rule reads it: a linear layer's mask half, an activation's rule
                const int64_t own = nd.kind == NodeKind::ACT ? rule(k) + 1
                                    : nd.kind == NodeKind::LINEAR && nd.act != Act::NONE ? rule(k) : 2 * k;
                last[(size_t)nd.out] = std::max(last[(size_t)nd.out], own);
            }
            for (int32_t v : {nd.a, nd.b, nd.c}) {
                if (v < 0) continue;
                const int64_t read = nd.kind == NodeKind::LINEAR ? rule(k) + 1 : 2 * k;
                last[(size_t)v] = std::max(last[(size_t)v], read);
                gmade[(size_t)v] = rule(k) + 1;  // a value with a gradient has one reader
            }
            const int64_t es = (int64_t)dtype_size(V[(size_t)nd.a].dt);
            if (nd.kind == NodeKind::CROSS_ENTROPY) bufs.push_back({nd.R * nd.N * es, 2 * k, rule(k) + 1, &nd.aux});
            if (nd.kind == NodeKind::MSE) bufs.push_back({nd.N * es, 2 * k, rule(k) + 1, &nd.aux});
        }
        for (size_t i = 0; i < V.size(); ++i) {
            LVal &v = V[i];
            if (v.kind != LVal::WORK || v.off < 0 || made[i] < 0) continue;
            const int64_t bytes = numel_of(v.shape) * (int64_t)dtype_size(v.dt);
            bufs.push_back({bytes, made[i], std::max(made[i], last[i]), &v.off});
            if (backward && v.rg && v.reached) {
                const int64_t g1 = rule(made[i] / 2) + 1, g0 = gmade[i] < 0 ? g1 : std::min(gmade[i], g1);
                bufs.push_back({bytes, g0, g1, &v.goff});
            }
        }
        // The arena planner of recorded steps (plan.h) places them, fed in allocation order
        // with inclusive lives [t0, t1] as half-open [2 t0, 2 t1 + 1): no free shares a
        // time with an allocation.
        std::stable_sort(bufs.begin(), bufs.end(), [](const Buf &a, const Buf &b) { return a.t0 < b.t0; });
        ArenaPlan plan;
        plan.inline_bytes = 0;
        for (const Buf &b : bufs) {
            plan.sizes.push_back((uint64_t)b.bytes);
            plan.alloc_t.push_back(2 * b.t0);
            plan.free_t.push_back(2 * b.t1 + 1);
        }
        plan.solve();
        for (size_t k = 0; k < bufs.size(); ++k) *bufs[k].off = plan.offsets[k];
        L_->ws_bytes = (size_t)plan.arena_bytes;
    }

    const Program &P_;
    LoweredPtr L_;
    std::vector<int32_t> val_of_, uses_, producer_;
    std::vector<int32_t> cleared_, cleared_at_backward_;
    int32_t n_packs_ = 0, n_drop_ = 0;
    bool seen_backward_ = false, dt_set_ = false;
    DType dt_ = DType::F32;
    std::string why_;
};

}  // namespace

LoweredPtr lower(const Program &P, std::string &why) { return Lowering(P).run(why); }

}  // namespace replay
}  // namespace spad
