// saved.h — SavedTensor: the only thing a backward rule reads, and the unit of memory
// accounting. Each op's row in ops.def names what it saves; pack_* fills a payload in
// forward, the accessors read it in backward, release() frees it after use.
//
// Note [Tape accounting]
//   tape_bytes counts the bytes that saved payloads keep alive, once per Storage (two
//   payloads on one storage cost it once; a view of a large storage costs the whole
//   storage, because that is what stays in memory). Parameters, and any leaf that
//   requires grad (a raw spad.tensor(..., requires_grad=True) weight), are not counted:
//   they live anyway. exact_tape_bytes counts, by the same rule, what an exact tape would
//   hold for the same forward pass: for a sampled payload, the full tensor it replaced.
//   Both are exact integers maintained at pack/release time, not estimates.
//
// Note [Sampled payloads]
//   A SAMPLED slot holds a SampledPayload: one type per estimator family (sampling/), e.g.
//   the kept feature values of RAD "different" with the stream that regenerates their
//   indices, or the kept batch rows of CRS with their row indices. The family owns its pack,
//   its weight-gradient estimate (so a backward rule reads like its math) and the tensors
//   it keeps; this file only charges those tensors to tape_bytes on pack and releases them,
//   by the rule of Note [Tape accounting].
//
// Note [Saved tensor versions]
//   An exact payload remembers its storage's version at pack time. In-place writes
//   (optimizer steps) bump the version; unpacking a payload whose storage changed raises
//   instead of silently computing a gradient from the new values.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "memory.h"  // MemStats, charge_tape/charge_exact
#include "tensor.h"

namespace spad {

enum class SaveKind : uint8_t {
    NONE,     // nothing saved
    EXACT,    // the tensor itself (an alias without autograd fields)
    MASK1,    // 1 bit per element (ReLU, max-pool ties are not needed)
    SEED,     // only an RNG (seed, counter): the mask or indices are regenerated
    SAMPLED,  // a SampledPayload (Note [Sampled payloads])
    INDEX,    // integer data (labels, argmax) kept exactly
};

// The interface of a sampled payload. Each family (sampling/) adds its own data and its
// gradient estimate; the tape only needs the tensors it keeps alive.
struct SampledPayload {
    virtual ~SampledPayload() = default;
    // The tensors this payload keeps (null entries allowed); charged to tape_bytes on pack,
    // once per storage, and released with the slot. Fixed from pack to release.
    virtual std::vector<Tensor> kept() const = 0;
};

struct SavedTensor {
    SaveKind kind = SaveKind::NONE;
    Tensor value;     // EXACT / INDEX: the tensor; MASK1: packed bits
    std::unique_ptr<SampledPayload> payload;  // SAMPLED
    std::shared_ptr<ExactCharge> exact_src;  // charged to exact_tape_bytes (not the storage itself)
    std::shared_ptr<void> ctx;  // packed under a policy: its step, and the site backward updates
    uint64_t version = 0;
    uint64_t seed = 0, counter = 0;  // SEED
    bool uncounted = false;  // an exact save of a leaf that requires grad: not tape
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
    // `p` holds fresh payload tensors; `source` is the tensor an exact tape saves.
    void pack_sampled(std::unique_ptr<SampledPayload> p, const Tensor &source);
    // Read (throws RuntimeError naming `op` if released or modified in place).
    const Tensor &get(const char *op) const;
    void release();
    bool defined() const { return kind != SaveKind::NONE; }
};

}  // namespace spad
