// arena.h — a fixed-size memory arena for tensor data, and the hook that routes
// alloc_storage() into it.
//
//   alignas(16) static unsigned char buf[256 << 10];
//   Arena step(buf, sizeof buf);                 // caller-provided; Arena(bytes) owns a heap buffer
//   {
//       ArenaScope scope(&step);                 // storages made on this thread now come from `step`
//       Tensor y = ops::relu(x);                 // ...
//   }                                            // y and everything else dropped: blocks return
//   step.high_water();                           // bytes this workload needed at its peak
//
// Why not a pure bump allocator: a training step frees activations as soon as nothing
// needs them (a sampled tape keeps a fraction of each layer input, not the input), and a
// bump pointer would keep every byte until reset(). So freed blocks are reused: a block at
// the top lowers the bump pointer, others go on a small free list (first fit, coalesced).
// high_water() then measures what the tape really keeps, which is the figure we report.
// The free list is a fixed array inside the Arena (no heap); when it is full a freed
// block is simply kept until reset() — still correct, only less compact.
//
// Every block carries a 16-byte header just below its data (its extent), because
// Storage::release only passes the data pointer. Data is 16-byte aligned (SSE/NEON).
//
// Measure mode (ggml's no_alloc idea, made to run): blocks come from the heap, but the
// arena keeps exactly the books a real one would, so high_water() after one step is the
// arena size a device needs for it. Size once on the host, then deploy a fixed buffer.
//
// Exhaustion throws AllocError (the C API returns SPAD_ERR_ALLOC); nothing is half-made.
// Not thread-safe: one arena per thread, like the tape.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.h"

namespace spad {

// A fixed arena ran out of room (or the heap did, in measure mode).
struct AllocError : std::runtime_error { using std::runtime_error::runtime_error; };

class Arena {
  public:
    static constexpr size_t kAlign = 16;
    static constexpr size_t kHeader = 16;
    static constexpr int kMaxFree = 32;

    Arena(void *buffer, size_t capacity);  // caller-provided; must outlive the arena
    explicit Arena(size_t capacity);        // owned heap buffer
    static Arena measuring();               // heap-backed, counts only, no capacity limit
    ~Arena();
    Arena(const Arena &) = delete;
    Arena &operator=(const Arena &) = delete;
    Arena(Arena &&o) noexcept;

    void *alloc(size_t nbytes);  // throws AllocError
    void free(void *p);          // called through Storage::release

    void reset();  // throws RuntimeError while blocks are alive: they would dangle

    size_t used() const { return top_; }          // bump offset (includes holes on the free list)
    size_t high_water() const { return high_; }   // peak of used() since construction/reset_peak
    size_t capacity() const { return cap_; }
    size_t live_blocks() const { return live_; }
    bool is_measuring() const { return measure_; }
    void reset_peak() { high_ = top_; }

  private:
    Arena() = default;
    struct Range { size_t begin, end; };
    Range place(size_t nbytes);  // a fresh block's extent; updates the books
    void give_back(size_t begin, size_t end);

    unsigned char *base_ = nullptr;
    size_t cap_ = 0, top_ = 0, high_ = 0, live_ = 0;
    bool owned_ = false, measure_ = false;
    Range free_[kMaxFree];
    int n_free_ = 0;
};

// The arena alloc_storage() uses on this thread; null = the heap.
Arena *current_arena();
// Where state that outlives a step (sampler distributions, parameters) goes; null = heap.
Arena *persistent_arena();

// RAII: route this thread's allocations to `a` (null = heap) until the scope ends.
struct ArenaScope {
    Arena *prev;
    explicit ArenaScope(Arena *a);
    ~ArenaScope();
    ArenaScope(const ArenaScope &) = delete;
    ArenaScope &operator=(const ArenaScope &) = delete;
};

// RAII: set the persistent arena, and keep the current one, for this thread.
struct PersistentArenaScope {
    Arena *prev;
    explicit PersistentArenaScope(Arena *a);
    ~PersistentArenaScope();
    PersistentArenaScope(const PersistentArenaScope &) = delete;
    PersistentArenaScope &operator=(const PersistentArenaScope &) = delete;
};

}  // namespace spad
