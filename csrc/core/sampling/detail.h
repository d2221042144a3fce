// sampling/detail.h — pieces shared by the sampled payloads (linear.cpp, blocks.cpp,
// features.cpp, conv.cpp, elementwise.cpp). Internal to the sampling folder.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "../rng.h"
#include "../tape.h"
#include "sampling.h"

namespace spad {
namespace sampling_detail {

inline int64_t keep_count(double keep, int64_t n) {
    return std::min<int64_t>(n, std::max<int64_t>(1, (int64_t)std::llround(keep * (double)n)));
}

// A fresh (seed, counter) range for `draws` random numbers under policy p.
inline RandomStream reserve(Policy &p, uint64_t draws) {
    RandomStream rs{p.cfg.seed, p.counter, 0};
    p.counter += draws / 4 + 2;
    return rs;
}

inline std::shared_ptr<SiteState> site_for(Policy &p, const Tensor &W, int64_t n) {
    std::shared_ptr<SiteState> &s = p.sites[W->storage.get()];
    if (!s || s->n != n) {
        s = std::make_shared<SiteState>();
        s->cfg = p.cfg;
        s->n = n;
    }
    return s;
}

// What a payload packed under a policy keeps besides its data: the site whose state its
// backward pass updates (null for elementwise factors), its step (Note [Policy clock]) and,
// for an exact save on a SPAD scoring pass, that its backward refreshes the site's scores.
struct PayloadCtx {
    std::shared_ptr<SiteState> site;
    std::shared_ptr<StepToken> step;
    bool scoring = false;
};
inline std::shared_ptr<void> payload_ctx(std::shared_ptr<SiteState> site, std::shared_ptr<StepToken> step,
                                         bool scoring = false) {
    return std::make_shared<PayloadCtx>(PayloadCtx{std::move(site), std::move(step), scoring});
}
inline PayloadCtx *ctx_of(const SavedTensor &s) { return static_cast<PayloadCtx *>(s.ctx.get()); }
inline SiteState *site_of(const SavedTensor &s) { return s.ctx ? ctx_of(s)->site.get() : nullptr; }
// A backward pass reads the payload: the policy's next pack begins a new step.
inline void mark_read(const SavedTensor &s) {
    if (s.ctx && ctx_of(s)->step) ctx_of(s)->step->consumed = true;
}

// Every pack under an active policy: holds the policy's lock for the pack and joins (or
// begins) the policy's current step. `exact()`: the policy keeps everything (keep = 1).
struct PackScope {
    Policy *pol;
    std::unique_lock<std::mutex> lock;
    std::shared_ptr<StepToken> step;
    double keep_before = -1;  // the policy's keep while a per-site override is applied
    // `W`: the weight whose gradient the payload serves (null: no site), for its keep override.
    PackScope(Policy *p, const TensorImpl *W) : pol(p) {
        if (!p) return;
        lock = std::unique_lock<std::mutex>(p->mu);
        step = p->enter_step();
        if (!W || p->site_keep.empty()) return;
        auto it = p->site_keep.find(W->storage.get());
        if (it == p->site_keep.end()) return;
        // Every estimator reads cfg.keep while it packs; the lock makes the swap private.
        keep_before = p->cfg.keep;
        p->cfg.keep = it->second;
    }
    ~PackScope() {
        if (keep_before >= 0) pol->cfg.keep = keep_before;  // still under the lock
    }
    PackScope(const PackScope &) = delete;
    PackScope &operator=(const PackScope &) = delete;
    bool exact() const { return !pol || pol->cfg.kind == PolicyKind::EXACT || pol->cfg.keep >= 1.0; }
    // An exact save that still belongs to the policy's step.
    void pack_exact(SavedTensor &slot, const Tensor &t) const {
        slot.pack_exact(t);
        if (pol) slot.ctx = payload_ctx(nullptr, step);
    }
};

// The sampled payload families (Note [Sampled payloads] in saved.h). A family packed for a
// linear layer or matmul estimates dW (n x m) from the output gradient g (B x m,
// contiguous); `rs` is the stream it drew with (placement="everywhere" samples dy from
// its stream 1).
struct WeightPayload : SampledPayload {
    RandomStream rs;
    virtual Tensor weight_grad(SiteState &site, const Tensor &g, const Shape &wshape) const = 0;
    // Note [Implicit leaf gradients] (tape.h): the forms (GRAD_ROWS, GRAD_ADD) this family can
    // hand its dW over in without building it, and those forms. Each has the side effects
    // weight_grad() has (sampled scores, stale norms), and the same arithmetic per row.
    virtual unsigned implicit_forms() const { return GRAD_DENSE; }
    // GRAD_ROWS: the distinct rows dW is non-zero in (I64, u) and their values (u x m).
    virtual void weight_rows(SiteState &, const Tensor &, const Shape &, Tensor &, Tensor &) const {
        throw RuntimeError("sampling: this payload has no row-sparse weight gradient");
    }
    // GRAD_ADD: dst += alpha * dW (dst contiguous, wshape), from g.
    virtual void add_weight_grad(SiteState &, const Tensor &, const Shape &, const Tensor &, double) const {
        throw RuntimeError("sampling: this payload cannot add its weight gradient in place");
    }
};
// A family packed for conv2d estimates dW from g (N, C_out, Ho, Wo); `site` is null when
// the family keeps no per-site state.
struct ConvPayload : SampledPayload {
    virtual Tensor weight_grad(SiteState *site, const Tensor &g, const ConvGeom &geom) const = 0;
};
// The slot's payload as family interface P (a payload of another op's kind is a bug: raise).
template <class P> inline const P &payload_as(const SavedTensor &s, const char *op) {
    const P *p = dynamic_cast<const P *>(s.payload.get());
    SPAD_CHECK(p, RuntimeError, op, ": the saved sampled payload belongs to another kind of op");
    return *p;
}

// A sampled payload holds values cut from the graph, so a recorded (create_graph) backward
// through it would silently miss second-order terms: refuse instead.
inline void check_first_order(const SavedTensor &slot, const char *op) {
    SPAD_CHECK(!slot.released, RuntimeError, op, ": trying to backward through the graph a second time; "
               "specify retain_graph=True if you need to backward through the graph a second time.");
    SPAD_CHECK(!grad_enabled(), RuntimeError, op, ": backward(create_graph=True) through a sampled payload is not "
               "supported (its second derivatives would be biased); record the forward pass without a sampling "
               "policy, or use finite-difference Hessian-vector products");
}

inline Tensor index_tensor(const std::vector<int64_t> &idx) {
    Tensor t = empty({(int64_t)idx.size()}, DType::I64);
    std::copy(idx.begin(), idx.end(), t->data<int64_t>());
    return t;
}

// CRS: top-C rows by score kept with weight 1, the other s-C drawn ∝ score among the rest.
inline void crs_rows(const std::vector<double> &score, int64_t s, int64_t C, const RandomStream &rs,
                     std::vector<int64_t> &rows, std::vector<double> &w) {
    const int64_t B = (int64_t)score.size();
    std::vector<int64_t> order(B);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
    for (int64_t i = 0; i < C; ++i) rows.push_back(order[i]), w.push_back(1.0);
    const int64_t sr = s - C;
    if (sr <= 0) return;
    std::vector<double> cdf;
    double tot = 0;
    for (int64_t i = C; i < B; ++i) tot += score[order[i]];
    for (int64_t i = C; i < B; ++i) cdf.push_back((cdf.empty() ? 0 : cdf.back()) + (tot > 0 ? score[order[i]] / tot : 1.0 / (double)(B - C)));
    for (int64_t r = 0; r < sr; ++r) {
        const double u = rs.uniform((uint64_t)r) * cdf.back();
        int64_t j = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
        j = std::min<int64_t>(j, (int64_t)cdf.size() - 1);
        const double qj = cdf[j] - (j ? cdf[j - 1] : 0.0);
        rows.push_back(order[C + j]);
        w.push_back(1.0 / ((double)sr * qj));
    }
}

// sum_j f(p[j]) in double, over eight interleaved partial sums: independent add chains the
// compiler can vectorize, in a fixed order (deterministic).
template <class T, class Fn> inline double sum8(const T *p, int64_t n, Fn f) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int u = 0; u < 8; ++u) a[u] += f((double)p[j + u]);
    for (int u = 0; j < n; ++j, ++u) a[u] += f((double)p[j]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Squared norms of the R rows (F contiguous values each) of a float tensor, as doubles.
inline std::vector<double> row_norms2(const Tensor &t, int64_t R, int64_t F) {
    std::vector<double> out(R, 0.0);
    SPAD_FLOAT(t->dtype, T, {
        const T *p = t->data<T>();
        for (int64_t r = 0; r < R; ++r) out[r] = sum8(p + r * F, F, [](double v) { return v * v; });
    });
    return out;
}

// CRS / Bernoulli: which rows of x (contiguous, R rows of F values) the tape keeps, and
// their weights. CRS scores a row by ||x_r|| * ||dy_r|| with dy from the site's previous
// backward pass at the same batch position (1 when there is none yet).
inline RandomStream select_rows(Policy &p, const SiteState &site, const Tensor &x, int64_t R, int64_t F,
                                std::vector<int64_t> &rows, std::vector<double> &w) {
    const PolicyConfig &c = p.cfg;
    if (c.estimator == Estimator::BERNOULLI) {
        RandomStream rs = reserve(p, (uint64_t)R);
        for (int64_t r = 0; r < R; ++r)
            if (rs.uniform((uint64_t)r) < c.keep) rows.push_back(r), w.push_back(1.0 / c.keep);
        return rs;
    }
    const int64_t s = keep_count(c.keep, R);
    RandomStream rs = reserve(p, (uint64_t)s);
    std::vector<double> score = row_norms2(x, R, F);
    const bool stale = (int64_t)site.dy_norm.size() == R;
    for (int64_t r = 0; r < R; ++r) score[r] = std::sqrt(score[r]) * (stale ? site.dy_norm[r] : 1.0);
    crs_rows(score, s, (int64_t)std::floor(c.deterministic * (double)s), rs, rows, w);
    return rs;
}

// The kept rows of x (R rows of F values), each scaled by its weight, in `shape`.
inline Tensor weighted_rows(const Tensor &x, int64_t F, const std::vector<int64_t> &rows,
                            const std::vector<double> &w, Shape shape) {
    Tensor v = empty(shape, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = v->data<T>();
        for (size_t r = 0; r < rows.size(); ++r)
            for (int64_t j = 0; j < F; ++j) pv[(int64_t)r * F + j] = px[rows[r] * F + j] * (T)w[r];
    });
    return v;
}

// The rows `rows` (int64) of t (rows of F contiguous values), stacked in `shape`.
inline Tensor gather_rows(const Tensor &t, int64_t F, const Tensor &rows, Shape shape) {
    Tensor out = empty(shape, t->dtype);
    const int64_t *pr = rows->data<int64_t>();
    const size_t es = dtype_size(t->dtype);
    const char *src = static_cast<const char *>(t->raw());
    char *dst = static_cast<char *>(out->raw());
    for (int64_t r = 0, e = rows->numel(); r < e; ++r)
        std::memcpy(dst + (size_t)(r * F) * es, src + (size_t)(pr[r] * F) * es, (size_t)F * es);
    return out;
}

// Stale ||dy_r|| for the next step's CRS scores (g: R rows of F values).
inline void remember_dy_norms(SiteState &site, const Tensor &g, int64_t R, int64_t F) {
    std::vector<double> norms = row_norms2(g, R, F);
    for (double &v : norms) v = std::sqrt(v);
    std::lock_guard<std::mutex> lk(site.mu);
    site.dy_norm = std::move(norms);
}

// RAD different-sample in feature blocks (blocks.cpp): a BlockPayload.
std::unique_ptr<WeightPayload> pack_rad_blocks(Policy &pol, const Tensor &x, int64_t bsz);
// SPAD magnitude paths in blocks of bsz features (wide layers): a BlockPayload with stored blocks.
std::unique_ptr<WeightPayload> pack_magnitude_blocks(Policy &pol, const Tensor &x, int64_t bsz);
// Layers keeping at least this many values per example sample SPAD's magnitude paths in
// blocks (backward at GEMM-like speed); narrower ones draw single features (2-byte entries,
// lower variance for the same bytes, and a backward that costs little there anyway).
constexpr int64_t kMagnitudeBlock = 16;

// Entries bucketed by feature with a stable counting sort: order[start[i] .. start[i+1]) are
// the entries of feature i, in entry (so example) order.
inline void bucket_by_feature(const std::vector<int32_t> &feat, int64_t n, std::vector<int32_t> &start,
                              std::vector<int32_t> &order) {
    const int64_t E = (int64_t)feat.size();
    start.assign(n + 1, 0);
    for (int64_t e = 0; e < E; ++e) start[feat[e] + 1]++;
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    std::vector<int32_t> pos(start.begin(), start.end() - 1);
    order.resize(E);
    for (int64_t e = 0; e < E; ++e) order[pos[feat[e]]++] = (int32_t)e;
}
// Per-feature dW entries in feature order: feature i's entries are [start[i], start[i+1]),
// in example order, each the example ex[o] whose dy row it reads and its value v[o].
template <class T> struct FeatureEntries {
    std::vector<int32_t> start, ex;
    std::vector<T> v;
};
// dW (n x m, every row written) = sum of v[o] * dy[ex[o], :] into row i over its entries
// (features.cpp; g: B rows of m).
template <class T>
void fold_features(T *dW, int64_t n, int64_t m, const T *g, int64_t B, const FeatureEntries<T> &fe);

// dW (n x m) from per-example feature entries: entry e = b*k + s has feature feat[e] and
// value vals[e]*scale (features.cpp).
template <class T>
void scatter_features(T *dW, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k, double scale,
                      const std::vector<int32_t> &feat);
// dst (n x m) += alpha * that dW, one row at a time (a row of m values is the only temporary;
// implicit.cpp). The same bucketing, so each dst row receives one add of its summed row.
template <class T>
void add_features(T *dst, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k, double scale,
                  const std::vector<int32_t> &feat, double alpha);

}  // namespace sampling_detail
}  // namespace spad
