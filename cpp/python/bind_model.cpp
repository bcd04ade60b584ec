// Model, Session, DeviceModel, file inspection and the machine's facts, over the public
// C++ API (sparseinfer/sparseinfer.h) alone.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include "bindings.h"
#include "sparseinfer/sparseinfer.h"

namespace py = pybind11;

namespace sparseinfer::python {

namespace {

using HotIds = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

py::str utf8(std::string_view s) {
    // Metadata strings come from the file: decode leniently rather than fail on bad bytes.
    PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

py::object to_python(const MetadataValue& v) {
    switch (v.kind) {
        case MetadataValue::Kind::unsigned_integer: return py::int_(v.u);
        case MetadataValue::Kind::signed_integer: return py::int_(v.i);
        case MetadataValue::Kind::floating: return py::float_(v.f);
        case MetadataValue::Kind::boolean: return py::bool_(v.b);
        case MetadataValue::Kind::string: return utf8(v.s);
        case MetadataValue::Kind::array: {
            py::list out(v.items.size());
            for (size_t i = 0; i < v.items.size(); ++i) out[i] = to_python(v.items[i]);
            return std::move(out);
        }
    }
    return py::none();
}

py::dict metadata_dict(const Metadata& metadata) {
    py::dict d;
    for (const auto& [key, value] : metadata) d[utf8(key)] = to_python(value);
    return d;
}

py::list tensor_list(const std::vector<TensorInfo>& tensors) {
    py::list out;
    for (const TensorInfo& t : tensors) {
        py::tuple shape(t.shape.size());
        for (size_t i = 0; i < t.shape.size(); ++i) shape[i] = py::int_(t.shape[i]);
        out.append(py::make_tuple(utf8(t.name), t.type, shape));
    }
    return out;
}

}  // namespace

void bind_model(py::module_& m) {
    m.def("system_info", [] {
        const SystemInfo info = system_info();
        py::dict d;
        d["isa"] = info.isa;
        d["available_isas"] = info.available_isas;
        d["hardware_threads"] = info.hardware_threads;
        return d;
    });
    m.def("memory_read_bandwidth", [](size_t bytes, int n_threads, int repeats) {
        py::gil_scoped_release release;
        return measure_read_bandwidth(bytes, n_threads, repeats);
    }, py::arg("bytes") = size_t{1} << 30, py::arg("n_threads") = 1, py::arg("repeats") = 3,
       "Bytes per second n_threads threads read from memory (best of `repeats` passes over `bytes`)");
    m.def("read_gguf_info", [](const std::string& path) {
        GgufInfo info;
        {
            py::gil_scoped_release release;
            info = read_gguf_info(path);
        }
        py::dict d;
        d["version"] = info.version;
        d["powerinfer"] = info.powerinfer;
        d["metadata"] = metadata_dict(info.metadata);
        d["tensors"] = tensor_list(info.tensors);
        return d;
    }, py::arg("path"));
    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const std::string& path, const py::object& predictor_q8,
                         std::optional<float> sparse_threshold, bool prepare_weights) {
                 LoadOptions options;
                 if (py::isinstance<py::bool_>(predictor_q8)) {
                     options.predictor_q8 = predictor_q8.cast<bool>() ? PredictorQ8::On : PredictorQ8::Off;
                 } else if (py::isinstance<py::str>(predictor_q8) && predictor_q8.cast<std::string>() == "auto") {
                     options.predictor_q8 = PredictorQ8::Auto;
                 } else {
                     throw ArgumentError("predictor_q8 must be True, False or 'auto', got " +
                                         py::repr(predictor_q8).cast<std::string>());
                 }
                 options.sparse_threshold = sparse_threshold;
                 options.prepare_weights = prepare_weights;
                 py::gil_scoped_release release;
                 return std::const_pointer_cast<Model>(Model::load(path, options));
             }),
             py::arg("path"), py::arg("predictor_q8") = "auto", py::arg("sparse_threshold") = py::none(),
             py::arg("prepare_weights") = true)
        .def_property_readonly("predictor_q8_layers", &Model::predictor_q8_layers)
        .def_property_readonly("path", &Model::path)
        .def_property_readonly("arch", &Model::arch)
        .def_property_readonly("n_vocab", &Model::n_vocab)
        .def_property_readonly("n_embd", &Model::n_embd)
        .def_property_readonly("n_layer", &Model::n_layer)
        .def_property_readonly("n_ctx_train", &Model::n_ctx_train)
        // Whether its layers have activation predictors (a PowerInfer file): it can run sparse.
        .def_property_readonly("is_powerinfer", &Model::is_powerinfer)
        .def_property_readonly("sparse_threshold", &Model::sparse_threshold)
        .def_property_readonly("tokenizer", [](const Model& self) {
            return std::const_pointer_cast<Tokenizer>(self.tokenizer());
        })
        .def("metadata", [](const Model& self) { return metadata_dict(self.metadata()); });

    m.def("device_costs", [](const Model& model, int64_t n_ctx) {
        const DeviceCosts c = device_costs(model, n_ctx);
        py::dict d;
        d["n_neurons"] = c.n_neurons;
        d["neuron_bytes"] = c.neuron_bytes;
        d["fixed_bytes"] = c.fixed_bytes;
        d["shared_bytes"] = c.shared_bytes;
        d["batch_bytes"] = c.batch_bytes;
        return d;
    }, py::arg("model"), py::arg("n_ctx"), "What each part of the model takes on a GPU (sparseinfer::device_costs)");

    // A model's weights on a GPU for one placement (sparseinfer::DeviceModel), shared by the
    // sessions of a sparseinfer.Model: the CUDA plugin at cuda_plugin (sparseinfer._cuda found
    // and loaded it), device cuda_device; the last n_gpu_layers layers (-1: all) and, for a
    // PowerInfer file, per layer the ascending ids of its hot neurons (None: all).
    py::class_<DeviceModel, std::shared_ptr<DeviceModel>>(m, "DeviceModel")
        .def(py::init([](std::shared_ptr<Model> model, const std::string& cuda_plugin, int cuda_device,
                         int64_t n_gpu_layers, std::optional<std::vector<HotIds>> hot_neurons) {
                 if (cuda_device < 0) {
                     throw ArgumentError("cuda_device must be >= 0, got " + std::to_string(cuda_device));
                 }
                 GpuPlacement placement;
                 placement.n_gpu_layers = n_gpu_layers;
                 if (hot_neurons) {
                     for (const HotIds& ids : *hot_neurons) {
                         placement.hot_neurons.emplace_back(ids.data(), ids.data() + ids.size());
                     }
                 }
                 py::gil_scoped_release release;
                 return std::const_pointer_cast<DeviceModel>(
                     DeviceModel::upload(std::move(model), cuda_plugin, cuda_device, placement));
             }),
             py::arg("model"), py::arg("cuda_plugin"), py::arg("cuda_device") = 0,
             py::arg("n_gpu_layers") = -1, py::arg("hot_neurons") = py::none())
        .def_property_readonly("weight_bytes", &DeviceModel::weight_bytes)
        .def_property_readonly("first_gpu_layer", &DeviceModel::first_gpu_layer)
        .def("hot_counts", &DeviceModel::hot_counts);

    py::class_<Session>(m, "Session")
        // device: the model's weights on a GPU (DeviceModel of this model), or None: the CPU.
        .def(py::init([](std::shared_ptr<Model> model, int64_t n_ctx, int n_threads, bool sparse,
                         std::shared_ptr<DeviceModel> device) {
                 SessionOptions options;
                 options.n_ctx = n_ctx;
                 options.n_threads = n_threads;
                 options.sparse = sparse;
                 options.device = std::move(device);
                 py::gil_scoped_release release;
                 return new Session(std::move(model), options);
             }),
             py::arg("model"), py::arg("n_ctx"), py::arg("n_threads"), py::arg("sparse") = false,
             py::arg("device") = py::none())
        .def_property_readonly("on_gpu", &Session::on_gpu)
        .def_property_readonly("sparse", &Session::sparse)
        .def("active_fractions", &Session::active_fractions)
        .def("reset_stats", &Session::reset_stats)
        // Neuron firing counts for placement profiles (sparseinfer.profile).
        .def("set_neuron_counting", &Session::set_neuron_counting, py::arg("on"))
        .def_property_readonly("neuron_counting", &Session::neuron_counting)
        .def("neuron_counts",
             [](const Session& self) {
                 py::array_t<int64_t> out({self.model().n_layer(), self.model().n_ff()});
                 const std::vector<int64_t>& counts = self.neuron_counts();
                 if (counts.empty()) {
                     std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0);
                 } else {
                     std::memcpy(out.mutable_data(), counts.data(), counts.size() * sizeof(int64_t));
                 }
                 return out;
             })
        .def_property_readonly("neuron_count_tokens", &Session::neuron_count_tokens)
        .def("reset_neuron_counts", &Session::reset_neuron_counts)
        // The predictor against the neurons that fire (sparseinfer's quality reports).
        .def("set_predictor_audit", &Session::set_predictor_audit, py::arg("on"))
        .def_property_readonly("predictor_auditing", &Session::predictor_auditing)
        .def("predictor_audit",
             [](const Session& self) {
                 const std::vector<std::array<int64_t, 3>> audit = self.predictor_audit();
                 py::array_t<int64_t> out({self.model().n_layer(), int64_t{3}});
                 std::fill(out.mutable_data(), out.mutable_data() + out.size(), 0);
                 for (size_t il = 0; il < audit.size(); ++il) {
                     std::memcpy(out.mutable_data(static_cast<py::ssize_t>(il)), audit[il].data(), 3 * sizeof(int64_t));
                 }
                 return out;
             })
        .def("reset_predictor_audit", &Session::reset_predictor_audit)
        .def_property_readonly("n_ctx", &Session::n_ctx)
        .def_property_readonly("n_past", &Session::n_past)
        .def("eval",
             [](Session& self, std::vector<int32_t> tokens, bool all_logits) {
                 py::gil_scoped_release release;
                 self.eval(tokens, all_logits);
             },
             py::arg("tokens"), py::arg("all_logits") = false)
        .def("logits",
             [](const Session& self) {
                 const int64_t rows = self.logit_rows(), cols = self.model().n_vocab();
                 py::array_t<float> out({rows, cols});
                 if (rows > 0) {
                     std::memcpy(out.mutable_data(), self.logits(), static_cast<size_t>(rows * cols) * sizeof(float));
                 }
                 return out;
             })
        .def("sample",
             [](Session& self, Sampler& sampler) {
                 if (self.logit_rows() == 0) throw ArgumentError("sample before any eval");
                 const int64_t n_vocab = self.model().n_vocab();
                 const float* last = self.logits() + (self.logit_rows() - 1) * n_vocab;
                 py::gil_scoped_release release;
                 return sampler.sample(last, static_cast<int32_t>(n_vocab));
             },
             py::arg("sampler"))
        .def("request_cancel", &Session::cancel)
        .def("clear_cancel", &Session::clear_cancel)
        .def_property_readonly("cancel_requested", &Session::cancelled)
        .def("reset", &Session::reset)
        .def("truncate", &Session::truncate, py::arg("n_past"));
}

}  // namespace sparseinfer::python
