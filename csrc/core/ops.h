// ops.h — the differentiable ops (forward functions). Each records a Node when an input
// requires grad; its backward rule (backward_NAME) sits next to it in ops/*.cpp and its
// saved payload is declared in ops.def.
#pragma once
#include <array>

#include "tape.h"

namespace spad {
namespace ops {

// elementwise (numpy broadcasting for binary ops; both operands must share a dtype)
Tensor add(const Tensor &a, const Tensor &b);
Tensor sub(const Tensor &a, const Tensor &b);
Tensor mul(const Tensor &a, const Tensor &b);
Tensor div(const Tensor &a, const Tensor &b);
Tensor neg(const Tensor &x);
Tensor pow(const Tensor &x, double p);
Tensor exp(const Tensor &x);
Tensor log(const Tensor &x);
Tensor sqrt(const Tensor &x);
Tensor tanh(const Tensor &x);
Tensor sigmoid(const Tensor &x);
Tensor relu(const Tensor &x);
Tensor mask_mul(const Tensor &g, const Tensor &bits);  // g * unpack(bits): ReLU's backward
Tensor mul_scalar(const Tensor &x, double s);
Tensor add_scalar(const Tensor &x, double s);
void add_(const Tensor &dst, const Tensor &src);  // dst += src, no grad (accumulation)

// reductions: axes empty = all; negative axes count from the end
Tensor sum(const Tensor &x, std::vector<int64_t> axes, bool keepdims);
Tensor mean(const Tensor &x, std::vector<int64_t> axes, bool keepdims);
Tensor max(const Tensor &x, std::vector<int64_t> axes, bool keepdims);
Tensor sum_to(const Tensor &g, const Shape &shape);  // undo broadcasting: the one place
Tensor expand(const Tensor &x, const Shape &shape);  // broadcast_to, differentiable

// shape ops
Tensor reshape(const Tensor &x, Shape shape);  // one -1 allowed
Tensor permute(const Tensor &x, std::vector<int64_t> perm);
Tensor transpose(const Tensor &x, int64_t a, int64_t b);
Tensor take(const Tensor &x, const Tensor &flat_idx, const Shape &out_shape);  // x.flat[idx]
Tensor scatter_add(const Tensor &g, const Tensor &flat_idx, const Shape &shape);
Tensor concat(const std::vector<Tensor> &xs, int64_t axis);

// linear algebra
Tensor matmul(const Tensor &a, const Tensor &b);
Tensor linear(const Tensor &x, const Tensor &W, const Tensor &b);  // x @ W + b, b may be null
// A run of linear layers, each optionally followed by ReLU, recorded as the same nodes as
// separate calls; intermediates are reused in place where the tape allows (ops/chain.cpp).
struct ChainLayer {
    Tensor W, b;  // b may be null
    bool relu = false;
};
Tensor linear_chain(const Tensor &x, const std::vector<ChainLayer> &layers);

// losses and normalizers
Tensor softmax(const Tensor &x, int64_t axis);
Tensor log_softmax(const Tensor &x, int64_t axis);
Tensor cross_entropy(const Tensor &logits, const Tensor &labels);  // labels int64 (B,)
Tensor mse_loss(const Tensor &pred, const Tensor &target);
// The losses' kernels on raw contiguous data (T = float or double), shared by the ops above,
// their backward rules and the lowered replay (replay/lower.h), which must compute the same bits.
// cross_entropy: P = row softmax of x (B x C), returns the mean of logsumexp - x[label].
template <class T> T cross_entropy_kernel(const T *x, const int64_t *labels, int64_t B, int64_t C, T *P);
// Its gradient for an upstream gradient g: out = P * (g / B), minus g / B at each label.
template <class T> void cross_entropy_grad_kernel(const T *P, const int64_t *labels, int64_t B, int64_t C, double g,
                                                  T *out);
// mse_loss of the residual d = pred - target: the mean of d^2, accumulated in double.
template <class T> T mean_square_kernel(const T *d, int64_t n);

// convolution, pooling, dropout on NCHW tensors (ops/conv.cpp)
Tensor conv2d(const Tensor &x, const Tensor &w, const Tensor &b, std::array<int64_t, 2> stride,
              std::array<int64_t, 2> padding);  // w (C_out, C_in, kh, kw), b (C_out,) or null
Tensor max_pool2d(const Tensor &x, int64_t k);   // kernel k, stride k, no padding
Tensor avg_pool2d(const Tensor &x, int64_t k);
Tensor dropout(const Tensor &x, double p, bool training);  // inverted; mask from the global RNG
// Its arithmetic on raw pointers (the lowered replay calls the same loop): o = x * keep / (1 - p)
// with the keep mask of (seed, counter); dropout_counter(n) takes the counters n elements use
// from the global RNG, as the op does.
template <class T> void dropout_kernel(const T *x, T *o, int64_t n, double p, uint64_t seed, uint64_t counter);
uint64_t dropout_counter(int64_t n);

// helpers shared by op files
int64_t norm_axis(const char *op, int64_t axis, int64_t ndim);
void check_same_dtype(const char *op, const Tensor &a, const Tensor &b);

}  // namespace ops
}  // namespace spad
