// sparseinfer._core: the native module. Thin: each bind_*.cpp exposes one part of the engine,
// and this file maps the engine's exception types to sparseinfer.errors in one place.
#include <pybind11/pybind11.h>

#include <new>

#include "bindings.h"
#include "sparseinfer/errors.h"

namespace py = pybind11;

namespace {

void raise_as(const char* class_name, const char* message) {
    py::object cls = py::module_::import("sparseinfer.errors").attr(class_name);
    PyErr_SetString(cls.ptr(), message);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "sparseinfer native engine (private: use the sparseinfer package)";
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const sparseinfer::IoError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const sparseinfer::FormatError& e) {
            raise_as("ModelFormatError", e.what());
        } catch (const sparseinfer::UnsupportedError& e) {
            raise_as("UnsupportedModelError", e.what());
        } catch (const sparseinfer::ContextOverflowError& e) {
            raise_as("ContextOverflowError", e.what());
        } catch (const sparseinfer::ArgumentError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const sparseinfer::OutOfMemoryError& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        } catch (const sparseinfer::CancelledError& e) {
            raise_as("CancelledError", e.what());
        } catch (const sparseinfer::Error& e) {
            raise_as("SparseInferError", e.what());
        }
    });
    sparseinfer::python::bind_model(m);
    sparseinfer::python::bind_tokenizer(m);
    sparseinfer::python::bind_sampler(m);
    sparseinfer::python::bind_testing(m);
}
