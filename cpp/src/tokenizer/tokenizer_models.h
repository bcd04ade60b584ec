// The two tokenizer algorithms, each in its own file; Tokenizer::create picks one.
#pragma once

#include <memory>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace si::detail {

// tokenizer.ggml.model == "llama": SentencePiece BPE over token scores (spm_tokenizer.cpp).
std::shared_ptr<const Tokenizer> make_spm_tokenizer(VocabData vocab);
// tokenizer.ggml.model == "gpt2": byte-level BPE over merge ranks (bpe_tokenizer.cpp).
std::shared_ptr<const Tokenizer> make_bpe_tokenizer(VocabData vocab);

// The byte a byte token's text "<0xXX>" (two hex digits, either case) names, or -1.
int parse_byte_token(std::string_view text);

}  // namespace si::detail
