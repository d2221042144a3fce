// model_fuzz_target.h — what one fuzz input exercises: load the bytes as a model through
// the C API and, if that succeeds, run a forward pass and a training step on an input of
// the recorded shape. Shared by the deterministic mutation test (test_model_fuzz.cpp, run
// by ctest) and the libFuzzer entry point (fuzz_model_libfuzzer.cpp, clang only).
//
// The contract checked: the loader returns SPAD_OK or SPAD_ERR_VALUE (never an internal
// error, never a crash); a model that loads either runs or fails with a status. Memory
// errors and undefined behaviour are the sanitizers' to report.
#pragma once
#include <spad/spad.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

// Returns 0 if the contract held, 1 otherwise (with a message on stderr).
static int model_fuzz_one(spad_ctx_t *ctx, const uint8_t *data, size_t n) {
    const size_t mark = spad_ctx_mark(ctx);
    spad_model_t *m = nullptr;
    const spad_status s = spad_model_load_buffer(ctx, data, n, &m);
    if (s != SPAD_OK) {
        if (s != SPAD_ERR_VALUE || m != nullptr) {
            std::fprintf(stderr, "model_fuzz: load returned %s (%s)\n", spad_status_str(s), spad_last_error());
            return 1;
        }
        return 0;
    }
    int bad = 0;
    // The input the file records (1 to 3 dims), batch 1; small models only (the loader
    // bounds every size by the file, a forward pass is bounded by it too).
    int64_t shape[4] = {1, 0, 0, 0};
    spad_tensor_t *x = nullptr;
    spad_tensor_t *in = nullptr;
    // The model's first parameter tells the input width of an MLP; a conv model needs the
    // recorded shape. Try both and let the core refuse mismatches.
    int32_t ndim = 0;
    if (spad_model_num_params(m) > 0 && spad_model_param(ctx, m, 0, &in) == SPAD_OK && in) {
        if (spad_tensor_ndim(in) == 2) {  // Linear first: (1, in)
            ndim = 2;
            shape[1] = spad_tensor_dim(in, 0);
        } else if (spad_tensor_ndim(in) == 4) {  // Conv2d first: (1, C_in, 4, 4), the seeds' image size
            ndim = 4;
            shape[1] = spad_tensor_dim(in, 1);
            shape[2] = shape[3] = 4;
        }
    }
    if (ndim) {
        if (shape[1] <= 4096 && spad_tensor_new(ctx, SPAD_F32, ndim, shape, &x) == SPAD_OK) {
            float *p = static_cast<float *>(spad_tensor_data(x));
            for (int64_t i = 0; i < spad_tensor_numel(x); ++i) p[i] = 0.5f;
            spad_tensor_t *y = nullptr;
            const spad_status fs = spad_model_forward(ctx, m, x, &y);
            if (fs == SPAD_OK && y) {
                double loss = 0;
                spad_tensor_t *target = nullptr;
                int64_t ts[4];
                const int32_t nd = spad_tensor_ndim(y);
                for (int32_t d = 0; d < nd && d < 4; ++d) ts[d] = spad_tensor_dim(y, d);
                if (nd <= 4 && spad_tensor_new(ctx, SPAD_F32, nd, ts, &target) == SPAD_OK) {
                    const spad_status st = spad_model_train_step(ctx, m, x, target, 0.01, &loss);
                    if (st == SPAD_ERR_INTERNAL) bad = 1;
                }
            } else if (fs == SPAD_ERR_INTERNAL) {
                bad = 1;
            }
            if (bad) std::fprintf(stderr, "model_fuzz: internal error: %s\n", spad_last_error());
        }
    }
    spad_model_free(ctx, m);
    spad_ctx_rewind(ctx, mark);
    return bad;
}
