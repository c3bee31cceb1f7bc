"""Tests for the closed-vocabulary tokenizer (ecdit/systems/text.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdit.systems import shapes as S
from ecdit.systems.text import MAX_LEN, VOCAB, detokenize, tokenize, tokenize_batch

ALL_CAPTIONS = [p.text for c in S.CATEGORIES for p in S.all_prompts(c)]
WORDS = VOCAB[2:]


def test_vocab_is_pad_and_null_then_sorted_distinct_words():
    assert VOCAB[0] == "<pad>" and VOCAB[1] == "<null>"
    assert len(set(VOCAB)) == len(VOCAB)
    assert list(WORDS) == sorted(WORDS)


def test_vocab_covers_every_word_the_grammar_can_emit():
    emitted = {w for t in ALL_CAPTIONS for w in t.split()}
    assert emitted == set(WORDS)          # covers all, and holds nothing the grammar never says
    assert MAX_LEN == max(len(t.split()) for t in ALL_CAPTIONS) == 8


def test_every_caption_tokenizes_and_round_trips():
    ids, mask = tokenize_batch(ALL_CAPTIONS)
    assert ids.shape == mask.shape == (len(ALL_CAPTIONS), MAX_LEN)
    assert ids.dtype == np.int32 and mask.dtype == bool
    for t, row, m in zip(ALL_CAPTIONS, ids, mask):
        assert detokenize(row, m) == t


def test_tokenize_lowercases_and_pads_after_the_words():
    ids, mask = tokenize("A Red  CIRCLE")
    assert ids.shape == mask.shape == (MAX_LEN,) and ids.dtype == np.int32 and mask.dtype == bool
    assert [VOCAB[i] for i in ids[:3]] == ["a", "red", "circle"]
    assert mask.tolist() == [True] * 3 + [False] * (MAX_LEN - 3)
    assert np.all(ids[3:] == 0)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_caption_is_the_null_token(text):
    ids, mask = tokenize(text)
    assert ids.tolist() == [1] + [0] * (MAX_LEN - 1)
    assert mask.tolist() == [True] + [False] * (MAX_LEN - 1)


def test_unknown_word_is_named_and_message_is_short():
    with pytest.raises(ValueError, match="unknown word 'purple'") as e:
        tokenize("a purple circle")
    assert len(str(e.value)) < 200
    with pytest.raises(ValueError, match="unknown word '<null>'"):
        tokenize("<null>")                        # special tokens are not words


def test_more_words_than_max_len_is_an_error_naming_max_len():
    with pytest.raises(ValueError, match="max_len"):
        tokenize("a circle to the right of a triangle", max_len=7)
    tokenize("a circle to the right of a triangle", max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        tokenize("a circle", max_len=0)


def test_non_string_input_is_an_error_naming_the_argument():
    with pytest.raises(ValueError, match="text"):
        tokenize(None)
    with pytest.raises(ValueError, match="texts"):
        tokenize_batch("a circle")


def test_batch_error_names_the_row_and_word():
    with pytest.raises(ValueError, match=r"texts\[1\].*'hexagon'"):
        tokenize_batch(["a circle", "a hexagon"])


def test_batch_pads_to_max_len_and_makes_empty_captions_the_null_token():
    ids, mask = tokenize_batch(["", "two rings"], max_len=4)
    assert ids.shape == (2, 4)
    assert ids[0].tolist() == [1, 0, 0, 0] and mask.sum(axis=1).tolist() == [1, 2]
    ids, mask = tokenize_batch([])
    assert ids.shape == (0, MAX_LEN)


@pytest.mark.parametrize("length", range(MAX_LEN + 1))
@given(data=st.data())
def test_any_word_sequence_round_trips(length, data):
    """Every length from the empty caption (the null token) to a full row (explicit cases), drawn words."""
    words = data.draw(st.lists(st.sampled_from(WORDS), min_size=length, max_size=length), label="words")
    text = " ".join(words)
    ids, mask = tokenize(text)
    assert mask.sum() == max(len(words), 1)
    assert np.all(mask[:mask.sum()]) and not np.any(mask[mask.sum():])
    assert detokenize(ids, mask) == text
