// libFuzzer target: arbitrary bytes as a GGUF file. Reading the file, loading it as a model
// and, for small models, one forward step must either succeed or throw si::Error — never
// crash, hang or touch memory out of bounds (the build adds ASan and UBSan).
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/errors.h"
#include "gguf/gguf_file.h"
#include "model/model.h"
#include "session/session.h"

namespace {

// The engine opens files by path; an in-memory file keeps each run off the disk.
std::string memory_file(const uint8_t* data, size_t size, int* fd_out) {
    int fd = memfd_create("gguf-fuzz", 0);
    if (fd < 0) __builtin_trap();
    size_t written = 0;
    while (written < size) {
        ssize_t n = write(fd, data + written, size - written);
        if (n <= 0) __builtin_trap();
        written += static_cast<size_t>(n);
    }
    *fd_out = fd;
    return "/proc/self/fd/" + std::to_string(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int fd = -1;
    const std::string path = memory_file(data, size, &fd);
    try {
        si::GgufFile::open(path);
        auto model = si::Model::load(path);
        const si::ModelConfig& c = model->config();
        // A forward step only for models small enough to keep the fuzzer fast.
        if (c.n_embd * c.n_layer <= 4096 && c.n_ff <= 1024 && c.n_vocab <= 4096) {
            si::Session session(model, 4, 1, c.has_predictors());
            session.eval({0}, false);
        }
    } catch (const si::Error&) {
        // A clean refusal is the expected outcome for most inputs.
    }
    close(fd);
    return 0;
}
