"""Tokenizers against their references, on vocabularies trained inside the tests:
SentencePiece BPE ("llama" GGUF vocabularies) against the sentencepiece library, and GPT-2
byte-level BPE ("gpt2") against Hugging Face tokenizers under each pre-tokenizer pattern.
The GGUF files are written the way llama.cpp's converter writes them."""

from __future__ import annotations

import io
import json
import time

import pytest

import gguf

import ggufgen
from ggufgen import TT_BYTE, TT_CONTROL, TT_NORMAL, TT_UNKNOWN, TT_UNUSED, TT_USER_DEFINED
from hf_bpe_reference import hf_bpe_tokenizer
from sparseinfer import _core
from sparseinfer.errors import ModelFormatError, UnsupportedModelError

spm = pytest.importorskip("sentencepiece")
hf = pytest.importorskip("tokenizers")

USER_DEFINED = ["<|user|>"]  # user-defined symbols of the SentencePiece model

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Hello world! Hello there, how are you doing today? I'm fine, thanks.",
    "They've said we'll go, but he'd rather stay; it's what you're used to.",
    "def tokenize(text):\n    return [ord(c) for c in text if c != ' ']\n",
    "for (int i = 0; i < n; ++i) { sum += values[i] * weights[i]; }",
    "Numbers: 1 22 333 4444 55555 3.14159 2,718 1e-9 0x1F 100% of 42.",
    "Sparse inference skips the neurons that a predictor marks as inactive.",
    "你好，世界！今天天气很好。我们一起去公园散步吧。",
    "日本語のテキストも少し入れておきます。東京は大きい都市です。",
    "Emoji make text fun 😀 🎉 👍 and sometimes 🚀🚀🚀.",
    "Ελληνικά και русский текст, ¿qué tal? Ça va très bien, merci.",
    "    indented line\n\ttabbed line\n\n\nthree blank lines above\r\n",
    "SHOUTING TEXT AND lower text and MiXeD CaSe TeXt",
    "Call 555 1234 or 555-0199 on 2024-06-01 at 10:30; 123 456 789 123456789 1000 2048.",
] * 8

SAMPLE_TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "Hello world",
    "Hello world!",
    " Hello world",
    "  two leading spaces",
    "trailing space ",
    "a  b   c    d     e",
    "tabs\tand\nnewlines\n\n\nand\r\nwindows",
    "你好，世界！",
    "日本語 と English を mix",
    "unseen CJK: 龘靐齉 and 한국어",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇯🇵",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a != b && c <= d) { return *p++; }",
    "numbers 1234567 3.14159 1,000,000 and 42nd",
    "I'm you're he'll they've I'd it's DON'T WE'LL 's 't",
    "¿Qué tal? Ελληνικά Русский текст",
    "nbsp\u00a0here and em\u2003space and ideographic\u3000space",
    " ?!.,;:'\"()[]{}<>@#$%^&*-_=+\\|/~`",
    "\t\t\tindent\n\t\n  \n",
    "ALL CAPS AND lower case",
    "x\u0300\u0301 combining marks and \u0665\u0666 Arabic-Indic digits",
]


# ---- GGUF writing ------------------------------------------------------------------------

def write_vocab_gguf(path, *, model, tokens, token_types, scores=None, merges=None, pre=None,
                     bos=None, eos=None, unk=None, add_bos=None, add_space_prefix=None):
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    if merges is not None:
        writer.add_token_merges(merges)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if unk is not None:
        writer.add_unk_token_id(unk)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if add_space_prefix is not None:
        writer.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix)
    ggufgen.write_file(writer)
    return str(path)


# ---- SentencePiece oracle ----------------------------------------------------------------

def tokenizer_path(processor, directory):
    """The SentencePiece model's vocabulary as a "llama" GGUF vocabulary."""
    # Token types as llama.cpp's converter assigns them from the model's piece types.
    def piece_type(i):
        if processor.is_unknown(i):
            return TT_UNKNOWN
        if processor.is_control(i):
            return TT_CONTROL
        if processor.is_byte(i):
            return TT_BYTE
        if processor.is_unused(i):
            return TT_UNUSED
        return TT_USER_DEFINED if processor.id_to_piece(i) in USER_DEFINED else TT_NORMAL

    n = processor.get_piece_size()
    return write_vocab_gguf(
        directory / "spm.gguf", model="llama", tokens=[processor.id_to_piece(i) for i in range(n)],
        token_types=[piece_type(i) for i in range(n)],
        scores=[processor.get_score(i) for i in range(n)], bos=processor.bos_id(),
        eos=processor.eos_id(), unk=processor.unk_id(), add_bos=True, add_space_prefix=True)


@pytest.fixture(scope="module")
def sentencepiece_pair(tmp_path_factory):
    """A SentencePiece BPE model trained here, and the same vocabulary as a GGUF file."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, model_type="bpe", vocab_size=700,
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        split_digits=True, user_defined_symbols=USER_DEFINED, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())

    path = tokenizer_path(processor, tmp_path_factory.mktemp("spm"))
    return processor, _core.Tokenizer(path)


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_spm_matches_sentencepiece(sentencepiece_pair, text):
    processor, tokenizer = sentencepiece_pair
    assert tokenizer.encode(text, add_bos=False) == processor.encode(text)


def test_spm_uses_byte_fallback_for_unseen_characters(sentencepiece_pair):
    processor, tokenizer = sentencepiece_pair
    ids = tokenizer.encode("龘", add_bos=False)
    pieces = [processor.id_to_piece(i) for i in ids]
    assert pieces[1:] == ["<0xE9>", "<0xBE>", "<0x98>"]
    assert tokenizer.decode(ids) == "龘".encode()


def test_spm_bos_and_leading_space(sentencepiece_pair):
    processor, tokenizer = sentencepiece_pair
    assert tokenizer.add_bos and tokenizer.bos_id == processor.bos_id()
    ids = tokenizer.encode("Hello world", add_bos=True)
    assert ids == [processor.bos_id()] + processor.encode("Hello world")
    assert tokenizer.encode("", add_bos=True) == [processor.bos_id()]
    # The space add_space_prefix put in front is not part of the text.
    assert tokenizer.decode(ids) == b"Hello world"
    assert tokenizer.decode(ids[1:]) == b"Hello world"
    assert tokenizer.decode(ids, render_special=True) == b"<s>Hello world"
    assert tokenizer.token_to_bytes(ids[1]).startswith(b" ")


def test_spm_user_defined_and_control_tokens(sentencepiece_pair):
    processor, tokenizer = sentencepiece_pair
    user = processor.piece_to_id("<|user|>")
    # User-defined tokens are recognised always, as sentencepiece does.
    ids = tokenizer.encode("hi<|user|>there", add_bos=False)
    assert user in ids
    # Control tokens only with parse_special; each text run after one gets the space prefix.
    eos = processor.eos_id()
    assert eos not in tokenizer.encode("hi</s>there", add_bos=False)
    ids = tokenizer.encode("hi</s>there", add_bos=False, parse_special=True)
    assert ids == processor.encode("hi") + [eos] + processor.encode("there")
    assert tokenizer.is_end_of_generation(eos)
    assert not tokenizer.is_end_of_generation(ids[0])


def test_spm_matches_llama_cpp(sentencepiece_pair, tmp_path):
    """Same vocabulary through llama.cpp: BOS, the space prefix after special tokens, and
    the leading space dropped after BOS on decoding (llama-cpp-python's rule)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    processor, tokenizer = sentencepiece_pair
    llama = llama_cpp.Llama(model_path=tokenizer_path(processor, tmp_path), vocab_only=True, verbose=False)
    texts = SAMPLE_TEXTS + random_texts(3) + ["hi</s>there", "a<|user|>b", "<s>x</s> y"]
    for text in texts:
        for special in (False, True):
            expected = llama.tokenize(text.encode(), add_bos=True, special=special)
            assert tokenizer.encode(text, add_bos=True, parse_special=special) == expected, repr(text)
        ids = tokenizer.encode(text, add_bos=True)
        assert tokenizer.decode(ids) == llama.detokenize(ids), repr(text)


@pytest.mark.parametrize("text", [t for t in SAMPLE_TEXTS if t])
def test_spm_round_trip(sentencepiece_pair, text):
    _, tokenizer = sentencepiece_pair
    for add_bos in (False, True):
        assert tokenizer.decode(tokenizer.encode(text, add_bos=add_bos)) == text.encode()


# ---- Hugging Face byte-level BPE oracle --------------------------------------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def trained_bpe():
    """Vocabulary and merges of a byte-level BPE trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return vocab, merges


@pytest.fixture(scope="module", params=["gpt2", "smollm", "llama-bpe", "qwen2"])
def bpe_pair(request, trained_bpe, tmp_path_factory):
    """(HF tokenizer, our tokenizer) over the same vocabulary, for one pre-tokenizer."""
    pre = request.param
    vocab, merges = trained_bpe
    reference = hf_bpe_tokenizer(vocab, merges, pre, SPECIAL_TOKENS, ignore_merges=pre == "llama-bpe")

    tokens = [None] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    types = [TT_CONTROL if t in SPECIAL_TOKENS else TT_NORMAL for t in tokens]
    path = write_vocab_gguf(
        tmp_path_factory.mktemp("bpe") / f"bpe-{pre}.gguf", model="gpt2", pre=pre,
        tokens=tokens, token_types=types, merges=merges, bos=vocab["<|im_start|>"],
        eos=vocab["<|im_end|>"], add_bos=False)
    return pre, reference, _core.Tokenizer(path)


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_bpe_matches_hf_tokenizers(bpe_pair, text):
    _, reference, tokenizer = bpe_pair
    assert tokenizer.encode(text, add_bos=False) == reference.encode(text, add_special_tokens=False).ids


def test_bpe_special_tokens(bpe_pair):
    _, reference, tokenizer = bpe_pair
    text = "<|im_start|>user\nhi there<|im_end|>\n"
    expected = reference.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text, add_bos=False, parse_special=True) == expected
    plain = tokenizer.encode(text, add_bos=False, parse_special=False)
    assert tokenizer.bos_id not in plain and tokenizer.eos_id not in plain
    assert tokenizer.decode(plain) == text.encode()
    assert tokenizer.decode(expected) == b"user\nhi there\n"
    assert tokenizer.decode(expected, render_special=True) == text.encode()
    assert tokenizer.is_end_of_generation(tokenizer.eos_id)
    # <|endoftext|> ends generation by its name, as llama.cpp's list has it.
    assert tokenizer.is_end_of_generation(expected[0] - 1)


@pytest.mark.parametrize("text", [t for t in SAMPLE_TEXTS if t])
def test_bpe_round_trip(bpe_pair, text):
    _, reference, tokenizer = bpe_pair
    ids = tokenizer.encode(text, add_bos=True)
    assert ids[0] == tokenizer.bos_id
    assert tokenizer.decode(ids) == text.encode()
    assert tokenizer.decode(ids[1:]) == reference.decode(ids[1:]).encode()


def random_texts(seed, count=150):
    """Strings over an alphabet chosen to hit the patterns' edges: runs of mixed
    white space, apostrophes before letters, digits next to letters, CJK, emoji, marks."""
    import random
    rng = random.Random(seed)
    alphabet = list("aAbBsStTdDlLmMrReEvV019'' \t\n\r.,!?-_()你好世界😀🎉é\u00a0\u2003\u0301\u0665")
    alphabet += [" ", " ", " ", "\n", "'s", "'LL", " the", "123", "  ", "\r\n"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(count)]


def test_spm_matches_sentencepiece_on_random_text(sentencepiece_pair):
    processor, tokenizer = sentencepiece_pair
    for text in random_texts(1):
        assert tokenizer.encode(text, add_bos=False) == processor.encode(text), repr(text)


def test_bpe_matches_hf_tokenizers_on_random_text(bpe_pair):
    _, reference, tokenizer = bpe_pair
    for text in random_texts(2):
        expected = reference.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text, add_bos=False) == expected, repr(text)


# ---- invalid input and streaming ---------------------------------------------------------

INVALID_UTF8 = [
    b"\xff\xfe abc",
    b"truncated \xe4\xbd",
    b"\xc0\xaf overlong and \xed\xa0\x80 surrogate",
    b"lone \x80 continuation \xf4\x90\x80\x80 too high",
    b"\xf0\x9f\x98",
]


@pytest.mark.parametrize("data", INVALID_UTF8)
def test_invalid_utf8_is_kept_byte_for_byte(sentencepiece_pair, bpe_pair, data):
    for tokenizer in (sentencepiece_pair[1], bpe_pair[2]):
        ids = tokenizer.encode(data, add_bos=False)
        assert all(0 <= i < tokenizer.n_vocab for i in ids)
        assert tokenizer.decode(ids) == data


def test_bad_token_ids_raise_value_error(sentencepiece_pair):
    _, tokenizer = sentencepiece_pair
    for bad in (-1, tokenizer.n_vocab, 2**40):
        with pytest.raises(ValueError):
            tokenizer.token_to_bytes(bad)
        with pytest.raises(ValueError):
            tokenizer.decode([0, bad])
        with pytest.raises(ValueError):
            _core.StreamDecoder(tokenizer).feed(bad)
        with pytest.raises(ValueError):
            tokenizer.is_end_of_generation(bad)
    with pytest.raises(TypeError):
        tokenizer.encode(12345)


@pytest.mark.parametrize("text", ["北京龘靐 emoji 😀🎉 and ünïcödé", "龘", "plain ascii text"])
def test_stream_decoder_never_splits_characters(sentencepiece_pair, bpe_pair, text):
    for tokenizer in (sentencepiece_pair[1], bpe_pair[2]):
        ids = tokenizer.encode(text, add_bos=True)
        decoder = _core.StreamDecoder(tokenizer)
        pieces = [decoder.feed(i) for i in ids]
        pieces.append(decoder.flush())
        assert "".join(pieces) == text
        assert not any("\ufffd" in p for p in pieces)


def test_stream_decoder_holds_back_split_characters(sentencepiece_pair):
    processor, tokenizer = sentencepiece_pair
    byte_ids = [processor.piece_to_id(f"<0x{b:02X}>") for b in "😀".encode()]
    decoder = _core.StreamDecoder(tokenizer)
    assert [decoder.feed(i) for i in byte_ids] == ["", "", "", "😀"]
    # A cut-off character comes out as U+FFFD on flush; a byte that can never start one,
    # at once.
    assert decoder.feed(byte_ids[0]) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.feed(processor.piece_to_id("<0xFF>")) == "\ufffd"
    # Without a leading BOS nothing is stripped: these are generated tokens.
    decoder = _core.StreamDecoder(tokenizer)
    assert "".join(decoder.feed(i) for i in processor.encode("Hi there")) == " Hi there"


# ---- bad files -----------------------------------------------------------------------------

def test_bad_vocabulary_metadata(tmp_path):
    tokens = ["<unk>", "a", "b"]
    with pytest.raises(ModelFormatError, match="token_type") as info:
        _core.Tokenizer(write_vocab_gguf(tmp_path / "types.gguf", model="llama", tokens=tokens,
                                         token_types=[1, 1], scores=[0.0] * 3))
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ModelFormatError, match="scores"):
        _core.Tokenizer(write_vocab_gguf(tmp_path / "scores.gguf", model="llama", tokens=tokens,
                                         token_types=[1] * 3, scores=[0.0]))
    with pytest.raises(ModelFormatError, match="token type"):
        _core.Tokenizer(write_vocab_gguf(tmp_path / "typeval.gguf", model="llama", tokens=tokens,
                                         token_types=[1, 9, 1], scores=[0.0] * 3))
    with pytest.raises(ModelFormatError, match="merges"):
        _core.Tokenizer(write_vocab_gguf(tmp_path / "merges.gguf", model="gpt2", tokens=tokens,
                                         token_types=[1] * 3))
    with pytest.raises(UnsupportedModelError, match="bert"):
        _core.Tokenizer(write_vocab_gguf(tmp_path / "bert.gguf", model="bert", tokens=tokens,
                                         token_types=[1] * 3))
    ggufgen.write_file(gguf.GGUFWriter(str(tmp_path / "none.gguf"), arch="llama"))
    with pytest.raises(ModelFormatError, match="tokenizer.ggml.model"):
        _core.Tokenizer(str(tmp_path / "none.gguf"))


# ---- speed -----------------------------------------------------------------------------------

def test_encoding_100kb_is_fast(sentencepiece_pair, bpe_pair):
    text = "".join(CORPUS)
    text = (text * (100_000 // len(text) + 1))[:100_000]
    for tokenizer in (sentencepiece_pair[1], bpe_pair[2]):
        start = time.perf_counter()
        ids = tokenizer.encode(text, add_bos=False)
        elapsed = time.perf_counter() - start
        assert tokenizer.decode(ids) == text.encode()
        assert elapsed < 1.0, f"{elapsed:.3f} s for 100 KB"
