// lower_ir.h — the data of a lowered step (lower.h), shared by the lowering pass (lower.cpp)
// and the kernels that run it (lower_exec.cpp).
#pragma once
#include <vector>

#include "../node.h"
#include "lower.h"
#include "program.h"

namespace spad {
namespace replay {

enum class Act : uint8_t { NONE, RELU, TANH, SIGMOID };
enum class NodeKind : uint8_t { LINEAR, ACT, CROSS_ENTROPY, MSE, DROPOUT };

// A value of the lowered step: where its data is, and whether a gradient flows into it.
struct LVal {
    enum Kind : uint8_t { INPUT, CONST, WORK, VIEW } kind = WORK;
    int32_t src = -1;     // INPUT: input index; CONST: program slot; VIEW: base value
    int64_t off = 0;      // WORK: byte offset in the workspace; VIEW: element offset into the base
    Shape shape;
    DType dt = DType::F32;
    bool rg = false;      // a gradient flows into it (it depends on a parameter)
    bool reached = false; // backward from the loss reaches it
    int64_t goff = -1;    // WORK with a gradient: byte offset of the gradient in the workspace
    int32_t param = -1;   // CONST that requires grad: index into Lowered::params
    int32_t uses = 0;     // forward nodes reading it
};

// One forward kernel (its backward is generated from the same fields).
struct LNode {
    NodeKind kind;
    Act act = Act::NONE;   // LINEAR: activation applied in place on the output; ACT: which one
    int32_t a = -1, b = -1, c = -1;  // LINEAR: x, W, bias (-1: none); ACT: x; losses: input, labels / target
    int32_t out = -1;      // output value (the losses write Lowered::loss_t)
    int64_t R = 0, K = 0, N = 0;  // LINEAR: rows, in, out; CROSS_ENTROPY: batch, classes; else numel
    int64_t ws0 = 0, ws1 = 0;     // LINEAR: W's strides (a 2-D weight view is allowed if gemm takes it)
    int64_t aux = -1;      // losses: byte offset of the softmax (CE) / residual (MSE) in the workspace
    int32_t pack = -1;     // LINEAR with a weight that requires grad: its slot in Lowered::packs
    double p = 0;          // DROPOUT: the drop probability
    int32_t rng = -1;      // DROPOUT: its slot in Lowered::drop_rng
};

// What a linear layer saves for dW while a sampling policy is active: the payload eager
// mode's pack_weight_input() makes (sampling/sampling.h), packed and read by the same calls,
// so RNG counters, the policy clock and the estimates are the eager ones. Tensors that alias
// the workspace (x and the output gradient, shaped (rows, features)) are made once.
struct LPack {
    SavedTensor slot;
    Tensor x2d, g2d;  // aliases of the workspace (x2d is rebuilt per call when x is an input)
    bool x_in_ws = false;
};

struct LAction {
    enum Kind : uint8_t { FORWARD, BACKWARD, CALL, SGD, ADAM } kind;
    int32_t idx;  // FORWARD: node; CALL / SGD / ADAM: record
    int32_t list = -1;  // CALL: pointer list; SGD / ADAM: first of its tensor lists
};

struct Lowered {
    std::vector<LVal> vals;
    std::vector<LNode> nodes;
    std::vector<LAction> actions;
    std::vector<LPack> packs;         // per linear layer with a weight that requires grad
    std::vector<std::pair<uint64_t, uint64_t>> drop_rng;  // per dropout: this step's (seed, counter)
    std::shared_ptr<Node> pack_node;  // the LINEAR node the sampling calls name in messages
    std::vector<Tensor> params;       // CONSTs that receive a gradient from the lowered backward
    std::vector<Tensor> grads;        // their persistent gradient tensors (made on first use)
    std::vector<std::vector<Tensor>> lists;              // prebuilt optimizer argument lists
    std::vector<std::vector<const Tensor *>> ptr_lists;  // prebuilt CALL arguments (CONST slots)
    size_t ws_bytes = 0;
    Tensor ws;                        // the workspace (one allocation, made on first run)
    Tensor loss_t;                    // the loss (0-d), reused while nobody else holds it
    int32_t loss_node = -1;
    bool returns_loss = false;
    DType loss_dt = DType::F32;
    std::vector<char *> ptr;          // per value, resolved at each run
    const std::vector<Tensor> *inputs = nullptr;  // of the running call
    const Program *prog = nullptr;
};

// Can a (rows x cols) view with strides (sr, sc) go to gemm directly, and how? The same
// decision as ops/linalg.cpp's gemm_layout (a copy: the lowered calls must pass gemm exactly
// the flags and leading dimensions the eager ops pass, or a BLAS may round differently).
inline bool lowered_gemm_layout(int64_t rows, int64_t cols, int64_t sr, int64_t sc, bool &trans, int64_t &ld) {
    const int64_t c1 = cols > 1 ? cols : 1, r1 = rows > 1 ? rows : 1;
    if ((cols == 1 || sc == 1) && (rows == 1 || sr >= c1)) {
        trans = false;
        ld = rows == 1 ? c1 : sr;
        return true;
    }
    if ((rows == 1 || sr == 1) && (cols == 1 || sc >= r1)) {
        trans = true;
        ld = cols == 1 ? r1 : sc;
        return true;
    }
    return false;
}

}  // namespace replay
}  // namespace spad
