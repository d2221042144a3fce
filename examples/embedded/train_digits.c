/* train_digits.c — on-device training with spad's C API: an MLP learns the bundled 8x8
 * digits inside two fixed, statically allocated arenas, with selective-path backprop
 * (SPAD) keeping a fraction of each layer input on the tape.
 *
 *   train_digits [digits.bin] [keep=0.1] [steps=600] [batch=150] [hidden=256] [layers=3] [out.spad|-]
 *                [in_backward=1]
 *
 * `layers` hidden layers of `hidden` units each. keep = 1 trains with exact backprop, for comparison. Prints the loss every 100 steps,
 * then test accuracy, the arenas' high-water marks (what this run really needed), the
 * peak tape bytes and steps/s. With out.spad the trained model is saved; Python reads it
 * with spad.load_model() ("-": not saved). in_backward = 1 updates each parameter during
 * backward as soon as its gradient is complete (params.update_in_backward), so the step
 * arena never holds every weight gradient at once; 0 updates after backward. Exit status
 * 0 only if the loss went down.
 *
 * digits.bin comes from examples/embedded/make_digits.py (format described there). */
#include <spad/spad.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "digits_file.h"

#define CLASSES 10
#define BATCH_MAX 256
#define N_TEST 297
#define MAX_LAYERS 8

/* The device's whole budget for tensor data: no heap is used for it after start-up. */
#define STEP_ARENA_BYTES (2048u << 10)
#define PERSISTENT_ARENA_BYTES (1024u << 10)
static unsigned char step_arena[STEP_ARENA_BYTES] __attribute__((aligned(16)));
static unsigned char persistent_arena[PERSISTENT_ARENA_BYTES] __attribute__((aligned(16)));

static float batch_x[BATCH_MAX * FEATURES];
static int64_t batch_y[BATCH_MAX];

static uint64_t rng_state = 42;
static uint32_t rng_below(uint32_t n) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)((rng_state >> 33) % n);
}

static double accuracy(spad_ctx_t *ctx, spad_model_t *model, int first, int count) {
    int correct = 0, i, c, done;
    for (done = 0; done < count; done += BATCH_MAX) {
        int b = count - done < BATCH_MAX ? count - done : BATCH_MAX;
        int64_t shape[2];
        size_t mark = spad_ctx_mark(ctx);
        spad_tensor_t *x, *logits;
        const float *out;
        shape[0] = b;
        shape[1] = FEATURES;
        if (spad_tensor_from_data(ctx, SPAD_F32, 2, shape, pixels + (size_t)(first + done) * FEATURES, &x) != SPAD_OK ||
            spad_model_forward(ctx, model, x, &logits) != SPAD_OK) {
            fprintf(stderr, "inference failed: %s\n", spad_last_error());
            return -1;
        }
        out = (const float *)spad_tensor_data(logits);
        for (i = 0; i < b; ++i) {
            int best = 0;
            for (c = 1; c < CLASSES; ++c)
                if (out[i * CLASSES + c] > out[i * CLASSES + best]) best = c;
            correct += best == labels[first + done + i];
        }
        spad_ctx_rewind(ctx, mark);
    }
    return (double)correct / count;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "digits.bin";
    const double keep = argc > 2 ? atof(argv[2]) : 0.1;
    const int steps = argc > 3 ? atoi(argv[3]) : 600;
    const int batch = argc > 4 ? atoi(argv[4]) : 150;
    const int hidden = argc > 5 ? atoi(argv[5]) : 256;
    const int layers = argc > 6 ? atoi(argv[6]) : 3;
    const char *save = argc > 7 && strcmp(argv[7], "-") != 0 ? argv[7] : NULL;
    const int in_backward = argc > 8 ? atoi(argv[8]) : 1;
    int n = 0, n_train, step, i;
    int32_t sizes[MAX_LAYERS + 2];
    double loss = 0, first_loss = 0, last_loss = 0, secs;
    spad_ctx_params params = spad_ctx_default_params();
    spad_ctx_t *ctx = NULL;
    spad_model_t *model = NULL;
    spad_arena_stats arena;
    spad_mem_stats tape;
    clock_t t0;

    if (batch < 1 || batch > BATCH_MAX || steps < 1 || hidden < 1 || layers < 0 || layers > MAX_LAYERS ||
        !(keep > 0 && keep <= 1) || (in_backward != 0 && in_backward != 1)) {
        fprintf(stderr, "usage: %s [digits.bin] [keep in (0,1]] [steps] [batch <= %d] [hidden] [layers <= %d] "
                "[out.spad|-] [in_backward 0|1]\n", argv[0], BATCH_MAX, MAX_LAYERS);
        return 2;
    }
    if (load_digits(path, &n)) return 1;
    n_train = n - N_TEST;

    params.seed = 1;
    params.step_arena = step_arena;
    params.step_arena_bytes = sizeof step_arena;
    params.persistent_arena = persistent_arena;
    params.persistent_arena_bytes = sizeof persistent_arena;
    params.update_in_backward = in_backward;
    TRY(spad_ctx_init(&params, &ctx));
    sizes[0] = FEATURES;
    for (i = 1; i <= layers; ++i) sizes[i] = hidden;
    sizes[layers + 1] = CLASSES;
    TRY(spad_model_mlp(ctx, sizes, layers + 2, 7, &model));
    if (keep < 1) TRY(spad_ctx_set_policy(ctx, SPAD_POLICY_SPAD, keep, 50, 3));
    printf("digits: %d train / %d test, MLP %d-(%d x %d)-%d, batch %d, %s keep %.2f, SGD %s backward\n", n_train,
           N_TEST, FEATURES, layers, hidden, CLASSES, batch, keep < 1 ? "SPAD" : "exact", keep,
           in_backward ? "in" : "after");

    t0 = clock();
    for (step = 0; step < steps; ++step) {
        int64_t xs[2], ys[1];
        size_t mark = spad_ctx_mark(ctx);
        spad_tensor_t *x, *y;
        for (i = 0; i < batch; ++i) {  /* sampling with replacement keeps the loop tiny */
            uint32_t j = rng_below((uint32_t)n_train);
            memcpy(batch_x + (size_t)i * FEATURES, pixels + (size_t)j * FEATURES, sizeof(float) * FEATURES);
            batch_y[i] = labels[j];
        }
        xs[0] = batch;
        xs[1] = FEATURES;
        ys[0] = batch;
        TRY(spad_tensor_from_data(ctx, SPAD_F32, 2, xs, batch_x, &x));
        TRY(spad_tensor_from_data(ctx, SPAD_I64, 1, ys, batch_y, &y));
        TRY(spad_model_train_step(ctx, model, x, y, 0.1, &loss));
        TRY(spad_ctx_rewind(ctx, mark));
        if (step < 20) first_loss += loss / 20;
        if (step >= steps - 20) last_loss += loss / (steps < 20 ? steps : 20);
        if (step % 100 == 0 || step == steps - 1) printf("step %4d  loss %.4f\n", step, loss);
    }
    secs = (double)(clock() - t0) / CLOCKS_PER_SEC;

    TRY(spad_ctx_arena_stats(ctx, &arena));
    TRY(spad_mem_stats_get(&tape));
    printf("test accuracy      %.3f\n", accuracy(ctx, model, n_train, N_TEST));
    printf("step arena peak    %lld of %lld bytes\n", (long long)arena.step_high_water, (long long)arena.step_capacity);
    printf("persistent arena   %lld of %lld bytes\n", (long long)arena.persistent_high_water,
           (long long)arena.persistent_capacity);
    printf("peak tape          %lld bytes (exact backprop: %lld)\n", (long long)tape.peak_tape_bytes,
           (long long)tape.peak_exact_tape_bytes);
    printf("peak allocated     %lld bytes (each category at its own peak: parameters %lld, gradients %lld, "
           "tape %lld, other %lld)\n", (long long)tape.peak_allocated_bytes,
           (long long)tape.peak_category_bytes[SPAD_MEM_PARAMETERS], (long long)tape.peak_category_bytes[SPAD_MEM_GRADIENTS],
           (long long)tape.peak_category_bytes[SPAD_MEM_TAPE], (long long)tape.peak_category_bytes[SPAD_MEM_OTHER]);
    printf("speed              %.0f steps/s\n", secs > 0 ? steps / secs : 0.0);
    if (save) TRY(spad_model_save(model, save));
    spad_ctx_free(ctx);
    return last_loss < first_loss ? 0 : 1;
}
