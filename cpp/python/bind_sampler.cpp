#include "bindings.h"

namespace si::python {

void bind_sampler(pybind11::module_&) {}

}  // namespace si::python
