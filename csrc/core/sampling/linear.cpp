// Sampled payloads for weight gradients of linear layers and matmuls: pack in forward,
// estimate dW in backward. See sampling.h for the estimators and DESIGN.md §1 for their
// variances. The exact paths (no policy, scoring passes) are the ops' own (ops/linalg.cpp).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "../arena.h"
#include "../gemm.h"
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
    std::vector<C> row(n + k + 1);
    for (int64_t b = 0; b < B; ++b) {
        const T *xb = px + b * n;
        C *out = codes + b * k;
        const double l1 = sum8(xb, n, [](double v) { return std::fabs(v); });
        scale_b[b] = (T)(l1 / (double)k);
        if (!(l1 > 0)) {  // an all-zero row: every entry is worth 0
            std::fill(out, out + k, C(0));
            continue;
        }
        const double inv_step = (double)k / l1, u = rs.uniform((uint64_t)b);
        double mass = 0;
        int64_t pos = 0, prev = 0;  // prev = ceil(y_{j-1}); y_{-1} = -u, ceil = 0
        for (int64_t j = 0; j < n; ++j) {
            mass += std::fabs((double)xb[j]);
            const int64_t now = (int64_t)std::ceil(mass * inv_step - u), cnt = now - prev;
            const C neg = (C)(xb[j] < 0), code = (C)((C)((j + 1) ^ -neg) + neg);  // ±(j+1), no branch
            row[pos] = code;  // written even when cnt = 0: the next feature overwrites it
            if (cnt > 1) std::fill(row.begin() + pos, row.begin() + pos + cnt, code);
            pos += cnt;
            prev = now;
        }
        // Rounding may leave the count one off k: pad with the last nonzero feature or cut.
        for (int64_t j = n - 1; pos < k; ++pos) {
            while (j > 0 && xb[j] == 0) --j;
            row[pos] = (C)(xb[j] < 0 ? -(j + 1) : (j + 1));
        }
        std::copy(row.begin(), row.begin() + k, out);
    }
}

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &W) {
    PackScope scope(active_policy().get(), W.get());
    if (scope.exact()) return scope.pack_exact(slot, x2d);
    Policy *pol = scope.pol;
    const PolicyConfig &c = pol->cfg;
    Tensor x = contiguous(x2d);
    const int64_t B = x->shape[0], n = x->shape[1];
    std::shared_ptr<SiteState> site = site_for(*pol, W, n);
    std::lock_guard<std::mutex> site_lock(site->mu);
    Estimator est = c.estimator;
    if (c.kind == PolicyKind::SPAD && c.sampled_scores && (pol->step - 1) % c.refresh == 0 && site->acc_steps > 0) {
        // Score now, follow later: the estimates gathered since the last refresh become q.
        for (double &a : site->acc) a /= (double)site->acc_steps;
        set_scores(*site, site->acc);
        site->acc.assign(n, 0.0);
        site->acc_steps = 0;
    }
    if (c.kind == PolicyKind::SPAD && !c.sampled_scores && (site->score.empty() || pol->scoring_step(pol->step))) {
        slot.pack_exact(x2d);  // a scoring pass: exact input, scores refreshed in backward
        slot.mode = (uint8_t)Estimator::SCORING;
        slot.ctx = payload_ctx(site, scope.step);
        return;
    }
    if (est == Estimator::SPAD_MAG && rad_block_size(kMagnitudeBlock, keep_count(c.keep, n)) >= kMagnitudeBlock) {
        pack_magnitude_blocks(*pol, slot, x, kMagnitudeBlock);
        slot.mode = (uint8_t)Estimator::MAG_BLOCK;
        slot.ctx = payload_ctx(site, scope.step);
        return;
    }
    if (est == Estimator::RAD_BLOCK) {
        const int64_t bsz = rad_block_size(c.block, keep_count(c.keep, n));
        if (bsz > 1) {
            pack_rad_blocks(*pol, slot, x, bsz);
            slot.mode = (uint8_t)est;
            slot.ctx = payload_ctx(site, scope.step);
            return;
        }
        est = Estimator::RAD_DIFF;  // too narrow for blocks
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
                values = gather_cols<T>(x, idx);
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
            case Estimator::SPAD_MAG: {
                // Equal tape bytes: keep*n values of this dtype per row buy this many 2-byte
                // (4-byte when n > 32767) signed indices, less one scale per row.
                const int64_t isz = (int64_t)dtype_size(x->dtype), eb = n > 32767 ? 4 : 2;
                k = std::max<int64_t>(1, ((int64_t)std::llround(c.keep * (double)n) * isz - isz) / eb);
                rs = reserve(*pol, (uint64_t)B);
                values = empty({B * k * eb}, DType::U8);
                aux = empty({B}, x->dtype);
                T *scale_b = aux->data<T>();
                if (eb == 2)
                    magnitude_paths<T, int16_t>(px, B, n, k, rs, values->data<int16_t>(), scale_b);
                else
                    magnitude_paths<T, int32_t>(px, B, n, k, rs, values->data<int32_t>(), scale_b);
                break;
            }
            case Estimator::SPAD_TOPK: {
                std::vector<int64_t> order(n);
                std::iota(order.begin(), order.end(), 0);
                std::stable_sort(order.begin(), order.end(),
                                 [&](int64_t a, int64_t b) { return site->score[a] > site->score[b]; });
                order.resize(k);
                values = gather_cols<T>(x, order);
                aux = index_tensor(order);
                break;
            }
            case Estimator::CRS:
            case Estimator::BERNOULLI: {
                std::vector<int64_t> rows;
                std::vector<double> w;
                rs = select_rows(*pol, *site, x, B, n, rows, w);
                k = (int64_t)rows.size();
                values = weighted_rows(x, n, rows, w, {k, n});
                aux = index_tensor(rows);
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
    slot.ctx = payload_ctx(site, scope.step);
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

void note_exact_read(const SavedTensor &slot, const Tensor &x, const Tensor &g2d) {
    mark_read(slot);
    if (slot.ctx && slot.mode == (uint8_t)Estimator::SCORING) {
        SiteState &site = *site_of(slot);
        std::lock_guard<std::mutex> lk(site.mu);
        rescore(site, x, g2d);
    }
}

Tensor sampled_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape) {
    const char *op = op_name(n.op);
    check_first_order(slot, op);
    mark_read(slot);
    SiteState &site = *site_of(slot);
    const Estimator est = (Estimator)slot.mode;
    Tensor g = contiguous(g2d);
    if (est == Estimator::RAD_BLOCK || est == Estimator::MAG_BLOCK) return rad_block_weight_grad(slot, g, wshape);
    const Tensor &vals = slot.value;
    const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0], k = slot.k;
    // The per-example estimators write every row of dW themselves; the others accumulate into zeros.
    const bool writes_all = est != Estimator::RAD_SAME && est != Estimator::SPAD_TOPK;
    Tensor dW = writes_all ? empty(wshape, g->dtype) : zeros(wshape, g->dtype);
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
                std::vector<int32_t> feat(B * k);
                for (int64_t e = 0; e < B * k; ++e) feat[e] = (int32_t)draw(e);
                scatter_features(pw, nf, m, pg, pv, B, k, slot.scale, feat);
                if (est == Estimator::SPAD && site.cfg.sampled_scores) {
                    std::lock_guard<std::mutex> lk(site.mu);
                    accumulate_scores(site, pv, pg, B, k, m, slot.aux->data<double>(), feat);
                }
                break;
            }
            case Estimator::SPAD_MAG: {
                const bool wide = vals->numel() == 4 * B * k;
                const uint8_t *codes = vals->data<uint8_t>();
                const T *scale_b = slot.aux->data<T>();
                std::vector<T> v(B * k);
                std::vector<int32_t> feat(B * k);
                for (int64_t e = 0; e < B * k; ++e) {
                    int64_t code;
                    if (wide) {
                        int32_t c32;
                        std::memcpy(&c32, codes + 4 * e, 4);
                        code = c32;
                    } else {
                        int16_t c16;
                        std::memcpy(&c16, codes + 2 * e, 2);
                        code = c16;
                    }
                    feat[e] = (int32_t)(code < 0 ? -code - 1 : code > 0 ? code - 1 : 0);
                    v[e] = code < 0 ? -scale_b[e / k] : code > 0 ? scale_b[e / k] : T(0);
                }
                scatter_features(pw, nf, m, pg, v.data(), B, k, 1.0, feat);
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
                Tensor gs = gather_rows(g, m, slot.aux, {k, m});
                gemm(true, false, nf, m, k, T(1), pv, nf, gs->data<T>(), m, T(0), pw, m);
                if (est == Estimator::CRS) remember_dy_norms(site, g, B, m);  // stale scores for the next step (locks)
                break;
            }
            default:
                throw RuntimeError(str(op, ": unknown sampled payload"));
        }
    });
    return dW;
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
    return gh;
}

}  // namespace spad
