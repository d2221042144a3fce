// The per-feature sparse dW kernel shared by per-example feature estimators (RAD
// "different" with single features, scored SPAD, SPAD's magnitude paths on narrow layers).
#include "../kernels.h"
#include "detail.h"

namespace spad {
namespace sampling_detail {

// ---- backward: estimate dW ------------------------------------------------------------
// dW[i,:] = sum over entries e with feature i of v_e * g[b_e,:]. The entries come in feature
// order (FeatureEntries: feature i's are [start[i], start[i+1]), in example order, so the
// summation order is fixed); each dW row is then built in register-sized column chunks:
// every entry of the row is folded into the chunk before it is stored, so each output value
// is written once, row after row (dW is written in memory order; dy, B rows, stays in
// cache). Work: one multiply-add per entry and column. The kernel is kern::fold_features,
// compiled for each instruction set (Note [Kernel dispatch] in kernels.cpp).
template <class T>
void fold_features(T *dW, int64_t n, int64_t m, const T *g, int64_t B, const FeatureEntries<T> &fe) {
    // A layer whose width is not a multiple of the widest vector gets dy copied with padded
    // rows (B rows, small), so the last chunk loads whole vectors and stores only m values.
    constexpr int64_t L = 64 / (int64_t)sizeof(T);
    std::vector<T> padded;
    int64_t ld = m;
    if (m % L) {
        ld = (m + L - 1) / L * L;
        padded.assign((size_t)(B * ld), T(0));
        for (int64_t b = 0; b < B; ++b) std::copy(g + b * m, g + (b + 1) * m, padded.begin() + b * ld);
        g = padded.data();
    }
    kern::fold_features(dW, n, m, g, ld, fe.start.data(), fe.ex.data(), fe.v.data());
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
