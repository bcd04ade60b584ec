// Tokenizers for GGUF vocabularies: SentencePiece-style ("llama") and GPT-2 byte-level BPE
// ("gpt2"), selected by tokenizer.ggml.model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
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
    // Throws ArgumentError unless 0 <= id < n_vocab().
    void check_token_id(int32_t id) const;

protected:
    // Builds the lookups below; `vocab` must already be validated (create() does that).
    explicit Tokenizer(VocabData vocab);

    // A run of the input: plain text for the model's algorithm, or one special token.
    struct Fragment {
        std::string_view text;  // empty for a special token
        int32_t token = -1;     // >= 0 for a special token
    };
    // Cuts the special tokens' texts out of `text`, as llama.cpp's tokenizer_st_partition
    // does: the longest special text first, each occurrence left to right. User-defined
    // tokens are always recognised; control and unknown tokens only with parse_special.
    std::vector<Fragment> split_special_tokens(std::string_view text, bool parse_special) const;

    TokenType token_type(int32_t id) const;
    // Id of the token whose text is exactly `text`, or -1.
    int32_t find_token(std::string_view text) const;

    VocabData vocab_;
    std::vector<int32_t> end_of_generation_ids_;  // sorted

private:
    // Keys view the strings in vocab_.tokens, which never change after construction.
    std::unordered_map<std::string_view, int32_t> token_ids_;
    std::vector<int32_t> special_token_ids_;  // longest text first
};

// Turns a stream of token ids into text without ever emitting part of a UTF-8 character:
// bytes of an incomplete character are held back until it completes (or flush()); bytes
// that can never form a character come out as U+FFFD. Control tokens give "". Meant for
// generated tokens, which are printed as they are: the only space dropped is the one SPM's
// add_space_prefix puts after a BOS that starts the stream (as decode() drops it).
class StreamDecoder {
public:
    explicit StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer);
    std::string feed(int32_t id);  // complete UTF-8 text now available (may be "")
    std::string flush();           // whatever is held back, invalid bytes as U+FFFD

private:
    std::shared_ptr<const Tokenizer> tokenizer_;
    std::string pending_;
    bool first_ = true;
    bool strip_next_leading_space_ = false;  // set by a leading BOS (see above)
};

}  // namespace si
