#include "tensor.h"

#include "arena.h"
#include "replay/alloc_hook.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <type_traits>
#include <string>
#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace spad {

static void free_heap(void *data, void *) { std::free(data); }
static void free_arena(void *data, void *arena) { static_cast<Arena *>(arena)->free(data); }

// Training allocates and frees the same large buffers every step; how they are served decides
// what the OS sees (peak RSS), which is what users measure, and what each step pays in page
// faults. Options, chosen once per process by SPAD_MALLOC (measured in
// benchmarks/realized_memory.py and bench_sampled_step.py):
//   cache   (default) blocks >= 1 MiB get their own mmap() and go back to the OS on free, except
//           that a small cache keeps freed blocks for the next request of the same size (the
//           next step asks for the same sizes): no page faults for repeated buffers, and no
//           RSS above the live peak on the cache's account (Note [Block cache]);
//   mmap    the same without the cache: RSS follows the counters exactly, every step faults in
//           its large blocks anew (a fixed threshold also turns off glibc's sliding threshold,
//           which otherwise moves freed 16 MiB blocks onto the heap, where holes stay resident);
//   reuse   large blocks stay on the heap and are never trimmed: no page faults after the
//           first step, but the heap's high-water mark (fragmentation included) stays in RSS;
//   system  the C library's defaults.
enum class MallocMode { CACHE, MMAP, REUSE, SYSTEM };
static MallocMode malloc_mode() {
    static const MallocMode mode = [] {
        const char *env = std::getenv("SPAD_MALLOC");
        const std::string m = env ? env : "cache";
        const MallocMode r = m == "mmap" ? MallocMode::MMAP : m == "reuse" ? MallocMode::REUSE
                           : m == "system" ? MallocMode::SYSTEM : MallocMode::CACHE;
#ifdef __GLIBC__
        if (r == MallocMode::REUSE) {
            mallopt(M_MMAP_THRESHOLD, 256 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
        } else if (r == MallocMode::MMAP || r == MallocMode::CACHE) {
            mallopt(M_MMAP_THRESHOLD, 1 << 20);
        }
#endif
        return r;
    }();
    return mode;
}

// Note [Block cache]
//   Freed blocks of >= 1 MiB are kept by exact (padded) size, up to max(8 MiB, live allocated
//   bytes / 4) in all; a block that does not fit is unmapped at once. A request that finds no
//   block of its size first unmaps every cached block: fresh pages are only ever faulted in
//   with the cache empty, so RSS never exceeds the peak of live bytes on account of the cache,
//   while a step that repeats the previous step's sizes (every training step does) takes them
//   from the cache instead of faulting in fresh pages. Never destroyed: storages freed during
//   static destruction may still return blocks, and the blocks stay reachable (no leak report).
struct BlockCache {
    static constexpr size_t kMin = size_t(1) << 20;
    std::mutex mu;
    std::unordered_multimap<size_t, void *> blocks;
    size_t bytes = 0;
    static BlockCache &get() {
        static BlockCache *c = new BlockCache();
        return *c;
    }
    void *take(size_t padded) {
        std::unordered_multimap<size_t, void *> drop;
        {
            std::lock_guard<std::mutex> lk(mu);
            auto it = blocks.find(padded);
            if (it != blocks.end()) {
                void *p = it->second;
                blocks.erase(it);
                bytes -= padded;
                return p;
            }
            drop.swap(blocks);
            bytes = 0;
        }
        for (auto &kv : drop) std::free(kv.second);
        return nullptr;
    }
    bool keep(void *p, size_t padded) {
        const int64_t live = mem_stats().allocated_bytes.load(std::memory_order_relaxed);
        const size_t cap = std::max<size_t>(size_t(8) << 20, live > 0 ? (size_t)live / 4 : 0);
        std::lock_guard<std::mutex> lk(mu);
        if (bytes + padded > cap) return false;
        blocks.emplace(padded, p);
        bytes += padded;
        return true;
    }
};
static size_t padded_size(size_t nbytes) {  // 64-byte alignment keeps SIMD loads and BLAS happy
    const size_t padded = (nbytes + 63) / 64 * 64;
    return padded == 0 ? 64 : padded;
}
static void free_cached(void *data, void *ctx) {
    const size_t padded = (size_t)(uintptr_t)ctx;
    if (!BlockCache::get().keep(data, padded)) std::free(data);
}

std::shared_ptr<Storage> alloc_storage(size_t nbytes) {
    auto s = std::make_shared<Storage>();
    // Devices route tensor data into a fixed arena (see arena.h); the heap is the default.
    if (Arena *a = current_arena()) {
        s->data = a->alloc(nbytes);
        s->nbytes = nbytes;
        s->release = free_arena;
        s->ctx = a;
        count_alloc(*s);
        return s;
    }
    // A compiled step being recorded or replayed traces this or serves it from its arena.
    // Counted like any other allocation (~Storage's count_free balances it, arena or heap).
    if (replay::t_storage_hook && replay::t_storage_hook(*s, nbytes)) {
        count_alloc(*s);
        return s;
    }
    if (nbytes <= Storage::kSmall) {
        s->data = s->small;
        s->nbytes = nbytes;
        count_alloc(*s);
        return s;
    }
    const size_t padded = padded_size(nbytes);
    s->release = free_heap;
    if (malloc_mode() == MallocMode::CACHE && padded >= BlockCache::kMin) {
        s->data = BlockCache::get().take(padded);
        s->release = free_cached;
        s->ctx = (void *)(uintptr_t)padded;
    }
    if (!s->data) s->data = std::aligned_alloc(64, padded);
    if (!s->data) throw std::bad_alloc();
    s->nbytes = nbytes;
    count_alloc(*s);
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
    const size_t nbytes = checked_bytes(numel_of(shape), dtype_size(dt), "tensor allocation");
    try {
        t->storage = alloc_storage(nbytes);
    } catch (const std::bad_alloc &) {  // say what could not be had (Python: MemoryError)
        throw AllocError(str("out of memory: cannot allocate ", nbytes, " bytes (", nbytes >> 20, " MiB) for a ",
                             dtype_name(dt), " tensor of shape ", shape_str(shape)));
    }
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
        // On the bits: NaN and inf are exactly the values whose exponent is all ones. An
        // integer OR-reduction vectorizes (a float sum of x*0 does not without fast-math,
        // and fit() runs this over every gradient and parameter each step).
        using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
        const U exp = sizeof(T) == 4 ? (U)0x7f800000u : (U)0x7ff0000000000000ull;
        const unsigned char *p = static_cast<const unsigned char *>(c->raw());
        const int64_t block = 1024;
        for (int64_t b = 0; b < n && ok; b += block) {
            const int64_t e = std::min(n, b + block);
            U all = 0;
            for (int64_t i = b; i < e; ++i) {
                U bits;
                std::memcpy(&bits, p + i * sizeof(T), sizeof(T));
                all |= (U)((bits & exp) == exp);
            }
            ok = all == 0;
        }
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
