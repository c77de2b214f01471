"""Shared vocabulary of two tokenizers, matched by decoded text.

Each token's raw piece is turned into the text it stands for, with the tokenizer
family's word-boundary marker made explicit as one leading space:
  byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM2): the piece is mapped back through the
      byte-to-unicode table to its bytes ('Ġ' -> ' ', 'Ċ' -> '\\n'); pieces that are
      not complete UTF-8 (partial multi-byte characters) have no text and are left out;
  SentencePiece (Llama-2, Mistral, T5): '▁' -> ' '; byte-fallback pieces '<0x..>' are
      left out;
  WordPiece (BERT, MiniLM): '##x' (continuation) -> 'x', any other piece 'x' starts a
      word -> ' x'.
Special tokens (the tokenizer's special ids and added tokens marked special) are
excluded. Two tokens match when their normalised texts are equal; with
`ignore_leading_space=True` the leading space is dropped before matching and, where a
vocabulary has both ' x' and 'x', the word-initial ' x' represents it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import VerilensError


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _bytes_to_unicode()


def _backend_json(tokenizer) -> dict:
    bt = getattr(tokenizer, "backend_tokenizer", None)
    if bt is None:
        return {}
    try:
        return json.loads(bt.to_str())
    except Exception:  # noqa: BLE001
        return {}


def tokenizer_family(tokenizer) -> str:
    """"bytelevel", "sentencepiece", "wordpiece" or "plain" (no marker convention)."""
    spec = _backend_json(tokenizer)
    model = (spec.get("model") or {}).get("type")
    if model == "WordPiece":
        return "wordpiece"

    def types(node):
        if not node:
            return []
        out = [node.get("type")]
        for key in ("decoders", "pretokenizers"):
            for sub in node.get(key) or []:
                out += types(sub)
        return out

    kinds = types(spec.get("decoder")) + types(spec.get("pre_tokenizer"))
    if "ByteLevel" in kinds:
        return "bytelevel"
    if "Metaspace" in kinds or "▁" in json.dumps(spec.get("decoder") or {}, ensure_ascii=False):
        return "sentencepiece"
    if spec.get("model", {}).get("byte_fallback") or getattr(tokenizer, "sp_model", None) is not None:
        return "sentencepiece"
    # No backend description: guess from the pieces.
    vocab = tokenizer.get_vocab()
    pieces = list(vocab)[:5000]
    if sum("Ġ" in p for p in pieces) > 20:
        return "bytelevel"
    if sum(p.startswith("▁") for p in pieces) > 20:
        return "sentencepiece"
    if sum(p.startswith("##") for p in pieces) > 20:
        return "wordpiece"
    return "plain"


def normalise_piece(piece: str, family: str):
    """The text a raw vocabulary piece stands for (word boundary = one leading space),
    or None when it has no standalone text."""
    if family == "bytelevel":
        try:
            raw = bytes(_BYTE_DECODER[ch] for ch in piece)
        except KeyError:
            return piece  # an added token outside the byte alphabet: its text is itself
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if family == "sentencepiece":
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            return None
        return piece.replace("▁", " ")
    if family == "wordpiece":
        if piece.startswith("##"):
            return piece[2:] or None
        return " " + piece
    return piece


def _special_ids(tokenizer) -> set:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    dec = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, tok in dec.items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


class SharedVocab(tuple):
    """(idx_a, idx_b, strings) with the counts in `.stats`; unpacks like a 3-tuple."""

    stats: dict

    def __new__(cls, idx_a, idx_b, strings, stats):
        obj = super().__new__(cls, (idx_a, idx_b, strings))
        obj.stats = stats
        return obj

    @property
    def idx_a(self):
        return self[0]

    @property
    def idx_b(self):
        return self[1]

    @property
    def strings(self):
        return self[2]


def _table(tokenizer, ignore_leading_space: bool):
    family = tokenizer_family(tokenizer)
    vocab = tokenizer.get_vocab()
    special = _special_ids(tokenizer)
    table: dict[str, int] = {}
    n_special = n_untext = n_dup = 0
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i in special:
            n_special += 1
            continue
        text = normalise_piece(piece, family)
        if text is None or text == "":
            n_untext += 1
            continue
        key = text
        initial = text.startswith(" ")
        if ignore_leading_space:
            key = text[1:] if initial else text
            if not key:
                key = text
        if key in table:
            n_dup += 1
            if ignore_leading_space and initial:
                table[key] = i  # the word-initial form represents the key
            continue
        table[key] = i
    stats = {"family": family, "vocab_size": len(vocab), "special": n_special,
             "no_text": n_untext, "duplicates": n_dup, "usable": len(table)}
    return table, stats


def shared_vocab(tokenizer_a, tokenizer_b, *, ignore_leading_space: bool = False,
                 max_tokens: int | None = None, seed: int = 0) -> SharedVocab:
    """Tokens both vocabularies hold, matched by normalised decoded text.

    Returns (idx_a, idx_b, strings): int64 arrays of token ids in each vocabulary and the
    matched texts, sorted by idx_a; `.stats` has the counts (vocabulary sizes, special
    tokens excluded, pieces without text, shared). `max_tokens` keeps a uniform random
    sample of that many (seeded), for quick runs. Raises VerilensError when fewer than 2
    tokens are shared."""
    for name, tok in (("tokenizer_a", tokenizer_a), ("tokenizer_b", tokenizer_b)):
        if not hasattr(tok, "get_vocab"):
            raise VerilensError(f"{name} is not a tokenizer (no get_vocab()); pass model.tokenizer")
    ta, sa = _table(tokenizer_a, ignore_leading_space)
    tb, sb = _table(tokenizer_b, ignore_leading_space)
    keys = [k for k in ta if k in tb]
    keys.sort(key=lambda k: ta[k])
    stats = {"a": sa, "b": sb, "shared": len(keys), "ignore_leading_space": ignore_leading_space}
    if len(keys) < 2:
        raise VerilensError(
            f"the tokenizers share only {len(keys)} tokens (a: {sa['usable']} usable of {sa['vocab_size']}, "
            f"b: {sb['usable']} of {sb['vocab_size']}); try ignore_leading_space=True, or check that both "
            f"are text tokenizers of comparable languages")
    if max_tokens is not None and len(keys) > max_tokens:
        if max_tokens < 2:
            raise VerilensError("max_tokens must be at least 2")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(keys), size=max_tokens, replace=False))
        keys = [keys[i] for i in pick]
        stats["sampled"] = len(keys)
    idx_a = np.array([ta[k] for k in keys], dtype=np.int64)
    idx_b = np.array([tb[k] for k in keys], dtype=np.int64)
    return SharedVocab(idx_a, idx_b, keys, stats)
