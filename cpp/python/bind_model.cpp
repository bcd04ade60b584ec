#include "bindings.h"

namespace si::python {

void bind_model(pybind11::module_&) {}

}  // namespace si::python
