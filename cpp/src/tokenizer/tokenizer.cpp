#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>

#include "common/errors.h"
#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer_models.h"
#include "tokenizer/unicode.h"

namespace si {

namespace {

constexpr int32_t kMaxTokenType = static_cast<int32_t>(TokenType::BYTE);

// Texts of tokens that end a turn although the file does not name them as EOS/EOT/EOM:
// the list llama.cpp's vocabulary loader uses to build its end-of-generation set.
constexpr const char* kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>",
};

// Everything create() relies on; returns "" when the vocabulary is usable, else what is wrong.
std::string find_vocab_problem(const VocabData& vocab) {
    const size_t n = vocab.tokens.size();
    if (vocab.model != "llama" && vocab.model != "gpt2") {
        return "tokenizer model \"" + vocab.model + "\" is not supported (only \"llama\" and \"gpt2\")";
    }
    if (n == 0) return "the vocabulary has no tokens";
    if (n > static_cast<size_t>(INT32_MAX)) return "the vocabulary has more than 2^31-1 tokens";
    if (!vocab.scores.empty() && vocab.scores.size() != n) {
        return "tokenizer.ggml.scores has " + std::to_string(vocab.scores.size()) +
               " entries for " + std::to_string(n) + " tokens";
    }
    if (!vocab.token_types.empty() && vocab.token_types.size() != n) {
        return "tokenizer.ggml.token_type has " + std::to_string(vocab.token_types.size()) +
               " entries for " + std::to_string(n) + " tokens";
    }
    for (size_t i = 0; i < vocab.token_types.size(); ++i) {
        if (vocab.token_types[i] < 0 || vocab.token_types[i] > kMaxTokenType) {
            return "token " + std::to_string(i) + " has unknown token type " +
                   std::to_string(vocab.token_types[i]);
        }
    }
    const std::pair<const char*, int32_t> special_ids[] = {
        {"bos", vocab.bos_id}, {"eos", vocab.eos_id}, {"eot", vocab.eot_id},
        {"eom", vocab.eom_id}, {"unk", vocab.unk_id}, {"pad", vocab.pad_id},
    };
    for (const auto& [name, id] : special_ids) {
        if (id < -1 || id >= static_cast<int64_t>(n)) {
            return std::string(name) + " token id " + std::to_string(id) + " is outside the vocabulary";
        }
    }
    return "";
}

[[noreturn]] void throw_format_error(const GgufFile& file, const std::string& what) {
    throw FormatError(file.describe(what));
}

bool is_llama3_pre(const std::string& pre) {
    return pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe";
}

}  // namespace

// ---- VocabData ---------------------------------------------------------------------------

VocabData VocabData::from_gguf(const GgufFile& file) {
    VocabData vocab;
    try {
        vocab.model = file.get_string("tokenizer.ggml.model", "");
        if (vocab.model.empty()) throw_format_error(file, "no tokenizer.ggml.model: the file carries no vocabulary");
        if (vocab.model != "llama" && vocab.model != "gpt2") {
            throw UnsupportedError(file.describe("tokenizer.ggml.model \"" + vocab.model +
                                                 "\" is not supported (only \"llama\" and \"gpt2\")"));
        }
        const bool is_spm = vocab.model == "llama";
        vocab.pre = file.get_string("tokenizer.ggml.pre", "default");

        const char* tokens_key = "tokenizer.ggml.tokens";
        const GgufValue* tokens = file.find(tokens_key);
        if (tokens == nullptr) throw_format_error(file, "missing tokenizer.ggml.tokens");
        for (std::string_view text : tokens->as_string_array(tokens_key)) vocab.tokens.emplace_back(text);

        if (const GgufValue* scores = file.find("tokenizer.ggml.scores")) {
            vocab.scores = scores->as_float_array("tokenizer.ggml.scores");
        }
        if (const GgufValue* types = file.find("tokenizer.ggml.token_type")) {
            vocab.token_types = types->as_int_array("tokenizer.ggml.token_type");
        }
        if (const GgufValue* merges = file.find("tokenizer.ggml.merges")) {
            for (std::string_view merge : merges->as_string_array("tokenizer.ggml.merges")) {
                vocab.merges.emplace_back(merge);
            }
        } else if (!is_spm) {
            throw_format_error(file, "missing tokenizer.ggml.merges, which a \"gpt2\" vocabulary needs");
        }

        // An id outside the vocabulary is dropped rather than fatal: llama.cpp warns and
        // ignores such ids too, and some converted files carry a bogus padding id.
        const auto n_tokens = static_cast<int64_t>(vocab.tokens.size());
        const auto read_id = [&](const char* key) -> int32_t {
            const int64_t id = file.get_int(key, -1);
            return id >= 0 && id < n_tokens ? static_cast<int32_t>(id) : -1;
        };
        vocab.bos_id = read_id("tokenizer.ggml.bos_token_id");
        vocab.eos_id = read_id("tokenizer.ggml.eos_token_id");
        vocab.eot_id = read_id("tokenizer.ggml.eot_token_id");
        vocab.eom_id = read_id("tokenizer.ggml.eom_token_id");
        vocab.unk_id = read_id("tokenizer.ggml.unknown_token_id");
        vocab.pad_id = read_id("tokenizer.ggml.padding_token_id");

        // Defaults as llama.cpp has them: SentencePiece vocabularies add BOS and a space
        // prefix unless told otherwise; of the BPE ones, Llama 3's adds BOS.
        vocab.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", is_spm || is_llama3_pre(vocab.pre));
        vocab.add_eos = file.get_bool("tokenizer.ggml.add_eos_token", false);
        vocab.add_space_prefix = file.get_bool("tokenizer.ggml.add_space_prefix", is_spm);
    } catch (const FormatError& e) {
        // The value converters name the key but not the file.
        const std::string message = e.what();
        if (message.compare(0, file.path().size(), file.path()) == 0) throw;
        throw FormatError(file.describe(message));
    }
    const std::string problem = find_vocab_problem(vocab);
    if (!problem.empty()) throw_format_error(file, problem);
    return vocab;
}

// ---- Tokenizer ---------------------------------------------------------------------------

std::shared_ptr<const Tokenizer> Tokenizer::create(VocabData vocab) {
    const std::string problem = find_vocab_problem(vocab);
    if (!problem.empty()) throw ArgumentError("bad vocabulary: " + problem);
    if (vocab.model == "llama") return detail::make_spm_tokenizer(std::move(vocab));
    return detail::make_bpe_tokenizer(std::move(vocab));
}

Tokenizer::Tokenizer(VocabData vocab) : vocab_(std::move(vocab)) {
    const auto n = static_cast<int32_t>(vocab_.tokens.size());
    token_ids_.reserve(vocab_.tokens.size());
    for (int32_t id = 0; id < n; ++id) {
        // A repeated text maps to its last id, as in llama.cpp's token_to_id.
        token_ids_[vocab_.tokens[id]] = id;
        const TokenType type = token_type(id);
        const bool is_special = type == TokenType::CONTROL || type == TokenType::USER_DEFINED ||
                                type == TokenType::UNKNOWN;
        if (is_special && !vocab_.tokens[id].empty()) special_token_ids_.push_back(id);
    }
    std::stable_sort(special_token_ids_.begin(), special_token_ids_.end(), [&](int32_t a, int32_t b) {
        return vocab_.tokens[a].size() > vocab_.tokens[b].size();
    });

    for (int32_t id : {vocab_.eos_id, vocab_.eot_id, vocab_.eom_id}) {
        if (id >= 0) end_of_generation_ids_.push_back(id);
    }
    for (const char* text : kEndOfGenerationTexts) {
        const int32_t id = find_token(text);
        if (id >= 0) end_of_generation_ids_.push_back(id);
    }
    std::sort(end_of_generation_ids_.begin(), end_of_generation_ids_.end());
    end_of_generation_ids_.erase(std::unique(end_of_generation_ids_.begin(), end_of_generation_ids_.end()),
                                 end_of_generation_ids_.end());
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
    return std::binary_search(end_of_generation_ids_.begin(), end_of_generation_ids_.end(), id);
}

TokenType Tokenizer::token_type(int32_t id) const {
    if (vocab_.token_types.empty()) return TokenType::NORMAL;
    return static_cast<TokenType>(vocab_.token_types[static_cast<size_t>(id)]);
}

int32_t Tokenizer::find_token(std::string_view text) const {
    const auto it = token_ids_.find(text);
    return it == token_ids_.end() ? -1 : it->second;
}

void Tokenizer::check_token_id(int32_t id) const {
    if (id < 0 || id >= n_vocab()) {
        throw ArgumentError("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                            std::to_string(n_vocab()) + ")");
    }
}

std::vector<Tokenizer::Fragment> Tokenizer::split_special_tokens(std::string_view text,
                                                                 bool parse_special) const {
    std::vector<Fragment> fragments;
    if (text.empty()) return fragments;
    fragments.push_back({text, -1});
    std::vector<Fragment> split;
    for (int32_t id : special_token_ids_) {
        if (!parse_special && token_type(id) != TokenType::USER_DEFINED) continue;
        const std::string_view special = vocab_.tokens[id];
        split.clear();
        bool found = false;
        for (const Fragment& fragment : fragments) {
            if (fragment.token >= 0) {
                split.push_back(fragment);
                continue;
            }
            std::string_view rest = fragment.text;
            for (size_t match = rest.find(special); match != std::string_view::npos;
                 match = rest.find(special)) {
                found = true;
                if (match > 0) split.push_back({rest.substr(0, match), -1});
                split.push_back({std::string_view(), id});
                rest.remove_prefix(match + special.size());
            }
            if (!rest.empty()) split.push_back({rest, -1});
        }
        if (found) fragments.swap(split);
    }
    return fragments;
}

// ---- helpers shared by the models --------------------------------------------------------

int detail::parse_byte_token(std::string_view text) {
    if (text.size() != 6 || text.compare(0, 3, "<0x") != 0 || text[5] != '>') return -1;
    int value = 0;
    for (size_t i = 3; i < 5; ++i) {
        const char c = text[i];
        int digit = -1;
        if (c >= '0' && c <= '9') digit = c - '0';
        if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
        if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        if (digit < 0) return -1;
        value = value * 16 + digit;
    }
    return value;
}

// ---- StreamDecoder -----------------------------------------------------------------------

StreamDecoder::StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer) : tokenizer_(std::move(tokenizer)) {
    if (!tokenizer_) throw ArgumentError("StreamDecoder needs a tokenizer");
}

std::string StreamDecoder::feed(int32_t id) {
    std::string piece = tokenizer_->token_to_bytes(id, false);
    const VocabData& vocab = tokenizer_->vocab();
    if (first_) {
        first_ = false;
        strip_next_leading_space_ = id == vocab.bos_id && vocab.model == "llama" && vocab.add_space_prefix;
    } else if (strip_next_leading_space_) {
        strip_next_leading_space_ = false;
        if (!piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    }
    pending_ += piece;

    // Emit every complete character; hold back only a well-formed prefix cut off at the end.
    std::string ready;
    size_t pos = 0;
    while (pos < pending_.size()) {
        const unicode::DecodedChar ch = unicode::decode_utf8(pending_, pos);
        if (ch.status == unicode::Utf8Status::truncated) break;
        if (ch.status == unicode::Utf8Status::valid) {
            ready.append(pending_, pos, ch.length);
        } else {
            unicode::append_utf8(ready, unicode::kReplacementCharacter);
        }
        pos += ch.length;
    }
    pending_.erase(0, pos);
    return ready;
}

std::string StreamDecoder::flush() {
    std::string rest = unicode::sanitize_utf8(pending_);
    pending_.clear();
    return rest;
}

}  // namespace si
