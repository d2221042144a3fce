// fuzz_model_libfuzzer.cpp — open-ended coverage-guided fuzzing of the model reader with
// libFuzzer (clang). Build and run (seeds: the valid test vectors, written as files):
//   cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
//         -DSPAD_SANITIZE=ON -DSPAD_LIBFUZZER=ON && cmake --build build-fuzz --target fuzz_model
//   ./build-fuzz/fuzz_model -max_total_time=60 corpus/
// The deterministic, seconds-long version of this runs in ctest: test_model_fuzz.cpp.
#include <cstdlib>

#include "model_fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static spad_ctx_t *ctx = [] {
        spad_ctx_t *c = nullptr;
        if (spad_ctx_init(nullptr, &c) != SPAD_OK) std::abort();
        return c;
    }();
    if (model_fuzz_one(ctx, data, size) != 0) std::abort();  // the contract broke: a finding
    return 0;
}
