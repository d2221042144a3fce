// tape.h — recording and the reverse sweep.
//
//   Tensor W = ...; W->requires_grad = true;      // a leaf
//   Tensor y = ops::matmul(x, W);                  // records a MATMUL node (saves x)
//   Tensor L = ops::sum(y, {}, false);             // records SUM (saves nothing)
//   backward(L, nullptr, false, false);            // W->grad = x^T . ones
//
// backward() collects the nodes reachable from the root with an explicit stack, sorts
// them by seq (descending) and runs each node's rule once, accumulating incoming
// gradients per node in creation order. Saved payloads are released as soon as their
// node has run, unless retain_graph. With create_graph the rules run with grad mode on,
// so the backward pass is itself recorded (double backward, Hessian-vector products).
#pragma once
#include <functional>

#include "node.h"

namespace spad {

bool grad_enabled();
void set_grad_enabled(bool on);
struct NoGradGuard {
    bool prev;
    NoGradGuard() : prev(grad_enabled()) { set_grad_enabled(false); }
    ~NoGradGuard() { set_grad_enabled(prev); }
};

// A node for `op` with the given inputs, or nullptr when no input needs a gradient
// (or grad mode is off): then the op saves nothing at all.
std::shared_ptr<Node> make_node(OpKind op, std::initializer_list<const Tensor *> inputs);
std::shared_ptr<Node> make_node(OpKind op, const std::vector<Tensor> &inputs);
void attach(const Tensor &out, const std::shared_ptr<Node> &node);
uint64_t next_seq();  // creation order of a node made outside make_node

// Saved output i of node n; under create_graph it is re-linked to n so that the
// backward rule that uses it is itself differentiable.
Tensor saved_output(Node &n, int i);

void backward(const Tensor &root, const Tensor &grad, bool retain_graph, bool create_graph);

// Gradient-complete hooks (like PyTorch's register_post_accumulate_grad_hook): backward()
// calls leaf's hook, with grad mode off, as soon as the reverse sweep has delivered the last
// contribution to leaf->grad that this pass will make, i.e. once every reachable node with an
// edge to the leaf has run. A pass that delivers nothing to the leaf does not call it. The
// hook may update the leaf in place and drop its grad (optimizers with in_backward=True):
// every node that reads the leaf has run by then. One hook per leaf; an empty function
// removes it. The registry holds the leaf weakly, so a dead tensor's hook is never called.
using GradHook = std::function<void(const Tensor &leaf)>;

// Note [Implicit leaf gradients]
//   A sampled weight gradient can often be applied without ever holding the dense dW: when
//   it is row-sparse (RAD mode="same", biased SPAD: only the k sampled input features' rows
//   are non-zero) as a compact (rows, k x m) pair, and for plain SGD (p -= lr * dW, linear in
//   dW) of any per-feature estimator by adding lr * dW straight into p. A hook that can
//   consume such forms says so (GradForms); a backward rule that can produce one asks
//   implicit_grad_wanted() and, if so, hands the gradient to apply_implicit() instead of
//   returning it in gin: the hook then runs at once, inside the rule, and the consumer reads
//   the gradient through implicit_grad(leaf) (the optimizers in optim.cpp do). The rule must
//   have finished reading the leaf's value (dx = g W^T) before it calls apply_implicit().
//   Only a leaf with no .grad yet, that this pass reaches through that one edge, and only
//   without create_graph, qualifies: then the rule's contribution is the whole gradient.
//   A hook that leaves the gradient unread gets it written out densely into leaf->grad.
enum GradForms : unsigned {
    GRAD_DENSE = 0,     // leaf->grad only (every hook understands it)
    GRAD_ROWS = 1,      // ImplicitGrad::rows(): the non-zero rows of a 2-D gradient, compactly
    GRAD_ADD = 2,       // ImplicitGrad::add_to(): dst += alpha * grad, no dense temporary
};
struct ImplicitGrad {
    virtual ~ImplicitGrad() = default;
    virtual Shape shape() const = 0;
    virtual DType dtype() const = 0;
    // Row-sparse form (GRAD_ROWS): distinct row indices (I64, u) and their values (u x m); the
    // gradient is zero in every other row. False if this gradient has no such form.
    virtual bool rows(Tensor &idx, Tensor &vals) const = 0;
    // dst += alpha * grad (dst: contiguous, this shape and dtype). Always available.
    virtual void add_to(const Tensor &dst, double alpha) const = 0;
    // False if a value the gradient is made of is NaN or inf (an inf from overflowing sums of
    // finite values is not detected).
    virtual bool all_finite() const = 0;
    Tensor dense() const;  // the gradient written out (fallback for a consumer of GRAD_DENSE)
};

void set_grad_complete_hook(const Tensor &leaf, GradHook hook, unsigned forms = GRAD_DENSE);
bool has_grad_complete_hook(const Tensor &leaf);
bool any_grad_complete_hooks();  // cheap: whether any leaf has a hook at all

// Inside a backward rule of node n: the forms input i's gradient may be handed over in
// (GRAD_DENSE = 0: return it in gin[i] as usual).
unsigned implicit_grad_wanted(const Node &n, size_t i);
// Runs input i's gradient-complete hook with `g` as its gradient (Note [Implicit leaf gradients]);
// the rule leaves gin[i] empty.
void apply_implicit(const Node &n, size_t i, const ImplicitGrad &g);
// Inside a gradient-complete hook: the implicit gradient of `leaf` being applied, or null
// (then the gradient is leaf->grad). Reading it counts as consuming it.
const ImplicitGrad *implicit_grad(const Tensor &leaf);

// The backward rule of each op, generated from ops.def.
using BackwardFn = void (*)(Node &n, const Tensor &g, Tensor *gin);

}  // namespace spad
