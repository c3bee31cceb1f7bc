"""Tests for the captioned-shapes data set (ecdit/systems/shapes.py)."""
import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdit.systems import shapes as S
from ecdit.systems.shapes import ObjectSpec, SceneObject, make_prompt, parse_prompt
from tests.helpers import seeds
from tests.tolerances import ARITHMETIC, LAYOUT_SLACK, QUADRATURE, assert_close, raster_coverage

ALL_PROMPTS = [p for c in S.CATEGORIES for p in S.all_prompts(c)]


# --------------------------------------------------------------------------- palette & constants

def test_world_has_six_categories_five_or_six_shapes_and_a_plural_for_each():
    assert S.CATEGORIES == ("single_object", "two_objects", "counting", "colours", "position",
                            "colour_attribution")
    assert {"circle", "square", "triangle"} <= set(S.SHAPES) and 5 <= len(S.SHAPES) <= 6
    assert len(S.COLOURS) >= 6
    assert set(S.PLURALS) == set(S.SHAPES)


def test_palette_colours_are_far_apart_and_from_the_background():
    cols = np.array(list(S.COLOURS.values()))                                # (C, 3)
    assert np.all((cols >= 0) & (cols <= 1))
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)                  # (C, C)
    assert d[~np.eye(len(cols), dtype=bool)].min() >= 0.99
    assert np.linalg.norm(cols - np.array(S.BACKGROUND), axis=-1).min() >= 0.99
    # the colours must not average to the background (a random-colour prompt's mean image would be empty)
    assert np.linalg.norm(cols.mean(0) - np.array(S.BACKGROUND)) >= 0.5


def test_shape_constants_match_geometry():
    assert_close(S.SHAPE_FILL["square"], 1.0, tol=ARITHMETIC)
    assert_close(S.SHAPE_FILL["circle"], np.pi / 4, tol=QUADRATURE)
    assert_close(S.SHAPE_FILL["triangle"], 0.5, tol=QUADRATURE)
    assert_close(S.SHAPE_FILL["diamond"], 0.5, tol=QUADRATURE)
    assert_close(S.SHAPE_CENTROID_DY["triangle"], 1 / 6, tol=QUADRATURE)
    assert all(S.SHAPE_CENTROID_DY[s] == 0.0 for s in S.SHAPES if s != "triangle")


# --------------------------------------------------------------------------- rendering

def test_render_empty_scene_is_background():
    img = S.render([], 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img, np.broadcast_to(np.float32(S.BACKGROUND), (32, 32, 3)))


@pytest.mark.parametrize("image_size", [16, 32, 64])
@pytest.mark.parametrize("shape", S.SHAPES)
def test_render_scales_and_covers_the_right_area(shape, image_size):
    obj = SceneObject(shape, "red", 0.5, 0.5, 0.4)
    img = S.render([obj], image_size)
    assert img.shape == (image_size, image_size, 3) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    # coverage = projection of (pixel - background) on (red - background)
    bg, col = np.float32(S.BACKGROUND), np.float32(S.COLOURS["red"])         # (3,), (3,)
    mass = float(((img - bg) @ (col - bg)).sum() / ((col - bg) @ (col - bg)))
    side = 0.4 * image_size
    assert_close(mass, S.SHAPE_FILL[shape] * side ** 2, tol=raster_coverage(side, S.SUPERSAMPLE))


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="image_size"):
        S.render([], 4)
    with pytest.raises(ValueError, match="image_size"):
        S.render([], 32.0)
    with pytest.raises(ValueError, match="hexagon"):
        S.render([SceneObject("hexagon", "red", 0.5, 0.5, 0.3)])
    with pytest.raises(ValueError, match="purple"):
        S.render([SceneObject("circle", "purple", 0.5, 0.5, 0.3)])
    with pytest.raises(ValueError, match="objects"):
        S.render([("circle", "red", 0.5, 0.5, 0.3)])


# --------------------------------------------------------------------------- captions

def test_grammar_has_the_expected_number_of_distinct_captions_per_category():
    n = {c: len(S.all_prompts(c)) for c in S.CATEGORIES}
    k, c = len(S.SHAPES), len(S.COLOURS)
    assert n == {"single_object": k, "two_objects": k * (k - 1), "counting": 3 * k,
                 "colours": k * c, "position": 4 * k * (k - 1),
                 "colour_attribution": k * (k - 1) * c * (c - 1)}
    texts = [p.text for p in ALL_PROMPTS]
    assert len(set(texts)) == len(texts)


def test_captions_read_as_plain_english_in_every_category():
    o = ObjectSpec
    assert make_prompt("single_object", [o("circle")]).text == "a circle"
    assert make_prompt("two_objects", [o("circle"), o("square")]).text == "a circle and a square"
    assert make_prompt("counting", [o("triangle", None, 3)]).text == "three triangles"
    assert make_prompt("counting", [o("cross", None, 2)]).text == "two crosses"
    assert make_prompt("colours", [o("circle", "red")]).text == "a red circle"
    assert make_prompt("position", [o("circle"), o("square")], "left of").text == \
        "a circle to the left of a square"
    assert make_prompt("colour_attribution", [o("circle", "red"), o("square", "blue")]).text == \
        "a red circle and a blue square"


def test_parse_prompt_round_trips_every_caption_of_the_grammar():
    for p in ALL_PROMPTS:
        assert parse_prompt(p.text) == p


def test_parse_prompt_is_case_and_space_insensitive():
    assert parse_prompt("  A RED   Circle ") == parse_prompt("a red circle")
    assert parse_prompt("A RED Circle").text == "a red circle"


@pytest.mark.parametrize("text, word", [
    ("a purple circle", "purple"),
    ("a circle and a hexagon", "hexagon"),
    ("five circles", "five"),
    ("a circle next to a square", "next"),
])
def test_parse_prompt_names_unknown_words(text, word):
    with pytest.raises(ValueError, match=f"unknown word '{word}'"):
        parse_prompt(text)


@pytest.mark.parametrize("text, word", [
    ("a circle square", "square"),          # missing 'and'
    ("circle", "circle"),                   # missing article
    ("a red", "ends early"),
    ("two circle", "circle"),               # singular after a number
    ("three circles and a square", "and"),
    ("a circle and a circle", "circle"),    # same shape twice
    ("a red circle and a square", "red"),   # colour on one object only
    ("a red circle above a blue square", "red"),  # colours not in position prompts
    ("a red circle and a red square", "red"),     # same colour twice
    ("a circle to the left a square", "a"),
    ("a circle and a square and", "and"),
])
def test_parse_prompt_names_the_offending_word(text, word):
    with pytest.raises(ValueError, match=word):
        parse_prompt(text)


def test_parse_prompt_rejects_non_strings_and_empty():
    with pytest.raises(ValueError, match="text"):
        parse_prompt(3)
    with pytest.raises(ValueError, match="empty"):
        parse_prompt("   ")


def test_make_prompt_rejects_requests_outside_the_grammar():
    with pytest.raises(ValueError, match="category"):
        make_prompt("style", [ObjectSpec("circle")])
    with pytest.raises(ValueError, match="counting"):
        make_prompt("counting", [ObjectSpec("circle", None, 5)])
    with pytest.raises(ValueError, match="relation"):
        make_prompt("position", [ObjectSpec("circle"), ObjectSpec("square")], "behind")
    with pytest.raises(ValueError, match="relation"):
        make_prompt("two_objects", [ObjectSpec("circle"), ObjectSpec("square")], "above")


def test_combination_is_wording_free():
    c = lambda t: S.combination(parse_prompt(t))  # noqa: E731
    assert c("a circle and a square") == c("a square and a circle")
    assert c("a circle to the left of a square") == c("a square to the right of a circle")
    assert c("a circle above a square") == c("a square below a circle")
    assert c("a circle above a square") != c("a circle below a square")
    assert c("a red circle and a blue square") == c("a blue square and a red circle")
    assert c("a red circle and a blue square") != c("a blue circle and a red square")


# --------------------------------------------------------------------------- held-out set

def test_heldout_combinations_are_a_stratified_fraction_of_each_category_and_never_trained():
    for cat in S.CATEGORIES:
        combos = {S.combination(p) for p in S.all_prompts(cat)}
        held = S.heldout_combinations(cat)
        assert held <= combos
        if cat == "single_object":
            assert held == frozenset()          # six prompts only: items are prompt x seed
        elif cat == "colours":                  # stratified: each shape once, each colour once
            assert len(held) == len(S.SHAPES) == len(S.COLOURS)
            assert sorted(c[1] for c in held) == sorted(S.SHAPES)
            assert sorted(c[2] for c in held) == sorted(S.COLOURS)
            # so every shape keeps five trained colours and every colour five trained shapes
            trained = [p.objects[0] for p in S.training_prompts(cat)]
            assert all(sum(o.shape == s for o in trained) == 5 for s in S.SHAPES)
            assert all(sum(o.colour == c for o in trained) == 5 for c in S.COLOURS)
        else:
            assert len(held) == round(S.HELDOUT_FRACTION * len(combos)) > 0
        if held:
            # every wording of a held-out combination is out of training
            assert not any(S.combination(p) in held for p in S.training_prompts(cat))
            # every shape is still trained in every category
            assert {o.shape for p in S.training_prompts(cat) for o in p.objects} == set(S.SHAPES)


def test_heldout_items_are_50_heldout_prompts_per_category_with_distinct_seeds():
    items = S.heldout_items()
    assert len(items) == 50 * len(S.CATEGORIES)
    for cat in S.CATEGORIES:
        mine = [it for it in items if it.category == cat]
        assert len(mine) == 50
        for it in mine:
            assert it.spec.category == cat and it.spec.text == it.text
            assert parse_prompt(it.text) == it.spec
            if cat != "single_object":
                assert S.is_heldout(it.spec)
        # small categories repeat prompts, but never with the same seed
        assert len({it.seed for it in mine}) == 50
    assert {it.text for it in items if it.category == "single_object"} == \
        {p.text for p in S.all_prompts("single_object")}
    assert len(S.heldout_items(per_category=7)) == 7 * len(S.CATEGORIES)
    with pytest.raises(ValueError, match="per_category"):
        S.heldout_items(0)


def test_heldout_items_are_deterministic():
    a, b = S.heldout_items(), S.heldout_items()
    assert a == b
    # Pinned digest: the set must be identical on every machine (SHA-256 based, no RNG).
    digest = hashlib.sha256(repr([(i.category, i.text, i.seed) for i in a]).encode()).hexdigest()
    assert digest == PINNED_HELDOUT_DIGEST


PINNED_HELDOUT_DIGEST = "86c3b944e396daaae52e9798ace79f83aa1ab7ed334ddc11177f4df249a4b0a6"


def test_validation_items_are_seen_prompts_with_fresh_seeds():
    val, held = S.validation_items(), S.heldout_items()
    assert val == S.validation_items() and len(val) == 50 * len(S.CATEGORIES)
    for cat in S.CATEGORIES:
        mine = [it for it in val if it.category == cat]
        assert len(mine) == 50 and all(it.spec.category == cat for it in mine)
        # never a held-out combination: tuning on these cannot peek at the evaluation prompts
        assert not any(S.is_heldout(it.spec) for it in mine)
        # the categories with enough training prompts use 50 different ones
        n_train = len(S.training_prompts(cat))
        assert len({it.text for it in mine}) == min(50, n_train)
    # no scene is shared with the held-out set (single_object has the same six prompts)
    assert not {it.seed for it in val} & {it.seed for it in held}
    with pytest.raises(ValueError, match="per_category"):
        S.validation_items(0)
    with pytest.raises(ValueError, match="category"):
        S.validation_prompts("colors")


def test_training_captions_never_hit_a_heldout_combination():
    rng = np.random.default_rng(0)
    _, captions = S.sample_batch(rng, 3000, image_size=16)
    held = set().union(*(S.heldout_combinations(c) for c in S.CATEGORIES))
    specs = [parse_prompt(t) for t in captions]           # every sampled caption parses
    assert not any(S.combination(s) in held for s in specs)
    # categories are mixed uniformly (3000 draws, 500 expected each)
    counts = {c: sum(s.category == c for s in specs) for c in S.CATEGORIES}
    assert all(400 < n < 600 for n in counts.values()), counts
    # and the sampler reaches most of the training captions of the big categories
    assert len({s.text for s in specs}) > 400


def test_sample_batch_is_seeded_in_range_and_rejects_bad_input():
    imgs, caps = S.sample_batch(np.random.default_rng(7), 5, image_size=32)
    assert imgs.shape == (5, 32, 32, 3) and imgs.dtype == np.float32 and len(caps) == 5
    assert imgs.min() >= 0 and imgs.max() <= 1
    imgs2, caps2 = S.sample_batch(np.random.default_rng(7), 5, image_size=32)
    np.testing.assert_array_equal(imgs, imgs2)
    assert caps == caps2
    with pytest.raises(ValueError, match="batch_size"):
        S.sample_batch(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="rng"):
        S.sample_batch(0, 2)


def test_category_weights_set_the_mix_and_zero_weights_never_draw():
    w = (0.0, 3.0, 0.0, 1.0, 0.0, 0.0)                     # two_objects 3 : colours 1
    _, caps = S.sample_batch(np.random.default_rng(3), 800, image_size=16, category_weights=w)
    cats = [parse_prompt(t).category for t in caps]
    assert set(cats) == {"two_objects", "colours"}
    assert 0.70 < cats.count("two_objects") / len(cats) < 0.80, cats.count("two_objects")


def test_category_weights_none_keeps_the_uniform_data_stream():
    a = S.sample_batch(np.random.default_rng(5), 6, image_size=16)
    b = S.sample_batch(np.random.default_rng(5), 6, image_size=16, category_weights=None)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1, 1, 1, 1, 1, -1), (0, 0, 0, 0, 0, 0),
                                 (1, 1, 1, 1, 1, float("nan"))])
def test_category_weights_reject_a_wrong_length_negative_zero_or_nan(bad):
    with pytest.raises(ValueError, match="category_weights"):
        S.sample_batch(np.random.default_rng(0), 2, image_size=16, category_weights=bad)


PAIR_PROMPTS = [p for c in ("two_objects", "colour_attribution") for p in S.all_prompts(c)]


@given(st.sampled_from(PAIR_PROMPTS), seeds)
def test_layout_order_names_the_left_or_upper_object_first_and_keeps_the_combination(spec, seed):
    scene = S.scene_for_prompt(spec, np.random.default_rng(seed))
    out = S.layout_order(spec, scene)
    assert S.combination(out) == S.combination(spec) and out.category == spec.category
    assert out.text in (spec.text, make_prompt(spec.category, spec.objects[::-1]).text)
    first, second = (next(o for o in scene if o.shape == x.shape) for x in out.objects)
    (ax, ay), (bx, by) = first.centroid, second.centroid
    if abs(bx - ax) >= abs(by - ay):
        assert ax <= bx                                   # side by side: the left one first
    else:
        assert ay <= by                                   # stacked: the upper one first
    assert S.layout_order(out, scene) == out              # already in order: unchanged


def test_layout_order_leaves_the_other_categories_alone():
    for cat in ("single_object", "colours", "counting", "position"):
        for spec in S.all_prompts(cat)[:5]:
            assert S.layout_order(spec, S.scene_for_prompt(spec, np.random.default_rng(1))) is spec


def test_layout_caption_order_changes_only_pair_captions_and_never_the_images():
    a_imgs, a_caps = S.sample_batch(np.random.default_rng(5), 400, image_size=16)
    b_imgs, b_caps = S.sample_batch(np.random.default_rng(5), 400, image_size=16, pair_caption_order="layout")
    np.testing.assert_array_equal(a_imgs, b_imgs)
    changed = [(parse_prompt(a), parse_prompt(b)) for a, b in zip(a_caps, b_caps) if a != b]
    assert changed                                        # about half of the pair captions swap
    assert all(a.category in ("two_objects", "colour_attribution") and a.objects == b.objects[::-1]
               for a, b in changed)
    pairs = [t for t in a_caps if parse_prompt(t).category in ("two_objects", "colour_attribution")]
    assert 0.3 < len(changed) / len(pairs) < 0.7, (len(changed), len(pairs))
    with pytest.raises(ValueError, match="pair_caption_order"):
        S.sample_batch(np.random.default_rng(0), 2, image_size=16, pair_caption_order="reading")


# --------------------------------------------------------------------------- scenes

def _check_scene(spec, objs, image_size):
    """Assert that `objs` is exactly what `spec` asks for, laid out by the rules."""
    assert len(objs) == sum(o.count for o in spec.objects)
    for want in spec.objects:              # shapes within one prompt are distinct
        mine = [o for o in objs if o.shape == want.shape]
        assert len(mine) == want.count
        assert want.colour is None or all(o.colour == want.colour for o in mine)
    gap, border = S._gap(image_size), S._border(image_size)
    for o in objs:
        assert o.shape in S.SHAPES and o.colour in S.COLOURS
        assert o.size >= S.MIN_SIZE - LAYOUT_SLACK              # >= 8 px at 32x32
        for c in (o.cx, o.cy):
            assert border + o.size / 2 - LAYOUT_SLACK <= c <= 1 - border - o.size / 2 + LAYOUT_SLACK
    for a, b in itertools.combinations(objs, 2):
        assert S._boxes_apart(a, b, gap - LAYOUT_SLACK)
    if spec.category == "position":
        a, b = objs
        assert (a.shape, b.shape) == (spec.objects[0].shape, spec.objects[1].shape)
        dx, dy = np.subtract(a.centroid, b.centroid)
        along, perp = (dx, dy) if spec.relation in ("left of", "right of") else (dy, dx)
        sign = -1 if spec.relation in ("left of", "above") else 1
        assert sign * along > 0
        assert abs(perp) <= S.POSITION_SLOPE * abs(along) + LAYOUT_SLACK


@pytest.mark.parametrize("category", S.CATEGORIES)
@given(data=st.data(), seed=seeds, image_size=st.sampled_from([16, 32, 64]))
def test_scene_for_prompt_satisfies_its_prompt(category, data, seed, image_size):
    """Every category (explicit cases, each with its own layout rules), a drawn prompt of it."""
    spec = data.draw(st.sampled_from(S.all_prompts(category)), label="spec")
    objs = S.scene_for_prompt(spec, np.random.default_rng(seed), image_size)
    _check_scene(spec, objs, image_size)


def test_scene_for_prompt_satisfies_every_heldout_item():
    for it in S.heldout_items():
        _check_scene(it.spec, S.scene_for_prompt(it.spec, np.random.default_rng(it.seed)), 32)


def test_scene_for_prompt_is_seeded_and_accepts_text():
    a = S.scene_for_prompt("four rings", np.random.default_rng(3))
    b = S.scene_for_prompt(parse_prompt("four rings"), np.random.default_rng(3))
    assert a == b and len(a) == 4
    with pytest.raises(ValueError, match="rng"):
        S.scene_for_prompt("four rings", 3)
    with pytest.raises(ValueError, match="spec"):
        S.scene_for_prompt(None, np.random.default_rng(0))
