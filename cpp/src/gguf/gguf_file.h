// GGUF reader: memory-maps a file, parses the header, metadata and tensor index, and checks
// every count, length, offset and size against the file before anything is used.
//
// Format facts (GGUF spec, versions 2 and 3): little-endian; magic "GGUF" (PowerInfer writes
// "PWRI" and is otherwise identical); u32 version; u64 tensor count; u64 metadata count;
// metadata as (string key, u32 type, value); tensor infos as (string name, u32 n_dims,
// u64 ne[n_dims], u32 ggml type, u64 offset); then padding to general.alignment (default 32)
// and the tensor data, each tensor's offset relative to the start of that data section.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace si {

enum class GgufType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

const char* gguf_type_name(GgufType type);

// One metadata value. Strings and array data point into the mapping, which outlives the value.
struct GgufValue {
    GgufType type = GgufType::UINT8;
    // Scalars: integers in i64 or u64 (by signedness), floats in f64, bool in u64.
    int64_t i64 = 0;
    uint64_t u64 = 0;
    double f64 = 0.0;
    std::string_view str;  // STRING

    // ARRAY: element type and count; fixed-size elements are raw little-endian bytes at
    // `data`; strings and nested arrays are decoded into `items`.
    GgufType elem_type = GgufType::UINT8;
    uint64_t count = 0;
    const uint8_t* data = nullptr;
    std::vector<GgufValue> items;

    bool is_integer() const;
    bool is_number() const;  // integer, float or bool
    // Converters throw FormatError naming `key` when the value has the wrong type or range.
    int64_t as_int(std::string_view key) const;
    double as_float(std::string_view key) const;
    bool as_bool(std::string_view key) const;
    std::string_view as_string(std::string_view key) const;
    // Element i of an array of fixed-size elements (numbers, bools), as a scalar value.
    GgufValue element(uint64_t i) const;
    // Arrays of numbers / strings, converted element by element.
    std::vector<float> as_float_array(std::string_view key) const;
    std::vector<int32_t> as_int_array(std::string_view key) const;
    std::vector<std::string_view> as_string_array(std::string_view key) const;
};

struct GgufTensor {
    std::string name;
    uint32_t ggml_type = 0;
    std::vector<int64_t> shape;  // ggml order: shape[0] is the contiguous row length
    uint64_t offset = 0;         // absolute offset in the file
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr;

    int64_t n_elements() const;
    int64_t rows() const;  // product of shape[1..]
};

class GgufFile {
public:
    // Maps and validates `path`. Throws FormatError (or OSError-style si::Error for I/O)
    // with a message that starts with the path.
    static std::shared_ptr<GgufFile> open(const std::string& path);
    ~GgufFile();
    GgufFile(const GgufFile&) = delete;
    GgufFile& operator=(const GgufFile&) = delete;

    const std::string& path() const { return path_; }
    uint32_t version() const { return version_; }
    bool is_powerinfer() const { return powerinfer_magic_; }
    uint64_t file_size() const { return size_; }
    uint64_t alignment() const { return alignment_; }

    // Metadata in file order.
    const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
    const GgufValue* find(std::string_view key) const;
    // Typed lookups: the default when the key is absent, FormatError when its type is wrong.
    int64_t get_int(std::string_view key, int64_t fallback) const;
    double get_float(std::string_view key, double fallback) const;
    bool get_bool(std::string_view key, bool fallback) const;
    std::string get_string(std::string_view key, std::string_view fallback) const;

    const std::vector<GgufTensor>& tensors() const { return tensors_; }
    const GgufTensor* find_tensor(std::string_view name) const;

    // Tells the OS that this process no longer reads the mapped bytes [p, p + bytes) (the
    // source of a copy the model made at load): the whole pages in that range leave the
    // process's resident set, and are read from the page cache or the file again if touched.
    // A range that is not inside the mapping is left alone. POSIX only (madvise); elsewhere
    // the OS trims the working set itself when memory runs short.
    void release_pages(const void* p, uint64_t bytes) const;

    // "<path>: <what>" — the prefix every error about this file carries.
    std::string describe(std::string_view what) const;

private:
    GgufFile() = default;
    void parse();

    std::string path_;
    const uint8_t* base_ = nullptr;
    uint64_t size_ = 0;
    void* mapping_handle_ = nullptr;  // platform-specific mapping bookkeeping
    uint32_t version_ = 0;
    bool powerinfer_magic_ = false;
    uint64_t alignment_ = 32;
    std::vector<std::pair<std::string, GgufValue>> metadata_;
    std::unordered_map<std::string, size_t> metadata_index_;
    std::vector<GgufTensor> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace si
