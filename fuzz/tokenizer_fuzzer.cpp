// libFuzzer target: arbitrary bytes as text for the tokenizer of the GGUF file named by
// SPARSEINFER_FUZZ_VOCAB. Every id must be in the vocabulary, and for a vocabulary that can
// spell every byte (SPM with byte fallback; BPE with all 256 byte symbols), text that is
// valid UTF-8 must come back unchanged from decode(encode(text)) without special parsing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer.h"

namespace {

std::shared_ptr<const si::Tokenizer> load_tokenizer() {
    const char* path = std::getenv("SPARSEINFER_FUZZ_VOCAB");
    if (!path) __builtin_trap();  // fuzz/run.sh sets it
    auto file = si::GgufFile::open(path);
    return si::Tokenizer::create(si::VocabData::from_gguf(*file));
}

bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (len == 0 || i + len > s.size()) return false;
        uint32_t cp = len == 1 ? c : c & (0x7f >> len);
        for (size_t k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3f);
        }
        const uint32_t min_for_len[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_for_len[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

}  // namespace

// Whether every single byte encodes to something (else BPE drops it, as llama.cpp does).
bool spells_every_byte(const si::Tokenizer& tokenizer) {
    for (int b = 0; b < 256; ++b) {
        const std::string one(1, static_cast<char>(b));
        if (tokenizer.encode(one, false, false).empty()) return false;
    }
    return true;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::shared_ptr<const si::Tokenizer> tokenizer = load_tokenizer();
    static const bool round_trips = spells_every_byte(*tokenizer);
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    for (bool special : {false, true}) {
        const auto ids = tokenizer->encode(text, false, special);
        for (int32_t id : ids) {
            if (id < 0 || id >= tokenizer->n_vocab()) __builtin_trap();
        }
        if (!special && round_trips && valid_utf8(text) && tokenizer->decode(ids, false) != text) {
            __builtin_trap();
        }
    }
    return 0;
}
