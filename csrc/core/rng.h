// rng.h — counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// bits = philox(seed, counter): no state to carry, so a sampled payload stores only
// (seed, counter) and backward regenerates the very same indices or mask bit for bit.
// Counters come from two sources that never share a seed's range by construction: the
// global state (next_counter(): dropout) and each sampling policy's own (seed, counter),
// which reserves a fresh range per payload (sampling/detail.h reserve()).
#pragma once
#include <cstdint>

namespace spad {

struct Philox {
    uint32_t out[4];
    Philox(uint64_t seed, uint64_t counter, uint32_t stream = 0) {
        uint32_t c[4] = {(uint32_t)counter, (uint32_t)(counter >> 32), stream, 0x5bd1e995u};
        uint32_t k[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        for (int r = 0; r < 10; ++r) {
            const uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k[0], n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k[1];
            c[0] = n0;
            c[1] = (uint32_t)p1;
            c[2] = n2;
            c[3] = (uint32_t)p0;
            k[0] += 0x9E3779B9u;
            k[1] += 0xBB67AE85u;
        }
        for (int i = 0; i < 4; ++i) out[i] = c[i];
    }
};

// A stream of uniform numbers for one (seed, counter): element i comes from block i/4.
// The last block is cached, so a sequential walk costs one Philox call per 4 numbers.
struct RandomStream {
    uint64_t seed = 0, counter = 0;
    uint32_t stream = 0;
    mutable uint64_t cached = ~0ULL;
    mutable uint32_t cache[4] = {0, 0, 0, 0};
    RandomStream() = default;
    RandomStream(uint64_t s, uint64_t c, uint32_t st) : seed(s), counter(c), stream(st) {}
    uint32_t bits(uint64_t i) const {
        if ((i >> 2) != cached) {
            cached = i >> 2;
            Philox p(seed, counter + cached, stream);
            for (int j = 0; j < 4; ++j) cache[j] = p.out[j];
        }
        return cache[i & 3];
    }
    // Uniform in [0, 1) with 24-bit resolution, never 1.0.
    double uniform(uint64_t i) const { return (bits(i) >> 8) * (1.0 / 16777216.0); }
    // Uniform integer in [0, n) (Lemire's multiply-shift; bias < n / 2^32).
    uint32_t below(uint64_t i, uint32_t n) const { return (uint32_t)(((uint64_t)bits(i) * n) >> 32); }
};

// The global source of fresh (seed, counter) pairs for dropout and samplers.
struct RngState {
    uint64_t seed = 0x5eed5eedULL;
    uint64_t counter = 0;
};
RngState &rng_state();
void manual_seed(uint64_t seed);
// Reserve `blocks` Philox blocks (4 numbers each) and return the first counter.
uint64_t next_counter(uint64_t blocks);

}  // namespace spad
