#include "gguf/gguf_file.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/checked_math.h"
#include "common/errors.h"
#include "tensor/dtype.h"

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace si {

namespace {

// Bounds that no real file comes near; they stop hostile counts before any allocation.
constexpr uint64_t kMaxTensors = 1u << 20;
constexpr uint64_t kMaxMetadata = 1u << 20;
constexpr uint32_t kMaxDims = 4;            // GGML_MAX_DIMS
constexpr uint32_t kMaxArrayDepth = 8;      // nested arrays
constexpr uint64_t kMaxNameLength = 1 << 16;

size_t fixed_size(GgufType type) {
    switch (type) {
        case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
        case GgufType::UINT16: case GgufType::INT16: return 2;
        case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
        case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
        default: return 0;  // STRING, ARRAY, unknown
    }
}

template <typename T>
T load_le(const uint8_t* p) {
    // GGUF is little-endian and so is every platform we build for; memcpy avoids
    // unaligned-access undefined behaviour.
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

// Reads a fixed-size element of an array or scalar into the value's scalar fields.
void decode_scalar(GgufType type, const uint8_t* p, GgufValue* v) {
    v->type = type;
    switch (type) {
        case GgufType::UINT8: v->u64 = load_le<uint8_t>(p); break;
        case GgufType::INT8: v->i64 = load_le<int8_t>(p); break;
        case GgufType::UINT16: v->u64 = load_le<uint16_t>(p); break;
        case GgufType::INT16: v->i64 = load_le<int16_t>(p); break;
        case GgufType::UINT32: v->u64 = load_le<uint32_t>(p); break;
        case GgufType::INT32: v->i64 = load_le<int32_t>(p); break;
        case GgufType::UINT64: v->u64 = load_le<uint64_t>(p); break;
        case GgufType::INT64: v->i64 = load_le<int64_t>(p); break;
        case GgufType::FLOAT32: v->f64 = load_le<float>(p); break;
        case GgufType::FLOAT64: v->f64 = load_le<double>(p); break;
        case GgufType::BOOL: v->u64 = load_le<uint8_t>(p) != 0; break;
        default: break;
    }
}

bool is_signed(GgufType t) {
    return t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 ||
           t == GgufType::INT64;
}

// A cursor over the mapped bytes; every read is checked against the end of the file.
class Reader {
public:
    Reader(const GgufFile& file, const uint8_t* base, uint64_t size)
        : file_(file), base_(base), size_(size) {}

    uint64_t pos() const { return pos_; }

    void need(uint64_t n, const char* what) const {
        if (n > size_ - pos_) {
            throw FormatError(file_.describe(std::string("truncated file: ") + what +
                                             " at offset " + std::to_string(pos_) + " needs " +
                                             std::to_string(n) + " bytes, " +
                                             std::to_string(size_ - pos_) + " left"));
        }
    }
    const uint8_t* take(uint64_t n, const char* what) {
        need(n, what);
        const uint8_t* p = base_ + pos_;
        pos_ += n;
        return p;
    }
    template <typename T>
    T read(const char* what) {
        return load_le<T>(take(sizeof(T), what));
    }
    std::string_view read_string(const char* what) {
        uint64_t len = read<uint64_t>(what);
        need(len, what);
        const uint8_t* p = take(len, what);
        return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
    }

    GgufValue read_value(GgufType type, const std::string& key, uint32_t depth) {
        GgufValue v;
        v.type = type;
        if (size_t n = fixed_size(type)) {
            decode_scalar(type, take(n, "metadata value"), &v);
            return v;
        }
        if (type == GgufType::STRING) {
            v.str = read_string("metadata string");
            return v;
        }
        if (type != GgufType::ARRAY) {
            throw FormatError(file_.describe("metadata key '" + key + "' has unknown value type " +
                                             std::to_string(static_cast<uint32_t>(type))));
        }
        if (depth >= kMaxArrayDepth) {
            throw FormatError(file_.describe("metadata key '" + key + "' nests arrays too deeply"));
        }
        v.elem_type = static_cast<GgufType>(read<uint32_t>("array element type"));
        v.count = read<uint64_t>("array length");
        if (size_t n = fixed_size(v.elem_type)) {
            uint64_t bytes = 0;
            if (!checked_mul(v.count, n, &bytes)) {
                throw FormatError(file_.describe("metadata key '" + key + "' array length " +
                                                 std::to_string(v.count) + " overflows"));
            }
            v.data = take(bytes, "array data");
            return v;
        }
        if (v.elem_type != GgufType::STRING && v.elem_type != GgufType::ARRAY) {
            throw FormatError(file_.describe(
                "metadata key '" + key + "' has unknown array element type " +
                std::to_string(static_cast<uint32_t>(v.elem_type))));
        }
        // Each string or nested array takes at least 8 bytes, which bounds a hostile count
        // by the bytes left before anything is reserved.
        if (v.count > (size_ - pos_) / 8) {
            throw FormatError(file_.describe("metadata key '" + key + "' array length " +
                                             std::to_string(v.count) + " exceeds the file"));
        }
        v.items.reserve(static_cast<size_t>(v.count));
        for (uint64_t i = 0; i < v.count; ++i) v.items.push_back(read_value(v.elem_type, key, depth + 1));
        return v;
    }

    void seek(uint64_t pos) { pos_ = pos; }

private:
    const GgufFile& file_;
    const uint8_t* base_;
    uint64_t size_;
    uint64_t pos_ = 0;
};

}  // namespace

const char* gguf_type_name(GgufType type) {
    static const char* const names[] = {"uint8", "int8", "uint16", "int16", "uint32",
                                        "int32", "float32", "bool", "string", "array",
                                        "uint64", "int64", "float64"};
    auto i = static_cast<uint32_t>(type);
    return i < sizeof(names) / sizeof(names[0]) ? names[i] : "unknown";
}

bool GgufValue::is_integer() const {
    switch (type) {
        case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
        case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
            return true;
        default:
            return false;
    }
}

bool GgufValue::is_number() const {
    return is_integer() || type == GgufType::FLOAT32 || type == GgufType::FLOAT64 ||
           type == GgufType::BOOL;
}

int64_t GgufValue::as_int(std::string_view key) const {
    if (!is_integer() && type != GgufType::BOOL) {
        throw FormatError("metadata key '" + std::string(key) + "' should be an integer, not " +
                          gguf_type_name(type));
    }
    if (is_signed(type)) return i64;
    if (u64 > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw FormatError("metadata key '" + std::string(key) + "' is out of range");
    }
    return static_cast<int64_t>(u64);
}

double GgufValue::as_float(std::string_view key) const {
    if (type == GgufType::FLOAT32 || type == GgufType::FLOAT64) return f64;
    if (is_integer()) return is_signed(type) ? static_cast<double>(i64) : static_cast<double>(u64);
    throw FormatError("metadata key '" + std::string(key) + "' should be a number, not " +
                      gguf_type_name(type));
}

bool GgufValue::as_bool(std::string_view key) const {
    if (type == GgufType::BOOL) return u64 != 0;
    throw FormatError("metadata key '" + std::string(key) + "' should be a bool, not " +
                      gguf_type_name(type));
}

std::string_view GgufValue::as_string(std::string_view key) const {
    if (type == GgufType::STRING) return str;
    throw FormatError("metadata key '" + std::string(key) + "' should be a string, not " +
                      gguf_type_name(type));
}

GgufValue GgufValue::element(uint64_t i) const {
    GgufValue v;
    if (type == GgufType::ARRAY && fixed_size(elem_type) != 0 && i < count) {
        decode_scalar(elem_type, data + i * fixed_size(elem_type), &v);
    }
    return v;
}

namespace {


void require_array(const GgufValue& v, std::string_view key, bool numeric) {
    bool ok = v.type == GgufType::ARRAY &&
              (numeric ? fixed_size(v.elem_type) != 0 : v.elem_type == GgufType::STRING);
    if (!ok) {
        throw FormatError("metadata key '" + std::string(key) + "' should be an array of " +
                          (numeric ? "numbers" : "strings"));
    }
}

}  // namespace

std::vector<float> GgufValue::as_float_array(std::string_view key) const {
    require_array(*this, key, true);
    std::vector<float> out(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
        out[i] = static_cast<float>(element(i).as_float(key));
    }
    return out;
}

std::vector<int32_t> GgufValue::as_int_array(std::string_view key) const {
    require_array(*this, key, true);
    std::vector<int32_t> out(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
        int64_t x = element(i).as_int(key);
        if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
            throw FormatError("metadata key '" + std::string(key) + "' has an element out of range");
        }
        out[i] = static_cast<int32_t>(x);
    }
    return out;
}

std::vector<std::string_view> GgufValue::as_string_array(std::string_view key) const {
    require_array(*this, key, false);
    std::vector<std::string_view> out;
    out.reserve(items.size());
    for (const GgufValue& item : items) out.push_back(item.str);
    return out;
}

int64_t GgufTensor::n_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // bounded when the tensor was validated
    return n;
}

int64_t GgufTensor::rows() const { return shape.empty() ? 1 : n_elements() / shape[0]; }

std::string GgufFile::describe(std::string_view what) const {
    return path_ + ": " + std::string(what);
}

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
    std::shared_ptr<GgufFile> file(new GgufFile());
    file->path_ = path;
#if defined(_WIN32)
    HANDLE h = CreateFileA(path.c_str(), GENERIC_READ, FILE_SHARE_READ, nullptr, OPEN_EXISTING,
                           FILE_ATTRIBUTE_NORMAL, nullptr);
    if (h == INVALID_HANDLE_VALUE) throw IoError(path + ": cannot open file");
    LARGE_INTEGER size;
    if (!GetFileSizeEx(h, &size)) {
        CloseHandle(h);
        throw IoError(path + ": cannot read the file size");
    }
    file->size_ = static_cast<uint64_t>(size.QuadPart);
    if (file->size_ > 0) {
        HANDLE m = CreateFileMappingA(h, nullptr, PAGE_READONLY, 0, 0, nullptr);
        CloseHandle(h);
        if (!m) throw IoError(path + ": cannot map file");
        void* p = MapViewOfFile(m, FILE_MAP_READ, 0, 0, 0);
        CloseHandle(m);
        if (!p) throw IoError(path + ": cannot map file");
        file->base_ = static_cast<const uint8_t*>(p);
    } else {
        CloseHandle(h);
    }
#else
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(path + ": cannot open file: " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw IoError(path + ": not a regular file");
    }
    file->size_ = static_cast<uint64_t>(st.st_size);
    if (file->size_ > 0) {
        void* p = mmap(nullptr, file->size_, PROT_READ, MAP_SHARED, fd, 0);
        ::close(fd);
        if (p == MAP_FAILED) throw IoError(path + ": cannot map file: " + std::strerror(errno));
        file->base_ = static_cast<const uint8_t*>(p);
    } else {
        ::close(fd);
    }
#endif
    file->parse();
    return file;
}

void GgufFile::release_pages(const void* p, uint64_t bytes) const {
#if defined(_WIN32)
    (void)p;
    (void)bytes;
#else
    const uintptr_t begin = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(base_);
    if (base_ == nullptr || begin < base || bytes > size_ || begin - base > size_ - bytes) return;
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t first = (begin + page - 1) / page * page, last = (begin + bytes) / page * page;
    if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#endif
}

GgufFile::~GgufFile() {
    if (!base_) return;
#if defined(_WIN32)
    UnmapViewOfFile(base_);
#else
    munmap(const_cast<uint8_t*>(base_), size_);
#endif
}

void GgufFile::parse() {
    Reader r(*this, base_, size_);
    const uint8_t* magic = r.take(4, "magic");
    if (std::memcmp(magic, "GGUF", 4) == 0) {
        powerinfer_magic_ = false;
    } else if (std::memcmp(magic, "PWRI", 4) == 0) {
        powerinfer_magic_ = true;  // PowerInfer's sparse files: GGUF layout, own magic
    } else {
        throw FormatError(describe("not a GGUF file (bad magic)"));
    }
    version_ = r.read<uint32_t>("version");
    if (version_ != 2 && version_ != 3) {
        throw FormatError(describe("unsupported GGUF version " + std::to_string(version_) +
                                   " (2 and 3 are supported)"));
    }
    uint64_t n_tensors = r.read<uint64_t>("tensor count");
    uint64_t n_metadata = r.read<uint64_t>("metadata count");
    if (n_tensors > kMaxTensors) {
        throw FormatError(describe("absurd tensor count " + std::to_string(n_tensors)));
    }
    if (n_metadata > kMaxMetadata) {
        throw FormatError(describe("absurd metadata count " + std::to_string(n_metadata)));
    }

    metadata_.reserve(static_cast<size_t>(n_metadata));
    for (uint64_t i = 0; i < n_metadata; ++i) {
        std::string key(r.read_string("metadata key"));
        if (key.size() > kMaxNameLength) throw FormatError(describe("metadata key too long"));
        auto type = static_cast<GgufType>(r.read<uint32_t>("metadata value type"));
        GgufValue value = r.read_value(type, key, 0);
        if (metadata_index_.count(key)) {
            throw FormatError(describe("duplicate metadata key '" + key + "'"));
        }
        metadata_index_.emplace(key, metadata_.size());
        metadata_.emplace_back(std::move(key), std::move(value));
    }

    if (const GgufValue* a = find("general.alignment")) {
        if (!a->is_integer()) throw FormatError(describe("general.alignment is not an integer"));
        const int64_t align = get_int("general.alignment", 32);
        if (align <= 0 || (align & (align - 1)) != 0 || align > (1 << 20)) {
            throw FormatError(describe("general.alignment " + std::to_string(align) +
                                       " is not a power of two"));
        }
        alignment_ = static_cast<uint64_t>(align);
    }

    tensors_.reserve(static_cast<size_t>(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensor t;
        t.name = std::string(r.read_string("tensor name"));
        if (t.name.size() > kMaxNameLength) throw FormatError(describe("tensor name too long"));
        uint32_t n_dims = r.read<uint32_t>("tensor dimension count");
        if (n_dims == 0 || n_dims > kMaxDims) {
            throw FormatError(describe("tensor '" + t.name + "' has " + std::to_string(n_dims) +
                                       " dimensions (1 to 4 allowed)"));
        }
        for (uint32_t d = 0; d < n_dims; ++d) {
            uint64_t ne = r.read<uint64_t>("tensor shape");
            if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
                throw FormatError(describe("tensor '" + t.name + "' has a bad dimension " +
                                           std::to_string(ne)));
            }
            t.shape.push_back(static_cast<int64_t>(ne));
        }
        t.ggml_type = r.read<uint32_t>("tensor type");
        t.offset = r.read<uint64_t>("tensor offset");
        if (tensor_index_.count(t.name)) {
            throw FormatError(describe("duplicate tensor '" + t.name + "'"));
        }
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment.
    uint64_t data_start = 0;
    if (!checked_add(r.pos(), alignment_ - 1, &data_start)) {
        throw FormatError(describe("data offset overflows"));
    }
    data_start -= data_start % alignment_;
    if (n_tensors > 0 && data_start > size_) {
        throw FormatError(describe("truncated file: no room for the tensor data"));
    }

    for (GgufTensor& t : tensors_) {
        // Any type whose storage is known can be read (and described); whether it runs is the
        // model's question (model.cpp names the tensor it cannot run).
        int64_t block_elems = 0;
        uint64_t block_bytes = 0;
        if (!storage_block(t.ggml_type, &block_elems, &block_bytes)) {
            throw UnsupportedError(describe("tensor '" + t.name + "' has " + dtype_name(t.ggml_type) +
                                            ", which this version does not know"));
        }
        if (t.shape[0] % block_elems != 0) {
            throw FormatError(describe("tensor '" + t.name + "' row length " +
                                       std::to_string(t.shape[0]) + " is not a multiple of " +
                                       std::to_string(block_elems) + " for type " + dtype_name(t.ggml_type)));
        }
        uint64_t n_elements = 1;
        for (int64_t d : t.shape) {
            if (!checked_mul(n_elements, static_cast<uint64_t>(d), &n_elements)) {
                throw FormatError(describe("tensor '" + t.name + "' size overflows"));
            }
        }
        uint64_t blocks = n_elements / static_cast<uint64_t>(block_elems);
        if (!checked_mul(blocks, block_bytes, &t.nbytes)) {
            throw FormatError(describe("tensor '" + t.name + "' size overflows"));
        }
        if (t.offset % alignment_ != 0) {
            throw FormatError(describe("tensor '" + t.name + "' offset " + std::to_string(t.offset) +
                                       " is not aligned to " + std::to_string(alignment_)));
        }
        uint64_t begin = 0, end = 0;
        if (!checked_add(data_start, t.offset, &begin) || !checked_add(begin, t.nbytes, &end) ||
            end > size_) {
            throw FormatError(describe("tensor '" + t.name + "' data (offset " +
                                       std::to_string(t.offset) + ", " + std::to_string(t.nbytes) +
                                       " bytes) lies past the end of the file"));
        }
        t.offset = begin;
        t.data = base_ + begin;
    }

    // Tensors must not share bytes: a file whose tensors overlap is corrupt or crafted.
    std::vector<const GgufTensor*> by_offset;
    by_offset.reserve(tensors_.size());
    for (const GgufTensor& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const GgufTensor& prev = *by_offset[i - 1];
        if (prev.offset + prev.nbytes > by_offset[i]->offset) {
            throw FormatError(describe("tensors '" + prev.name + "' and '" + by_offset[i]->name +
                                       "' overlap"));
        }
    }
}

const GgufValue* GgufFile::find(std::string_view key) const {
    auto it = metadata_index_.find(std::string(key));
    return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    try {
        return v->as_int(key);
    } catch (const FormatError& e) {
        throw FormatError(describe(e.what()));
    }
}

double GgufFile::get_float(std::string_view key, double fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    try {
        return v->as_float(key);
    } catch (const FormatError& e) {
        throw FormatError(describe(e.what()));
    }
}

bool GgufFile::get_bool(std::string_view key, bool fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    try {
        return v->as_bool(key);
    } catch (const FormatError& e) {
        throw FormatError(describe(e.what()));
    }
}

std::string GgufFile::get_string(std::string_view key, std::string_view fallback) const {
    const GgufValue* v = find(key);
    if (!v) return std::string(fallback);
    try {
        return std::string(v->as_string(key));
    } catch (const FormatError& e) {
        throw FormatError(describe(e.what()));
    }
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
    auto it = tensor_index_.find(std::string(name));
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace si
