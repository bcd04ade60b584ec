// Tokenizers for GGUF vocabularies: SentencePiece-style ("llama") and GPT-2 byte-level BPE
// ("gpt2"), selected by tokenizer.ggml.model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace si {

class GgufFile;

// Token types as stored in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
    UNDEFINED = 0, NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
};

// Everything a tokenizer needs, read from GGUF metadata (or built by a test).
struct VocabData {
    std::string model;  // "llama" (SPM) or "gpt2" (BPE)
    std::string pre;    // tokenizer.ggml.pre, selects the BPE pre-tokenizer regex
    std::vector<std::string> tokens;
    std::vector<float> scores;        // may be empty (BPE)
    std::vector<int32_t> token_types; // may be empty: all NORMAL
    std::vector<std::string> merges;  // BPE only: "left right"
    int32_t bos_id = -1, eos_id = -1, eot_id = -1, eom_id = -1, unk_id = -1, pad_id = -1;
    bool add_bos = false, add_eos = false, add_space_prefix = true;

    // Reads tokenizer.ggml.* from a GGUF file; FormatError names the file on bad data.
    static VocabData from_gguf(const GgufFile& file);
};

class Tokenizer {
public:
    static std::shared_ptr<const Tokenizer> create(VocabData vocab);
    virtual ~Tokenizer() = default;

    // Text (UTF-8; invalid bytes are tokenised as bytes, never rejected) to token ids.
    // add_bos prepends BOS when the vocabulary has one; parse_special recognises the text of
    // control / user-defined tokens (e.g. "<|im_start|>") as those tokens.
    virtual std::vector<int32_t> encode(std::string_view text, bool add_bos,
                                        bool parse_special) const = 0;
    // The bytes one token stands for when detokenised (byte tokens become their byte, SPM's
    // U+2581 becomes a space, GPT-2 byte symbols are mapped back). Control tokens give ""
    // unless render_special. Throws ArgumentError for an id out of range.
    virtual std::string token_to_bytes(int32_t id, bool render_special) const = 0;
    // Whole-sequence detokenisation (handles SPM's leading-space removal after BOS).
    virtual std::string decode(const std::vector<int32_t>& ids, bool render_special) const = 0;

    const VocabData& vocab() const { return vocab_; }
    int32_t n_vocab() const { return static_cast<int32_t>(vocab_.tokens.size()); }
    // End of generation: EOS, EOT, EOM and tokens the vocabulary marks as such.
    bool is_end_of_generation(int32_t id) const;

protected:
    explicit Tokenizer(VocabData vocab) : vocab_(std::move(vocab)) {}
    VocabData vocab_;
    std::vector<int32_t> end_of_generation_ids_;
};

// Turns a stream of token ids into text without ever emitting part of a UTF-8 character:
// bytes of an incomplete character are held back until it completes (or flush()).
class StreamDecoder {
public:
    explicit StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer);
    std::string feed(int32_t id);  // complete UTF-8 text now available (may be "")
    std::string flush();           // whatever is held back, invalid bytes as U+FFFD

private:
    std::shared_ptr<const Tokenizer> tokenizer_;
    std::string pending_;
    bool first_ = true;
};

}  // namespace si
