// model_format.cpp — the reader of model_format.h: byte-order independent, bounded by the
// buffer at every step, and the checks of Note [Valid records].
#include "model_format.h"

#include <cstring>

namespace spad {
namespace model_file {

namespace {

struct Reader {
    const unsigned char *p;
    size_t n, at;
    const char *who;
    void need(size_t k, const char *what) const {
        SPAD_CHECK(k <= n - at, ValueError, who, ": file ends at byte ", n, " inside ", what, " (needs ", k,
                   " more bytes at byte ", at, "); truncated or not a spad model");
    }
    uint32_t u32(const char *what) {
        need(4, what);
        const uint32_t v =
            (uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 | (uint32_t)p[at + 3] << 24;
        at += 4;
        return v;
    }
    // A count of items of `item_bytes` each that must fit in the rest of the file.
    uint32_t count(const char *what, size_t item_bytes) {
        const size_t at0 = at;
        const uint32_t c = u32(what);
        SPAD_CHECK(c <= (n - at) / item_bytes, ValueError, who, ": ", what, " ", c, " at byte ", at0,
                   " cannot fit in the ", n - at, " bytes left; truncated or not a spad model");
        return c;
    }
    int64_t dim(const char *what) {
        const size_t at0 = at;
        const uint32_t d = u32(what);
        SPAD_CHECK(d >= 1 && d <= kMaxDim, ValueError, who, ": ", what, " ", d, " at byte ", at0,
                   " is out of range (1 to ", kMaxDim, ")");
        return d;
    }
};

const char *kind_name(uint32_t k) {
    static const char *names[] = {"?", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "ReLU", "Tanh", "Sigmoid",
                                  "Flatten"};
    return k >= 1 && k < KIND_END ? names[k] : "unknown";
}

TensorRecord read_tensor(Reader &r) {
    const size_t at0 = r.at;
    const uint32_t ndim = r.u32("a tensor's rank");
    SPAD_CHECK(ndim >= 1 && ndim <= 4, ValueError, r.who, ": tensor rank ", ndim, " at byte ", at0,
               " (expected 1 to 4)");
    TensorRecord t;
    uint64_t numel = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
        t.shape.push_back(r.dim("a tensor dimension"));
        // Each partial product stays <= the bytes left / 4 (< 2^62): no product can wrap.
        numel *= (uint64_t)t.shape.back();
        SPAD_CHECK(numel <= (r.n - r.at) / 4, ValueError, r.who, ": tensor of shape ", shape_str(t.shape),
                   "... at byte ", at0, " is larger than the rest of the file (", r.n - r.at,
                   " bytes); truncated or not a spad model");
    }
    r.need((size_t)numel * 4, "tensor data");
    t.offset = r.at;
    r.at += (size_t)numel * 4;
    return t;
}

}  // namespace

void check_record(const Record &L, size_t i, const char *who) {
    const size_t na = L.args.size(), nt = L.tensors.size();
    auto bad = [&](const std::string &what) {
        throw ValueError(str(who, ": layer ", i, " (", kind_name(L.kind), ", kind ", L.kind, "): ", what));
    };
    auto shape = [&](size_t j) -> const Shape & { return L.tensors[j].shape; };
    switch (L.kind) {
        case LINEAR:
            if (na != 0) bad(str("Linear takes no arguments, got ", na));
            if (nt < 1 || nt > 2 || shape(0).size() != 2)
                bad("Linear needs a 2-d weight (in, out) and an optional bias (out,)");
            if (nt == 2 && shape(1) != Shape{shape(0)[1]})
                bad(str("Linear bias must be (", shape(0)[1], ",), got ", shape_str(shape(1))));
            break;
        case CONV2D: {
            if (na != 2) bad(str("Conv2d needs two arguments [stride, padding], got ", na));
            if (nt < 1 || nt > 2 || shape(0).size() != 4 || shape(0)[2] != shape(0)[3])
                bad("Conv2d needs a square 4-d weight (C_out, C_in, k, k) and an optional bias (C_out,)");
            const int64_t k = shape(0)[2];
            if (L.args[0] < 1) bad(str("Conv2d stride must be >= 1, got ", L.args[0]));
            if ((int64_t)L.args[1] >= k) bad(str("Conv2d padding must be in 0..", k - 1, " (kernel ", k, "), got ", L.args[1]));
            if (nt == 2 && shape(1) != Shape{shape(0)[0]})
                bad(str("Conv2d bias must be (", shape(0)[0], ",), got ", shape_str(shape(1))));
            break;
        }
        case MAXPOOL:
        case AVGPOOL:
            if (na != 1 || nt != 0) bad("pooling needs one argument k and no tensors");
            if (L.args[0] < 1 || L.args[0] > kMaxPool) bad(str("pooling size k must be in 1..", kMaxPool, ", got ", L.args[0]));
            break;
        case RELU: case TANH: case SIGMOID: case FLATTEN:
            if (na != 0 || nt != 0) bad("activations and Flatten take no arguments or tensors");
            break;
        default: bad("unknown layer kind (a newer format?)");
    }
}

File parse(const unsigned char *data, size_t n, const char *who) {
    SPAD_CHECK(data || n == 0, ValueError, who, ": no data");
    Reader r{data, n, 0, who};
    r.need(8, "the magic bytes");
    SPAD_CHECK(std::memcmp(data, kMagic, 8) == 0, ValueError, who,
               ": not a spad model (the file does not start with \"SPADMODL\")");
    r.at = 8;
    const uint32_t version = r.u32("the version");
    SPAD_CHECK(version == kVersion, ValueError, who, ": format version ", version, " is not supported (this is ",
               kVersion, ")");
    // Every record is at least 12 bytes (kind, n_args, n_tensors).
    const uint32_t n_layers = r.count("layer count", 12);
    SPAD_CHECK(n_layers <= kMaxLayers, ValueError, who, ": ", n_layers, " layers (at most ", kMaxLayers, ")");
    File f;
    const uint32_t in_ndim = r.u32("the input rank");
    SPAD_CHECK(in_ndim <= 3, ValueError, who, ": input rank ", in_ndim, " (expected 0 to 3)");
    for (uint32_t i = 0; i < in_ndim; ++i) f.in_shape.push_back(r.dim("an input dimension"));
    f.records.reserve(n_layers);
    for (uint32_t i = 0; i < n_layers; ++i) {
        Record L;
        L.kind = r.u32("a layer kind");
        const uint32_t na = r.count("argument count", 4);
        SPAD_CHECK(na <= 8, ValueError, who, ": layer ", i, " has ", na, " arguments (at most 8)");
        for (uint32_t a = 0; a < na; ++a) L.args.push_back(r.u32("a layer argument"));
        const uint32_t nt = r.count("tensor count", 4);  // a tensor is at least its rank
        SPAD_CHECK(nt <= 2, ValueError, who, ": layer ", i, " has ", nt, " tensors (at most 2)");
        for (uint32_t t = 0; t < nt; ++t) L.tensors.push_back(read_tensor(r));
        check_record(L, i, who);
        f.records.push_back(std::move(L));
    }
    SPAD_CHECK(r.at == n, ValueError, who, ": ", n - r.at, " unexpected bytes after the last layer");
    return f;
}

void read_floats(const unsigned char *data, const TensorRecord &t, float *dst) {
    const int64_t n = numel_of(t.shape);
    const unsigned char *p = data + t.offset;
    for (int64_t i = 0; i < n; ++i, p += 4) {
        const uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        std::memcpy(&dst[i], &bits, 4);
    }
}

}  // namespace model_file
}  // namespace spad
