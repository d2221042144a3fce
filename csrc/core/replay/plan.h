// plan.h — the static memory plan of a compiled step (ggml-alloc / TinyEngine style).
//
// While a step is recorded, every allocation of tensor data made by alloc_storage() is traced:
// its size, and when it was freed on the step's event clock (tensors up to Storage::kSmall
// bytes live inside their Storage object: traced for the peak, never planned). Larger
// allocations freed within the step get offsets
// in one arena from a greedy best-fit liveness plan (overlapping lifetimes never overlap in
// space); those still alive when the step ends (gradients, anything persistent) stay on the
// heap. At replay the k-th allocation gets its planned slice after two checks: the size
// matches the plan, and no allocation planned to share that space is still alive. Replay frees
// every buffer no later than eager mode did (program.h), so the checks hold; if one ever
// fails (a data-dependent allocation), that allocation and all later ones of the step fall
// back to the heap and the plan is dropped: a plan is never applied wrongly.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../tensor.h"

namespace spad {
namespace replay {

constexpr size_t kArenaAlign = 64;

struct ArenaPlan {
    std::vector<uint64_t> sizes;     // per traced allocation, in allocation order (bytes requested)
    std::vector<int64_t> offsets;    // arena offset, or -1: heap (alive at the end of the step)
    std::vector<int64_t> alloc_t;    // event clock at allocation
    std::vector<int64_t> free_t;     // event clock at free, -1: alive at the end of the step
    std::vector<std::vector<int32_t>> conflicts;  // earlier arena allocations sharing space with k
    uint64_t arena_bytes = 0;        // the plan's arena size
    uint64_t eager_peak_bytes = 0;   // peak of the traced bytes live at once during recording
    uint64_t heap_bytes = 0;         // traced bytes still alive at the end (left on the heap)
    // Buffers up to this size are not planned (offset -1): traced tensors that small live
    // inside their Storage. 0 plans every buffer (the lowered step's workspace, lower.cpp).
    uint64_t inline_bytes = Storage::kSmall;

    // Offsets by greedy best fit over the traced lifetimes; fills conflicts and arena_bytes.
    void solve();
    std::string dump() const;
};

// Tracing during recording. Starting replaces the storage hook; stop() returns the trace.
class AllocTrace {
   public:
    AllocTrace();
    ~AllocTrace();
    ArenaPlan stop();  // lifetimes as observed so far (unfreed: alive at end)
    // Only allocations made inside recorded core calls are traced (a constant Python makes
    // while recording is captured, so replay never allocates it): the recorder resumes the
    // trace around each call. Frees of traced buffers are seen whenever they happen.
    void resume();
    void pause();
    struct State;

   private:
    std::shared_ptr<State> st_;
};

// The arena memory of one plan plus its per-slice liveness; outlives the program while any
// slice is still held (freed by the last slice's release).
struct ArenaMem;

// Installs the plan's allocator for the lifetime of the scope (replay). With mem null it only
// verifies that the step allocates exactly the planned sizes (the first run of a loaded plan,
// before its arena is allocated: a file cannot make us reserve memory the step never uses).
class ArenaScope {
   public:
    ArenaScope(const ArenaPlan &plan, ArenaMem *mem);
    ~ArenaScope();
    bool failed() const;   // a size or liveness check failed: the rest went to the heap
    bool complete() const;  // not failed, and every planned allocation was made

   private:
    void *prev_state_;
};

ArenaMem *arena_mem_new(const ArenaPlan &plan);
void arena_mem_release(ArenaMem *m);  // the owner lets go (memory freed when no slice is live)

}  // namespace replay
}  // namespace spad
