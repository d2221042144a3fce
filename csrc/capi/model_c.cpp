// model_c.cpp — models exported from Python (spad.export) in the C API: load, save,
// inference, on-device SGD training under a sampling policy.
//
// The file format and its reader (every check of a record) live in core/model_format.h,
// shared with Python's spad.load_model: one specification, one set of checks.
#include <cmath>
#include <cstdio>

#include "../core/model_format.h"
#include "../core/optim.h"
#include "capi_internal.h"

using namespace spad_capi;

namespace {

using namespace spad::model_file;

struct Layer {
    uint32_t kind = 0;
    std::vector<uint32_t> args;
    std::vector<spad::Tensor> params;  // weight, then bias if any
};

struct Writer {
    std::vector<unsigned char> b;
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) b.push_back((unsigned char)(v >> (8 * i)));
    }
};

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
    const File f = spad::model_file::parse(data, n, "spad_model_load");
    std::unique_ptr<spad_model> m(new spad_model);
    m->in_shape = f.in_shape;
    for (const Record &r : f.records) {
        Layer L;
        L.kind = r.kind;
        L.args = r.args;
        for (const TensorRecord &tr : r.tensors) {
            spad::Tensor t = spad::empty(tr.shape, spad::DType::F32);
            read_floats(data, tr, t->data<float>());
            t->requires_grad = true;
            spad::set_category(*t->storage, spad::MemCategory::PARAMETERS);
            L.params.push_back(t);
        }
        m->layers.push_back(std::move(L));
    }
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
        const long long k = enum_int(kind);  // validated before any use as the enum type
        need(k == SPAD_POLICY_EXACT || k == SPAD_POLICY_RAD || k == SPAD_POLICY_SPAD, fn,
             "unknown policy kind (expected SPAD_POLICY_EXACT, SPAD_POLICY_RAD or SPAD_POLICY_SPAD)");
        if (k == SPAD_POLICY_EXACT) {
            ctx->policy.reset();
            return;
        }
        SPAD_CHECK(keep > 0 && keep <= 1, ValueError, fn, ": keep must be in (0, 1], got ", keep);
        SPAD_CHECK(kind != SPAD_POLICY_SPAD || refresh >= 1, ValueError, fn, ": refresh must be >= 1, got ", refresh);
        // RAD: per-feature "different sample" (Python's RAD(keep, block=1)); SPAD: scored paths
        // from sampled passes (Python's SPAD(keep, refresh, paths="scored")).
        spad::PolicyConfig c;
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
        need(ctx != nullptr, "spad_ctx_step_begin", "ctx is NULL");  // steps begin on their own now
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
        // Bounded whatever the path is (a device like /dev/zero, a pipe): the magic bytes
        // first, then at most kMaxFileBytes; the parser bounds everything by what was read.
        unsigned char buf[4096];
        size_t got;
        bool too_big = false, bad_magic = false;
        while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
            bytes.insert(bytes.end(), buf, buf + got);
            if (bytes.size() >= 8 && std::memcmp(bytes.data(), kMagic, 8) != 0) bad_magic = true;
            if (bytes.size() > kMaxFileBytes) too_big = true;
            if (bad_magic || too_big) break;
        }
        const bool err = std::ferror(f) != 0;
        std::fclose(f);
        SPAD_CHECK(!err, ValueError, "spad_model_load: read error on '", path, "'");
        SPAD_CHECK(!bad_magic, ValueError, "spad_model_load: '", path,
                   "' is not a spad model (the file does not start with \"SPADMODL\")");
        SPAD_CHECK(!too_big, ValueError, "spad_model_load: '", path, "' is larger than ", kMaxFileBytes,
                   " bytes; not a spad model");
    });
    if (s != SPAD_OK) return s;
    return spad_model_load_buffer(ctx, bytes.data(), bytes.size(), out);
}

spad_status spad_model_save(const spad_model_t *model, const char *path) {
    return guard([&] {
        need(model && path, "spad_model_save", "model and path must not be NULL");
        Writer w;
        w.b.assign(kMagic, kMagic + 8);
        w.u32(kVersion);
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
    size_t updated = 0;        // parameters already updated in backward (update_in_backward)
    bool in_backward = false;  // backward ran with updating hooks: a failure may be partial
    const spad_status status = guard([&] {
        const char *fn = "spad_model_train_step";
        need(ctx && model, fn, "ctx and model must not be NULL");
        ps = params_of(*model);
        const spad::Tensor &xt = T(x, fn, "x");
        const spad::Tensor &yt = T(target, fn, "target");
        SPAD_CHECK(std::isfinite(lr) && lr >= 0, ValueError, fn, ": lr must be a finite number >= 0, got ", lr);
        CtxScope scope(ctx);
        for (const spad::Tensor &p : ps) p->grad.reset();
        // Forward does not change the parameters: checked before anything can write them.
        for (size_t i = 0; i < ps.size(); ++i)
            SPAD_CHECK(spad::all_finite(ps[i]), ValueError, fn, ": parameter ", i, " of shape ",
                       spad::shape_str(ps[i]->shape), " holds NaN or inf; parameters left untouched");
        // update_in_backward: SGD on each parameter as soon as its gradient is complete, then
        // the gradient is freed, so its arena block serves the rest of backward. A gradient
        // is checked before it is applied (an update added straight into the weight is checked
        // after, since its sum can overflow); after a non-finite one nothing more is applied.
        size_t bad = ps.size();  // the first parameter with a non-finite gradient
        bool overflowed = false;  // bad's update was applied and overflowed to NaN/inf
        struct Unhook {
            const std::vector<spad::Tensor> &ps;
            bool on;
            ~Unhook() {
                if (on)
                    for (const spad::Tensor &p : ps) spad::set_grad_complete_hook(p, nullptr);
            }
        } unhook{ps, ctx->update_in_backward};
        if (unhook.on)
            for (size_t i = 0; i < ps.size(); ++i)
                // A sampled weight's gradient may arrive without the dense dW (Note [Implicit
                // leaf gradients] in tape.h): row-sparse, or added straight into the weight.
                spad::set_grad_complete_hook(ps[i], [&, i](const spad::Tensor &p) {
                    const spad::ImplicitGrad *ig = spad::implicit_grad(p);
                    if ((p->grad || ig) && bad == ps.size()) {
                        if (ig ? ig->all_finite() : spad::all_finite(p->grad)) {
                            spad::optim::sgd({p}, {}, lr, 0.0, false, 0.0);
                            ++updated;
                            // The add form sums finite values straight into the weight: an
                            // overflow of that sum shows only in the weight, after the write.
                            if (ig && !spad::all_finite(p)) bad = i, overflowed = true;
                        } else {
                            bad = i;
                        }
                    }
                    p->grad.reset();
                }, spad::GRAD_ROWS | spad::GRAD_ADD);
        double value;
        {
            spad::Tensor y = forward(*model, xt);
            spad::Tensor L = yt->dtype == spad::DType::I64 ? spad::ops::cross_entropy(y, yt) : spad::ops::mse_loss(y, yt);
            value = spad::item(L);
            SPAD_CHECK(std::isfinite(value), ValueError, fn, ": the loss is ", value,
                       "; parameters left untouched (lower the learning rate?)");
            in_backward = unhook.on;
            spad::backward(L, nullptr, false, false);
        }
        // A finite loss can still hide non-finite gradients (an inf activation behind a
        // saturated unit): check them before the first write.
        for (size_t i = 0; i < ps.size(); ++i) {
            const bool finite = unhook.on ? i != bad : !ps[i]->grad || spad::all_finite(ps[i]->grad);
            SPAD_CHECK(finite, ValueError, fn, ": the gradient of parameter ", i, " of shape ",
                       spad::shape_str(ps[i]->shape),
                       overflowed ? " overflowed to NaN or inf when added into it (its update was applied)"
                                  : " holds NaN or inf (non-finite input or overflow?)",
                       unhook.on ? "" : "; parameters left untouched");
        }
        if (loss) *loss = value;
        if (!unhook.on) spad::optim::sgd(ps, {}, lr, 0.0, false, 0.0);
    });
    // A failure during an updating backward is reported with what it changed.
    if (status != SPAD_OK && in_backward) {
        std::string &msg = last_error();
        if (updated == 0)
            msg += "; parameters left untouched";
        else
            msg += "; update_in_backward: " + std::to_string(updated) + " of " + std::to_string(ps.size()) +
                   " parameters were already updated (the last layers'), the others are untouched";
    }
    return status;
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
