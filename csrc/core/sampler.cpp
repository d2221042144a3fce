// Sampled payloads for weight gradients: pack in forward, estimate dW in backward.
// See sampler.h for the estimators and DESIGN.md §1 for their variances.
#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "arena.h"
#include "gemm.h"
#include "ops.h"
#include "rng.h"

namespace spad {

Policy::Policy(PolicyConfig c) : cfg(c) {}
int64_t Policy::state_bytes() const {
    int64_t b = 0;
    for (const auto &kv : sites) {
        const SiteState &s = *kv.second;
        b += (int64_t)(s.score.size() + s.dy_norm.size() + s.acc.size()) * 8 +
             (s.q ? (int64_t)s.q->storage->nbytes : 0);
    }
    return b;
}
bool Policy::scoring_step() const {
    return cfg.kind == PolicyKind::SPAD && !cfg.sampled_scores && (step - 1) % cfg.refresh == 0;
}

static thread_local std::shared_ptr<Policy> g_active;
void set_active_policy(const std::shared_ptr<Policy> &p) { g_active = p; }
const std::shared_ptr<Policy> &active_policy() { return g_active; }
void begin_step(Policy &p) { p.step++; }

static int64_t keep_count(double keep, int64_t n) {
    return std::min<int64_t>(n, std::max<int64_t>(1, (int64_t)std::llround(keep * (double)n)));
}

// A fresh (seed, counter) range for `draws` random numbers under policy p.
static RandomStream reserve(Policy &p, uint64_t draws) {
    RandomStream rs{p.cfg.seed, p.counter, 0};
    p.counter += draws / 4 + 2;
    return rs;
}
static RandomStream stream_of(const SavedTensor &s, uint32_t stream = 0) { return {s.seed, s.counter, stream}; }

static std::shared_ptr<SiteState> site_for(Policy &p, const Tensor &W, int64_t n) {
    std::shared_ptr<SiteState> &s = p.sites[W->storage.get()];
    if (!s || s->n != n) {
        s = std::make_shared<SiteState>();
        s->cfg = p.cfg;
        s->n = n;
    }
    return s;
}

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

// Feature index of entry e = b*k + s for the per-example estimators.
struct FeatureDraw {
    Estimator est;
    RandomStream rs;
    int64_t n;
    const Alias *alias;
    int64_t operator()(int64_t e) const {
        return est == Estimator::SPAD ? alias->draw(rs, (uint64_t)e) : (int64_t)rs.below((uint64_t)e, (uint32_t)n);
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
static Tensor gather_cols(const Tensor &x, const std::vector<int64_t> &idx, const double *scale_per) {
    const int64_t B = x->shape[0], n = x->shape[1], k = (int64_t)idx.size();
    Tensor v = empty({B, k}, x->dtype);
    const T *px = x->data<T>();
    T *pv = v->data<T>();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < k; ++s) pv[b * k + s] = px[b * n + idx[s]] * (T)(scale_per ? scale_per[s] : 1.0);
    return v;
}

template <class T>
static Tensor gather_rows(const Tensor &x, const std::vector<int64_t> &rows, const std::vector<double> &w) {
    const int64_t n = x->shape[1], s = (int64_t)rows.size();
    Tensor v = empty({s, n}, x->dtype);
    const T *px = x->data<T>();
    T *pv = v->data<T>();
    for (int64_t r = 0; r < s; ++r)
        for (int64_t j = 0; j < n; ++j) pv[r * n + j] = px[rows[r] * n + j] * (T)w[r];
    return v;
}

static Tensor index_tensor(const std::vector<int64_t> &idx) {
    Tensor t = empty({(int64_t)idx.size()}, DType::I64);
    std::copy(idx.begin(), idx.end(), t->data<int64_t>());
    return t;
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

// CRS: top-C rows by score kept with weight 1, the other s-C drawn ∝ score among the rest.
static void crs_rows(const std::vector<double> &score, int64_t s, int64_t C, const RandomStream &rs,
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

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &W) {
    Policy *pol = g_active.get();
    if (!pol || pol->cfg.kind == PolicyKind::EXACT || pol->cfg.keep >= 1.0) {
        slot.pack_exact(x2d);
        return;
    }
    const PolicyConfig &c = pol->cfg;
    Tensor x = contiguous(x2d);
    const int64_t B = x->shape[0], n = x->shape[1];
    std::shared_ptr<SiteState> site = site_for(*pol, W, n);
    Estimator est = c.estimator;
    if (c.kind == PolicyKind::SPAD && c.sampled_scores && (pol->step - 1) % c.refresh == 0 && site->acc_steps > 0) {
        // Score now, follow later: the estimates gathered since the last refresh become q.
        for (double &a : site->acc) a /= (double)site->acc_steps;
        set_scores(*site, site->acc);
        site->acc.assign(n, 0.0);
        site->acc_steps = 0;
    }
    if (c.kind == PolicyKind::SPAD && !c.sampled_scores && (site->score.empty() || pol->scoring_step())) {
        slot.pack_exact(x2d);  // a scoring pass: exact input, scores refreshed in backward
        slot.mode = (uint8_t)Estimator::SCORING;
        slot.ctx = site;
        return;
    }
    Tensor values, aux;
    int64_t k = keep_count(c.keep, n);
    double scale = 1.0;
    RandomStream rs{};
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        switch (est) {
            case Estimator::RAD_DIFF:
            case Estimator::SPAD: {
                rs = reserve(*pol, (uint64_t)(B * k));
                Tensor q;
                std::unique_ptr<Alias> al;
                if (est == Estimator::SPAD) {
                    q = q_of(*site);
                    al.reset(new Alias(q->data<double>(), n));
                    aux = q;  // counted once per storage: shared by every payload until rescoring
                }
                std::vector<T> w(n, T(1));  // importance weights 1/(k q_i); uniform: folded into scale
                if (q)
                    for (int64_t i = 0; i < n; ++i) w[i] = (T)(1.0 / ((double)k * q->data<double>()[i]));
                FeatureDraw draw{est, rs, n, al.get()};
                values = empty({B, k}, x->dtype);
                T *pv = values->data<T>();
                for (int64_t b = 0, e = 0; b < B; ++b)
                    for (int64_t s = 0; s < k; ++s, ++e) {
                        const int64_t i = draw(e);
                        pv[e] = px[b * n + i] * w[i];
                    }
                scale = q ? 1.0 : (double)n / (double)k;
                break;
            }
            case Estimator::RAD_SAME: {
                rs = reserve(*pol, (uint64_t)k);
                std::vector<int64_t> idx(k);
                for (int64_t s = 0; s < k; ++s) idx[s] = rs.below((uint64_t)s, (uint32_t)n);
                values = gather_cols<T>(x, idx, nullptr);
                scale = (double)n / (double)k;
                break;
            }
            case Estimator::PROJECT: {
                rs = reserve(*pol, (uint64_t)(n * k));
                Tensor R = rademacher_matrix<T>(rs, n, k, x->dtype);
                values = empty({B, k}, x->dtype);
                gemm(false, false, B, k, n, T(1), px, n, R->data<T>(), k, T(0), values->data<T>(), k);
                scale = 1.0 / (double)k;
                break;
            }
            case Estimator::SPAD_TOPK: {
                std::vector<int64_t> order(n);
                std::iota(order.begin(), order.end(), 0);
                std::stable_sort(order.begin(), order.end(),
                                 [&](int64_t a, int64_t b) { return site->score[a] > site->score[b]; });
                order.resize(k);
                values = gather_cols<T>(x, order, nullptr);
                aux = index_tensor(order);
                break;
            }
            case Estimator::CRS:
            case Estimator::BERNOULLI: {
                std::vector<int64_t> rows;
                std::vector<double> w;
                if (est == Estimator::BERNOULLI) {
                    rs = reserve(*pol, (uint64_t)B);
                    for (int64_t b = 0; b < B; ++b)
                        if (rs.uniform((uint64_t)b) < c.keep) rows.push_back(b), w.push_back(1.0 / c.keep);
                } else {
                    const int64_t s = keep_count(c.keep, B);
                    rs = reserve(*pol, (uint64_t)s);
                    std::vector<double> score(B);
                    const bool stale = (int64_t)site->dy_norm.size() == B;
                    for (int64_t b = 0; b < B; ++b) {
                        double nx = 0;
                        for (int64_t j = 0; j < n; ++j) nx += (double)px[b * n + j] * (double)px[b * n + j];
                        score[b] = std::sqrt(nx) * (stale ? site->dy_norm[b] : 1.0);
                    }
                    crs_rows(score, s, (int64_t)std::floor(c.deterministic * (double)s), rs, rows, w);
                }
                values = gather_rows<T>(x, rows, w);
                aux = index_tensor(rows);
                k = (int64_t)rows.size();
                break;
            }
            default:
                throw RuntimeError("sampling: unknown estimator");
        }
    });
    slot.pack_sampled(values, aux, x2d);
    slot.seed = rs.seed;
    slot.counter = rs.counter;
    slot.k = k;
    slot.scale = scale;
    slot.mode = (uint8_t)est;
    slot.ctx = site;
}

// ---- backward: estimate dW ------------------------------------------------------------
// dW[i,:] += v_e * g[b_e,:] for entries e with feature i: entries are bucketed by feature
// (stable counting sort, so the summation order is fixed), then each dW row is built in
// register-sized column chunks: every entry of the bucket is folded into the chunk before
// it is stored, so the loop costs one load of g per multiply-add. Work: B*k*m
// multiply-adds, p times the exact GEMM's.
// row[0:C] += sum_o v[o] * g[goff[o] : goff[o] + C], with the C accumulators in registers.
// Written with GCC/Clang vector types because auto-vectorizers tend to vectorize across
// the entries (gathers) instead of across the columns; other compilers get plain loops.
#if defined(__GNUC__)
template <class T, int C>
static void fold_chunk(T *row, const T *g, const int64_t *goff, const T *v, int32_t cnt) {
    constexpr int L = 32 / (int)sizeof(T);  // lanes of a 256-bit vector
    constexpr int NV = C / L;
    typedef T vec __attribute__((vector_size(32)));
    vec acc[NV] = {};  // each row chunk is written exactly once: no need to pre-zero dW
    for (int32_t o = 0; o < cnt; ++o) {
        const T *gb = g + goff[o];
        const T vo = v[o];
        for (int u = 0; u < NV; ++u) {
            vec x;
            std::memcpy(&x, gb + u * L, sizeof(vec));
            acc[u] += vo * x;
        }
    }
    std::memcpy(row, acc, sizeof(acc));
}
#else
template <class T, int C>
static void fold_chunk(T *row, const T *g, const int64_t *goff, const T *v, int32_t cnt) {
    std::fill(row, row + C, T(0));
    for (int32_t o = 0; o < cnt; ++o)
        for (int j = 0; j < C; ++j) row[j] += v[o] * g[goff[o] + j];
}
#endif

template <class T, class Idx>
static void scatter_features(T *dW, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k,
                             double scale, const Idx &feature_of) {
    const int64_t E = B * k;
    std::vector<int32_t> feat(E), start(n + 1, 0);
    for (int64_t e = 0; e < E; ++e) {
        feat[e] = (int32_t)feature_of(e);
        start[feat[e] + 1]++;
    }
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    // Entries in feature order: the offset of their dy row and their scaled value.
    std::vector<int32_t> pos(start.begin(), start.end() - 1);
    std::vector<int64_t> goff(E);
    std::vector<T> v(E);
    for (int64_t b = 0, e = 0; b < B; ++b)
        for (int64_t s = 0; s < k; ++s, ++e) {
            const int32_t o = pos[feat[e]]++;
            goff[o] = b * m;
            v[o] = vals[e] * (T)scale;
        }
    // Column blocks outermost: the block of C columns of dy (B rows) is copied into a packed
    // B x C buffer (dy's rows are m apart, which would alias into few L1 sets) and stays in
    // L1 while every feature row folds its entries into it.
    constexpr int C = 32 / sizeof(T) * 4;  // four SIMD registers' worth of columns
    std::vector<T> blk((size_t)B * C);
    std::vector<int64_t> boff(E);
    for (int64_t o = 0; o < E; ++o) boff[o] = goff[o] / m * C;
    int64_t j0 = 0;
    for (; j0 + C <= m; j0 += C) {
        for (int64_t b = 0; b < B; ++b) std::memcpy(&blk[b * C], g + b * m + j0, C * sizeof(T));
        for (int64_t i = 0; i < n; ++i)
            fold_chunk<T, C>(dW + i * m + j0, blk.data(), boff.data() + start[i], v.data() + start[i],
                             start[i + 1] - start[i]);
    }
    if (j0 < m)  // the ragged tail
        for (int64_t i = 0; i < n; ++i) {
            T *row = dW + i * m;
            std::fill(row + j0, row + m, T(0));
            for (int32_t o = start[i]; o < start[i + 1]; ++o)
                for (int64_t j = j0; j < m; ++j) row[j] += v[o] * g[goff[o] + j];
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
                              const double *q, const FeatureDraw &draw) {
    if ((int64_t)s.acc.size() != s.n) s.acc.assign(s.n, 0.0);
    for (int64_t b = 0; b < B; ++b) {
        double gn = 0;
        for (int64_t j = 0; j < m; ++j) gn += (double)g[b * m + j] * (double)g[b * m + j];
        for (int64_t t = 0; t < k; ++t) {
            const int64_t e = b * k + t, i = draw(e);
            s.acc[i] += (double)vals[e] * (double)vals[e] * (double)k * q[i] * gn;
        }
    }
    s.acc_steps++;
}

template <class T> static void row_norms(const Tensor &g, std::vector<double> &out) {
    const int64_t B = g->shape[0], m = g->shape[1];
    const T *p = g->data<T>();
    out.assign(B, 0.0);
    for (int64_t b = 0; b < B; ++b) {
        double s = 0;
        for (int64_t j = 0; j < m; ++j) s += (double)p[b * m + j] * (double)p[b * m + j];
        out[b] = std::sqrt(s);
    }
}

Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape) {
    const char *op = op_name(n.op);
    if (slot.kind != SaveKind::SAMPLED) {
        const Tensor &x = slot.get(op);
        if (slot.ctx && slot.mode == (uint8_t)Estimator::SCORING)
            rescore(*std::static_pointer_cast<SiteState>(slot.ctx), x, g2d);
        return ops::matmul(ops::transpose(x, 0, 1), g2d);
    }
    SPAD_CHECK(!slot.released, RuntimeError, op, ": trying to backward through the graph a second time; "
               "specify retain_graph=True if you need to backward through the graph a second time.");
    SiteState &site = *std::static_pointer_cast<SiteState>(slot.ctx);
    const Estimator est = (Estimator)slot.mode;
    Tensor g = contiguous(g2d);
    const Tensor &vals = slot.value;
    const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0], k = slot.k;
    // RAD_DIFF / SPAD write every row of dW themselves; the others accumulate into zeros.
    Tensor dW = (est == Estimator::RAD_DIFF || est == Estimator::SPAD) ? empty(wshape, g->dtype)
                                                                        : zeros(wshape, g->dtype);
    const RandomStream rs = stream_of(slot);
    SPAD_FLOAT(g->dtype, T, {
        const T *pg = g->data<T>(), *pv = vals->data<T>();
        T *pw = dW->data<T>();
        switch (est) {
            case Estimator::RAD_DIFF:
            case Estimator::SPAD: {
                std::unique_ptr<Alias> al;
                if (est == Estimator::SPAD) al.reset(new Alias(slot.aux->data<double>(), nf));
                const FeatureDraw draw{est, rs, nf, al.get()};
                scatter_features(pw, nf, m, pg, pv, B, k, slot.scale, draw);
                if (est == Estimator::SPAD && site.cfg.sampled_scores)
                    accumulate_scores(site, pv, pg, B, k, m, slot.aux->data<double>(), draw);
                break;
            }
            case Estimator::RAD_SAME:
            case Estimator::SPAD_TOPK: {
                Tensor G = empty({k, m}, g->dtype);  // x[:, idx]^T g: a real GEMM over k features
                gemm(true, false, k, m, B, T(1), pv, k, pg, m, T(0), G->data<T>(), m);
                const T *pG = G->data<T>();
                const int64_t *top = est == Estimator::SPAD_TOPK ? slot.aux->data<int64_t>() : nullptr;
                for (int64_t s = 0; s < k; ++s) {
                    const int64_t i = top ? top[s] : (int64_t)rs.below((uint64_t)s, (uint32_t)nf);
                    for (int64_t j = 0; j < m; ++j) pw[i * m + j] += (T)slot.scale * pG[s * m + j];
                }
                break;
            }
            case Estimator::PROJECT: {
                Tensor G = empty({k, m}, g->dtype);
                gemm(true, false, k, m, B, T(1), pv, k, pg, m, T(0), G->data<T>(), m);
                Tensor R = rademacher_matrix<T>(rs, nf, k, g->dtype);
                gemm(false, false, nf, m, k, (T)slot.scale, R->data<T>(), k, G->data<T>(), m, T(0), pw, m);
                break;
            }
            case Estimator::CRS:
            case Estimator::BERNOULLI: {
                const int64_t *rows = slot.aux->data<int64_t>();
                Tensor gs = empty({k, m}, g->dtype);
                T *ps = gs->data<T>();
                for (int64_t r = 0; r < k; ++r) std::copy(pg + rows[r] * m, pg + rows[r] * m + m, ps + r * m);
                gemm(true, false, nf, m, k, T(1), pv, nf, ps, m, T(0), pw, m);
                if (est == Estimator::CRS) row_norms<T>(g, site.dy_norm);  // stale scores for the next step
                break;
            }
            default:
                throw RuntimeError(str(op, ": unknown sampled payload"));
        }
    });
    return dW;
}

Tensor input_grad(Node &, const SavedTensor &slot, const Tensor &g2d, const Tensor &W) {
    const bool everywhere = slot.ctx && std::static_pointer_cast<SiteState>(slot.ctx)->cfg.everywhere;
    if (!everywhere) return ops::matmul(g2d, ops::transpose(W, 0, 1));
    // Research option: sample dy's columns per example (uniform, with replacement), so the
    // noise compounds through every layer below (RAD §3.3's exploding variance).
    const SiteState &site = *std::static_pointer_cast<SiteState>(slot.ctx);
    Tensor g = contiguous(g2d);
    const int64_t B = g->shape[0], m = g->shape[1], km = keep_count(site.cfg.keep, m);
    const RandomStream rs = stream_of(slot, 1);
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
    return ops::matmul(gh, ops::transpose(W, 0, 1));
}

// ---- elementwise leaf factors ----------------------------------------------------------
bool pack_leaf_factor(SavedTensor &slot, const Tensor &other) {
    Policy *pol = g_active.get();
    if (!pol || pol->cfg.kind == PolicyKind::EXACT || pol->cfg.keep >= 1.0) return false;
    Tensor x = contiguous(other);
    const int64_t N = x->numel();
    const double p = pol->cfg.keep;
    RandomStream rs = reserve(*pol, (uint64_t)N);
    int64_t kept = 0;
    for (int64_t i = 0; i < N; ++i) kept += rs.uniform((uint64_t)i) < p;
    Tensor vals = empty({kept}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = vals->data<T>();
        for (int64_t i = 0, o = 0; i < N; ++i)
            if (rs.uniform((uint64_t)i) < p) pv[o++] = px[i] / (T)p;
    });
    slot.pack_sampled(vals, nullptr, other);
    slot.seed = rs.seed;
    slot.counter = rs.counter;
    slot.k = N;
    slot.scale = p;  // keep probability: the mask is regenerated from (seed, counter)
    slot.mode = (uint8_t)Estimator::ELEMENT;
    return true;
}

Tensor unpack_leaf_factor(const SavedTensor &slot, const Shape &shape, const char *op) {
    SPAD_CHECK(!slot.released, RuntimeError, op, ": trying to backward through the graph a second time; "
               "specify retain_graph=True if you need to backward through the graph a second time.");
    const Tensor &vals = slot.value;
    Tensor out = zeros(shape, vals->dtype);
    const RandomStream rs = stream_of(slot);
    SPAD_FLOAT(vals->dtype, T, {
        const T *pv = vals->data<T>();
        T *po = out->data<T>();
        for (int64_t i = 0, o = 0; i < slot.k; ++i)
            if (rs.uniform((uint64_t)i) < slot.scale) po[i] = pv[o++];
    });
    return out;
}

void pack_conv_input(Node &, SavedTensor &slot, const Tensor &x, const ConvGeom &) { slot.pack_exact(x); }

Tensor conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom) {
    return conv_weight_grad_rows(slot.get(op_name(n.op)), g, geom, RowSet::range(0, geom.rows()));
}

}  // namespace spad
