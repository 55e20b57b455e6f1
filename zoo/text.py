"""Tokenizers for the text models, built with Hugging Face `tokenizers` and carried in the checkpoint.

Word-level vocabulary (lower-cased, `<br />` removed, words and punctuation runs split), `[PAD]` = 0 and
`[UNK]` = 1. Reviews longer than `max_len` keep their first `head_tokens` and their last
`max_len - head_tokens` tokens (the end of a review often holds its verdict)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"


def build_tokenizer(texts: Iterable[str], vocab_size: int = 10000) -> str:
    """Train a word-level tokenizer on `texts`; returns its JSON document."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"<br\s*/?>"), " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer.to_str()


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def truncate(ids: Sequence[int], max_len: int, rule: str, head_tokens: int) -> list[int]:
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    if rule == "head":
        return ids[:max_len]
    if rule == "head_tail":
        if not 0 <= head_tokens <= max_len:
            raise ValueError(f"preprocessing head_tokens={head_tokens} must lie in 0..max_len={max_len}")
        return ids[:head_tokens] + ids[len(ids) - (max_len - head_tokens):]
    raise ValueError(f"unknown truncation rule {rule!r}; use 'head' or 'head_tail'")


def encode(texts: Sequence[str], tokenizer_json: str, preprocessing: dict) -> list[list[int]]:
    """Token ids per text, truncated by the spec's rule; an empty text becomes [UNK] (length >= 1)."""
    tok = _tokenizer(tokenizer_json)
    unk = preprocessing["unk_id"]
    out = []
    for enc in tok.encode_batch(list(texts)):
        ids = truncate(enc.ids, preprocessing["max_len"], preprocessing["truncation"], preprocessing.get("head_tokens", 0))
        out.append(ids or [unk])
    return out


def pad(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> np.ndarray:
    """Right-pad to the longest sequence (or `width`): int64 (N, T)."""
    width = width or max(len(s) for s in sequences)
    out = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out
