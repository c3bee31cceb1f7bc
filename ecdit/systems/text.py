"""Closed-vocabulary, word-level tokenizer for the captioned-shapes grammar.

EC-DiT conditions on a frozen text encoder's token embeddings. Our captions come from a tiny
grammar (`ecdit.systems.shapes`), so a word-level vocabulary covers them exactly: no sub-words, no
out-of-vocabulary fallback. An unknown word is a bug in the caller (or a prompt outside the
grammar), so it raises rather than mapping to an <unk> token.

Special tokens: index 0 ``<pad>`` fills positions after the caption (mask False); index 1
``<null>`` is the whole of the empty caption "" that classifier-free guidance uses as its
unconditional input (one valid token, so attention over the text never sees an all-False mask).
The other words follow in sorted order, so ids are stable as long as the grammar is.
"""
from __future__ import annotations

from itertools import chain

import numpy as np

from ecdit.core.checks import one_of
from ecdit.core.config import NULL_ID, PAD_ID, SEGMENT_RULES, TEXT_SEGMENT_OFFSET, ModelConfig
from ecdit.systems.shapes import CATEGORIES, MIRRORED_RELATIONS, RELATION_WORDS, all_prompts, grammar_words

PAD, NULL = "<pad>", "<null>"
VOCAB: tuple[str, ...] = (PAD, NULL) + grammar_words()      # ids 0 and 1: the model's PAD_ID, NULL_ID
WORD_TO_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
if (WORD_TO_ID[PAD], WORD_TO_ID[NULL]) != (PAD_ID, NULL_ID):       # the model builds "" from these
    raise RuntimeError("the tokenizer's <pad> and <null> ids must be ecdit.core.config.PAD_ID, NULL_ID")
_WORD_IDS = {w: i for w, i in WORD_TO_ID.items() if w not in (PAD, NULL)}  # what captions may use
if len(VOCAB) > TEXT_SEGMENT_OFFSET:                                 # second-phrase ids must not collide
    raise RuntimeError(f"the tokenizer's {len(VOCAB)} ids must fit below ecdit.core.config.TEXT_SEGMENT_OFFSET")
# The word that ends the first noun phrase's span: "and" (two objects, colour attribution) or the last
# word of a relation ("of", "above", "below"); every later word belongs to the second noun phrase.
PHRASE_BREAKS: frozenset = frozenset({"and"} | {ws[-1] for ws in RELATION_WORDS.values()})
_RELATION_OF_WORDS: dict[tuple[str, ...], str] = {ws: rel for rel, ws in RELATION_WORDS.items()}
_RELATION_WORD_SET: frozenset = frozenset(w for ws in RELATION_WORDS.values() for w in ws)
# Every id `tokenize` can emit and its word: the vocabulary, and the words' second-phrase copies.
_ID_TO_WORD: dict[int, str] = dict(enumerate(VOCAB)) | {i + TEXT_SEGMENT_OFFSET: w for w, i in _WORD_IDS.items()}

# Longest caption the grammar can emit ("a circle to the right of a triangle": 8 words).
MAX_LEN: int = max(len(p.text.split()) for p in chain.from_iterable(all_prompts(c) for c in CATEGORIES))


def check_config(config: ModelConfig) -> None:
    """The model's text input must hold this tokenizer: vocab_size >= len(VOCAB) and max_text_len
    >= the longest caption. ValueError naming the field otherwise."""
    if config.vocab_size < len(VOCAB):
        raise ValueError(f"vocab_size: {config.vocab_size} is smaller than the {len(VOCAB)} words of "
                         "ecdit.systems.text.VOCAB")
    if config.max_text_len < MAX_LEN:
        raise ValueError(f"max_text_len: {config.max_text_len} is shorter than the longest caption "
                         f"({MAX_LEN} words)")


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len: expected a positive int, got {max_len!r}")
    return int(max_len)


def _marked_span(words: list[str], rule: str) -> tuple[int, int]:
    """[start, stop) of the words a segment rule marks in a caption (ModelConfig.text_segment_rule).

    "order": the words after the first phrase break (the second noun phrase). "layout": the same,
    except in a caption whose relation is "right of" or "below", where the first noun phrase (the
    words before the relation) is the one that lies right of / below the other and is marked.
    """
    brk = next((i + 1 for i, w in enumerate(words) if w in PHRASE_BREAKS), len(words))
    if rule == "layout":
        rel = next((i for i, w in enumerate(words) if w in _RELATION_WORD_SET), None)
        if rel is not None and _RELATION_OF_WORDS.get(tuple(words[rel:brk])) in MIRRORED_RELATIONS:
            return 0, rel
    return brk, len(words)


def tokenize(text: str, max_len: int = MAX_LEN, segments: bool = False,
             rule: str = "order") -> tuple[np.ndarray, np.ndarray]:
    """Token ids and validity mask of one caption.

    Lower-cases, splits on whitespace, maps each word to its id; "" (or only whitespace)
    becomes the single <null> token. Returns (ids (max_len,) int32, mask (max_len,) bool), padded
    with <pad> / False. With `segments` (ModelConfig.text_segments), each word after the first
    phrase break ("and", or a relation's last word: PHRASE_BREAKS), i.e. the second noun phrase,
    gets its id plus TEXT_SEGMENT_OFFSET; with `rule` "layout" (SEGMENT_RULES) a "right of" or
    "below" caption marks its first noun phrase instead, the object that lies right / below.
    Raises ValueError for an unknown word (naming it), an unknown rule or more than `max_len` words.
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    if not isinstance(segments, (bool, np.bool_)):
        raise ValueError(f"segments: expected a bool, got {segments!r}")
    one_of("rule", rule, SEGMENT_RULES)
    max_len = _check_max_len(max_len)
    words = text.lower().split()
    if len(words) > max_len:
        raise ValueError(f"text: {len(words)} words exceed max_len={max_len}: {text!r}")
    for w in words:
        if w not in _WORD_IDS:
            raise ValueError(f"text: unknown word {w!r} in {text!r} (the vocabulary is the "
                             f"{len(VOCAB) - 2} words of the captioned-shapes grammar, ecdit.systems.text.VOCAB)")
    ids = np.full((max_len,), PAD_ID, dtype=np.int32)                         # (L,)
    mask = np.zeros((max_len,), dtype=bool)                                  # (L,)
    row = [_WORD_IDS[w] for w in words] or [NULL_ID]
    if segments and words:
        start, stop = _marked_span(words, rule)
        row = row[:start] + [i + TEXT_SEGMENT_OFFSET for i in row[start:stop]] + row[stop:]
    ids[:len(row)] = row
    mask[:len(row)] = True
    return ids, mask


def tokenize_batch(texts, max_len: int = MAX_LEN, segments: bool = False,
                   rule: str = "order") -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a sequence of captions: (ids (B, max_len) int32, mask (B, max_len) bool)."""
    if isinstance(texts, str):
        raise ValueError("texts: expected a sequence of str, got a single str")
    texts = list(texts)
    max_len = _check_max_len(max_len)
    ids = np.full((len(texts), max_len), PAD_ID, dtype=np.int32)              # (B, L)
    mask = np.zeros((len(texts), max_len), dtype=bool)                       # (B, L)
    for b, t in enumerate(texts):
        try:
            ids[b], mask[b] = tokenize(t, max_len, segments, rule)
        except ValueError as e:
            raise ValueError(f"texts[{b}]: {e}") from None
    return ids, mask


def encode(texts, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The model's text input for a sequence of captions: `tokenize_batch` at the config's
    max_text_len, with segment marks by config.text_segment_rule when config.text_segments.
    (ids (B, L) int32, mask (B, L) bool)."""
    return tokenize_batch(texts, config.max_text_len, segments=config.text_segments,
                          rule=config.text_segment_rule)


def detokenize(ids, mask=None) -> str:
    """Inverse of `tokenize` for one row: the caption text ("" for <null>); segment-marked ids
    (word + TEXT_SEGMENT_OFFSET) read as their word. ids (L,), mask (L,)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids: expected shape (L,), got {ids.shape}")
    keep = ids != PAD_ID if mask is None else np.asarray(mask, dtype=bool)
    words = []
    for i in ids[keep]:
        if int(i) not in _ID_TO_WORD:
            raise ValueError(f"ids: token id {int(i)} outside the vocabulary (size {len(VOCAB)}, second-phrase "
                             f"copies at + {TEXT_SEGMENT_OFFSET})")
        words.append(_ID_TO_WORD[int(i)])
    return "" if words in ([], [NULL]) else " ".join(words)
