// kernels.cpp — one copy of kernels_body.h per instruction set, and the choice between them.
//
// Note [Kernel dispatch]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A sampled backward is only worth its sampling if its kernels are as fast as the BLAS GEMM
// they replace, and BLAS picks its kernels for the CPU at run time. So do these: copy k0 is
// built for the build's own target (SPAD_PORTABLE=1 or a wheel: baseline x86-64, SSE2;
// -march=native: whatever this machine has); on x86-64 with GCC, copies k2 (AVX2 + FMA) and k3
// (AVX-512 F/BW/VL/DQ) are built under `#pragma GCC target` and used when the CPU has them
// (and the build's target does not already). One binary, the widest vectors the CPU runs.
// The environment variable SPAD_KERNELS=baseline|avx|avx2|avx512 picks a copy for a whole
// process (benchmarks use it to measure the narrower ones); set_isa() does the same in it.
// Copies may round differently (vector widths change summation order), never more than that.
#include "kernels.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SPAD_KERN_DISPATCH 1
#else
#define SPAD_KERN_DISPATCH 0
#endif
#if SPAD_KERN_DISPATCH || defined(__AVX512F__)
#include <immintrin.h>
#endif

// The build target's own level.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SPAD_KERN_BUILD_LEVEL 3
#elif defined(__AVX2__) && defined(__FMA__)
#define SPAD_KERN_BUILD_LEVEL 2
#elif defined(__AVX__)
#define SPAD_KERN_BUILD_LEVEL 1
#else
#define SPAD_KERN_BUILD_LEVEL 0
#endif

namespace spad {
namespace kern {

#define SPAD_KERN_LEVEL SPAD_KERN_BUILD_LEVEL
namespace k0 {
#include "kernels_body.h"
}
#undef SPAD_KERN_LEVEL

#if SPAD_KERN_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt,lzcnt,f16c")
#define SPAD_KERN_LEVEL 2
namespace k2 {
#include "kernels_body.h"
}
#undef SPAD_KERN_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx2,fma,bmi,bmi2,popcnt,lzcnt,f16c")
#define SPAD_KERN_LEVEL 3
namespace k3 {
#include "kernels_body.h"
}
#undef SPAD_KERN_LEVEL
#pragma GCC pop_options
#endif

namespace {

const char *const kNames[4] = {"baseline", "avx", "avx2", "avx512"};

int cpu_level() {
#if SPAD_KERN_DISPATCH
    __builtin_cpu_init();  // its checks include the OS's support for the wider registers
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return 3;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
#endif
    return 0;
}

bool runnable(int level) {
    if (level == SPAD_KERN_BUILD_LEVEL) return true;
    return SPAD_KERN_DISPATCH && level > SPAD_KERN_BUILD_LEVEL && level >= 2 && level <= cpu_level();
}

int level_of(const char *name) {
    for (int l = 0; l < 4; ++l)
        if (name && std::strcmp(name, kNames[l]) == 0) return l;
    return -1;
}

int initial_level() {
    int best = SPAD_KERN_BUILD_LEVEL;
    for (int l = 2; l <= 3; ++l)
        if (runnable(l)) best = l;
    if (const char *env = std::getenv("SPAD_KERNELS")) {
        const int want = level_of(env);
        if (want >= 0 && runnable(want)) return want;
        if (*env)
            std::fprintf(stderr, "spad: SPAD_KERNELS=%s is not one of %s here; using %s\n", env, available_isas(),
                         kNames[best]);
    }
    return best;
}

std::atomic<int> &level() {
    static std::atomic<int> l{initial_level()};
    return l;
}

}  // namespace

const char *isa() { return kNames[level().load(std::memory_order_relaxed)]; }

const std::vector<const char *> &isa_list() {
    static const std::vector<const char *> names = [] {
        std::vector<const char *> out;
        for (int l = 0; l < 4; ++l)
            if (runnable(l)) out.push_back(kNames[l]);
        return out;
    }();
    return names;
}

const char *available_isas() {
    static const std::string s = [] {
        std::string out;
        for (const char *name : isa_list()) out += (out.empty() ? "" : ",") + std::string(name);
        return out;
    }();
    return s.c_str();
}

bool set_isa(const char *name) {
    const int l = level_of(name);
    if (l < 0 || !runnable(l)) return false;
    level().store(l, std::memory_order_relaxed);
    return true;
}

// Every entry point: the chosen copy's function of the same name.
#if SPAD_KERN_DISPATCH
#define SPAD_KERN_CALL(f, ...)                                   \
    switch (level().load(std::memory_order_relaxed)) {           \
    case 3:                                                      \
        if (SPAD_KERN_BUILD_LEVEL < 3) return k3::f(__VA_ARGS__); \
        break;                                                   \
    case 2:                                                      \
        if (SPAD_KERN_BUILD_LEVEL < 2) return k2::f(__VA_ARGS__); \
        break;                                                   \
    default:                                                     \
        break;                                                   \
    }                                                            \
    return k0::f(__VA_ARGS__)
#else
#define SPAD_KERN_CALL(f, ...) return k0::f(__VA_ARGS__)
#endif

int tile_rows() { SPAD_KERN_CALL(tile_rows); }

#define SPAD_KERN_FOLD_FEATURES(T)                                                                                  \
    void fold_features(T *dW, int64_t n, int64_t m, const T *g, int64_t ld, const int32_t *start, const int32_t *ex, \
                       const T *v) {                                                                                 \
        SPAD_KERN_CALL(fold_features, dW, n, m, g, ld, start, ex, v);                                                \
    }                                                                                                                \
    void fold_block(T *dW, int64_t m, int64_t rows, const T *g, const int64_t *goff, const T *vs, int32_t cnt) {     \
        SPAD_KERN_CALL(fold_block, dW, m, rows, g, goff, vs, cnt);                                                   \
    }                                                                                                                \
    int64_t compress_nonzero(const T *x, int64_t n, T *nzv, int32_t *nzi) {                                          \
        SPAD_KERN_CALL(compress_nonzero, x, n, nzv, nzi);                                                            \
    }                                                                                                                \
    double prefix_abs(const T *xv, int64_t nn, double *mass) { SPAD_KERN_CALL(prefix_abs, xv, nn, mass); }
SPAD_KERN_FOLD_FEATURES(float)
SPAD_KERN_FOLD_FEATURES(double)

#define SPAD_KERN_CODES(T, C)                                                                                       \
    int32_t draw_counts(const double *mass, const T *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,  \
                        int64_t k, int32_t *upto, C *pair) {                                                         \
        SPAD_KERN_CALL(draw_counts, mass, xv, nzi, nn, inv_step, u, k, upto, pair);                                  \
    }                                                                                                                \
    void add_code_rows(T *dW, int64_t n, int64_t m, const T *g, const C *codes, const T *scale_b, int64_t B,         \
                       int64_t k) {                                                                                  \
        SPAD_KERN_CALL(add_code_rows, dW, n, m, g, codes, scale_b, B, k);                                            \
    }
SPAD_KERN_CODES(float, int16_t)
SPAD_KERN_CODES(float, int32_t)
SPAD_KERN_CODES(double, int16_t)
SPAD_KERN_CODES(double, int32_t)

}  // namespace kern
}  // namespace spad
