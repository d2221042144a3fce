/* test_capi.c — compiled as strict C99 to prove that spad.h is a C header; runs the
 * worked example from the top of spad.h (f(x) = a*x^2 + b, df/dx = 2*a*x). */
#include <spad/spad.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n",    \
                    __FILE__, __LINE__, #cond, spad_last_error());           \
            failures++;                                                      \
        }                                                                    \
    } while (0)

int main(void) {
    spad_ctx_t *ctx = NULL;
    spad_tensor_t *a, *b, *x, *x2, *ax2, *f, *loss, *dx, *bad;
    const int64_t one[1] = {1};
    const int64_t two[1] = {2};
    const double va = 3, vb = 4, vx = 2, vbad[2] = {1, 2};
    double value = 0;

    CHECK(spad_ctx_init(NULL, &ctx) == SPAD_OK);
    CHECK(spad_tensor_from_data(ctx, SPAD_F64, 1, one, &va, &a) == SPAD_OK);
    CHECK(spad_tensor_from_data(ctx, SPAD_F64, 1, one, &vb, &b) == SPAD_OK);
    CHECK(spad_tensor_from_data(ctx, SPAD_F64, 1, one, &vx, &x) == SPAD_OK);
    CHECK(spad_tensor_set_requires_grad(ctx, x, 1) == SPAD_OK);
    CHECK(spad_mul(ctx, x, x, &x2) == SPAD_OK);
    CHECK(spad_mul(ctx, a, x2, &ax2) == SPAD_OK);
    CHECK(spad_add(ctx, ax2, b, &f) == SPAD_OK);
    CHECK(spad_sum(ctx, f, &loss) == SPAD_OK);
    CHECK(spad_tensor_item(loss, &value) == SPAD_OK && value == 16.0);
    CHECK(spad_backward(ctx, loss) == SPAD_OK);
    CHECK(spad_tensor_grad(ctx, x, &dx) == SPAD_OK && dx != NULL);
    if (dx) CHECK(((const double *)spad_tensor_data(dx))[0] == 12.0);
    CHECK(spad_tensor_ndim(dx) == 1 && spad_tensor_dim(dx, 0) == 1 && spad_tensor_dtype(dx) == SPAD_F64);

    /* An error is a status and a message, never a crash. */
    CHECK(spad_tensor_from_data(ctx, SPAD_F64, 1, two, vbad, &bad) == SPAD_OK);
    CHECK(spad_matmul(ctx, bad, a, &f) == SPAD_ERR_VALUE);
    CHECK(strstr(spad_last_error(), "matmul") != NULL);
    CHECK(spad_add(ctx, NULL, a, &f) == SPAD_ERR_INVALID_ARG);
    CHECK(spad_ctx_init(NULL, NULL) == SPAD_ERR_INVALID_ARG);
    CHECK(strcmp(spad_status_str(SPAD_ERR_BUDGET), "tape budget exceeded") == 0);

    spad_ctx_free(ctx);
    spad_ctx_free(NULL);
    if (failures) {
        fprintf(stderr, "test_capi: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_capi: all checks passed\n");
    return 0;
}
