// program.cpp — recording a step into records and replaying them (program.h).
#include "program.h"

#include <algorithm>

#include "../node.h"
#include "plan.h"

namespace spad {
namespace replay {

namespace {
thread_local Recorder *t_recorder = nullptr;
const Tensor kNull;
}  // namespace

Recorder *active_recorder() { return t_recorder; }

// ---- recording ------------------------------------------------------------------------------

Recorder::Recorder(const std::vector<Tensor> &inputs) : prog_(std::make_shared<Program>()) {
    SPAD_CHECK(!t_recorder, RuntimeError, "compile: a step is already being recorded on this thread");
    for (const Tensor &t : inputs) {
        SPAD_CHECK(t, ValueError, "compile: an input is None");
        if (slot_of_.count(t.get())) {  // the same tensor passed twice: one slot serves both
            SPAD_CHECK(false, ValueError, "compile: the same tensor is passed twice as an input");
        }
        new_slot(SlotKind::INPUT, t);
        prog_->in_shapes.push_back(t->shape);
        prog_->in_dtypes.push_back(t->dtype);
    }
    prog_->n_inputs = (int32_t)inputs.size();
    trace_ = std::make_unique<AllocTrace>();
    t_recorder = this;
}

Recorder::~Recorder() { abort(); }

void Recorder::abort() {
    if (t_recorder == this) t_recorder = nullptr;
    trace_.reset();
    active_ = false;
}

int32_t Recorder::new_slot(SlotKind k, const Tensor &t) {
    auto id = (int32_t)prog_->kinds.size();
    prog_->kinds.push_back(k);
    prog_->consts.push_back(k == SlotKind::CONST ? t : Tensor());
    live_.push_back(t);
    slot_of_[t.get()] = id;
    return id;
}

int32_t Recorder::known_slot(const Tensor &t) const {
    if (!t) return -1;
    auto it = slot_of_.find(t.get());
    if (it == slot_of_.end()) return -1;
    // An address freed and reused by a new tensor is not the recorded one.
    if (live_[(size_t)it->second].lock().get() != t.get()) return -1;
    return it->second;
}

bool Recorder::is_value(const Tensor &t) const {
    int32_t s = known_slot(t);
    return s >= 0 && prog_->kinds[(size_t)s] != SlotKind::CONST;
}

bool Recorder::is_computed(const Tensor &t) const {
    int32_t s = known_slot(t);
    return s >= 0 && prog_->kinds[(size_t)s] == SlotKind::VALUE;
}

int32_t Recorder::slot_for(const Tensor &t) {
    if (!t) return -1;
    int32_t s = known_slot(t);
    if (s >= 0) return s;
    // A tensor sharing the data of an input or a value (labels re-wrapped from numpy, a view
    // made outside the recorded ops) follows that slot at replay: record it as a view.
    const char *p = static_cast<const char *>(t->raw());
    for (size_t k = 0; k < prog_->kinds.size(); ++k) {
        if (prog_->kinds[k] == SlotKind::CONST) continue;
        Tensor base = live_[k].lock();
        if (!base || base->dtype != t->dtype || !base->storage->data) continue;
        const char *lo = static_cast<const char *>(base->storage->data);
        if (p < lo || p >= lo + base->storage->nbytes) continue;
        const int64_t es = (int64_t)dtype_size(t->dtype);
        if ((p - lo) % es) continue;
        Record r{Op::VIEW, {(int32_t)k}, {(int64_t)t->dtype, (p - lo) / es - base->offset, t->ndim()}, {}};
        for (int64_t d : t->shape) r.ints.push_back(d);
        for (int64_t d : t->strides) r.ints.push_back(d);
        r.out = new_slot(SlotKind::VALUE, t);
        prog_->records.push_back(std::move(r));
        return r.out;
    }
    SPAD_CHECK(t->is_leaf(), RuntimeError, "compile: a ", shape_str(t->shape), " tensor made by an op the recorder "
               "did not see (", spad::op_name(t->grad_fn->op), ") is used in the step; only spad ops called while the "
               "step is recorded can be replayed");
    return new_slot(SlotKind::CONST, t);  // a parameter, optimizer state or constant: by reference
}

Tensor Recorder::call(Op op, std::initializer_list<const Tensor *> ts, std::initializer_list<int64_t> is,
                      std::initializer_list<double> ds) {
    return call_list(op, std::vector<const Tensor *>(ts), std::vector<int64_t>(is), std::vector<double>(ds));
}

Tensor Recorder::call_list(Op op, const std::vector<const Tensor *> &ts, std::vector<int64_t> is,
                           std::vector<double> ds) {
    Record r{op, {}, std::move(is), std::move(ds)};
    r.in.reserve(ts.size());
    for (const Tensor *t : ts) r.in.push_back(slot_for(*t));
    struct Traced {  // trace the allocations of this core call only
        AllocTrace *t;
        explicit Traced(AllocTrace *t_) : t(t_) { t->resume(); }
        ~Traced() { t->pause(); }
    };
    Tensor out;
    {
        Traced traced(trace_.get());
        out = exec(op, ts.data(), ts.size(), r.ints.data(), r.ints.size(), r.dbls.data(), r.dbls.size(),
                   prog_->policies);
    }
    if (out) r.out = new_slot(SlotKind::VALUE, out);
    prog_->records.push_back(std::move(r));
    return out;
}

int32_t Recorder::policy_index(const std::shared_ptr<Policy> &p) {
    if (!p) return -1;
    auto &v = prog_->policies;
    auto it = std::find(v.begin(), v.end(), p);
    if (it != v.end()) return (int32_t)(it - v.begin());
    v.push_back(p);
    return (int32_t)v.size() - 1;
}

std::shared_ptr<Program> Recorder::finish(const Tensor &loss, std::vector<std::string> &warnings) {
    SPAD_CHECK(active_, RuntimeError, "compile: the recording was aborted");
    Program &P = *prog_;
    if (loss) {
        P.loss = known_slot(loss);
        SPAD_CHECK(P.loss >= 0 && P.kinds[(size_t)P.loss] != SlotKind::CONST, ValueError,
                   "compile: the step returned a tensor that no recorded op produced; return the loss computed "
                   "inside the step (or None)");
    }
    ArenaPlan plan = trace_->stop();
    if (t_recorder == this) t_recorder = nullptr;
    active_ = false;
    // Which inputs influence the loss (or, with no loss, are read at all)?
    std::vector<std::vector<char>> reach((size_t)P.n_inputs, std::vector<char>(P.n_slots(), 0));
    for (int32_t i = 0; i < P.n_inputs; ++i) {
        auto &rc = reach[(size_t)i];
        rc[(size_t)i] = 1;
        bool read = false;
        for (const Record &r : P.records) {
            bool hit = false;
            for (int32_t s : r.in) hit |= s >= 0 && rc[(size_t)s];
            read |= hit;
            if (hit && r.out >= 0) rc[(size_t)r.out] = 1;
        }
        const bool ok = P.loss >= 0 ? rc[(size_t)P.loss] != 0 : read;
        if (!ok)
            warnings.push_back(str("input ", i, " (shape ", shape_str(P.in_shapes[(size_t)i]), ") does not ",
                                   P.loss >= 0 ? "reach the returned loss" : "reach any recorded op",
                                   ": if the step reads it through Python (numpy(), item(), float()), that value "
                                   "is frozen into the replay"));
    }
    P.finalize();
    plan.solve();
    P.plan = std::make_shared<ArenaPlan>(std::move(plan));
    live_.clear();
    slot_of_.clear();
    return prog_;
}

// ---- replay ---------------------------------------------------------------------------------
void Program::finalize() {
    const size_t ns = n_slots();
    std::vector<int64_t> last(ns, -1);
    for (size_t r = 0; r < records.size(); ++r) {
        for (int32_t s : records[r].in)
            if (s >= 0) last[(size_t)s] = (int64_t)r;
        if (records[r].out >= 0 && last[(size_t)records[r].out] < 0) last[(size_t)records[r].out] = (int64_t)r;
    }
    release_after.assign(records.size(), {});
    dead_inputs.clear();
    for (size_t s = 0; s < ns; ++s) {
        if (kinds[s] == SlotKind::CONST || (int32_t)s == loss) continue;
        if (last[s] < 0) {
            if (kinds[s] == SlotKind::INPUT) dead_inputs.push_back((int32_t)s);
            continue;
        }
        release_after[(size_t)last[s]].push_back((int32_t)s);
    }
    slots_ = consts;
    size_t width = 0;
    for (const Record &r : records) width = std::max(width, r.in.size());
    ptrs_.assign(width, nullptr);
}

Program::~Program() { arena_mem_release(mem_); }

Tensor Program::run(const std::vector<Tensor> &inputs) {
    SPAD_CHECK((int32_t)inputs.size() == n_inputs, ValueError, "compiled step: expected ", n_inputs, " inputs, got ",
               inputs.size());
    if (lower_enabled) {
        if (lower_state == 0) {
            lowered = lower(*this, lower_note);
            lower_state = lowered ? 1 : -1;
        }
        const char *why = nullptr;
        if (lower_state == 1 && lowered_applies(*lowered, *this, inputs, why)) {
            Tensor l = run_lowered(*lowered, *this, inputs);
            if (!lower_note.empty()) lower_note.clear();
            ++replays;
            ++lowered_runs;
            return l;
        }
        if (why) lower_note = str("last call replayed record by record: ", why);
    }
    return run_records(inputs);
}

Tensor Program::run_records(const std::vector<Tensor> &inputs) {
    SPAD_CHECK((int32_t)inputs.size() == n_inputs, ValueError, "compiled step: expected ", n_inputs, " inputs, got ",
               inputs.size());
    if (plan && !plan_dropped && plan_verified && !mem_) mem_ = arena_mem_new(*plan);
    for (int32_t i = 0; i < n_inputs; ++i) slots_[(size_t)i] = inputs[(size_t)i];
    for (int32_t s : dead_inputs) slots_[(size_t)s].reset();
    Tensor result;
    try {
        std::unique_ptr<ArenaScope> scope;
        if (plan && !plan_dropped) scope = std::make_unique<ArenaScope>(*plan, plan_verified ? mem_ : nullptr);
        for (size_t k = 0; k < records.size(); ++k) {
            Record &r = records[k];
            for (size_t j = 0; j < r.in.size(); ++j) ptrs_[j] = r.in[j] < 0 ? &kNull : &slots_[(size_t)r.in[j]];
            if (r.op == Op::ADAM) ++r.ints[0];  // Adam's bias correction counts replayed steps too
            Tensor out = exec(r.op, ptrs_.data(), r.in.size(), r.ints.data(), r.ints.size(), r.dbls.data(),
                              r.dbls.size(), policies);
            if (r.out >= 0) slots_[(size_t)r.out] = std::move(out);
            for (int32_t s : release_after[k]) slots_[(size_t)s].reset();
        }
        if (scope) {
            if (scope->complete()) plan_verified = true;
            else plan_dropped = true;  // the step no longer allocates what was planned
        }
        if (loss >= 0) result = std::move(slots_[(size_t)loss]);
    } catch (...) {
        for (size_t s = 0; s < slots_.size(); ++s)
            if (kinds[s] != SlotKind::CONST) slots_[s].reset();
        throw;
    }
    ++replays;
    return result;
}

static std::string slot_name(const Program &P, int32_t s) {
    if (s < 0) return "None";
    switch (P.kinds[(size_t)s]) {
        case SlotKind::INPUT: return str("in", s);
        case SlotKind::CONST: return str("c", s, shape_str(P.consts[(size_t)s]->shape));
        default: return str("%", s);
    }
}

std::string Program::dump() const {
    std::string s = str("compiled step: ", n_inputs, " inputs, ", records.size(), " records, ", n_slots(), " slots\n");
    for (int32_t i = 0; i < n_inputs; ++i)
        s += str("  in", i, ": ", dtype_name(in_dtypes[(size_t)i]), shape_str(in_shapes[(size_t)i]), "\n");
    for (size_t k = 0; k < records.size(); ++k) {
        const Record &r = records[k];
        s += str("  ", k, ": ");
        if (r.out >= 0) s += slot_name(*this, r.out) + " = ";
        s += op_name(r.op);
        std::string args;
        for (int32_t j : r.in) args += (args.empty() ? "" : ", ") + slot_name(*this, j);
        for (int64_t v : r.ints) args += (args.empty() ? "" : ", ") + str(v);
        for (double v : r.dbls) args += (args.empty() ? "" : ", ") + str(v);
        s += "(" + args + ")\n";
    }
    if (loss >= 0) s += "  returns " + slot_name(*this, loss) + "\n";
    if (plan) s += plan->dump();
    if (plan_dropped) s += "  (plan dropped: an allocation did not match it; replays use the heap)\n";
    if (lower_state == 1) s += lowered_dump(*lowered);
    if (!lower_note.empty()) s += str("  not lowered: ", lower_note, "\n");
    return s;
}

}  // namespace replay
}  // namespace spad
