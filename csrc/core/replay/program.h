// program.h — compiled replay: a training step recorded once as a list of core-op records,
// replayed by a C++ loop that calls the same core functions (see docs/compile.md).
//
// Recording works at the level of the core entry points the Python bindings call (ops::*,
// backward, the fused optimizer steps, clear_grads, policy switches). Each call made while a
// Recorder is active appends a Record {op, input slots, int/double attributes, output slot}.
// Tensors map to slots by identity: the step's inputs are slots 0..n-1; a tensor no recorded
// op produced and that is not an input (a parameter, optimizer state, a constant) is captured
// by reference, so replay sees its current value (parameters update in place). A tensor that
// shares an input's (or an intermediate's) data, e.g. labels re-wrapped by F.cross_entropy,
// becomes a VIEW record of that slot, so it follows the new input at replay.
//
// Replay calls exactly the functions eager mode called, in the same order: sampling
// policies, RNG counters and the tape behave as in eager mode, so replay equals eager
// bit for bit. Slots are released at their last use (never later than eager did, which is
// what makes the arena plan of plan.h safe).
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "../tensor.h"
#include "lower.h"

namespace spad {
struct Policy;
namespace replay {

// Op ids. Stable numbers: they are written to plan files (docs/plan_format.md), so new ops
// go at the end, before COUNT_.
enum class Op : int32_t {
    ADD = 0, SUB, MUL, DIV, NEG, POW, EXP, LOG, SQRT, TANH, SIGMOID, RELU,      // 0-11
    SUM, MEAN, MAX, RESHAPE, PERMUTE, TAKE, CONCAT, EXPAND,                  // 12-19
    MATMUL, LINEAR, SOFTMAX, LOG_SOFTMAX, CROSS_ENTROPY, MSE,                // 20-25
    CONV2D, MAX_POOL2D, AVG_POOL2D, DROPOUT, DETACH, CONTIGUOUS,            // 26-31
    BACKWARD, CLEAR_GRADS, SET_GRAD, SGD, ADAGRAD, RMSPROP, ADAM, ASSIGN,   // 32-39
    BUMP_VERSION, SET_GRAD_ENABLED, SET_POLICY, BEGIN_STEP, VIEW, GET_GRAD, // 40-45
    LINEAR_CHAIN,                                                           // 46
    COUNT_
};
const char *op_name(Op op);

// One recorded call. Tensor arguments are slot ids (-1: a null tensor, e.g. no bias);
// list arguments are flattened into `in` with their lengths in `ints` (see exec()).
struct Record {
    Op op;
    std::vector<int32_t> in;
    std::vector<int64_t> ints;
    std::vector<double> dbls;
    int32_t out = -1;
};

enum class SlotKind : uint8_t { INPUT, CONST, VALUE };

// Runs one op on concrete tensors: the single place that maps an op id and its flattened
// arguments to a core call, used by the recording wrappers and by replay alike.
// `policies` resolves the policy index of SET_POLICY / BEGIN_STEP.
Tensor exec(Op op, const Tensor *const *t, size_t nt, const int64_t *i, size_t ni, const double *d, size_t nd,
            const std::vector<std::shared_ptr<Policy>> &policies);

struct ArenaPlan;  // plan.h
struct ArenaMem;
class AllocTrace;

// A recorded step.
struct Program {
    std::vector<Record> records;
    std::vector<SlotKind> kinds;       // per slot
    std::vector<Tensor> consts;        // per slot: the captured tensor (CONST), else null
    std::vector<Shape> in_shapes;      // per input slot
    std::vector<DType> in_dtypes;
    std::vector<std::shared_ptr<Policy>> policies;
    int32_t n_inputs = 0;
    int32_t loss = -1;                 // slot returned by the step (-1: none)
    std::vector<std::vector<int32_t>> release_after;  // per record: slots dead after it
    std::vector<int32_t> dead_inputs;  // input slots no record reads (released at once)
    std::shared_ptr<ArenaPlan> plan;   // may be null (no planned allocation)
    bool plan_dropped = false;         // an allocation did not match the plan: heap from now on
    bool plan_verified = true;         // false for a loaded plan until one step matched its sizes
    int64_t replays = 0;
    // Lowered execution (lower.h): tried at the first replay; runs every replay it applies to.
    bool lower_enabled = true;     // false: always replay record by record
    int8_t lower_state = 0;        // 0 not tried yet, 1 lowered, -1 not lowerable (lower_note says why)
    std::string lower_note;        // why the program (or the last call) did not take the lowered path
    int64_t lowered_runs = 0;
    LoweredPtr lowered;

    Program() = default;
    Program(const Program &) = delete;
    Program &operator=(const Program &) = delete;
    ~Program();

    // Binds `inputs` (shapes and dtypes already checked), runs every record, returns the loss
    // slot's tensor (or null). Throws whatever a core op throws; slots are released either way.
    // Takes the lowered path when the program is lowered and the call allows it.
    Tensor run(const std::vector<Tensor> &inputs);
    Tensor run_records(const std::vector<Tensor> &inputs);  // always record by record
    void finalize();  // computes release_after / dead_inputs from the records
    std::string dump() const;
    size_t n_slots() const { return kinds.size(); }

   private:
    std::vector<Tensor> slots_;
    std::vector<const Tensor *> ptrs_;
    ArenaMem *mem_ = nullptr;
};

// The active recorder of this thread (null when not recording).
class Recorder;
Recorder *active_recorder();

class Recorder {
   public:
    explicit Recorder(const std::vector<Tensor> &inputs);
    ~Recorder();
    // Records `op` on the given tensors (and a flattened tensor list, if any) and runs it.
    Tensor call(Op op, std::initializer_list<const Tensor *> ts, std::initializer_list<int64_t> is = {},
                std::initializer_list<double> ds = {});
    Tensor call_list(Op op, const std::vector<const Tensor *> &ts, std::vector<int64_t> is,
                     std::vector<double> ds);
    int32_t policy_index(const std::shared_ptr<Policy> &p);
    // Slot of a tensor the recorder knows (input, value or alias); -1 if unknown.
    int32_t known_slot(const Tensor &t) const;
    bool is_value(const Tensor &t) const;     // produced by a recorded op or an input
    bool is_computed(const Tensor &t) const;  // produced by a recorded op
    // Ends recording: `loss` must be a recorded value (or null). Returns the program and
    // fills `warnings` (inputs that reach nothing, ...).
    std::shared_ptr<Program> finish(const Tensor &loss, std::vector<std::string> &warnings);
    void abort();

   private:
    int32_t slot_for(const Tensor &t);
    int32_t new_slot(SlotKind k, const Tensor &t);

    std::shared_ptr<Program> prog_;
    std::unordered_map<const TensorImpl *, int32_t> slot_of_;
    std::vector<std::weak_ptr<TensorImpl>> live_;  // per slot (VALUE/INPUT); detects reuse of addresses
    std::unique_ptr<AllocTrace> trace_;
    bool active_ = true;
};

}  // namespace replay
}  // namespace spad
