import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from verilens import geometry as G
from verilens.errors import VerilensError
from verilens.geometry.vocab import normalise_piece, tokenizer_family


def bytelevel_tok(words):
    vocab = {"<|endoftext|>": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def wordpiece_tok(words):
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def test_normalise_pieces():
    assert normalise_piece("Ġhello", "bytelevel") == " hello"
    assert normalise_piece("Ċ", "bytelevel") == "\n"
    assert normalise_piece("Ã©", "bytelevel") == "é"
    assert normalise_piece("Ã", "bytelevel") is None  # half a UTF-8 character
    assert normalise_piece("▁hello", "sentencepiece") == " hello"
    assert normalise_piece("<0x0A>", "sentencepiece") is None
    assert normalise_piece("##ing", "wordpiece") == "ing"
    assert normalise_piece("hello", "wordpiece") == " hello"


def test_shared_vocab_bytelevel_vs_wordpiece():
    a = bytelevel_tok(["Ġthe", "the", "Ġcat", "ing", "Ġdog", "x", "Ã"])
    b = wordpiece_tok(["the", "##the", "cat", "##ing", "bird", "x"])
    assert tokenizer_family(a) == "bytelevel" and tokenizer_family(b) == "wordpiece"
    idx_a, idx_b, strings = sv = G.shared_vocab(a, b)
    assert strings == [" the", "the", " cat", "ing"]
    va, vb = a.get_vocab(), b.get_vocab()
    assert list(idx_a) == [va["Ġthe"], va["the"], va["Ġcat"], va["ing"]]
    assert list(idx_b) == [vb["the"], vb["##the"], vb["cat"], vb["##ing"]]
    assert sv.stats["shared"] == 4 and sv.stats["a"]["special"] == 1 and sv.stats["b"]["special"] == 4
    assert sv.stats["a"]["no_text"] == 1  # "Ã"
    # ignoring the leading space: " the"/"the" collapse (word-initial wins), "x" now matches
    ia, ib, s2 = G.shared_vocab(a, b, ignore_leading_space=True)
    assert s2 == ["the", "cat", "ing", "x"] and ia[0] == va["Ġthe"] and ib[0] == vb["the"]
    sub = G.shared_vocab(a, b, max_tokens=2, seed=0)
    assert len(sub.strings) == 2 and set(sub.strings) <= set(strings)


def test_too_few_shared():
    a = bytelevel_tok(["Ġthe"])
    b = wordpiece_tok(["##cat"])
    with pytest.raises(VerilensError, match="share only 0 tokens"):
        G.shared_vocab(a, b)
