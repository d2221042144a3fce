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

#include "../core/tensor.h"

namespace spad {
namespace py = pybind11;

inline void release_pyobject(void *, void *ctx) {
    if (!Py_IsInitialized()) return;  // interpreter already gone: leak rather than crash
    py::gil_scoped_acquire gil;
    Py_DECREF(static_cast<PyObject *>(ctx));
}

inline DType dtype_of(const py::dtype &d) {
    if (d.is(py::dtype::of<float>())) return DType::F32;
    if (d.is(py::dtype::of<double>())) return DType::F64;
    if (d.is(py::dtype::of<int64_t>())) return DType::I64;
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

inline Tensor from_numpy(const py::array &a) {
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
