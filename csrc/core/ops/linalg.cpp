// matmul (1-D, 2-D, batched with broadcasting) and the fused linear layer x @ W + b.
// Both hand strided operands straight to GEMM (a transposed view becomes a trans flag,
// not a copy). The operand saved for a weight's gradient (linear's input; either side of
// a matmul with a 2-D weight) is where sampling policies act (see sampling/sampling.h).
#include <algorithm>

#include "../gemm.h"
#include "../ops.h"
#include "../reuse.h"
#include "../sampling/sampling.h"

namespace spad {
namespace ops {

// Can a (rows x cols) view with strides (sr, sc) be handed to GEMM directly?
static bool gemm_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, bool &trans, int64_t &ld) {
    if ((cols == 1 || sc == 1) && (rows == 1 || sr >= std::max<int64_t>(cols, 1))) {
        trans = false;
        ld = rows == 1 ? std::max<int64_t>(cols, 1) : sr;
        return true;
    }
    if ((rows == 1 || sr == 1) && (cols == 1 || sc >= std::max<int64_t>(rows, 1))) {
        trans = true;
        ld = cols == 1 ? std::max<int64_t>(rows, 1) : sc;
        return true;
    }
    return false;
}

// A weight: a 2-D leaf whose gradient is wanted. Its gradient ends there, so the operand
// saved for it may be sampled (inject once, next to the parameter).
static bool is_weight(const Tensor &t) { return t->ndim() == 2 && t->is_leaf() && t->requires_grad; }
// Saving these costs no tape (Note [Tape accounting]), so sampling them would only add noise.
static bool lives_anyway(const Tensor &t) { return t->storage->is_param || (t->is_leaf() && t->requires_grad); }

// Writing y = x W over x (or dx = g W^T over g) runs the GEMM in row blocks
// (gemm_rows_in_place), and each BLAS call packs the whole weight again: at 32-row blocks of a
// 1024x1024 layer that measured +40 % on the forward GEMM and +110 % on dx, about a tenth of
// an MLP step. Worth it only when the freed buffer is at least as large as the weight, which
// lives anyway (and so does its gradient): below that, the saving is a small part of the step's
// peak and the repacking is not.
static bool in_place_pays(int64_t rows, int64_t width, const Shape &wshape) {
    return rows * width >= wshape[0] * wshape[1];
}

static Tensor gemmable(const Tensor &t) {
    const int64_t nd = t->ndim();
    bool tr;
    int64_t ld;
    return gemm_layout(t->shape[nd - 2], t->shape[nd - 1], t->strides[nd - 2], t->strides[nd - 1], tr, ld)
               ? t
               : contiguous(t);
}

// C = A @ B for (..., M, K) @ (..., K, N) with broadcast batch dims; no autograd.
static Tensor matmul_kernel(const Tensor &a_, const Tensor &b_, const Shape &batch) {
    Tensor a = gemmable(a_), b = gemmable(b_);
    const int64_t na = a->ndim(), nb = b->ndim();
    const int64_t M = a->shape[na - 2], K = a->shape[na - 1], N = b->shape[nb - 1];
    Shape oshape = batch;
    oshape.push_back(M);
    oshape.push_back(N);
    Tensor out = empty(oshape, a->dtype);
    bool ta, tb;
    int64_t lda, ldb;
    gemm_layout(M, K, a->strides[na - 2], a->strides[na - 1], ta, lda);
    gemm_layout(K, N, b->strides[nb - 2], b->strides[nb - 1], tb, ldb);
    // Batch strides of a and b as broadcast to `batch`.
    const int64_t nbd = (int64_t)batch.size();
    Shape sa(nbd, 0), sb(nbd, 0), so(nbd, 0);
    for (int64_t i = 0; i < nbd; ++i) {
        int64_t ia = i - (nbd - (na - 2)), ib = i - (nbd - (nb - 2));
        if (ia >= 0 && a->shape[ia] != 1) sa[i] = a->strides[ia];
        if (ib >= 0 && b->shape[ib] != 1) sb[i] = b->strides[ib];
        so[i] = out->strides[i];
    }
    SPAD_FLOAT(a->dtype, T, {
        const T *pa = a->data<T>(), *pb = b->data<T>();
        T *po = out->data<T>();
        auto one = [&](int64_t oo, int64_t ao, int64_t bo) {
            gemm(ta, tb, M, N, K, T(1), pa + ao, lda, pb + bo, ldb, T(0), po + oo, N);
        };
        if (nbd == 0)
            one(0, 0, 0);
        else
            nd_runs(batch, so.data(), sa.data(), sb.data(),
                    [&](int64_t oo, int64_t ao, int64_t bo, int64_t n, int64_t s0, int64_t s1, int64_t s2) {
                        for (int64_t i = 0; i < n; ++i) one(oo + i * s0, ao + i * s1, bo + i * s2);
                    });
    });
    return out;
}

Tensor matmul(const Tensor &a, const Tensor &b) {
    check_same_dtype("matmul", a, b);
    SPAD_CHECK(a->ndim() >= 1 && b->ndim() >= 1, ValueError, "matmul: both operands need at least one dimension, got ",
               shape_str(a->shape), " and ", shape_str(b->shape));
    if (a->ndim() == 1) {
        // (K,) @ (..., K, N) drops the K row axis; (K,) @ (K,) is a 0-d dot product.
        Shape s = b->shape;
        if (b->ndim() >= 2)
            s.erase(s.end() - 2);
        else
            s.clear();
        return reshape(matmul(reshape(a, {1, a->shape[0]}), b), s);
    }
    if (b->ndim() == 1) {
        Shape s = a->shape;
        s.pop_back();
        return reshape(matmul(a, reshape(b, {b->shape[0], 1})), s);
    }
    const int64_t na = a->ndim(), nb = b->ndim();
    SPAD_CHECK(a->shape[na - 1] == b->shape[nb - 2], ValueError, "matmul: shapes ", shape_str(a->shape), " and ",
               shape_str(b->shape), " are not aligned: ", a->shape[na - 1], " (dim ", na - 1, ") != ",
               b->shape[nb - 2], " (dim ", nb - 2, ")");
    Shape ba(a->shape.begin(), a->shape.end() - 2), bb(b->shape.begin(), b->shape.end() - 2);
    Shape batch;
    try {
        batch = broadcast_shapes("matmul", ba, bb);
    } catch (const ValueError &) {  // name the operands, not just their batch parts
        throw ValueError(str("matmul: batch dimensions of shapes ", shape_str(a->shape), " and ",
                             shape_str(b->shape), " cannot be broadcast together"));
    }
    Tensor out = matmul_kernel(a, b, batch);
    auto node = make_node(OpKind::MATMUL, {&a, &b});
    if (node) {
        // Under a policy, the operand saved only for a 2-D weight's gradient is a layer
        // input like linear's (sampling/sampling.h): x @ W keeps x's rows as examples, W @ x keeps x's
        // columns (the rows of x^T). at.i0 bit 0 / bit 1 marks saved[0] / saved[1] as such.
        const bool pol = active_policy() != nullptr;
        if (node->needs(1)) {
            if (pol && is_weight(b) && !lives_anyway(a)) {
                NoGradGuard ng;
                pack_weight_input(*node, node->saved[0], reshape(a, {-1, a->shape[na - 1]}), b);
                node->at.i0 |= 1;
            } else {
                node->saved[0].pack_exact(a);
            }
        }
        if (node->needs(0)) {
            if (pol && is_weight(a) && !lives_anyway(b)) {
                NoGradGuard ng;
                pack_weight_input(*node, node->saved[1], reshape(transpose(b, -1, -2), {-1, b->shape[nb - 2]}), a);
                node->at.i0 |= 2;
            } else {
                node->saved[1].pack_exact(b);
            }
        }
    }
    attach(out, node);
    return out;
}
}  // namespace ops
using namespace ops;
// dW = x^T g from the payload pack_weight_input() made: sampled, or the exact input.
static Tensor weight_input_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape) {
    if (is_sampled(slot)) return sampled_weight_grad(n, slot, g2d, wshape);
    const Tensor &x = slot.get(op_name(n.op));
    note_exact_read(slot, x, g2d);
    return matmul(transpose(x, 0, 1), g2d);
}

void backward_MATMUL(Node &n, const Tensor &g, Tensor *gin) {
    if (n.needs(0)) {
        const Shape &ws = n.in_shape[0];
        if (n.at.i0 & 2)  // W @ x: dW^T = (x^T rows)^T (g^T rows), from the payload
            gin[0] = contiguous(transpose(
                weight_input_grad(n, n.saved[1], reshape(transpose(g, -1, -2), {-1, ws[0]}), {ws[1], ws[0]}), 0, 1));
        else
            gin[0] = sum_to(matmul(g, transpose(n.saved[1].get("matmul"), -1, -2)), ws);
    }
    if (n.needs(1)) {
        const Shape &ws = n.in_shape[1];
        if (n.at.i0 & 1) {  // x @ W: dW = x^T g over all rows of the batch dimensions
            const Tensor g2 = reshape(g, {-1, ws[1]});
            // dx is done: W may be updated now (Note [Implicit leaf gradients] in tape.h)
            if (std::unique_ptr<ImplicitGrad> dW = implicit_weight_grad(n, 1, n.saved[0], g2, ws, 0))
                apply_implicit(n, 1, *dW);
            else
                gin[1] = weight_input_grad(n, n.saved[0], g2, ws);
        } else {
            gin[1] = sum_to(matmul(transpose(n.saved[0].get("matmul"), -1, -2), g), ws);
        }
    }
}
namespace ops {

Tensor linear(const Tensor &x, const Tensor &W, const Tensor &b) {
    check_same_dtype("linear", x, W);
    SPAD_CHECK(W->ndim() == 2 && x->ndim() >= 1 && x->shape.back() == W->shape[0], ValueError,
               "linear: input of shape ", shape_str(x->shape), " does not match weight of shape ",
               shape_str(W->shape), " (expected input (..., ", W->ndim() == 2 ? W->shape[0] : -1, "))");
    const int64_t in = W->shape[0], outf = W->shape[1];
    const int64_t R = in ? x->numel() / in : 0;
    if (b) {
        check_same_dtype("linear", x, b);
        SPAD_CHECK(b->ndim() == 1 && b->shape[0] == outf, ValueError, "linear: bias of shape ", shape_str(b->shape),
                   " does not match weight of shape ", shape_str(W->shape), " (expected (", outf, ",))");
    }
    Tensor x2 = contiguous(x);
    Shape oshape = x->shape;
    oshape.back() = outf;
    Tensor w = gemmable(W);
    bool tw;
    int64_t ldw;
    gemm_layout(in, outf, w->strides[0], w->strides[1], tw, ldw);
    // Save first: then, if nothing (not even the tape) needs x any more, y overwrites x's
    // rows as they are consumed (Note [Buffer reuse] in reuse.h).
    std::shared_ptr<Node> node = b ? make_node(OpKind::LINEAR, {&x, &W, &b}) : make_node(OpKind::LINEAR, {&x, &W});
    if (node) {
        node->at.i0 = R;
        if (node->needs(1)) pack_weight_input(*node, node->saved[0], reshape(x, {R, in}), W);
        if (node->needs(0)) node->saved[1].pack_exact(W);
    }
    // Only when y fills at least half of x's buffer: a narrow y (logits) in a wide buffer would
    // keep the whole buffer alive as long as y lives.
    if (outf <= in && 2 * outf >= in && R > 0 && in_place_pays(R, in, W->shape) && reusable(x2, x2 == x ? 1 : 0)) {
        Tensor bc = b ? contiguous(b) : Tensor();
        gemm_rows_in_place(x2->dtype, x2->raw(), R, in, outf, w->raw(), tw, ldw, bc ? bc->raw() : nullptr);
        x2->storage->version++;
        Tensor out = view(x2, oshape, contiguous_strides(oshape), 0);
        attach(out, node);
        return out;
    }
    Tensor out = empty(oshape, x->dtype);
    SPAD_FLOAT(x->dtype, T, {
        T *o = out->data<T>();
        T beta = 0;
        if (b) {
            Tensor bc = contiguous(b);
            const T *pb = bc->data<T>();
            for (int64_t r = 0; r < R; ++r) std::copy(pb, pb + outf, o + r * outf);
            beta = 1;
        }
        gemm(false, tw, R, outf, in, T(1), x2->data<T>(), in, w->data<T>(), ldw, beta, o, outf);
    });
    attach(out, node);
    return out;
}
}  // namespace ops
static void linear_dx(Node &n, const Tensor &g, const Tensor &g2, Tensor *gin);

void backward_LINEAR(Node &n, const Tensor &g, Tensor *gin) {
    const int64_t R = n.at.i0;
    const Shape &ws = n.in_shape[1];
    Tensor g2 = reshape(g, {R, ws[1]});
    // dW and db first: dx may then overwrite g, which the tape hands over as this rule's
    // alone (Note [Buffer reuse] in reuse.h); dx = g W^T row by row fits when in <= out.
    // A dW the weight's in-backward optimizer takes without the dense matrix (Note [Implicit
    // leaf gradients] in tape.h) is applied after dx, which still reads the old W.
    std::unique_ptr<ImplicitGrad> dW;
    if (n.needs(1)) {
        const bool dx_over_g = n.needs(0) && ws[0] <= ws[1] && 2 * ws[0] >= ws[1] && R > 0;
        dW = implicit_weight_grad(n, 1, n.saved[0], g2, ws,
                                  dx_over_g ? R * ws[0] * (int64_t)dtype_size(g->dtype) : 0);
        if (!dW) gin[1] = weight_input_grad(n, n.saved[0], g2, ws);
    }
    if (n.needs(2)) gin[2] = sum(g2, {0}, false);
    if (n.needs(0)) linear_dx(n, g, g2, gin);
    if (dW) apply_implicit(n, 1, *dW);
}

static void linear_dx(Node &n, const Tensor &g, const Tensor &g2, Tensor *gin) {
    const int64_t R = n.at.i0;
    const Shape &ws = n.in_shape[1];
    const Tensor &W = n.saved[1].get("linear");
    // exact dx = g W^T (a sampled g only under the research option placement="everywhere")
    const Tensor gd = n.needs(1) ? output_grad_for_dx(n.saved[0], g2) : g2;
    if (gd == g2 && !grad_enabled() && ws[0] <= ws[1] && 2 * ws[0] >= ws[1] && R > 0 && g2 == g &&
        in_place_pays(R, ws[1], ws) && reusable(g2, 2)) {
        Tensor w = gemmable(W);
        bool tw;
        int64_t ldw;
        gemm_layout(ws[0], ws[1], w->strides[0], w->strides[1], tw, ldw);
        gemm_rows_in_place(g2->dtype, g2->raw(), R, ws[1], ws[0], w->raw(), !tw, ldw, nullptr);
        g2->storage->version++;
        gin[0] = reshape(view(g2, {R, ws[0]}, contiguous_strides({R, ws[0]}), 0), n.in_shape[0]);
        return;
    }
    gin[0] = reshape(matmul(gd, transpose(W, 0, 1)), n.in_shape[0]);
}

}  // namespace spad
