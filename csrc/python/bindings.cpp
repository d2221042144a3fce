// bindings.cpp — spad._core. Translation only: Python objects in, core calls, Python
// objects and exceptions out. No math lives here.
#include <pybind11/stl.h>
#include <pybind11/functional.h>

#include "../core/arena.h"
#include "../core/conv.h"
#include "../core/gemm.h"
#include "../core/kernels.h"
#include "../core/model_format.h"
#include "../core/ops.h"
#include "../core/optim.h"
#include "../core/rng.h"
#include "../core/sampling/sampling.h"

#include "tensor_caster.h"  // Note [None is not a Tensor]

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
    py::module_ np = py::module_::import("numpy");
    if (py::isinstance<py::array>(h) || py::isinstance<py::sequence>(h)) {
        // A str is a sequence too, but `t + "a"` is a type error, not a failed float parse.
        SPAD_CHECK(!py::isinstance<py::str>(h) && !py::isinstance<py::bytes>(h), TypeError,
                   "unsupported operand type ", std::string(py::str(h.get_type())), " for a spad Tensor");
        py::array a = py::isinstance<py::array>(h) ? h.cast<py::array>() : py::array(np.attr("asarray")(h));
        const char kind = a.dtype().kind();
        // Complex data would lose its imaginary part in a float op: refuse it (numpy only warns).
        SPAD_CHECK(kind == 'f' || kind == 'i' || kind == 'u' || kind == 'b', TypeError, "cannot use an operand of dtype ",
                   std::string(py::str(a.dtype())), " with a ", dtype_name(like->dtype),
                   " spad Tensor (expected real numbers: float, int or bool)");
        // Integer, bool, float16, non-native byte order or a Python list joins the op in the
        // tensor's dtype; a float32/float64 array keeps its own (a mismatch is an explicit error).
        const bool keep = py::isinstance<py::array>(h) &&
                          (a.dtype().is(py::dtype::of<float>()) || a.dtype().is(py::dtype::of<double>()));
        if (!keep) a = py::array(np.attr("asarray")(a, np_dtype(like->dtype)));
        a = np.attr("ascontiguousarray")(a);
        if (!a.writeable()) a = np.attr("array")(a);  // an operand is only read: a copy is cheap and safe
        return from_numpy(a, true);
    }
    throw TypeError(str("unsupported operand type ", std::string(py::str(h.get_type())), " for a spad Tensor"));
}


// One dimension of a shape argument: an integer that fits int64, else a message naming the
// op and the value (pybind11's own is "incompatible function arguments").
int64_t dim_arg(const char *op, const py::handle &h) {
    SPAD_CHECK(!PyBool_Check(h.ptr()) && PyIndex_Check(h.ptr()), TypeError, op, ": shape entries must be integers, got ",
               std::string(py::str(py::type::handle_of(h).attr("__name__"))));
    py::object i = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
    if (!i) throw py::error_already_set();
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
    SPAD_CHECK(!overflow, ValueError, op, ": dimension ", std::string(py::str(i)), " is out of range (at most ",
               kMaxNumel, " elements)");
    return v;
}

std::vector<int64_t> axes_arg(const py::object &axis) {
    std::vector<int64_t> axes;
    if (axis.is_none()) return axes;
    if (PyIndex_Check(axis.ptr())) return {dim_arg("axis", axis)};
    SPAD_CHECK(py::isinstance<py::sequence>(axis) && !py::isinstance<py::str>(axis), TypeError,
               "axis must be None, an int or a tuple of ints, got ",
               std::string(py::str(py::type::handle_of(axis).attr("__name__"))));
    for (auto a : axis) axes.push_back(dim_arg("axis", a));
    SPAD_CHECK(!axes.empty(), ValueError, "axis=() is not supported; pass None to reduce over all axes");
    return axes;
}

// A flag argument by Python truthiness (numpy accepts any truthy keepdims).
bool truthy(const py::object &o) {
    const int r = PyObject_IsTrue(o.ptr());
    if (r < 0) throw py::error_already_set();
    return r != 0;
}

Shape shape_args(const char *op, const py::args &args) {
    py::object seq = args;
    if (args.size() == 1 && !PyIndex_Check(args[0].ptr())) {
        SPAD_CHECK(py::isinstance<py::sequence>(args[0]) && !py::isinstance<py::str>(args[0]), TypeError, op,
                   ": expected a shape (ints or a tuple of ints), got ",
                   std::string(py::str(py::type::handle_of(args[0]).attr("__name__"))));
        seq = args[0];
    }
    Shape s;
    for (auto h : seq) s.push_back(dim_arg(op, h));
    return s;
}

py::tuple shape_tuple(const Shape &s) {
    py::tuple t(s.size());
    for (size_t i = 0; i < s.size(); ++i) t[i] = s[i];
    return t;
}

py::dict stats_dict() {
    const MemSnapshot m = mem_snapshot();
    py::dict d;
    d["tape_bytes"] = m.tape_bytes;
    d["peak_tape_bytes"] = m.peak_tape_bytes;
    d["exact_tape_bytes"] = m.exact_tape_bytes;
    d["peak_exact_tape_bytes"] = m.peak_exact_tape_bytes;
    d["budget"] = m.budget < 0 ? py::object(py::none()) : py::object(py::int_(m.budget));
    d["allocated_bytes"] = m.allocated_bytes;
    d["peak_allocated_bytes"] = m.peak_allocated_bytes;
    return d;
}

// Per-category counters for spad.memory_summary() (spad/memory.py formats them).
py::dict category_dict() {
    const MemSnapshot m = mem_snapshot();
    py::dict d;
    for (int i = 0; i < kMemCategories; ++i) {
        py::dict c;
        c["current"] = m.by_category[i];
        c["peak"] = m.peak_by_category[i];
        d[mem_category_name((MemCategory)i)] = c;
    }
    py::dict total;
    total["current"] = m.allocated_bytes;
    total["peak"] = m.peak_allocated_bytes;
    d["total"] = total;
    d["live_storages"] = m.alloc_count;
    d["total_allocated_bytes"] = m.total_allocated;
    return d;
}

MemCategory category_of(const std::string &name) {
    for (int i = 0; i < kMemCategories; ++i)
        if (name == mem_category_name((MemCategory)i)) return (MemCategory)i;
    throw ValueError(str("unknown memory category '", name,
                         "'; expected 'parameters', 'gradients', 'optimizer_state' or 'other'"));
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
        } catch (const AllocError &e) {  // names the bytes and the shape (tensor.cpp, arena.cpp)
            PyErr_SetString(PyExc_MemoryError, e.what());
        } catch (const std::bad_alloc &) {
            PyErr_SetString(PyExc_MemoryError, "spad: out of memory (a core allocation failed)");
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
            [](TensorImpl &t, const py::object &o) {
                SPAD_CHECK(o.is_none() || py::isinstance<TensorImpl>(o), TypeError,
                           "grad: assigned a ", std::string(py::str(py::type::handle_of(o).attr("__name__"))),
                           "; a gradient must be a spad Tensor or None (use spad.tensor(a) for an array)");
                const Tensor g = o.is_none() ? Tensor() : o.cast<Tensor>();
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
            [](TensorImpl &t, bool on) {
                if (on || t.storage->category == MemCategory::PARAMETERS)
                    set_category(*t.storage, on ? MemCategory::PARAMETERS : MemCategory::OTHER);
            })
        .def_property(
            "_memory_category", [](const TensorImpl &t) { return mem_category_name(effective_category(*t.storage)); },
            [](TensorImpl &t, const std::string &c) { set_category(*t.storage, category_of(c)); },
            "Accounting category of the storage (Note [Allocation accounting] in csrc/core/memory.h).")
        .def_property_readonly("_is_allocated", [](const TensorImpl &t) { return t.storage->counted; },
                               "True when spad allocated the storage (False for borrowed numpy buffers).")
        .def_property_readonly("_version", [](const TensorImpl &t) { return t.storage->version; })
        .def("numpy", [](const Tensor &t) { return to_numpy(t); }, "A numpy view of the data (no copy).")
        .def("item", [](const Tensor &t) { return item(t); }, "The value of a one-element tensor as a float.")
        .def("detach", [](const Tensor &t) { return view(t, t->shape, t->strides, t->offset); },
             "A tensor sharing the data, cut from the graph.")
        .def("contiguous", [](const Tensor &t) { return contiguous(t); })
        .def("backward",
             [](const Tensor &t, const py::object &grad, const py::object &retain, const py::object &create) {
                 Tensor g = grad.is_none() ? Tensor() : operand(grad, t);
                 const bool retain_graph = truthy(retain), create_graph = truthy(create);
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
        .def("sum", [](const Tensor &x, const py::object &axis, const py::object &keepdims) {
                 return ops::sum(x, axes_arg(axis), truthy(keepdims));
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false, "Sum over axis (None: all; int or tuple).")
        .def("mean", [](const Tensor &x, const py::object &axis, const py::object &keepdims) {
                 return ops::mean(x, axes_arg(axis), truthy(keepdims));
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false, "Mean over axis (None: all; int or tuple).")
        .def("max", [](const Tensor &x, const py::object &axis, const py::object &keepdims) {
                 return ops::max(x, axes_arg(axis), truthy(keepdims));
             }, py::arg("axis") = py::none(), py::arg("keepdims") = false,
             "Maximum over axis; the gradient goes to the first maximal element.")
        .def("reshape", [](const Tensor &x, const py::args &s) { return ops::reshape(x, shape_args("reshape", s)); })
        .def("transpose", [](const Tensor &x, const py::args &a) {
                 if (a.size() == 0) {
                     std::vector<int64_t> p(x->ndim());
                     for (int64_t i = 0; i < x->ndim(); ++i) p[i] = x->ndim() - 1 - i;
                     return ops::permute(x, p);
                 }
                 return ops::permute(x, shape_args("transpose", a).vec());
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
    // A numpy array passed where a Tensor is expected (F.relu(a), spad.matmul(a, t)) goes
    // through spad.tensor's rules (shared if it can be, else copied; complex refused) instead
    // of failing with pybind11's "incompatible function arguments".
    T.def(py::init([](const py::array &a) { return py::module_::import("spad.tensor").attr("tensor")(a).cast<Tensor>(); }),
          py::arg("array"));
    py::implicitly_convertible<py::array, TensorImpl>();

    // ---- creation and interop ----
    m.def("from_numpy", &from_numpy, py::arg("array"), py::arg("guard_writes") = false,
          "Borrow a float32/float64 array (no copy). guard_writes: read-only while the tape holds it\n"
          "(Note [numpy writes under the tape] in numpy_bridge.h).");
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
    m.def("linear", [](const Tensor &x, const Tensor &W, const py::object &b) {
              return ops::linear(x, W, optional_tensor(b));
          }, py::arg("x"), py::arg("W"), py::arg("b") = py::none(),
          "x @ W + b in one op; W has shape (in_features, out_features), b (out_features,) or None.");
    m.def("linear_chain", [](const Tensor &x, const py::list &layers) {
        std::vector<ops::ChainLayer> ls;
        for (const py::handle &h : layers) {
            py::tuple t = h.cast<py::tuple>();
            SPAD_CHECK(t.size() == 3, ValueError, "linear_chain: each layer is (W, b or None, relu), got ", t.size(),
                       " items");
            ops::ChainLayer L;
            L.W = t[0].cast<Tensor>();
            L.b = optional_tensor(py::reinterpret_borrow<py::object>(t[1]));
            L.relu = t[2].cast<bool>();
            ls.push_back(std::move(L));
        }
        return ops::linear_chain(x, ls);
    }, py::arg("x"), py::arg("layers"),
          "Linear layers (W, b or None, relu after?) applied in order: the nodes of separate linear/relu\n"
          "calls, with intermediates overwritten in place once the tape no longer needs them.");
    m.def("_relu_owned", [](py::list box) {
        // Takes the caller's only reference out of `box` before the core sees the tensor, so
        // ReLU may overwrite it when nothing else holds it (Note [Buffer reuse] in reuse.h);
        // any other holder (a Python name, a saved payload) keeps it intact.
        SPAD_CHECK(box.size() == 1, ValueError, "_relu_owned: expected a one-element list");
        Tensor t = box[0].cast<Tensor>();
        box.attr("clear")();
        return ops::relu(t);
    }, py::arg("box"));
    m.def("clear_grads", [](const std::vector<Tensor> &ps) {
        for (const Tensor &p : ps) p->grad.reset();
    }, py::arg("params"), "Set .grad = None on every tensor of the list (Optimizer.zero_grad).");
    m.def("_first_nonfinite", [](const std::vector<Tensor> &ts, bool grads) -> int64_t {
        py::gil_scoped_release nogil;
        for (size_t i = 0; i < ts.size(); ++i) {
            const Tensor &t = grads ? ts[i]->grad : ts[i];
            if (t && is_floating(t->dtype) && !all_finite(t)) return (int64_t)i;
        }
        return -1;
    }, py::arg("tensors"), py::arg("grads") = false,
    "Index of the first tensor (or .grad, with grads=True) holding NaN or inf; -1 if none.");
    m.def("set_grad_complete_hook", [](const Tensor &t, std::function<void(Tensor)> fn, bool rows, bool add) {
        set_grad_complete_hook(t, fn ? GradHook([fn](const Tensor &leaf) { fn(leaf); }) : GradHook(),
                               (rows ? GRAD_ROWS : 0u) | (add ? GRAD_ADD : 0u));
    }, py::arg("tensor"), py::arg("hook").none(true), py::arg("rows") = false, py::arg("add") = false,
          "Call hook(tensor) inside backward() once the pass has delivered the last contribution to the\n"
          "leaf's .grad (not at all if it delivers none); None removes it. One hook per leaf.\n"
          "rows / add: the hook calls an optimizer step (sgd_step, ...) that can take a sampled weight's\n"
          "gradient row-sparse / added into the weight (plain SGD only) without a dense .grad; the\n"
          "hook then sees .grad None and must call that step.");
    m.def("_discard_implicit_grad", [](const Tensor &t) { return implicit_grad(t) != nullptr; }, py::arg("tensor"),
          "Inside a gradient-complete hook: consume the leaf's gradient handed over without a dense dW\n"
          "(rows / add) without applying it; False if the gradient is the dense .grad. Memory probes use it.");
    m.def("has_grad_complete_hook", [](const Tensor &t) { return has_grad_complete_hook(t); }, py::arg("tensor"));
    m.def("take", [](const Tensor &x, const Tensor &idx, const std::vector<int64_t> &s) {
        return ops::take(x, idx, Shape(s));
    });
    m.def("concatenate", &ops::concat, py::arg("tensors"), py::arg("axis") = 0);
    m.def("conv2d", [](const Tensor &x, const Tensor &w, const py::object &b, std::array<int64_t, 2> stride,
                       std::array<int64_t, 2> padding) {
              return ops::conv2d(x, w, optional_tensor(b), stride, padding);
          }, py::arg("x"), py::arg("w"), py::arg("b") = py::none(),
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
    m.def("memory_stats", &stats_dict,
          "Tape bytes (now, peak, exact-equivalent), the tape budget, and allocated_bytes /\n"
          "peak_allocated_bytes: live data bytes of every storage spad allocated (numpy buffers\n"
          "shared zero-copy are not spad's allocation). Peaks are since reset_peak_memory_stats().");
    m.def("_memory_categories", &category_dict);
    m.def("_set_memory_trace", &set_memory_trace, py::arg("on"),
          "While on, record allocated_bytes after every allocation and release (on clears the record).");
    m.def("_memory_trace", &memory_trace, "The recorded allocated_bytes values, in order.");
    m.def("_owned_copy", [](const py::array &a) {
        // Parameters and optimizer state are spad's own, counted allocations (Note
        // [Allocation accounting] in csrc/core/memory.h), not borrowed numpy buffers.
        py::array c = py::module_::import("numpy").attr("ascontiguousarray")(a);
        Shape shape;
        for (py::ssize_t i = 0; i < c.ndim(); ++i) shape.push_back(c.shape(i));
        Tensor t = empty(shape, dtype_of(c.dtype()));
        std::memcpy(t->raw(), c.data(), (size_t)t->numel() * dtype_size(t->dtype));
        return t;
    }, py::arg("array"), "A spad-allocated, counted copy of a float array.");
    m.def("reset_peak_memory_stats", &reset_peak_memory_stats);
    m.def("peak_tape_bytes", [] { return py::make_tuple(mem_stats().peak_tape_bytes.load(), mem_stats().peak_exact_tape_bytes.load()); },
          "(peak_tape_bytes, peak_exact_tape_bytes) without building a dict (per-step bookkeeping).");
    m.def("peak_allocated_bytes", [] { return mem_stats().peak_allocated_bytes.load(); },
          "memory_stats()['peak_allocated_bytes'] without building a dict (per-step bookkeeping).");
    m.def("set_tape_budget", [](const py::object &b) {
        int64_t v = b.is_none() ? -1 : b.cast<int64_t>();
        SPAD_CHECK(b.is_none() || v >= 0, ValueError, "set_tape_budget: budget must be >= 0 bytes or None, got ", v);
        mem_stats().budget.store(v);
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
        .def_property_readonly("step", [](const Policy &p) { std::lock_guard<std::mutex> lk(p.mu); return p.step; })
        .def_property_readonly("visits", [](const Policy &p) { std::lock_guard<std::mutex> lk(p.mu); return p.visits; },
                               "Site packs recorded under this policy so far.")
        .def("upcoming_step", &Policy::upcoming_step, "The step the next forward pass through a site belongs to.")
        .def("state_bytes", &Policy::state_bytes)
        .def("set_site_keep", [](Policy &p, const Tensor &w, const py::object &keep) {
                 std::lock_guard<std::mutex> lk(p.mu);
                 if (keep.is_none()) {
                     p.site_keep.erase(w->storage.get());
                     return;
                 }
                 const double k = keep.cast<double>();
                 SPAD_CHECK(k > 0.0 && k <= 1.0, ValueError, "set_site_keep: keep must be in (0, 1], got ", k);
                 p.site_keep[w->storage.get()] = k;
             }, py::arg("weight"), py::arg("keep").none(true),
             "Keep for the site of this weight tensor (None: back to the policy's keep).")
        .def("clear_site_keeps", [](Policy &p) {
            std::lock_guard<std::mutex> lk(p.mu);
            p.site_keep.clear();
        })
        .def("site_scores", [](const Policy &p) {
            std::lock_guard<std::mutex> lk(p.mu);
            py::list out;
            for (const auto &kv : p.sites) {
                std::lock_guard<std::mutex> slk(kv.second->mu);
                out.append(py::array(py::cast(kv.second->score)));
            }
            return out;
        });
    m.def("rad_block_size", &rad_block_size, py::arg("block"), py::arg("k"),
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

    // ---- model files: the one reader (core/model_format.h) behind spad.load_model ----
    m.def("_parse_model", [](const py::bytes &data) {
        char *p = nullptr;
        py::ssize_t n = 0;
        PyBytes_AsStringAndSize(data.ptr(), &p, &n);
        const auto *bytes = reinterpret_cast<const unsigned char *>(p);
        const model_file::File f = model_file::parse(bytes, (size_t)n, "load_model");
        py::list records;
        for (const model_file::Record &r : f.records) {
            py::list ts;
            for (const model_file::TensorRecord &t : r.tensors) {
                py::array_t<float> a(std::vector<py::ssize_t>(t.shape.begin(), t.shape.end()));
                model_file::read_floats(bytes, t, a.mutable_data());
                ts.append(a);
            }
            records.append(py::make_tuple(r.kind, py::cast(r.args), ts));
        }
        return py::make_tuple(shape_tuple(f.in_shape), records);
    }, py::arg("data"), "Validate a model file's bytes: (input_shape, [(kind, args, [float32 arrays])]).");
    m.attr("_MODEL_MAX_FILE_BYTES") = py::int_(model_file::kMaxFileBytes);

    // ---- kernels ----
    m.def("set_num_threads", &set_num_threads);
    m.def("get_num_threads", &get_num_threads);
    m.def("gemm_backend", &gemm_backend);
    m.def("kernel_isa", &kern::isa, "The instruction set the sampled-backward kernels run with.");
    m.def("available_kernel_isas", [] {
        return std::vector<std::string>(kern::isa_list().begin(), kern::isa_list().end());
    }, "The instruction sets this build can run the sampled-backward kernels with on this CPU, best last.");
    m.def("set_kernel_isa", [](const std::string &name) {
        if (!kern::set_isa(name.c_str()))
            throw py::value_error("set_kernel_isa: '" + name + "' is not one of " + kern::available_isas() +
                                  " (this build on this CPU)");
    }, py::arg("name"), "Run the sampled-backward kernels with one of available_kernel_isas() (tests, benchmarks).");

    register_replay(m);  // last: re-binds the recorded entry points defined above
}
