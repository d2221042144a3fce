// Elementwise ops: forward kernel, backward rule and saved payload side by side.
// Backward rules are written with differentiable ops, so create_graph works through them.
#include <cmath>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../ops.h"
#include "../reuse.h"
#include "../sampling/sampling.h"

namespace spad {
namespace ops {

void check_same_dtype(const char *op, const Tensor &a, const Tensor &b) {
    SPAD_CHECK(a->dtype == b->dtype, TypeError, op, ": dtype mismatch, ", dtype_name(a->dtype), " ",
               shape_str(a->shape), " vs ", dtype_name(b->dtype), " ", shape_str(b->shape),
               "; convert one side explicitly (spad.tensor(x, dtype=...))");
    SPAD_CHECK(is_floating(a->dtype), TypeError, op, ": expected float32 or float64 tensors, got ",
               dtype_name(a->dtype));
}

// out = f(a, b) with numpy broadcasting; fast paths for the common layouts.
template <class T, class F> static Tensor binary_kernel(const char *op, const Tensor &a, const Tensor &b, F f) {
    const bool same = a->shape == b->shape;
    Shape shape = same ? a->shape : broadcast_shapes(op, a->shape, b->shape);
    Tensor out = empty(shape, a->dtype);
    T *o = out->data<T>();
    const T *pa = a->data<T>(), *pb = b->data<T>();
    const int64_t n = out->numel();
    if (same && a->is_contiguous() && b->is_contiguous()) {
        for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    } else if (b->numel() == 1 && a->shape == shape && a->is_contiguous()) {
        const T s = pb[0];
        for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], s);
    } else if (a->numel() == 1 && b->shape == shape && b->is_contiguous()) {
        const T s = pa[0];
        for (int64_t i = 0; i < n; ++i) o[i] = f(s, pb[i]);
    } else {
        Shape sa = broadcast_strides(*a, shape), sb = broadcast_strides(*b, shape);
        nd_runs(shape, out->strides.data(), sa.data(), sb.data(),
                [&](int64_t oo, int64_t ao, int64_t bo, int64_t len, int64_t so, int64_t s1, int64_t s2) {
                    for (int64_t i = 0; i < len; ++i) o[oo + i * so] = f(pa[ao + i * s1], pb[bo + i * s2]);
                });
    }
    return out;
}

template <class T, class F> static Tensor unary_kernel(const Tensor &x_, F f) {
    Tensor x = contiguous(x_);
    Tensor out = empty(x->shape, x->dtype);
    T *o = out->data<T>();
    const T *p = x->data<T>();
    const int64_t n = x->numel();
    for (int64_t i = 0; i < n; ++i) o[i] = f(p[i]);
    return out;
}

#define BINARY_FWD(NAME, KIND, EXPR)                                                    \
    Tensor NAME(const Tensor &a, const Tensor &b) {                                     \
        check_same_dtype(#NAME, a, b);                                                  \
        Tensor out;                                                                     \
        SPAD_FLOAT(a->dtype, T, out = binary_kernel<T>(#NAME, a, b, [](T x, T y) { return EXPR; })); \
        auto node = make_node(OpKind::KIND, {&a, &b});                                  \
        if (node) save_##NAME(*node, a, b, out);                                        \
        attach(out, node);                                                              \
        return out;                                                                     \
    }

#define UNARY_FWD(NAME, KIND, EXPR)                                                     \
    Tensor NAME(const Tensor &x) {                                                      \
        Tensor out;                                                                     \
        SPAD_FLOAT(x->dtype, T, out = unary_kernel<T>(x, [](T v) { return EXPR; }));    \
        auto node = make_node(OpKind::KIND, {&x});                                      \
        if (node) save_##NAME(*node, x, out);                                           \
        attach(out, node);                                                              \
        return out;                                                                     \
    }

// ---- add / sub: save nothing ----
static void save_add(Node &, const Tensor &, const Tensor &, const Tensor &) {}
static void save_sub(Node &, const Tensor &, const Tensor &, const Tensor &) {}
BINARY_FWD(add, ADD, x + y)
BINARY_FWD(sub, SUB, x - y)
}  // namespace ops
using namespace ops;
void backward_ADD(Node &n, const Tensor &g, Tensor *gin) {
    if (n.needs(0)) gin[0] = sum_to(g, n.in_shape[0]);
    if (n.needs(1)) gin[1] = sum_to(g, n.in_shape[1]);
}
void backward_SUB(Node &n, const Tensor &g, Tensor *gin) {
    if (n.needs(0)) gin[0] = sum_to(g, n.in_shape[0]);
    if (n.needs(1)) gin[1] = neg(sum_to(g, n.in_shape[1]));
}
namespace ops {

// ---- mul: each side's gradient needs the other side ----
// When one side is a leaf parameter, the other side is saved only for that leaf's
// gradient, so an active sampling policy may store it element-sampled (model-agnostic SPAD).
static void save_factor(SavedTensor &slot, const Tensor &leaf_side, const Tensor &other) {
    if (leaf_side->is_leaf() && leaf_side->requires_grad)
        pack_leaf_factor(slot, other);
    else
        slot.pack_exact(other);
}
static void save_mul(Node &n, const Tensor &a, const Tensor &b, const Tensor &) {
    if (n.needs(0)) save_factor(n.saved[1], a, b);
    if (n.needs(1)) save_factor(n.saved[0], b, a);
}
static Tensor factor(Node &n, int i) {
    const SavedTensor &s = n.saved[i];
    if (is_sampled(s)) return unpack_leaf_factor(s, n.in_shape[i], "mul");
    const Tensor &v = s.get("mul");
    note_read(s);
    return v;
}
BINARY_FWD(mul, MUL, x *y)
}  // namespace ops
void backward_MUL(Node &n, const Tensor &g, Tensor *gin) {
    if (n.needs(0)) gin[0] = sum_to(mul(g, factor(n, 1)), n.in_shape[0]);
    if (n.needs(1)) gin[1] = sum_to(mul(g, factor(n, 0)), n.in_shape[1]);
}
namespace ops {

// ---- div: da = g / b, db = -g * out / b ----
static void save_div(Node &n, const Tensor &, const Tensor &b, const Tensor &out) {
    n.saved[1].pack_exact(b);
    if (n.needs(1)) n.saved[2].pack_exact(out, true);
}
BINARY_FWD(div, DIV, x / y)
}  // namespace ops
void backward_DIV(Node &n, const Tensor &g, Tensor *gin) {
    const Tensor &b = n.saved[1].get("div");
    Tensor gb = div(g, b);
    if (n.needs(0)) gin[0] = sum_to(gb, n.in_shape[0]);
    if (n.needs(1)) gin[1] = sum_to(neg(mul(gb, saved_output(n, 2))), n.in_shape[1]);
}
namespace ops {

Tensor mul_scalar(const Tensor &x, double s) { return mul(x, scalar(s, x->dtype)); }
Tensor add_scalar(const Tensor &x, double s) { return add(x, scalar(s, x->dtype)); }

// ---- unary ops ----
static void save_neg(Node &, const Tensor &, const Tensor &) {}
static void save_exp(Node &n, const Tensor &, const Tensor &out) { n.saved[0].pack_exact(out, true); }
static void save_log(Node &n, const Tensor &x, const Tensor &) { n.saved[0].pack_exact(x); }
static void save_sqrt(Node &n, const Tensor &, const Tensor &out) { n.saved[0].pack_exact(out, true); }
static void save_tanh(Node &n, const Tensor &, const Tensor &out) { n.saved[0].pack_exact(out, true); }
static void save_sigmoid(Node &n, const Tensor &, const Tensor &out) { n.saved[0].pack_exact(out, true); }
UNARY_FWD(neg, NEG, -v)
UNARY_FWD(exp, EXP, std::exp(v))
UNARY_FWD(log, LOG, std::log(v))
UNARY_FWD(sqrt, SQRT, std::sqrt(v))
UNARY_FWD(tanh, TANH, std::tanh(v))
UNARY_FWD(sigmoid, SIGMOID, v >= 0 ? T(1) / (T(1) + std::exp(-v)) : std::exp(v) / (T(1) + std::exp(v)))
}  // namespace ops
void backward_NEG(Node &n, const Tensor &g, Tensor *gin) { gin[0] = neg(g); (void)n; }
void backward_EXP(Node &n, const Tensor &g, Tensor *gin) { gin[0] = mul(g, saved_output(n, 0)); }
void backward_LOG(Node &n, const Tensor &g, Tensor *gin) { gin[0] = div(g, n.saved[0].get("log")); }
void backward_SQRT(Node &n, const Tensor &g, Tensor *gin) {
    gin[0] = div(mul_scalar(g, 0.5), saved_output(n, 0));
}
void backward_TANH(Node &n, const Tensor &g, Tensor *gin) {
    Tensor y = saved_output(n, 0);
    if (!grad_enabled()) {  // fused: one pass, no temporaries
        Tensor gc = contiguous(g);
        Tensor out = empty(y->shape, y->dtype);
        SPAD_FLOAT(y->dtype, T, {
            const T *pg = gc->data<T>(), *py = y->data<T>();
            T *o = out->data<T>();
            for (int64_t i = 0, e = out->numel(); i < e; ++i) o[i] = pg[i] * (T(1) - py[i] * py[i]);
        });
        gin[0] = out;
        return;
    }
    gin[0] = mul(g, add_scalar(neg(mul(y, y)), 1.0));
}
void backward_SIGMOID(Node &n, const Tensor &g, Tensor *gin) {
    Tensor y = saved_output(n, 0);
    gin[0] = mul(g, mul(y, add_scalar(neg(y), 1.0)));
}
namespace ops {

// ---- pow by a scalar: saves x ----
Tensor pow(const Tensor &x, double p) {
    Tensor out;
    SPAD_FLOAT(x->dtype, T, {
        const T tp = (T)p;
        if (p == 2.0)
            out = unary_kernel<T>(x, [](T v) { return v * v; });
        else
            out = unary_kernel<T>(x, [tp](T v) { return std::pow(v, tp); });
    });
    auto node = make_node(OpKind::POW, {&x});
    if (node) {
        node->at.scalar = p;
        node->saved[0].pack_exact(x);
    }
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_POW(Node &n, const Tensor &g, Tensor *gin) {
    const double p = n.at.scalar;
    const Tensor &x = n.saved[0].get("pow");
    Tensor d = p == 2.0 ? mul_scalar(x, 2.0) : mul_scalar(ops::pow(x, p - 1.0), p);
    gin[0] = mul(g, d);
}
namespace ops {

// ---- relu: saves one bit per element ----
// o = relu(p) over n values, bit i of `bits` = (p[i] > 0). Branch-free: the sign of a ReLU
// input is a coin flip, so a branch per value mispredicts about half the time (it cost more
// than the whole SGD update on an MLP step). `v <= 0 ? 0 : v` keeps NaN (the compare is false).
template <class T> static void relu_bits(const T *p, T *o, uint8_t *pb, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    if (std::is_same<T, float>::value) {  // 16 values: two mask bytes from one compare
        const __m512 zero = _mm512_setzero_ps();
        for (; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_loadu_ps((const float *)p + i);
            const __mmask16 pos = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
            const __mmask16 keep = _mm512_cmp_ps_mask(v, zero, _CMP_NLE_UQ);  // > 0 or NaN
            _mm512_storeu_ps((float *)o + i, _mm512_maskz_mov_ps(keep, v));
            const uint16_t m = (uint16_t)pos;
            std::memcpy(pb + (i >> 3), &m, 2);
        }
    }
#elif defined(__SSE2__)
    if (std::is_same<T, float>::value) {  // baseline x86-64: 8 values per mask byte
        const __m128 zero = _mm_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            const __m128 a = _mm_loadu_ps((const float *)p + i), b = _mm_loadu_ps((const float *)p + i + 4);
            _mm_storeu_ps((float *)o + i, _mm_andnot_ps(_mm_cmple_ps(a, zero), a));
            _mm_storeu_ps((float *)o + i + 4, _mm_andnot_ps(_mm_cmple_ps(b, zero), b));
            pb[i >> 3] = (uint8_t)(_mm_movemask_ps(_mm_cmpgt_ps(a, zero)) | (_mm_movemask_ps(_mm_cmpgt_ps(b, zero)) << 4));
        }
    }
#endif
    for (; i + 8 <= n; i += 8) {  // portable (and float64): branch-free selects and bit sums
        unsigned byte = 0;
        for (int j = 0; j < 8; ++j) {
            const T v = p[i + j];
            o[i + j] = v <= T(0) ? T(0) : v;
            byte |= (unsigned)(v > T(0)) << j;
        }
        pb[i >> 3] = (uint8_t)byte;
    }
    for (; i < n; ++i) {
        const T v = p[i];
        o[i] = v <= T(0) ? T(0) : v;
        pb[i >> 3] |= (uint8_t)((unsigned)(v > T(0)) << (i & 7));
    }
}

static Tensor pack_bits_positive(const Tensor &x, Tensor &out) {
    const int64_t n = x->numel();
    Tensor bits = zeros({(n + 7) / 8}, DType::U8);
    SPAD_FLOAT(x->dtype, T, { relu_bits<T>(x->data<T>(), out->data<T>(), bits->data<uint8_t>(), n); });
    return bits;
}

Tensor relu(const Tensor &x_) {
    Tensor x = contiguous(x_);
    // The last reader of x (a chain inside the core) gets its output in x's buffer: the
    // tape keeps only the 1-bit mask, so nothing else needs x (Note [Buffer reuse]).
    const bool reuse = reusable(x, x == x_ ? 1 : 0);
    Tensor out = reuse ? view(x, x->shape, x->strides, 0) : empty(x->shape, x->dtype);
    if (reuse) x->storage->version++;
    auto node = make_node(OpKind::RELU, {&x_});
    if (!node) {
        SPAD_FLOAT(x->dtype, T, {
            const T *p = x->data<T>();
            T *o = out->data<T>();
            for (int64_t i = 0, e = x->numel(); i < e; ++i) o[i] = !(p[i] <= T(0)) ? p[i] : T(0);  // NaN stays NaN
        });
        return out;
    }
    node->saved[0].pack_mask(pack_bits_positive(x, out), x);
    attach(out, node);
    return out;
}

Tensor mask_mul(const Tensor &g_, const Tensor &bits) {
    Tensor g = contiguous(g_);
    // In backward (no graph being recorded) the incoming gradient is usually the tape's
    // alone: ReLU's backward then masks it in place (Note [Buffer reuse]).
    const bool reuse = !grad_enabled() && reusable(g, g == g_ ? 1 : 0);
    Tensor out = reuse ? view(g, g->shape, g->strides, 0) : empty(g->shape, g->dtype);
    if (reuse) g->storage->version++;
    const uint8_t *pb = bits->data<uint8_t>();
    SPAD_FLOAT(g->dtype, T, {
        const T *p = g->data<T>();
        T *o = out->data<T>();
        const int64_t e = g->numel(), full = e / 8 * 8;
        // Whole bytes: expand 8 bits to 8 lane masks and AND them in (a vectorizable select
        // that maps NaN gradients of dead units to 0, as the exact rule does).
        using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
        for (int64_t i = 0; i < full; i += 8) {
            const unsigned byte = pb[i >> 3];
            U lane[8], mask[8];
            std::memcpy(lane, p + i, sizeof(lane));
            for (int j = 0; j < 8; ++j) mask[j] = (U)0 - (U)((byte >> j) & 1u);
            for (int j = 0; j < 8; ++j) lane[j] &= mask[j];
            std::memcpy(o + i, lane, sizeof(lane));
        }
        for (int64_t i = full; i < e; ++i) o[i] = ((pb[i >> 3] >> (i & 7)) & 1) ? p[i] : T(0);
    });
    auto node = make_node(OpKind::MASK_MUL, {&g_});
    if (node) node->saved[0].pack_mask(bits, g);
    attach(out, node);
    return out;
}
}  // namespace ops
void backward_RELU(Node &n, const Tensor &g, Tensor *gin) { gin[0] = mask_mul(g, n.saved[0].get("relu")); }
void backward_MASK_MUL(Node &n, const Tensor &g, Tensor *gin) { gin[0] = mask_mul(g, n.saved[0].get("relu")); }
namespace ops {

void add_(const Tensor &dst, const Tensor &src) {
    SPAD_CHECK(dst->shape == src->shape, ValueError, "add_: shapes ", shape_str(dst->shape), " and ",
               shape_str(src->shape), " differ");
    check_same_dtype("add_", dst, src);
    Tensor s = contiguous(src);
    SPAD_CHECK(dst->is_contiguous(), RuntimeError, "add_: destination must be contiguous");
    SPAD_FLOAT(dst->dtype, T, {
        T *d = dst->data<T>();
        const T *p = s->data<T>();
        for (int64_t i = 0, e = dst->numel(); i < e; ++i) d[i] += p[i];
    });
    dst->storage->version++;
}

}  // namespace ops
}  // namespace spad
