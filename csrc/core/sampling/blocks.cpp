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

#include "../kernels.h"
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

// The block kernel is kern::fold_block (a register tile of kern::tile_rows() rows of dW x 3
// vectors of columns, compiled for each instruction set: Note [Kernel dispatch] in kernels.cpp).

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
        const int R = kern::tile_rows();  // the layout of vs the kernel reads
        const T *pg = g->data<T>(), *pv = values->data<T>();
        T *pw = dW->data<T>();
        const T sc = (T)scale;
        const int64_t tiles = (bsz + R - 1) / R;
        std::vector<int64_t> goff;
        std::vector<T> vs;
        for (int64_t i = 0; i < nb; ++i) {
            const int32_t cnt = start[i + 1] - start[i];
            const int64_t rows = std::min(bsz, n - i * bsz);
            goff.resize(cnt);
            vs.assign((size_t)(tiles * cnt * R), T(0));
            for (int32_t o = 0; o < cnt; ++o) {
                const int32_t e = order[start[i] + o];
                goff[o] = e / kb * m;
                const T *src = pv + (int64_t)e * bsz;
                for (int64_t r = 0; r < rows; ++r) vs[((r / R) * cnt + o) * R + r % R] = src[r] * sc;
            }
            kern::fold_block(pw + i * bsz * m, m, rows, pg, goff.data(), vs.data(), cnt);
        }
    });
    return dW;
}

}  // namespace sampling_detail
}  // namespace spad
