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
void set_grad_complete_hook(const Tensor &leaf, GradHook hook);
bool has_grad_complete_hook(const Tensor &leaf);
bool any_grad_complete_hooks();  // cheap: whether any leaf has a hook at all

// The backward rule of each op, generated from ops.def.
using BackwardFn = void (*)(Node &n, const Tensor &g, Tensor *gin);

}  // namespace spad
