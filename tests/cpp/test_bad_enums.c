/* test_bad_enums.c — out-of-range enum values, passed the way a C caller can pass them (any
 * int converts to an enum type in C). The library must validate the integer before using
 * it as the C++ enum type: under UBSan a load of such a value is "invalid value for type".
 * Compiled as strict C99, like test_capi.c. */
#include <spad/spad.h>

#include <stdio.h>
#include <string.h>

static int failures = 0, checks = 0;

static void expect(spad_status got, spad_status want, const char *fragment, const char *what) {
    ++checks;
    if (got != want || strstr(spad_last_error(), fragment) == NULL) {
        ++failures;
        fprintf(stderr, "%s: got %s (%s), expected %s with '%s'\n", what, spad_status_str(got), spad_last_error(),
                spad_status_str(want), fragment);
    }
}

int main(void) {
    spad_ctx_t *ctx = NULL;
    spad_tensor_t *out = NULL;
    int64_t shape[1] = {2};
    float data[2] = {1.0f, 2.0f};
    if (spad_ctx_init(NULL, &ctx) != SPAD_OK) return 1;
    expect(spad_tensor_new(ctx, (spad_dtype)7, 1, shape, &out), SPAD_ERR_INVALID_ARG, "unknown dtype 7", "dtype 7");
    expect(spad_tensor_new(ctx, (spad_dtype)-1, 1, shape, &out), SPAD_ERR_INVALID_ARG, "unknown dtype -1", "dtype -1");
    expect(spad_tensor_new(ctx, (spad_dtype)2147483647, 1, shape, &out), SPAD_ERR_INVALID_ARG, "unknown dtype",
           "dtype INT_MAX");
    expect(spad_tensor_from_data(ctx, (spad_dtype)99, 1, shape, data, &out), SPAD_ERR_INVALID_ARG, "unknown dtype",
           "from_data dtype 99");
    expect(spad_ctx_set_policy(ctx, (spad_policy_kind)9, 0.5, 1, 0), SPAD_ERR_INVALID_ARG, "unknown policy kind",
           "policy kind 9");
    expect(spad_ctx_set_policy(ctx, (spad_policy_kind)-3, 0.5, 1, 0), SPAD_ERR_INVALID_ARG, "unknown policy kind",
           "policy kind -3");
    ++checks;
    if (strcmp(spad_status_str((spad_status)99), "unknown status") != 0) ++failures;
    ++checks;
    if (strcmp(spad_status_str((spad_status)-1), "unknown status") != 0) ++failures;
    spad_ctx_free(ctx);
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
