// kernels_body.h — the bodies of the sampled-backprop hot loops, compiled once per
// instruction set by kernels.cpp. NOT a normal header: no include guard, on purpose.
// kernels.cpp includes it inside a namespace (k0, k2, k3) with SPAD_KERN_LEVEL set and, for
// the levels above the build's own, under `#pragma GCC target(...)`:
//   0 baseline (SSE2 on x86-64; whatever the target has elsewhere), 1 AVX,
//   2 AVX2 + FMA, 3 AVX-512 (F, BW, VL, DQ).
// Rules for code in here (each copy runs only on CPUs that pass its check, so nothing
// compiled here may be shared with code that runs before the check):
//   * no standard-library templates (std::vector, std::copy, std::min...): their
//     instantiations are shared between the copies, and one compiled for AVX-512 would
//     be called from the baseline copy; plain loops, builtins and local helpers only;
//   * no allocation: callers own the scratch memory;
//   * everything is `static` or a template in the copy's own namespace.

#if SPAD_KERN_LEVEL >= 3
constexpr int kVec = 64, kTileRows = 8;  // 32 vector registers: 8 rows x 3 vectors of dW
#elif SPAD_KERN_LEVEL >= 1
constexpr int kVec = 32, kTileRows = 4;  // 16 registers: 12 accumulators + 3 loads + 1 broadcast
#else
constexpr int kVec = 16, kTileRows = 4;  // a wider vector type would be emulated through the stack
#endif

#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector) && __has_builtin(__builtin_convertvector)
#define SPAD_KERN_SHUFFLE 1
#endif
#endif
#ifndef SPAD_KERN_SHUFFLE
#define SPAD_KERN_SHUFFLE 0
#endif

static inline double dabs(double v) { return v < 0 ? -v : v; }

int tile_rows() { return kTileRows; }

// ---- per-feature dW (features.cpp) -------------------------------------------------------
// Written with GCC/Clang vector types: auto-vectorizers tend to vectorize across the entries
// (gathers) instead of across the columns.
#if defined(__GNUC__)
// row[0:NV*L] = sum_o v[o] * g[ex[o]*ld : ...], the NV accumulators in registers. A narrow
// chunk (NV < 8) keeps two accumulator sets (even and odd entries) so there are enough
// independent FMA chains to hide their latency; a wide one has enough chains by itself.
// A partial chunk (NV = 1 only) stores its first `tail` values (the padded dy makes the
// loads safe); a full one stores straight from the registers. (One store path with a runtime
// `tail` made GCC keep the accumulators in a stack array, zeroed and reloaded per chunk:
// that cost AVX2 three times AVX-512's time on narrow rows.)
template <class T, int NV, bool FULL>
__attribute__((always_inline)) static inline void fold_chunk(T *row, const T *g, int64_t ld, const int32_t *ex,
                                                             const T *v, int32_t cnt, int64_t tail) {
    static_assert(FULL || NV == 1, "a partial chunk is one vector");
    constexpr int L = kVec / (int)sizeof(T);
    constexpr int SETS = NV < 8 ? 2 : 1;
    typedef T vec __attribute__((vector_size(kVec)));
    typedef T uvec __attribute__((vector_size(kVec), aligned(sizeof(T)), may_alias));  // unaligned access
    vec a[SETS][NV] = {};
    int32_t o = 0;
    for (; o + SETS <= cnt; o += SETS)
        for (int s = 0; s < SETS; ++s) {
            const T *gp = g + ex[o + s] * ld;
            const T vo = v[o + s];
            for (int u = 0; u < NV; ++u) {
                vec x;
                __builtin_memcpy(&x, gp + u * L, sizeof(vec));
                a[s][u] += vo * x;
            }
        }
    if (SETS > 1 && o < cnt) {  // the odd last entry (an `if`: a loop here put `a` on the stack)
        const T *gp = g + ex[o] * ld;
        for (int u = 0; u < NV; ++u) {
            vec x;
            __builtin_memcpy(&x, gp + u * L, sizeof(vec));
            a[0][u] += v[o] * x;
        }
    }
    // Each row chunk is written exactly once (no pre-zeroing).
    for (int u = 0; u < NV; ++u)
        if (SETS > 1) a[0][u] += a[SETS - 1][u];
    if (FULL) {
        for (int u = 0; u < NV; ++u) *(uvec *)(row + u * L) = a[0][u];
    } else {
        const vec last = a[0][0];
        for (int64_t j = 0; j < tail; ++j) row[j] = last[j];
    }
}
#endif

// dW[i,:] = sum over o in [start[i], start[i+1]) of v[o] * g[ex[o], :]; g has `ld` >= m
// columns, ld a multiple of 64 bytes (so whole vectors load past m).
template <class T>
void fold_features(T *dW, int64_t n, int64_t m, const T *g, int64_t ld, const int32_t *start, const int32_t *ex,
                   const T *v) {
#if defined(__GNUC__)
    constexpr int L = kVec / (int)sizeof(T), C = 4 * L;
    for (int64_t i = 0; i < n; ++i) {
        T *row = dW + i * m;
        const int32_t s0 = start[i], cnt = start[i + 1] - s0;
        int64_t j0 = 0;
        // With 32 vector registers (AVX-512) a whole 16-vector chunk fits: one pass over the
        // row's entries per 16 vectors of columns (rows have few entries, so the per-chunk
        // setup and the re-reads of the entry list are what a narrower chunk pays for).
        if (kVec == 64)
            for (; j0 + 4 * C <= m; j0 += 4 * C)
                fold_chunk<T, 16, true>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, 4 * C);
        for (; j0 + C <= m; j0 += C) fold_chunk<T, 4, true>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, C);
        for (; j0 + L <= m; j0 += L) fold_chunk<T, 1, true>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, L);
        if (j0 < m) fold_chunk<T, 1, false>(row + j0, g + j0, ld, ex + s0, v + s0, cnt, m - j0);
    }
#else
    for (int64_t i = 0; i < n; ++i) {
        T *row = dW + i * m;
        for (int64_t j = 0; j < m; ++j) row[j] = T(0);
        for (int32_t o = start[i]; o < start[i + 1]; ++o)
            for (int64_t j = 0; j < m; ++j) row[j] += v[o] * g[ex[o] * ld + j];
    }
#endif
}

// ---- feature-block dW (blocks.cpp) ---------------------------------------------------------
// dW[0:rows, :] = sum_o v_o[0:rows] (x) g[goff[o], :] for one feature block's cnt entries.
// vs holds the entries' values tile by tile: vs[(t*cnt + o)*kTileRows + r] is row t*kTileRows + r
// of entry o, pre-scaled, zero past `rows`. A GEMM with the entries as its inner dimension;
// per column chunk all the block's row tiles run back to back, so the entries' dy chunks
// (cnt x 3 vectors) stay in L1 between tiles. Each dW value is stored once.
template <class T>
void fold_block(T *dW, int64_t m, int64_t rows, const T *g, const int64_t *goff, const T *vs, int32_t cnt) {
    constexpr int R = kTileRows;
    const int64_t tiles = (rows + R - 1) / R;
    int64_t j0 = 0;
#if defined(__GNUC__)
    constexpr int L = kVec / (int)sizeof(T);
    typedef T vec __attribute__((vector_size(kVec)));
    // Stores straight from registers (rows past `rows` are skipped by compile-time-unrolled
    // tests, so the accumulators never spill to a zeroed stack array).
    auto put = [](T *p, const vec &v) { __builtin_memcpy(p, &v, sizeof(vec)); };
    for (; j0 + 3 * L <= m; j0 += 3 * L)
        for (int64_t t = 0; t < tiles; ++t) {
            const T *vt = vs + t * cnt * R;
            vec a[R][3] = {};
            for (int32_t o = 0; o < cnt; ++o) {
                const T *gp = g + goff[o] + j0;
                vec g0, g1, g2;
                __builtin_memcpy(&g0, gp, sizeof(vec));
                __builtin_memcpy(&g1, gp + L, sizeof(vec));
                __builtin_memcpy(&g2, gp + 2 * L, sizeof(vec));
                for (int r = 0; r < R; ++r) {
                    const T v = vt[o * R + r];
                    a[r][0] += v * g0;
                    a[r][1] += v * g1;
                    a[r][2] += v * g2;
                }
            }
            T *d = dW + t * R * m + j0;
            for (int r = 0; r < R; ++r)
                if (t * R + r < rows) put(d + r * m, a[r][0]), put(d + r * m + L, a[r][1]), put(d + r * m + 2 * L, a[r][2]);
        }
    for (; j0 + L <= m; j0 += L)
        for (int64_t t = 0; t < tiles; ++t) {
            const T *vt = vs + t * cnt * R;
            vec a[R] = {};
            for (int32_t o = 0; o < cnt; ++o) {
                vec g0;
                __builtin_memcpy(&g0, g + goff[o] + j0, sizeof(vec));
                for (int r = 0; r < R; ++r) a[r] += vt[o * R + r] * g0;
            }
            T *d = dW + t * R * m + j0;
            for (int r = 0; r < R; ++r)
                if (t * R + r < rows) put(d + r * m, a[r]);
        }
    // Remaining columns (all of them on a narrow layer, e.g. the logits): vectorized across a
    // tile's rows instead, which vs holds contiguously; dy's value is broadcast.
    typedef T rvec __attribute__((vector_size(R * sizeof(T))));
    for (; j0 < m; ++j0)
        for (int64_t t = 0; t < tiles; ++t) {
            const T *vt = vs + t * cnt * R;
            rvec a = {};
            for (int32_t o = 0; o < cnt; ++o) {
                rvec v;
                __builtin_memcpy(&v, vt + o * R, sizeof(rvec));
                a += g[goff[o] + j0] * v;
            }
            for (int r = 0; r < R; ++r)
                if (t * R + r < rows) dW[(t * R + r) * m + j0] = a[r];
        }
#endif
    for (; j0 < m; ++j0)  // without vector types: plain loops
        for (int64_t r = 0; r < rows; ++r) {
            const T *vt = vs + (r / R) * cnt * R + r % R;
            T a = 0;
            for (int32_t o = 0; o < cnt; ++o) a += vt[o * R] * g[goff[o] + j0];
            dW[r * m + j0] = a;
        }
}

// ---- SPAD magnitude paths (linear.cpp's magnitude_paths, one input row at a time) --------
#if SPAD_KERN_LEVEL >= 2
// For each 8-bit mask, the positions of its set bits in order, one per 4-bit nibble.
struct Compress8 {
    uint32_t lanes[256];
    constexpr Compress8() : lanes() {
        for (int m = 0; m < 256; ++m)
            for (int i = 0, c = 0; i < 8; ++i)
                if (m >> i & 1) lanes[m] |= (uint32_t)i << (4 * c++);
    }
};
static constexpr Compress8 kCompress8{};
#endif

// The nonzero values of x[0:n] and their features, in order; returns their count. nzv and
// nzi hold n + 16 values. Zero inputs (ReLU outputs: about half) carry no mass.
template <class T>
int64_t compress_nonzero(const T *x, int64_t n, T *nzv, int32_t *nzi) {
    int64_t nn = 0, j = 0;
#if SPAD_KERN_LEVEL >= 3
    if (sizeof(T) == 4) {  // 16 values per compare + compress
        const __m512 zero16 = _mm512_setzero_ps();
        const __m512i step = _mm512_set1_epi32(16);
        __m512i idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; j + 16 <= n; j += 16, idx = _mm512_add_epi32(idx, step)) {
            const __m512 v = _mm512_loadu_ps((const float *)x + j);
            const __mmask16 nz = _mm512_cmp_ps_mask(v, zero16, _CMP_NEQ_UQ);  // NaN counts as nonzero
            _mm512_storeu_ps((float *)nzv + nn, _mm512_maskz_compress_ps(nz, v));
            _mm512_storeu_si512(nzi + nn, _mm512_maskz_compress_epi32(nz, idx));
            nn += __builtin_popcount((unsigned)nz);
        }
    }
#elif SPAD_KERN_LEVEL >= 2
    if (sizeof(T) == 4) {  // 8 values per compare; the compress is a permute from a table
        const __m256 zero8 = _mm256_setzero_ps();
        const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), nib = _mm256_set1_epi32(15);
        for (; j + 8 <= n; j += 8) {
            const __m256 v = _mm256_loadu_ps((const float *)x + j);
            const int nz = _mm256_movemask_ps(_mm256_cmp_ps(v, zero8, _CMP_NEQ_UQ));  // NaN counts as nonzero
            const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)kCompress8.lanes[nz]), shifts), nib);
            _mm256_storeu_ps((float *)nzv + nn, _mm256_permutevar8x32_ps(v, idx));
            _mm256_storeu_si256((__m256i *)(nzi + nn), _mm256_add_epi32(idx, _mm256_set1_epi32((int)j)));
            nn += __builtin_popcount((unsigned)nz);
        }
    }
#endif
    for (; j < n; ++j) {  // branch-free: always write, advance past nonzeros
        nzv[nn] = x[j];
        nzi[nn] = (int32_t)j;
        nn += (int64_t)!(x[j] == T(0));
    }
    return nn;
}

// mass[i] = |xv[0]| + ... + |xv[i]| in double; returns the total. Every sweep vectorizable or
// free of long loop-carried chains.
template <class T>
double prefix_abs(const T *xv, int64_t nn, double *mass) {
    double carry = 0;
    int64_t j0 = 0;
#if SPAD_KERN_LEVEL >= 3 && defined(__GNUC__) && SPAD_KERN_SHUFFLE
    // In-register scans of 8, one carry add per 8, two scans per carry add.
    typedef double v8 __attribute__((vector_size(64)));
    typedef T t8 __attribute__((vector_size(8 * sizeof(T))));
    const v8 zero = {};
    auto scan8 = [&](const T *p, v8 &a) {  // a = the prefix sums of |p[0..8)|
        t8 xt;
        __builtin_memcpy(&xt, p, sizeof(xt));
        a = __builtin_convertvector(xt, v8);
        a = a < zero ? -a : a;
        a += __builtin_shufflevector(a, zero, 8, 0, 1, 2, 3, 4, 5, 6);
        a += __builtin_shufflevector(a, zero, 8, 9, 0, 1, 2, 3, 4, 5);
        a += __builtin_shufflevector(a, zero, 8, 9, 10, 11, 0, 1, 2, 3);
    };
    for (; j0 + 16 <= nn; j0 += 16) {
        v8 a, c;
        scan8(xv + j0, a);
        scan8(xv + j0 + 8, c);
        const double ta = a[7], tc = c[7];
        a += carry;
        c += carry + ta;
        carry += ta + tc;
        __builtin_memcpy(&mass[j0], &a, sizeof(a));
        __builtin_memcpy(&mass[j0 + 8], &c, sizeof(c));
    }
    for (; j0 + 8 <= nn; j0 += 8) {
        v8 a;
        scan8(xv + j0, a);
        const double ta = a[7];
        a += carry;
        carry += ta;
        __builtin_memcpy(&mass[j0], &a, sizeof(a));
    }
#elif SPAD_KERN_LEVEL >= 2 && defined(__GNUC__) && SPAD_KERN_SHUFFLE
    // In-register scans of 4, one carry add per 4, two scans per carry add.
    typedef double v4 __attribute__((vector_size(32)));
    typedef T t4 __attribute__((vector_size(4 * sizeof(T))));
    typedef double uv4 __attribute__((vector_size(32), aligned(8), may_alias));
    const v4 zero = {};
    auto scan4 = [&](const T *p) {  // the prefix sums of |p[0..4)|
        t4 xt;
        __builtin_memcpy(&xt, p, sizeof(xt));
        v4 a = __builtin_convertvector(xt, v4);
        a = a < zero ? -a : a;
        a += __builtin_shufflevector(a, zero, 4, 0, 1, 2);
        a += __builtin_shufflevector(a, zero, 4, 5, 0, 1);
        return a;
    };
    for (; j0 + 8 <= nn; j0 += 8) {
        v4 a = scan4(xv + j0), c = scan4(xv + j0 + 4);
        const double ta = a[3], tc = c[3];
        a += carry;
        c += carry + ta;
        carry += ta + tc;
        *(uv4 *)&mass[j0] = a;
        *(uv4 *)&mass[j0 + 4] = c;
    }
#else
    {  // four segments, four independent add chains, offsets added after
        constexpr int S = 4;
        const int64_t seg = nn / S;
        double acc[S] = {};
        for (int64_t i = 0; i < seg; ++i)
            for (int s = 0; s < S; ++s) mass[s * seg + i] = acc[s] += dabs((double)xv[s * seg + i]);
        for (int s = 1; s < S && seg > 0; ++s) {  // (seg = 0: no segments, and mass[-1] is not ours)
            const double off = mass[s * seg - 1];
            for (int64_t i = s * seg; i < (s + 1) * seg; ++i) mass[i] += off;
        }
        j0 = S * seg;
        carry = j0 ? mass[j0 - 1] : 0.0;
    }
#endif
    for (; j0 < nn; ++j0) mass[j0] = carry += dabs((double)xv[j0]);
    return nn ? mass[nn - 1] : 0.0;
}

// Systematic draws: draw t sits at mass (t + u) * l1 / k; upto[i + 1] = ceil(y_i) draws land at
// or before value i, y_i = mass_i * inv_step - u (ceil for y > -1 as truncation plus a compare:
// a form compilers vectorize), capped at k + 1. pair[2i] = pair[2i+1] = the code ±(nzi[i]+1)
// of value i. Returns the largest count of one value.
template <class T, class C>
int32_t draw_counts(const double *mass, const T *xv, const int32_t *nzi, int64_t nn, double inv_step, double u,
                    int64_t k, int32_t *upto, C *pair) {
    upto[0] = 0;
    const int32_t cap = (int32_t)k + 1;
    for (int64_t i = 0; i < nn; ++i) {
        const double y = mass[i] * inv_step - u;
        const int32_t t = (int32_t)y;
        const int32_t c = t + (int32_t)(y > (double)t);
        upto[i + 1] = c < cap ? c : cap;
        const C neg = (C)(xv[i] < 0), code = (C)((C)((nzi[i] + 1) ^ -neg) + neg);  // ±(j+1), no branch
        pair[2 * i] = pair[2 * i + 1] = code;
    }
    int32_t most = 0;
    for (int64_t i = 0; i < nn; ++i) {
        const int32_t d = upto[i + 1] - upto[i];
        most = d > most ? d : most;
    }
    return most;
}

// ---- narrow dW rows (the logits layer under magnitude paths) ------------------------------
// dW (n x m, m small) = sum over examples b and draws t of ±s_b * g[b, :] into row |code|-1;
// codes of an all-zero row are 0 and skipped. dW is zeroed here.
template <class T, class C>
void add_code_rows(T *dW, int64_t n, int64_t m, const T *g, const C *codes, const T *scale_b, int64_t B, int64_t k) {
    for (int64_t i = 0; i < n * m; ++i) dW[i] = T(0);
#if SPAD_KERN_LEVEL >= 3
    if (sizeof(T) == 4 && m <= 16) {  // one masked 16-lane update per code
        const __mmask16 mask = (__mmask16)((1u << m) - 1u);
        for (int64_t b = 0; b < B; ++b) {
            const C *cb = codes + b * k;
            if (cb[0] == 0) continue;
            const __m512 gb = _mm512_maskz_loadu_ps(mask, (const float *)g + b * m);
            const __m512 pos = _mm512_mul_ps(gb, _mm512_set1_ps((float)scale_b[b])), neg = _mm512_sub_ps(_mm512_setzero_ps(), pos);
            for (int64_t t = 0; t < k; ++t) {
                const C c = cb[t];
                float *row = (float *)dW + ((c < 0 ? -c : c) - 1) * m;
                const __m512 r = _mm512_maskz_loadu_ps(mask, row);
                _mm512_mask_storeu_ps(row, mask, _mm512_add_ps(r, c < 0 ? neg : pos));
            }
        }
        return;
    }
    // (No AVX2 form: its masked store, vmaskmovps, is microcoded on AMD Zen and costs more
    // than the plain loop below, measured.)
#endif
    for (int64_t b = 0; b < B; ++b) {
        const C *cb = codes + b * k;
        if (cb[0] == 0) continue;  // an all-zero row (its codes are all 0): worth nothing
        const T *gb = g + b * m, s = scale_b[b];
        for (int64_t t = 0; t < k; ++t) {
            const C c = cb[t];
            const T v = c < 0 ? -s : s;
            T *row = dW + ((c < 0 ? -c : c) - 1) * m;
            for (int64_t j = 0; j < m; ++j) row[j] += v * gb[j];
        }
    }
}

template void fold_features<float>(float *, int64_t, int64_t, const float *, int64_t, const int32_t *, const int32_t *,
                                   const float *);
template void fold_features<double>(double *, int64_t, int64_t, const double *, int64_t, const int32_t *,
                                    const int32_t *, const double *);
template void fold_block<float>(float *, int64_t, int64_t, const float *, const int64_t *, const float *, int32_t);
template void fold_block<double>(double *, int64_t, int64_t, const double *, const int64_t *, const double *, int32_t);
template int64_t compress_nonzero<float>(const float *, int64_t, float *, int32_t *);
template int64_t compress_nonzero<double>(const double *, int64_t, double *, int32_t *);
template double prefix_abs<float>(const float *, int64_t, double *);
template double prefix_abs<double>(const double *, int64_t, double *);
template int32_t draw_counts<float, int16_t>(const double *, const float *, const int32_t *, int64_t, double, double,
                                             int64_t, int32_t *, int16_t *);
template int32_t draw_counts<float, int32_t>(const double *, const float *, const int32_t *, int64_t, double, double,
                                             int64_t, int32_t *, int32_t *);
template int32_t draw_counts<double, int16_t>(const double *, const double *, const int32_t *, int64_t, double, double,
                                              int64_t, int32_t *, int16_t *);
template int32_t draw_counts<double, int32_t>(const double *, const double *, const int32_t *, int64_t, double, double,
                                              int64_t, int32_t *, int32_t *);
template void add_code_rows<float, int16_t>(float *, int64_t, int64_t, const float *, const int16_t *, const float *,
                                            int64_t, int64_t);
template void add_code_rows<float, int32_t>(float *, int64_t, int64_t, const float *, const int32_t *, const float *,
                                            int64_t, int64_t);
template void add_code_rows<double, int16_t>(double *, int64_t, int64_t, const double *, const int16_t *,
                                             const double *, int64_t, int64_t);
template void add_code_rows<double, int32_t>(double *, int64_t, int64_t, const double *, const int32_t *,
                                             const double *, int64_t, int64_t);
