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

// The backward rule of each op, generated from ops.def.
using BackwardFn = void (*)(Node &n, const Tensor &g, Tensor *gin);

}  // namespace spad
