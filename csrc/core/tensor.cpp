#include "tensor.h"

#include "arena.h"
#include "replay/alloc_hook.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace spad {

static void free_heap(void *data, void *) { std::free(data); }
static void free_arena(void *data, void *arena) { static_cast<Arena *>(arena)->free(data); }

// Training allocates and frees the same large buffers every step. glibc serves blocks
// above 128 KiB with fresh mmap()s, so every step would pay page faults and zeroing for
// its activations; raising the threshold lets freed blocks be reused instead.
static void tune_allocator() {
#ifdef __GLIBC__
    static const bool done = [] {
        mallopt(M_MMAP_THRESHOLD, 256 << 20);
        mallopt(M_TRIM_THRESHOLD, 512 << 20);
        return true;
    }();
    (void)done;
#endif
}

std::shared_ptr<Storage> alloc_storage(size_t nbytes) {
    auto s = std::make_shared<Storage>();
    // Devices route tensor data into a fixed arena (see arena.h); the heap is the default.
    if (Arena *a = current_arena()) {
        s->data = a->alloc(nbytes);
        s->nbytes = nbytes;
        s->release = free_arena;
        s->ctx = a;
        return s;
    }
    // A compiled step being recorded or replayed traces this or serves it from its arena.
    if (replay::t_storage_hook && replay::t_storage_hook(*s, nbytes)) return s;
    if (nbytes <= Storage::kSmall) {
        s->data = s->small;
        s->nbytes = nbytes;
        return s;
    }
    tune_allocator();
    // 64-byte alignment keeps SIMD loads and BLAS happy; aligned_alloc needs a multiple.
    size_t padded = (nbytes + 63) / 64 * 64;
    if (padded == 0) padded = 64;
    s->data = std::aligned_alloc(64, padded);
    if (!s->data) throw std::bad_alloc();
    s->nbytes = nbytes;
    s->release = free_heap;
    return s;
}

Shape contiguous_strides(const Shape &shape) {
    Shape st(shape.size());
    int64_t acc = 1;
    for (int64_t i = (int64_t)shape.size() - 1; i >= 0; --i) {
        st[i] = acc;
        acc *= shape[i];
    }
    return st;
}

bool TensorImpl::is_contiguous() const {
    int64_t acc = 1;
    for (int64_t i = (int64_t)shape.size() - 1; i >= 0; --i) {
        if (shape[i] != 1 && strides[i] != acc) return false;
        acc *= shape[i];
    }
    return true;
}

Tensor empty(const Shape &shape, DType dt) {
    for (int64_t d : shape)
        SPAD_CHECK(d >= 0, ValueError, "negative dimension in shape ", shape_str(shape));
    auto t = std::make_shared<TensorImpl>();
    t->storage = alloc_storage((size_t)numel_of(shape) * dtype_size(dt));
    t->shape = shape;
    t->strides = contiguous_strides(shape);
    t->dtype = dt;
    return t;
}

Tensor zeros(const Shape &shape, DType dt) {
    Tensor t = empty(shape, dt);
    std::memset(t->storage->data, 0, t->storage->nbytes);
    return t;
}

Tensor full(const Shape &shape, double value, DType dt) {
    Tensor t = empty(shape, dt);
    int64_t n = t->numel();
    SPAD_FLOAT(dt, T, {
        T *p = t->data<T>();
        for (int64_t i = 0; i < n; ++i) p[i] = (T)value;
    });
    return t;
}

Tensor scalar(double value, DType dt) { return full({}, value, dt); }

Tensor view(const Tensor &t, Shape shape, Shape strides, int64_t offset) {
    auto v = std::make_shared<TensorImpl>();
    v->storage = t->storage;
    v->shape = std::move(shape);
    v->strides = std::move(strides);
    v->offset = offset;
    v->dtype = t->dtype;
    return v;
}

Tensor copy(const Tensor &t) {
    Tensor out = empty(t->shape, t->dtype);
    size_t es = dtype_size(t->dtype);
    if (t->is_contiguous()) {
        std::memcpy(out->storage->data, t->raw(), (size_t)t->numel() * es);
        return out;
    }
    const char *src = static_cast<const char *>(t->storage->data);
    char *dst = static_cast<char *>(out->storage->data);
    Shape zero(t->shape.size(), 0);
    nd_runs(t->shape, out->strides.data(), t->strides.data(), zero.data(),
            [&](int64_t o, int64_t a, int64_t, int64_t n, int64_t so, int64_t sa, int64_t) {
                for (int64_t i = 0; i < n; ++i)
                    std::memcpy(dst + (o + i * so) * es, src + (t->offset + a + i * sa) * es, es);
            });
    return out;
}

Tensor contiguous(const Tensor &t) { return t->is_contiguous() ? t : copy(t); }

double item(const Tensor &t) {
    SPAD_CHECK(t->numel() == 1, ValueError, "item: only a tensor with one element can be converted to a scalar, got shape ",
               shape_str(t->shape));
    switch (t->dtype) {
        case DType::F32: return *t->data<float>();
        case DType::F64: return *t->data<double>();
        case DType::I64: return (double)*t->data<int64_t>();
        case DType::U8: return *t->data<uint8_t>();
        case DType::I32: return *t->data<int32_t>();
    }
    return 0;
}

bool is_floating(DType d) { return d == DType::F32 || d == DType::F64; }

bool all_finite(const Tensor &t) {
    Tensor c = contiguous(t);
    int64_t n = c->numel();
    bool ok = true;
    SPAD_FLOAT(c->dtype, T, {
        const T *p = c->data<T>();
        // Sum-based check vectorizes; a NaN or inf anywhere poisons the sum of x*0.
        T acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += p[i] * T(0);
        ok = acc == T(0);
    });
    return ok;
}

Shape broadcast_strides(const TensorImpl &t, const Shape &out_shape) {
    Shape st(out_shape.size(), 0);
    int64_t off = (int64_t)out_shape.size() - t.ndim();
    for (int64_t i = 0; i < t.ndim(); ++i)
        st[off + i] = t.shape[i] == 1 ? 0 : t.strides[i];
    return st;
}

Shape broadcast_shapes(const char *op, const Shape &a, const Shape &b) {
    size_t n = std::max(a.size(), b.size());
    Shape out(n);
    for (size_t i = 0; i < n; ++i) {
        int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
        int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
        SPAD_CHECK(da == db || da == 1 || db == 1, ValueError, op, ": shapes ", shape_str(a), " and ",
                   shape_str(b), " cannot be broadcast together");
        out[i] = da == 1 ? db : da;
    }
    return out;
}

}  // namespace spad
