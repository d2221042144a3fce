// sampling/sampling.h — where sampling policies meet the tape. Layering (checked by
// tests/test_layering.py): tensor < saved < node < tape < sampling < ops. Ops call the
// functions below; the sampling code never calls ops.
//
// An op whose saved tensor feeds only a leaf's gradient (the input x of y = x @ W, used
// only for dW = x^T dy; linear, matmul with a 2-D weight on either side, conv2d, a * x with
// a leaf) asks pack_*() to save it. With no active policy this is an exact save. A policy
// instead stores a sampled payload (one type per estimator family, listed below: the kept
// values, the RNG stream that regenerates what need not be stored, and small per-site data
// where a non-uniform distribution needs it) from which sampled_weight_grad()
// computes the dW estimate directly, without densifying x: the work is proportional to
// what was kept. Exact payloads are read by the ops' own exact backward.
//
// Estimators (DESIGN.md §1; n input features, B batch rows, k = keep*n, s = keep*B), and
// the payload family each packs (Note [Sampled payloads] in saved.h; each family owns its
// pack, its weight_grad and the tensors it keeps):
//   RAD_DIFF   per-example uniform feature indices, with replacement, scale n/k
//              -> UniformFeatures (linear.cpp)
//   RAD_BLOCK  the same in blocks of `block` consecutive features: variance (n-block)/k * ...,
//              backward at GEMM-like speed -> BlockPayload (blocks.cpp); narrow layers
//              fall back to UniformFeatures
//   RAD_SAME   feature indices shared by the batch: dW rows = (n/k) x[:,idx]^T dy (GEMM)
//              -> SharedColumnsPayload
//   PROJECT    Rademacher projection: store x R (B x k), dW = R (xR)^T dy / k -> ProjectionPayload
//   CRS        batch rows: top-C by ||x_b||*||dy_b|| (stale dy) + rest drawn ∝ score, weight 1/(s q_b)
//              -> RowPayload
//   BERNOULLI  batch rows kept independently with probability p, weight 1/p -> RowPayload
//   SPAD       per-example feature indices drawn from q = (1-mix) score/sum + mix/n, weight 1/(k q)
//              -> ScoredFeatures (its backward also accumulates the sampled scores)
//   SPAD_MAG   per-example feature paths drawn ∝ |x_bj| (the variance-optimal per-example
//              distribution, known in forward; systematic draws over the |x_b| mass, one
//              uniform per example): each kept entry is sign(x_bj) * ||x_b||_1 / k,
//              so the tape holds a 2-byte signed index per entry + one scale per row, and
//              `keep` buys twice the entries RAD gets for the same bytes (narrow layers)
//              -> MagnitudeFeatures; on wide layers blocks of 16 features drawn ∝ their
//              L2 norm, values scaled and stored -> BlockPayload with stored blocks
//   SPAD_TOPK  biased: the k top-scored features, no reweighting (backprop dropout)
//              -> SharedColumnsPayload with stored indices
// SPAD with exact scoring (sampled_scores=False) saves x exactly on scoring passes; that
// payload's backward refreshes the site's scores (PayloadCtx::scoring).
// conv2d packs PixelPayload (RAD/SPAD) or ExamplePayload (CRS/Bernoulli) (conv.cpp); the
// sampled elementwise factor packs ElementPayload (elementwise.cpp).
// The placement rule (inject once, next to the parameter; dx stays exact) is the
// default; placement="everywhere" also samples dy's columns before dx = dy W^T.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "../conv.h"
#include "../tape.h"

namespace spad {

enum class PolicyKind : uint8_t { EXACT, RAD, CRS, SPAD };
enum class Estimator : uint8_t {
    EXACT, RAD_DIFF, RAD_SAME, PROJECT, CRS, BERNOULLI, SPAD, SPAD_TOPK, SPAD_MAG, RAD_BLOCK
};

struct PolicyConfig {
    PolicyKind kind = PolicyKind::EXACT;
    Estimator estimator = Estimator::EXACT;  // RAD mode / CRS rows / SPAD variant
    double keep = 1.0;
    double deterministic = 0.5;  // CRS: fraction of the s rows kept deterministically
    int64_t refresh = 50;        // SPAD: rescore every `refresh` steps
    bool unbiased = true;        // SPAD
    double mix = 0.1;            // SPAD: defensive mixture weight of the uniform distribution
    double ema = 0.0;            // SPAD: weight of old scores when rescoring (0 = replace)
    bool everywhere = false;     // also sample the dx path (research option)
    bool sampled_scores = true;  // SPAD: score from the sampled passes (no exact scoring passes)
    uint64_t seed = 0;
    int64_t block = 1;           // RAD_BLOCK: features per block
};

// Per injection site (one per weight tensor) state that persists across steps. `mu` guards
// the mutable fields: forward packs read them, backward passes (which run without the GIL,
// possibly on several threads) update them.
struct SiteState {
    PolicyConfig cfg;
    int64_t n = 0;                 // input features
    std::vector<double> score;     // SPAD: per-feature scores (empty until the first scoring pass)
    Tensor q;                      // SPAD: the current distribution (float64, n), shared by payloads
    std::vector<double> dy_norm;   // CRS: last seen ||dy_b|| per batch position
    std::vector<double> acc;       // SPAD (sampled scores): importance-weighted sum of x_bj^2 ||dy_b||^2
    int64_t acc_steps = 0;         //   ... over this many backward passes since the last refresh
    bool rescore = false;          // SPAD: the next backward refreshes the scores
    std::mutex mu;
};

// Note [Policy clock]
//   A policy's step is one forward pass through its sites, whatever the `use` blocks look
//   like. Every payload packed under the policy holds the current step's token; a pack
//   begins a new step when no payload of the current step is alive any more (backward freed
//   them, or the graph was dropped) or when a backward pass has already read one of them
//   (retain_graph). So one `use` around a training loop and one `use` per step see the same
//   steps, and a site used twice in one pass (shared weights) stays in one step.
struct StepToken {
    std::atomic<bool> consumed{false};  // a backward pass read a payload of this step
};

struct Policy {
    PolicyConfig cfg;
    int64_t step = 0;          // forward passes begun under this policy
    uint64_t counter = 0;      // RNG counter: (cfg.seed, counter) is unique per payload
    int64_t visits = 0;        // site packs recorded under this policy (use() warns when none)
    std::unordered_map<const Storage *, std::shared_ptr<SiteState>> sites;
    std::weak_ptr<StepToken> current;
    // Per-site keep overrides (weight storage -> keep in (0, 1]), set by the memory-budget
    // solver (spad/budget.py); other sites use cfg.keep. Applied while a site packs.
    std::unordered_map<const Storage *, double> site_keep;
    mutable std::mutex mu;     // guards everything above: one policy may be active on several threads
    explicit Policy(PolicyConfig c);
    // Called (under mu) by every pack: the current step's token, beginning a new step if due.
    std::shared_ptr<StepToken> enter_step();
    int64_t upcoming_step() const;  // the step the next pack will belong to
    bool scoring_step() const;      // does the current step keep exact inputs to rescore?
    bool scoring_step(int64_t s) const;
    int64_t state_bytes() const;    // persistent per-site state (scores, q, stale norms)
};

// The active policy (thread-local); null means exact.
void set_active_policy(const std::shared_ptr<Policy> &p);
const std::shared_ptr<Policy> &active_policy();

// A backward pass read this payload (of any kind, packed under a policy): the policy's
// next pack begins a new step. Ops call it for exact payloads; sampled ones call it themselves.
void note_read(const SavedTensor &slot);
inline bool is_sampled(const SavedTensor &slot) { return slot.kind == SaveKind::SAMPLED; }

// Linear layers and matmuls with a 2-D weight (x2d: rows = examples).
void pack_weight_input(Node &n, SavedTensor &slot, const Tensor &x2d, const Tensor &W);
// dW estimated from a sampled payload (is_sampled(slot)).
Tensor sampled_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape);
// The same dW in implicit form (Note [Implicit leaf gradients] in tape.h), for input `input`
// of n, a weight whose hook takes one: row-sparse (RAD mode="same", SPAD_TOPK; the compact
// rows are computed now) or added into the weight from g later (per-feature estimators, for
// plain SGD; g must then stay alive, which costs `g_kept_bytes`: what dx written over g would
// have saved, so this form is chosen only when dW is larger). Null when none applies: then
// the rule computes dW as usual. Otherwise the rule computes dx (it must not overwrite g
// unless the form is row-sparse: it holds a reference, so reusable(g) says no) and then
// calls apply_implicit(n, input, *result).
std::unique_ptr<ImplicitGrad> implicit_weight_grad(Node &n, size_t input, const SavedTensor &slot, const Tensor &g2d,
                                                   const Shape &wshape, int64_t g_kept_bytes);
// An exact payload of pack_weight_input was read by the op's exact dW = x^T g: notes the
// read and, on a SPAD scoring pass, refreshes the site's scores from x and g.
void note_exact_read(const SavedTensor &slot, const Tensor &x, const Tensor &g2d);
// The output gradient dx = g W^T is computed from: g itself, unless the payload's policy
// asks for placement="everywhere" (then a column-sampled g).
Tensor output_grad_for_dx(const SavedTensor &slot, const Tensor &g2d);
// The block RAD(mode="different", block=...) uses for a layer keeping k values per example
// (1: single features).
int64_t rad_block_size(int64_t block, int64_t k);

// Elementwise ops (model-agnostic sampling): `other` is saved only for the gradient of a
// leaf parameter, so it may be stored Bernoulli-sampled (kept values + seed, weight 1/p).
// Packs exactly when no policy is active (or keep = 1).
void pack_leaf_factor(SavedTensor &slot, const Tensor &other);
Tensor unpack_leaf_factor(const SavedTensor &slot, const Shape &shape, const char *op);  // is_sampled(slot)

// conv2d: the saved tensor is the input x (N, C, H, W), never its im2col matrix. A
// policy keeps a sampled subset of x instead: spatial positions (pixels, all channels) for
// RAD/SPAD, whole examples for CRS (sampling/conv.cpp). g: the output gradient (N, C_out, Ho, Wo).
void pack_conv_input(Node &n, SavedTensor &slot, const Tensor &x, const Tensor &w, const ConvGeom &geom);
Tensor sampled_conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom);

}  // namespace spad
