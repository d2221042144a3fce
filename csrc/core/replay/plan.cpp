// plan.cpp — allocation tracing, the liveness planner and the replay allocator (plan.h).
#include "plan.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "../tensor.h"
#include "alloc_hook.h"

namespace spad {
namespace replay {

thread_local StorageHook t_storage_hook = nullptr;

static uint64_t align_up(uint64_t n) { return (n + kArenaAlign - 1) / kArenaAlign * kArenaAlign; }

// ---- tracing ------------------------------------------------------------------------------
struct AllocTrace::State {
    bool active = true;
    int64_t clock = 0;
    ArenaPlan plan;
};

namespace {
thread_local std::shared_ptr<AllocTrace::State> t_trace;

struct TracedBlock {
    std::shared_ptr<AllocTrace::State> st;
    int32_t k;
};

void traced_free(void *data, void *ctx) {
    auto *b = static_cast<TracedBlock *>(ctx);
    if (b->st->active) b->st->plan.free_t[b->k] = b->st->clock++;
    if (b->st->plan.sizes[b->k] > Storage::kSmall) std::free(data);  // small ones live in their Storage
    delete b;
}

bool trace_alloc(Storage &s, size_t nbytes) {
    AllocTrace::State *st = t_trace.get();
    if (!st || !st->active) return false;
    // Small tensors stay inside their Storage (as alloc_storage() would place them); they are
    // traced for the step's peak, which a device arena must hold, but never planned.
    void *p = nbytes <= Storage::kSmall ? s.small : std::aligned_alloc(kArenaAlign, align_up(std::max<size_t>(nbytes, 1)));
    if (!p) throw std::bad_alloc();
    auto k = (int32_t)st->plan.sizes.size();
    st->plan.sizes.push_back(nbytes);
    st->plan.alloc_t.push_back(st->clock++);
    st->plan.free_t.push_back(-1);
    s.data = p;
    s.nbytes = nbytes;
    s.release = traced_free;
    s.ctx = new TracedBlock{t_trace, k};
    return true;
}
}  // namespace

AllocTrace::AllocTrace() : st_(std::make_shared<State>()) { t_trace = st_; }

void AllocTrace::resume() {
    if (t_trace == st_ && st_->active) t_storage_hook = trace_alloc;
}

void AllocTrace::pause() {
    if (t_trace == st_) t_storage_hook = nullptr;
}

AllocTrace::~AllocTrace() {
    st_->active = false;
    if (t_trace == st_) {
        t_trace.reset();
        t_storage_hook = nullptr;
    }
}

ArenaPlan AllocTrace::stop() {
    st_->active = false;
    if (t_trace == st_) {
        t_trace.reset();
        t_storage_hook = nullptr;
    }
    return st_->plan;
}

// ---- planning -------------------------------------------------------------------------------
void ArenaPlan::solve() {
    const size_t n = sizes.size();
    offsets.assign(n, -1);
    conflicts.assign(n, {});
    arena_bytes = eager_peak_bytes = heap_bytes = 0;
    // Events in clock order: (time, k, is_alloc).
    struct Ev {
        int64_t t;
        int32_t k;
        bool alloc;
    };
    std::vector<Ev> ev;
    for (size_t k = 0; k < n; ++k) {
        ev.push_back({alloc_t[k], (int32_t)k, true});
        if (free_t[k] >= 0) ev.push_back({free_t[k], (int32_t)k, false});
        else heap_bytes += sizes[k];
    }
    std::sort(ev.begin(), ev.end(), [](const Ev &a, const Ev &b) { return a.t < b.t; });
    struct Block {
        uint64_t off, size;
    };
    std::vector<Block> free_list;  // sorted by offset, merged
    uint64_t top = 0, live = 0;
    for (const Ev &e : ev) {
        const uint64_t a = align_up(std::max<uint64_t>(sizes[e.k], 1));
        if (e.alloc) {
            live += sizes[e.k];
            eager_peak_bytes = std::max(eager_peak_bytes, live);
            if (free_t[e.k] < 0 || sizes[e.k] <= inline_bytes) continue;  // survives the step, or inline
            // Best fit: the smallest free block that holds it; else grow the arena (reusing a
            // free block that ends at the top, as ggml-alloc does).
            int best = -1;
            for (size_t b = 0; b < free_list.size(); ++b)
                if (free_list[b].size >= a && (best < 0 || free_list[b].size < free_list[(size_t)best].size))
                    best = (int)b;
            if (best >= 0) {
                Block &b = free_list[(size_t)best];
                offsets[e.k] = (int64_t)b.off;
                b.off += a;
                b.size -= a;
                if (b.size == 0) free_list.erase(free_list.begin() + best);
            } else if (!free_list.empty() && free_list.back().off + free_list.back().size == top) {
                offsets[e.k] = (int64_t)free_list.back().off;
                top = free_list.back().off + a;
                free_list.pop_back();
            } else {
                offsets[e.k] = (int64_t)top;
                top += a;
            }
        } else {
            live -= sizes[e.k];
            if (offsets[e.k] < 0) continue;
            Block nb{(uint64_t)offsets[e.k], a};
            auto it = std::lower_bound(free_list.begin(), free_list.end(), nb,
                                       [](const Block &x, const Block &y) { return x.off < y.off; });
            it = free_list.insert(it, nb);
            if (it + 1 != free_list.end() && it->off + it->size == (it + 1)->off) {
                it->size += (it + 1)->size;
                free_list.erase(it + 1);
            }
            if (it != free_list.begin() && (it - 1)->off + (it - 1)->size == it->off) {
                (it - 1)->size += it->size;
                free_list.erase(it);
            }
        }
    }
    arena_bytes = top;
    // Greedy by size (as TFLite's planner does) often packs tighter than placing buffers in
    // allocation order: largest first, each at the lowest offset clear of every placed buffer
    // whose lifetime overlaps its own. Keep whichever plan needs the smaller arena.
    {
        std::vector<int32_t> order;
        for (size_t k = 0; k < n; ++k)
            if (offsets[k] >= 0) order.push_back((int32_t)k);
        std::stable_sort(order.begin(), order.end(),
                         [&](int32_t a, int32_t b) { return align_up(sizes[(size_t)a]) > align_up(sizes[(size_t)b]); });
        std::vector<int64_t> off2(n, -1);
        uint64_t top2 = 0;
        std::vector<std::pair<uint64_t, uint64_t>> busy;  // [lo, hi) of placed, time-overlapping buffers
        for (int32_t k : order) {
            const uint64_t a = align_up(std::max<uint64_t>(sizes[(size_t)k], 1));
            busy.clear();
            for (int32_t j : order) {
                if (off2[(size_t)j] < 0) continue;
                const bool overlap = alloc_t[(size_t)j] < free_t[(size_t)k] && alloc_t[(size_t)k] < free_t[(size_t)j];
                if (overlap)
                    busy.emplace_back((uint64_t)off2[(size_t)j],
                                      (uint64_t)off2[(size_t)j] + align_up(std::max<uint64_t>(sizes[(size_t)j], 1)));
            }
            std::sort(busy.begin(), busy.end());
            uint64_t at = 0;
            for (const auto &b : busy) {
                if (b.first >= at + a) break;  // the gap below this buffer fits
                at = std::max(at, b.second);
            }
            off2[(size_t)k] = (int64_t)at;
            top2 = std::max(top2, at + a);
        }
        if (top2 < arena_bytes) {
            offsets = off2;
            arena_bytes = top2;
        }
    }
    // Who shares space with whom: replay checks these are dead before handing a slice out.
    for (size_t k = 0; k < n; ++k) {
        if (offsets[k] < 0) continue;
        const uint64_t lo = (uint64_t)offsets[k], hi = lo + align_up(std::max<uint64_t>(sizes[k], 1));
        for (size_t j = 0; j < k; ++j) {
            if (offsets[j] < 0) continue;
            const uint64_t jl = (uint64_t)offsets[j], jh = jl + align_up(std::max<uint64_t>(sizes[j], 1));
            if (!(jl < hi && lo < jh)) continue;
            // The plan's invariant, checked once here: buffers sharing space never live at once.
            SPAD_CHECK(free_t[j] <= alloc_t[k], RuntimeError, "replay plan: allocations ", j, " and ", k,
                       " share arena space while both alive (a planner bug)");
            conflicts[k].push_back((int32_t)j);
        }
    }
}

std::string ArenaPlan::dump() const {
    size_t in_arena = 0;
    for (int64_t o : offsets) in_arena += o >= 0;
    std::string s = str("arena ", arena_bytes, " bytes for ", in_arena, " of ", sizes.size(),
                        " allocations (eager peak of step buffers ", eager_peak_bytes, " bytes; ", heap_bytes,
                        " bytes outlive the step on the heap)\n");
    for (size_t k = 0; k < sizes.size(); ++k) {
        s += str("  alloc ", k, ": ", sizes[k], " bytes, live [", alloc_t[k], ", ");
        s += free_t[k] < 0 ? std::string("end") : str(free_t[k]);
        s += offsets[k] >= 0 ? str(") at offset ", offsets[k], "\n")
             : sizes[k] <= Storage::kSmall ? std::string(") inline\n") : std::string(") heap\n");
    }
    return s;
}

// ---- the replay allocator -------------------------------------------------------------------
struct ArenaMem {
    struct Ref {
        ArenaMem *m;
        int32_t k;
    };
    void *base = nullptr;
    std::vector<uint8_t> live;
    std::vector<Ref> refs;
    int64_t nlive = 0;
    bool orphaned = false;
    ~ArenaMem() { std::free(base); }
};

ArenaMem *arena_mem_new(const ArenaPlan &plan) {
    if (plan.arena_bytes > (uint64_t)(SIZE_MAX / 2)) throw std::bad_alloc();  // 32-bit targets
    auto *m = new ArenaMem();
    if (plan.arena_bytes) {
        m->base = std::aligned_alloc(kArenaAlign, align_up(plan.arena_bytes));
        if (!m->base) {
            delete m;
            throw std::bad_alloc();
        }
    }
    m->live.assign(plan.sizes.size(), 0);
    m->refs.resize(plan.sizes.size());
    for (size_t k = 0; k < m->refs.size(); ++k) m->refs[k] = {m, (int32_t)k};
    return m;
}

void arena_mem_release(ArenaMem *m) {
    if (!m) return;
    m->orphaned = true;
    if (m->nlive == 0) delete m;
}

namespace {
struct RunState {
    const ArenaPlan *plan;
    ArenaMem *mem;
    size_t next = 0;
    bool failed = false;
};
thread_local RunState *t_run = nullptr;

void slice_free(void *, void *ctx) {
    auto *r = static_cast<ArenaMem::Ref *>(ctx);
    ArenaMem *m = r->m;
    m->live[(size_t)r->k] = 0;
    if (--m->nlive == 0 && m->orphaned) delete m;
}

bool plan_alloc(Storage &s, size_t nbytes) {
    RunState *r = t_run;
    if (!r || r->failed) return false;
    const size_t k = r->next++;
    const ArenaPlan &p = *r->plan;
    if (k >= p.sizes.size() || p.sizes[k] != nbytes) {
        r->failed = true;
        return false;
    }
    if (!r->mem || p.offsets[k] < 0) return false;  // verifying only; heap; or inside the Storage (small)
    for (int32_t j : p.conflicts[k])
        if (r->mem->live[(size_t)j]) {
            r->failed = true;
            return false;
        }
    r->mem->live[k] = 1;
    r->mem->nlive++;
    s.data = static_cast<char *>(r->mem->base) + p.offsets[k];
    s.nbytes = nbytes;
    s.release = slice_free;
    s.ctx = &r->mem->refs[k];
    return true;
}
}  // namespace

ArenaScope::ArenaScope(const ArenaPlan &plan, ArenaMem *mem) : prev_state_(t_run) {
    t_run = new RunState{&plan, mem};
    t_storage_hook = plan_alloc;
}

ArenaScope::~ArenaScope() {
    delete t_run;
    t_run = static_cast<RunState *>(prev_state_);
    t_storage_hook = t_run ? plan_alloc : nullptr;
}

bool ArenaScope::failed() const { return t_run && t_run->failed; }

bool ArenaScope::complete() const { return t_run && !t_run->failed && t_run->next == t_run->plan->sizes.size(); }

}  // namespace replay
}  // namespace spad
