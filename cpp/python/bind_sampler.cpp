// _core.Sampler: sparseinfer::Sampler with keyword arguments; sample() reads a 1-D float32 array.
#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "sparseinfer/sparseinfer.h"

namespace py = pybind11;

namespace sparseinfer::python {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

Sampler make_sampler(float temperature, int32_t top_k, float top_p, float min_p,
                     float repeat_penalty, int32_t repeat_last_n, uint64_t seed) {
    SamplingParams params;
    params.temperature = temperature;
    params.top_k = top_k;
    params.top_p = top_p;
    params.min_p = min_p;
    params.repeat_penalty = repeat_penalty;
    params.repeat_last_n = repeat_last_n;
    params.seed = seed;
    return Sampler(params);
}

int32_t sample(Sampler& sampler, const FloatArray& logits) {
    if (logits.ndim() != 1)
        throw ArgumentError("Sampler.sample: logits must be a 1-D array, got " +
                            std::to_string(logits.ndim()) + " dimensions");
    if (logits.shape(0) > INT32_MAX)
        throw ArgumentError("Sampler.sample: too many logits");
    const float* data = logits.data();
    const auto n_vocab = static_cast<int32_t>(logits.shape(0));
    py::gil_scoped_release unlocked;
    return sampler.sample(data, n_vocab);
}

}  // namespace

void bind_sampler(py::module_& m) {
    py::class_<Sampler>(m, "Sampler",
                        "Repetition penalty, top-k, top-p, min-p, temperature, seeded draw. "
                        "Not thread-safe: one sampler per sequence.")
        .def(py::init(&make_sampler), py::arg("temperature") = 0.8f,
             py::arg("top_k") = 40, py::arg("top_p") = 0.95f, py::arg("min_p") = 0.05f,
             py::arg("repeat_penalty") = 1.0f, py::arg("repeat_last_n") = 64,
             py::arg("seed") = 0)
        .def("sample", &sample, py::arg("logits"),
             "Token id drawn from 1-D float32 logits (the array is not modified).")
        .def("accept", &Sampler::accept, py::arg("token"),
             "Records a token of the sequence for the repetition penalty.")
        .def("reset", &Sampler::reset, "Forgets the recorded tokens and reseeds.");
}

}  // namespace sparseinfer::python
