// Sampled weight gradients handed to a gradient-complete hook without the dense dW (Note
// [Implicit leaf gradients] in tape.h): the row-sparse form of RAD mode="same" and biased
// SPAD, and "add lr * dW into the parameter" for plain SGD under the per-feature estimators.
#include <algorithm>

#include "detail.h"

namespace spad {

using namespace sampling_detail;

namespace sampling_detail {

template <class T>
void add_features(T *dst, int64_t n, int64_t m, const T *g, const T *vals, int64_t, int64_t k, double scale,
                  const std::vector<int32_t> &feat, double alpha) {
    std::vector<int32_t> start, order;  // as scatter_features does
    bucket_by_feature(feat, n, start, order);
    std::vector<T> row(m);
    const T a = (T)alpha, sc = (T)scale;
    for (int64_t i = 0; i < n; ++i) {
        if (start[i] == start[i + 1]) continue;  // a feature no entry drew: its dW row is zero
        std::fill(row.begin(), row.end(), T(0));
        for (int32_t o = start[i]; o < start[i + 1]; ++o) {
            const int64_t e = order[o];
            const T v = vals[e] * sc, *gb = g + (e / k) * m;
            for (int64_t j = 0; j < m; ++j) row[j] += v * gb[j];
        }
        T *d = dst + i * m;
        for (int64_t j = 0; j < m; ++j) d[j] += a * row[j];
    }
}

template void add_features<float>(float *, int64_t, int64_t, const float *, const float *, int64_t, int64_t, double,
                                  const std::vector<int32_t> &, double);
template void add_features<double>(double *, int64_t, int64_t, const double *, const double *, int64_t, int64_t,
                                   double, const std::vector<int32_t> &, double);

}  // namespace sampling_detail

namespace {

bool floats_finite(const Tensor &t) { return !t || !is_floating(t->dtype) || all_finite(t); }

// One sampled dW in implicit form. Row-sparse: the compact rows, computed before the rule
// computes dx (so dy may then be overwritten). Otherwise the payload adds it from dy later,
// which keeps dy alive until the hook has run.
struct PayloadGrad final : ImplicitGrad {
    const WeightPayload &payload;
    SiteState &site;
    Tensor g;  // dy (B x m): only for the add form
    Shape ws;
    Tensor idx, vals;  // the row-sparse form
    PayloadGrad(const WeightPayload &p, SiteState &s, Shape w) : payload(p), site(s), ws(std::move(w)) {}
    Shape shape() const override { return ws; }
    DType dtype() const override { return vals ? vals->dtype : g->dtype; }
    bool rows(Tensor &i, Tensor &v) const override {
        if (!vals) return false;
        i = idx, v = vals;
        return true;
    }
    void add_to(const Tensor &dst, double alpha) const override {
        SPAD_CHECK(dst->shape == ws && dst->dtype == dtype() && dst->is_contiguous(), RuntimeError,
                   "implicit gradient: destination of shape ", shape_str(dst->shape), " does not match ", shape_str(ws));
        if (!vals) return payload.add_weight_grad(site, g, ws, dst, alpha);
        const int64_t m = ws[1], u = idx->numel();
        const int64_t *pi = idx->data<int64_t>();
        SPAD_FLOAT(dst->dtype, T, {
            const T *pv = vals->data<T>();
            T *pd = dst->data<T>();
            const T a = (T)alpha;
            for (int64_t r = 0; r < u; ++r)
                for (int64_t j = 0; j < m; ++j) pd[pi[r] * m + j] += a * pv[r * m + j];
        });
    }
    bool all_finite() const override {
        if (vals) return floats_finite(vals);
        if (!floats_finite(g)) return false;
        for (const Tensor &t : payload.kept())
            if (!floats_finite(t)) return false;
        return true;
    }
};

}  // namespace

std::unique_ptr<ImplicitGrad> implicit_weight_grad(Node &n, size_t input, const SavedTensor &slot, const Tensor &g2d,
                                                   const Shape &wshape, int64_t g_kept_bytes) {
    if (!is_sampled(slot)) return nullptr;
    const unsigned want = implicit_grad_wanted(n, input);
    if (want == GRAD_DENSE) return nullptr;
    const char *op = op_name(n.op);
    const WeightPayload &p = payload_as<WeightPayload>(slot, op);
    const unsigned can = p.implicit_forms() & want;
    const int64_t dw_bytes = wshape[0] * wshape[1] * (int64_t)dtype_size(g2d->dtype);
    // The add form saves dW but keeps dy until the hook: worth it only when dW is the larger.
    const bool rows = (can & GRAD_ROWS) != 0, add = (can & GRAD_ADD) != 0 && dw_bytes > g_kept_bytes;
    if (!rows && !add) return nullptr;
    check_first_order(slot, op);
    mark_read(slot);
    SiteState &site = *site_of(slot);
    auto out = std::make_unique<PayloadGrad>(p, site, wshape);
    if (rows)
        p.weight_rows(site, contiguous(g2d), wshape, out->idx, out->vals);
    else
        out->g = contiguous(g2d);
    return out;
}

}  // namespace spad
