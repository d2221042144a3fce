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
#include "sampler_util.h"

namespace spad {

using namespace sampling_detail;

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

SiteKeepScope::SiteKeepScope(Policy *p, const Tensor &W) {
    if (!p || p->site_keep.empty()) return;
    auto it = p->site_keep.find(W->storage.get());
    if (it == p->site_keep.end()) return;
    pol = p;
    prev = p->cfg.keep;
    p->cfg.keep = it->second;
}
SiteKeepScope::~SiteKeepScope() {
    if (pol) pol->cfg.keep = prev;
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

void pack_weight_input(Node &, SavedTensor &slot, const Tensor &x2d, const Tensor &W) {
    Policy *pol = g_active.get();
    SiteKeepScope site_keep(pol, W);
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
    if (est == Estimator::RAD_BLOCK) {
        const int64_t bsz = rad_block_size(c.block, keep_count(c.keep, n));
        if (bsz > 1) {
            pack_rad_blocks(*pol, slot, x, bsz);
            slot.mode = (uint8_t)est;
            slot.ctx = site;
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
                rs = reserve(*pol, (uint64_t)(B * k));
                values = empty({B * k * eb}, DType::U8);
                aux = empty({B}, x->dtype);
                T *scale_b = aux->data<T>();
                uint8_t *codes = values->data<uint8_t>();
                auto put = [&](int64_t e, int64_t code) {
                    if (eb == 2) {
                        const int16_t c16 = (int16_t)code;
                        std::memcpy(codes + 2 * e, &c16, 2);
                    } else {
                        const int32_t c32 = (int32_t)code;
                        std::memcpy(codes + 4 * e, &c32, 4);
                    }
                };
                for (int64_t b = 0; b < B; ++b) {
                    const T *xb = px + b * n;
                    double l1 = 0;
                    for (int64_t j = 0; j < n; ++j) l1 += std::fabs((double)xb[j]);
                    scale_b[b] = (T)(l1 / (double)k);
                    if (!(l1 > 0)) {  // all-zero row: every entry is worth 0
                        for (int64_t t = 0; t < k; ++t) put(b * k + t, 0);
                        continue;
                    }
                    // Stratified draws: the t-th falls uniformly in the t-th k-quantile of the
                    // |x_b| mass. Each draw is still marginally ∝ |x_bj|, so the estimate stays
                    // unbiased, its variance is at most the i.i.d. one, and the draws come out
                    // sorted, so one sweep over the features places them all.
                    const double step = l1 / (double)k;
                    int64_t t = 0;
                    double mass = 0, u = rs.uniform((uint64_t)(b * k)) * step;
                    for (int64_t j = 0; j < n && t < k; ++j) {
                        mass += std::fabs((double)xb[j]);
                        const int64_t neg = xb[j] < 0, code = ((j + 1) ^ -neg) + neg;  // ±(j+1), no branch
                        while (t < k && u < mass) {
                            put(b * k + t, code);
                            ++t;
                            u = ((double)t + rs.uniform((uint64_t)(b * k + t))) * step;
                        }
                    }
                    for (int64_t j = n - 1; t < k; ++t) {  // rounding left draws past the end
                        while (j > 0 && xb[j] == 0) --j;
                        put(b * k + t, xb[j] < 0 ? -(j + 1) : (j + 1));
                    }
                }
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
static void scatter_features(T *dW, int64_t n, int64_t m, const T *g, const T *vals, int64_t B, int64_t k,
                             double scale, const std::vector<int32_t> &feat) {
    const int64_t E = B * k;
    std::vector<int32_t> start(n + 1, 0);
    for (int64_t e = 0; e < E; ++e) start[feat[e] + 1]++;
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    std::vector<int32_t> pos(start.begin(), start.end() - 1), order(E);
    for (int64_t e = 0; e < E; ++e) order[pos[feat[e]]++] = (int32_t)e;
    // Entries in feature order (then example order, the sort is stable): the row of dy they
    // read and their scaled value. Repeated draws of one (feature, example) — frequent when
    // sampling is proportional to magnitude — are merged into one multiply-add.
    std::vector<int64_t> boff;
    std::vector<T> v;
    boff.reserve(E);
    v.reserve(E);
    constexpr int C = 32 / sizeof(T) * 4;  // four SIMD registers' worth of columns
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
                boff.push_back(b * C);
                v.push_back(val);
                last_b = b;
            }
        }
    }
    cstart[n] = (int32_t)v.size();
    // Column blocks outermost: the block of C columns of dy (B rows) is copied into a packed
    // B x C buffer (dy's rows are m apart, which would alias into few L1 sets) and stays in
    // L1 while every feature row folds its entries into it.
    std::vector<T> blk((size_t)B * C);
    int64_t j0 = 0;
    for (; j0 + C <= m; j0 += C) {
        for (int64_t b = 0; b < B; ++b) std::memcpy(&blk[b * C], g + b * m + j0, C * sizeof(T));
        for (int64_t i = 0; i < n; ++i)
            fold_chunk<T, C>(dW + i * m + j0, blk.data(), boff.data() + cstart[i], v.data() + cstart[i],
                             cstart[i + 1] - cstart[i]);
    }
    if (j0 < m)  // the ragged tail
        for (int64_t i = 0; i < n; ++i) {
            T *row = dW + i * m;
            std::fill(row + j0, row + m, T(0));
            for (int32_t o = cstart[i]; o < cstart[i + 1]; ++o)
                for (int64_t j = j0; j < m; ++j) row[j] += v[o] * g[boff[o] / C * m + j];
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

Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape) {
    const char *op = op_name(n.op);
    if (slot.kind != SaveKind::SAMPLED) {
        const Tensor &x = slot.get(op);
        if (slot.ctx && slot.mode == (uint8_t)Estimator::SCORING)
            rescore(*std::static_pointer_cast<SiteState>(slot.ctx), x, g2d);
        return ops::matmul(ops::transpose(x, 0, 1), g2d);
    }
    check_first_order(slot, op);
    SiteState &site = *std::static_pointer_cast<SiteState>(slot.ctx);
    const Estimator est = (Estimator)slot.mode;
    Tensor g = contiguous(g2d);
    if (est == Estimator::RAD_BLOCK) return rad_block_weight_grad(slot, g, wshape);
    const Tensor &vals = slot.value;
    const int64_t nf = wshape[0], m = wshape[1], B = g->shape[0], k = slot.k;
    // The per-example estimators write every row of dW themselves; the others accumulate into zeros.
    const bool writes_all = est == Estimator::RAD_DIFF || est == Estimator::SPAD || est == Estimator::SPAD_MAG;
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
                if (est == Estimator::SPAD && site.cfg.sampled_scores)
                    accumulate_scores(site, pv, pg, B, k, m, slot.aux->data<double>(), feat);
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
                if (est == Estimator::CRS) remember_dy_norms(site, g, B, m);  // stale scores for the next step
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
    check_first_order(slot, "linear");
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
    check_first_order(slot, op);
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

}  // namespace spad
