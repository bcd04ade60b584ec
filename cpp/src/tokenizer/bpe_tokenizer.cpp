// Byte-level BPE ("gpt2" vocabularies): GPT-2's scheme as Hugging Face tokenizers and
// llama.cpp run it.
//  1. Pre-tokenisation splits the text into words with the pattern tokenizer.ggml.pre names
//     (hand-written matchers below, equivalent to the regexes quoted next to them).
//  2. Each byte of a word becomes the token for its GPT-2 "byte symbol" (bytes_to_unicode).
//  3. Adjacent symbols merge by tokenizer.ggml.merges, lowest rank first (ties: leftmost),
//     until no adjacent pair has a merge.
#include <array>
#include <queue>
#include <unordered_map>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_models.h"
#include "tokenizer/unicode.h"

namespace si::detail {

namespace {

// GPT-2's bytes_to_unicode (openai/gpt-2 encoder.py): the printable bytes '!'..'~',
// U+00A1..U+00AC and U+00AE..U+00FF stand for themselves; the other 68 bytes, in increasing
// order, take the code points 256, 257, ... so that every byte has a visible symbol.
std::array<uint32_t, 256> make_byte_symbols() {
    std::array<uint32_t, 256> symbols{};
    uint32_t next_extra = 256;
    for (uint32_t byte = 0; byte < 256; ++byte) {
        const bool printable = (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) ||
                               (byte >= 0xAE && byte <= 0xFF);
        symbols[byte] = printable ? byte : next_extra++;
    }
    return symbols;
}

constexpr uint32_t kByteSymbolLimit = 256 + 68;  // every byte symbol is below this

enum class PreTokenizer {
    gpt2,       // GPT-2's pattern
    digits,     // \p{N} isolated first, then GPT-2's pattern on the rest (StarCoder, SmolLM)
    llama3,     // Llama 3's pattern, numbers in groups of up to three
    qwen2,      // Llama 3's pattern with single-digit numbers
};

// tokenizer.ggml.pre values as llama.cpp groups them; anything else gets GPT-2's pattern.
PreTokenizer pre_tokenizer_for(const std::string& pre) {
    if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe") return PreTokenizer::llama3;
    if (pre == "qwen2" || pre == "stablelm2") return PreTokenizer::qwen2;
    if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
        pre == "codeshell" || pre == "exaone") {
        return PreTokenizer::digits;
    }
    return PreTokenizer::gpt2;
}

enum class CharClass : uint8_t { letter, number, whitespace, other };

// The text as characters: code point, class and byte offset. An ill-formed byte is one
// character of class `other` (U+FFFD), so words are byte ranges of the original text and
// invalid input keeps every byte.
struct CharView {
    std::vector<uint32_t> code_points;
    std::vector<CharClass> classes;
    std::vector<size_t> offsets;  // one more than characters: offsets.back() is the end

    explicit CharView(std::string_view text) {
        code_points.reserve(text.size());
        classes.reserve(text.size());
        offsets.reserve(text.size() + 1);
        for (size_t pos = 0; pos < text.size();) {
            const unicode::DecodedChar ch = unicode::decode_utf8(text, pos);
            const uint32_t cp = ch.code_point;
            CharClass cls = CharClass::other;
            if (unicode::is_letter(cp)) {
                cls = CharClass::letter;
            } else if (unicode::is_number(cp)) {
                cls = CharClass::number;
            } else if (unicode::is_whitespace(cp)) {
                cls = CharClass::whitespace;
            }
            code_points.push_back(cp);
            classes.push_back(cls);
            offsets.push_back(pos);
            pos += ch.length;
        }
        offsets.push_back(text.size());
    }
};

bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

uint32_t ascii_lower(uint32_t cp) { return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp; }

// Length of the English contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
size_t contraction_length(const CharView& chars, size_t i, size_t end, bool ignore_case) {
    if (chars.code_points[i] != '\'' || i + 1 >= end) return 0;
    const auto at = [&](size_t k) {
        return ignore_case ? ascii_lower(chars.code_points[k]) : chars.code_points[k];
    };
    const uint32_t c1 = at(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
    if (i + 2 >= end) return 0;
    const uint32_t c2 = at(i + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
    return 0;
}

size_t run_end(const CharView& chars, size_t i, size_t end, CharClass cls) {
    while (i < end && chars.classes[i] == cls) ++i;
    return i;
}

using WordSink = std::vector<std::pair<size_t, size_t>>;  // character ranges [first, last)

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// over characters [begin, end); the end of the range is the end of the text for (?!\S).
void split_gpt2(const CharView& chars, size_t begin, size_t end, WordSink& words) {
    size_t i = begin;
    while (i < end) {
        const size_t start = i;
        if (const size_t n = contraction_length(chars, i, end, false)) {
            i += n;
        } else {
            // " ?X+" for X a letter, digit or other run: one optional plain space in front.
            size_t j = i;
            if (chars.code_points[i] == ' ' && i + 1 < end && chars.classes[i + 1] != CharClass::whitespace) ++j;
            if (chars.classes[j] != CharClass::whitespace) {
                i = run_end(chars, j, end, chars.classes[j]);
            } else {
                // \s+(?!\S): the run, less its last character when a non-space follows (that
                // one then leads the next word); a single one before a non-space is \s+.
                const size_t ws_end = run_end(chars, i, end, CharClass::whitespace);
                i = ws_end == end || ws_end - i == 1 ? ws_end : ws_end - 1;
            }
        }
        words.emplace_back(start, i);
    }
}

// Llama 3:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Qwen2 is the same with \p{N} (single digits): max_digits 1.
void split_llama3(const CharView& chars, size_t begin, size_t end, size_t max_digits, WordSink& words) {
    size_t i = begin;
    while (i < end) {
        const size_t start = i;
        const uint32_t cp = chars.code_points[i];
        const CharClass cls = chars.classes[i];
        if (const size_t n = contraction_length(chars, i, end, true)) {
            i += n;
        } else if (cls == CharClass::letter) {
            i = run_end(chars, i, end, CharClass::letter);
        } else if (cls != CharClass::number && !is_newline(cp) && i + 1 < end &&
                   chars.classes[i + 1] == CharClass::letter) {
            i = run_end(chars, i + 1, end, CharClass::letter);  // one leading non-letter
        } else if (cls == CharClass::number) {
            while (i < end && i - start < max_digits && chars.classes[i] == CharClass::number) ++i;
        } else if (cls == CharClass::other ||
                   (cp == ' ' && i + 1 < end && chars.classes[i + 1] == CharClass::other)) {
            i = run_end(chars, cls == CharClass::other ? i : i + 1, end, CharClass::other);
            while (i < end && is_newline(chars.code_points[i])) ++i;
        } else {
            const size_t ws_end = run_end(chars, i, end, CharClass::whitespace);
            size_t last_newline = ws_end;
            for (size_t k = ws_end; k > i; --k) {
                if (is_newline(chars.code_points[k - 1])) {
                    last_newline = k - 1;
                    break;
                }
            }
            if (last_newline != ws_end) {
                i = last_newline + 1;  // \s*[\r\n]+ backs off to the run's last line break
            } else {
                i = ws_end == end || ws_end - i == 1 ? ws_end : ws_end - 1;  // \s+(?!\S) | \s+
            }
        }
        words.emplace_back(start, i);
    }
}

// StarCoder / SmolLM: \p{N} first (every digit alone), then GPT-2's pattern on each run
// between digits, as llama.cpp applies its list of patterns one after the other.
void split_digits_then_gpt2(const CharView& chars, WordSink& words) {
    const size_t end = chars.code_points.size();
    size_t segment = 0;
    for (size_t i = 0; i < end; ++i) {
        if (chars.classes[i] != CharClass::number) continue;
        split_gpt2(chars, segment, i, words);
        words.emplace_back(i, i + 1);
        segment = i + 1;
    }
    split_gpt2(chars, segment, end, words);
}

class BpeTokenizer final : public Tokenizer {
public:
    explicit BpeTokenizer(VocabData vocab)
        : Tokenizer(std::move(vocab)), pre_tokenizer_(pre_tokenizer_for(vocab_.pre)) {
        // Llama 3's tokenizer takes a word that is a token as it stands (ignore_merges).
        whole_word_tokens_ = pre_tokenizer_ == PreTokenizer::llama3;

        const std::array<uint32_t, 256> byte_symbols = make_byte_symbols();
        symbol_to_byte_.fill(-1);
        for (uint32_t byte = 0; byte < 256; ++byte) {
            std::string symbol;
            unicode::append_utf8(symbol, byte_symbols[byte]);
            byte_symbol_text_[byte] = symbol;
            byte_tokens_[byte] = find_token(symbol);
            symbol_to_byte_[byte_symbols[byte]] = static_cast<int16_t>(byte);
        }

        // "left right" -> rank = line number. A merge naming tokens the vocabulary lacks can
        // never apply and is skipped; the first of repeated merges counts.
        merges_.reserve(vocab_.merges.size());
        for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
            const std::string& merge = vocab_.merges[rank];
            const size_t space = merge.find(' ', 1);
            if (space == std::string::npos) continue;
            const int32_t left = find_token(std::string_view(merge).substr(0, space));
            const int32_t right = find_token(std::string_view(merge).substr(space + 1));
            std::string merged = merge.substr(0, space) + merge.substr(space + 1);
            const int32_t result = find_token(merged);
            if (left < 0 || right < 0 || result < 0) continue;
            merges_.emplace(pair_key(left, right), Merge{static_cast<int32_t>(rank), result});
        }
    }

    std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
        std::vector<int32_t> ids;
        if (add_bos && vocab_.bos_id >= 0) ids.push_back(vocab_.bos_id);
        for (const Fragment& fragment : split_special_tokens(text, parse_special)) {
            if (fragment.token >= 0) {
                ids.push_back(fragment.token);
            } else {
                encode_text(fragment.text, ids);
            }
        }
        return ids;
    }

    std::string token_to_bytes(int32_t id, bool render_special) const override {
        check_token_id(id);
        const std::string& text = vocab_.tokens[static_cast<size_t>(id)];
        switch (token_type(id)) {
            case TokenType::NORMAL:
            case TokenType::UNDEFINED:
                return symbols_to_bytes(text);
            case TokenType::BYTE: {
                const int byte = parse_byte_token(text);
                return byte >= 0 ? std::string(1, static_cast<char>(byte)) : symbols_to_bytes(text);
            }
            case TokenType::USER_DEFINED:
                return text;  // added tokens are stored as plain text, not byte symbols
            case TokenType::CONTROL:
            case TokenType::UNKNOWN:
                return render_special ? text : std::string();
            case TokenType::UNUSED:
                break;
        }
        return std::string();
    }

    std::string decode(const std::vector<int32_t>& ids, bool render_special) const override {
        std::string text;
        for (int32_t id : ids) text += token_to_bytes(id, render_special);
        return text;
    }

private:
    struct Merge {
        int32_t rank;
        int32_t result;  // token id of the merged pair
    };

    struct Symbol {
        int32_t id;  // -1: a byte the vocabulary has no token for (never merges)
        int32_t prev;
        int32_t next;
    };

    struct PairCandidate {
        int32_t rank;
        int32_t left;  // symbol indices
        int32_t right;
        int32_t left_id;  // the ids when queued; a change since means it is stale
        int32_t right_id;
        int32_t result;
    };

    struct LowerPriority {
        bool operator()(const PairCandidate& a, const PairCandidate& b) const {
            return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
        }
    };

    static uint64_t pair_key(int32_t left, int32_t right) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
    }

    // Byte symbols back to bytes; a character that is no byte symbol passes through as UTF-8.
    std::string symbols_to_bytes(const std::string& text) const {
        std::string bytes;
        bytes.reserve(text.size());
        for (size_t pos = 0; pos < text.size();) {
            const unicode::DecodedChar ch = unicode::decode_utf8(text, pos);
            if (ch.status == unicode::Utf8Status::valid && ch.code_point < kByteSymbolLimit &&
                symbol_to_byte_[ch.code_point] >= 0) {
                bytes += static_cast<char>(symbol_to_byte_[ch.code_point]);
            } else {
                bytes.append(text, pos, ch.length);
            }
            pos += ch.length;
        }
        return bytes;
    }

    void encode_text(std::string_view text, std::vector<int32_t>& ids) const {
        const CharView chars(text);
        WordSink words;
        const size_t n_chars = chars.code_points.size();
        switch (pre_tokenizer_) {
            case PreTokenizer::gpt2: split_gpt2(chars, 0, n_chars, words); break;
            case PreTokenizer::digits: split_digits_then_gpt2(chars, words); break;
            case PreTokenizer::llama3: split_llama3(chars, 0, n_chars, 3, words); break;
            case PreTokenizer::qwen2: split_llama3(chars, 0, n_chars, 1, words); break;
        }
        WordState state;
        for (const auto& [first, last] : words) {
            encode_word(text.substr(chars.offsets[first], chars.offsets[last] - chars.offsets[first]), state, ids);
        }
    }

    // Scratch reused from word to word (the queue is empty between words).
    struct WordState {
        std::vector<Symbol> symbols;
        std::priority_queue<PairCandidate, std::vector<PairCandidate>, LowerPriority> queue;
        std::string symbol_text;
    };

    void encode_word(std::string_view word, WordState& state, std::vector<int32_t>& ids) const {
        if (whole_word_tokens_) {
            state.symbol_text.clear();
            for (char c : word) state.symbol_text += byte_symbol_text_[static_cast<uint8_t>(c)];
            const int32_t id = find_token(state.symbol_text);
            if (id >= 0) {
                ids.push_back(id);
                return;
            }
        }

        std::vector<Symbol>& symbols = state.symbols;
        symbols.clear();
        for (size_t i = 0; i < word.size(); ++i) {
            const auto index = static_cast<int32_t>(i);
            symbols.push_back({byte_tokens_[static_cast<uint8_t>(word[i])], index - 1,
                               i + 1 < word.size() ? index + 1 : -1});
        }

        auto& queue = state.queue;
        const auto try_queue_pair = [&](int32_t left, int32_t right) {
            if (left < 0 || right < 0) return;
            const int32_t left_id = symbols[static_cast<size_t>(left)].id;
            const int32_t right_id = symbols[static_cast<size_t>(right)].id;
            if (left_id < 0 || right_id < 0) return;
            const auto merge = merges_.find(pair_key(left_id, right_id));
            if (merge == merges_.end()) return;
            queue.push({merge->second.rank, left, right, left_id, right_id, merge->second.result});
        };
        for (size_t i = 1; i < symbols.size(); ++i) {
            try_queue_pair(static_cast<int32_t>(i) - 1, static_cast<int32_t>(i));
        }

        while (!queue.empty()) {
            const PairCandidate candidate = queue.top();
            queue.pop();
            Symbol& left = symbols[static_cast<size_t>(candidate.left)];
            Symbol& right = symbols[static_cast<size_t>(candidate.right)];
            // Merged-away symbols are unlinked; a merged one has a new id.
            if (left.next != candidate.right || left.id != candidate.left_id || right.id != candidate.right_id) {
                continue;
            }
            left.id = candidate.result;
            left.next = right.next;
            if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = candidate.left;
            right.id = -1;
            right.prev = right.next = -1;
            try_queue_pair(left.prev, candidate.left);
            try_queue_pair(candidate.left, left.next);
        }

        for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
            // A byte whose symbol the vocabulary lacks (SmolLM2 has none for 0x04) is
            // dropped, as llama.cpp does: its unknown id is often <|endoftext|>, which
            // must not appear in a prompt because of a stray control character.
            const int32_t id = symbols[static_cast<size_t>(i)].id;
            if (id >= 0) ids.push_back(id);
        }
    }

    PreTokenizer pre_tokenizer_;
    bool whole_word_tokens_ = false;
    std::array<std::string, 256> byte_symbol_text_;  // UTF-8 of each byte's symbol
    std::array<int32_t, 256> byte_tokens_{};          // token of each byte's symbol, or -1
    std::array<int16_t, kByteSymbolLimit> symbol_to_byte_{};
    std::unordered_map<uint64_t, Merge> merges_;  // keyed by pair_key(left id, right id)
};

}  // namespace

std::shared_ptr<const Tokenizer> make_bpe_tokenizer(VocabData vocab) {
    return std::make_shared<BpeTokenizer>(std::move(vocab));
}

}  // namespace si::detail
