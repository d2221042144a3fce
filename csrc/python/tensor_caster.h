// tensor_caster.h — the Tensor argument caster every binding translation unit uses (one
// definition for the whole module: bindings.cpp and replay_bindings.cpp must agree).
#pragma once
#include <pybind11/pybind11.h>

#include "../core/tensor.h"

// Note [None is not a Tensor]
//   pybind11 converts None to a null std::shared_ptr for any Tensor argument, and every op
//   would then dereference it (F.relu(None) was a segfault). Refused here, for every
//   binding at once; the two optional tensors (linear's and conv2d's bias) take a py::object.
namespace pybind11 {
namespace detail {
template <>
class type_caster<std::shared_ptr<spad::TensorImpl>>
    : public copyable_holder_caster<spad::TensorImpl, std::shared_ptr<spad::TensorImpl>> {
  public:
    bool load(handle src, bool convert) {
        if (src.is_none()) return false;
        return copyable_holder_caster<spad::TensorImpl, std::shared_ptr<spad::TensorImpl>>::load(src, convert);
    }
};
}  // namespace detail
}  // namespace pybind11

namespace spad {
// An optional tensor argument (a bias) taken as a py::object: None means none.
inline Tensor optional_tensor(const pybind11::object &o) { return o.is_none() ? Tensor() : o.cast<Tensor>(); }
}  // namespace spad
