// Each bind_*.cpp adds one part of the engine to the module; module.cpp calls them all. They
// go through the public C++ API (sparseinfer/sparseinfer.h) only, except bind_testing.cpp,
// whose hooks reach the kernels for the tests (tests/source_tree/test_layout.py checks this).
#pragma once

#include <pybind11/pybind11.h>

namespace sparseinfer::python {

void bind_model(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_sampler(pybind11::module_& m);
void bind_testing(pybind11::module_& m);  // the submodule _core.testing

}  // namespace sparseinfer::python
