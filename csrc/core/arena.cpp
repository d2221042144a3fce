#include "arena.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace spad {

namespace {
// Written at the start of every block, just below the data it hands out.
struct Header {
    uint64_t begin, end;  // the block's extent in arena offsets
};
static_assert(sizeof(Header) == Arena::kHeader, "header must fill exactly one alignment unit");

constexpr size_t kMinBlock = Arena::kHeader + Arena::kAlign;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

thread_local Arena *g_current = nullptr;
thread_local Arena *g_persistent = nullptr;
}  // namespace

Arena::Arena(void *buffer, size_t capacity) {
    SPAD_CHECK(buffer || capacity == 0, ValueError, "arena: buffer is NULL but capacity is ", capacity, " bytes");
    // Align the start; the bytes skipped are simply not part of the arena.
    const uintptr_t p = reinterpret_cast<uintptr_t>(buffer);
    const size_t skip = capacity ? (size_t)(round_up(p, kAlign) - p) : 0;
    base_ = static_cast<unsigned char *>(buffer) + (skip <= capacity ? skip : capacity);
    cap_ = skip <= capacity ? (capacity - skip) / kAlign * kAlign : 0;
}

Arena::Arena(size_t capacity) {
    cap_ = round_up(capacity, kAlign);
    if (cap_) {
        base_ = static_cast<unsigned char *>(std::aligned_alloc(kAlign, cap_));
        if (!base_) throw AllocError(str("arena: could not reserve ", cap_, " bytes from the heap"));
    }
    owned_ = true;
}

Arena Arena::measuring() {
    Arena a;
    a.measure_ = true;
    a.cap_ = SIZE_MAX / 2;
    return a;
}

Arena::Arena(Arena &&o) noexcept
    : base_(o.base_), cap_(o.cap_), top_(o.top_), high_(o.high_), live_(o.live_), owned_(o.owned_),
      measure_(o.measure_), n_free_(o.n_free_) {
    std::copy(o.free_, o.free_ + o.n_free_, free_);
    o.base_ = nullptr;
    o.owned_ = false;
}

Arena::~Arena() {
    if (owned_) std::free(base_);
}

Arena::Range Arena::place(size_t nbytes) {
    size_t need = kHeader + round_up(std::max<size_t>(nbytes, 1), kAlign);
    // Best fit among the holes, but a small block does not split a much larger hole while
    // the bump pointer has room: in a training step the large holes are freed activations
    // that the next layer's (same-sized) activation will want, and the small blocks are
    // tape payloads that stay until backward. Splitting would strand both.
    int best = -1;
    for (int i = 0; i < n_free_; ++i) {
        const size_t size = free_[i].end - free_[i].begin;
        if (size >= need && (best < 0 || size < free_[best].end - free_[best].begin)) best = i;
    }
    const bool bump_fits = need <= cap_ - top_;
    if (best >= 0 && (!bump_fits || free_[best].end - free_[best].begin <= 4 * need)) {
        Range &r = free_[best];
        Range got{r.begin, r.begin + need};
        if (r.end - got.end >= kMinBlock) {
            r.begin = got.end;
        } else {  // too small a remainder to ever hold a block: hand out the whole hole
            got.end = r.end;
            free_[best] = free_[--n_free_];
        }
        ++live_;
        return got;
    }
    if (need > cap_ - top_)
        throw AllocError(str("arena: out of memory: a block of ", nbytes, " bytes does not fit (", top_, " of ", cap_,
                             " bytes in use, high water ", high_, "); give the arena more bytes, or lower the "
                             "batch size or keep fraction"));
    const Range got{top_, top_ + need};
    top_ = got.end;
    high_ = std::max(high_, top_);
    ++live_;
    return got;
}

void *Arena::alloc(size_t nbytes) {
    SPAD_CHECK(nbytes < SIZE_MAX / 4, ValueError, "arena: request of ", nbytes, " bytes is too large");
    const Range r = place(nbytes);
    unsigned char *block;
    if (measure_) {
        block = static_cast<unsigned char *>(std::malloc(kHeader + nbytes + 1));
        if (!block) {
            give_back(r.begin, r.end);
            throw AllocError(str("arena (measure mode): the heap has no ", nbytes, " bytes left"));
        }
    } else {
        block = base_ + r.begin;
    }
    const Header h{r.begin, r.end};
    std::memcpy(block, &h, sizeof h);
    return block + kHeader;
}

void Arena::free(void *p) {
    if (!p) return;
    unsigned char *block = static_cast<unsigned char *>(p) - kHeader;
    Header h;
    std::memcpy(&h, block, sizeof h);
    if (measure_) std::free(block);
    give_back(h.begin, h.end);
}

void Arena::give_back(size_t begin, size_t end) {
    if (live_) --live_;
    if (begin >= top_) return;  // already below the bump pointer's reach (defensive)
    end = std::min(end, top_);
    // Coalesce with the holes on either side.
    for (int i = 0; i < n_free_;) {
        if (free_[i].end == begin) {
            begin = free_[i].begin;
            free_[i] = free_[--n_free_];
        } else if (free_[i].begin == end) {
            end = free_[i].end;
            free_[i] = free_[--n_free_];
        } else {
            ++i;
        }
    }
    if (end == top_) {
        top_ = begin;  // the top block: the bump pointer simply moves back
        return;
    }
    if (n_free_ < kMaxFree) free_[n_free_++] = Range{begin, end};
    // else: kept until reset() (see arena.h)
}

void Arena::reset() {
    SPAD_CHECK(live_ == 0, RuntimeError, "arena: reset with ", live_,
               " block(s) still alive; drop the tensors that use them first (spad_ctx_rewind)");
    top_ = 0;
    n_free_ = 0;
}

Arena *current_arena() { return g_current; }
Arena *persistent_arena() { return g_persistent; }

ArenaScope::ArenaScope(Arena *a) : prev(g_current) { g_current = a; }
ArenaScope::~ArenaScope() { g_current = prev; }

PersistentArenaScope::PersistentArenaScope(Arena *a) : prev(g_persistent) { g_persistent = a; }
PersistentArenaScope::~PersistentArenaScope() { g_persistent = prev; }

}  // namespace spad
