#include "memory.h"

#include <mutex>

#include "tensor.h"

namespace spad {

MemStats &mem_stats() {
    static MemStats s;
    return s;
}

const char *mem_category_name(MemCategory c) {
    switch (c) {
        case MemCategory::PARAMETERS: return "parameters";
        case MemCategory::GRADIENTS: return "gradients";
        case MemCategory::OPTIMIZER_STATE: return "optimizer_state";
        case MemCategory::TAPE: return "tape";
        case MemCategory::OTHER: return "other";
        case MemCategory::COUNT_: break;
    }
    return "?";
}

namespace {

void raise_peak(std::atomic<int64_t> &peak, int64_t v) {
    int64_t cur = peak.load(std::memory_order_relaxed);
    while (v > cur && !peak.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
    }
}

// Adds `delta` to a counter and keeps its peak; returns the new value.
int64_t bump(std::atomic<int64_t> &c, std::atomic<int64_t> &peak, int64_t delta) {
    const int64_t v = c.fetch_add(delta, std::memory_order_relaxed) + delta;
    if (delta > 0) raise_peak(peak, v);
    return v;
}

void move_bytes(MemCategory from, MemCategory to, int64_t n) {
    if (from == to || n == 0) return;
    MemStats &m = mem_stats();
    bump(m.by_category[(int)to], m.peak_by_category[(int)to], n);
    m.by_category[(int)from].fetch_sub(n, std::memory_order_relaxed);
}

std::atomic<bool> g_trace_on{false};
std::mutex g_trace_mu;
std::vector<int64_t> g_trace;

void trace(int64_t allocated) {
    if (!g_trace_on.load(std::memory_order_relaxed)) return;
    std::lock_guard<std::mutex> lock(g_trace_mu);
    g_trace.push_back(allocated);
}

}  // namespace

void set_memory_trace(bool on) {
    std::lock_guard<std::mutex> lock(g_trace_mu);
    if (on) g_trace.clear();
    g_trace_on.store(on);
}

std::vector<int64_t> memory_trace() {
    std::lock_guard<std::mutex> lock(g_trace_mu);
    return g_trace;
}

void reset_peak_memory_stats() {
    MemStats &m = mem_stats();
    m.peak_tape_bytes.store(m.tape_bytes.load());
    m.peak_exact_tape_bytes.store(m.exact_tape_bytes.load());
    m.peak_allocated_bytes.store(m.allocated_bytes.load());
    for (int i = 0; i < kMemCategories; ++i) m.peak_by_category[i].store(m.by_category[i].load());
}

MemSnapshot mem_snapshot() {
    const MemStats &m = mem_stats();
    MemSnapshot s;
    s.tape_bytes = m.tape_bytes.load();
    s.peak_tape_bytes = m.peak_tape_bytes.load();
    s.exact_tape_bytes = m.exact_tape_bytes.load();
    s.peak_exact_tape_bytes = m.peak_exact_tape_bytes.load();
    s.budget = m.budget.load();
    s.allocated_bytes = m.allocated_bytes.load();
    s.peak_allocated_bytes = m.peak_allocated_bytes.load();
    s.alloc_count = m.alloc_count.load();
    s.total_allocated = m.total_allocated.load();
    for (int i = 0; i < kMemCategories; ++i) {
        s.by_category[i] = m.by_category[i].load();
        s.peak_by_category[i] = m.peak_by_category[i].load();
    }
    return s;
}

// ---- allocation ----------------------------------------------------------------------
MemCategory effective_category(const Storage &s) {
    if (s.category == MemCategory::OTHER && s.tape_refs.load(std::memory_order_relaxed) > 0) return MemCategory::TAPE;
    return s.category;
}

void count_alloc(Storage &s) {
    MemStats &m = mem_stats();
    const int64_t n = (int64_t)s.nbytes;
    s.counted = true;
    s.category = MemCategory::OTHER;
    m.alloc_count.fetch_add(1, std::memory_order_relaxed);
    m.total_allocated.fetch_add(n, std::memory_order_relaxed);
    bump(m.by_category[(int)MemCategory::OTHER], m.peak_by_category[(int)MemCategory::OTHER], n);
    trace(bump(m.allocated_bytes, m.peak_allocated_bytes, n));
}

void count_free(Storage &s) {
    if (!s.counted) return;
    MemStats &m = mem_stats();
    const int64_t n = (int64_t)s.nbytes;
    m.by_category[(int)effective_category(s)].fetch_sub(n, std::memory_order_relaxed);
    trace(m.allocated_bytes.fetch_sub(n, std::memory_order_relaxed) - n);
    m.alloc_count.fetch_sub(1, std::memory_order_relaxed);
    s.counted = false;
}

void set_category(Storage &s, MemCategory c) {
    SPAD_CHECK(c != MemCategory::TAPE && c != MemCategory::COUNT_, ValueError,
               "memory category 'tape' is derived from the saved payloads that hold a storage; it cannot be set");
    s.is_param = c == MemCategory::PARAMETERS;
    if (!s.counted) {
        s.category = c;
        return;
    }
    const MemCategory before = effective_category(s);
    s.category = c;
    move_bytes(before, effective_category(s), (int64_t)s.nbytes);
}

// ---- tape charges ----------------------------------------------------------------------
void charge_tape(const std::shared_ptr<Storage> &s, int sign) {
    if (!s || s->is_param) return;
    MemStats &m = mem_stats();
    const int64_t n = (int64_t)s->nbytes;
    if (sign > 0) {
        if (s->tape_refs.fetch_add(1) != 0) return;
        const int64_t now = m.tape_bytes.fetch_add(n) + n;
        const int64_t budget = m.budget.load();
        if (budget >= 0 && now > budget) {
            m.tape_bytes.fetch_sub(n);
            s->tape_refs.fetch_sub(1);
            throw BudgetError(str("tape budget exceeded: saving ", n, " bytes would bring the tape to ", now,
                                  " bytes, over the budget of ", budget,
                                  " bytes; lower the keep fraction, the batch size, or raise the budget"));
        }
        raise_peak(m.peak_tape_bytes, now);
        if (s->counted && s->category == MemCategory::OTHER) move_bytes(MemCategory::OTHER, MemCategory::TAPE, n);
    } else if (s->tape_refs.fetch_sub(1) == 1) {
        m.tape_bytes.fetch_sub(n);
        if (s->counted && s->category == MemCategory::OTHER) move_bytes(MemCategory::TAPE, MemCategory::OTHER, n);
    }
}

std::shared_ptr<ExactCharge> exact_token(const std::shared_ptr<Storage> &s) {
    if (!s) return nullptr;
    if (!s->exact_charge) {
        s->exact_charge = std::make_shared<ExactCharge>();
        s->exact_charge->nbytes = s->nbytes;
    }
    s->exact_charge->is_param = s->is_param;  // may be set after the storage was made
    return s->exact_charge;
}

void charge_exact(const std::shared_ptr<ExactCharge> &s, int sign) {
    if (!s || s->is_param) return;
    MemStats &m = mem_stats();
    const int64_t n = (int64_t)s->nbytes;
    if (sign > 0) {
        if (s->refs.fetch_add(1) == 0) bump(m.exact_tape_bytes, m.peak_exact_tape_bytes, n);
    } else if (s->refs.fetch_sub(1) == 1) {
        m.exact_tape_bytes.fetch_sub(n);
    }
}

}  // namespace spad
