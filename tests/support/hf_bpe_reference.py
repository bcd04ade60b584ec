"""Hugging Face tokenizers set up as the reference for byte-level BPE vocabularies: a
vocabulary and its merges under one of llama.cpp's pre-tokenizer types. tokenizers is
imported when a reference is made (the tests that need it skip without it)."""

from __future__ import annotations

# The split patterns of llama.cpp's pre-tokenizer types (which copy the models' tokenizer.json).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def hf_pre_tokenizer(pre):
    from tokenizers import Regex, pre_tokenizers as pt
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    byte_level_only = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre == "gpt2":
        return byte_level
    if pre == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    pattern = {"llama-bpe": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}[pre]
    return pt.Sequence([pt.Split(Regex(pattern), behavior="isolated", invert=False), byte_level_only])


def hf_bpe_tokenizer(vocab: dict[str, int], merges: list[str], pre: str, special_tokens: list[str], *,
                     ignore_merges: bool = False):
    """A tokenizers.Tokenizer over vocab (text -> id) and merges ("left right"), splitting text
    as llama.cpp's pre-tokenizer type `pre` does, with the byte-level decoder and
    special_tokens added as special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    reference = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges],
                                     ignore_merges=ignore_merges))
    reference.pre_tokenizer = hf_pre_tokenizer(pre)
    reference.decoder = decoders.ByteLevel()
    reference.add_special_tokens([AddedToken(t, special=True) for t in special_tokens])
    return reference
