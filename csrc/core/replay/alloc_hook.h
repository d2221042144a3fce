// alloc_hook.h — the one hook compiled replay needs in alloc_storage() (tensor.cpp): while
// a step is recorded or replayed, heap allocations of tensor data go through the hook, which
// traces them (recording) or hands out slices of the planned arena (replay). See plan.h.
#pragma once
#include <cstddef>

namespace spad {
struct Storage;
namespace replay {

// Fills s.data / s.nbytes / s.release / s.ctx and returns true, or returns false to let
// alloc_storage() allocate from the heap as usual. Null when no step is being compiled.
using StorageHook = bool (*)(Storage &s, size_t nbytes);
extern thread_local StorageHook t_storage_hook;

}  // namespace replay
}  // namespace spad
