// lower.h — the lowered, tape-free execution of a recorded step (Note [Lowered replay]).
//
// Note [Lowered replay]
//   Replaying records (program.h) calls the core ops, so every replayed step still builds
//   TensorImpls, Storages, tape Nodes and walks the tape: that machinery, not the kernels, is
//   most of a small step. Lowering turns a program into a flat list of kernel calls on raw
//   pointers into one workspace (activations, their gradients, the losses' softmax/residual,
//   at offsets planned from their lifetimes: Lowering::place_workspace in lower.cpp)
//   plus the parameters, their persistent gradient buffers and the optimizer state: no tensor,
//   node or tape per op and no allocation per step. The backward pass is generated at lowering
//   time from the forward kernels' rules (each written like the eager rule: the same gemm calls
//   with the same transpose flags and leading dimensions, the same loop arithmetic), so a
//   lowered step equals the eager and the replayed step bit for bit (tests/test_compile.py).
//   Cheap fusions that keep that: the activation runs in place on the linear layer's output
//   (its backward needs only the output), dW is written by gemm with beta = 0 straight into the
//   parameter's gradient buffer.
//
//   Lowered: linear_chain, linear (2-D weight), relu / tanh / sigmoid, dropout (its mask's RNG
//   counters taken from the global RNG where eager takes them), cross_entropy, mse_loss,
//   a VIEW of an input (integer labels), backward of the loss, clear_grads, policy switches and
//   the optimizer records (called with prebuilt argument lists). Under a sampling policy a
//   linear layer packs its input through the same pack_weight_input() call as eager mode and
//   its backward reads the payload through sampled_weight_grad() / output_grad_for_dx(), so
//   sampled steps (RAD, CRS, SPAD...) lower too, with the eager RNG draws and policy clock
//   (those calls still allocate their payloads). Not lowered (the program replays record by
//   record, Program::lower_note says why): any other op (conv2d, matmul, ...), a
//   value or parameter read by two ops (gradients would accumulate), a gradient not cleared
//   before backward, grad mode or .grad set inside the step.
//   Per call, the lowered path is skipped (the records run instead) when grad mode is off, a
//   parameter of the step has a gradient-complete hook (optimizers in backward), or an input
//   requires grad or is not contiguous.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "../tensor.h"

namespace spad {
namespace replay {

struct Program;
struct Lowered;
struct LoweredDeleter {
    void operator()(Lowered *l) const;
};
using LoweredPtr = std::unique_ptr<Lowered, LoweredDeleter>;

// The lowered form of P, or null with `why` naming the first thing that is not lowered.
LoweredPtr lower(const Program &P, std::string &why);
// Whether this call may take the lowered path (see the Note); `why` says why not.
bool lowered_applies(const Lowered &L, const Program &P, const std::vector<Tensor> &inputs, const char *&why);
// One step. Returns the loss (a 0-d tensor reused by the next step unless someone still
// holds it), or null when the program returns none. Throws what the eager op would throw
// (labels out of range, NaN logits) before any parameter or gradient changes.
Tensor run_lowered(Lowered &L, Program &P, const std::vector<Tensor> &inputs);
std::string lowered_dump(const Lowered &L);
size_t lowered_workspace_bytes(const Lowered &L);
size_t lowered_n_kernels(const Lowered &L);

}  // namespace replay
}  // namespace spad
