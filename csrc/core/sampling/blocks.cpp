// RAD "different sample" in feature blocks: each example keeps kb blocks of `bsz`
// consecutive input features, drawn uniformly with replacement (scale n_B / kb), kb*bsz
// being the multiple of bsz nearest to keep*n.
//
// Why blocks: the estimate is unbiased, its variance is (n - bsz)/k * sum_b ||x_b||^2 ||dy_b||^2
// with k = kb*bsz kept values per example — no larger than per-feature RAD's (n - 1)/k — and
// its backward is dense enough to run at GEMM speed: each kept entry updates bsz rows of dW
// from one row of dy, so the kernel does bsz multiply-adds per value of dy it loads, where
// per-feature RAD does one. (A ragged last block is zero-padded; with blocks drawn uniformly
// the variance formula holds whatever the block sizes.)
#include <cstring>

#include "detail.h"

namespace spad {

int64_t rad_block_size(int64_t block, int64_t k) {
    // The largest multiple of 8 up to `block` that still gives every example two blocks of
    // the keep*n values it may keep; narrow layers fall back to single features (size 1).
    int64_t b = block / 8 * 8;
    while (b >= 8 && 2 * b > k) b -= 8;
    return b >= 8 ? b : 1;
}

namespace sampling_detail {

// Entry e = b*kb + t holds `bsz` values of example b from feature block blk_e (zero-padded),
// pre-weighted or not: dW[blk rows, :] += scale * v_e (x) dy_b. The blocks are regenerated
// from the stream (uniform RAD) or stored, 2 bytes each (magnitude blocks).
struct BlockPayload final : WeightPayload {
    Tensor values;  // (B*kb, bsz)
    Tensor stored;  // U8 holding a uint16 block per entry, or null (regenerated from rs)
    int64_t kb = 0;
    double scale = 1.0;
    std::vector<Tensor> kept() const override { return {values, stored}; }
    Tensor weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const override;
};

std::unique_ptr<WeightPayload> pack_rad_blocks(Policy &pol, const Tensor &x, int64_t bsz) {
    const int64_t B = x->shape[0], n = x->shape[1];
    const int64_t nb = (n + bsz - 1) / bsz;
    // The nearest whole number of blocks to keep*n values: within bsz/2 values of the budget.
    const int64_t kb = std::max<int64_t>(1, std::min<int64_t>(nb, (keep_count(pol.cfg.keep, n) + bsz / 2) / bsz));
    RandomStream rs = reserve(pol, (uint64_t)(B * kb));
    Tensor values = zeros({B * kb, bsz}, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = values->data<T>();
        for (int64_t e = 0; e < B * kb; ++e) {
            const int64_t blk = rs.below((uint64_t)e, (uint32_t)nb), j0 = blk * bsz, len = std::min(bsz, n - j0);
            std::memcpy(pv + e * bsz, px + (e / kb) * n + j0, (size_t)len * sizeof(T));
        }
    });
    auto p = std::make_unique<BlockPayload>();
    p->values = values;
    p->rs = rs;
    p->kb = kb;
    p->scale = (double)nb / (double)kb;
    return p;
}

// SPAD magnitude paths in blocks (wide layers): each example keeps kb blocks of `bsz`
// consecutive features, block β drawn with probability q_β = ||x_bβ||_2 / sum_β' ||x_bβ'||_2
// (the variance-optimal block distribution: it minimizes sum_β ||x_bβ||^2 / q_β), with
// systematic draws (one uniform per example, as in magnitude_paths), and stored scaled by
// 1/(kb q_β). Unbiased; variance at most sum_b ((sum_β ||x_bβ||)^2 - ||x_b||^2) ||dy_b||^2 / kb.
// The block indices are data-dependent, so they are stored (2 bytes each: BlockPayload::stored); the
// backward pass is RAD's block kernel.
std::unique_ptr<WeightPayload> pack_magnitude_blocks(Policy &pol, const Tensor &x, int64_t bsz) {
    const int64_t B = x->shape[0], n = x->shape[1];
    const int64_t nb = (n + bsz - 1) / bsz;
    SPAD_CHECK(nb <= 65535, ValueError, "SPAD: ", nb, " feature blocks do not fit a 2-byte block index");
    const int64_t kb = std::max<int64_t>(1, std::min<int64_t>(nb, (keep_count(pol.cfg.keep, n) + bsz / 2) / bsz));
    RandomStream rs = reserve(pol, (uint64_t)B);
    Tensor values = zeros({B * kb, bsz}, x->dtype);
    Tensor idx = empty({B * kb * 2}, DType::U8);  // a uint16 block index per entry
    uint16_t *pi = idx->data<uint16_t>();
    std::vector<double> norm(nb);
    SPAD_FLOAT(x->dtype, T, {
        const T *px = x->data<T>();
        T *pv = values->data<T>();
        for (int64_t b = 0; b < B; ++b) {
            const T *xb = px + b * n;
            double tot = 0;
            for (int64_t blk = 0; blk < nb; ++blk) {
                const int64_t j0 = blk * bsz, j1 = std::min(n, j0 + bsz);
                norm[blk] = std::sqrt(sum8(xb + j0, j1 - j0, [](double v) { return v * v; }));
                tot += norm[blk];
            }
            if (!(tot > 0)) {  // an all-zero row: zero values, block 0
                std::fill(pi + b * kb, pi + (b + 1) * kb, uint16_t(0));
                continue;
            }
            const double inv_step = (double)kb / tot, u = rs.uniform((uint64_t)b);
            double mass = 0;
            int64_t pos = 0, prev = 0;
            for (int64_t blk = 0; blk < nb && pos < kb; ++blk) {
                mass += norm[blk];
                const int64_t now = std::min<int64_t>(kb, (int64_t)std::ceil(mass * inv_step - u));
                if (now <= prev) continue;
                const int64_t j0 = blk * bsz, len = std::min(bsz, n - j0);
                const T w = (T)(tot / ((double)kb * norm[blk]));
                for (; pos < now; ++pos) {
                    T *dst = pv + (b * kb + pos) * bsz;
                    for (int64_t j = 0; j < len; ++j) dst[j] = xb[j0 + j] * w;
                    pi[b * kb + pos] = (uint16_t)blk;
                }
                prev = now;
            }
            for (int64_t blk = nb - 1; pos < kb; ++pos) {  // rounding left a draw: repeat the last nonzero block
                while (blk > 0 && norm[blk] == 0) --blk;
                const int64_t j0 = blk * bsz, len = std::min(bsz, n - j0);
                const T w = (T)(tot / ((double)kb * norm[blk]));
                T *dst = pv + (b * kb + pos) * bsz;
                for (int64_t j = 0; j < len; ++j) dst[j] = xb[j0 + j] * w;
                pi[b * kb + pos] = (uint16_t)blk;
            }
        }
    });
    auto p = std::make_unique<BlockPayload>();
    p->values = values;
    p->stored = idx;
    p->rs = rs;
    p->kb = kb;
    p->scale = 1.0;  // the values carry their weights
    return p;
}

// dW[r0:r0+nr, :] = sum_o vs[o][0:nr] (x) g[goff[o], :], nr <= 4, for one block's entries
// (vs: the entries' values for these rows, pre-scaled, zero-padded to 4 per entry). A GEMM
// micro-kernel with the entries as its inner dimension: a 4-row x 3-vector register tile,
// so each entry costs 3 loads of dy and 4 broadcasts for 12 multiply-adds (16 vector
// registers: fits AVX2; wider targets get the same code).
template <class T>
static void fold_rows(T *dW, int64_t m, int64_t nr, const T *g, const int64_t *goff, const T *vs, int32_t cnt) {
    constexpr int R = 4;
    int64_t j0 = 0;
#if defined(__GNUC__)
    // The vector width the build targets (-march=native may give 512-bit registers; a
    // portable build gets 256-bit vectors, lowered to whatever the target has).
#if defined(__AVX512F__)
    constexpr int VB = 64;
#else
    constexpr int VB = 32;
#endif
    constexpr int L = VB / (int)sizeof(T);
    typedef T vec __attribute__((vector_size(VB)));
    for (; j0 + 3 * L <= m; j0 += 3 * L) {
        vec a[R][3] = {};
        for (int32_t o = 0; o < cnt; ++o) {
            const T *gp = g + goff[o] + j0;
            vec g0, g1, g2;
            std::memcpy(&g0, gp, sizeof(vec));
            std::memcpy(&g1, gp + L, sizeof(vec));
            std::memcpy(&g2, gp + 2 * L, sizeof(vec));
            for (int r = 0; r < R; ++r) {
                const T v = vs[o * R + r];
                a[r][0] += v * g0;
                a[r][1] += v * g1;
                a[r][2] += v * g2;
            }
        }
        for (int64_t r = 0; r < nr; ++r) std::memcpy(dW + r * m + j0, a[r], sizeof(a[r]));
    }
    for (; j0 + L <= m; j0 += L) {
        vec a[R] = {};
        for (int32_t o = 0; o < cnt; ++o) {
            vec g0;
            std::memcpy(&g0, g + goff[o] + j0, sizeof(vec));
            for (int r = 0; r < R; ++r) a[r] += vs[o * R + r] * g0;
        }
        for (int64_t r = 0; r < nr; ++r) std::memcpy(dW + r * m + j0, &a[r], sizeof(vec));
    }
#endif
    for (; j0 < m; ++j0)  // remaining columns (all of them without vector types)
        for (int64_t r = 0; r < nr; ++r) {
            T a = 0;
            for (int32_t o = 0; o < cnt; ++o) a += vs[o * R + r] * g[goff[o] + j0];
            dW[r * m + j0] = a;
        }
}

Tensor BlockPayload::weight_grad(SiteState &, const Tensor &g, const Shape &wshape) const {
    const int64_t n = wshape[0], m = wshape[1], B = g->shape[0];
    const int64_t bsz = values->shape[1], nb = (n + bsz - 1) / bsz, E = B * kb;
    // The block of each entry: regenerated (uniform RAD) or stored (magnitude blocks).
    const uint16_t *blocks = stored ? stored->data<uint16_t>() : nullptr;
    const RandomStream draws = rs;  // a local copy: its block cache is not shared between threads
    // Bucket the entries by block (stable: summation order is fixed).
    std::vector<int32_t> blk(E), start(nb + 1, 0), order(E);
    for (int64_t e = 0; e < E; ++e) {
        blk[e] = blocks ? (int32_t)blocks[e] : (int32_t)draws.below((uint64_t)e, (uint32_t)nb);
        start[blk[e] + 1]++;
    }
    for (int64_t i = 0; i < nb; ++i) start[i + 1] += start[i];
    std::vector<int32_t> pos(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < E; ++e) order[pos[blk[e]]++] = (int32_t)e;
    Tensor dW = empty(wshape, g->dtype);  // every row is written below
    SPAD_FLOAT(g->dtype, T, {
        const T *pg = g->data<T>(), *pv = values->data<T>();
        T *pw = dW->data<T>();
        const T sc = (T)scale;
        std::vector<int64_t> goff;
        std::vector<T> vs;
        for (int64_t i = 0; i < nb; ++i) {
            goff.clear();
            for (int32_t o = start[i]; o < start[i + 1]; ++o) goff.push_back(order[o] / kb * m);
            const int32_t cnt = (int32_t)goff.size();
            const int64_t rows = std::min(bsz, n - i * bsz);
            vs.resize((size_t)cnt * 4);
            for (int64_t r0 = 0; r0 < rows; r0 += 4) {  // four rows of the block at a time
                const int64_t nr = std::min<int64_t>(4, rows - r0);
                for (int32_t o = 0; o < cnt; ++o) {
                    const T *src = pv + (int64_t)order[start[i] + o] * bsz + r0;
                    for (int64_t r = 0; r < 4; ++r) vs[o * 4 + r] = r < nr ? src[r] * sc : T(0);
                }
                fold_rows<T>(pw + (i * bsz + r0) * m, m, nr, pg, goff.data(), vs.data(), cnt);
            }
        }
    });
    return dW;
}

}  // namespace sampling_detail
}  // namespace spad
