// Sampled payloads for weight gradients of linear layers and matmuls: pack in forward,
// estimate dW in backward. See sampling.h for the estimators and DESIGN.md §1 for their
// variances. The exact paths (no policy, scoring passes) are the ops' own (ops/linalg.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "../arena.h"
#include "../gemm.h"
#include "../kernels.h"
#include "detail.h"

namespace spad {

using namespace sampling_detail;

// Walker/Vose alias table over a probability vector: O(1) draws, deterministic build,
// so backward rebuilds exactly the table forward used from the stored q.
struct Alias {
    std::vector<double> prob;
    std::vector<int32_t> alias;
    explicit Alias(const double *q, int64_t n) : prob(n), alias(n) {
        std::vector<int32_t> small, large;
        std::vector<double> sc(n);
        for (int64_t i = 0; i < n; ++i) {
            sc[i] = q[i] * (double)n;
            (sc[i] < 1.0 ? small : large).push_back((int32_t)i);
        }
        while (!small.empty() && !large.empty()) {
            int32_t s = small.back(), l = large.back();
            small.pop_back();
            prob[s] = sc[s];
            alias[s] = l;
            sc[l] = (sc[l] + sc[s]) - 1.0;
            if (sc[l] < 1.0) {
                large.pop_back();
                small.push_back(l);
            }
        }
        for (int32_t i : large) prob[i] = 1.0, alias[i] = i;
        for (int32_t i : small) prob[i] = 1.0, alias[i] = i;
    }
    // One 32-bit draw per sample: the integer part of u*n picks the column, its fraction
    // (uniform on [0,1) to within n/2^32) flips the column's biased coin.
    int32_t draw(const RandomStream &rs, uint64_t e) const {
        const uint64_t r = (uint64_t)rs.bits(e) * (uint64_t)prob.size();
        const int32_t j = (int32_t)(r >> 32);
        return (double)(uint32_t)r * (1.0 / 4294967296.0) < prob[j] ? j : alias[j];
    }
};

static Tensor q_of(const SiteState &s) {
    if (s.cfg.unbiased && s.q) return s.q;
    // The site keeps q across steps: never put it in a per-step arena.
    ArenaScope persistent(persistent_arena());
    Tensor q = empty({s.n}, DType::F64);
    q->storage->is_param = true;  // sampler state, held by the site between steps (see Policy::state_bytes)
    double *pq = q->data<double>();
    double tot = 0;
    for (double v : s.score) tot += v;
    for (int64_t i = 0; i < s.n; ++i)
        pq[i] = tot > 0 ? (1.0 - s.cfg.mix) * s.score[i] / tot + s.cfg.mix / (double)s.n : 1.0 / (double)s.n;
    return q;
}

static void set_scores(SiteState &s, const std::vector<double> &sq);

// ---- forward: pack ---------------------------------------------------------------
template <class T>
static Tensor gather_cols(const Tensor &x, const std::vector<int64_t> &idx) {
    const int64_t B = x->shape[0], n = x->shape[1], k = (int64_t)idx.size();
    Tensor v = empty({B, k}, x->dtype);
    const T *px = x->data<T>();
    T *pv = v->data<T>();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < k; ++s) pv[b * k + s] = px[b * n + idx[s]];
    return v;
}

// Rademacher sign of R[i, s] (n x k), regenerated from the payload's stream 2.
static inline double rademacher(const RandomStream &rs, int64_t i, int64_t s, int64_t k) {
    return (rs.bits((uint64_t)(i * k + s)) & 1u) ? 1.0 : -1.0;
}

template <class T> static Tensor rademacher_matrix(const RandomStream &rs, int64_t n, int64_t k, DType dt) {
    Tensor R = empty({n, k}, dt);
    T *p = R->data<T>();
    for (int64_t i = 0; i < n; ++i)
        for (int64_t s = 0; s < k; ++s) p[i * k + s] = (T)rademacher(rs, i, s, k);
    return R;
}

// SPAD magnitude paths: per row b, k draws of a feature j with probability |x_bj| / ||x_b||_1,
// each kept as the code ±(j+1) (the sign of x_bj); the entry's value is sign * ||x_b||_1 / k.
// Systematic draws: one uniform U per row, draw t at mass (t + U) * ||x_b||_1 / k. Each draw
// is still marginally ∝ |x_bj| (unbiased), feature j is drawn ceil(y_j) - ceil(y_{j-1})
// times with y_j = (prefix mass up to j) / step - U, so one branch-light sweep emits the
// codes in feature order, and the variance is at most the i.i.d. one.
template <class T, class C>
static void magnitude_paths(const T *px, int64_t B, int64_t n, int64_t k, const RandomStream &rs, C *codes,
                            T *scale_b) {
    // Per row, every sweep vectorizable or free of loop-carried chains (this runs over every
    // input value of the layer, so it must cost a small fraction of the layer's GEMM): the
    // prefix masses (in-register scans of 8, one carry add per 8), the cumulative draw counts
    // ceil(y_j), and the codes, each stored at its first slot upto[j-1] (a feature with no
    // draw shares its slot with the next drawn feature, which is stored after it). Each
    // store writes the code twice, so a feature drawn twice needs nothing more; the few drawn
    // three times or more are filled in after.
    // Zero inputs (ReLU outputs: about half of them) carry no mass and are never drawn, so
    // the sweep runs over the nonzero values only (nzv, at features nzi).
    // The sweeps are kern:: kernels, compiled for each instruction set (kernels.cpp).
    std::vector<T> nzv(n + 16);
    std::vector<int32_t> nzi(n + 16);
    std::vector<double> mass(n);
    std::vector<int32_t> upto(n + 1);  // upto[i + 1] = ceil(y_i); upto[0] = 0
    std::vector<C> row(n + k + 3), pair(2 * n);
    for (int64_t b = 0; b < B; ++b) {
        const T *xb = px + b * n;
        C *out = codes + b * k;
        const int64_t nn = kern::compress_nonzero(xb, n, nzv.data(), nzi.data());
        const T *xv = nzv.data();
        const double l1 = kern::prefix_abs(xv, nn, mass.data());
        scale_b[b] = (T)(l1 / (double)k);
        if (!(l1 > 0)) {  // an all-zero row: every entry is worth 0
            std::fill(out, out + k, C(0));
            continue;
        }
        // Systematic draws: draw t sits at mass (t + u) * l1 / k; ceil(y_i) draws land at or
        // before value i, y_i = mass_i * k / l1 - u.
        const double inv_step = (double)k / l1, u = rs.uniform((uint64_t)b);
        const int32_t most = kern::draw_counts(mass.data(), xv, nzi.data(), nn, inv_step, u, k, upto.data(), pair.data());
        for (int64_t i = 0; i < nn; ++i) std::memcpy(&row[upto[i]], &pair[2 * i], 2 * sizeof(C));
        if (most > 2)
            for (int64_t i = 0; i < nn; ++i)
                if (upto[i + 1] - upto[i] > 2) std::fill(&row[upto[i]], &row[upto[i + 1]], pair[2 * i]);
        // Rounding may leave the count one off k: pad with the last nonzero feature or cut.
        for (int64_t pos = upto[nn]; pos < k; ++pos) row[pos] = pair[2 * (nn - 1)];
        std::copy(row.begin(), row.begin() + k, out);
    }
}

// SPAD score of feature j: sqrt(sum_b x_bj^2 ||dy_b||^2), the variance-optimal static
// q for per-example feature sampling (DESIGN.md §1). `sq` holds the sums under the root.
static void set_scores(SiteState &s, const std::vector<double> &sq) {
    const bool first = s.score.empty();
    s.score.resize(s.n, 0.0);
    for (int64_t j = 0; j < s.n; ++j) {
        const double v = std::sqrt(sq[j]);
        s.score[j] = first ? v : s.cfg.ema * s.score[j] + (1.0 - s.cfg.ema) * v;
    }
    s.q.reset();
    s.q = q_of(s);
}

// Exact scoring pass: the sums from the exact input and output gradient.
static void rescore(SiteState &s, const Tensor &x_, const Tensor &g_) {
    Tensor x = contiguous(x_), g = contiguous(g_);
    const int64_t B = x->shape[0], n = x->shape[1], m = g->shape[1];
    std::vector<double> fresh(n, 0.0);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>(), *pg = g->data<T>();
        for (int64_t b = 0; b < B; ++b) {
            double gn = 0;
            for (int64_t j = 0; j < m; ++j) gn += (double)pg[b * m + j] * (double)pg[b * m + j];
            for (int64_t j = 0; j < n; ++j) fresh[j] += (double)px[b * n + j] * (double)px[b * n + j] * gn;
        }
    });
    set_scores(s, fresh);
}

// Sampled scoring: an unbiased estimate of the same sums from the kept entries. Entry
// (b, j) holds v = x_bj / (k q_j) and was drawn with probability q_j per draw, so
// v^2 * k q_j * ||dy_b||^2 summed over entries estimates sum_b x_bj^2 ||dy_b||^2.
template <class T>
static void accumulate_scores(SiteState &s, const T *vals, const T *g, int64_t B, int64_t k, int64_t m,
                              const double *q, const std::vector<int32_t> &feat) {
    if ((int64_t)s.acc.size() != s.n) s.acc.assign(s.n, 0.0);
    for (int64_t b = 0; b < B; ++b) {
        double gn = 0;
        for (int64_t j = 0; j < m; ++j) gn += (double)g[b * m + j] * (double)g[b * m + j];
        for (int64_t t = 0; t < k; ++t) {
            const int64_t e = b * k + t, i = feat[e];
            s.acc[i] += (double)vals[e] * (double)vals[e] * (double)k * q[i] * gn;
        }
    }
    s.acc_steps++;
}

// ---- the payload families (Note [Sampled payloads] in saved.h) --------------------------
// Per-example features, entry e = b*k + s: dW[i_e, :] += scale * v_e * dy_b (features.cpp's
// kernel). The feature of each entry: regenerated uniformly (RAD "different"), drawn from
// the site's q and regenerated from the stored q (SPAD), or stored as a signed code (magnitude).
// With `dst` (Note [Implicit leaf gradients] in tape.h), dst += alpha * dW instead, and no dW.
template <class Draw>
static Tensor feature_grad(const Tensor &g, const Tensor &values, const Shape &wshape, int64_t k, double scale,
                           std::vector<int32_t> &feat, Draw draw, const Tensor &dst = Tensor(), double alpha = 0) {
    const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0];
    feat.resize(B * k);
    for (int64_t e = 0; e < B * k; ++e) feat[e] = (int32_t)draw(e);
    if (dst) {
        SPAD_FLOAT(g->dtype, T, {
            add_features(dst->data<T>(), nf, m, g->data<T>(), values->data<T>(), B, k, scale, feat, alpha);
        });
        return dst;
    }
    Tensor dW = empty(wshape, g->dtype);  // every row is written
    SPAD_FLOAT(g->dtype, T, { scatter_features(dW->data<T>(), nf, m, g->data<T>(), values->data<T>(), B, k, scale, feat); });
    return dW;
}

// RAD "different": x[b, i] with i uniform, scale n/k.
struct UniformFeatures final : WeightPayload {
    Tensor values;  // (B, k)
    int64_t k = 0;
    std::vector<Tensor> kept() const override { return {values}; }
    Tensor weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const override {
        return grad(g, wshape, Tensor(), 0);
    }
    unsigned implicit_forms() const override { return GRAD_ADD; }
    void add_weight_grad(SiteState &, const Tensor &g, const Shape &wshape, const Tensor &dst, double alpha) const override {
        grad(g, wshape, dst, alpha);
    }
    Tensor grad(const Tensor &g, const Shape &wshape, const Tensor &dst, double alpha) const {
        const int64_t nf = wshape[0];
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        std::vector<int32_t> feat;
        return feature_grad(g, values, wshape, k, (double)nf / (double)k, feat,
                            [&](int64_t e) { return (int64_t)draws.below((uint64_t)e, (uint32_t)nf); }, dst, alpha);
    }
};

// SPAD: x[b, i] / (k q_i) with i ~ q (alias draws); its backward also feeds the site's
// sampled scores.
struct ScoredFeatures final : WeightPayload {
    Tensor values;  // (B, k), weighted
    Tensor q;       // the site's distribution: counted once per storage, shared until rescoring
    int64_t k = 0;
    std::vector<Tensor> kept() const override { return {values, q}; }
    Tensor weight_grad(SiteState &site, const Tensor &g, const Shape &wshape) const override {
        return grad(site, g, wshape, Tensor(), 0);
    }
    unsigned implicit_forms() const override { return GRAD_ADD; }
    void add_weight_grad(SiteState &site, const Tensor &g, const Shape &wshape, const Tensor &dst,
                         double alpha) const override {
        grad(site, g, wshape, dst, alpha);
    }
    Tensor grad(SiteState &site, const Tensor &g, const Shape &wshape, const Tensor &dst, double alpha) const {
        const Alias al(q->data<double>(), wshape[0]);
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        std::vector<int32_t> feat;
        Tensor dW = feature_grad(g, values, wshape, k, 1.0, feat, [&](int64_t e) { return al.draw(draws, (uint64_t)e); },
                                 dst, alpha);
        if (site.cfg.sampled_scores) {
            std::lock_guard<std::mutex> lk(site.mu);
            SPAD_FLOAT(g->dtype, T, {
                accumulate_scores(site, values->data<T>(), g->data<T>(), g->shape[0], k, wshape[1], q->data<double>(), feat);
            });
        }
        return dW;
    }
};

// SPAD magnitude paths (narrow layers): entry e is the code ±(i+1) of feature i (2 bytes,
// 4 when n > 32767), worth ±||x_b||_1 / k (row_scale[b]).
struct MagnitudeFeatures final : WeightPayload {
    Tensor codes;      // U8: B*k int16 or int32 codes
    Tensor row_scale;  // (B), the input's dtype
    int64_t k = 0;
    std::vector<Tensor> kept() const override { return {codes, row_scale}; }
    Tensor weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const override {
        const int64_t B = g->shape[0];
        Tensor dW = empty(wshape, g->dtype);  // every row is written
        SPAD_FLOAT(g->dtype, T, {
            if (wshape[1] * (int64_t)sizeof(T) <= 64) {  // dW rows of at most a cache line (logits)
                // Each code's row update is one short vector, so adding the codes into dW in
                // their own order is cheaper than sorting them into feature order first (no
                // decode pass; dW stays in L1).
                const T *sb = row_scale->data<T>();
                if (codes->numel() == 4 * B * k)
                    kern::add_code_rows(dW->data<T>(), wshape[0], wshape[1], g->data<T>(), codes->data<int32_t>(), sb, B, k);
                else
                    kern::add_code_rows(dW->data<T>(), wshape[0], wshape[1], g->data<T>(), codes->data<int16_t>(), sb, B, k);
                return dW;
            }
            FeatureEntries<T> fe;
            if (codes->numel() == 4 * B * k)
                fe = entries<T, int32_t>(codes->data<int32_t>(), B, wshape[0]);
            else
                fe = entries<T, int16_t>(codes->data<int16_t>(), B, wshape[0]);
            fold_features(dW->data<T>(), wshape[0], wshape[1], g->data<T>(), B, fe);
        });
        return dW;
    }
    unsigned implicit_forms() const override { return GRAD_ADD; }
    // dst += alpha * dW without dW: the codes decoded to (feature, value) entries and added
    // straight into the weight (Note [Implicit leaf gradients] in tape.h).
    void add_weight_grad(SiteState &, const Tensor &g, const Shape &wshape, const Tensor &dst, double alpha) const override {
        const int64_t B = g->shape[0];
        const bool wide = codes->numel() == 4 * B * k;
        const uint8_t *pc = codes->data<uint8_t>();
        std::vector<int32_t> feat(B * k);
        SPAD_FLOAT(g->dtype, T, {
            const T *scale_b = row_scale->data<T>();
            std::vector<T> v(B * k);
            for (int64_t e = 0; e < B * k; ++e) {
                int64_t code;
                if (wide) {
                    int32_t c32;
                    std::memcpy(&c32, pc + 4 * e, 4);
                    code = c32;
                } else {
                    int16_t c16;
                    std::memcpy(&c16, pc + 2 * e, 2);
                    code = c16;
                }
                feat[e] = (int32_t)(code < 0 ? -code - 1 : code > 0 ? code - 1 : 0);
                v[e] = code < 0 ? -scale_b[e / k] : code > 0 ? scale_b[e / k] : T(0);
            }
            add_features(dst->data<T>(), wshape[0], wshape[1], g->data<T>(), v.data(), B, k, 1.0, feat, alpha);
        });
    }
    // The codes straight into feature order (a counting sort in two sweeps). A row's codes
    // come in feature order (magnitude_paths), so repeated draws of one feature are adjacent:
    // merged into one entry worth their sum. Code 0 (only in an all-zero row, whose codes are
    // all 0) is worth nothing: it lands in a dummy slot. Branch-free: whether a code starts a
    // new entry is data, not control flow (it is a coin flip per code).
    template <class T, class C> FeatureEntries<T> entries(const C *pc, int64_t B, int64_t n) const {
        const T *scale_b = row_scale->data<T>();
        FeatureEntries<T> fe;
        fe.start.assign(n + 1, 0);  // start[f + 1] counts feature f's entries (start[0] stays 0)
        for (int64_t b = 0; b < B; ++b) {
            C prev = 0;
            for (int64_t t = 0; t < k; ++t) {
                const C c = pc[b * k + t];
                fe.start[c < 0 ? -c : c] += (int32_t)(c != prev);
                prev = c;
            }
        }
        for (int64_t i = 0; i < n; ++i) fe.start[i + 1] += fe.start[i];
        const int32_t total = fe.start[n];
        fe.ex.resize(total + 1);  // + the dummy slot
        fe.v.resize(total + 1);
        std::vector<int32_t> pos(n + 1);  // pos[|code|]: the next slot of feature |code| - 1
        pos[0] = total;
        std::copy(fe.start.begin(), fe.start.end() - 1, pos.begin() + 1);
        for (int64_t b = 0; b < B; ++b) {
            const T s = scale_b[b];
            C prev = 0;
            int32_t slot = total;
            T acc = 0;
            for (int64_t t = 0; t < k; ++t) {
                const C c = pc[b * k + t];
                const int64_t a = c < 0 ? -c : c;
                const bool fresh = c != prev;
                const int32_t cand = pos[a];
                pos[a] = cand + (int32_t)fresh;
                slot = fresh ? cand : slot;
                const T val = c < 0 ? -s : s;
                acc = fresh ? val : acc + val;
                fe.v[slot] = acc;
                fe.ex[slot] = (int32_t)b;
                prev = c;
            }
        }
        fe.ex.resize(total);
        fe.v.resize(total);
        return fe;
    }
};

// Columns shared by the batch, x[:, idx] (B x k): dW[idx_s, :] += scale * (x[:, idx]^T dy)[s, :],
// a real GEMM over k features. idx: uniform with replacement, regenerated (RAD "same", scale
// n/k), or the top-scored features, stored (SPAD top-k, scale 1: biased).
struct SharedColumnsPayload final : WeightPayload {
    Tensor values;  // (B, k)
    Tensor top;     // I64 (k) or null
    int64_t k = 0;
    double scale = 1.0;
    std::vector<Tensor> kept() const override { return {values, top}; }
    unsigned implicit_forms() const override { return GRAD_ROWS; }  // (a consumer adds rows itself)
    // The row-sparse form: G = x[:, idx]^T dy (k x m), then the rows of a repeated feature
    // (RAD "same" draws with replacement) folded into its first one, in s order, so each row
    // holds exactly the value weight_grad() would write there: 0 + scale*G[s1] + scale*G[s2] ...
    // The distinct rows are compacted to the front of G's storage: no second (u x m) buffer.
    void weight_rows(SiteState &, const Tensor &g, const Shape &wshape, Tensor &idx, Tensor &vals) const override {
        const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0];
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        const int64_t *pt = top ? top->data<int64_t>() : nullptr;
        Tensor G = empty({k, m}, g->dtype);
        std::vector<int64_t> first(nf, -1), rows;  // first[i]: the compact row of feature i
        SPAD_FLOAT(g->dtype, T, {
            gemm(true, false, k, m, B, T(1), values->data<T>(), k, g->data<T>(), m, T(0), G->data<T>(), m);
            T *pG = G->data<T>();
            for (int64_t s = 0; s < k; ++s) {
                const int64_t i = pt ? pt[s] : (int64_t)draws.below((uint64_t)s, (uint32_t)nf);
                const T *src = pG + s * m;
                if (first[i] < 0) {  // rows.size() <= s: moving row s down never overwrites an unread row
                    first[i] = (int64_t)rows.size();
                    rows.push_back(i);
                    T *dstp = pG + first[i] * m;
                    for (int64_t j = 0; j < m; ++j) dstp[j] = (T)scale * src[j];
                } else {
                    T *dstp = pG + first[i] * m;
                    for (int64_t j = 0; j < m; ++j) dstp[j] += (T)scale * src[j];
                }
            }
        });
        idx = index_tensor(rows);
        vals = view(G, {(int64_t)rows.size(), m}, contiguous_strides({(int64_t)rows.size(), m}), 0);
    }
    Tensor weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const override {
        const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0];
        Tensor dW = zeros(wshape, g->dtype);
        const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
        SPAD_FLOAT(g->dtype, T, {
            Tensor G = empty({k, m}, g->dtype);
            gemm(true, false, k, m, B, T(1), values->data<T>(), k, g->data<T>(), m, T(0), G->data<T>(), m);
            const T *pG = G->data<T>();
            T *pw = dW->data<T>();
            const int64_t *pt = top ? top->data<int64_t>() : nullptr;
            for (int64_t s = 0; s < k; ++s) {
                const int64_t i = pt ? pt[s] : (int64_t)draws.below((uint64_t)s, (uint32_t)nf);
                for (int64_t j = 0; j < m; ++j) pw[i * m + j] += (T)scale * pG[s * m + j];
            }
        });
        return dW;
    }
};

// Rademacher projection: x R (B x k), dW = R (x R)^T dy / k with R regenerated.
struct ProjectionPayload final : WeightPayload {
    Tensor values;  // (B, k)
    int64_t k = 0;
    std::vector<Tensor> kept() const override { return {values}; }
    Tensor weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const override {
        const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0];
        Tensor dW = empty(wshape, g->dtype);
        SPAD_FLOAT(g->dtype, T, {
            Tensor G = empty({k, m}, g->dtype);
            gemm(true, false, k, m, B, T(1), values->data<T>(), k, g->data<T>(), m, T(0), G->data<T>(), m);
            Tensor R = rademacher_matrix<T>(RandomStream(rs.seed, rs.counter, rs.stream), nf, k, g->dtype);
            gemm(false, false, nf, m, k, (T)(1.0 / (double)k), R->data<T>(), k, G->data<T>(), m, T(0), dW->data<T>(), m);
        });
        return dW;
    }
};

// Batch rows (CRS, Bernoulli): the kept rows of x, each times its weight, and their
// positions: dW = x_kept^T dy[rows]. CRS remembers ||dy_b|| for the next step's scores.
struct RowPayload final : WeightPayload {
    Tensor values;  // (s, n), weighted
    Tensor rows;    // I64 (s)
    bool crs = false;
    std::vector<Tensor> kept() const override { return {values, rows}; }
    Tensor weight_grad(SiteState &site, const Tensor &g, const Shape &wshape) const override {
        const int64_t nf = wshape[0], m = wshape[1], s = rows->numel();
        Tensor dW = empty(wshape, g->dtype);
        Tensor gs = gather_rows(g, m, rows, {s, m});
        SPAD_FLOAT(g->dtype, T, {
            gemm(true, false, nf, m, s, T(1), values->data<T>(), nf, gs->data<T>(), m, T(0), dW->data<T>(), m);
        });
        if (crs) remember_dy_norms(site, g, g->shape[0], m);  // (locks the site)
        return dW;
    }
};

// ---- forward: pack ----------------------------------------------------------------------
template <class T>
static std::unique_ptr<WeightPayload> pack_features(Policy &pol, SiteState &site, const Tensor &x, Estimator est) {
    const int64_t B = x->shape[0], n = x->shape[1], k = keep_count(pol.cfg.keep, n);
    const T *px = x->data<T>();
    const RandomStream rs = reserve(pol, (uint64_t)(B * k));
    Tensor values = empty({B, k}, x->dtype);
    T *pv = values->data<T>();
    if (est == Estimator::RAD_DIFF) {
        for (int64_t b = 0, e = 0; b < B; ++b)
            for (int64_t s = 0; s < k; ++s, ++e) pv[e] = px[b * n + rs.below((uint64_t)e, (uint32_t)n)];
        auto p = std::make_unique<UniformFeatures>();
        p->values = values, p->rs = rs, p->k = k;
        return p;
    }
    Tensor q = q_of(site);
    const double *pq = q->data<double>();
    const Alias al(pq, n);
    std::vector<T> w(n);  // importance weights 1/(k q_i)
    for (int64_t i = 0; i < n; ++i) w[i] = (T)(1.0 / ((double)k * pq[i]));
    for (int64_t b = 0, e = 0; b < B; ++b)
        for (int64_t s = 0; s < k; ++s, ++e) {
            const int64_t i = al.draw(rs, (uint64_t)e);
            pv[e] = px[b * n + i] * w[i];
        }
    auto p = std::make_unique<ScoredFeatures>();
    p->values = values, p->q = q, p->rs = rs, p->k = k;
    return p;
}

template <class T>
static std::unique_ptr<WeightPayload> pack_magnitude(Policy &pol, const Tensor &x) {
    const int64_t B = x->shape[0], n = x->shape[1];
    // Equal tape bytes: keep*n values of this dtype per row buy this many 2-byte (4-byte
    // when n > 32767) signed indices, less one scale per row.
    const int64_t isz = (int64_t)dtype_size(x->dtype), eb = n > 32767 ? 4 : 2;
    const int64_t k = std::max<int64_t>(1, ((int64_t)std::llround(pol.cfg.keep * (double)n) * isz - isz) / eb);
    auto p = std::make_unique<MagnitudeFeatures>();
    p->rs = reserve(pol, (uint64_t)B);
    p->k = k;
    p->codes = empty({B * k * eb}, DType::U8);
    p->row_scale = empty({B}, x->dtype);
    T *scale_b = p->row_scale->data<T>();
    if (eb == 2)
        magnitude_paths<T, int16_t>(x->data<T>(), B, n, k, p->rs, p->codes->data<int16_t>(), scale_b);
    else
        magnitude_paths<T, int32_t>(x->data<T>(), B, n, k, p->rs, p->codes->data<int32_t>(), scale_b);
    return p;
}

template <class T>
static std::unique_ptr<WeightPayload> pack_shared_columns(Policy &pol, SiteState &site, const Tensor &x, Estimator est) {
    const int64_t n = x->shape[1], k = keep_count(pol.cfg.keep, n);
    auto p = std::make_unique<SharedColumnsPayload>();
    p->k = k;
    std::vector<int64_t> idx(k);
    if (est == Estimator::RAD_SAME) {
        p->rs = reserve(pol, (uint64_t)k);
        for (int64_t s = 0; s < k; ++s) idx[s] = p->rs.below((uint64_t)s, (uint32_t)n);
        p->scale = (double)n / (double)k;
    } else {  // SPAD_TOPK (its first pass through a site is an exact scoring pass)
        SPAD_CHECK((int64_t)site.score.size() == n, RuntimeError, "SPAD(unbiased=False): the site of ", n,
                   " features has ", site.score.size(), " scores; it follows scores from exact passes");
        std::vector<int64_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return site.score[a] > site.score[b]; });
        order.resize(k);
        idx = order;
        p->top = index_tensor(order);
    }
    p->values = gather_cols<T>(x, idx);
    return p;
}

template <class T> static std::unique_ptr<WeightPayload> pack_projection(Policy &pol, const Tensor &x) {
    const int64_t B = x->shape[0], n = x->shape[1], k = keep_count(pol.cfg.keep, n);
    auto p = std::make_unique<ProjectionPayload>();
    p->rs = reserve(pol, (uint64_t)(n * k));
    p->k = k;
    Tensor R = rademacher_matrix<T>(p->rs, n, k, x->dtype);
    p->values = empty({B, k}, x->dtype);
    gemm(false, false, B, k, n, T(1), x->data<T>(), n, R->data<T>(), k, T(0), p->values->data<T>(), k);
    return p;
}

static std::unique_ptr<WeightPayload> pack_rows(Policy &pol, SiteState &site, const Tensor &x) {
    const int64_t B = x->shape[0], n = x->shape[1];
    std::vector<int64_t> rows;
    std::vector<double> w;
    auto p = std::make_unique<RowPayload>();
    p->rs = select_rows(pol, site, x, B, n, rows, w);
    p->values = weighted_rows(x, n, rows, w, {(int64_t)rows.size(), n});
    p->rows = index_tensor(rows);
    p->crs = pol.cfg.estimator == Estimator::CRS;
    return p;
}

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &W) {
    PackScope scope(active_policy().get(), W.get());
    if (scope.exact()) return scope.pack_exact(slot, x2d);
    Policy *pol = scope.pol;
    const PolicyConfig &c = pol->cfg;
    Tensor x = contiguous(x2d);
    const int64_t n = x->shape[1];
    std::shared_ptr<SiteState> site = site_for(*pol, W, n);
    std::lock_guard<std::mutex> site_lock(site->mu);
    if (c.kind == PolicyKind::SPAD && c.sampled_scores && (pol->step - 1) % c.refresh == 0 && site->acc_steps > 0) {
        // Score now, follow later: the estimates gathered since the last refresh become q.
        for (double &a : site->acc) a /= (double)site->acc_steps;
        set_scores(*site, site->acc);
        site->acc.assign(n, 0.0);
        site->acc_steps = 0;
    }
    if (c.kind == PolicyKind::SPAD && !c.sampled_scores && (site->score.empty() || pol->scoring_step(pol->step))) {
        slot.pack_exact(x2d);  // a scoring pass: exact input, scores refreshed in backward
        slot.ctx = payload_ctx(site, scope.step, /*scoring=*/true);
        return;
    }
    // The policy's estimator picks the family; a layer too narrow for blocks draws single features.
    Estimator est = c.estimator;
    const int64_t k = keep_count(c.keep, n);
    std::unique_ptr<WeightPayload> p;
    if (est == Estimator::SPAD_MAG && rad_block_size(kMagnitudeBlock, k) >= kMagnitudeBlock)
        p = pack_magnitude_blocks(*pol, x, kMagnitudeBlock);
    else if (est == Estimator::RAD_BLOCK && rad_block_size(c.block, k) > 1)
        p = pack_rad_blocks(*pol, x, rad_block_size(c.block, k));
    else if (est == Estimator::CRS || est == Estimator::BERNOULLI)
        p = pack_rows(*pol, *site, x);
    else {
        if (est == Estimator::RAD_BLOCK) est = Estimator::RAD_DIFF;
        SPAD_FLOAT(x->dtype, T, {
            switch (est) {
                case Estimator::RAD_DIFF:
                case Estimator::SPAD: p = pack_features<T>(*pol, *site, x, est); break;
                case Estimator::SPAD_MAG: p = pack_magnitude<T>(*pol, x); break;
                case Estimator::RAD_SAME:
                case Estimator::SPAD_TOPK: p = pack_shared_columns<T>(*pol, *site, x, est); break;
                case Estimator::PROJECT: p = pack_projection<T>(*pol, x); break;
                default: throw RuntimeError("sampling: unknown estimator");
            }
        });
    }
    slot.pack_sampled(std::move(p), x2d);
    slot.ctx = payload_ctx(site, scope.step);
}

void note_exact_read(const SavedTensor &slot, const Tensor &x, const Tensor &g2d) {
    mark_read(slot);
    if (slot.ctx && ctx_of(slot)->scoring) {
        SiteState &site = *site_of(slot);
        std::lock_guard<std::mutex> lk(site.mu);
        rescore(site, x, g2d);
    }
}

Tensor sampled_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape) {
    const char *op = op_name(n.op);
    check_first_order(slot, op);
    mark_read(slot);
    return payload_as<WeightPayload>(slot, op).weight_grad(*site_of(slot), contiguous(g2d), wshape);
}

Tensor output_grad_for_dx(const SavedTensor &slot, const Tensor &g2d) {
    const bool everywhere = site_of(slot) && site_of(slot)->cfg.everywhere;
    if (!everywhere) return g2d;
    // Research option: sample dy's columns per example (uniform, with replacement), so the
    // noise compounds through every layer below (RAD §3.3's exploding variance).
    check_first_order(slot, "linear");
    const SiteState &site = *site_of(slot);
    Tensor g = contiguous(g2d);
    const int64_t B = g->shape[0], m = g->shape[1], km = keep_count(site.cfg.keep, m);
    const RandomStream &ps = payload_as<WeightPayload>(slot, "linear").rs;  // the pack's draws, stream 1
    const RandomStream rs(ps.seed, ps.counter, 1);
    Tensor gh = zeros(g->shape, g->dtype);
    SPAD_FLOAT(g->dtype, T, {
        const T *pg = g->data<T>();
        T *ph = gh->data<T>();
        const T sc = (T)((double)m / (double)km);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t s = 0; s < km; ++s) {
                const int64_t j = rs.below((uint64_t)(b * km + s), (uint32_t)m);
                ph[b * m + j] += sc * pg[b * m + j];
            }
    });
    return gh;
}

}  // namespace spad
