"""Token <-> text helpers shared by the serving models and the smoke check.

Self-contained (numpy and a tokenizer only): the file is copied next to each
Python model of a published repository, and imported from here by the smoke
check, so the text the server returns and the text it is checked against are
decoded by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Triton's word-list layout (stop_words_list, bad_words_list): row 0 holds the
# concatenated token ids of every word, row 1 the cumulative end offset of each
# word, padded with -1 (ids padded with 0).
WORD_LIST_ROWS = 2


def to_word_lists(batch: Sequence[Sequence[str]], encode: Callable[[str], list[int]]) -> np.ndarray:
    """[batch, 2, L] int32 word lists for lists of words (L >= 1 even when every list is empty)."""
    rows = []
    for words in batch:
        ids: list[int] = []
        offsets: list[int] = []
        for word in words:
            tokens = encode(word)
            if tokens:
                ids += tokens
                offsets.append(len(ids))
        rows.append((ids, offsets))
    width = max([1] + [max(len(ids), len(offsets)) for ids, offsets in rows])
    out = np.zeros((len(rows), WORD_LIST_ROWS, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, (ids, offsets) in enumerate(rows):
        out[i, 0, : len(ids)] = ids
        out[i, 1, : len(offsets)] = offsets
    return out


def from_word_list(array: np.ndarray) -> list[list[int]]:
    """The token sequences of one [2, L] word list."""
    ids, offsets = array[0].tolist(), array[1].tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end > start:
            words.append([int(t) for t in ids[start:end]])
        start = end
    return words


def stop_position(tokens: Sequence[int], stop_words: Sequence[Sequence[int]]) -> int | None:
    """Length of `tokens` up to and including the first completed stop word, or None."""
    for end in range(1, len(tokens) + 1):
        for word in stop_words:
            if len(word) <= end and list(tokens[end - len(word) : end]) == list(word):
                return end
    return None


class PieceDecoder:
    """Decodes a piece of generated tokens so that pieces concatenate to the whole.

    SentencePiece tokenizers (Mistral's) drop the leading space of the first token
    they decode, so a streamed "▁the" would lose its space. Decoding the piece
    behind an anchor token and cutting the anchor's text off keeps it.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.anchor = tokenizer.encode("a", add_special_tokens=False)[-1:]
        self.anchor_text = tokenizer.decode(self.anchor, skip_special_tokens=True)

    def decode(self, tokens: Sequence[int]) -> str:
        text = self.tokenizer.decode(self.anchor + [int(t) for t in tokens], skip_special_tokens=True)
        return text[len(self.anchor_text) :]


class TextStream:
    """Turns tokens arriving one response at a time into text deltas.

    A delta is withheld while the text ends in U+FFFD: a multi-byte character
    whose bytes span several tokens is emitted whole, once it is complete.
    """

    def __init__(self, decoder: PieceDecoder) -> None:
        self.decoder = decoder
        self.tokens: list[int] = []
        self.sent = 0

    def push(self, tokens: Sequence[int]) -> str:
        self.tokens += [int(t) for t in tokens]
        text = self.decoder.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[self.sent :], len(text)
        return delta

    def flush(self) -> str:
        text = self.decoder.decode(self.tokens)
        delta, self.sent = text[self.sent :], len(text)
        return delta
