// saved.h — SavedTensor: the only thing a backward rule reads, and the unit of memory
// accounting. Each op's row in ops.def names what it saves; pack_* fills a payload in
// forward, the accessors read it in backward, release() frees it after use.
//
// Note [Tape accounting]
//   tape_bytes counts the bytes that saved payloads keep alive, once per Storage (two
//   payloads on one storage cost it once; a view of a large storage costs the whole
//   storage, because that is what stays in memory). Parameters are not counted: they
//   live anyway. exact_tape_bytes counts, by the same rule, what an exact tape would
//   hold for the same forward pass: for a sampled payload, the full tensor it replaced.
//   Both are exact integers maintained at pack/release time, not estimates.
//
// Note [Saved tensor versions]
//   An exact payload remembers its storage's version at pack time. In-place writes
//   (optimizer steps) bump the version; unpacking a payload whose storage changed raises
//   instead of silently computing a gradient from the new values.
#pragma once
#include <cstdint>

#include "memory.h"  // MemStats, charge_tape/charge_exact
#include "tensor.h"

namespace spad {

enum class SaveKind : uint8_t {
    NONE,     // nothing saved
    EXACT,    // the tensor itself (an alias without autograd fields)
    MASK1,    // 1 bit per element (ReLU, max-pool ties are not needed)
    SEED,     // only an RNG (seed, counter): the mask or indices are regenerated
    SAMPLED,  // a sampled subset of values + (seed, counter) + scale; see sampling
    INDEX,    // integer data (labels, argmax) kept exactly
};

struct SavedTensor {
    SaveKind kind = SaveKind::NONE;
    Tensor value;     // EXACT / INDEX: the tensor; MASK1: packed bits; SAMPLED: values
    Tensor aux;       // SAMPLED: extra payload (probabilities, stored indices), counted too
    std::shared_ptr<ExactCharge> exact_src;  // charged to exact_tape_bytes (not the storage itself)
    std::shared_ptr<void> ctx;           // SAMPLED: the sampling site whose state backward updates
    uint64_t version = 0;
    uint64_t seed = 0, counter = 0;
    int64_t k = 0;
    double scale = 1.0;
    uint8_t mode = 0;
    bool released = false;

    SavedTensor() = default;
    SavedTensor(const SavedTensor &) = delete;
    SavedTensor &operator=(const SavedTensor &) = delete;
    SavedTensor(SavedTensor &&o) noexcept { *this = std::move(o); }
    SavedTensor &operator=(SavedTensor &&o) noexcept;
    ~SavedTensor() { release(); }

    // Fill: the payload is charged to tape_bytes (and exact_tape_bytes) on pack.
    // Inputs are kept as they are (so double backward can see their history); an op's own
    // output is kept as an alias without grad_fn (else the node would own itself).
    void pack_exact(const Tensor &t, bool is_output = false, SaveKind as = SaveKind::EXACT);
    void pack_mask(const Tensor &bits, const Tensor &source);  // bits: U8, ceil(n/8)
    void pack_seed(uint64_t seed, uint64_t counter, const Tensor &source);
    // `values`/`aux` are fresh payload tensors; `source` is the tensor an exact tape saves.
    void pack_sampled(const Tensor &values, const Tensor &aux, const Tensor &source);
    // Read (throws RuntimeError naming `op` if released or modified in place).
    const Tensor &get(const char *op) const;
    void release();
    bool defined() const { return kind != SaveKind::NONE; }
};

}  // namespace spad
