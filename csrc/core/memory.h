// memory.h — what spad allocates, counted: live and peak bytes of every storage the core
// made, by category, plus the tape figures (Note [Tape accounting] in saved.h).
//
// Note [Allocation accounting]
//   allocated_bytes counts the data bytes (Storage::nbytes, as requested) of every storage
//   alloc_storage() made, heap or arena, from creation to destruction. Buffers spad only
//   borrows (numpy arrays shared zero-copy through from_numpy: batch inputs, user arrays)
//   are not spad's allocation and are never counted, even when the tape holds them; they do
//   count in tape_bytes, which measures what the tape keeps alive, whoever allocated it.
//   Bookkeeping (tensor headers, tape nodes, shapes, BLAS workspace) is not counted either.
//
//   Each counted storage is in exactly one category at a time. Its base category is set by
//   what it becomes: a parameter (nn.Parameter, spad_tensor_set_param), a gradient (the
//   tape's .grad accumulation), optimizer state (optimizer buffers); else it is OTHER.
//   While saved payloads hold an OTHER storage it counts as TAPE, so "tape" here is the
//   part of tape_bytes that spad itself allocated. Moving between categories never changes
//   allocated_bytes.
//
//   Counters are atomics: threads training separate models may allocate, record, run
//   backward and free concurrently, and every counter returns to its baseline. Peaks are
//   process-wide maxima since reset_peak_memory_stats().
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace spad {

struct Storage;
struct ExactCharge;

enum class MemCategory : uint8_t { PARAMETERS = 0, GRADIENTS, OPTIMIZER_STATE, TAPE, OTHER, COUNT_ };
constexpr int kMemCategories = (int)MemCategory::COUNT_;
const char *mem_category_name(MemCategory c);  // "parameters", ..., "other"

// Process-wide counters; read them through snapshot() for a consistent-enough copy.
struct MemStats {
    std::atomic<int64_t> tape_bytes{0}, peak_tape_bytes{0};
    std::atomic<int64_t> exact_tape_bytes{0}, peak_exact_tape_bytes{0};
    std::atomic<int64_t> budget{-1};  // hard cap on tape_bytes; -1 = none
    std::atomic<int64_t> allocated_bytes{0}, peak_allocated_bytes{0};
    std::atomic<int64_t> alloc_count{0};        // live counted storages
    std::atomic<int64_t> total_allocated{0};    // bytes ever allocated (monotone)
    std::atomic<int64_t> by_category[kMemCategories] = {};
    std::atomic<int64_t> peak_by_category[kMemCategories] = {};
};
MemStats &mem_stats();
void reset_peak_memory_stats();

// Plain copy of the counters (each field read atomically; the set is not one transaction).
struct MemSnapshot {
    int64_t tape_bytes, peak_tape_bytes, exact_tape_bytes, peak_exact_tape_bytes, budget;
    int64_t allocated_bytes, peak_allocated_bytes, alloc_count, total_allocated;
    int64_t by_category[kMemCategories], peak_by_category[kMemCategories];
};
MemSnapshot mem_snapshot();

// ---- allocation (called by alloc_storage and ~Storage) ----
void count_alloc(Storage &s);  // marks s counted, category OTHER
void count_free(Storage &s);   // no-op for storages that were never counted
// Sets the base category of t's storage (PARAMETERS also sets is_param). TAPE is derived,
// not settable; an uncounted (borrowed) storage only takes the flag.
void set_category(Storage &s, MemCategory c);
MemCategory effective_category(const Storage &s);

// ---- tracing (benchmarks: allocated bytes over one step) ----
// While on, every counted allocation and release appends allocated_bytes after it.
void set_memory_trace(bool on);  // on: clears the trace
std::vector<int64_t> memory_trace();

// ---- tape charges (Note [Tape accounting] in saved.h) ----
// Charges a payload's storage to tape_bytes once per storage (sign +1 / -1); throws
// BudgetError, charging nothing, when the tape budget would be exceeded.
void charge_tape(const std::shared_ptr<Storage> &s, int sign);
// The token an exact tape would charge for `s` (made on first use).
std::shared_ptr<ExactCharge> exact_token(const std::shared_ptr<Storage> &s);
void charge_exact(const std::shared_ptr<ExactCharge> &s, int sign);

}  // namespace spad
