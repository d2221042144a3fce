// numpy_bridge.h — zero-copy between numpy arrays and spad tensors.
//
// In: a float32/float64 array with non-negative, itemsize-aligned strides is borrowed:
// the Storage keeps a reference to the array and drops it (taking the GIL) when the
// last tensor or saved payload lets go. Anything else is refused here; spad.tensor()
// makes the explicit copy.
// Out: Tensor.numpy() and the buffer protocol return views whose base is the Tensor,
// so the storage outlives every view.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <unordered_map>

#include "../core/tensor.h"

namespace spad {
namespace py = pybind11;

inline void release_pyobject(void *, void *ctx) {
    if (!Py_IsInitialized()) return;  // interpreter already gone: leak rather than crash
    py::gil_scoped_acquire gil;
    Py_DECREF(static_cast<PyObject *>(ctx));
}

// Note [numpy writes under the tape]
//   The version counter cannot see a write made through numpy, so a borrowed array that a
//   saved payload holds is made read-only (flags.writeable = False) from the moment the
//   tape first saves it until the last payload is released (after backward), then made
//   writeable again: `x[0] = 5` between forward and backward raises numpy's "assignment
//   destination is read-only" instead of silently changing the gradient. Counted per
//   array object, since several tensors may borrow the same array. Only borrows made with
//   guard_writes (spad.tensor, spad.from_numpy, array operands) are guarded; internal
//   buffers that bump the version themselves (DataLoader batches, optimizer state) are not.
inline void numpy_tape_hook(void *ctx, bool held) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    static std::unordered_map<PyObject *, int> holds;  // guarded by the GIL
    PyObject *a = static_cast<PyObject *>(ctx);
    int &n = holds[a];
    const bool flip = held ? n++ == 0 : --n == 0;
    if (n == 0) holds.erase(a);
    if (!flip) return;
    // Called from pack/release (release may run in a destructor): never throw from here.
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyObject *flags = PyObject_GetAttrString(a, "flags")) {
        if (PyObject_SetAttrString(flags, "writeable", held ? Py_False : Py_True) != 0) PyErr_Clear();
        Py_DECREF(flags);
    } else {
        PyErr_Clear();
    }
    PyErr_Restore(type, value, tb);
}

inline DType dtype_of(const py::dtype &d) {
    if (d.is(py::dtype::of<float>())) return DType::F32;
    if (d.is(py::dtype::of<double>())) return DType::F64;
    if (d.is(py::dtype::of<int64_t>())) return DType::I64;
    // A '>f4' array has kind 'f' and item size 4 too, but borrowing it would read its bytes
    // in the wrong order. Callers that convert (spad.tensor, operands) fix the byte order
    // before they get here; a borrow of such an array is refused.
    SPAD_CHECK(py::cast<bool>(d.attr("isnative")), TypeError, "from_numpy: the array's byte order is not native (dtype ",
               std::string(py::str(d.attr("str"))), "); spad.tensor(x) converts it");
    char k = d.kind();
    if (k == 'f' && d.itemsize() == 4) return DType::F32;
    if (k == 'f' && d.itemsize() == 8) return DType::F64;
    if ((k == 'i' || k == 'u') && d.itemsize() == 8 && k == 'i') return DType::I64;
    throw TypeError(str("from_numpy: unsupported dtype ", std::string(py::str(d)),
                        "; expected float32, float64 (or int64 for labels/indices); use spad.tensor(x, dtype=...) "
                        "to convert explicitly"));
}

inline py::dtype np_dtype(DType d) {
    switch (d) {
        case DType::F32: return py::dtype::of<float>();
        case DType::F64: return py::dtype::of<double>();
        case DType::I64: return py::dtype::of<int64_t>();
        case DType::U8: return py::dtype::of<uint8_t>();
        case DType::I32: return py::dtype::of<int32_t>();
    }
    return py::dtype::of<float>();
}

inline Tensor from_numpy(const py::array &a, bool guard_writes = false) {
    DType dt = dtype_of(a.dtype());
    const int64_t es = (int64_t)dtype_size(dt);
    SPAD_CHECK(a.writeable(), TypeError, "from_numpy: the array is read-only; spad.tensor(x) copies it");
    auto t = std::make_shared<TensorImpl>();
    t->dtype = dt;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        SPAD_CHECK(a.strides(i) >= 0 && a.strides(i) % es == 0, TypeError,
                   "from_numpy: strides ", a.strides(i), " are negative or not a multiple of the item size; "
                   "spad.tensor(x) copies it");
        t->shape.push_back(a.shape(i));
        t->strides.push_back(a.strides(i) / es);
    }
    auto s = std::make_shared<Storage>();
    s->data = const_cast<void *>(a.data());
    int64_t span = 1;
    for (size_t i = 0; i < t->shape.size(); ++i) span += (t->shape[i] - 1) * t->strides[i];
    s->nbytes = (size_t)(t->numel() ? span * es : 0);
    PyObject *owner = a.ptr();
    Py_INCREF(owner);
    s->ctx = owner;
    s->release = release_pyobject;
    if (guard_writes) s->tape_hook = numpy_tape_hook;
    t->storage = std::move(s);
    return t;
}

inline py::array to_numpy(const Tensor &t) {
    const int64_t es = (int64_t)dtype_size(t->dtype);
    std::vector<py::ssize_t> shape(t->shape.begin(), t->shape.end()), strides;
    for (int64_t s : t->strides) strides.push_back(s * es);
    py::array a(np_dtype(t->dtype), shape, strides, t->raw(), py::cast(t));
    // A tensor held by the tape is read-only through numpy: numpy writes would bypass the
    // version counter and silently change the gradient (see Note [Saved tensor versions]).
    if (t->storage->tape_refs > 0) a.attr("flags").attr("writeable") = false;
    return a;
}

}  // namespace spad
