// check.h — the few macros the C/C++ tests share (no test framework): CHECK counts a
// failure and goes on, OK returns from the test function when a call fails (later steps
// depend on it), CHECK_STATUS expects a status and a message fragment. Include once per
// test program.
#pragma once
#include <spad/spad.h>

#include <cstdio>
#include <cstring>

static int g_checks = 0, g_failures = 0;

#define CHECK(cond)                                                                                   \
    do {                                                                                              \
        ++g_checks;                                                                                   \
        if (!(cond)) {                                                                                \
            ++g_failures;                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", __FILE__, __LINE__, #cond, \
                         spad_last_error());                                                          \
        }                                                                                             \
    } while (0)

// A call that must succeed; on failure the test function returns (later steps depend on it).
#define OK(call)                                                                                      \
    do {                                                                                              \
        ++g_checks;                                                                                   \
        spad_status s_ = (call);                                                                      \
        if (s_ != SPAD_OK) {                                                                          \
            ++g_failures;                                                                             \
            std::fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,            \
                         spad_status_str(s_), spad_last_error());                                     \
            return;                                                                                   \
        }                                                                                             \
    } while (0)

#define CHECK_STATUS(call, expected, needle)                                                          \
    do {                                                                                              \
        spad_status s_ = (call);                                                                      \
        CHECK(s_ == (expected));                                                                      \
        CHECK(std::strstr(spad_last_error(), (needle)) != nullptr);                                   \
    } while (0)
