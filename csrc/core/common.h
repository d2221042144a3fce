// common.h — dtypes, shapes and the error types every part of the core uses.
//
// Errors are C++ exceptions inside the core; the Python binding maps them to
// ValueError / TypeError / RuntimeError, and the C API turns them into status codes
// so no exception ever crosses the C boundary.
#pragma once
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace spad {

// I32 was appended last so the numeric values of the older kinds do not change.
enum class DType : uint8_t { F32, F64, I64, U8, I32 };

inline size_t dtype_size(DType d) {
    switch (d) {
        case DType::F32: return 4;
        case DType::F64: return 8;
        case DType::I64: return 8;
        case DType::U8: return 1;
        case DType::I32: return 4;
    }
    return 0;
}
inline const char *dtype_name(DType d) {
    switch (d) {
        case DType::F32: return "float32";
        case DType::F64: return "float64";
        case DType::I64: return "int64";
        case DType::U8: return "uint8";
        case DType::I32: return "int32";
    }
    return "?";
}

using Shape = std::vector<int64_t>;

inline int64_t numel_of(const Shape &s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}
inline std::string shape_str(const Shape &s) {
    std::string r = "(";
    for (size_t i = 0; i < s.size(); ++i) {
        r += std::to_string(s[i]);
        if (s.size() == 1 || i + 1 < s.size()) r += s.size() == 1 ? "," : ", ";
    }
    return r + ")";
}

// Error kinds map 1:1 onto Python exception types at the binding layer.
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct RuntimeError : std::runtime_error { using std::runtime_error::runtime_error; };
// A tape budget was exceeded (devices); Python sees a MemoryError subclass-like RuntimeError.
struct BudgetError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
inline void cat(std::ostringstream &) {}
template <class T, class... R> void cat(std::ostringstream &o, const T &v, const R &...r) {
    o << v;
    cat(o, r...);
}
}  // namespace detail

template <class... A> std::string str(const A &...a) {
    std::ostringstream o;
    detail::cat(o, a...);
    return o.str();
}

// SPAD_CHECK(cond, ErrType, parts...) — parts are streamed into the message. Messages
// start with the op name and include the shapes involved, so users can find the call.
#define SPAD_CHECK(cond, Err, ...)                                  \
    do {                                                            \
        if (!(cond)) throw ::spad::Err(::spad::str(__VA_ARGS__));   \
    } while (0)

}  // namespace spad
