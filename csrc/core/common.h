// common.h — dtypes, shapes and the error types every part of the core uses.
//
// Errors are C++ exceptions inside the core; the Python binding maps them to
// ValueError / TypeError / RuntimeError, and the C API turns them into status codes
// so no exception ever crosses the C boundary.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <sstream>
#include <type_traits>
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

// Shape: a vector of dimensions with room for 6 inline. Every tensor and node carries a
// few shapes; with std::vector each was a heap allocation, which dominated the cost of
// small ops (a batch-1 MLP step). Same interface as the std::vector subset we use.
class Shape {
  public:
    using value_type = int64_t;
    using iterator = int64_t *;
    using const_iterator = const int64_t *;
    static constexpr uint32_t kInline = 6;

    Shape() = default;
    Shape(size_t n, int64_t v = 0) { assign(n, v); }
    Shape(std::initializer_list<int64_t> l) { append(l.begin(), l.end()); }
    template <class It, class = typename std::enable_if<!std::is_integral<It>::value>::type>
    Shape(It b, It e) { append(b, e); }
    Shape(const std::vector<int64_t> &v) { append(v.begin(), v.end()); }
    Shape(const Shape &o) { append(o.begin(), o.end()); }
    Shape(Shape &&o) noexcept { take(o); }
    Shape &operator=(const Shape &o) {
        if (this != &o) {
            size_ = 0;
            append(o.begin(), o.end());
        }
        return *this;
    }
    Shape &operator=(Shape &&o) noexcept {
        if (this != &o) {
            free_heap();
            take(o);
        }
        return *this;
    }
    ~Shape() { free_heap(); }

    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    int64_t *data() { return heap_ ? heap_ : inline_; }
    const int64_t *data() const { return heap_ ? heap_ : inline_; }
    iterator begin() { return data(); }
    iterator end() { return data() + size_; }
    const_iterator begin() const { return data(); }
    const_iterator end() const { return data() + size_; }
    int64_t &operator[](size_t i) { return data()[i]; }
    const int64_t &operator[](size_t i) const { return data()[i]; }
    int64_t &back() { return data()[size_ - 1]; }
    const int64_t &back() const { return data()[size_ - 1]; }
    void clear() { size_ = 0; }
    void push_back(int64_t v) {
        reserve(size_ + 1);
        data()[size_++] = v;
    }
    void pop_back() { --size_; }
    void resize(size_t n, int64_t v = 0) {
        reserve(n);
        for (size_t i = size_; i < n; ++i) data()[i] = v;
        size_ = (uint32_t)n;
    }
    void assign(size_t n, int64_t v) {
        size_ = 0;
        resize(n, v);
    }
    iterator erase(iterator pos) {
        std::memmove(pos, pos + 1, (size_t)(end() - pos - 1) * sizeof(int64_t));
        --size_;
        return pos;
    }
    iterator insert(iterator pos, int64_t v) {
        const size_t i = (size_t)(pos - begin());
        push_back(0);
        std::memmove(begin() + i + 1, begin() + i, (size_ - i - 1) * sizeof(int64_t));
        data()[i] = v;
        return begin() + i;
    }
    void reserve(size_t n) {
        if (n <= cap_) return;
        size_t cap = std::max<size_t>(n, 2 * (size_t)cap_);
        int64_t *p = new int64_t[cap];
        std::memcpy(p, data(), size_ * sizeof(int64_t));
        free_heap();
        heap_ = p;
        cap_ = (uint32_t)cap;
    }
    std::vector<int64_t> vec() const { return std::vector<int64_t>(begin(), end()); }
    friend bool operator==(const Shape &a, const Shape &b) {
        return a.size_ == b.size_ && std::equal(a.begin(), a.end(), b.begin());
    }
    friend bool operator!=(const Shape &a, const Shape &b) { return !(a == b); }

  private:
    template <class It> void append(It b, It e) {
        reserve(size_ + (size_t)std::distance(b, e));
        for (; b != e; ++b) data()[size_++] = (int64_t)*b;
    }
    void free_heap() {
        delete[] heap_;
        heap_ = nullptr;
        cap_ = kInline;
    }
    void take(Shape &o) {
        size_ = o.size_;
        cap_ = o.cap_;
        heap_ = o.heap_;
        if (!heap_) std::memcpy(inline_, o.inline_, size_ * sizeof(int64_t));
        o.heap_ = nullptr;
        o.size_ = 0;
        o.cap_ = kInline;
    }
    int64_t inline_[kInline];
    int64_t *heap_ = nullptr;
    uint32_t size_ = 0, cap_ = kInline;
};

// Error kinds map 1:1 onto Python exception types at the binding layer.
struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct RuntimeError : std::runtime_error { using std::runtime_error::runtime_error; };
// A tape budget was exceeded (devices); Python sees a MemoryError subclass-like RuntimeError.
struct BudgetError : std::runtime_error { using std::runtime_error::runtime_error; };

// Note [Checked sizes]
//   Every size the core derives from user input (element counts, reshape targets, conv
//   output sizes, padding, byte counts of allocations and arena requests, record sizes in
//   model files) goes through the helpers below, never through a bare `*` or `+`: a
//   wrapped product is a tiny allocation followed by a wild write. Element counts are
//   capped at kMaxNumel, so that numel * (the largest item size) and the stride arithmetic
//   of any view stay far from overflow in int64 and size_t alike.
constexpr int64_t kMaxNumel = INT64_MAX / 16;

// a * b for non-negative sizes; throws ValueError naming `what` if the product exceeds `limit`.
inline int64_t checked_mul(int64_t a, int64_t b, const char *what, int64_t limit = kMaxNumel) {
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > limit)
        throw ValueError(std::string(what) + ": size " + std::to_string(a) + " x " + std::to_string(b) +
                         " is negative or too large (overflows the supported size " + std::to_string(limit) + ")");
    return r;
}
// a + b for sizes (either may be negative, e.g. H - k); throws if the sum overflows `limit`.
inline int64_t checked_add(int64_t a, int64_t b, const char *what, int64_t limit = kMaxNumel) {
    int64_t r;
    if (__builtin_add_overflow(a, b, &r) || r > limit || r < -limit)
        throw ValueError(std::string(what) + ": size " + std::to_string(a) + " + " + std::to_string(b) +
                         " is too large (overflows the supported size " + std::to_string(limit) + ")");
    return r;
}
// Bytes of `numel` items of `item` bytes each, as size_t: at most half the address space
// (SIZE_MAX / 2 on a 32-bit device, where an int64 count would otherwise be truncated).
inline size_t checked_bytes(int64_t numel, size_t item, const char *what) {
    const int64_t limit = (int64_t)std::min<uint64_t>((uint64_t)INT64_MAX / 2, (uint64_t)SIZE_MAX / 2);
    int64_t r;
    if (numel < 0 || __builtin_mul_overflow(numel, (int64_t)item, &r) || r > limit)
        throw ValueError(std::string(what) + ": " + std::to_string(numel) + " elements of " + std::to_string(item) +
                         " bytes exceed the addressable size (" + std::to_string(limit) + " bytes)");
    return (size_t)r;
}

template <class V> inline std::string shape_str_impl(const V &s) {
    std::string r = "(";
    for (size_t i = 0; i < s.size(); ++i) {
        r += std::to_string(s[i]);
        if (s.size() == 1 || i + 1 < s.size()) r += s.size() == 1 ? "," : ", ";
    }
    return r + ")";
}
inline std::string shape_str(const Shape &s) { return shape_str_impl(s); }
inline std::string shape_str(const std::vector<int64_t> &s) { return shape_str_impl(s); }

// The element count of a shape: ValueError for a negative dimension or a product beyond
// kMaxNumel. The product of the non-zero dimensions is checked too (as numpy does), so a
// shape like (0, 2**62, 2**62) is refused rather than giving strides that overflow.
inline int64_t numel_of(const Shape &s) {
    int64_t n = 1, nonzero = 1;
    bool bad = false;
    for (int64_t d : s) {
        if (d < 0) bad = true;
        if (d > 0 && (d > kMaxNumel || __builtin_mul_overflow(nonzero, d, &nonzero) || nonzero > kMaxNumel))
            bad = true;
        n *= d == 0 ? 0 : 1;
    }
    if (bad)
        throw ValueError("shape " + shape_str(s) + (std::any_of(s.begin(), s.end(), [](int64_t d) { return d < 0; })
                                                        ? " has a negative dimension"
                                                        : " is too large (more than " + std::to_string(kMaxNumel) +
                                                              " elements)"));
    return n ? nonzero : 0;
}

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
