/* spad.h — the C API of spad: reverse-mode autodiff without Python, for devices and
 * for embedding. This is the only public C header; it is C99-clean and C++-safe.
 *
 * A worked example: f(x) = a*x^2 + b, and df/dx at x = 2.
 *
 *     spad_ctx_t *ctx;
 *     spad_tensor_t *a, *b, *x, *x2, *ax2, *f, *dx;
 *     const int64_t one[1] = {1};
 *     const double va = 3, vb = 4, vx = 2;
 *     spad_ctx_init(NULL, &ctx);                                  // NULL: default params
 *     spad_tensor_from_data(ctx, SPAD_F64, 1, one, &va, &a);
 *     spad_tensor_from_data(ctx, SPAD_F64, 1, one, &vb, &b);
 *     spad_tensor_from_data(ctx, SPAD_F64, 1, one, &vx, &x);
 *     spad_tensor_set_requires_grad(ctx, x, 1);                   // we want df/dx
 *     spad_mul(ctx, x, x, &x2);                                   // each op records a node
 *     spad_mul(ctx, a, x2, &ax2);
 *     spad_add(ctx, ax2, b, &f);
 *     spad_sum(ctx, f, &f);                                       // backward needs a scalar
 *     if (spad_backward(ctx, f) != SPAD_OK) puts(spad_last_error());
 *     spad_tensor_grad(ctx, x, &dx);                              // 2*a*x = 12
 *     printf("%g\n", ((double *)spad_tensor_data(dx))[0]);
 *     spad_ctx_free(ctx);                                         // frees every tensor above
 *
 * Conventions
 *   - Every call that can fail returns a spad_status; on failure spad_last_error() holds a
 *     message (per thread) that starts with the op name and gives the shapes involved.
 *     No C++ exception ever leaves this API.
 *   - A context owns every tensor handle it hands out; spad_ctx_free() releases them all.
 *     In a training loop, take spad_ctx_mark() after creating the parameters and call
 *     spad_ctx_rewind() at the end of each step to drop that step's tensors (and tape).
 *   - Tensors made here are dense, row-major and contiguous; spad_tensor_data() points at
 *     the first element. Writing through it is allowed before a forward pass, not between
 *     a forward pass and its backward (saved values would silently change).
 *   - Tape and allocation accounting and the tape budget are process-wide; the counters
 *     are atomic, so threads running separate contexts keep them exact.
 *   - Not thread-safe: use one thread per process for recording and backward.
 *   - Names are spad_<object>_<action>; ops are spad_<op>(ctx, inputs..., &out).
 */
#ifndef SPAD_H
#define SPAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum spad_status {
    SPAD_OK = 0,
    SPAD_ERR_VALUE = 1,        /* bad shapes or values (shape mismatch, label out of range, NaN) */
    SPAD_ERR_TYPE = 2,         /* wrong dtype */
    SPAD_ERR_RUNTIME = 3,      /* tape misuse: backward twice, no grad, modified saved tensor */
    SPAD_ERR_BUDGET = 4,       /* the tape budget would be exceeded; nothing was recorded */
    SPAD_ERR_ALLOC = 5,        /* out of memory */
    SPAD_ERR_INVALID_ARG = 6,  /* a NULL handle or pointer, a bad dtype or rank */
    SPAD_ERR_INTERNAL = 7      /* any other failure inside the core (a bug: please report) */
} spad_status;

typedef enum spad_dtype {
    SPAD_F32 = 0,
    SPAD_F64 = 1,
    SPAD_I64 = 2  /* labels only; not differentiable */
} spad_dtype;

typedef struct spad_ctx spad_ctx_t;
typedef struct spad_tensor spad_tensor_t;

typedef struct spad_ctx_params {
    int64_t tape_budget;  /* hard cap on tape bytes; -1 = none */
    uint64_t seed;        /* seeds the core's counter-based RNG (samplers, dropout) */
    /* Memory; all zero (the default) = the heap. See "Memory on devices" below.
     * buffer NULL with bytes > 0: the context reserves that many bytes itself. */
    void *step_arena;               /* each step's tensors: inputs, activations, tape, gradients */
    size_t step_arena_bytes;
    void *persistent_arena;         /* parameters (spad_tensor_set_param, models), sampler state */
    size_t persistent_arena_bytes;
    int32_t measure;                /* 1: both arenas only count (heap-backed, no limit), so
                                       spad_ctx_arena_stats() tells the sizes to deploy */
    int32_t update_in_backward;     /* 1: spad_model_train_step updates each parameter as soon
                                       as its gradient is complete and frees that gradient, so
                                       the step arena never holds all gradients at once; a
                                       step failing in backward may then leave some
                                       parameters updated (see spad_model_train_step) */
} spad_ctx_params;

/* Memory on devices
 *   With arenas, tensor data never touches the heap after spad_ctx_init: it is carved
 *   from the two buffers (16-byte aligned blocks; freed blocks are reused at once, so the
 *   step arena's high-water mark is what a step really keeps alive). Small bookkeeping
 *   (handles, tape nodes, shapes) still uses the heap. A full arena makes the call fail
 *   with SPAD_ERR_ALLOC and changes nothing (but see update_in_backward); so does an exceeded tape budget
 *   (SPAD_ERR_BUDGET). spad_ctx_rewind() resets the step arena once no handle uses it.
 *   To size the arenas: run one step with params.measure = 1 and read the high-water
 *   marks; keep some slack for sampling (payload sizes vary a little between steps). */
typedef struct spad_arena_stats {
    int64_t step_used, step_high_water, step_capacity;  /* capacity -1: heap or measure mode */
    int64_t persistent_used, persistent_high_water, persistent_capacity;
} spad_arena_stats;

/* Categories of allocated bytes: a storage is a parameter (spad_tensor_set_param, model
 * weights), a gradient, optimizer state, held by the tape, or other (inputs, activations,
 * backward temporaries). Memory the caller passes in (arena buffers) counts only where
 * spad carves tensors from it. */
typedef enum spad_mem_category {
    SPAD_MEM_PARAMETERS = 0,
    SPAD_MEM_GRADIENTS = 1,
    SPAD_MEM_OPTIMIZER_STATE = 2,
    SPAD_MEM_TAPE = 3,
    SPAD_MEM_OTHER = 4,
    SPAD_MEM_CATEGORIES = 5
} spad_mem_category;

typedef struct spad_mem_stats {
    int64_t tape_bytes;             /* bytes the tape keeps alive now */
    int64_t peak_tape_bytes;        /* high-water mark of tape_bytes */
    int64_t exact_tape_bytes;       /* what exact backprop would keep for the same graphs */
    int64_t peak_exact_tape_bytes;
    int64_t budget;                 /* -1 = none */
    int64_t allocated_bytes;        /* live data bytes of every tensor spad made (heap or arena) */
    int64_t peak_allocated_bytes;   /* high-water mark since spad_mem_stats_reset_peak() */
    int64_t category_bytes[SPAD_MEM_CATEGORIES];       /* allocated_bytes by spad_mem_category */
    int64_t peak_category_bytes[SPAD_MEM_CATEGORIES];  /* each category's own high-water mark */
} spad_mem_stats;

#define SPAD_MAX_DIMS 16

/* ---- errors ---- */
const char *spad_last_error(void);              /* "" after a successful call */
const char *spad_status_str(spad_status status);

/* ---- context ---- */
spad_ctx_params spad_ctx_default_params(void);
spad_status spad_ctx_init(const spad_ctx_params *params, spad_ctx_t **out);  /* params may be NULL */
void spad_ctx_free(spad_ctx_t *ctx);                                         /* NULL is a no-op */
size_t spad_ctx_mark(const spad_ctx_t *ctx);
spad_status spad_ctx_rewind(spad_ctx_t *ctx, size_t mark);  /* frees handles made after mark */

/* ---- tensors ---- */
spad_status spad_tensor_new(spad_ctx_t *ctx, spad_dtype dtype, int32_t ndim, const int64_t *shape,
                            spad_tensor_t **out);  /* zero-filled */
spad_status spad_tensor_from_data(spad_ctx_t *ctx, spad_dtype dtype, int32_t ndim, const int64_t *shape,
                                  const void *data, spad_tensor_t **out);  /* copies the data */
void *spad_tensor_data(const spad_tensor_t *t);  /* NULL for a NULL handle */
spad_dtype spad_tensor_dtype(const spad_tensor_t *t);
int32_t spad_tensor_ndim(const spad_tensor_t *t);
int64_t spad_tensor_dim(const spad_tensor_t *t, int32_t axis);  /* -1 if out of range */
int64_t spad_tensor_numel(const spad_tensor_t *t);
spad_status spad_tensor_item(const spad_tensor_t *t, double *out);  /* one-element tensors */
spad_status spad_tensor_set_requires_grad(spad_ctx_t *ctx, spad_tensor_t *t, int on);
/* requires_grad, and the tensor is a parameter: it lives anyway, so saving it costs the
 * tape nothing in spad_mem_stats. With a persistent arena, its data moves there. */
spad_status spad_tensor_set_param(spad_ctx_t *ctx, spad_tensor_t *t);
int spad_tensor_requires_grad(const spad_tensor_t *t);
/* *out = a new handle on t's accumulated gradient, or NULL if backward has not reached t. */
spad_status spad_tensor_grad(spad_ctx_t *ctx, const spad_tensor_t *t, spad_tensor_t **out);
spad_status spad_tensor_zero_grad(spad_ctx_t *ctx, spad_tensor_t *t);  /* drops the gradient */

/* ---- ops (numpy broadcasting for add/sub/mul; operands share one float dtype) ---- */
spad_status spad_add(spad_ctx_t *ctx, const spad_tensor_t *a, const spad_tensor_t *b, spad_tensor_t **out);
spad_status spad_sub(spad_ctx_t *ctx, const spad_tensor_t *a, const spad_tensor_t *b, spad_tensor_t **out);
spad_status spad_mul(spad_ctx_t *ctx, const spad_tensor_t *a, const spad_tensor_t *b, spad_tensor_t **out);
spad_status spad_matmul(spad_ctx_t *ctx, const spad_tensor_t *a, const spad_tensor_t *b, spad_tensor_t **out);
/* x (..., in) @ W (in, out) + b (out,); b may be NULL */
spad_status spad_linear(spad_ctx_t *ctx, const spad_tensor_t *x, const spad_tensor_t *W, const spad_tensor_t *b,
                        spad_tensor_t **out);
spad_status spad_relu(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out);
spad_status spad_tanh(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out);
spad_status spad_sum(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out);   /* over all elements */
spad_status spad_mean(spad_ctx_t *ctx, const spad_tensor_t *x, spad_tensor_t **out);  /* over all elements */
spad_status spad_mse_loss(spad_ctx_t *ctx, const spad_tensor_t *pred, const spad_tensor_t *target,
                          spad_tensor_t **out);
/* logits (B, C) float; labels (B,) SPAD_I64 in [0, C); mean over the batch */
spad_status spad_cross_entropy(spad_ctx_t *ctx, const spad_tensor_t *logits, const spad_tensor_t *labels,
                               spad_tensor_t **out);

/* ---- training ---- */
/* Reverse sweep from a one-element tensor; frees the saved values as it goes, so a second
 * call on the same graph fails with SPAD_ERR_RUNTIME. */
spad_status spad_backward(spad_ctx_t *ctx, const spad_tensor_t *loss);
/* p -= lr * p.grad for each parameter, in place; parameters without a gradient are skipped.
 * Checks every parameter (and that lr is finite) before writing any, so a failure leaves all
 * of them untouched. */
spad_status spad_sgd_step(spad_ctx_t *ctx, spad_tensor_t *const *params, size_t n_params, double lr);

/* ---- memory ---- */
spad_status spad_ctx_arena_stats(const spad_ctx_t *ctx, spad_arena_stats *out);
spad_status spad_ctx_arena_reset_peak(spad_ctx_t *ctx);
spad_status spad_mem_stats_get(spad_mem_stats *out);
void spad_mem_stats_reset_peak(void);
/* A forward pass that would push tape bytes over `bytes` fails with SPAD_ERR_BUDGET and
 * records nothing; -1 removes the cap. */
spad_status spad_tape_budget_set(int64_t bytes);

/* ---- sampling (randomized / selective-path backprop) ----
 * The policy applies to every op recorded through ctx from now on (spad_linear,
 * spad_matmul, spad_model_train_step): the tape keeps a fraction `keep` of each layer
 * input instead of all of it, and weight gradients become unbiased estimates.
 *   SPAD_POLICY_EXACT  exact backprop (the default; keep and seed are ignored)
 *   SPAD_POLICY_RAD    uniform per-example feature sampling (RAD, "different sample")
 *   SPAD_POLICY_SPAD   selective paths: features drawn by their scores, refreshed every
 *                      `refresh` steps from the sampled passes themselves, 10% uniform mix */
typedef enum spad_policy_kind {
    SPAD_POLICY_EXACT = 0,
    SPAD_POLICY_RAD = 1,
    SPAD_POLICY_SPAD = 2
} spad_policy_kind;
spad_status spad_ctx_set_policy(spad_ctx_t *ctx, spad_policy_kind kind, double keep, int64_t refresh, uint64_t seed);
/* Does nothing (kept for compatibility): a policy's step now begins with each forward
 * pass through its sites, so SPAD's refresh clock needs no call. */
spad_status spad_ctx_step_begin(spad_ctx_t *ctx);

/* ---- models: networks exported from Python with spad.export(model, path) ----
 * The file format is documented in spad/model_io.py and docs/embedded.md. A model
 * belongs to its context (spad_ctx_free frees it); its parameters live in the persistent
 * arena. Layers: Linear, Conv2d, MaxPool2d, AvgPool2d, ReLU, Tanh, Sigmoid, Flatten. */
typedef struct spad_model spad_model_t;
spad_status spad_model_load(spad_ctx_t *ctx, const char *path, spad_model_t **out);
spad_status spad_model_load_buffer(spad_ctx_t *ctx, const void *data, size_t nbytes, spad_model_t **out);
spad_status spad_model_save(const spad_model_t *model, const char *path);
/* A fresh MLP: Linear(sizes[0], sizes[1]), ReLU, ..., Linear(sizes[n-2], sizes[n-1]);
 * He-uniform weights from `seed`, zero biases. */
spad_status spad_model_mlp(spad_ctx_t *ctx, const int32_t *sizes, int32_t n_sizes, uint64_t seed,
                           spad_model_t **out);
void spad_model_free(spad_ctx_t *ctx, spad_model_t *model);  /* optional; NULL is a no-op */
/* Inference (records nothing): x (B, features) or (B, C, H, W) float32 -> *out (B, outputs). */
spad_status spad_model_forward(spad_ctx_t *ctx, const spad_model_t *model, const spad_tensor_t *x,
                               spad_tensor_t **out);
/* One SGD step: forward under the context's policy, loss, backward, p -= lr * grad.
 * target: SPAD_I64 labels (B,) -> cross-entropy; float (B, outputs) -> mean squared error.
 * *loss (may be NULL) receives the loss before the update. On any failure (tape budget,
 * full arena, a NaN/inf loss, gradient or parameter: SPAD_ERR_VALUE) every parameter is
 * left untouched. Gradients are dropped
 * afterwards, so nothing of the step stays in the step arena.
 * With params.update_in_backward = 1 each parameter is updated (and its gradient freed)
 * during backward, as soon as its gradient is complete: the step arena's peak then holds
 * one weight gradient instead of all of them. Each gradient is checked before it is
 * applied; a sampled one added straight into its weight is checked there, after the
 * write (its sum of finite values can overflow), and the message says the update was
 * applied. A bad lr, a NaN/inf loss or parameter and a tape budget exceeded in forward
 * still leave every parameter untouched; but a NaN/inf gradient or a full arena *during
 * backward* stops the updates there: parameters already updated (they had finite
 * gradients) stay updated, the others are untouched, and the error message says how
 * many were updated. Parameters are updated last layer first. */
spad_status spad_model_train_step(spad_ctx_t *ctx, spad_model_t *model, const spad_tensor_t *x,
                                  const spad_tensor_t *target, double lr, double *loss);
int32_t spad_model_num_params(const spad_model_t *model);  /* weight and bias tensors */
/* A handle on parameter i (its data is the live weights); NULL if out of range. */
spad_status spad_model_param(spad_ctx_t *ctx, const spad_model_t *model, int32_t i, spad_tensor_t **out);

/* ---- Compiled plans (spad.compile(...).save(path) in Python; format: docs/plan_format.md) ----
 * A plan is a recorded training step (forward, backward, optimizer update: SGD with momentum,
 * Adam, ...) with its parameters and optimizer state. spad_plan_load checks the plan against
 * the context's step arena before any step (SPAD_ERR_ALLOC if its buffers cannot fit) and moves
 * parameters and state into the persistent arena. spad_plan_step binds `inputs` (the tensors
 * the step was recorded with, same dtypes and shapes; SPAD_ERR_VALUE otherwise), runs the
 * step and stores the loss. Free a plan before its context. Plans recorded under a sampling
 * policy are not in format 1. */
typedef struct spad_plan spad_plan_t;
spad_status spad_plan_load(spad_ctx_t *ctx, const char *path, spad_plan_t **out);
spad_status spad_plan_step(spad_ctx_t *ctx, spad_plan_t *plan, int32_t n_inputs, const spad_tensor_t *const *inputs,
                           double *loss);
void spad_plan_free(spad_plan_t *plan);  /* NULL is a no-op */
int32_t spad_plan_num_records(const spad_plan_t *plan);
size_t spad_plan_arena_bytes(const spad_plan_t *plan);  /* the plan's liveness-planned arena */
int32_t spad_plan_num_params(const spad_plan_t *plan);   /* captured tensors that require grad */
spad_status spad_plan_param(spad_ctx_t *ctx, const spad_plan_t *plan, int32_t i, spad_tensor_t **out);

#ifdef __cplusplus
}
#endif

#endif /* SPAD_H */
