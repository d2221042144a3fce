// test_model_fuzz.cpp — model files through the C API's reader:
//   1. the shared test vectors (tests/data/model_vectors.txt, also run by the Python reader
//      in tests/test_model_files.py): each must load, or fail with SPAD_ERR_VALUE and the
//      expected message fragment;
//   2. deterministic mutation fuzzing: the valid vectors mutated (bit flips, interesting
//      u32 values, truncation, insertion, duplication) from a fixed seed, each loaded and,
//      if it loads, run forward and trained one step (model_fuzz_target.h).
// Under the sanitizer build (SPAD_SANITIZE=ON) this is ASan + UBSan over every input.
//
//   test_model_fuzz <vectors.txt> [iterations] [seed]
#include <spad/spad.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "check.h"
#include "model_fuzz_target.h"

namespace {

struct Vector {
    std::string name, expect, fragment;
    std::vector<uint8_t> data;
};

std::vector<uint8_t> unhex(const std::string &h) {
    std::vector<uint8_t> out;
    for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back((uint8_t)std::strtoul(h.substr(i, 2).c_str(), nullptr, 16));
    return out;
}

std::vector<Vector> read_vectors(const char *path) {
    std::vector<Vector> vs;
    std::ifstream f(path);
    std::string line;
    while (std::getline(f, line)) {
        Vector v;
        size_t a = line.find('\t'), b = line.find('\t', a + 1), c = line.find('\t', b + 1);
        if (a == std::string::npos || b == std::string::npos || c == std::string::npos) continue;
        v.name = line.substr(0, a);
        v.expect = line.substr(a + 1, b - a - 1);
        v.fragment = line.substr(b + 1, c - b - 1);
        v.data = unhex(line.substr(c + 1));
        vs.push_back(v);
    }
    return vs;
}

// splitmix64: a fixed, portable stream of random numbers.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    size_t below(size_t n) { return n ? (size_t)(next() % n) : 0; }
};

void mutate(std::vector<uint8_t> &d, Rng &r) {
    static const uint32_t interesting[] = {0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 0x7FFF, 0xFFFF, 1u << 24, (1u << 24) + 1,
                                           0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF};
    const int n_ops = 1 + (int)r.below(3);
    for (int op = 0; op < n_ops; ++op) {
        switch (r.below(7)) {
            case 0:  // flip a bit
                if (!d.empty()) d[r.below(d.size())] ^= (uint8_t)(1u << r.below(8));
                break;
            case 1:  // an interesting u32 at a 4-aligned offset (every header field is one)
                if (d.size() >= 4) {
                    const size_t at = r.below(d.size() / 4) * 4;
                    const uint32_t v = interesting[r.below(sizeof interesting / sizeof *interesting)];
                    for (int i = 0; i < 4; ++i) d[at + i] = (uint8_t)(v >> (8 * i));
                }
                break;
            case 2:  // truncate
                d.resize(r.below(d.size() + 1));
                break;
            case 3:  // insert random bytes
            {
                const size_t at = r.below(d.size() + 1), k = 1 + r.below(8);
                std::vector<uint8_t> ins(k);
                for (uint8_t &b : ins) b = (uint8_t)r.next();
                d.insert(d.begin() + (std::ptrdiff_t)at, ins.begin(), ins.end());
                break;
            }
            case 4:  // duplicate a chunk (repeats records)
                if (!d.empty()) {
                    const size_t at = r.below(d.size()), k = 1 + r.below(std::min<size_t>(64, d.size() - at));
                    std::vector<uint8_t> chunk(d.begin() + (std::ptrdiff_t)at, d.begin() + (std::ptrdiff_t)(at + k));
                    d.insert(d.begin() + (std::ptrdiff_t)r.below(d.size() + 1), chunk.begin(), chunk.end());
                }
                break;
            case 5:  // delete a chunk
                if (!d.empty()) {
                    const size_t at = r.below(d.size()), k = 1 + r.below(std::min<size_t>(16, d.size() - at));
                    d.erase(d.begin() + (std::ptrdiff_t)at, d.begin() + (std::ptrdiff_t)(at + k));
                }
                break;
            default:  // a random byte
                if (!d.empty()) d[r.below(d.size())] = (uint8_t)r.next();
                break;
        }
    }
}

}  // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s vectors.txt [iterations] [seed]\n", argv[0]);
        return 2;
    }
    const long iterations = argc > 2 ? std::atol(argv[2]) : 3000;
    Rng rng{argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 20261206ULL};
    const std::vector<Vector> vs = read_vectors(argv[1]);
    CHECK(vs.size() >= 40);
    spad_ctx_t *ctx = nullptr;
    if (spad_ctx_init(nullptr, &ctx) != SPAD_OK) return 1;

    // 1. the shared vectors
    std::vector<const Vector *> seeds;
    for (const Vector &v : vs) {
        spad_model_t *m = nullptr;
        const spad_status s = spad_model_load_buffer(ctx, v.data.data(), v.data.size(), &m);
        if (v.expect == "ok") {
            CHECK(s == SPAD_OK && m != nullptr);
            seeds.push_back(&v);
        } else {
            CHECK(s == SPAD_ERR_VALUE && m == nullptr);
            CHECK(std::strstr(spad_last_error(), v.fragment.c_str()) != nullptr);
        }
        if (g_failures) std::fprintf(stderr, "  (vector %s)\n", v.name.c_str());
        if (m) CHECK(model_fuzz_one(ctx, v.data.data(), v.data.size()) == 0);
        spad_model_free(ctx, m);
    }
    std::printf("vectors          %s (%zu)\n", g_failures ? "FAILED" : "ok", vs.size());

    // 2. mutation fuzzing from the valid vectors
    long loaded = 0, broken = 0;
    for (long i = 0; i < iterations && !seeds.empty(); ++i) {
        std::vector<uint8_t> d = seeds[rng.below(seeds.size())]->data;
        mutate(d, rng);
        // A third of the inputs each train exactly, under RAD and under SPAD (sampled tapes).
        static const spad_policy_kind kinds[] = {SPAD_POLICY_EXACT, SPAD_POLICY_RAD, SPAD_POLICY_SPAD};
        CHECK(spad_ctx_set_policy(ctx, kinds[i % 3], 0.5, 2, (uint64_t)i) == SPAD_OK);
        spad_model_t *probe = nullptr;
        if (spad_model_load_buffer(ctx, d.data(), d.size(), &probe) == SPAD_OK) ++loaded;
        spad_model_free(ctx, probe);
        if (model_fuzz_one(ctx, d.data(), d.size()) != 0) {
            ++broken;
            std::fprintf(stderr, "  mutated input %ld broke the contract\n", i);
        }
    }
    CHECK(broken == 0);
    std::printf("fuzz             %s (%ld inputs, %ld loaded)\n", broken ? "FAILED" : "ok", iterations, loaded);
    spad_ctx_free(ctx);
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
