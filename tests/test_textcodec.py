"""The serving models' text helpers: Triton word lists, stop words, streamed text that concatenates to the whole."""

from __future__ import annotations

import numpy as np

from pipeline.serving.models.textcodec import (
    PieceDecoder,
    TextStream,
    from_word_list,
    stop_position,
    to_word_lists,
)

WORDS = {"stop": [7, 8], "end": [9], "": []}


def test_word_lists_use_tritons_ids_and_offsets_layout():
    lists = to_word_lists([["stop", "end"], ["end"], []], WORDS.__getitem__)
    assert lists.dtype == np.int32 and lists.shape == (3, 2, 3)
    assert lists[0].tolist() == [[7, 8, 9], [2, 3, -1]]
    assert lists[1].tolist() == [[9, 0, 0], [1, -1, -1]]
    assert lists[2].tolist() == [[0, 0, 0], [-1, -1, -1]]
    assert [from_word_list(row) for row in lists] == [[[7, 8], [9]], [[9]], []]


def test_words_that_encode_to_nothing_are_left_out():
    (lists,) = to_word_lists([["", "end"]], WORDS.__getitem__)
    assert lists.tolist() == [[9], [1]]
    assert from_word_list(lists) == [[9]]


def test_stop_position_is_the_end_of_the_first_completed_stop_word():
    assert stop_position([1, 7, 8, 9, 9], [[7, 8], [9]]) == 3
    assert stop_position([1, 9, 7, 8], [[7, 8], [9]]) == 2
    assert stop_position([1, 7, 2, 8], [[7, 8]]) is None
    assert stop_position([1, 2], []) is None


class ByteTokenizer:
    """Token i is byte i; 'a' is the anchor. Decoding invalid UTF-8 gives U+FFFD, as tokenizers do."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode())

    def decode(self, tokens, skip_special_tokens=True):
        return bytes(tokens).decode("utf-8", errors="replace")


def test_pieces_concatenate_to_the_whole_and_characters_arrive_whole():
    decoder = PieceDecoder(ByteTokenizer())
    tokens = list("né ok".encode())  # 'é' is two bytes, so two tokens
    stream = TextStream(decoder)
    deltas = [stream.push([t]) for t in tokens] + [stream.flush()]
    assert "".join(deltas) == decoder.decode(tokens) == "né ok"
    assert "\ufffd" not in "".join(deltas)
    assert deltas[1] == "" and deltas[2] == "é"  # the first byte of 'é' is held back
