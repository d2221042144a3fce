// model_c.cpp — models exported from Python (spad.export) in the C API: load, save,
// inference, on-device SGD training under a sampling policy.
//
// File format (version 1), all integers and floats little-endian; the same text is in
// spad/model_io.py (the writer) and docs/embedded.md:
//
//   magic    8 bytes  "SPADMODL"
//   version  u32      1
//   n_layers u32
//   in_ndim  u32      rank of one example (0 = not recorded), then in_ndim x u32 dims
//   layers   n_layers records, each:
//     kind     u32    1 Linear, 2 Conv2d, 3 MaxPool2d, 4 AvgPool2d, 5 ReLU, 6 Tanh,
//                     7 Sigmoid, 8 Flatten
//     n_args   u32    then n_args x u32: Linear -, Conv2d [stride, padding], pools [k]
//     n_tensors u32   then per tensor: ndim u32, ndim x u32 dims, prod(dims) x f32 (row-major)
//                     Linear: weight (in, out) [, bias (out,)]
//                     Conv2d: weight (C_out, C_in, k, k) [, bias (C_out,)]
//
// Why a record with generic args and tensors: the loader validates every record the same
// way (lengths against the bytes left) before it interprets any, so a truncated or
// corrupt file is a clean SPAD_ERR_VALUE naming the byte offset, never a wild read.
#include <cmath>
#include <cstdio>

#include "../core/optim.h"
#include "capi_internal.h"

using namespace spad_capi;

namespace {

enum LayerKind : uint32_t { LINEAR = 1, CONV2D, MAXPOOL, AVGPOOL, RELU, TANH, SIGMOID, FLATTEN, KIND_END_ };

struct Layer {
    uint32_t kind = 0;
    std::vector<uint32_t> args;
    std::vector<spad::Tensor> params;  // weight, then bias if any
};

const char kMagic[8] = {'S', 'P', 'A', 'D', 'M', 'O', 'D', 'L'};

// Byte-order independent reads: the format is little-endian whatever the host is.
struct Reader {
    const unsigned char *p;
    size_t n, at = 0;
    void need(size_t k, const char *what) {
        SPAD_CHECK(k <= n - at, ValueError, "spad_model_load: file ends at byte ", n, " inside ", what,
                   " (needs ", k, " more bytes at byte ", at, "); truncated or not a spad model");
    }
    uint32_t u32(const char *what) {
        need(4, what);
        uint32_t v = (uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 | (uint32_t)p[at + 3] << 24;
        at += 4;
        return v;
    }
};

struct Writer {
    std::vector<unsigned char> b;
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) b.push_back((unsigned char)(v >> (8 * i)));
    }
};

spad::Tensor read_tensor(Reader &r) {
    const uint32_t ndim = r.u32("a tensor's rank");
    SPAD_CHECK(ndim >= 1 && ndim <= 4, ValueError, "spad_model_load: tensor rank ", ndim, " at byte ", r.at - 4,
               " (expected 1 to 4)");
    spad::Shape shape;
    uint64_t numel = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
        shape.push_back(r.u32("a tensor's shape"));
        numel *= (uint64_t)shape.back();
        SPAD_CHECK(numel <= (r.n - r.at) / 4, ValueError, "spad_model_load: tensor of shape ", spad::shape_str(shape),
                   "... at byte ", r.at, " is larger than the rest of the file");
    }
    r.need((size_t)numel * 4, "tensor data");
    spad::Tensor t = spad::empty(shape, spad::DType::F32);
    float *d = t->data<float>();
    for (uint64_t i = 0; i < numel; ++i) {
        uint32_t bits = r.u32("tensor data");
        std::memcpy(&d[i], &bits, 4);
    }
    t->requires_grad = true;
    spad::set_category(*t->storage, spad::MemCategory::PARAMETERS);
    return t;
}

void write_tensor(Writer &w, const spad::Tensor &t) {
    spad::Tensor c = spad::contiguous(t);
    w.u32((uint32_t)c->ndim());
    for (int64_t d : c->shape) w.u32((uint32_t)d);
    const float *d = c->data<float>();
    for (int64_t i = 0; i < c->numel(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, &d[i], 4);
        w.u32(bits);
    }
}

// Shapes of a layer's parameters and arguments, checked once at load time so that a bad
// file fails there and not in the middle of a forward pass.
void check_layer(const Layer &L, size_t i) {
    const size_t na = L.args.size(), np = L.params.size();
    auto bad = [&](const char *what) {
        throw spad::ValueError(spad::str("spad_model_load: layer ", i, " (kind ", L.kind, "): ", what));
    };
    switch (L.kind) {
        case LINEAR:
            if (na != 0 || np < 1 || np > 2 || L.params[0]->ndim() != 2) bad("Linear needs a 2-d weight and an optional bias");
            if (np == 2 && L.params[1]->shape != spad::Shape{L.params[0]->shape[1]}) bad("Linear bias must be (out,)");
            break;
        case CONV2D:
            if (na != 2 || np < 1 || np > 2 || L.params[0]->ndim() != 4 || L.args[0] < 1) bad("Conv2d needs [stride, padding] and a 4-d weight");
            if (np == 2 && L.params[1]->shape != spad::Shape{L.params[0]->shape[0]}) bad("Conv2d bias must be (C_out,)");
            break;
        case MAXPOOL:
        case AVGPOOL:
            if (na != 1 || np != 0 || L.args[0] < 1) bad("pooling needs one argument k >= 1 and no tensors");
            break;
        case RELU: case TANH: case SIGMOID: case FLATTEN:
            if (na != 0 || np != 0) bad("activations and Flatten take no arguments or tensors");
            break;
        default: bad("unknown layer kind (a newer format?)");
    }
}

}  // namespace

struct spad_model {
    std::vector<Layer> layers;
    spad::Shape in_shape;  // one example; empty = not recorded
};

void spad_model_destroy(spad_model *m) { delete m; }

namespace {

spad::Tensor forward(const spad_model &m, spad::Tensor x) {
    namespace ops = spad::ops;
    for (const Layer &L : m.layers) {
        const spad::Tensor b = L.params.size() > 1 ? L.params[1] : spad::Tensor();
        switch (L.kind) {
            case LINEAR: x = ops::linear(x, L.params[0], b); break;
            case CONV2D: {
                const int64_t s = L.args[0], p = L.args[1];
                x = ops::conv2d(x, L.params[0], b, {s, s}, {p, p});
                break;
            }
            case MAXPOOL: x = ops::max_pool2d(x, L.args[0]); break;
            case AVGPOOL: x = ops::avg_pool2d(x, L.args[0]); break;
            case RELU: x = ops::relu(x); break;
            case TANH: x = ops::tanh(x); break;
            case SIGMOID: x = ops::sigmoid(x); break;
            case FLATTEN:
                SPAD_CHECK(x->ndim() >= 1, ValueError, "Flatten: input must have a batch axis, got shape ",
                           spad::shape_str(x->shape));
                x = ops::reshape(x, {x->shape[0], -1});
                break;
        }
    }
    return x;
}

std::vector<spad::Tensor> params_of(const spad_model &m) {
    std::vector<spad::Tensor> ps;
    for (const Layer &L : m.layers) ps.insert(ps.end(), L.params.begin(), L.params.end());
    return ps;
}

spad_model *parse(const unsigned char *data, size_t n) {
    Reader r{data, n};
    r.need(8, "the magic bytes");
    SPAD_CHECK(std::memcmp(data, kMagic, 8) == 0, ValueError,
               "spad_model_load: not a spad model (the file does not start with \"SPADMODL\")");
    r.at = 8;
    const uint32_t version = r.u32("the version");
    SPAD_CHECK(version == 1, ValueError, "spad_model_load: format version ", version, " is not supported (this is 1)");
    const uint32_t n_layers = r.u32("the layer count");
    SPAD_CHECK(n_layers <= (n - r.at) / 12, ValueError, "spad_model_load: ", n_layers, " layers cannot fit in ", n,
               " bytes");
    std::unique_ptr<spad_model> m(new spad_model);
    const uint32_t in_ndim = r.u32("the input rank");
    SPAD_CHECK(in_ndim <= 3, ValueError, "spad_model_load: input rank ", in_ndim, " (expected 0 to 3)");
    for (uint32_t i = 0; i < in_ndim; ++i) m->in_shape.push_back(r.u32("the input shape"));
    for (uint32_t i = 0; i < n_layers; ++i) {
        Layer L;
        L.kind = r.u32("a layer kind");
        const uint32_t na = r.u32("a layer's argument count");
        SPAD_CHECK(na <= 8, ValueError, "spad_model_load: layer ", i, " has ", na, " arguments (at most 8)");
        for (uint32_t a = 0; a < na; ++a) L.args.push_back(r.u32("a layer argument"));
        const uint32_t nt = r.u32("a layer's tensor count");
        SPAD_CHECK(nt <= 2, ValueError, "spad_model_load: layer ", i, " has ", nt, " tensors (at most 2)");
        for (uint32_t t = 0; t < nt; ++t) L.params.push_back(read_tensor(r));
        check_layer(L, i);
        m->layers.push_back(std::move(L));
    }
    SPAD_CHECK(r.at == n, ValueError, "spad_model_load: ", n - r.at, " unexpected bytes after the last layer");
    return m.release();
}

spad_model *adopt(spad_ctx_t *ctx, spad_model *m) {
    ctx->models.push_back(m);
    return m;
}

uint64_t splitmix(uint64_t &s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

}  // namespace

extern "C" {

spad_status spad_ctx_set_policy(spad_ctx_t *ctx, spad_policy_kind kind, double keep, int64_t refresh, uint64_t seed) {
    return guard([&] {
        const char *fn = "spad_ctx_set_policy";
        need(ctx != nullptr, fn, "ctx is NULL");
        if (kind == SPAD_POLICY_EXACT) {
            ctx->policy.reset();
            return;
        }
        need(kind == SPAD_POLICY_RAD || kind == SPAD_POLICY_SPAD, fn, "unknown policy kind");
        SPAD_CHECK(keep > 0 && keep <= 1, ValueError, fn, ": keep must be in (0, 1], got ", keep);
        SPAD_CHECK(kind != SPAD_POLICY_SPAD || refresh >= 1, ValueError, fn, ": refresh must be >= 1, got ", refresh);
        spad::PolicyConfig c;  // the Python defaults: spad.sampling.RAD(...) / SPAD(...)
        c.kind = kind == SPAD_POLICY_RAD ? spad::PolicyKind::RAD : spad::PolicyKind::SPAD;
        c.estimator = kind == SPAD_POLICY_RAD ? spad::Estimator::RAD_DIFF : spad::Estimator::SPAD;
        c.keep = keep;
        c.refresh = kind == SPAD_POLICY_SPAD ? refresh : 1;
        c.seed = seed;
        // The old policy's sampler state lives in the persistent arena: free it first.
        ctx->policy.reset();
        CtxScope scope(ctx);
        ctx->policy = std::make_shared<spad::Policy>(c);
    });
}

spad_status spad_ctx_step_begin(spad_ctx_t *ctx) {
    return guard([&] {
        need(ctx != nullptr, "spad_ctx_step_begin", "ctx is NULL");
        if (ctx->policy) spad::begin_step(*ctx->policy);
    });
}

spad_status spad_model_load_buffer(spad_ctx_t *ctx, const void *data, size_t nbytes, spad_model_t **out) {
    return guard([&] {
        need(ctx && out, "spad_model_load", "ctx and out must not be NULL");
        need(data || nbytes == 0, "spad_model_load", "data is NULL");
        *out = nullptr;
        CtxScope scope(ctx);
        spad::ArenaScope params(ctx->persist.get());  // weights live as long as the model
        *out = adopt(ctx, parse(static_cast<const unsigned char *>(data), nbytes));
    });
}

spad_status spad_model_load(spad_ctx_t *ctx, const char *path, spad_model_t **out) {
    std::vector<unsigned char> bytes;
    spad_status s = guard([&] {
        need(path != nullptr, "spad_model_load", "path is NULL");
        std::FILE *f = std::fopen(path, "rb");
        SPAD_CHECK(f, ValueError, "spad_model_load: cannot open '", path, "'");
        unsigned char buf[4096];
        size_t got;
        while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + got);
        const bool err = std::ferror(f) != 0;
        std::fclose(f);
        SPAD_CHECK(!err, ValueError, "spad_model_load: read error on '", path, "'");
    });
    if (s != SPAD_OK) return s;
    return spad_model_load_buffer(ctx, bytes.data(), bytes.size(), out);
}

spad_status spad_model_save(const spad_model_t *model, const char *path) {
    return guard([&] {
        need(model && path, "spad_model_save", "model and path must not be NULL");
        Writer w;
        w.b.assign(kMagic, kMagic + 8);
        w.u32(1);
        w.u32((uint32_t)model->layers.size());
        w.u32((uint32_t)model->in_shape.size());
        for (int64_t d : model->in_shape) w.u32((uint32_t)d);
        for (const Layer &L : model->layers) {
            w.u32(L.kind);
            w.u32((uint32_t)L.args.size());
            for (uint32_t a : L.args) w.u32(a);
            w.u32((uint32_t)L.params.size());
            for (const spad::Tensor &t : L.params) write_tensor(w, t);
        }
        std::FILE *f = std::fopen(path, "wb");
        SPAD_CHECK(f, ValueError, "spad_model_save: cannot open '", path, "' for writing");
        const size_t put = std::fwrite(w.b.data(), 1, w.b.size(), f);
        const bool ok = std::fclose(f) == 0 && put == w.b.size();
        SPAD_CHECK(ok, ValueError, "spad_model_save: write error on '", path, "'");
    });
}

spad_status spad_model_mlp(spad_ctx_t *ctx, const int32_t *sizes, int32_t n_sizes, uint64_t seed, spad_model_t **out) {
    return guard([&] {
        const char *fn = "spad_model_mlp";
        need(ctx && out && sizes, fn, "ctx, sizes and out must not be NULL");
        need(n_sizes >= 2, fn, "need at least two sizes (inputs, outputs)");
        *out = nullptr;
        for (int32_t i = 0; i < n_sizes; ++i)
            SPAD_CHECK(sizes[i] >= 1, ValueError, fn, ": size ", i, " is ", sizes[i], "; sizes must be >= 1");
        CtxScope scope(ctx);
        spad::ArenaScope params(ctx->persist.get());
        std::unique_ptr<spad_model> m(new spad_model);
        m->in_shape = {sizes[0]};
        uint64_t s = seed;
        for (int32_t i = 0; i + 1 < n_sizes; ++i) {
            Layer L;
            L.kind = LINEAR;
            spad::Tensor W = spad::empty({sizes[i], sizes[i + 1]}, spad::DType::F32);
            const double bound = std::sqrt(6.0 / sizes[i]);  // He uniform, as spad.init
            float *w = W->data<float>();
            for (int64_t j = 0; j < W->numel(); ++j)
                w[j] = (float)(bound * ((double)(splitmix(s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0));
            spad::Tensor b = spad::zeros({sizes[i + 1]}, spad::DType::F32);
            for (spad::Tensor *p : {&W, &b}) {
                (*p)->requires_grad = true;
                spad::set_category(*(*p)->storage, spad::MemCategory::PARAMETERS);
            }
            L.params = {W, b};
            m->layers.push_back(std::move(L));
            if (i + 2 < n_sizes) {
                Layer act;
                act.kind = RELU;
                m->layers.push_back(std::move(act));
            }
        }
        *out = adopt(ctx, m.release());
    });
}

void spad_model_free(spad_ctx_t *ctx, spad_model_t *model) {
    if (!ctx || !model) return;
    for (size_t i = 0; i < ctx->models.size(); ++i)
        if (ctx->models[i] == model) {
            ctx->models.erase(ctx->models.begin() + (std::ptrdiff_t)i);
            spad_model_destroy(model);
            return;
        }
}

spad_status spad_model_forward(spad_ctx_t *ctx, const spad_model_t *model, const spad_tensor_t *x, spad_tensor_t **out) {
    return guard([&] {
        need(ctx && model && out, "spad_model_forward", "ctx, model and out must not be NULL");
        *out = nullptr;
        CtxScope scope(ctx);
        spad::NoGradGuard inference;
        *out = keep(ctx, spad::contiguous(forward(*model, T(x, "spad_model_forward", "x"))));
    });
}

spad_status spad_model_train_step(spad_ctx_t *ctx, spad_model_t *model, const spad_tensor_t *x,
                                  const spad_tensor_t *target, double lr, double *loss) {
    std::vector<spad::Tensor> ps;
    // Whatever happens, no gradient outlives the call: the step arena can then be reused
    // whole, and a failed step cannot leak half a gradient into the next one.
    struct DropGrads {
        const std::vector<spad::Tensor> &ps;
        ~DropGrads() {
            for (const spad::Tensor &p : ps) p->grad.reset();
        }
    } drop{ps};
    return guard([&] {
        const char *fn = "spad_model_train_step";
        need(ctx && model, fn, "ctx and model must not be NULL");
        ps = params_of(*model);
        const spad::Tensor &xt = T(x, fn, "x");
        const spad::Tensor &yt = T(target, fn, "target");
        SPAD_CHECK(std::isfinite(lr) && lr >= 0, ValueError, fn, ": lr must be a finite number >= 0, got ", lr);
        CtxScope scope(ctx);
        if (ctx->policy) spad::begin_step(*ctx->policy);
        for (const spad::Tensor &p : ps) p->grad.reset();
        double value;
        {
            spad::Tensor y = forward(*model, xt);
            spad::Tensor L = yt->dtype == spad::DType::I64 ? spad::ops::cross_entropy(y, yt) : spad::ops::mse_loss(y, yt);
            value = spad::item(L);
            SPAD_CHECK(std::isfinite(value), ValueError, fn, ": the loss is ", value,
                       "; parameters left untouched (lower the learning rate?)");
            spad::backward(L, nullptr, false, false);
        }
        if (loss) *loss = value;
        spad::optim::sgd(ps, {}, lr, 0.0, false, 0.0);
    });
}

int32_t spad_model_num_params(const spad_model_t *model) {
    return model ? (int32_t)params_of(*model).size() : 0;
}

spad_status spad_model_param(spad_ctx_t *ctx, const spad_model_t *model, int32_t i, spad_tensor_t **out) {
    return guard([&] {
        need(ctx && model && out, "spad_model_param", "ctx, model and out must not be NULL");
        const std::vector<spad::Tensor> ps = params_of(*model);
        *out = i >= 0 && (size_t)i < ps.size() ? keep(ctx, ps[(size_t)i]) : nullptr;
    });
}

}  // extern "C"
