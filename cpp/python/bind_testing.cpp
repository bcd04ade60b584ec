// sparseinfer._core.testing: hooks for the tests, kept out of the engine's own bindings: each
// kernel level called directly on one row, the reference dequantisation, and how sessions
// share the cores.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "bindings.h"
#include "common/errors.h"
#include "cpu/kernels.h"
#include "cpu/thread_pool.h"
#include "tensor/dtype.h"

namespace py = pybind11;

namespace si::python {

namespace {

// The kernel hooks take one raw row (ggml layout) of `n` elements of a type.
std::string checked_row(uint32_t ggml_type, const py::bytes& data, int64_t n) {
    uint64_t need = 0;
    if (!dtype_info(ggml_type) || !row_bytes(static_cast<DType>(ggml_type), n, &need)) {
        throw ArgumentError("bad type or length for a row of " + std::string(dtype_name(ggml_type)));
    }
    std::string row = data;
    if (row.size() != need) throw ArgumentError("the row has the wrong number of bytes");
    return row;
}

const KernelTable& named_kernels(const std::string& isa) {
    const KernelTable* k = kernels_for(isa);
    if (!k) throw ArgumentError("ISA level '" + isa + "' is not available here");
    return *k;
}

// One weight row dotted with one float activation x (n,) or four (4, n) through the
// four-token kernel, using the named ISA level, so tests can compare every level with the
// generic one.
py::array_t<float> kernel_row_dot(const std::string& isa, uint32_t ggml_type, py::bytes weight,
                                  py::array_t<float, py::array::c_style | py::array::forcecast> x) {
    const KernelTable& k = named_kernels(isa);
    if (x.ndim() != 1 && !(x.ndim() == 2 && x.shape(0) == 4)) {
        throw ArgumentError("x must be one activation or four (shape (4, n))");
    }
    const DType type = static_cast<DType>(ggml_type);
    const int64_t n = static_cast<int64_t>(x.shape(x.ndim() - 1));
    const std::string w = checked_row(ggml_type, weight, n);
    const int64_t rows = x.ndim() == 2 ? 4 : 1;
    const size_t stride = activation_bytes(type, n);
    std::vector<uint8_t> act(stride * static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) prepare_activation(k, type, x.data() + r * n, act.data() + r * stride, n);
    py::array_t<float> out(rows);
    if (rows == 4) {
        row_dot4(k, type)(n, w.data(), act.data(), stride, out.mutable_data());
    } else {
        out.mutable_data()[0] = row_dot(k, type)(n, w.data(), act.data());
    }
    return out;
}

// y + a * row for a weight row, with the named ISA level.
py::array_t<float> kernel_row_axpy(const std::string& isa, uint32_t ggml_type, py::bytes weight,
                                   float a, py::array_t<float, py::array::c_style | py::array::forcecast> y) {
    const KernelTable& k = named_kernels(isa);
    const int64_t n = static_cast<int64_t>(y.size());
    const std::string w = checked_row(ggml_type, weight, n);
    py::array_t<float> out(n);
    std::memcpy(out.mutable_data(), y.data(), static_cast<size_t>(n) * sizeof(float));
    row_axpy(k, static_cast<DType>(ggml_type))(n, a, w.data(), out.mutable_data());
    return out;
}

// The reference dequantisation of a row (the block layouts' tests).
py::array_t<float> dequantize_row(uint32_t ggml_type, py::bytes data, int64_t n) {
    const std::string raw = checked_row(ggml_type, data, n);
    py::array_t<float> out(n);
    dequantize_row_ref(static_cast<DType>(ggml_type), raw.data(), out.mutable_data(), n);
    return out;
}

}  // namespace

}  // namespace si::python

namespace sparseinfer::python {

void bind_testing(py::module_& m) {
    using namespace si::python;
    using si::CoreShare;
    py::module_ t = m.def_submodule("testing", "hooks for sparseinfer's tests (not an API)");
    t.def("kernel_row_dot", &kernel_row_dot, py::arg("isa"), py::arg("ggml_type"), py::arg("weight"), py::arg("x"));
    t.def("dequantize_row", &dequantize_row, py::arg("ggml_type"), py::arg("data"), py::arg("n"));
    t.def("kernel_row_axpy", &kernel_row_axpy, py::arg("isa"), py::arg("ggml_type"), py::arg("weight"),
          py::arg("a"), py::arg("y"));
    t.def("core_share_stats", [] {
        const CoreShare::Stats s = CoreShare::stats();
        py::dict d;
        d["capacity"] = s.capacity;
        d["in_use"] = s.in_use;
        d["shares"] = s.shares;
        d["narrowed"] = s.narrowed;
        return d;
    }, "How the process's sessions share its cores (cpu/thread_pool.h, CoreShare)");
}

}  // namespace sparseinfer::python
