"""Tests for the closed-vocabulary tokenizer (ecdit/systems/text.py)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdit.core.config import TEXT_SEGMENT_OFFSET, preset
from ecdit.core.params import init_model
from ecdit.systems import shapes as S
from ecdit.systems.checkpoint import flatten
from ecdit.systems.text import MAX_LEN, VOCAB, check_config, detokenize, encode, tokenize, tokenize_batch

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


# ---------------------------------------------------------------------------------------------
# Segment marks (ModelConfig.text_segments)
# ---------------------------------------------------------------------------------------------

def _phrase(o) -> list[str]:
    """The words of one object's noun phrase in a two-object caption, from the prompt's own parts."""
    return ["a"] + ([o.colour] if o.colour else []) + [o.shape]


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_segments_shift_exactly_the_second_noun_phrase(category):
    """For every caption of the grammar: the segment-marked ids are the plain ids, plus
    TEXT_SEGMENT_OFFSET on the words of the second object's noun phrase and nowhere else (single
    objects, colours and counts have none); the mask is unchanged and the caption round-trips."""
    for spec in S.all_prompts(category):
        plain, mask = tokenize(spec.text)
        marked, marked_mask = tokenize(spec.text, segments=True)
        assert np.array_equal(mask, marked_mask)
        shifted = (marked - plain)[mask]
        n = len(spec.text.split())
        tail = _phrase(spec.objects[1]) if len(spec.objects) == 2 else []
        assert shifted.tolist() == [0] * (n - len(tail)) + [TEXT_SEGMENT_OFFSET] * len(tail), spec.text
        assert [VOCAB[i] for i in plain[n - len(tail):n]] == tail
        assert detokenize(marked, marked_mask) == spec.text


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_layout_marks_the_noun_phrase_of_the_object_right_of_or_below_the_other(category):
    """rule "layout": in a position caption exactly the words of the object that lies right / below
    are shifted ("A right of B" / "A below B": A's phrase, at the start; otherwise B's, at the end);
    every other caption is marked as by "order"; the caption round-trips either way."""
    for spec in S.all_prompts(category):
        plain, mask = tokenize(spec.text)
        layout, layout_mask = tokenize(spec.text, segments=True, rule="layout")
        assert np.array_equal(mask, layout_mask)
        if category != "position":
            assert np.array_equal(layout, tokenize(spec.text, segments=True, rule="order")[0]), spec.text
            continue
        n = len(spec.text.split())
        shifted = ((layout - plain)[mask] == TEXT_SEGMENT_OFFSET).tolist()
        assert set((layout - plain)[mask].tolist()) <= {0, TEXT_SEGMENT_OFFSET}
        if spec.relation in ("right of", "below"):
            k = len(_phrase(spec.objects[0]))
            assert shifted == [True] * k + [False] * (n - k), spec.text
            assert [VOCAB[i] for i in plain[:k]] == _phrase(spec.objects[0])
        else:
            k = len(_phrase(spec.objects[1]))
            assert shifted == [False] * (n - k) + [True] * k, spec.text
        assert detokenize(layout, layout_mask) == spec.text


def test_layout_marks_the_same_object_in_a_caption_and_its_mirrored_wording():
    """"A right of B" and "B left of A" describe one scene: under "layout" the marked ids (A's
    phrase) and the unmarked noun ids (B's) are the same in both; under "order" they are not."""
    for spec in S.all_prompts("position"):
        mirror = S.make_prompt("position", spec.objects[::-1], S._INVERSE[spec.relation])
        nouns = {}
        for rule in ("order", "layout"):
            a, _ = tokenize(spec.text, segments=True, rule=rule)
            b, _ = tokenize(mirror.text, segments=True, rule=rule)
            nouns[rule] = [sorted(r[r >= TEXT_SEGMENT_OFFSET].tolist()) for r in (a, b)]
        assert nouns["layout"][0] == nouns["layout"][1], spec.text
        assert nouns["order"][0] != nouns["order"][1], spec.text


def test_segment_rules_are_checked_by_name_and_encode_follows_the_config():
    with pytest.raises(ValueError, match="rule"):
        tokenize("a circle below a square", segments=True, rule="size")
    with pytest.raises(ValueError, match="text_segment_rule"):
        preset("tiny", text_segments=True, text_segment_rule="left")
    texts = ["a circle to the right of a square", "a circle and a square"]
    cfg = preset("tiny", text_segments=True, text_segment_rule="layout")
    assert np.array_equal(encode(texts, cfg)[0], tokenize_batch(texts, cfg.max_text_len, True, "layout")[0])
    order = preset("tiny", text_segments=True, text_segment_rule="order")
    assert not np.array_equal(encode(texts, cfg)[0][0], encode(texts, order)[0][0])
    assert np.array_equal(encode(texts, cfg)[0][1], encode(texts, order)[0][1])


def test_segments_leave_the_null_caption_and_the_batch_form_agrees():
    ids, mask = tokenize("", segments=True)
    assert ids.tolist() == tokenize("")[0].tolist() and mask.sum() == 1
    texts = ["a circle and a square", "", "a ring below a cross", "two crosses"]
    ids, mask = tokenize_batch(texts, segments=True)
    for t, row, m in zip(texts, ids, mask):
        assert np.array_equal(row, tokenize(t, segments=True)[0]) and detokenize(row, m) == t


def test_encode_follows_the_configs_text_segments():
    texts = ["a red circle and a blue square"]
    on, off = preset("tiny", text_segments=True), preset("tiny", text_segments=False)
    assert np.array_equal(encode(texts, on)[0], tokenize_batch(texts, on.max_text_len, segments=True)[0])
    assert np.array_equal(encode(texts, off)[0], tokenize_batch(texts, off.max_text_len)[0])
    assert not np.array_equal(encode(texts, on)[0], encode(texts, off)[0])


def test_segments_must_be_a_bool_and_shifted_special_ids_do_not_detokenize():
    with pytest.raises(ValueError, match="segments"):
        tokenize("a circle", segments="yes")
    for bad in (TEXT_SEGMENT_OFFSET, TEXT_SEGMENT_OFFSET + 1, 2 * TEXT_SEGMENT_OFFSET):
        with pytest.raises(ValueError, match="ids"):
            detokenize(np.array([2, bad]))


def test_a_model_with_segments_needs_room_for_the_second_phrase_ids():
    with pytest.raises(ValueError, match="vocab_size"):
        preset("tiny", text_segments=True, vocab_size=2 * TEXT_SEGMENT_OFFSET - 1)
    cfg = preset("tiny", text_segments=True)
    check_config(cfg)                                # 64 rows hold the words and their copies


def test_turning_the_marks_on_changes_only_the_marked_rows_of_the_init():
    """init_model: with text_segments, a seed's parameters equal those without, except the copies'
    embedding rows OFFSET..2 OFFSET - 1, so a run with the marks is paired with the preset's run."""
    plain = init_model(preset("tiny", text_segments=False), seed=3)
    marked = init_model(preset("tiny", text_segments=True), seed=3)
    k = TEXT_SEGMENT_OFFSET
    flat_plain, flat_marked = flatten(plain, "params"), flatten(marked, "params")   # name -> array
    assert flat_plain.keys() == flat_marked.keys()
    for name, a in flat_plain.items():
        b = flat_marked[name]
        if name == "params/text/embed":
            np.testing.assert_array_equal(np.delete(a, np.s_[k:2 * k], axis=0), np.delete(b, np.s_[k:2 * k], axis=0))
            assert not np.array_equal(a[k:2 * k], b[k:2 * k])
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_second_phrase_rows_start_as_their_words_plus_one_segment_vector():
    """init_text_encoder: row OFFSET + w = row w + s for one shared s != 0; without segments the
    rows are independent draws (the difference is not one shared vector)."""
    embed = init_model(preset("tiny", text_segments=True), seed=3)["text"]["embed"]      # (V, Dy)
    k = TEXT_SEGMENT_OFFSET
    diff = embed[k:2 * k] - embed[:k]                                                     # (k, Dy)
    np.testing.assert_allclose(diff, np.broadcast_to(diff[0], diff.shape), atol=1e-6)
    assert np.linalg.norm(diff[0]) > 1.0
    plain = init_model(preset("tiny", text_segments=False), seed=3)["text"]["embed"]
    assert np.abs((plain[k:2 * k] - plain[:k]) - (plain[k] - plain[0])).max() > 1.0
