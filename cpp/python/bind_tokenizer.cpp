#include "bindings.h"

namespace si::python {

void bind_tokenizer(pybind11::module_&) {}

}  // namespace si::python
