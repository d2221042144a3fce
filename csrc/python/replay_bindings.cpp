// replay_bindings.cpp — compiled replay for spad._core (spad/compile.py drives it).
//
// register_replay() re-binds the core entry points Python calls (the functional ops, the
// Tensor operators, backward, the optimizer steps, grad and policy switches). Note [Eager
// calls go to the original bindings]: outside a recording each re-bound name calls the
// binding it replaced (bindings.cpp), so every argument check there runs unchanged; a step
// being recorded goes through record_or_run(), which appends a record and runs the same
// core call. The recorded program is exposed as _core._Program. Translation only: the logic
// is in csrc/core/replay/.
#include "tensor_caster.h"  // before any Tensor argument is bound (one caster per module)

#include <pybind11/stl.h>

#include <deque>

#include "../core/ops.h"
#include "../core/replay/plan.h"
#include "../core/replay/plan_file.h"
#include "../core/replay/program.h"
#include "../core/sampling/sampling.h"
#include "numpy_bridge.h"

namespace py = pybind11;
using namespace spad;
using replay::Op;

namespace {

const std::vector<std::shared_ptr<Policy>> kNoPolicies;

Tensor record_or_run(Op op, std::vector<const Tensor *> ts, std::vector<int64_t> is = {}, std::vector<double> ds = {}) {
    if (replay::Recorder *r = replay::active_recorder()) return r->call_list(op, ts, std::move(is), std::move(ds));
    return replay::exec(op, ts.data(), ts.size(), is.data(), is.size(), ds.data(), ds.size(), kNoPolicies);
}

// Unary and binary ops, the common case, without building vectors on the eager path.
template <Op op> Tensor un(const Tensor &x) {
    if (replay::Recorder *r = replay::active_recorder()) return r->call(op, {&x});
    const Tensor *t[1] = {&x};
    return replay::exec(op, t, 1, nullptr, 0, nullptr, 0, kNoPolicies);
}
template <Op op> Tensor bin(const Tensor &a, const Tensor &b) {
    if (replay::Recorder *r = replay::active_recorder()) return r->call(op, {&a, &b});
    const Tensor *t[2] = {&a, &b};
    return replay::exec(op, t, 2, nullptr, 0, nullptr, 0, kNoPolicies);
}

// A Python operand of a Tensor operator (as bindings.cpp's operand()): a Tensor, a number in
// the tensor's dtype, or array-like data converted by numpy. Made during recording, the last
// two are constants of the step.
Tensor operand(const py::handle &h, const Tensor &like) {
    if (py::isinstance<TensorImpl>(h)) return h.cast<Tensor>();
    if (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr())) return scalar(h.cast<double>(), like->dtype);
    py::module_ np = py::module_::import("numpy");
    if (py::isinstance<py::array>(h)) {
        py::array a = h.cast<py::array>();
        if (a.dtype().kind() != 'f') a = np.attr("asarray")(a, np_dtype(like->dtype));  // a float array keeps its dtype
        return from_numpy(np.attr("ascontiguousarray")(a));
    }
    SPAD_CHECK(!py::isinstance<py::str>(h) && !py::isinstance<py::bytes>(h) && py::isinstance<py::sequence>(h),
               TypeError, "unsupported operand type ", std::string(py::str(py::type::handle_of(h))), " for a spad Tensor");
    return from_numpy(np.attr("asarray")(h, np_dtype(like->dtype)));
}

std::vector<int64_t> reduce_args(const py::object &axis, bool keepdims) {
    std::vector<int64_t> v{keepdims ? 1 : 0};
    if (axis.is_none()) return v;
    if (py::isinstance<py::int_>(axis)) {
        v.push_back(axis.cast<int64_t>());
        return v;
    }
    for (auto a : axis) v.push_back(a.cast<int64_t>());
    SPAD_CHECK(v.size() > 1, ValueError, "axis=() is not supported; pass None to reduce over all axes");
    return v;
}

std::vector<int64_t> shape_args(const py::args &args) {
    using V = std::vector<int64_t>;
    if (args.size() == 1 && !py::isinstance<py::int_>(args[0])) return args[0].cast<V>();
    return args.cast<V>();
}

std::vector<int64_t> reversed_axes(const Tensor &x) {
    std::vector<int64_t> p((size_t)x->ndim());
    for (int64_t i = 0; i < x->ndim(); ++i) p[(size_t)i] = x->ndim() - 1 - i;
    return p;
}

std::vector<const Tensor *> ptrs(const std::vector<Tensor> &a, const std::vector<Tensor> &b = {},
                                 const std::vector<Tensor> &c = {}) {
    std::vector<const Tensor *> v;
    for (auto *l : {&a, &b, &c})
        for (const Tensor &t : *l) v.push_back(&t);
    return v;
}

void warn(const std::string &msg) {
    if (PyErr_WarnEx(PyExc_UserWarning, msg.c_str(), 2) != 0) throw py::error_already_set();
}

// Reading a value of the step into Python while it is recorded freezes that value.
// numpy() of an input is not reported: F.cross_entropy re-wraps integer labels that way, and
// the recorder follows such aliases of an input (program.h).
void check_read(const Tensor &t, const char *what, bool inputs) {
    replay::Recorder *r = replay::active_recorder();
    if (r && (inputs ? r->is_value(t) : r->is_computed(t)))
        warn(str("compile: ", what, " of a value computed in the step is read while the step is recorded; the replay "
                 "keeps the recorded value wherever Python uses it (control flow and data made from it are frozen)"));
}

py::object loss_out(const Tensor &loss) {
    if (!loss) return py::none();
    return py::cast(copy(loss));  // fresh storage, detached: never a view of the step's buffers
}

// Arguments of a replay: Tensors or numpy arrays, checked against the recorded inputs.
std::vector<Tensor> bind_inputs(const replay::Program &P, const py::tuple &args) {
    if ((int32_t)args.size() != P.n_inputs) throw py::value_error("ReplayMismatch: argument count");
    std::vector<Tensor> in;
    in.reserve(args.size());
    for (size_t k = 0; k < args.size(); ++k) {
        py::handle a = args[k];
        Tensor t;
        if (py::isinstance<TensorImpl>(a)) {
            t = a.cast<Tensor>();
        } else if (py::isinstance<py::array>(a)) {
            py::array arr = py::reinterpret_borrow<py::array>(a);
            const DType want = P.in_dtypes[k];
            const char kind = arr.dtype().kind();
            const bool as_int = want == DType::I64 && (kind == 'i' || kind == 'u');
            if (!(as_int || (kind == 'f' && arr.itemsize() == (py::ssize_t)dtype_size(want))))
                throw py::value_error("ReplayMismatch: dtype");
            if (!(arr.flags() & py::array::c_style) || !arr.writeable() || (as_int && arr.itemsize() != 8) ||
                (as_int && kind == 'u'))
                arr = py::module_::import("numpy").attr("array")(arr, np_dtype(want), py::arg("order") = "C");
            t = from_numpy(arr);
        } else {
            throw py::value_error("ReplayMismatch: argument type");
        }
        if (t->dtype != P.in_dtypes[k] || t->shape != P.in_shapes[k]) throw py::value_error("ReplayMismatch: shape");
        in.push_back(std::move(t));
    }
    return in;
}

// Note [Eager calls go to the original bindings]: `orig` (the binding being replaced) runs
// whenever no step is recorded, `rec` (the recording wrapper) while one is. The wrapper keeps
// orig's docstring, signature line included, so help() and the stubs still show the types.
py::cpp_function delegate(const char *name, py::object orig, py::object rec, py::handle cls) {
    static std::deque<std::string> docs;  // cpp_function keeps a pointer to its docstring
    py::object d = py::getattr(orig, "__doc__", py::none());
    docs.push_back(d.is_none() ? std::string() : d.cast<std::string>());
    py::options o;
    o.disable_function_signatures();
    auto f = [orig, rec](const py::args &a, const py::kwargs &k) -> py::object {
        return replay::active_recorder() ? rec(*a, **k) : orig(*a, **k);
    };
    if (cls) return py::cpp_function(f, py::name(name), py::is_method(cls), docs.back().c_str());
    return py::cpp_function(f, py::name(name), docs.back().c_str());
}

}  // namespace

void register_replay(py::module_ &m) {
    py::object T = m.attr("Tensor");
    auto method = [&](const char *name, py::cpp_function f) { T.attr(name) = delegate(name, T.attr(name), f, T); };
    // A name bindings.cpp does not define (a recording-only entry point) is bound as is.
    auto mdef = [&](const char *name, py::cpp_function f) {
        if (py::hasattr(m, name)) m.attr(name) = delegate(name, m.attr(name), f, py::handle());
        else m.attr(name) = static_cast<py::object &>(f);
    };
    using py::arg;
    using py::is_method;

    // ---- Tensor operators and methods (the same signatures bindings.cpp gives them) ----
#define SPAD_BINOP(NAME, OP, A, B)                                                                          \
    method(NAME, py::cpp_function([](const Tensor &a, py::handle b) { return bin<OP>(A, B); }, is_method(T), \
                                  py::is_operator()))
    SPAD_BINOP("__add__", Op::ADD, a, operand(b, a));
    SPAD_BINOP("__radd__", Op::ADD, operand(b, a), a);
    SPAD_BINOP("__sub__", Op::SUB, a, operand(b, a));
    SPAD_BINOP("__rsub__", Op::SUB, operand(b, a), a);
    SPAD_BINOP("__mul__", Op::MUL, a, operand(b, a));
    SPAD_BINOP("__rmul__", Op::MUL, operand(b, a), a);
    SPAD_BINOP("__truediv__", Op::DIV, a, operand(b, a));
    SPAD_BINOP("__rtruediv__", Op::DIV, operand(b, a), a);
    SPAD_BINOP("__matmul__", Op::MATMUL, a, operand(b, a));
    SPAD_BINOP("__rmatmul__", Op::MATMUL, operand(b, a), a);
#undef SPAD_BINOP
    method("__neg__", py::cpp_function(&un<Op::NEG>, is_method(T)));
    method("__pow__", py::cpp_function(
                          [](const Tensor &a, py::handle p) {
                              SPAD_CHECK(PyFloat_Check(p.ptr()) || PyLong_Check(p.ptr()), TypeError,
                                         "pow: only a Python number exponent is supported (got ",
                                         std::string(py::str(py::type::handle_of(p))), ")");
                              return record_or_run(Op::POW, {&a}, {}, {p.cast<double>()});
                          },
                          is_method(T), py::is_operator()));
    for (auto nm : {std::make_pair("sum", Op::SUM), std::make_pair("mean", Op::MEAN), std::make_pair("max", Op::MAX)}) {
        const Op op = nm.second;
        method(nm.first, py::cpp_function(
                             [op](const Tensor &x, const py::object &axis, bool keepdims) {
                                 return record_or_run(op, {&x}, reduce_args(axis, keepdims));
                             },
                             is_method(T), arg("axis") = py::none(), arg("keepdims") = false,
                             "Reduce over axis (None: all; int or tuple)."));
    }
    method("reshape", py::cpp_function([](const Tensor &x, const py::args &s) {
               return record_or_run(Op::RESHAPE, {&x}, shape_args(s));
           }, is_method(T)));
    method("transpose", py::cpp_function([](const Tensor &x, const py::args &a) {
               return record_or_run(Op::PERMUTE, {&x}, a.size() == 0 ? reversed_axes(x) : shape_args(a));
           }, is_method(T)));
    py::object T0 = T.attr("T"), grad0 = T.attr("grad");  // the original properties (eager path)
    T.attr("T") = py::module_::import("builtins").attr("property")(
        py::cpp_function([T0](const py::object &x) -> Tensor {
            if (!replay::active_recorder()) return T0.attr("fget")(x).cast<Tensor>();
            Tensor t = x.cast<Tensor>();
            return record_or_run(Op::PERMUTE, {&t}, reversed_axes(t));
        }));
    method("exp", py::cpp_function(&un<Op::EXP>, is_method(T)));
    method("log", py::cpp_function(&un<Op::LOG>, is_method(T)));
    method("sqrt", py::cpp_function(&un<Op::SQRT>, is_method(T)));
    method("tanh", py::cpp_function(&un<Op::TANH>, is_method(T)));
    method("sigmoid", py::cpp_function(&un<Op::SIGMOID>, is_method(T)));
    method("relu", py::cpp_function(&un<Op::RELU>, is_method(T)));
    method("detach", py::cpp_function(&un<Op::DETACH>, is_method(T), "A tensor sharing the data, cut from the graph."));
    method("contiguous", py::cpp_function(&un<Op::CONTIGUOUS>, is_method(T)));
    method("item", py::cpp_function([](const Tensor &t) {
               check_read(t, "item()", true);
               return item(t);
           }, is_method(T), "The value of a one-element tensor as a float."));
    method("numpy", py::cpp_function([](const Tensor &t) {
               check_read(t, "numpy()", false);
               return to_numpy(t);
           }, is_method(T), "A numpy view of the data (no copy)."));
    method("backward", py::cpp_function(
                           [](const Tensor &t, const py::object &grad, bool retain_graph, bool create_graph) {
                               Tensor g = grad.is_none() ? Tensor() : operand(grad, t);
                               std::vector<int64_t> flags{retain_graph || create_graph ? 1 : 0, create_graph ? 1 : 0};
                               if (replay::Recorder *r = replay::active_recorder()) {
                                   r->call_list(Op::BACKWARD, {&t, &g}, flags, {});
                                   return;
                               }
                               py::gil_scoped_release nogil;
                               backward(t, g, flags[0] != 0, create_graph);
                           },
                           is_method(T), arg("grad") = py::none(), arg("retain_graph") = false,
                           arg("create_graph") = false,
                           "Accumulate d(self)/d(leaf) into every leaf's .grad. grad defaults to 1 for a scalar; the "
                           "tape's\nsaved payloads are freed unless retain_graph; create_graph records the backward "
                           "pass too.\nExact unless the forward pass ran under a sampling policy (spad.sampling.use)."));
    // .grad: reading it inside a recorded step yields a value of the step (the gradient that
    // backward makes at replay), not the recorded gradient; assigning records the assignment.
    T.attr("grad") = py::module_::import("builtins").attr("property")(
        py::cpp_function([grad0](const py::object &self) -> Tensor {
            if (!replay::active_recorder()) return optional_tensor(grad0.attr("fget")(self));
            Tensor t = self.cast<Tensor>();
            return record_or_run(Op::GET_GRAD, {&t});
        }),
        py::cpp_function([grad0](const py::object &self, const py::object &value) {
            if (!replay::active_recorder()) {
                grad0.attr("fset")(self, value);
                return;
            }
            Tensor t = self.cast<Tensor>(), g = optional_tensor(value);
            if (g) {
                SPAD_CHECK(g->shape == t->shape, ValueError, "grad: assigned gradient of shape ", shape_str(g->shape),
                           " to a tensor of shape ", shape_str(t->shape));
                SPAD_CHECK(g->dtype == t->dtype, TypeError, "grad: assigned gradient of dtype ", dtype_name(g->dtype),
                           " to a tensor of dtype ", dtype_name(t->dtype));
            }
            record_or_run(Op::SET_GRAD, {&t, &g});
        }));

    // ---- functional ops ----
    mdef("relu", py::cpp_function(&un<Op::RELU>, arg("x"), "max(x, 0); the tape keeps one bit per element."));
    mdef("tanh", py::cpp_function(&un<Op::TANH>, arg("x")));
    mdef("sigmoid", py::cpp_function(&un<Op::SIGMOID>, arg("x")));
    mdef("exp", py::cpp_function(&un<Op::EXP>, arg("x")));
    mdef("log", py::cpp_function(&un<Op::LOG>, arg("x")));
    mdef("sqrt", py::cpp_function(&un<Op::SQRT>, arg("x")));
    mdef("softmax", py::cpp_function([](const Tensor &x, int64_t axis) { return record_or_run(Op::SOFTMAX, {&x}, {axis}); },
                                     arg("x"), arg("axis") = -1));
    mdef("log_softmax", py::cpp_function([](const Tensor &x, int64_t axis) {
             return record_or_run(Op::LOG_SOFTMAX, {&x}, {axis});
         }, arg("x"), arg("axis") = -1));
    mdef("cross_entropy", py::cpp_function(&bin<Op::CROSS_ENTROPY>, arg("logits"), arg("labels"),
                                           "Mean softmax cross-entropy; labels: int64 tensor of shape (batch,)."));
    mdef("mse_loss", py::cpp_function([](const Tensor &pred, py::handle target) {
             return bin<Op::MSE>(pred, operand(target, pred));
         }, arg("pred"), arg("target"),
         "Mean squared error over all elements; target: a tensor or array-like of the same shape."));
    mdef("matmul", py::cpp_function(&bin<Op::MATMUL>, arg("a"), arg("b"), "numpy.matmul semantics (1-D, 2-D, batched)."));
    mdef("linear", py::cpp_function([](const Tensor &x, const Tensor &W, const py::object &bias) {
             Tensor b = optional_tensor(bias);
             if (replay::Recorder *r = replay::active_recorder()) return r->call(Op::LINEAR, {&x, &W, &b});
             return ops::linear(x, W, b);
         }, arg("x"), arg("W"), arg("b") = py::none(),
         "x @ W + b in one op; W has shape (in_features, out_features), b (out_features,) or None."));
    // Sequential's fused Linear/ReLU chain: one record, replayed by the same ops::linear_chain.
    mdef("linear_chain", py::cpp_function([](const Tensor &x, const py::list &layers) {
             std::vector<Tensor> ws;  // W0, b0, W1, b1, ... (null bias: no bias)
             std::vector<int64_t> relu;
             for (const py::handle &h : layers) {
                 py::tuple t = h.cast<py::tuple>();
                 SPAD_CHECK(t.size() == 3, ValueError, "linear_chain: each layer is (W, b or None, relu), got ",
                            t.size(), " items");
                 ws.push_back(t[0].cast<Tensor>());
                 ws.push_back(optional_tensor(py::reinterpret_borrow<py::object>(t[1])));
                 relu.push_back(t[2].cast<bool>() ? 1 : 0);
             }
             std::vector<const Tensor *> ts{&x};
             for (const Tensor &w : ws) ts.push_back(&w);
             return record_or_run(Op::LINEAR_CHAIN, ts, relu);
         }, arg("x"), arg("layers")));
    // The in-place ReLU of an owned buffer records as a plain ReLU (the recorder holds the
    // input, so it could not be overwritten anyway).
    mdef("_relu_owned", py::cpp_function([](py::list box) {
             SPAD_CHECK(box.size() == 1, ValueError, "_relu_owned: expected a one-element list");
             Tensor t = box[0].cast<Tensor>();
             box.attr("clear")();
             return un<Op::RELU>(t);
         }, arg("box")));
    mdef("clear_grads", py::cpp_function([](const std::vector<Tensor> &ps) { record_or_run(Op::CLEAR_GRADS, ptrs(ps)); },
                                         arg("params"), "Set .grad = None on every tensor of the list (Optimizer.zero_grad)."));
    mdef("take", py::cpp_function([](const Tensor &x, const Tensor &idx, const std::vector<int64_t> &s) {
             return record_or_run(Op::TAKE, {&x, &idx}, s);
         }));
    mdef("concatenate", py::cpp_function([](const std::vector<Tensor> &xs, int64_t axis) {
             return record_or_run(Op::CONCAT, ptrs(xs), {axis});
         }, arg("tensors"), arg("axis") = 0));
    mdef("conv2d", py::cpp_function([](const Tensor &x, const Tensor &w, const py::object &bias,
                                       std::array<int64_t, 2> stride, std::array<int64_t, 2> padding) {
             Tensor b = optional_tensor(bias);
             return record_or_run(Op::CONV2D, {&x, &w, &b}, {stride[0], stride[1], padding[0], padding[1]});
         }, arg("x"), arg("w"), arg("b") = py::none(), arg("stride") = std::array<int64_t, 2>{1, 1},
         arg("padding") = std::array<int64_t, 2>{0, 0}));
    mdef("max_pool2d", py::cpp_function([](const Tensor &x, int64_t k) { return record_or_run(Op::MAX_POOL2D, {&x}, {k}); },
                                        arg("x"), arg("k")));
    mdef("avg_pool2d", py::cpp_function([](const Tensor &x, int64_t k) { return record_or_run(Op::AVG_POOL2D, {&x}, {k}); },
                                        arg("x"), arg("k")));
    mdef("dropout", py::cpp_function([](const Tensor &x, double p, bool training) {
             return record_or_run(Op::DROPOUT, {&x}, {training ? 1 : 0}, {p});
         }, arg("x"), arg("p"), arg("training")));

    // ---- grad mode, policies, optimizers ----
    mdef("set_grad_enabled", py::cpp_function([](bool on) { record_or_run(Op::SET_GRAD_ENABLED, {}, {on ? 1 : 0}); }));
    mdef("set_active_policy", py::cpp_function([](const std::shared_ptr<Policy> &p) {
             if (replay::Recorder *r = replay::active_recorder()) r->call_list(Op::SET_POLICY, {}, {r->policy_index(p)}, {});
             else set_active_policy(p);
         }, arg("policy").none(true)));
    {
        using TL = std::vector<Tensor>;
        // The eager path releases the GIL for the fused loops, as bindings.cpp does.
        auto opt = [](Op op, std::vector<const Tensor *> ts, std::vector<int64_t> is, std::vector<double> ds) {
            if (replay::Recorder *r = replay::active_recorder()) {
                r->call_list(op, ts, std::move(is), std::move(ds));
                return;
            }
            py::gil_scoped_release nogil;
            replay::exec(op, ts.data(), ts.size(), is.data(), is.size(), ds.data(), ds.size(), kNoPolicies);
        };
        mdef("sgd_step", py::cpp_function([opt](const TL &p, const TL &bufs, double lr, double mom, bool nesterov, double wd) {
                 opt(Op::SGD, ptrs(p, bufs), {(int64_t)p.size(), nesterov ? 1 : 0}, {lr, mom, wd});
             }, arg("params"), arg("bufs"), arg("lr"), arg("momentum"), arg("nesterov"), arg("weight_decay")));
        mdef("adagrad_step", py::cpp_function([opt](const TL &p, const TL &sq, double lr, double eps, double wd) {
                 SPAD_CHECK(sq.size() == p.size(), ValueError, "adagrad: ", sq.size(), " state tensors for ", p.size(),
                            " parameters");
                 opt(Op::ADAGRAD, ptrs(p, sq), {}, {lr, eps, wd});
             }, arg("params"), arg("sq"), arg("lr"), arg("eps"), arg("weight_decay")));
        mdef("rmsprop_step", py::cpp_function([opt](const TL &p, const TL &sq, const TL &bufs, double lr, double alpha,
                                                    double eps, double mom, bool nesterov, double wd) {
                 SPAD_CHECK(sq.size() == p.size(), ValueError, "rmsprop: ", sq.size(), " state tensors for ", p.size(),
                            " parameters");
                 opt(Op::RMSPROP, ptrs(p, sq, bufs), {(int64_t)p.size(), (int64_t)bufs.size(), nesterov ? 1 : 0},
                     {lr, alpha, eps, mom, wd});
             }, arg("params"), arg("sq"), arg("bufs"), arg("lr"), arg("alpha"), arg("eps"), arg("momentum"),
             arg("nesterov"), arg("weight_decay")));
        mdef("adam_step", py::cpp_function([opt](const TL &p, const TL &m1, const TL &m2, double lr, double b1, double b2,
                                                 double eps, double wd, bool decoupled, int64_t step) {
                 SPAD_CHECK(m1.size() == p.size() && m2.size() == p.size(), ValueError, "adam: state lists of ",
                            m1.size(), " and ", m2.size(), " tensors for ", p.size(), " parameters");
                 opt(Op::ADAM, ptrs(p, m1, m2), {step, decoupled ? 1 : 0}, {lr, b1, b2, eps, wd});
             }));
        mdef("assign_", py::cpp_function([opt](const Tensor &dst, const Tensor &src) { opt(Op::ASSIGN, {&dst, &src}, {}, {}); },
                                         arg("dst"), arg("src"),
                                         "Copy src into dst in place and bump dst's version (parameter loads, averages)."));
        mdef("bump_version", py::cpp_function([opt](const Tensor &t) { opt(Op::BUMP_VERSION, {&t}, {}, {}); },
                                              "Mark a tensor's storage as overwritten from outside the core."));
    }

    // ---- recording and replay ----
    py::class_<replay::Program, std::shared_ptr<replay::Program>>(m, "_Program",
                                                                  "A recorded step (spad.compile); replays in C++.")
        .def("run", [](replay::Program &P, const py::tuple &args) {
                 std::vector<Tensor> in = bind_inputs(P, args);
                 Tensor loss;
                 {
                     py::gil_scoped_release nogil;
                     loss = P.run(in);
                 }
                 return loss_out(loss);
             }, arg("args"), "Replay with new inputs (ValueError starting 'ReplayMismatch' if they do not fit).")
        .def_property_readonly("n_records", [](const replay::Program &P) { return P.records.size(); })
        .def_property_readonly("n_inputs", [](const replay::Program &P) { return P.n_inputs; })
        .def_property_readonly("plan_bytes", [](const replay::Program &P) { return P.plan ? P.plan->arena_bytes : 0; })
        .def_property_readonly("eager_peak_bytes",
                               [](const replay::Program &P) { return P.plan ? P.plan->eager_peak_bytes : 0; })
        .def_property_readonly("heap_bytes", [](const replay::Program &P) { return P.plan ? P.plan->heap_bytes : 0; })
        .def_property_readonly("plan_dropped", [](const replay::Program &P) { return P.plan_dropped; })
        .def_property_readonly("replays", [](const replay::Program &P) { return P.replays; })
        .def_property("lower_enabled", [](const replay::Program &P) { return P.lower_enabled; },
                      [](replay::Program &P, bool on) { P.lower_enabled = on; },
                      "Whether replays may take the lowered, tape-free path (csrc/core/replay/lower.h).")
        .def_property_readonly("lowered", [](const replay::Program &P) { return P.lower_state == 1; },
                               "True once the program is lowered (tried at the first replay).")
        .def_property_readonly("lower_note", [](const replay::Program &P) { return P.lower_note; },
                               "Why the program, or its last call, did not take the lowered path ('' if it did).")
        .def_property_readonly("lowered_runs", [](const replay::Program &P) { return P.lowered_runs; })
        .def_property_readonly("lowered_workspace_bytes", [](const replay::Program &P) {
            return P.lower_state == 1 ? replay::lowered_workspace_bytes(*P.lowered) : 0;
        })
        .def("op_counts", [](const replay::Program &P) {
            py::dict d;
            for (const auto &r : P.records) {
                py::str k(replay::op_name(r.op));
                d[k] = d.contains(k) ? d[k].cast<int64_t>() + 1 : 1;
            }
            return d;
        })
        .def("dump", &replay::Program::dump)
        .def("save", [](const replay::Program &P, const std::string &path) { replay::save_program(P, path); },
             arg("path"), "Write the plan with its parameters and optimizer state (docs/plan_format.md).")
        .def("parameters", [](const replay::Program &P) {
            py::list out;  // the captured tensors that require grad, in slot order
            for (size_t s = 0; s < P.n_slots(); ++s)
                if (P.kinds[s] == replay::SlotKind::CONST && P.consts[s]->requires_grad) out.append(P.consts[s]);
            return out;
        }, "The captured tensors that require grad (the parameters), in slot order.");
    m.def("_load_program", &replay::load_program, arg("path"), "Read a plan file written by _Program.save.");
    py::class_<replay::Recorder>(m, "_Recorder", "Records the core calls of one step (spad.compile).")
        .def(py::init<const std::vector<Tensor> &>(), arg("inputs"))
        .def("finish", [](replay::Recorder &r, const py::object &loss) {  // None: a step returning nothing
                 std::vector<std::string> warnings;
                 auto prog = r.finish(optional_tensor(loss), warnings);
                 return py::make_tuple(prog, warnings);
             }, arg("loss").none(true))
        .def("abort", &replay::Recorder::abort);
}
