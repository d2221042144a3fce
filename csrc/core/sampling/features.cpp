// The per-feature sparse dW kernel shared by per-example feature estimators (RAD
// "different" with single features, scored SPAD, SPAD's magnitude paths on narrow layers).
#include "detail.h"

namespace spad {
namespace sampling_detail {

// ---- backward: estimate dW ------------------------------------------------------------
// dW[i,:] = sum over entries e with feature i of v_e * g[b_e,:]. The entries come in feature
// order (FeatureEntries: feature i's are [start[i], start[i+1]), in example order, so the
// summation order is fixed); each dW row is then built in register-sized column chunks:
// every entry of the row is folded into the chunk before it is stored, so each output value
// is written once, row after row (dW is written in memory order; dy, B rows, stays in
// cache). Work: one multiply-add per entry and column.
//
// Written with GCC/Clang vector types (portable: the compiler lowers them to the widest
// vectors the target has, chosen at compile time) because auto-vectorizers
// tend to vectorize across the entries (gathers) instead of across the columns; other
// compilers get plain loops.
#if defined(__GNUC__) && defined(__AVX512F__)
constexpr int kFeatVec = 64;
#elif defined(__AVX__)
constexpr int kFeatVec = 32;
#else
constexpr int kFeatVec = 16;  // baseline x86-64 (SSE2): a wider type would be emulated
#endif

#if defined(__GNUC__)
// row[0:NV*L] = sum_o v[o] * g[ex[o]*ld : ...], the NV accumulators in registers. A narrow
// chunk (NV < 8) keeps two accumulator sets (even and odd entries) so there are enough
// independent FMA chains to hide their latency; a wide one has enough chains by itself.
// `tail` < NV*L: store only that many values (the padded dy makes the loads safe).
template <class T, int NV>
__attribute__((always_inline)) static inline void fold_chunk(T *row, const T *g, int64_t ld, const int32_t *ex,
                                                             const T *v, int32_t cnt, int64_t tail) {
    constexpr int L = kFeatVec / (int)sizeof(T);
    constexpr int SETS = NV < 8 ? 2 : 1;
    typedef T vec __attribute__((vector_size(kFeatVec)));
    vec a[SETS][NV] = {};
    int32_t o = 0;
    for (; o + SETS <= cnt; o += SETS)
        for (int s = 0; s < SETS; ++s) {
            const T *gp = g + ex[o + s] * ld;
            const T vo = v[o + s];
            for (int u = 0; u < NV; ++u) {
                vec x;
                __builtin_memcpy(&x, gp + u * L, sizeof(vec));
                a[s][u] += vo * x;
            }
        }
    for (; o < cnt; ++o) {
        const T *gp = g + ex[o] * ld;
        for (int u = 0; u < NV; ++u) {
            vec x;
            __builtin_memcpy(&x, gp + u * L, sizeof(vec));
            a[0][u] += v[o] * x;
        }
    }
    // Each row chunk is written exactly once (no pre-zeroing), straight from the registers; a
    // short last chunk through a copy.
    for (int u = 0; u < NV; ++u) {
        if (SETS > 1) a[0][u] += a[SETS - 1][u];
        if (tail >= (u + 1) * L) {
            __builtin_memcpy(row + u * L, &a[0][u], sizeof(vec));
        } else if (tail > u * L) {
            T part[L];
            __builtin_memcpy(part, &a[0][u], sizeof(vec));
            std::copy(part, part + (tail - u * L), row + u * L);
        }
    }
}
#endif

template <class T>
void fold_features(T *dW, int64_t n, int64_t m, const T *g, int64_t B, const FeatureEntries<T> &fe) {
    const int32_t *ex = fe.ex.data();
    const T *v = fe.v.data();
#if defined(__GNUC__)
    constexpr int L = kFeatVec / (int)sizeof(T), C = 4 * L;
    // A layer whose width is not a multiple of the vector gets dy copied with padded rows
    // (B rows, small), so the last chunk loads whole vectors and stores only m values.
    std::vector<T> padded;
    int64_t ld = m;
    if (m % L) {
        ld = (m + L - 1) / L * L;
        padded.assign((size_t)(B * ld), T(0));
        for (int64_t b = 0; b < B; ++b) std::copy(g + b * m, g + (b + 1) * m, padded.begin() + b * ld);
        g = padded.data();
    }
    for (int64_t i = 0; i < n; ++i) {
        T *row = dW + i * m;
        const int32_t s0 = fe.start[i], cnt = fe.start[i + 1] - s0;
        int64_t j0 = 0;
        // With 32 vector registers (AVX-512) a whole 16-vector chunk fits: one pass over the
        // row's entries per 16 vectors of columns (rows have few entries, so the per-chunk
        // setup and the re-reads of the entry list are what a narrower chunk pays for).
        if (kFeatVec == 64)
            for (; j0 + 4 * C <= m; j0 += 4 * C) fold_chunk<T, 16>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, 4 * C);
        for (; j0 + C <= m; j0 += C) fold_chunk<T, 4>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, C);
        for (; j0 < m; j0 += L) fold_chunk<T, 1>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, m - j0);
    }
#else
    for (int64_t i = 0; i < n; ++i) {
        T *row = dW + i * m;
        std::fill(row, row + m, T(0));
        for (int32_t o = fe.start[i]; o < fe.start[i + 1]; ++o)
            for (int64_t j = 0; j < m; ++j) row[j] += v[o] * g[ex[o] * m + j];
    }
    (void)B;
#endif
}

// feat[e]: the input feature of entry e = b*k + s (drawn once by the caller, which may
// need the same draws again, e.g. to accumulate scores).
template <class T>
void scatter_features(T *dW, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k,
                      double scale, const std::vector<int32_t> &feat) {
    const int64_t E = B * k;
    std::vector<int32_t> start, order;
    bucket_by_feature(feat, n, start, order);
    // Entries in feature order (then example order, the sort is stable): the example whose dy
    // row they read and their scaled value. Repeated draws of one (feature, example) are
    // merged into one multiply-add.
    FeatureEntries<T> fe;
    fe.ex.reserve(E);
    fe.v.reserve(E);
    fe.start.assign(n + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        fe.start[i] = (int32_t)fe.v.size();
        int64_t last_b = -1;
        for (int32_t o = start[i]; o < start[i + 1]; ++o) {
            const int64_t e = order[o], b = e / k;
            const T val = vals[e] * (T)scale;
            if (b == last_b) {
                fe.v.back() += val;
            } else {
                fe.ex.push_back((int32_t)b);
                fe.v.push_back(val);
                last_b = b;
            }
        }
    }
    fe.start[n] = (int32_t)fe.v.size();
    fold_features(dW, n, m, g, B, fe);
}

template void scatter_features<float>(float *, int64_t, int64_t, const float *, const float *, int64_t, int64_t, double,
                                      const std::vector<int32_t> &);
template void scatter_features<double>(double *, int64_t, int64_t, const double *, const double *, int64_t, int64_t,
                                       double, const std::vector<int32_t> &);
template void fold_features<float>(float *, int64_t, int64_t, const float *, int64_t, const FeatureEntries<float> &);
template void fold_features<double>(double *, int64_t, int64_t, const double *, int64_t,
                                    const FeatureEntries<double> &);

}  // namespace sampling_detail
}  // namespace spad
