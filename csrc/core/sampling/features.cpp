// The per-feature sparse dW kernel shared by per-example feature estimators (RAD
// "different" with single features, scored SPAD, SPAD's magnitude paths on narrow layers).
#include "detail.h"

namespace spad {
namespace sampling_detail {

// ---- backward: estimate dW ------------------------------------------------------------
// dW[i,:] = sum over entries e with feature i of v_e * g[b_e,:]. Entries are bucketed by
// feature (stable counting sort, so the summation order is fixed); then each dW row is
// built in register-sized column chunks: every entry of the bucket is folded into the
// chunk before it is stored, so each output value is written once, row after row (dW is
// written in memory order; dy, B rows, stays in cache). Work: B*k*m multiply-adds.
// row[0:C] = sum_o v[o] * g[goff[o] : goff[o] + C], with the C accumulators in registers.
// Written with GCC/Clang vector types (portable: the compiler lowers them to the widest
// vectors the target has) because auto-vectorizers tend to vectorize across the entries
// (gathers) instead of across the columns; other compilers get plain loops.
#if defined(__GNUC__)
template <class T, int C>
static void fold_chunk(T *row, const T *g, const int64_t *goff, const T *v, int32_t cnt) {
    constexpr int L = 32 / (int)sizeof(T);  // lanes of a 256-bit vector
    constexpr int NV = C / L;
    typedef T vec __attribute__((vector_size(32)));
    // Two accumulator sets (even and odd entries): twice the independent FMA chains, so the
    // loop is bound by loads rather than by FMA latency.
    vec a0[NV] = {}, a1[NV] = {};
    int32_t o = 0;
    for (; o + 2 <= cnt; o += 2) {
        const T *g0 = g + goff[o], *g1 = g + goff[o + 1];
        const T v0 = v[o], v1 = v[o + 1];
        for (int u = 0; u < NV; ++u) {
            vec x0, x1;
            std::memcpy(&x0, g0 + u * L, sizeof(vec));
            std::memcpy(&x1, g1 + u * L, sizeof(vec));
            a0[u] += v0 * x0;
            a1[u] += v1 * x1;
        }
    }
    if (o < cnt) {
        const T *g0 = g + goff[o];
        for (int u = 0; u < NV; ++u) {
            vec x0;
            std::memcpy(&x0, g0 + u * L, sizeof(vec));
            a0[u] += v[o] * x0;
        }
    }
    for (int u = 0; u < NV; ++u) a0[u] += a1[u];
    std::memcpy(row, a0, sizeof(a0));  // each row chunk is written exactly once: no pre-zeroing
}
#else
template <class T, int C>
static void fold_chunk(T *row, const T *g, const int64_t *goff, const T *v, int32_t cnt) {
    std::fill(row, row + C, T(0));
    for (int32_t o = 0; o < cnt; ++o)
        for (int j = 0; j < C; ++j) row[j] += v[o] * g[goff[o] + j];
}
#endif

// feat[e]: the input feature of entry e = b*k + s (drawn once by the caller, which may
// need the same draws again, e.g. to accumulate scores).
template <class T>
void scatter_features(T *dW, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k,
                             double scale, const std::vector<int32_t> &feat) {
    const int64_t E = B * k;
    std::vector<int32_t> start, order;
    bucket_by_feature(feat, n, start, order);
    // Entries in feature order (then example order, the sort is stable): the row of dy they
    // read and their scaled value. Repeated draws of one (feature, example) — frequent when
    // sampling is proportional to magnitude — are merged into one multiply-add.
    std::vector<int64_t> goff;
    std::vector<T> v;
    goff.reserve(E);
    v.reserve(E);
    std::vector<int32_t> cstart(n + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        cstart[i] = (int32_t)v.size();
        int64_t last_b = -1;
        for (int32_t o = start[i]; o < start[i + 1]; ++o) {
            const int64_t e = order[o], b = e / k;
            const T val = vals[e] * (T)scale;
            if (b == last_b) {
                v.back() += val;
            } else {
                goff.push_back(b * m);
                v.push_back(val);
                last_b = b;
            }
        }
    }
    cstart[n] = (int32_t)v.size();
    constexpr int C = 32 / sizeof(T) * 4;  // four 256-bit vectors' worth of columns
    for (int64_t i = 0; i < n; ++i) {
        T *row = dW + i * m;
        const int64_t *go = goff.data() + cstart[i];
        const T *vi = v.data() + cstart[i];
        const int32_t cnt = cstart[i + 1] - cstart[i];
        int64_t j0 = 0;
        for (; j0 + C <= m; j0 += C) fold_chunk<T, C>(row + j0, g + j0, go, vi, cnt);
        for (int64_t j = j0; j < m; ++j) {  // the ragged tail
            T a = 0;
            for (int32_t o = 0; o < cnt; ++o) a += vi[o] * g[go[o] + j];
            row[j] = a;
        }
    }
}

template void scatter_features<float>(float *, int64_t, int64_t, const float *, const float *, int64_t, int64_t, double,
                                      const std::vector<int32_t> &);
template void scatter_features<double>(double *, int64_t, int64_t, const double *, const double *, int64_t, int64_t,
                                       double, const std::vector<int32_t> &);

}  // namespace sampling_detail
}  // namespace spad
