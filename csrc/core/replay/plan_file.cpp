// plan_file.cpp — a recorded step with its parameters, optimizer state and arena plan, as a
// file a device can train from (format: docs/plan_format.md). Little-endian, no padding.
// The reader bounds every count and size by the bytes left in the file and rejects products
// that overflow, so a truncated or hostile file is an error, never a wild read.
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <limits>

#include "plan.h"
#include "plan_file.h"

namespace spad {
namespace replay {

namespace {
constexpr char kMagic[8] = {'S', 'P', 'A', 'D', 'P', 'L', 'A', 'N'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxRank = 16;

struct Writer {
    std::vector<unsigned char> buf;
    template <class T> void put(T v) {
        const auto *p = reinterpret_cast<const unsigned char *>(&v);
        buf.insert(buf.end(), p, p + sizeof(T));
    }
    void bytes(const void *p, size_t n) {
        const auto *c = static_cast<const unsigned char *>(p);
        buf.insert(buf.end(), c, c + n);
    }
};

struct Reader {
    const unsigned char *p;
    size_t left;
    const char *path;
    void need(size_t n, const char *what) {
        SPAD_CHECK(n <= left, ValueError, "plan file ", path, ": truncated (", what, " needs ", n, " bytes, ", left,
                   " left)");
    }
    template <class T> T get(const char *what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, p, sizeof(T));
        p += sizeof(T);
        left -= sizeof(T);
        return v;
    }
    // A count of items of `item` bytes each that must still fit in the file.
    uint64_t count(uint64_t n, uint64_t item, const char *what) {
        SPAD_CHECK(item == 0 || n <= left / item, ValueError, "plan file ", path, ": ", what, " count ", n,
                   " exceeds the file size");
        return n;
    }
    void read(void *dst, size_t n, const char *what) {
        need(n, what);
        std::memcpy(dst, p, n);
        p += n;
        left -= n;
    }
};

void put_shape(Writer &w, const Shape &s) {
    w.put<uint8_t>((uint8_t)s.size());
    for (int64_t d : s) w.put<int64_t>(d);
}

Shape get_shape(Reader &r, int64_t *numel) {
    const uint32_t nd = r.get<uint8_t>("rank");
    SPAD_CHECK(nd <= kMaxRank, ValueError, "plan file ", r.path, ": rank ", nd, " > ", kMaxRank);
    r.count(nd, 8, "shape");
    Shape s;
    int64_t n = 1;
    for (uint32_t k = 0; k < nd; ++k) {
        const int64_t d = r.get<int64_t>("dim");
        SPAD_CHECK(d >= 0 && (d == 0 || n <= std::numeric_limits<int64_t>::max() / d), ValueError, "plan file ",
                   r.path, ": bad or overflowing dimension ", d);
        n *= d;
        s.push_back(d);
    }
    if (numel) *numel = n;
    return s;
}

DType get_dtype(Reader &r) {
    const uint8_t d = r.get<uint8_t>("dtype");
    SPAD_CHECK(d <= (uint8_t)DType::I32, ValueError, "plan file ", r.path, ": unknown dtype ", (int)d);
    return (DType)d;
}
// The argument counts exec() relies on (exec.cpp), checked before a loaded record can run:
// a hostile file must not make it index past its arguments or dereference a missing tensor.
void check_record(const Record &r, uint32_t k, const std::vector<char> &defined, const char *path) {
    const size_t nt = r.in.size(), ni = r.ints.size(), nd = r.dbls.size();
    bool ok = true;
    int optional = -1;  // the one argument position that may be None
    switch (r.op) {
        case Op::NEG: case Op::EXP: case Op::LOG: case Op::SQRT: case Op::TANH: case Op::SIGMOID: case Op::RELU:
        case Op::DETACH: case Op::CONTIGUOUS: case Op::BUMP_VERSION: case Op::GET_GRAD: case Op::RESHAPE:
        case Op::EXPAND: case Op::PERMUTE: ok = nt == 1; break;
        case Op::ADD: case Op::SUB: case Op::MUL: case Op::DIV: case Op::MATMUL: case Op::CROSS_ENTROPY: case Op::MSE:
        case Op::ASSIGN: case Op::TAKE: ok = nt == 2; break;
        case Op::SET_GRAD: ok = nt == 2; optional = 1; break;
        case Op::POW: ok = nt == 1 && nd == 1; break;
        case Op::SUM: case Op::MEAN: case Op::MAX: ok = nt == 1 && ni >= 1; break;
        case Op::SOFTMAX: case Op::LOG_SOFTMAX: case Op::MAX_POOL2D: case Op::AVG_POOL2D: ok = nt == 1 && ni == 1; break;
        case Op::CONCAT: ok = nt >= 1 && ni == 1; break;
        case Op::LINEAR: ok = nt == 3; optional = 2; break;
        case Op::LINEAR_CHAIN: ok = ni >= 1 && nt == 1 + 2 * ni; break;  // biases (even j >= 2) may be None
        case Op::CONV2D: ok = nt == 3 && ni == 4; optional = 2; break;
        case Op::DROPOUT: ok = nt == 1 && ni == 1 && nd == 1; break;
        case Op::BACKWARD:  // create_graph is not in format 1 (its graphs can refer back to parameters)
            ok = nt == 2 && ni == 2 && (r.ints[0] == 0 || r.ints[0] == 1) && r.ints[1] == 0;
            optional = 1;
            break;
        case Op::SET_GRAD_ENABLED: case Op::SET_POLICY: case Op::BEGIN_STEP: ok = nt == 0 && ni == 1; break;
        case Op::VIEW: ok = nt == 1 && ni >= 3 && ni == (size_t)(3 + 2 * std::max<int64_t>(r.ints[2], 0)); break;
        case Op::CLEAR_GRADS: case Op::SGD: case Op::ADAGRAD: case Op::RMSPROP: case Op::ADAM: break;  // exec checks
        case Op::COUNT_: ok = false; break;
    }
    SPAD_CHECK(ok, ValueError, "plan file ", path, ": record ", k, " (", op_name(r.op), ") has ", nt, " tensors, ", ni,
               " ints, ", nd, " doubles");
    for (size_t j = 0; j < nt; ++j) {
        const int32_t s = r.in[j];
        SPAD_CHECK(s >= 0 ? defined[(size_t)s] != 0 : ((int)j == optional || (r.op == Op::LINEAR_CHAIN && j >= 2 && j % 2 == 0)), ValueError, "plan file ", path, ": record ", k,
                   " (", op_name(r.op), ") reads ", s < 0 ? "None" : "an undefined slot", " as argument ", j);
    }
}
}  // namespace

std::vector<unsigned char> serialize(const Program &P) {
    for (const Record &r : P.records)
        SPAD_CHECK(!((r.op == Op::SET_POLICY && r.ints[0] >= 0) || r.op == Op::BEGIN_STEP), ValueError,
                   "save: steps recorded under a sampling policy cannot be saved yet (policy state is not in the "
                   "plan format); record the step without spad.sampling.use to save it");
    for (const Record &r : P.records)
        SPAD_CHECK(!(r.op == Op::BACKWARD && r.ints[1] != 0), ValueError,
                   "save: a step calling backward(create_graph=True) cannot be saved (not in plan format 1)");
    Writer w;
    w.bytes(kMagic, 8);
    w.put<uint32_t>(kVersion);
    w.put<uint32_t>((uint32_t)P.n_slots());
    w.put<uint32_t>((uint32_t)P.n_inputs);
    w.put<int32_t>(P.loss);
    w.put<uint32_t>((uint32_t)P.records.size());
    for (size_t s = 0; s < P.n_slots(); ++s) {
        w.put<uint8_t>((uint8_t)P.kinds[s]);
        if (P.kinds[s] == SlotKind::INPUT) {
            w.put<uint8_t>((uint8_t)P.in_dtypes[s]);
            put_shape(w, P.in_shapes[s]);
        } else if (P.kinds[s] == SlotKind::CONST) {
            Tensor c = contiguous(P.consts[s]);
            w.put<uint8_t>((uint8_t)c->dtype);
            w.put<uint8_t>((uint8_t)((P.consts[s]->requires_grad ? 1 : 0) | (P.consts[s]->storage->is_param ? 2 : 0)));
            put_shape(w, c->shape);
            w.bytes(c->raw(), (size_t)c->numel() * dtype_size(c->dtype));
        }
    }
    for (const Record &r : P.records) {
        w.put<int32_t>((int32_t)r.op);
        w.put<int32_t>(r.out);
        w.put<uint32_t>((uint32_t)r.in.size());
        w.put<uint32_t>((uint32_t)r.ints.size());
        w.put<uint32_t>((uint32_t)r.dbls.size());
        for (int32_t v : r.in) w.put<int32_t>(v);
        for (int64_t v : r.ints) w.put<int64_t>(v);
        for (double v : r.dbls) w.put<double>(v);
    }
    const ArenaPlan empty_plan;
    const ArenaPlan &pl = P.plan ? *P.plan : empty_plan;
    w.put<uint64_t>(pl.sizes.size());
    for (size_t k = 0; k < pl.sizes.size(); ++k) {
        w.put<uint64_t>(pl.sizes[k]);
        w.put<int64_t>(pl.alloc_t[k]);
        w.put<int64_t>(pl.free_t[k]);
    }
    return w.buf;
}

std::shared_ptr<Program> deserialize(const unsigned char *data, size_t n, const char *path) {
    Reader r{data, n, path};
    char magic[8];
    r.read(magic, 8, "magic");
    SPAD_CHECK(std::memcmp(magic, kMagic, 8) == 0, ValueError, "plan file ", path, ": not a spad plan (bad magic)");
    const uint32_t version = r.get<uint32_t>("version");
    SPAD_CHECK(version == kVersion, ValueError, "plan file ", path, ": version ", version, ", this build reads ",
               kVersion);
    auto P = std::make_shared<Program>();
    const uint32_t ns = (uint32_t)r.count(r.get<uint32_t>("slots"), 1, "slot");
    P->n_inputs = (int32_t)r.get<uint32_t>("inputs");
    P->loss = r.get<int32_t>("loss slot");
    const uint32_t nr = (uint32_t)r.count(r.get<uint32_t>("records"), 20, "record");
    SPAD_CHECK(P->n_inputs >= 0 && (uint32_t)P->n_inputs <= ns && P->loss >= -1 && P->loss < (int64_t)ns, ValueError,
               "plan file ", path, ": inconsistent slot counts");
    P->kinds.resize(ns);
    P->consts.resize(ns);
    for (uint32_t s = 0; s < ns; ++s) {
        const uint8_t kind = r.get<uint8_t>("slot kind");
        SPAD_CHECK(kind <= (uint8_t)SlotKind::VALUE && ((kind == (uint8_t)SlotKind::INPUT) == (s < (uint32_t)P->n_inputs)),
                   ValueError, "plan file ", path, ": slot ", s, " has a bad kind ", (int)kind);
        P->kinds[s] = (SlotKind)kind;
        if (P->kinds[s] == SlotKind::INPUT) {
            P->in_dtypes.push_back(get_dtype(r));
            P->in_shapes.push_back(get_shape(r, nullptr));
        } else if (P->kinds[s] == SlotKind::CONST) {
            const DType dt = get_dtype(r);
            const uint8_t flags = r.get<uint8_t>("flags");
            int64_t numel = 0;
            Shape shape = get_shape(r, &numel);
            r.count((uint64_t)numel, dtype_size(dt), "tensor data");
            Tensor t = empty(shape, dt);
            r.read(t->raw(), (size_t)numel * dtype_size(dt), "tensor data");
            t->requires_grad = (flags & 1) && is_floating(dt);
            t->storage->is_param = (flags & 2) != 0;
            P->consts[s] = t;
        }
    }
    P->records.resize(nr);
    std::vector<char> defined(ns, 0);
    for (uint32_t s = 0; s < ns; ++s) defined[s] = P->kinds[s] != SlotKind::VALUE;
    for (uint32_t k = 0; k < nr; ++k) {
        Record &rec = P->records[k];
        const int32_t op = r.get<int32_t>("op");
        SPAD_CHECK(op >= 0 && op < (int32_t)Op::COUNT_, ValueError, "plan file ", path, ": record ", k,
                   " has an unknown op id ", op);
        rec.op = (Op)op;
        rec.out = r.get<int32_t>("out");
        const uint32_t ni = r.get<uint32_t>("n_in"), nint = r.get<uint32_t>("n_ints"), nd = r.get<uint32_t>("n_dbls");
        r.count(ni, 4, "inputs");
        r.count(nint, 8, "ints");
        r.count(nd, 8, "doubles");
        SPAD_CHECK(rec.out >= -1 && rec.out < (int64_t)ns && (rec.out < 0 || P->kinds[(size_t)rec.out] == SlotKind::VALUE),
                   ValueError, "plan file ", path, ": record ", k, " writes a bad slot ", rec.out);
        for (uint32_t j = 0; j < ni; ++j) {
            const int32_t s = r.get<int32_t>("in");
            SPAD_CHECK(s >= -1 && s < (int64_t)ns, ValueError, "plan file ", path, ": record ", k, " reads slot ", s);
            rec.in.push_back(s);
        }
        for (uint32_t j = 0; j < nint; ++j) rec.ints.push_back(r.get<int64_t>("int"));
        for (uint32_t j = 0; j < nd; ++j) rec.dbls.push_back(r.get<double>("double"));
        check_record(rec, k, defined, path);
        if (rec.out >= 0) defined[(size_t)rec.out] = 1;
        // Policies are not in format version 1: a policy record may only switch policies off.
        SPAD_CHECK(!((rec.op == Op::SET_POLICY && (rec.ints.empty() || rec.ints[0] >= 0)) || rec.op == Op::BEGIN_STEP),
                   ValueError, "plan file ", path, ": record ", k, " needs a sampling policy (not in format 1)");
    }
    auto plan = std::make_shared<ArenaPlan>();
    const uint64_t na = r.count(r.get<uint64_t>("allocations"), 24, "allocation");
    for (uint64_t k = 0; k < na; ++k) {
        plan->sizes.push_back(r.get<uint64_t>("size"));
        plan->alloc_t.push_back(r.get<int64_t>("alloc time"));
        plan->free_t.push_back(r.get<int64_t>("free time"));
        SPAD_CHECK(plan->sizes.back() < (uint64_t(1) << 48) && plan->alloc_t.back() >= 0 && plan->free_t.back() >= -1,
                   ValueError, "plan file ", path, ": allocation ", k, " is out of range");
    }
    SPAD_CHECK(r.left == 0, ValueError, "plan file ", path, ": ", r.left, " trailing bytes");
    // Lifetimes on one event clock: allocations in order, each freed after it was made, no two
    // events at the same time (the planner relies on it).
    std::vector<int64_t> times;
    for (size_t k = 0; k < plan->sizes.size(); ++k) {
        SPAD_CHECK((k == 0 || plan->alloc_t[k] > plan->alloc_t[k - 1]) &&
                       (plan->free_t[k] < 0 || plan->free_t[k] > plan->alloc_t[k]),
                   ValueError, "plan file ", path, ": allocation ", k, " has an inconsistent lifetime");
        times.push_back(plan->alloc_t[k]);
        if (plan->free_t[k] >= 0) times.push_back(plan->free_t[k]);
    }
    std::sort(times.begin(), times.end());
    SPAD_CHECK(std::adjacent_find(times.begin(), times.end()) == times.end(), ValueError, "plan file ", path,
               ": two allocation events at the same time");
    plan->solve();
    P->plan = std::move(plan);
    P->plan_verified = false;  // the first step checks the sizes before the arena is reserved
    P->finalize();
    return P;
}

void save_program(const Program &P, const std::string &path) {
    std::vector<unsigned char> b = serialize(P);
    FILE *f = std::fopen(path.c_str(), "wb");
    SPAD_CHECK(f, RuntimeError, "save: cannot open ", path, " for writing");
    const size_t put = std::fwrite(b.data(), 1, b.size(), f);
    const bool ok = std::fclose(f) == 0 && put == b.size();
    SPAD_CHECK(ok, RuntimeError, "save: writing ", path, " failed");
}

std::shared_ptr<Program> load_program(const std::string &path) {
    FILE *f = std::fopen(path.c_str(), "rb");
    SPAD_CHECK(f, ValueError, "plan file ", path, ": cannot open it");
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 14];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
    std::fclose(f);
    return deserialize(bytes.data(), bytes.size(), path.c_str());
}

}  // namespace replay
}  // namespace spad
