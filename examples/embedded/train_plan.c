/* train_plan.c — on-device training from a compiled plan: the training step recorded in
 * Python with spad.compile and saved with step.save() (examples/embedded/make_plan.py) is
 * loaded with spad_plan_load and run with spad_plan_step, inside two fixed arenas. Whatever the
 * frontend recorded (model, loss, optimizer) is what trains here; no model code on the device.
 *
 *   train_plan [digits.bin] [digits_mlp.spadplan] [steps=300]
 *
 * Prints the loss every 50 steps; exit status 0 only if the loss went down. The plan was
 * recorded with batches of 32 digits (x float32 (32, 64), labels int64 (32,)). */
#include <spad/spad.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digits_file.h"

#define BATCH 32

#define STEP_ARENA_BYTES (512u << 10)
#define PERSISTENT_ARENA_BYTES (256u << 10)
static unsigned char step_arena[STEP_ARENA_BYTES] __attribute__((aligned(16)));
static unsigned char persistent_arena[PERSISTENT_ARENA_BYTES] __attribute__((aligned(16)));

static float batch_x[BATCH * FEATURES];
static int64_t batch_y[BATCH];

int main(int argc, char **argv) {
    const char *data_path = argc > 1 ? argv[1] : "digits.bin";
    const char *plan_path = argc > 2 ? argv[2] : "digits_mlp.spadplan";
    const int steps = argc > 3 ? atoi(argv[3]) : 300;
    const int64_t xs[2] = {BATCH, FEATURES}, ys[1] = {BATCH};
    spad_ctx_params p = spad_ctx_default_params();
    spad_ctx_t *ctx = NULL;
    spad_plan_t *plan = NULL;
    double first = 0, last = 0, loss = 0;
    uint64_t rng = 7;
    int n = 0, s, i, window = 20;
    size_t mark;
    if (load_digits(data_path, &n) || steps < 2 * window) return 1;
    p.step_arena = step_arena;
    p.step_arena_bytes = sizeof step_arena;
    p.persistent_arena = persistent_arena;
    p.persistent_arena_bytes = sizeof persistent_arena;
    TRY(spad_ctx_init(&p, &ctx));
    TRY(spad_plan_load(ctx, plan_path, &plan));
    printf("plan %s: %d records, %d parameter tensors, arena plan %lu bytes\n", plan_path,
           (int)spad_plan_num_records(plan), (int)spad_plan_num_params(plan), (unsigned long)spad_plan_arena_bytes(plan));
    mark = spad_ctx_mark(ctx);
    for (s = 0; s < steps; ++s) {
        spad_tensor_t *in[2];
        for (i = 0; i < BATCH; ++i) {
            int k;
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            k = (int)((rng >> 33) % (uint64_t)n);
            memcpy(batch_x + i * FEATURES, pixels + k * FEATURES, sizeof(float) * FEATURES);
            batch_y[i] = labels[k];
        }
        TRY(spad_tensor_from_data(ctx, SPAD_F32, 2, xs, batch_x, &in[0]));
        TRY(spad_tensor_from_data(ctx, SPAD_I64, 1, ys, batch_y, &in[1]));
        TRY(spad_plan_step(ctx, plan, 2, (const spad_tensor_t *const *)in, &loss));
        TRY(spad_ctx_rewind(ctx, mark));
        if (s < window) first += loss / window;
        if (s >= steps - window) last += loss / window;
        if (s % 50 == 0) printf("step %4d  loss %.4f\n", s, loss);
    }
    printf("mean loss: first %d steps %.4f, last %d steps %.4f\n", window, first, window, last);
    spad_plan_free(plan);
    spad_ctx_free(ctx);
    return last < first ? 0 : 1;
}
