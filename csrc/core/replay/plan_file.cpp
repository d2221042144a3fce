// plan_file.cpp — a recorded step with its parameters, optimizer state and arena plan, as a
// file a device can train from (format: docs/plan_format.md). Little-endian, no padding.
// The reader bounds every count and size by the bytes left in the file and rejects products
// that overflow, so a truncated or hostile file is an error, never a wild read.
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <limits>

#include "../arena.h"
#include "../sampling/sampling.h"
#include "plan.h"
#include "plan_file.h"

namespace spad {
namespace replay {

namespace {
constexpr char kMagic[8] = {'S', 'P', 'A', 'D', 'P', 'L', 'A', 'N'};
constexpr uint32_t kVersion = 2;  // 2: sampling policies with their state; 1 is still read
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
        if (n) std::memcpy(dst, p, n);  // an empty list's data() may be null
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

// ---- sampling policies (version 2): configuration, clock, RNG counter and per-site state ----

void put_doubles(Writer &w, const std::vector<double> &v) {
    w.put<uint64_t>(v.size());
    w.bytes(v.data(), v.size() * sizeof(double));
}

std::vector<double> get_doubles(Reader &r, const char *what) {
    std::vector<double> v((size_t)r.count(r.get<uint64_t>(what), 8, what));
    r.read(v.data(), v.size() * sizeof(double), what);
    return v;
}

void put_cfg(Writer &w, const PolicyConfig &c) {
    w.put<uint8_t>((uint8_t)c.kind);
    w.put<uint8_t>((uint8_t)c.estimator);
    w.put<double>(c.keep);
    w.put<double>(c.deterministic);
    w.put<int64_t>(c.refresh);
    w.put<uint8_t>((uint8_t)((c.unbiased ? 1 : 0) | (c.everywhere ? 2 : 0) | (c.sampled_scores ? 4 : 0)));
    w.put<double>(c.mix);
    w.put<double>(c.ema);
    w.put<uint64_t>(c.seed);
    w.put<int64_t>(c.block);
}

// A configuration the Python constructors could have made (spad/sampling.py checks the same
// ranges): a file must not hand the samplers a kind / estimator pair or a range they never see.
PolicyConfig get_cfg(Reader &r) {
    PolicyConfig c;
    const uint8_t kind = r.get<uint8_t>("policy kind"), est = r.get<uint8_t>("estimator");
    using E = Estimator;
    const E e = (E)est;
    bool ok = est <= (uint8_t)E::RAD_BLOCK;
    switch ((PolicyKind)kind) {
        case PolicyKind::EXACT: ok = ok && e == E::EXACT; break;
        case PolicyKind::RAD: ok = ok && (e == E::RAD_DIFF || e == E::RAD_SAME || e == E::PROJECT || e == E::RAD_BLOCK); break;
        case PolicyKind::CRS: ok = ok && (e == E::CRS || e == E::BERNOULLI); break;
        case PolicyKind::SPAD: ok = ok && (e == E::SPAD || e == E::SPAD_TOPK || e == E::SPAD_MAG); break;
        default: ok = false;
    }
    SPAD_CHECK(ok, ValueError, "plan file ", r.path, ": unknown policy kind ", (int)kind, " / estimator ", (int)est);
    c.kind = (PolicyKind)kind;
    c.estimator = e;
    c.keep = r.get<double>("keep");
    c.deterministic = r.get<double>("deterministic");
    c.refresh = r.get<int64_t>("refresh");
    const uint8_t flags = r.get<uint8_t>("policy flags");
    c.unbiased = flags & 1;
    c.everywhere = (flags & 2) != 0;
    c.sampled_scores = (flags & 4) != 0;
    c.mix = r.get<double>("mix");
    c.ema = r.get<double>("ema");
    c.seed = r.get<uint64_t>("seed");
    c.block = r.get<int64_t>("block");
    // SPAD's variants as spad.sampling.SPAD makes them: top-k (biased) scores exactly, the
    // magnitude paths from their own samples, the scored paths either way.
    const bool spad_ok = c.kind != PolicyKind::SPAD ||
                         (e == E::SPAD_TOPK ? !c.unbiased && !c.sampled_scores
                                            : c.unbiased && (e == E::SPAD || c.sampled_scores));
    SPAD_CHECK(spad_ok, ValueError, "plan file ", r.path, ": a SPAD estimator ", (int)est,
               " with flags the SPAD constructor never makes");
    SPAD_CHECK(c.keep > 0 && c.keep <= 1 && c.deterministic >= 0 && c.deterministic <= 1 && c.refresh >= 1 &&
                   c.mix >= 0 && c.mix <= 1 && c.ema >= 0 && c.ema < 1 && flags < 8 &&
                   (c.block == 1 || (c.block > 0 && c.block % 8 == 0)),
               ValueError, "plan file ", r.path, ": a policy setting is out of range (keep ", c.keep, ", refresh ",
               c.refresh, ", mix ", c.mix, ", ema ", c.ema, ", block ", c.block, ")");
    return c;
}

// The CONST slot holding the weight whose storage keys a site, or -1 (a site of a weight this
// step does not capture: the policy also served other models; not needed here).
int32_t slot_of_storage(const Program &P, const Storage *st) {
    for (size_t s = 0; s < P.n_slots(); ++s)
        if (P.kinds[s] == SlotKind::CONST && P.consts[s]->storage.get() == st) return (int32_t)s;
    return -1;
}

void put_policies(Writer &w, const Program &P) {
    w.put<uint32_t>((uint32_t)P.policies.size());
    for (const auto &pp : P.policies) {
        Policy &p = *pp;
        std::lock_guard<std::mutex> lk(p.mu);
        put_cfg(w, p.cfg);
        w.put<int64_t>(p.step);
        w.put<uint64_t>(p.counter);
        std::vector<std::pair<int32_t, double>> keeps;
        for (const auto &kv : p.site_keep)
            if (int32_t s = slot_of_storage(P, kv.first); s >= 0) keeps.push_back({s, kv.second});
        std::sort(keeps.begin(), keeps.end());
        w.put<uint32_t>((uint32_t)keeps.size());
        for (const auto &k : keeps) {
            w.put<int32_t>(k.first);
            w.put<double>(k.second);
        }
        std::vector<std::pair<int32_t, SiteState *>> sites;
        for (const auto &kv : p.sites)
            if (int32_t s = slot_of_storage(P, kv.first); s >= 0) sites.push_back({s, kv.second.get()});
        std::sort(sites.begin(), sites.end());
        w.put<uint32_t>((uint32_t)sites.size());
        for (const auto &e : sites) {
            SiteState &st = *e.second;
            std::lock_guard<std::mutex> slk(st.mu);
            w.put<int32_t>(e.first);
            put_cfg(w, st.cfg);
            w.put<int64_t>(st.n);
            put_doubles(w, st.score);
            std::vector<double> q;
            if (st.q) q.assign(st.q->data<double>(), st.q->data<double>() + st.q->numel());
            put_doubles(w, q);
            put_doubles(w, st.dy_norm);
            put_doubles(w, st.acc);
            w.put<int64_t>(st.acc_steps);
            w.put<uint8_t>(st.rescore ? 1 : 0);
        }
    }
}

void get_policies(Reader &r, Program &P) {
    const uint32_t np = (uint32_t)r.count(r.get<uint32_t>("policies"), 60, "policy");
    auto weight_slot = [&](const char *what) {
        const int32_t s = r.get<int32_t>(what);
        SPAD_CHECK(s >= 0 && (size_t)s < P.n_slots() && P.kinds[(size_t)s] == SlotKind::CONST &&
                       is_floating(P.consts[(size_t)s]->dtype),
                   ValueError, "plan file ", r.path, ": ", what, " names slot ", s, ", not a captured float tensor");
        return P.consts[(size_t)s]->storage.get();
    };
    for (uint32_t k = 0; k < np; ++k) {
        auto p = std::make_shared<Policy>(get_cfg(r));
        p->step = r.get<int64_t>("policy step");
        p->counter = r.get<uint64_t>("policy counter");
        SPAD_CHECK(p->step >= 0, ValueError, "plan file ", r.path, ": policy ", k, " has a negative step");
        const uint32_t nk = (uint32_t)r.count(r.get<uint32_t>("site keeps"), 12, "site keep");
        for (uint32_t j = 0; j < nk; ++j) {
            const Storage *st = weight_slot("site keep slot");
            const double keep = r.get<double>("site keep");
            SPAD_CHECK(keep > 0 && keep <= 1, ValueError, "plan file ", r.path, ": site keep ", keep, " not in (0, 1]");
            p->site_keep[st] = keep;
        }
        const uint32_t ns = (uint32_t)r.count(r.get<uint32_t>("sites"), 60, "site");
        for (uint32_t j = 0; j < ns; ++j) {
            const Storage *key = weight_slot("site slot");
            auto site = std::make_shared<SiteState>();
            site->cfg = get_cfg(r);
            // A site copies its policy's settings when made (keep may be a site override).
            const PolicyConfig &pc = p->cfg, &sc = site->cfg;
            SPAD_CHECK(sc.kind == pc.kind && sc.estimator == pc.estimator && sc.unbiased == pc.unbiased &&
                           sc.sampled_scores == pc.sampled_scores && sc.everywhere == pc.everywhere &&
                           sc.refresh == pc.refresh && sc.mix == pc.mix && sc.ema == pc.ema && sc.seed == pc.seed &&
                           sc.block == pc.block && sc.deterministic == pc.deterministic,
                       ValueError, "plan file ", r.path, ": site ", j, " of policy ", k,
                       " has settings other than its policy's");
            site->n = r.get<int64_t>("site features");
            site->score = get_doubles(r, "site scores");
            std::vector<double> q = get_doubles(r, "site distribution");
            site->dy_norm = get_doubles(r, "site norms");
            site->acc = get_doubles(r, "site accumulators");
            site->acc_steps = r.get<int64_t>("site steps");
            site->rescore = r.get<uint8_t>("site rescore") != 0;
            // The samplers index these by feature (score, q, acc) or by batch row (dy_norm):
            // a feature vector must be empty or exactly n long.
            auto fits = [&](size_t m) { return m == 0 || m == (size_t)site->n; };
            // Accumulated steps are divided into the accumulators at the next refresh.
            SPAD_CHECK(site->n > 0 && fits(site->score.size()) && fits(q.size()) && fits(site->acc.size()) &&
                           site->acc_steps >= 0 && (site->acc_steps == 0 || site->acc.size() == (size_t)site->n),
                       ValueError, "plan file ", r.path, ": site ", j, " of policy ", k, " has inconsistent state");
            if (!q.empty()) {  // as the sampler makes it (sampling/linear.cpp, q_of): persistent state
                spad::ArenaScope persistent(persistent_arena());
                site->q = empty({site->n}, DType::F64);
                site->q->storage->is_param = true;
                std::copy(q.begin(), q.end(), site->q->data<double>());
            }
            p->sites[key] = std::move(site);
        }
        P.policies.push_back(std::move(p));
    }
}
}  // namespace

std::vector<unsigned char> serialize(const Program &P) {
    for (const Record &r : P.records)
        SPAD_CHECK(r.op != Op::BEGIN_STEP, ValueError, "save: begin_step records are no longer supported; re-record");
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
    put_policies(w, P);
    return w.buf;
}

std::shared_ptr<Program> deserialize(const unsigned char *data, size_t n, const char *path) {
    Reader r{data, n, path};
    char magic[8];
    r.read(magic, 8, "magic");
    SPAD_CHECK(std::memcmp(magic, kMagic, 8) == 0, ValueError, "plan file ", path, ": not a spad plan (bad magic)");
    const uint32_t version = r.get<uint32_t>("version");
    SPAD_CHECK(version == 1 || version == kVersion, ValueError, "plan file ", path, ": version ", version,
               ", this build reads 1 and ", kVersion);
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
    std::vector<std::pair<uint32_t, int64_t>> policy_refs;  // (record, policy index), checked once policies are read
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
        SPAD_CHECK(rec.op != Op::BEGIN_STEP, ValueError, "plan file ", path, ": record ", k,
                   " is a begin_step record (no longer supported)");
        if (rec.op == Op::SET_POLICY) policy_refs.push_back({k, rec.ints[0]});
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
    if (version >= 2) get_policies(r, *P);
    for (const auto &pr : policy_refs)  // a policy record names a policy of the file, or none (-1)
        SPAD_CHECK(pr.second >= -1 && pr.second < (int64_t)P->policies.size(), ValueError, "plan file ", path,
                   ": record ", pr.first, " switches to policy ", pr.second, " of ", P->policies.size());
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

void move_program_state(Program &P, const std::function<void(const Tensor &)> &move) {
    std::vector<std::pair<const Storage *, const Storage *>> moved;
    for (const Tensor &c : P.consts) {
        if (!c) continue;
        const Storage *before = c->storage.get();
        move(c);
        if (c->storage.get() != before) moved.push_back({before, c->storage.get()});
    }
    auto now = [&](const Storage *k) {
        for (const auto &m : moved)
            if (m.first == k) return m.second;
        return k;
    };
    for (const auto &pp : P.policies) {
        std::lock_guard<std::mutex> lk(pp->mu);
        decltype(pp->sites) sites;
        for (auto &kv : pp->sites) {
            std::lock_guard<std::mutex> slk(kv.second->mu);
            if (kv.second->q) move(kv.second->q);
            sites[now(kv.first)] = kv.second;
        }
        pp->sites = std::move(sites);
        decltype(pp->site_keep) keeps;
        for (const auto &kv : pp->site_keep) keeps[now(kv.first)] = kv.second;
        pp->site_keep = std::move(keeps);
    }
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
