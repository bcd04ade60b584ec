// _core.Tokenizer and _core.StreamDecoder over sparseinfer::Tokenizer / StreamDecoder. The
// Python class holds std::shared_ptr<Tokenizer> (the API hands out shared_ptr<const
// Tokenizer>; Python only reaches const methods, so the bindings return
// std::const_pointer_cast of it and pybind11 gives the same Python class).
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bindings.h"
#include "sparseinfer/sparseinfer.h"

namespace py = pybind11;

namespace sparseinfer::python {

namespace {

// Texts at least this long are encoded with the GIL released; shorter ones are cheaper
// than the release.
constexpr size_t kReleaseGilFromBytes = 4096;

std::shared_ptr<Tokenizer> open_tokenizer(const std::string& path) {
    std::shared_ptr<const Tokenizer> tokenizer;
    {
        py::gil_scoped_release unlocked;
        tokenizer = Tokenizer::open(path);
    }
    return std::const_pointer_cast<Tokenizer>(tokenizer);
}

int32_t to_token_id(const Tokenizer& tokenizer, int64_t id) {
    if (id < 0 || id >= tokenizer.n_vocab()) {
        throw ArgumentError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(tokenizer.n_vocab()) + ")");
    }
    return static_cast<int32_t>(id);
}

std::vector<int32_t> encode(const Tokenizer& tokenizer, const py::object& text, bool add_bos,
                            bool parse_special) {
    std::string_view utf8;
    if (py::isinstance<py::bytes>(text)) {
        char* data = nullptr;
        Py_ssize_t size = 0;
        if (PyBytes_AsStringAndSize(text.ptr(), &data, &size) != 0) throw py::error_already_set();
        utf8 = std::string_view(data, static_cast<size_t>(size));
    } else if (py::isinstance<py::str>(text)) {
        Py_ssize_t size = 0;
        const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);  // cached by the str
        if (data == nullptr) throw py::error_already_set();
        utf8 = std::string_view(data, static_cast<size_t>(size));
    } else {
        throw py::type_error("Tokenizer.encode: text must be str or bytes");
    }
    // `text` (immutable, referenced by the caller) keeps the buffer alive without the GIL.
    if (utf8.size() >= kReleaseGilFromBytes) {
        py::gil_scoped_release unlocked;
        return tokenizer.encode(utf8, add_bos, parse_special);
    }
    return tokenizer.encode(utf8, add_bos, parse_special);
}

py::bytes token_to_bytes(const Tokenizer& tokenizer, int64_t id, bool render_special) {
    return py::bytes(tokenizer.token_to_bytes(to_token_id(tokenizer, id), render_special));
}

py::bytes decode(const Tokenizer& tokenizer, const std::vector<int64_t>& ids, bool render_special) {
    std::vector<int32_t> checked;
    checked.reserve(ids.size());
    for (int64_t id : ids) checked.push_back(to_token_id(tokenizer, id));
    return py::bytes(tokenizer.decode(checked, render_special));
}

// The decoder only ever emits whole UTF-8 characters, so this cannot fail.
py::str to_str(const std::string& utf8) {
    return py::reinterpret_steal<py::str>(
        PyUnicode_DecodeUTF8(utf8.data(), static_cast<Py_ssize_t>(utf8.size()), "replace"));
}

}  // namespace

void bind_tokenizer(py::module_& m) {
    py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(
        m, "Tokenizer", "The vocabulary of a GGUF file (SentencePiece or GPT-2 BPE), without weights.")
        .def(py::init(&open_tokenizer), py::arg("path"))
        .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
        .def_property_readonly("bos_id", &Tokenizer::bos_id)
        .def_property_readonly("eos_id", &Tokenizer::eos_id)
        .def_property_readonly("add_bos", &Tokenizer::add_bos)
        .def("encode", &encode, py::arg("text"), py::arg("add_bos") = true,
             py::arg("parse_special") = false,
             "Token ids of text (str, or bytes that need not be valid UTF-8). add_bos prepends "
             "BOS when the vocabulary has one; parse_special turns the text of control tokens "
             "into those tokens.")
        .def("token_to_bytes", &token_to_bytes, py::arg("token"), py::arg("render_special") = false)
        .def("decode", &decode, py::arg("tokens"), py::arg("render_special") = false)
        .def("is_end_of_generation",
             [](const Tokenizer& t, int64_t id) {
                 return t.is_end_of_generation(to_token_id(t, id));
             },
             py::arg("token"));

    py::class_<StreamDecoder>(m, "StreamDecoder",
                              "Token ids to text, holding back the bytes of an unfinished character.")
        .def(py::init([](std::shared_ptr<Tokenizer> tokenizer) {
                 return StreamDecoder(std::move(tokenizer));
             }),
             py::arg("tokenizer"))
        .def("feed",
             [](StreamDecoder& decoder, int64_t id) {
                 // The tokenizer rejects ids outside the vocabulary; here only int32 range.
                 if (id < INT32_MIN || id > INT32_MAX) {
                     throw ArgumentError("token id " + std::to_string(id) + " is outside the vocabulary");
                 }
                 return to_str(decoder.feed(static_cast<int32_t>(id)));
             },
             py::arg("token"), "The complete characters this token finishes (may be '').")
        .def("flush", [](StreamDecoder& decoder) { return to_str(decoder.flush()); },
             "Whatever is held back, an unfinished character as U+FFFD.");
}

}  // namespace sparseinfer::python
