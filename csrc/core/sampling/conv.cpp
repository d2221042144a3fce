// Sampled payloads for conv2d weight gradients (Note [im2col rows] in conv.h).
//
// dW is linear in the input x, so any unbiased estimate x_hat of x (E[x_hat] = x) gives an
// unbiased dW. The tape keeps only the sampled part of x:
//   - RAD / SPAD (features -> spatial positions): each input pixel (n, h, w), with all its
//     channels, is kept with probability p and scaled by 1/p ("same" mode: one pixel mask
//     shared by the batch, as RAD suggests for convolutions). Indices come back from the
//     RNG. dW is then computed from the densified x_hat: memory is p x, FLOPs are not.
//   - CRS (batch rows -> examples): s = p*N examples by ||x_n||*||dy_n|| (stale dy), top-C
//     kept exactly and the rest importance-weighted; dW from those examples only, p x FLOPs.
#include "../conv.h"
#include "detail.h"

namespace spad {

using namespace sampling_detail;

// Pixel sampling (RAD / SPAD): the kept pixels' channel vectors, scaled by 1/keep; the mask
// is regenerated from the stream (one pixel mask shared by the batch in "same" mode), x_hat
// densified, and dW computed exactly on it.
struct PixelPayload final : ConvPayload {
    Tensor values;  // (kept pixels, C)
    RandomStream rs;
    double keep = 1.0;
    bool same = false;
    std::vector<Tensor> kept() const override { return {values}; }
    Tensor weight_grad(SiteState *, const Tensor &g, const ConvGeom &geom) const override {
        const int64_t N = geom.N, C = geom.C, P = geom.H * geom.W;
        Tensor xh = zeros({N, C, geom.H, geom.W}, values->dtype);
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        SPAD_FLOAT(values->dtype, T, {
            const T *pv = values->data<T>();
            T *px = xh->data<T>();
            int64_t o = 0;
            for (int64_t nn = 0; nn < N; ++nn)
                for (int64_t hw = 0; hw < P; ++hw)
                    if (draws.uniform((uint64_t)(same ? hw : nn * P + hw)) < keep) {
                        for (int64_t ch = 0; ch < C; ++ch) px[(nn * C + ch) * P + hw] = pv[o * C + ch];
                        ++o;
                    }
        });
        return conv_weight_grad_rows(xh, g, geom, RowSet::range(0, geom.rows()));
    }
};

// Example rows (CRS / Bernoulli): the kept examples, weighted, and their batch positions;
// dW from those examples only. CRS remembers ||dy_n|| for the next step's scores.
struct ExamplePayload final : ConvPayload {
    Tensor values;  // (s, C, H, W), weighted
    Tensor rows;    // I64 (s)
    bool crs = false;
    std::vector<Tensor> kept() const override { return {values, rows}; }
    Tensor weight_grad(SiteState *site, const Tensor &g, const ConvGeom &geom) const override {
        const int64_t Q = geom.O * geom.Ho * geom.Wo;
        Tensor gs = gather_rows(g, Q, rows, {rows->numel(), geom.O, geom.Ho, geom.Wo});
        if (crs) remember_dy_norms(*site, g, geom.N, Q);
        ConvGeom sub = geom;
        sub.N = rows->numel();
        return conv_weight_grad_rows(values, gs, sub, RowSet::range(0, sub.rows()));
    }
};

void pack_conv_input(Node &, SavedTensor &slot, const Tensor &x_, const Tensor &w, const ConvGeom &geom) {
    PackScope scope(active_policy().get(), w.get());
    if (scope.exact()) return scope.pack_exact(slot, x_);
    Policy *pol = scope.pol;
    const PolicyConfig &c = pol->cfg;
    Tensor x = contiguous(x_);
    const int64_t N = geom.N, C = geom.C, P = geom.H * geom.W;
    const Estimator est = c.estimator;
    std::shared_ptr<SiteState> site;
    if (est == Estimator::CRS || est == Estimator::BERNOULLI) {
        site = site_for(*pol, w, C * P);
        std::lock_guard<std::mutex> site_lock(site->mu);
        std::vector<int64_t> rows;
        std::vector<double> wt;
        auto p = std::make_unique<ExamplePayload>();
        select_rows(*pol, *site, x, N, C * P, rows, wt);
        p->values = weighted_rows(x, C * P, rows, wt, {(int64_t)rows.size(), C, geom.H, geom.W});
        p->rows = index_tensor(rows);
        p->crs = est == Estimator::CRS;
        slot.pack_sampled(std::move(p), x_);
    } else {
        auto p = std::make_unique<PixelPayload>();
        p->same = est == Estimator::RAD_SAME;
        p->keep = c.keep;
        p->rs = reserve(*pol, (uint64_t)(p->same ? P : N * P));
        std::vector<int64_t> kept;  // (n, hw) pairs, in order
        for (int64_t n = 0; n < N; ++n)
            for (int64_t hw = 0; hw < P; ++hw)
                if (p->rs.uniform((uint64_t)(p->same ? hw : n * P + hw)) < c.keep) kept.push_back(n * P + hw);
        p->values = empty({(int64_t)kept.size(), C}, x->dtype);
        SPAD_FLOAT(x->dtype, T, {
            const T *px = x->data<T>();
            T *pv = p->values->data<T>();
            const T inv = (T)(1.0 / c.keep);
            for (size_t o = 0; o < kept.size(); ++o) {
                const int64_t n = kept[o] / P, hw = kept[o] % P;
                for (int64_t ch = 0; ch < C; ++ch) pv[(int64_t)o * C + ch] = px[(n * C + ch) * P + hw] * inv;
            }
        });
        slot.pack_sampled(std::move(p), x_);
    }
    slot.ctx = payload_ctx(site, scope.step);
}

Tensor sampled_conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom) {
    const char *op = op_name(n.op);
    check_first_order(slot, op);
    mark_read(slot);
    return payload_as<ConvPayload>(slot, op).weight_grad(site_of(slot), g, geom);
}

}  // namespace spad
