// sampler.h — where sampling policies meet the tape.
//
// An op whose saved tensor feeds only a parameter's gradient (the input x of
// y = x @ W, used only for dW = x^T dy) asks pack_weight_input() to save it. With no
// active policy this is an exact save. A policy instead stores a sampled payload
// (values + RNG seed/counter + scale, plus small per-site data where a non-uniform
// distribution needs it) from which weight_grad() computes the dW estimate directly,
// without densifying x: the work is proportional to what was kept.
//
// Estimators (DESIGN.md §1; n input features, B batch rows, k = keep*n, s = keep*B):
//   RAD_DIFF   per-example uniform feature indices, with replacement, scale n/k
//   RAD_BLOCK  the same in blocks of `block` consecutive features: variance (n-block)/k * ...,
//              backward at GEMM-like speed (sampler_block.cpp)
//   RAD_SAME   feature indices shared by the batch: dW rows = (n/k) x[:,idx]^T dy (GEMM)
//   PROJECT    Rademacher projection: store x R (B x k), dW = R (xR)^T dy / k
//   CRS        batch rows: top-C by ||x_b||*||dy_b|| (stale dy) + rest drawn ∝ score, weight 1/(s q_b)
//   BERNOULLI  batch rows kept independently with probability p, weight 1/p
//   SPAD       per-example feature indices drawn from q = (1-mix) score/sum + mix/n, weight 1/(k q)
//   SPAD_MAG   per-example feature paths drawn ∝ |x_bj| (the variance-optimal per-example
//              distribution, known in forward; stratified over the k quantiles of the |x_b|
//              mass): each kept entry is sign(x_bj) * ||x_b||_1 / k,
//              so the tape holds a 2-byte signed index per entry + one scale per row, and
//              `keep` buys twice the entries RAD gets for the same bytes
//   SPAD_TOPK  biased: the k top-scored features, no reweighting (backprop dropout)
//   SCORING    an exact save whose backward pass refreshes a site's feature scores
//              (SPAD with exact scoring; by default SPAD scores from its sampled passes)
// The placement rule (inject once, next to the parameter; dx stays exact) is the
// default; placement="everywhere" also samples dy's columns before dx = dy W^T.
#pragma once
#include <memory>
#include <unordered_map>

#include "conv.h"
#include "node.h"

namespace spad {

enum class PolicyKind : uint8_t { EXACT, RAD, CRS, SPAD };
enum class Estimator : uint8_t {
    EXACT, RAD_DIFF, RAD_SAME, PROJECT, CRS, BERNOULLI, SPAD, SPAD_TOPK, SCORING, ELEMENT, SPAD_MAG, RAD_BLOCK
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

// Per injection site (one per weight tensor) state that persists across steps.
struct SiteState {
    PolicyConfig cfg;
    int64_t n = 0;                 // input features
    std::vector<double> score;     // SPAD: per-feature scores (empty until the first scoring pass)
    Tensor q;                      // SPAD: the current distribution (float64, n), shared by payloads
    std::vector<double> dy_norm;   // CRS: last seen ||dy_b|| per batch position
    std::vector<double> acc;       // SPAD (sampled scores): importance-weighted sum of x_bj^2 ||dy_b||^2
    int64_t acc_steps = 0;         //   ... over this many backward passes since the last refresh
    bool rescore = false;          // SPAD: the next backward refreshes the scores
};

struct Policy {
    PolicyConfig cfg;
    int64_t step = 0;          // forward passes begun under this policy
    uint64_t counter = 0;      // RNG counter: (cfg.seed, counter) is unique per payload
    std::unordered_map<const Storage *, std::shared_ptr<SiteState>> sites;
    // Per-site keep overrides (weight storage -> keep in (0, 1]), set by a memory-budget solver
    // (spad/budget.py); sites without one use cfg.keep. Applied while a site's input is packed.
    std::unordered_map<const Storage *, double> site_keep;
    explicit Policy(PolicyConfig c);
    bool scoring_step() const;  // does the current step keep exact inputs to rescore?
    int64_t state_bytes() const;  // persistent per-site state (scores, q, stale norms)
};

// The active policy (thread-local); null means exact. begin_step() is called once per
// forward pass recorded under the policy.
void set_active_policy(const std::shared_ptr<Policy> &p);
const std::shared_ptr<Policy> &active_policy();
void begin_step(Policy &p);

// Scoped: cfg.keep is the site's override (if any) while the input of weight W is packed, so
// every estimator reads one keep. A no-op without a policy or an override.
struct SiteKeepScope {
    Policy *pol = nullptr;
    double prev = 1.0;
    SiteKeepScope(Policy *p, const Tensor &W);
    ~SiteKeepScope();
};

void pack_weight_input(Node &n, SavedTensor &slot, const Tensor &x2d, const Tensor &W);
Tensor weight_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Shape &wshape);
// dx for linear: exact (g W^T) unless the payload asks for placement="everywhere".
Tensor input_grad(Node &n, const SavedTensor &slot, const Tensor &g2d, const Tensor &W);

// Elementwise ops (model-agnostic sampling): `other` is saved only for the gradient of a
// leaf parameter, so it may be stored Bernoulli-sampled (kept values + seed, weight 1/p).
bool pack_leaf_factor(SavedTensor &slot, const Tensor &other);
Tensor unpack_leaf_factor(const SavedTensor &slot, const Shape &shape, const char *op);

// conv2d: the saved tensor is the input x (N, C, H, W), never its im2col matrix. A
// policy keeps a sampled subset of x instead: spatial positions (pixels, all channels) for
// RAD/SPAD, whole examples for CRS (sampler_conv.cpp). g: the output gradient (N, C_out, Ho, Wo).
void pack_conv_input(Node &n, SavedTensor &slot, const Tensor &x, const Tensor &w, const ConvGeom &geom);
Tensor conv_weight_grad(Node &n, const SavedTensor &slot, const Tensor &g, const ConvGeom &geom);

}  // namespace spad
