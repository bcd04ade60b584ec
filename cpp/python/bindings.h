// Each bind_*.cpp adds one part of the engine to the module; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace si::python {

void bind_model(pybind11::module_& m);
void bind_tokenizer(pybind11::module_& m);
void bind_sampler(pybind11::module_& m);
void bind_testing(pybind11::module_& m);  // the submodule _core.testing

}  // namespace si::python
