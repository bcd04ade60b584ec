// SentencePiece BPE ("llama" vocabularies), as sentencepiece's bpe_model.cc encodes and as
// llama.cpp's SPM tokenizer reproduces it:
//  - spaces become U+2581 ("▁"), and with add_space_prefix one "▁" goes in front of the
//    text and of every run of text that follows a special token;
//  - the text starts as one symbol per UTF-8 character; repeatedly, of all adjacent pairs
//    whose concatenation is a token, the pair with the highest token score merges (ties:
//    the leftmost pair), until no pair is a token;
//  - a symbol that is no usable token falls back to its bytes as <0xXX> tokens (or UNK).
#include <array>
#include <cstdio>
#include <queue>
#include <unordered_map>
#include <utility>

#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_models.h"
#include "tokenizer/unicode.h"

namespace si::detail {

namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

class SpmTokenizer final : public Tokenizer {
public:
    explicit SpmTokenizer(VocabData vocab) : Tokenizer(std::move(vocab)) {
        for (int byte = 0; byte < 256; ++byte) {
            char name[8];
            std::snprintf(name, sizeof name, "<0x%02X>", byte);
            byte_tokens_[static_cast<size_t>(byte)] = find_token(name);
        }
    }

    std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
        std::vector<int32_t> ids;
        if (add_bos && vocab_.bos_id >= 0) ids.push_back(vocab_.bos_id);
        bool after_special = true;  // the start of the text counts as "after a special token"
        std::string escaped;
        for (const Fragment& fragment : split_special_tokens(text, parse_special)) {
            if (fragment.token >= 0) {
                ids.push_back(fragment.token);
                after_special = true;
                continue;
            }
            escaped.clear();
            escaped.reserve(fragment.text.size() + 16);
            if (vocab_.add_space_prefix && after_special) escaped += kSpaceSymbol;
            for (char c : fragment.text) {
                if (c == ' ') {
                    escaped += kSpaceSymbol;
                } else {
                    escaped += c;
                }
            }
            encode_escaped(escaped, ids);
            after_special = false;
        }
        return ids;
    }

    std::string token_to_bytes(int32_t id, bool render_special) const override {
        check_token_id(id);
        const std::string& text = vocab_.tokens[static_cast<size_t>(id)];
        switch (token_type(id)) {
            case TokenType::NORMAL:
            case TokenType::UNDEFINED:
                return unescape_spaces(text);
            case TokenType::BYTE: {
                const int byte = parse_byte_token(text);
                // A BYTE token not spelled <0xXX>: its text is all there is to give.
                return byte >= 0 ? std::string(1, static_cast<char>(byte)) : text;
            }
            case TokenType::USER_DEFINED:
                return text;
            case TokenType::CONTROL:
            case TokenType::UNKNOWN:
                return render_special ? text : std::string();
            case TokenType::UNUSED:
                break;
        }
        return std::string();
    }

    std::string decode(const std::vector<int32_t>& ids, bool render_special) const override {
        // The space that add_space_prefix put in front of the text comes out of the first
        // token's piece; when the sequence starts with BOS, out of the token after it
        // (llama.cpp strips the first piece, llama-cpp-python the one after BOS).
        const size_t first_text_token = !ids.empty() && ids[0] == vocab_.bos_id ? 1 : 0;
        std::string text;
        for (size_t i = 0; i < ids.size(); ++i) {
            std::string piece = token_to_bytes(ids[i], render_special);
            if (i == first_text_token && vocab_.add_space_prefix && !piece.empty() && piece[0] == ' ') {
                piece.erase(0, 1);
            }
            text += piece;
        }
        return text;
    }

private:
    struct Symbol {
        size_t start;   // byte offset in the escaped text
        size_t length;  // 0 once merged into its left neighbour
        int32_t prev;   // neighbours in the live chain, -1 at the ends
        int32_t next;
    };

    struct PairCandidate {
        float score;
        int32_t left;   // symbol indices
        int32_t right;
        size_t length;  // combined length when queued; a mismatch later means it is stale
    };

    struct LowerPriority {
        bool operator()(const PairCandidate& a, const PairCandidate& b) const {
            return a.score < b.score || (a.score == b.score && a.left > b.left);
        }
    };

    // Pieces that BPE may produce. sentencepiece keeps control, unknown and byte pieces out
    // of its merge table; unused pieces may be produced but are then split again.
    bool is_mergeable(int32_t id) const {
        const TokenType type = token_type(id);
        return type == TokenType::NORMAL || type == TokenType::UNDEFINED ||
               type == TokenType::USER_DEFINED || type == TokenType::UNUSED;
    }

    float score(int32_t id) const {
        return vocab_.scores.empty() ? 0.0f : vocab_.scores[static_cast<size_t>(id)];
    }

    static std::string unescape_spaces(const std::string& text) {
        std::string out;
        out.reserve(text.size());
        for (size_t pos = 0; pos < text.size();) {
            if (text.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
                out += ' ';
                pos += kSpaceSymbol.size();
            } else {
                out += text[pos++];
            }
        }
        return out;
    }

    // Where an unused piece came from, so that it can be split back (sentencepiece's
    // rev_merge). Views point into the escaped text being encoded.
    using SplitMap = std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>;

    void encode_escaped(const std::string& escaped, std::vector<int32_t>& ids) const {
        const std::string_view view(escaped);
        std::vector<Symbol> symbols;
        symbols.reserve(view.size());
        for (size_t pos = 0; pos < view.size();) {
            const size_t length = unicode::decode_utf8(view, pos).length;
            const auto index = static_cast<int32_t>(symbols.size());
            symbols.push_back({pos, length, index - 1, -1});
            if (index > 0) symbols[static_cast<size_t>(index) - 1].next = index;
            pos += length;
        }

        std::priority_queue<PairCandidate, std::vector<PairCandidate>, LowerPriority> queue;
        SplitMap unused_splits;
        const auto try_queue_pair = [&](int32_t left, int32_t right) {
            if (left < 0 || right < 0) return;
            const Symbol& a = symbols[static_cast<size_t>(left)];
            const Symbol& b = symbols[static_cast<size_t>(right)];
            const std::string_view merged = view.substr(a.start, a.length + b.length);
            const int32_t id = find_token(merged);
            if (id < 0 || !is_mergeable(id)) return;
            queue.push({score(id), left, right, merged.size()});
            if (token_type(id) == TokenType::UNUSED) {
                unused_splits[merged] = {view.substr(a.start, a.length), view.substr(b.start, b.length)};
            }
        };
        for (size_t i = 1; i < symbols.size(); ++i) {
            try_queue_pair(static_cast<int32_t>(i) - 1, static_cast<int32_t>(i));
        }

        while (!queue.empty()) {
            const PairCandidate candidate = queue.top();
            queue.pop();
            Symbol& left = symbols[static_cast<size_t>(candidate.left)];
            Symbol& right = symbols[static_cast<size_t>(candidate.right)];
            // Lengths only grow, so an unchanged sum means neither side has merged since.
            if (left.length == 0 || right.length == 0 || left.length + right.length != candidate.length) {
                continue;
            }
            left.length += right.length;
            right.length = 0;
            left.next = right.next;
            if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = candidate.left;
            try_queue_pair(left.prev, candidate.left);
            try_queue_pair(candidate.left, left.next);
        }

        for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
            const Symbol& symbol = symbols[static_cast<size_t>(i)];
            emit_piece(view.substr(symbol.start, symbol.length), unused_splits, ids);
        }
    }

    void emit_piece(std::string_view piece, const SplitMap& unused_splits, std::vector<int32_t>& ids) const {
        const int32_t id = find_token(piece);
        if (id >= 0 && is_mergeable(id) && token_type(id) != TokenType::UNUSED) {
            ids.push_back(id);
            return;
        }
        const auto split = unused_splits.find(piece);
        if (split != unused_splits.end()) {
            emit_piece(split->second.first, unused_splits, ids);
            emit_piece(split->second.second, unused_splits, ids);
            return;
        }
        // Byte fallback; a vocabulary without byte tokens gets one UNK for the piece.
        for (char c : piece) {
            if (byte_tokens_[static_cast<uint8_t>(c)] < 0) {
                if (vocab_.unk_id >= 0) ids.push_back(vocab_.unk_id);
                return;
            }
        }
        for (char c : piece) ids.push_back(byte_tokens_[static_cast<uint8_t>(c)]);
    }

    std::array<int32_t, 256> byte_tokens_{};  // id of "<0xXX>" per byte value, or -1
};

}  // namespace

std::shared_ptr<const Tokenizer> make_spm_tokenizer(VocabData vocab) {
    return std::make_shared<SpmTokenizer>(std::move(vocab));
}

}  // namespace si::detail
