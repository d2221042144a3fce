// node.h — Edge and Node: one record on the tape per differentiable op call.
//
// Nodes are appended in creation order; `seq` is a global, strictly increasing counter,
// so sorting reachable nodes by seq (descending) is a valid reverse topological order and
// makes gradient accumulation order deterministic. A Node is owned by the tensors it
// produced (shared_ptr), so a graph the user drops is freed at once; teardown of long
// chains is iterative (see release_edges) so nothing recurses.
#pragma once
#include <array>
#include <vector>

#include "saved.h"

namespace spad {

enum class OpKind : uint16_t {
#define SPAD_OP(name, saves) name,
#include "ops.def"
#undef SPAD_OP
    COUNT_
};
const char *op_name(OpKind k);
const char *op_saves(OpKind k);

// Where a gradient flows: into a producer node, or into a leaf's .grad.
struct Edge {
    std::shared_ptr<Node> node;
    Tensor leaf;
    bool valid() const { return node || leaf; }
};

// Typed enough for every op family; each op documents which fields it uses.
struct OpAttrs {
    std::vector<int64_t> ints;  // axes, permutation, pads ...
    double scalar = 0;          // pow exponent, dropout p, mse scale ...
    int64_t i0 = 0;             // linear: rows; matmul: which saved operand is a weight input ...
    bool flag = false;          // keepdims ...
};

struct Node : std::enable_shared_from_this<Node> {
    OpKind op;
    uint64_t seq = 0;
    std::vector<Edge> next;             // one per differentiable input
    std::vector<Shape> in_shape;        // shapes of the inputs (for unbroadcast)
    Shape out_shape;
    DType dtype = DType::F32;
    std::array<SavedTensor, 3> saved;
    OpAttrs at;
    // Transient state of a backward pass.
    Tensor grad_acc;
    uint64_t visit = 0;
    bool released = false;

    bool needs(size_t i) const { return i < next.size() && next[i].valid(); }
    ~Node();
};

}  // namespace spad
