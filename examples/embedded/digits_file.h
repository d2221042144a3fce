/* digits_file.h — what the embedded examples share: reading digits.bin (the bundled 8x8
 * digits in the byte format make_digits.py describes) into static arrays, and TRY, which
 * prints a failed call's status and message and returns 1. Header-only, C99. */
#ifndef SPAD_EXAMPLES_DIGITS_FILE_H
#define SPAD_EXAMPLES_DIGITS_FILE_H
#include <spad/spad.h>
#include <stdio.h>
#include <string.h>

#define N_MAX 2048
#define FEATURES 64

static float pixels[N_MAX * FEATURES];  /* scaled to [0, 1] */
static int64_t labels[N_MAX];

static uint32_t u32le(const unsigned char *b) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int load_digits(const char *path, int *n_out) {
    static unsigned char raw[16 + N_MAX * (FEATURES + 1)];
    FILE *f = fopen(path, "rb");
    size_t got;
    uint32_t n, i;
    if (!f) {
        fprintf(stderr, "cannot open %s (make it with examples/embedded/make_digits.py)\n", path);
        return 1;
    }
    got = fread(raw, 1, sizeof raw, f);
    fclose(f);
    if (got < 16 || memcmp(raw, "SPADDIGI", 8) != 0 || u32le(raw + 12) != FEATURES) {
        fprintf(stderr, "%s is not a digits file\n", path);
        return 1;
    }
    n = u32le(raw + 8);
    if (n > N_MAX || got != 16 + (size_t)n * (FEATURES + 1)) {
        fprintf(stderr, "%s: bad size\n", path);
        return 1;
    }
    for (i = 0; i < n * FEATURES; ++i) pixels[i] = raw[16 + i] / 16.0f;
    for (i = 0; i < n; ++i) labels[i] = raw[16 + n * FEATURES + i];
    *n_out = (int)n;
    return 0;
}

#define TRY(call)                                                                       \
    do {                                                                                \
        spad_status s_ = (call);                                                        \
        if (s_ != SPAD_OK) {                                                            \
            fprintf(stderr, "%s failed: %s: %s\n", #call, spad_status_str(s_), spad_last_error()); \
            return 1;                                                                   \
        }                                                                               \
    } while (0)

#endif
