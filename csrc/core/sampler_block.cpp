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

#include "ops.h"
#include "sampler_util.h"

namespace spad {
namespace sampling_detail {

int64_t rad_block_size(int64_t block, int64_t k) {
    // The largest multiple of 8 up to `block` that still gives every example two blocks of
    // the keep*n values it may keep; narrow layers fall back to single features (size 1).
    int64_t b = block / 8 * 8;
    while (b >= 8 && 2 * b > k) b -= 8;
    return b >= 8 ? b : 1;
}

void pack_rad_blocks(Policy &pol, SavedTensor &slot, const Tensor &x, int64_t bsz) {
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
    slot.pack_sampled(values, nullptr, x);
    slot.seed = rs.seed;
    slot.counter = rs.counter;
    slot.k = kb;
    slot.scale = (double)nb / (double)kb;
}

// dW[r0:r0+nr, :] = scale * sum_o v_o[0:nr] (x) g[row_o, :], nr <= 8, for one block's entries.
// Eight accumulator vectors per column chunk: one load of dy feeds eight multiply-adds.
template <class T>
static void fold_block(T *dW, int64_t m, int64_t nr, const T *g, const int64_t *goff, const T *const *v,
                       int32_t cnt, T scale) {
    constexpr int R = 8;
#if defined(__GNUC__)
    constexpr int L = 32 / (int)sizeof(T);
    typedef T vec __attribute__((vector_size(32)));
    int64_t j0 = 0;
    for (; j0 + L <= m; j0 += L) {
        vec acc[R] = {};
        for (int32_t o = 0; o < cnt; ++o) {
            vec gv;
            std::memcpy(&gv, g + goff[o] + j0, sizeof(vec));
            for (int r = 0; r < R; ++r) acc[r] += (v[o][r] * scale) * gv;
        }
        for (int64_t r = 0; r < nr; ++r) std::memcpy(dW + r * m + j0, &acc[r], sizeof(vec));
    }
#else
    int64_t j0 = 0;
#endif
    for (; j0 < m; ++j0)  // remaining columns (all of them without vector types)
        for (int64_t r = 0; r < nr; ++r) {
            T a = 0;
            for (int32_t o = 0; o < cnt; ++o) a += v[o][r] * scale * g[goff[o] + j0];
            dW[r * m + j0] = a;
        }
}

Tensor rad_block_weight_grad(const SavedTensor &slot, const Tensor &g, const Shape &wshape) {
    const int64_t n = wshape[0], m = wshape[1], B = g->shape[0], kb = slot.k;
    const int64_t bsz = slot.value->shape[1], nb = (n + bsz - 1) / bsz, E = B * kb;
    const RandomStream rs = stream_of(slot);
    // Bucket the entries by block (stable: summation order is fixed).
    std::vector<int32_t> blk(E), start(nb + 1, 0), order(E);
    for (int64_t e = 0; e < E; ++e) {
        blk[e] = (int32_t)rs.below((uint64_t)e, (uint32_t)nb);
        start[blk[e] + 1]++;
    }
    for (int64_t i = 0; i < nb; ++i) start[i + 1] += start[i];
    std::vector<int32_t> pos(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < E; ++e) order[pos[blk[e]]++] = (int32_t)e;
    Tensor dW = empty(wshape, g->dtype);  // every row is written below
    SPAD_FLOAT(g->dtype, T, {
        const T *pg = g->data<T>(), *pv = slot.value->data<T>();
        T *pw = dW->data<T>();
        std::vector<int64_t> goff;
        std::vector<const T *> v;
        for (int64_t i = 0; i < nb; ++i) {
            goff.clear();
            v.clear();
            for (int32_t o = start[i]; o < start[i + 1]; ++o) goff.push_back(order[o] / kb * m);
            const int64_t rows = std::min(bsz, n - i * bsz);
            for (int64_t r0 = 0; r0 < rows; r0 += 8) {  // eight rows of the block at a time
                v.clear();
                for (int32_t o = start[i]; o < start[i + 1]; ++o) v.push_back(pv + (int64_t)order[o] * bsz + r0);
                // values past the block's end are zero padding, so reading 8 from r0 is safe
                // whenever bsz is a multiple of 8 (the Python layer enforces it for bsz > 1)
                fold_block<T>(pw + (i * bsz + r0) * m, m, std::min<int64_t>(8, rows - r0), pg, goff.data(),
                              v.data(), (int32_t)goff.size(), (T)slot.scale);
            }
        }
    });
    return dW;
}

}  // namespace sampling_detail
}  // namespace spad
