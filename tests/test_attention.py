"""Attention (Sec. 2.2, Eq. 2-3; GQA of Table 1): accelerated == reference, and the properties
that pin the maths down: GQA = MHA with shared kv heads, token-permutation equivariance,
padding invariance, a single text token."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ecdit.accelerated.attention as acc
import ecdit.reference.attention as ref
from ecdit.core import params as init
from tests.helpers import HALVES, normal, seeds, text_mask
from tests.tolerances import assert_close


@st.composite
def gqa_shapes(draw):
    k = draw(st.integers(1, 3))                                  # kv heads
    n = k * draw(st.integers(1, 3))                              # query heads, a multiple of K
    h = draw(st.integers(1, 4))                                  # head dim
    return draw(st.integers(1, 3)), draw(st.integers(1, 10)), n * h, n, k


@given(shape=gqa_shapes(), seed=seeds)
def test_self_attention_matches_reference(shape, seed):
    b, s, d, n, k = shape
    rng = np.random.default_rng(seed)
    x, p = normal(rng, (b, s, d)), init.init_self_attention(rng, d, n, k)
    assert_close(acc.self_attention(x, p, n, k), ref.self_attention(x, p, n, k))


@pytest.mark.parametrize("half", HALVES)
@given(shape=gqa_shapes(), seed=seeds)
def test_gqa_equals_multi_head_attention_with_each_kv_head_repeated(half, shape, seed):
    """Query head n reads kv head n // R: repeating every kv projection R times gives plain MHA."""
    b, s, d, n, k = shape
    rng = np.random.default_rng(seed)
    x, p = normal(rng, (b, s, d)), init.init_self_attention(rng, d, n, k)
    h, r = d // n, n // k

    def repeat(w):                                               # (D, K H) -> (D, N H)
        return np.repeat(w.reshape(d, k, 1, h), r, axis=2).reshape(d, n * h)

    mha = dict(p, wk=repeat(p["wk"]), wv=repeat(p["wv"]))
    attend = half.attention.self_attention
    assert_close(attend(x, p, n, k), attend(x, mha, n, n))


@pytest.mark.parametrize("half", HALVES)
@given(shape=gqa_shapes(), seed=seeds)
def test_self_attention_is_permutation_equivariant(half, shape, seed):
    b, s, d, n, k = shape
    rng = np.random.default_rng(seed)
    x, p = normal(rng, (b, s, d)), init.init_self_attention(rng, d, n, k)
    perm = rng.permutation(s)
    attend = half.attention.self_attention
    assert_close(attend(x[:, perm], p, n, k), np.asarray(attend(x, p, n, k))[:, perm])


@st.composite
def cross_shapes(draw):
    n = draw(st.integers(1, 4))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 8)), n * draw(st.integers(1, 4)), n,
            draw(st.integers(1, 6)), draw(st.integers(1, 7)))    # B, S, D, N, L, Dy


@given(shape=cross_shapes(), seed=seeds, masked=st.booleans())
def test_cross_attention_matches_reference(shape, seed, masked):
    b, s, d, n, l, dy = shape
    rng = np.random.default_rng(seed)
    x, y, p = normal(rng, (b, s, d)), normal(rng, (b, l, dy)), init.init_cross_attention(rng, d, dy)
    mask = text_mask(rng, b, l) if masked else None
    assert_close(acc.cross_attention(x, y, p, n, mask), ref.cross_attention(x, y, p, n, mask))


@pytest.mark.parametrize("half", HALVES)
@given(shape=cross_shapes(), seed=seeds)
def test_cross_attention_ignores_padded_text_tokens(half, shape, seed):
    b, s, d, n, l, dy = shape
    rng = np.random.default_rng(seed)
    x, y, p = normal(rng, (b, s, d)), normal(rng, (b, l, dy)), init.init_cross_attention(rng, d, dy)
    mask = text_mask(rng, b, l)
    y_changed = np.where(mask[..., None], y, normal(rng, y.shape, 100.0))   # garbage in the padding
    attend = half.attention.cross_attention
    assert_close(attend(x, y_changed, p, n, mask), attend(x, y, p, n, mask))


@pytest.mark.parametrize("half", HALVES)
def test_cross_attention_to_a_single_text_token_returns_its_value(half):
    """With L = 1 the softmax weight is 1: MHCA(x) = (Enc(y) Wv) Wout for every image token."""
    rng = np.random.default_rng(0)
    x, y, p = normal(rng, (2, 5, 6)), normal(rng, (2, 1, 3)), init.init_cross_attention(rng, 6, 3)
    expected = np.broadcast_to((y @ p["wv"]) @ p["wo"], (2, 5, 6))
    assert_close(half.attention.cross_attention(x, y, p, 3), expected)


@pytest.mark.parametrize("half", HALVES)
def test_cross_attention_scales_scores_by_sqrt_head_dim(half):
    """Eq. 3 prints sqrt(d_x); we use sqrt(H) (docs/errata.md). One head, identity projections:
    the weight on text token j is softmax_j(x . y_j / sqrt(H))."""
    d = 4
    eye = np.eye(d, dtype=np.float32)
    p = {"wq": eye, "wk": eye, "wv": eye, "wo": eye}
    x = np.array([[[1.0, 0, 0, 0]]], np.float32)                 # (1, 1, 4)
    y = np.array([[[2.0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)   # (1, 2, 4)
    w = np.exp(2.0 / np.sqrt(d)) / (np.exp(2.0 / np.sqrt(d)) + 1)  # weight on token 0 with H = D = 4
    assert_close(half.attention.cross_attention(x, y, p, 1), [[[2.0 * w, 0, 0, 0]]])
