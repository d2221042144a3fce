// bindings.cpp — spad._core. Translation only: Python objects in, core calls, Python
// objects and exceptions out. No math lives here.
#include <pybind11/stl.h>

#include "../core/conv.h"
#include "../core/gemm.h"
#include "../core/ops.h"
#include "../core/optim.h"
#include "../core/rng.h"
#include "../core/sampler.h"
#include "../core/sampler_util.h"
#include "numpy_bridge.h"

namespace py = pybind11;
using namespace spad;

void register_replay(py::module_ &m);  // replay_bindings.cpp: recording wrappers and _Program

namespace {

// The other operand of an arithmetic operator: a Tensor, a Python number (taking the
// tensor's dtype), or an array-like (borrowed or converted by spad.tensor rules).
Tensor operand(const py::handle &h, const Tensor &like) {
    if (py::isinstance<TensorImpl>(h)) return h.cast<Tensor>();
    if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) return scalar(h.cast<double>(), like->dtype);
    if (py::isinstance<py::array>(h)) {
        py::array a = h.cast<py::array>();
        if (a.dtype().kind() != 'f')  // integer data joins a float op in the tensor's dtype
            a = py::array(py::module_::import("numpy").attr("asarray")(a, np_dtype(like->dtype)));
        return from_numpy(py::module_::import("numpy").attr("ascontiguousarray")(a));
    }
    // A str is a sequence too, but `t + "a"` is a type error, not a failed float parse.
    if (py::isinstance<py::sequence>(h) && !py::isinstance<py::str>(h) && !py::isinstance<py::bytes>(h))
        return from_numpy(py::module_::import("numpy").attr("asarray")(h, np_dtype(like->dtype)));
    throw TypeError(str("unsupported operand type ", std::string(py::str(h.get_type())), " for a spad Tensor"));
}

std::vector<int64_t> axes_arg(const py::object &axis) {
    std::vector<int64_t> axes;
    if (axis.is_none()) return axes;
    if (py::isinstance<py::int_>(axis)) return {axis.cast<int64_t>()};
    for (auto a : axis) axes.push_back(a.cast<int64_t>());
    SPAD_CHECK(!axes.empty(), ValueError, "axis=() is not supported; pass None to reduce over all axes");
    return axes;
}

Shape shape_args(const py::args &args) {
    using V = std::vector<int64_t>;
    if (args.size() == 1 && !py::isinstance<py::int_>(args[0])) return Shape(args[0].cast<V>());
    return Shape(args.cast<V>());
}

py::tuple shape_tuple(const Shape &s) {
    py::tuple t(s.size());
    for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
    return t;
}

py::dict stats_dict() {
    const MemStats &m = mem_stats();
    py::dict d;
    d["tape_bytes"] = m.tape_bytes;
    d["peak_tape_bytes"] = m.peak_tape_bytes;
    d["exact_tape_bytes"] = m.exact_tape_bytes;
    d["peak_exact_tape_bytes"] = m.peak_exact_tape_bytes;
    d["budget"] = m.budget < 0 ? py::object(py::none()) : py::object(py::int_(m.budget));
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "spad C++ core: tensors, the tape, ops and samplers";

    // ---- errors: C++ exception kinds -> Python exception types ----
    static py::exception<BudgetError> budget_exc(m, "TapeBudgetError", PyExc_MemoryError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const spad::ValueError &e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const spad::TypeError &e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        } catch (const spad::RuntimeError &e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        } catch (const BudgetError &e) {
            py::set_error(budget_exc, e.what());
        }
    });

    // ---- Tensor ----
    py::class_<TensorImpl, Tensor> T(m, "Tensor", py::buffer_protocol());
    T.def_buffer([](TensorImpl &t) {
         const int64_t es = (int64_t)dtype_size(t.dtype);
         std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end()), strides;
         for (int64_t s : t.strides) strides.push_back(s * es);
         std::string fmt = t.dtype == DType::F32 ? py::format_descriptor<float>::format()
                         : t.dtype == DType::F64 ? py::format_descriptor<double>::format()
                         : t.dtype == DType::I64 ? py::format_descriptor<int64_t>::format()
                         : t.dtype == DType::I32 ? py::format_descriptor<int32_t>::format()
                                                 : py::format_descriptor<uint8_t>::format();
         return py::buffer_info(t.raw(), es, fmt, (py::ssize_t)t.shape.size(), shape, strides,
                                t.storage->tape_refs > 0);
     })
        .def_property_readonly("shape", [](const TensorImpl &t) { return shape_tuple(t.shape); })
        .def_property_readonly("ndim", &TensorImpl::ndim)
        .def_property_readonly("size", &TensorImpl::numel)
        .def_property_readonly("dtype", [](const TensorImpl &t) { return np_dtype(t.dtype); })
        .def_property_readonly("is_leaf", &TensorImpl::is_leaf)
        .def_property_readonly("grad_fn", [](const TensorImpl &t) -> py::object {
            if (!t.grad_fn) return py::none();
            return py::str(op_name(t.grad_fn->op));
        })
        .def_property(
            "requires_grad", [](const TensorImpl &t) { return t.requires_grad; },
            [](TensorImpl &t, bool on) {
                SPAD_CHECK(t.is_leaf() || on, RuntimeError,
                           "requires_grad: you can only change requires_grad of leaf tensors; use detach()");
                SPAD_CHECK(!on || is_floating(t.dtype), TypeError, "requires_grad: only float tensors can require "
                           "gradients, got ", dtype_name(t.dtype));
                t.requires_grad = on;
            })
        .def_property(
            "grad", [](const TensorImpl &t) { return t.grad; },
            [](TensorImpl &t, const Tensor &g) {
                if (g) {
                    SPAD_CHECK(g->shape == t.shape, ValueError, "grad: assigned gradient of shape ",
                               shape_str(g->shape), " to a tensor of shape ", shape_str(t.shape));
                    SPAD_CHECK(g->dtype == t.dtype, TypeError, "grad: assigned gradient of dtype ",
                               dtype_name(g->dtype), " to a tensor of dtype ", dtype_name(t.dtype));
                }
                t.grad = g;
            })
        .def_property(
            "_is_param", [](const TensorImpl &t) { return t.storage->is_param; },
            [](TensorImpl &t, bool on) { t.storage->is_param = on; })
        .def_property_readonly("_version", [](const TensorImpl &t) { return t.storage->version; })
        .def("numpy", [](const Tensor &t) { return to_numpy(t); }, "A numpy view of the data (no copy).")
        .def("item", [](const Tensor &t) { return item(t); }, "The value of a one-element tensor as a float.")
        .def("detach", [](const Tensor &t) { return view(t, t->shape, t->strides, t->offset); },
             "A tensor sharing the data, cut from the graph.")
        .def("contiguous", [](const Tensor &t) { return contiguous(t); })
        .def("backward",
             [](const Tensor &t, const py::object &grad, bool retain_graph, bool create_graph) {
                 Tensor g = grad.is_none() ? Tensor() : operand(grad, t);
                 py::gil_scoped_release nogil;
                 backward(t, g, retain_graph || create_graph, create_graph);
             },
             py::arg("grad") = py::none(), py::arg("retain_graph") = false, py::arg("create_graph") = false,
             "Accumulate d(self)/d(leaf) into every leaf's .grad. grad defaults to 1 for a scalar; the tape's\n"
             "saved payloads are freed unless retain_graph; create_graph records the backward pass too.\n"
             "Exact unless the forward pass ran under a sampling policy (spad.sampling.use).")
        .def("__add__", [](const Tensor &a, py::handle b) { return ops::add(a, operand(b, a)); }, py::is_operator())
        .def("__radd__", [](const Tensor &a, py::handle b) { return ops::add(operand(b, a), a); }, py::is_operator())
        .def("__sub__", [](const Tensor &a, py::handle b) { return ops::sub(a, operand(b, a)); }, py::is_operator())
        .def("__rsub__", [](const Tensor &a, py::handle b) { return ops::sub(operand(b, a), a); }, py::is_operator())
        .def("__mul__", [](const Tensor &a, py::handle b) { return ops::mul(a, operand(b, a)); }, py::is_operator())
        .def("__rmul__", [](const Tensor &a, py::handle b) { return ops::mul(operand(b, a), a); }, py::is_operator())
        .def("__truediv__", [](const Tensor &a, py::handle b) { return ops::div(a, operand(b, a)); },
             py::is_operator())
        .def("__rtruediv__", [](const Tensor &a, py::handle b) { return ops::div(operand(b, a), a); },
             py::is_operator())
        .def("__matmul__", [](const Tensor &a, py::handle b) { return ops::matmul(a, operand(b, a)); },
             py::is_operator())
        .def("__rmatmul__", [](const Tensor &a, py::handle b) { return ops::matmul(operand(b, a), a); },
             py::is_operator())
        .def("__neg__", [](const Tensor &a) { return ops::neg(a); })
        .def("__pow__",
             [](const Tensor &a, py::handle p) {
                 SPAD_CHECK(PyFloat_Check(p.ptr()) || PyLong_Check(p.ptr()), TypeError,
                            "pow: only a Python number exponent is supported (got ",
                            std::string(py::str(p.get_type())), ")");
                 return ops::pow(a, p.cast<double>());
             },
             py::is_operator())
        .def("sum", [](const Tensor &x, const py::object &axis, bool keepdims) {
                 return ops::sum(x, axes_arg(axis), keepdims);
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false, "Sum over axis (None: all; int or tuple).")
        .def("mean", [](const Tensor &x, const py::object &axis, bool keepdims) {
                 return ops::mean(x, axes_arg(axis), keepdims);
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false, "Mean over axis (None: all; int or tuple).")
        .def("max", [](const Tensor &x, const py::object &axis, bool keepdims) {
                 return ops::max(x, axes_arg(axis), keepdims);
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false,
             "Maximum over axis; the gradient goes to the first maximal element.")
        .def("reshape", [](const Tensor &x, const py::args &s) { return ops::reshape(x, shape_args(s)); })
        .def("transpose", [](const Tensor &x, const py::args &a) {
                 if (a.size() == 0) {
                     std::vector<int64_t> p(x->ndim());
                     for (int64_t i = 0; i < x->ndim(); ++i) p[i] = x->ndim() - 1 - i;
                     return ops::permute(x, p);
                 }
                 return ops::permute(x, shape_args(a).vec());
             })
        .def_property_readonly("T", [](const Tensor &x) {
            std::vector<int64_t> p(x->ndim());
            for (int64_t i = 0; i < x->ndim(); ++i) p[i] = x->ndim() - 1 - i;
            return ops::permute(x, p);
        })
        .def("exp", &ops::exp)
        .def("log", &ops::log)
        .def("sqrt", &ops::sqrt)
        .def("tanh", &ops::tanh)
        .def("sigmoid", &ops::sigmoid)
        .def("relu", &ops::relu);
    // numpy defers mixed expressions (array + tensor) to the Tensor's reflected operators.
    T.attr("__array_ufunc__") = py::none();

    // ---- creation and interop ----
    m.def("from_numpy", &from_numpy, py::arg("array"), "Borrow a float32/float64 array (no copy).");
    m.def("zeros", [](const std::vector<int64_t> &s, const py::dtype &d) { return zeros(Shape(s), dtype_of(d)); });
    m.def("full", [](const std::vector<int64_t> &s, double v, const py::dtype &d) {
        return full(Shape(s), v, dtype_of(d));
    });

    // ---- functional ops ----
    m.def("relu", &ops::relu, py::arg("x"), "max(x, 0); the tape keeps one bit per element.");
    m.def("tanh", &ops::tanh, py::arg("x"));
    m.def("sigmoid", &ops::sigmoid, py::arg("x"));
    m.def("exp", &ops::exp, py::arg("x"));
    m.def("log", &ops::log, py::arg("x"));
    m.def("sqrt", &ops::sqrt, py::arg("x"));
    m.def("softmax", &ops::softmax, py::arg("x"), py::arg("axis") = -1);
    m.def("log_softmax", &ops::log_softmax, py::arg("x"), py::arg("axis") = -1);
    m.def("cross_entropy", &ops::cross_entropy, py::arg("logits"), py::arg("labels"),
          "Mean softmax cross-entropy; labels: int64 tensor of shape (batch,).");
    m.def("mse_loss", [](const Tensor &pred, py::handle target) { return ops::mse_loss(pred, operand(target, pred)); },
          py::arg("pred"), py::arg("target"),
          "Mean squared error over all elements; target: a tensor or array-like of the same shape.");
    m.def("matmul", &ops::matmul, py::arg("a"), py::arg("b"), "numpy.matmul semantics (1-D, 2-D, batched).");
    m.def("linear", &ops::linear, py::arg("x"), py::arg("W"), py::arg("b") = Tensor(),
          "x @ W + b in one op; W has shape (in_features, out_features), b (out_features,) or None.");
    m.def("clear_grads", [](const std::vector<Tensor> &ps) {
        for (const Tensor &p : ps) p->grad.reset();
    }, py::arg("params"), "Set .grad = None on every tensor of the list (Optimizer.zero_grad).");
    m.def("take", [](const Tensor &x, const Tensor &idx, const std::vector<int64_t> &s) {
        return ops::take(x, idx, Shape(s));
    });
    m.def("concatenate", &ops::concat, py::arg("tensors"), py::arg("axis") = 0);
    m.def("expand", [](const Tensor &x, const std::vector<int64_t> &s) { return ops::expand(x, Shape(s)); });
    m.def("conv2d", &ops::conv2d, py::arg("x"), py::arg("w"), py::arg("b") = Tensor(),
          py::arg("stride") = std::array<int64_t, 2>{1, 1}, py::arg("padding") = std::array<int64_t, 2>{0, 0});
    m.def("max_pool2d", &ops::max_pool2d, py::arg("x"), py::arg("k"));
    m.def("avg_pool2d", &ops::avg_pool2d, py::arg("x"), py::arg("k"));
    m.def("dropout", &ops::dropout, py::arg("x"), py::arg("p"), py::arg("training"));
    // The row-subset building block of a sampled conv dW (conv.h), exposed for its tests.
    m.def("_conv_weight_grad_rows",
          [](const Tensor &x, const Tensor &g, const std::vector<int64_t> &wshape, std::array<int64_t, 2> stride,
             std::array<int64_t, 2> padding, const std::vector<int64_t> &rows, const std::vector<double> &weights) {
              SPAD_CHECK(weights.empty() || weights.size() == rows.size(), ValueError, "conv2d weight grad: ",
                         weights.size(), " weights for ", rows.size(), " rows");
              ConvGeom geom = conv_geom(x->shape, wshape, stride[0], stride[1], padding[0], padding[1]);
              RowSet rs;
              rs.idx = rows.data();
              rs.weight = weights.empty() ? nullptr : weights.data();
              rs.count = (int64_t)rows.size();
              return conv_weight_grad_rows(x, g, geom, rs);
          },
          py::arg("x"), py::arg("g"), py::arg("wshape"), py::arg("stride"), py::arg("padding"), py::arg("rows"),
          py::arg("weights") = std::vector<double>());

    // ---- tape control and accounting ----
    m.def("set_grad_enabled", &set_grad_enabled);
    m.def("is_grad_enabled", &grad_enabled);
    m.def("memory_stats", &stats_dict);
    m.def("reset_peak_memory_stats", &reset_peak_memory_stats);
    m.def("peak_tape_bytes", [] { return py::make_tuple(mem_stats().peak_tape_bytes, mem_stats().peak_exact_tape_bytes); },
          "(peak_tape_bytes, peak_exact_tape_bytes) without building a dict (per-step bookkeeping).");
    m.def("set_tape_budget", [](const py::object &b) {
        int64_t v = b.is_none() ? -1 : b.cast<int64_t>();
        SPAD_CHECK(b.is_none() || v >= 0, ValueError, "set_tape_budget: budget must be >= 0 bytes or None, got ", v);
        mem_stats().budget = v;
    });
    m.def("op_table", [] {
        py::list rows;
        for (int i = 0; i < (int)OpKind::COUNT_; ++i)
            rows.append(py::make_tuple(op_name((OpKind)i), op_saves((OpKind)i)));
        return rows;
    }, "(name, what it saves) for every op, from ops.def.");

    m.def("manual_seed", [](uint64_t s) { manual_seed(s); }, "Seed the global counter-based RNG (dropout, samplers).");

    // ---- sampling policies (configured and validated in spad/sampling.py) ----
    py::enum_<PolicyKind>(m, "PolicyKind")
        .value("EXACT", PolicyKind::EXACT).value("RAD", PolicyKind::RAD)
        .value("CRS", PolicyKind::CRS).value("SPAD", PolicyKind::SPAD);
    py::enum_<Estimator>(m, "Estimator")
        .value("EXACT", Estimator::EXACT).value("RAD_DIFF", Estimator::RAD_DIFF)
        .value("RAD_SAME", Estimator::RAD_SAME).value("PROJECT", Estimator::PROJECT)
        .value("CRS", Estimator::CRS).value("BERNOULLI", Estimator::BERNOULLI)
        .value("SPAD", Estimator::SPAD).value("SPAD_TOPK", Estimator::SPAD_TOPK)
        .value("SPAD_MAG", Estimator::SPAD_MAG).value("RAD_BLOCK", Estimator::RAD_BLOCK);
    py::class_<Policy, std::shared_ptr<Policy>>(m, "Policy")
        .def(py::init([](PolicyKind kind, Estimator est, double keep, double deterministic, int64_t refresh,
                         bool unbiased, double mix, double ema, bool everywhere, uint64_t seed,
                         bool sampled_scores, int64_t block) {
                 PolicyConfig c;
                 c.kind = kind; c.estimator = est; c.keep = keep; c.deterministic = deterministic;
                 c.refresh = refresh; c.unbiased = unbiased; c.mix = mix; c.ema = ema;
                 c.everywhere = everywhere; c.seed = seed; c.sampled_scores = sampled_scores;
                 c.block = block;
                 return std::make_shared<Policy>(c);
             }),
             py::arg("kind"), py::arg("estimator"), py::arg("keep"), py::arg("deterministic"), py::arg("refresh"),
             py::arg("unbiased"), py::arg("mix"), py::arg("ema"), py::arg("everywhere"), py::arg("seed"),
             py::arg("sampled_scores") = true, py::arg("block") = 1)
        .def_readonly("step", &Policy::step)
        .def("scoring_step", &Policy::scoring_step)
        .def("state_bytes", &Policy::state_bytes)
        .def("begin_step", [](Policy &p) { begin_step(p); })
        .def("site_scores", [](const Policy &p) {
            py::list out;
            for (const auto &kv : p.sites) out.append(py::array(py::cast(kv.second->score)));
            return out;
        });
    m.def("rad_block_size", &sampling_detail::rad_block_size, py::arg("block"), py::arg("k"),
          "Block size RAD(mode='different', block=...) uses for a layer keeping k values per example.");
    m.def("set_active_policy", [](const std::shared_ptr<Policy> &p) { set_active_policy(p); }, py::arg("policy").none(true));
    m.def("active_policy", &active_policy);

    // ---- optimizers: fused in-place updates over lists of parameters (spad/optim.py) ----
    {
        using TL = std::vector<Tensor>;
        auto nogil = py::call_guard<py::gil_scoped_release>();
        m.def("sgd_step", &optim::sgd, py::arg("params"), py::arg("bufs"), py::arg("lr"), py::arg("momentum"),
              py::arg("nesterov"), py::arg("weight_decay"), nogil);
        m.def("adagrad_step", &optim::adagrad, py::arg("params"), py::arg("sq"), py::arg("lr"), py::arg("eps"),
              py::arg("weight_decay"), nogil);
        m.def("rmsprop_step", &optim::rmsprop, py::arg("params"), py::arg("sq"), py::arg("bufs"), py::arg("lr"),
              py::arg("alpha"), py::arg("eps"), py::arg("momentum"), py::arg("nesterov"), py::arg("weight_decay"),
              nogil);
        m.def("adam_step", [](const TL &p, const TL &m1, const TL &m2, double lr, double b1, double b2, double eps,
                              double wd, bool decoupled, int64_t step) {
                  optim::adam(p, m1, m2, lr, b1, b2, eps, wd, decoupled, step);
              }, nogil);
        m.def("assign_", &optim::assign, py::arg("dst"), py::arg("src"),
              "Copy src into dst in place and bump dst's version (parameter loads, averages).");
        m.def("bump_version", &optim::bump_version, "Mark a tensor's storage as overwritten from outside the core.");
    }

    // ---- kernels ----
    m.def("set_num_threads", &set_num_threads);
    m.def("get_num_threads", &get_num_threads);
    m.def("gemm_backend", &gemm_backend);

    register_replay(m);  // last: re-binds the recorded entry points defined above
}
