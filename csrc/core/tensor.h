// tensor.h — Storage (bytes + version counter + tape reference counts) and Tensor
// (a strided view over a Storage, plus the autograd fields).
//
// A Tensor is a std::shared_ptr<TensorImpl>: Python, saved payloads and grads all hold
// the same object, so a numpy view keeps its storage alive for as long as it exists.
// Strides are in elements. Most kernels call contiguous() first; views (transpose,
// reshape of contiguous data, detach) share storage.
#pragma once
#include <atomic>
#include <memory>
#include <utility>

#include "common.h"
#include "memory.h"

namespace spad {

struct Node;
struct TensorImpl;
using Tensor = std::shared_ptr<TensorImpl>;

// What an exact tape would keep of one storage (Note [Tape accounting] in saved.h). A
// sampled payload holds this token, never the storage: holding the storage would keep
// the whole tensor alive, and the sampled tape would save nothing but on paper.
struct ExactCharge {
    size_t nbytes = 0;
    std::atomic<int32_t> refs{0};  // live payloads that an exact tape would have charged for it
    bool is_param = false;
};

struct Storage {
    void *data = nullptr;
    size_t nbytes = 0;
    // Frees `data` (heap) or drops a borrowed owner (numpy): the core never knows which.
    void (*release)(void *data, void *ctx) = nullptr;
    void *ctx = nullptr;
    // Bumped by every in-place write (optimizer steps); saved payloads compare it at
    // unpack time. See Note [Saved tensor versions] in saved.h.
    uint64_t version = 0;
    // How many live saved payloads hold this storage (real tape) / would hold it in an
    // exact tape. Bytes are counted once per storage. See Note [Tape accounting].
    std::atomic<int32_t> tape_refs{0};
    std::shared_ptr<ExactCharge> exact_charge;  // made on first use
    // Persistent state (parameters, optimizer and sampler state) lives across steps anyway:
    // saving it costs the tape nothing, so it is not counted in tape bytes.
    bool is_param = false;
    // Allocation accounting (Note [Allocation accounting] in memory.h): `counted` storages
    // were made by alloc_storage(); borrowed ones (numpy) are not spad's allocation.
    bool counted = false;
    MemCategory category = MemCategory::OTHER;
    // Small tensors (a batch-1 activation, a bias) live inside the Storage object itself:
    // one allocation instead of two. See alloc_storage().
    static constexpr size_t kSmall = 256;
    alignas(16) unsigned char small[kSmall];

    Storage() = default;
    Storage(const Storage &) = delete;
    Storage &operator=(const Storage &) = delete;
    ~Storage() {
        count_free(*this);
        if (release) release(data, ctx);
    }
};

std::shared_ptr<Storage> alloc_storage(size_t nbytes);

struct TensorImpl {
    std::shared_ptr<Storage> storage;
    Shape shape;
    Shape strides;  // elements
    int64_t offset = 0;
    DType dtype = DType::F32;
    bool requires_grad = false;
    Tensor grad;                     // accumulated gradient (leaves only)
    std::shared_ptr<Node> grad_fn;   // producer node (non-leaves only)

    int64_t numel() const { return numel_of(shape); }
    int64_t ndim() const { return (int64_t)shape.size(); }
    bool is_leaf() const { return !grad_fn; }
    bool is_contiguous() const;
    template <class T> T *data() const { return static_cast<T *>(storage->data) + offset; }
    void *raw() const { return static_cast<char *>(storage->data) + offset * dtype_size(dtype); }
};

Shape contiguous_strides(const Shape &shape);
Tensor empty(const Shape &shape, DType dt);
Tensor zeros(const Shape &shape, DType dt);
Tensor full(const Shape &shape, double value, DType dt);
Tensor scalar(double value, DType dt);
Tensor view(const Tensor &t, Shape shape, Shape strides, int64_t offset);  // no grad
Tensor contiguous(const Tensor &t);  // t itself if already contiguous, else a packed copy
Tensor copy(const Tensor &t);        // always a fresh packed copy (no grad)
double item(const Tensor &t);
bool is_floating(DType d);
bool all_finite(const Tensor &t);

// ---- N-d iteration -------------------------------------------------------------
// Calls f(o, a, b, n, so, sa, sb) for each innermost run of n elements, where o/a/b
// are element offsets of the run's start in three operands and so/sa/sb their strides
// along the run. A zero stride broadcasts. Shapes up to any rank; iterative.
template <class F>
void nd_runs(const Shape &shape, const int64_t *so, const int64_t *sa, const int64_t *sb, F &&f) {
    const int64_t nd = (int64_t)shape.size();
    if (nd == 0) {
        f(0, 0, 0, 1, 0, 0, 0);
        return;
    }
    for (int64_t d : shape)
        if (d == 0) return;
    const int64_t n = shape[nd - 1];
    int64_t idx[16] = {0};
    SPAD_CHECK(nd <= 16, ValueError, "tensors of rank > 16 are not supported (got ", nd, ")");
    int64_t o = 0, a = 0, b = 0;
    while (true) {
        f(o, a, b, n, so[nd - 1], sa[nd - 1], sb[nd - 1]);
        int64_t d = nd - 2;
        for (; d >= 0; --d) {
            if (++idx[d] < shape[d]) {
                o += so[d];
                a += sa[d];
                b += sb[d];
                break;
            }
            o -= so[d] * (shape[d] - 1);
            a -= sa[d] * (shape[d] - 1);
            b -= sb[d] * (shape[d] - 1);
            idx[d] = 0;
        }
        if (d < 0) return;
    }
}

// Strides of `t` as seen through a broadcast to `out_shape` (0 on broadcast axes).
Shape broadcast_strides(const TensorImpl &t, const Shape &out_shape);
Shape broadcast_shapes(const char *op, const Shape &a, const Shape &b);

// Dispatch on a floating dtype: SPAD_FLOAT(dt, T, body) runs body with T = float/double.
#define SPAD_FLOAT(dt, T, ...)                                                        \
    do {                                                                              \
        if ((dt) == ::spad::DType::F32) {                                             \
            using T = float;                                                          \
            __VA_ARGS__;                                                              \
        } else if ((dt) == ::spad::DType::F64) {                                      \
            using T = double;                                                         \
            __VA_ARGS__;                                                              \
        } else {                                                                      \
            throw ::spad::TypeError(::spad::str("expected a float32 or float64 tensor, got ", \
                                                ::spad::dtype_name(dt)));             \
        }                                                                             \
    } while (0)

}  // namespace spad
