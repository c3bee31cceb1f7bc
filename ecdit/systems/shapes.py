"""Captioned shapes: a small, seeded, offline stand-in for web image-text pairs.

EC-DiT trains on web image-caption pairs and is scored with GenEval. Neither is available
offline, so this module generates an honest analogue on the fly: images of 1-4 flat-coloured
shapes on a plain white background, each with a caption from a tiny grammar that has one
production per GenEval category:

====================  =============================================  ==========================
category              caption                                        requirement
====================  =============================================  ==========================
single_object         "a circle"                                     >= 1 circle
two_objects           "a circle and a square"                        both shapes present
counting              "three triangles" (2-4)                        exactly 3 triangles
colours               "a red circle"                                 a circle that is red
position              "a circle to the left of a square"             relation between centroids
colour_attribution    "a red circle and a blue square"               both (colour, shape) pairs
====================  =============================================  ==========================

Design choices (why they are what they are):

* **Palette.** Background white (1, 1, 1); the six colours are the six saturated corners of
  the RGB cube (red, green, blue, yellow, cyan, magenta): >= 1.0 from the background and from
  each other, and the mixing line background->colour (anti-aliased or blurred edges) never
  passes within 0.7 of another colour, so nearest-palette segmentation stays reliable on soft
  edges. Not mid-grey: the six colours average to exactly (0.5, 0.5, 0.5), so on a grey
  background the mean image of "a circle" in a random colour is the empty background, and a
  small flow model that regresses to that mean draws nothing (docs/data.md, measured).
* **Shapes.** circle, square, triangle (apex up), diamond, cross (a plus sign) and ring; each is
  drawn inside an axis-aligned square box of side `size`, so one number fixes its scale.
  At 32x32 the smallest box is 8 px: large enough that the scorer (`ecdit.systems.geneval`) tells the
  six apart from the colour-segmented mask (ring hole 4 px, cross arms 3 px).
* **Geometry** lives in image-fraction units (centre and size in [0, 1]), so one scene renders at
  any resolution (16, 32, 64, ...). Rendering is anti-aliased by 4x4 supersampling.
  Objects never overlap: their boxes are kept at least `gap` apart (2 px at 32x32), so each is
  its own connected component. Position scenes put the centroids of the two objects clearly
  along the named axis: |perpendicular offset| <= 0.35 x |offset along the axis|.
* **Held-out set.** Every category except single_object and colours holds out a fixed 20 % of
  its combinations, chosen by SHA-256 of the combination (so the choice is the same on every
  machine, Python and NumPy version). colours is stratified instead: one colour per shape and
  one shape per colour (6 of the 36 pairs, a permutation ranked by SHA-256), so every shape is
  trained in five colours and the Colors score weighs the six shapes equally (a random 20 % put
  crosses in 4 of 7 held-out captions and left crosses two trained colours; docs/data.md).
  Combinations are canonical: "a circle and a square" is the same combination as "a square and
  a circle", and "a circle to the left of a square" the same as "a square to the right of a
  circle", so a held-out combination is absent from training in every wording. The training sampler never emits a held-out combination.
  **single_object cannot be held out**: it has only six prompts (one per shape), and holding a
  shape out would mean never teaching it. Its evaluation items are therefore prompt x seed: all
  six prompts, each with several fixed, hash-derived seeds (fresh scenes, not the images the
  training sampler drew). Held-out prompts of the small categories are likewise repeated with
  different seeds to make up `per_category` items.
  Held-out items carry the seed of their scene: render one with
  ``render(scene_for_prompt(item.spec, np.random.default_rng(item.seed)))``, or all of them with
  ``render_items(items)``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ecdit.core.checks import one_of, positive_int
from ecdit.core.config import BACKGROUND_LABEL, NUM_SHAPE_LABELS, PAIR_CAPTION_ORDERS

# ---------------------------------------------------------------------------------------------
# Vocabulary of the world
# ---------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "diamond": "diamonds", "cross": "crosses", "ring": "rings",
}
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)  # white, not the colours' mean (above)
CATEGORIES: tuple[str, ...] = (
    "single_object", "two_objects", "counting", "colours", "position", "colour_attribution",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to", "the", "left", "of"),
    "right of": ("to", "the", "right", "of"),
    "above": ("above",),
    "below": ("below",),
}
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
COUNTS: tuple[int, ...] = tuple(NUMBER_WORDS)

HELDOUT_FRACTION = 0.2
HELDOUT_SALT = "ecdit-heldout-v1"   # the "seed" of the held-out choice (hash salt)

# Scene geometry in image-fraction units (x right, y down, both in [0, 1]).
MIN_SIZE = 0.25                      # 8 px at 32x32
SIZE_RANGE: dict[int, tuple[float, float]] = {  # object count -> (min, max) box side
    1: (0.30, 0.60), 2: (0.25, 0.45), 3: (0.25, 0.38), 4: (0.25, 0.32),
}
POSITION_SLOPE = 0.35                # max |perpendicular| / |along| centroid offset in renders
CROSS_ARM = 0.36                     # cross arm width, fraction of the box
RING_INNER = 0.5                     # ring inner radius / outer radius
SUPERSAMPLE = 4                      # anti-aliasing: SUPERSAMPLE^2 samples per pixel


# ---------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its shape, colour name, box centre (cx, cy) and box side `size`.

    Units are fractions of the image side (x right, y down), so a scene renders at any size.
    """
    shape: str
    colour: str
    cx: float
    cy: float
    size: float

    @property
    def centroid(self) -> tuple[float, float]:
        """Centre of mass (x, y); equals the box centre except for the triangle (s/6 lower)."""
        return (self.cx, self.cy + SHAPE_CENTROID_DY[self.shape] * self.size)


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks of one kind of object: a shape, optionally a colour, and a count."""
    shape: str
    colour: str | None = None
    count: int = 1


@dataclass(frozen=True)
class PromptSpec:
    """A parsed caption: its category, its text, the objects it asks for, and a relation.

    For position prompts `relation` reads "objects[0] <relation> objects[1]".
    """
    category: str
    text: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


@dataclass(frozen=True)
class HeldoutItem:
    """One evaluation item: category, prompt text, parsed spec, and the seed of its scene."""
    category: str
    text: str
    spec: PromptSpec
    seed: int


# ---------------------------------------------------------------------------------------------
# Shapes: coverage in box coordinates
# ---------------------------------------------------------------------------------------------

def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of points (u, v) inside `shape`; box coordinates u, v in [-0.5, 0.5], v down."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 0.25
    if shape == "square":
        return (au <= 0.5) & (av <= 0.5)
    if shape == "triangle":  # apex at the top centre, base along the bottom edge
        return (av <= 0.5) & (au <= (v + 0.5) / 2.0)
    if shape == "diamond":
        return au + av <= 0.5
    if shape == "cross":
        half = CROSS_ARM / 2.0
        return ((au <= half) & (av <= 0.5)) | ((av <= half) & (au <= 0.5))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.25) & (r2 >= 0.25 * RING_INNER ** 2)
    raise ValueError(f"shape: unknown shape {shape!r}; expected one of {SHAPES}")


def _shape_constants(shape: str, n: int = 512) -> tuple[float, float]:
    """(fill, centroid_dy): area / box area and centroid y offset in box units, by quadrature."""
    t = (np.arange(n) + 0.5) / n - 0.5
    v, u = np.meshgrid(t, t, indexing="ij")                                  # (n, n)
    m = _inside(shape, u, v)
    return float(m.mean()), float(v[m].mean())


SHAPE_FILL: dict[str, float] = {}
SHAPE_CENTROID_DY: dict[str, float] = {}
for _s in SHAPES:
    SHAPE_FILL[_s], SHAPE_CENTROID_DY[_s] = _shape_constants(_s)
    if abs(SHAPE_CENTROID_DY[_s]) < 1e-3:
        SHAPE_CENTROID_DY[_s] = 0.0
del _s


def shape_coverage(shape: str, cx: float, cy: float, size: float, height: int, width: int,
                   supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by `shape` with box centre (cx, cy) and side `size` in PIXELS.

    Pixel (i, j) spans [j, j+1) x [i, i+1). Only the object's box window is sampled, so the cost
    is independent of the image size. Used by `render` and by the scorer's templates.
    Returns (height, width) float32 in [0, 1].
    """
    cov = np.zeros((height, width), dtype=np.float32)                        # (I, J)
    if size <= 0:
        return cov
    x0 = max(int(math.floor(cx - size / 2)), 0)
    x1 = min(int(math.ceil(cx + size / 2)), width)
    y0 = max(int(math.floor(cy - size / 2)), 0)
    y1 = min(int(math.ceil(cy + size / 2)), height)
    if x1 <= x0 or y1 <= y0:
        return cov
    ss = supersample
    xs = x0 + (np.arange((x1 - x0) * ss) + 0.5) / ss                        # (w*ss,)
    ys = y0 + (np.arange((y1 - y0) * ss) + 0.5) / ss                        # (h*ss,)
    u = ((xs - cx) / size)[None, :]                                         # (1, w*ss)
    v = ((ys - cy) / size)[:, None]                                         # (h*ss, 1)
    m = _inside(shape, u, v).astype(np.float32)                              # (h*ss, w*ss)
    m = m.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))                # (h, w)
    cov[y0:y1, x0:x1] = m
    return cov


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _check_image_size(image_size) -> int:
    """Validate `image_size` (an int >= 8) and return it as int."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size: expected an int, got {type(image_size).__name__}")
    if image_size < 8:
        raise ValueError(f"image_size: expected >= 8, got {image_size}")
    return int(image_size)


def _check_object(obj: SceneObject) -> None:
    """Raise ValueError if a scene object names an unknown shape/colour or has a bad geometry."""
    if obj.shape not in SHAPES:
        raise ValueError(f"objects: unknown shape {obj.shape!r}; expected one of {SHAPES}")
    if obj.colour not in COLOURS:
        raise ValueError(f"objects: unknown colour {obj.colour!r}; expected one of {tuple(COLOURS)}")
    vals = (obj.cx, obj.cy, obj.size)
    if not all(math.isfinite(float(x)) for x in vals) or obj.size <= 0:
        raise ValueError(f"objects: need finite cx, cy and size > 0, got {vals}")


def render(objects, image_size: int = 32) -> np.ndarray:
    """Draw `objects` (SceneObjects, image-fraction units) on the background.

    Anti-aliased (SUPERSAMPLE^2 samples per pixel); objects are composited in order, so a later
    object covers an earlier one where they would overlap (scenes from `scene_for_prompt` never
    overlap). Returns (I, J, 3) float32 in [0, 1] with I = J = image_size.
    """
    return _render_with_coverage(objects, image_size)[0]


def _render_with_coverage(objects, image_size: int):
    """`render`'s image (I, J, 3) and each object's pixel coverage [(shape, (I, J)), ...]."""
    n = _check_image_size(image_size)
    bg = np.asarray(BACKGROUND, dtype=np.float32)                            # (3,)
    img = np.broadcast_to(bg, (n, n, 3)).copy()                              # (I, J, 3)
    coverage = []
    for obj in objects:
        if not isinstance(obj, SceneObject):
            raise ValueError(f"objects: expected SceneObject items, got {type(obj).__name__}")
        _check_object(obj)
        a = shape_coverage(obj.shape, obj.cx * n, obj.cy * n, obj.size * n, n, n)  # (I, J)
        col = np.asarray(COLOURS[obj.colour], dtype=np.float32)              # (3,)
        img = img * (1.0 - a[..., None]) + col * a[..., None]                # (I, J, 3)
        coverage.append((obj.shape, a))
    return np.clip(img, 0.0, 1.0).astype(np.float32), coverage


# The shape head's labels (ModelConfig.shape_head_layer): SHAPES in order, then the background
# (BACKGROUND_LABEL, from ecdit.core.config).
assert len(SHAPES) == BACKGROUND_LABEL == NUM_SHAPE_LABELS - 1, "ecdit.core.config's shape labels disagree with SHAPES"
MIN_LABEL_COVERAGE = 0.25            # a patch takes a shape's label when it covers >= 1/4 of it


def _check_patch_size(name: str, patch_size, image_size: int) -> int:
    """A positive integer dividing image_size, else ValueError naming `name`."""
    p = positive_int(name, patch_size)
    if image_size % p:
        raise ValueError(f"{name}: expected a positive integer dividing image_size = {image_size}, got {p}")
    return int(p)


def _labels_from_coverage(coverages, image_size: int, patch_size: int) -> np.ndarray:
    """Per image and patch (row-major, as `patchify` orders tokens): the shape covering the largest
    share of the patch if that share is >= MIN_LABEL_COVERAGE, else BACKGROUND_LABEL. `coverages`
    holds each image's [(shape, (I, J) coverage), ...]. (B, S) int32, in one pass over the batch."""
    g = image_size // patch_size
    share = np.zeros((len(coverages), len(SHAPES), g, g), np.float32)       # (B, 6, g, g)
    owners = [(b, SHAPES.index(shape)) for b, cov in enumerate(coverages) for shape, _ in cov]
    if owners:
        a = np.stack([c for cov in coverages for _, c in cov])              # (N, I, J) every object
        per_patch = a.reshape(len(a), g, patch_size, g, patch_size).mean(axis=(2, 4))  # (N, g, g)
        rows, kinds = np.asarray(owners).T                                   # (N,) x2
        np.add.at(share, (rows, kinds), per_patch)                           # same-shape objects add up
    best = np.argmax(share, axis=1)                                          # (B, g, g)  ties: lower index
    labels = np.where(share.max(axis=1) >= MIN_LABEL_COVERAGE, best, BACKGROUND_LABEL)  # (B, g, g)
    return labels.reshape(len(coverages), g * g).astype(np.int32)           # (B, S)


def token_labels(objects, image_size: int = 32, patch_size: int = 4) -> np.ndarray:
    """The shape head's target for each image token of the scene `objects`: the index in SHAPES of
    the shape covering the largest share of the token's patch, when that share is at least
    MIN_LABEL_COVERAGE (1/4), else BACKGROUND_LABEL (6). Tokens in row-major patch order. (S,) int32."""
    n = _check_image_size(image_size)
    p = _check_patch_size("patch_size", patch_size, n)
    return _labels_from_coverage([_render_with_coverage(objects, n)[1]], n, p)[0]


# ---------------------------------------------------------------------------------------------
# Captions: building, parsing, combinations
# ---------------------------------------------------------------------------------------------

def _article(word: str) -> str:
    """English indefinite article for `word` (no current word needs "an"; kept for new words)."""
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(o: ObjectSpec) -> str:
    """'a circle' / 'a red circle'."""
    head = f"{o.colour} {o.shape}" if o.colour else o.shape
    return f"{_article(head)} {head}"


def _validate_spec(category: str, objects: tuple[ObjectSpec, ...], relation: str | None) -> None:
    """Raise ValueError unless (category, objects, relation) is a caption of the grammar."""
    if category not in CATEGORIES:
        raise ValueError(f"category: unknown category {category!r}; expected one of {CATEGORIES}")
    for o in objects:
        if o.shape not in SHAPES:
            raise ValueError(f"objects: unknown shape {o.shape!r}")
        if o.colour is not None and o.colour not in COLOURS:
            raise ValueError(f"objects: unknown colour {o.colour!r}")
    n = len(objects)
    coloured = [o.colour is not None for o in objects]
    counts = [o.count for o in objects]
    ok = {
        "single_object": n == 1 and not any(coloured) and counts == [1],
        "colours": n == 1 and all(coloured) and counts == [1],
        "counting": n == 1 and not any(coloured) and counts[0] in COUNTS,
        "two_objects": n == 2 and not any(coloured) and counts == [1, 1],
        "position": n == 2 and not any(coloured) and counts == [1, 1],
        "colour_attribution": n == 2 and all(coloured) and counts == [1, 1],
    }[category]
    if not ok:
        raise ValueError(f"objects: {objects} is not a valid {category} request")
    if n == 2 and objects[0].shape == objects[1].shape:
        raise ValueError(f"objects: the two shapes must differ, got {objects[0].shape!r} twice")
    if category == "colour_attribution" and objects[0].colour == objects[1].colour:
        raise ValueError(f"objects: the two colours must differ, got {objects[0].colour!r} twice")
    if (category == "position") != (relation is not None):
        raise ValueError(f"relation: {relation!r} given for category {category!r}")
    if relation is not None and relation not in RELATIONS:
        raise ValueError(f"relation: unknown relation {relation!r}; expected one of {RELATIONS}")


def make_prompt(category: str, objects, relation: str | None = None) -> PromptSpec:
    """Build the PromptSpec (with its caption text) for a structured request.

    `objects` is a sequence of ObjectSpec; raises ValueError for requests outside the grammar.
    """
    objects = tuple(objects)
    _validate_spec(category, objects, relation)
    if category == "counting":
        o = objects[0]
        text = f"{NUMBER_WORDS[o.count]} {PLURALS[o.shape]}"
    elif category in ("single_object", "colours"):
        text = _noun_phrase(objects[0])
    elif category == "position":
        text = f"{_noun_phrase(objects[0])} {' '.join(RELATION_WORDS[relation])} {_noun_phrase(objects[1])}"
    else:
        text = f"{_noun_phrase(objects[0])} and {_noun_phrase(objects[1])}"
    return PromptSpec(category, text, objects, relation)


_COLOUR_WORDS = frozenset(COLOURS)
_SHAPE_WORDS = frozenset(SHAPES)
_PLURAL_TO_SHAPE = {p: s for s, p in PLURALS.items()}
_WORD_TO_COUNT = {w: c for c, w in NUMBER_WORDS.items()}


def grammar_words() -> tuple[str, ...]:
    """Every word the caption grammar can emit, sorted (the tokenizer's vocabulary)."""
    words = {"a", "and"} | set(SHAPES) | set(PLURALS.values()) | set(COLOURS)
    words |= set(NUMBER_WORDS.values())
    for ws in RELATION_WORDS.values():
        words |= set(ws)
    return tuple(sorted(words))


_GRAMMAR_WORDS = frozenset(grammar_words())


def _parse_noun_phrase(words: list[str], i: int, text: str) -> tuple[ObjectSpec, int]:
    """Parse 'a [colour] shape' starting at position i; return the ObjectSpec and next position."""
    if i >= len(words):
        raise ValueError(f"parse_prompt: {text!r} ends early; expected 'a'")
    if words[i] not in ("a", "an"):
        raise ValueError(f"parse_prompt: unexpected word {words[i]!r} at position {i} in {text!r}; "
                         "expected 'a'")
    article, i = words[i], i + 1
    colour = None
    if i < len(words) and words[i] in _COLOUR_WORDS:
        colour, i = words[i], i + 1
    if i >= len(words):
        raise ValueError(f"parse_prompt: {text!r} ends early; expected a shape")
    if words[i] not in _SHAPE_WORDS:
        raise ValueError(f"parse_prompt: unexpected word {words[i]!r} at position {i} in {text!r}; "
                         "expected a shape" + ("" if colour else " or a colour"))
    shape = words[i]
    head = f"{colour} {shape}" if colour else shape
    if article != _article(head):
        raise ValueError(f"parse_prompt: wrong article {article!r} before {head!r} in {text!r}")
    return ObjectSpec(shape, colour), i + 1


def parse_prompt(text: str) -> PromptSpec:
    """Parse a caption of the grammar back into its PromptSpec (inverse of `make_prompt`).

    Case-insensitive; words are split on whitespace. Unknown words, and known words in a place
    the grammar does not allow, raise ValueError naming the offending word.
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__}")
    words = text.lower().split()
    if not words:
        raise ValueError("parse_prompt: empty text")
    for i, w in enumerate(words):
        if w not in _GRAMMAR_WORDS:
            raise ValueError(f"parse_prompt: unknown word {w!r} at position {i} in {text!r}")
    if words[0] in _WORD_TO_COUNT:                                           # counting
        if len(words) < 2 or words[1] not in _PLURAL_TO_SHAPE:
            got = repr(words[1]) if len(words) > 1 else "the end"
            raise ValueError(f"parse_prompt: unexpected {got} after {words[0]!r} in {text!r}; "
                             "expected a plural shape")
        if len(words) > 2:
            raise ValueError(f"parse_prompt: unexpected word {words[2]!r} at position 2 in {text!r}")
        obj = ObjectSpec(_PLURAL_TO_SHAPE[words[1]], None, _WORD_TO_COUNT[words[0]])
        return make_prompt("counting", (obj,))
    first, i = _parse_noun_phrase(words, 0, text)
    if i == len(words):
        return make_prompt("colours" if first.colour else "single_object", (first,))
    relation = None
    if words[i] == "and":
        i += 1
    else:
        for rel, rel_words in RELATION_WORDS.items():
            if tuple(words[i:i + len(rel_words)]) == rel_words:
                relation, i = rel, i + len(rel_words)
                break
        else:
            raise ValueError(f"parse_prompt: unexpected word {words[i]!r} at position {i} in {text!r}; "
                             "expected 'and' or a relation")
    second, i = _parse_noun_phrase(words, i, text)
    if i != len(words):
        raise ValueError(f"parse_prompt: unexpected word {words[i]!r} at position {i} in {text!r}")
    if (first.colour is None) != (second.colour is None):
        bad = first.colour or second.colour
        raise ValueError(f"parse_prompt: colour word {bad!r} in {text!r} needs a colour on both objects")
    if relation is not None and first.colour is not None:
        raise ValueError(f"parse_prompt: colour word {first.colour!r} is not allowed in a position "
                         f"prompt ({text!r})")
    if first.shape == second.shape:
        raise ValueError(f"parse_prompt: shape {first.shape!r} appears twice in {text!r}; "
                         "the two shapes must differ")
    if first.colour is not None and first.colour == second.colour:
        raise ValueError(f"parse_prompt: colour {first.colour!r} appears twice in {text!r}; "
                         "the two colours must differ")
    if relation is not None:
        category = "position"
    else:
        category = "colour_attribution" if first.colour else "two_objects"
    return make_prompt(category, (first, second), relation)


def all_prompts(category: str) -> tuple[PromptSpec, ...]:
    """Every caption of `category` in the grammar, in a fixed order."""
    if category not in CATEGORIES:
        raise ValueError(f"category: unknown category {category!r}; expected one of {CATEGORIES}")
    return _all_prompts(category)


@lru_cache(maxsize=None)
def _all_prompts(category: str) -> tuple[PromptSpec, ...]:
    out: list[PromptSpec] = []
    if category == "single_object":
        out = [make_prompt(category, (ObjectSpec(s),)) for s in SHAPES]
    elif category == "colours":
        out = [make_prompt(category, (ObjectSpec(s, c),)) for c in COLOURS for s in SHAPES]
    elif category == "counting":
        out = [make_prompt(category, (ObjectSpec(s, None, n),)) for n in COUNTS for s in SHAPES]
    elif category in ("two_objects", "position"):
        rels = RELATIONS if category == "position" else (None,)
        for a in SHAPES:
            for b in SHAPES:
                if a != b:
                    for r in rels:
                        out.append(make_prompt(category, (ObjectSpec(a), ObjectSpec(b)), r))
    else:  # colour_attribution
        for ca in COLOURS:
            for a in SHAPES:
                for cb in COLOURS:
                    for b in SHAPES:
                        if a != b and ca != cb:
                            out.append(make_prompt(category, (ObjectSpec(a, ca), ObjectSpec(b, cb))))
    return tuple(out)


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# The relations whose first object lies right of / below the second: `combination` rewrites them as
# their mirror ("A right of B" -> "B left of A"), and the tokenizer's "layout" segment rule marks
# their first noun phrase (ecdit.systems.text).
MIRRORED_RELATIONS: frozenset = frozenset({"right of", "below"})


def combination(spec: PromptSpec) -> tuple:
    """Canonical (shape, colour, count, relation) combination of a prompt, wording removed.

    Two captions that describe the same requirement map to the same tuple: the order of the two
    objects in two_objects / colour_attribution does not matter, and "A right of B" is "B left of A".
    """
    objs = spec.objects
    if spec.category in ("single_object", "colours", "counting"):
        o = objs[0]
        return (spec.category, o.shape, o.colour, o.count)
    if spec.category == "position":
        a, b, rel = objs[0].shape, objs[1].shape, spec.relation
        if rel in MIRRORED_RELATIONS:
            a, b, rel = b, a, _INVERSE[rel]
        return ("position", a, rel, b)
    pair = sorted(((o.colour or ""), o.shape) for o in objs)
    return (spec.category,) + tuple(pair)


def _hash_int(key: str) -> int:
    """A platform-independent 60-bit integer from a string (SHA-256)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16)


@lru_cache(maxsize=None)
def heldout_combinations(category: str) -> frozenset:
    """The held-out combinations of `category`: a fixed HELDOUT_FRACTION of them ranked by hash;
    for colours one (shape, colour) pair per shape and per colour (a permutation of the colours
    ranked by hash, 6 of 36); empty for single_object, whose six prompts cannot be held out
    without never teaching a shape."""
    if category not in CATEGORIES:
        raise ValueError(f"category: unknown category {category!r}; expected one of {CATEGORIES}")
    if category == "single_object":
        return frozenset()
    if category == "colours":                 # stratified: every shape once, every colour once
        colours = sorted(COLOURS, key=lambda c: _hash_int(f"{HELDOUT_SALT}|colours|{c}"))
        return frozenset(("colours", s, c, 1) for s, c in zip(SHAPES, colours))
    combos = sorted({combination(p) for p in _all_prompts(category)})
    k = int(round(HELDOUT_FRACTION * len(combos)))
    ranked = sorted(combos, key=lambda c: _hash_int(f"{HELDOUT_SALT}|{c!r}"))
    return frozenset(ranked[:k])


def is_heldout(spec: PromptSpec) -> bool:
    """True when the prompt's combination is held out of training."""
    return combination(spec) in heldout_combinations(spec.category)


@lru_cache(maxsize=None)
def training_prompts(category: str) -> tuple[PromptSpec, ...]:
    """The captions of `category` the training sampler may emit (no held-out combination)."""
    return tuple(p for p in all_prompts(category) if not is_heldout(p))


@lru_cache(maxsize=None)
def heldout_prompts(category: str) -> tuple[PromptSpec, ...]:
    """The evaluation captions of `category`, in a fixed hash order (all six for single_object)."""
    ps = all_prompts(category) if category == "single_object" else \
        tuple(p for p in all_prompts(category) if is_heldout(p))
    return tuple(sorted(ps, key=lambda p: _hash_int(f"{HELDOUT_SALT}|order|{p.text}")))


def heldout_items(per_category: int = 50) -> list[HeldoutItem]:
    """The fixed evaluation set: `per_category` items per category, in CATEGORIES order.

    Item k of a category uses held-out prompt k mod (number of held-out prompts), so small
    categories repeat a prompt with different seeds (prompt x seed). Seeds come from SHA-256,
    so the list is identical on every machine and call.
    """
    return _items(heldout_prompts, f"{HELDOUT_SALT}|seed", per_category)


VALIDATION_SALT = "ecdit-validation-v1"


@lru_cache(maxsize=None)
def validation_prompts(category: str) -> tuple[PromptSpec, ...]:
    """The captions of `category` for choosing sampling settings: the *training* combinations
    (all six for single_object), in a fixed hash order. Never a held-out combination."""
    ps = training_prompts(category)                     # an unknown category raises in all_prompts
    return tuple(sorted(ps, key=lambda p: _hash_int(f"{VALIDATION_SALT}|order|{p.text}")))


def validation_items(per_category: int = 50) -> list[HeldoutItem]:
    """A validation set for tuning sampling (guidance scale, steps) without looking at the
    held-out items: seen (training) combinations with fresh seeds of their own salt, laid out
    like `heldout_items`. Its scenes are new draws, not the images the training sampler made."""
    return _items(validation_prompts, f"{VALIDATION_SALT}|seed", per_category)


def _items(prompts_of, salt: str, per_category) -> list[HeldoutItem]:
    """`per_category` items per category: item k takes prompt k mod len(prompts_of(category))
    and the seed SHA-256(salt|category|k)."""
    if isinstance(per_category, bool) or not isinstance(per_category, (int, np.integer)) \
            or per_category < 1:
        raise ValueError(f"per_category: expected a positive int, got {per_category!r}")
    items = []
    for cat in CATEGORIES:
        prompts = prompts_of(cat)
        for k in range(int(per_category)):
            p = prompts[k % len(prompts)]
            seed = _hash_int(f"{salt}|{cat}|{k}")
            items.append(HeldoutItem(cat, p.text, p, seed))
    return items


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------

def _gap(image_size: int) -> float:
    """Minimum distance between object boxes: 2 px at 32x32, never under 1 px."""
    return max(2.0 / 32.0, 1.0 / image_size)


def _border(image_size: int) -> float:
    """Minimum distance from an object box to the image edge: 1 px at 32x32, never under 1 px."""
    return max(1.0 / 32.0, 1.0 / image_size)


def _boxes_apart(a: SceneObject, b: SceneObject, gap: float) -> bool:
    """True when the boxes of a and b are separated by at least `gap` along x or y."""
    reach = (a.size + b.size) / 2.0 + gap
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _place(rng: np.random.Generator, shapes_colours, image_size: int) -> tuple[SceneObject, ...]:
    """Place objects (shape, colour) at random sizes/positions, boxes apart, inside the image."""
    n = len(shapes_colours)
    lo, hi = SIZE_RANGE[n]
    gap, border = _gap(image_size), _border(image_size)
    for _ in range(200):
        sizes = rng.uniform(lo, hi, size=n)
        placed: list[SceneObject] = []
        for (shape, colour), s in zip(shapes_colours, sizes):
            for _ in range(60):
                cx, cy = rng.uniform(border + s / 2, 1 - border - s / 2, size=2)
                o = SceneObject(shape, colour, float(cx), float(cy), float(s))
                if all(_boxes_apart(o, p, gap) for p in placed):
                    placed.append(o)
                    break
            else:
                break
        if len(placed) == n:
            return tuple(placed)
    # Fallback (practically unreachable): minimum-size objects on a 2x2 grid.
    cells = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
    return tuple(SceneObject(sh, c, x, y, MIN_SIZE) for (sh, c), (x, y) in zip(shapes_colours, cells))


def _place_pair(rng: np.random.Generator, a: tuple[str, str], b: tuple[str, str], relation: str,
                image_size: int) -> tuple[SceneObject, SceneObject]:
    """Place object a `relation` object b: centroid offset mostly along the relation's axis."""
    lo, hi = SIZE_RANGE[2]
    gap, border = _gap(image_size), _border(image_size)
    sign = -1.0 if relation in ("left of", "above") else 1.0                # sign of (a - b) on axis
    horizontal = relation in ("left of", "right of")
    for _ in range(1000):
        sa, sb = rng.uniform(lo, hi, size=2)
        lo_along, hi_along = (sa + sb) / 2 + gap, 1 - 2 * border - (sa + sb) / 2
        if lo_along >= hi_along:
            continue
        along = rng.uniform(lo_along, hi_along)
        perp = rng.uniform(-POSITION_SLOPE, POSITION_SLOPE) * along
        bx, by = rng.uniform(border + sb / 2, 1 - border - sb / 2, size=2)
        dx, dy = (sign * along, perp) if horizontal else (perp, sign * along)
        ob = SceneObject(b[0], b[1], float(bx), float(by), float(sb))
        # Offsets are between centroids; shift a's box so its centroid lands at b's + (dx, dy).
        ca = (ob.centroid[0] + dx, ob.centroid[1] + dy - SHAPE_CENTROID_DY[a[0]] * sa)
        oa = SceneObject(a[0], a[1], float(ca[0]), float(ca[1]), float(sa))
        inside = all(border + o.size / 2 <= c <= 1 - border - o.size / 2
                     for o in (oa, ob) for c in (o.cx, o.cy))
        if inside and _boxes_apart(oa, ob, gap):
            return oa, ob
    # Fallback (practically unreachable): two minimum-size objects on the axis through the centre.
    s, d = MIN_SIZE, 0.3
    pa, pb = (0.5 + sign * d, 0.5), (0.5 - sign * d, 0.5)
    if not horizontal:
        pa, pb = pa[::-1], pb[::-1]
    return (SceneObject(a[0], a[1], pa[0], pa[1], s), SceneObject(b[0], b[1], pb[0], pb[1], s))


def _random_colour(rng: np.random.Generator) -> str:
    names = tuple(COLOURS)
    return names[int(rng.integers(len(names)))]


def scene_for_prompt(spec: PromptSpec, rng: np.random.Generator, image_size: int = 32):
    """A random scene (tuple of SceneObjects) that satisfies `spec` and contains nothing else.

    Unspecified colours are drawn uniformly; sizes/positions as described in the module docstring.
    `image_size` only sets pixel margins (gap between objects, distance to the border).
    """
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    if not isinstance(spec, PromptSpec):
        raise ValueError(f"spec: expected a PromptSpec or caption str, got {type(spec).__name__}")
    if spec.category not in CATEGORIES:
        raise ValueError(f"spec: unknown category {spec.category!r}; expected one of {CATEGORIES}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    image_size = _check_image_size(image_size)
    wanted = [(o.shape, o.colour or _random_colour(rng)) for o in spec.objects for _ in range(o.count)]
    if spec.category == "position":
        return _place_pair(rng, wanted[0], wanted[1], spec.relation, image_size)
    order = rng.permutation(len(wanted))          # do not always put the first-named object first
    return _place(rng, [wanted[i] for i in order], image_size)


def render_items(items, image_size: int = 32) -> np.ndarray:
    """The held-out items' own scenes (each from its seed), rendered: (M, I, J, 3) float32."""
    image_size = _check_image_size(image_size)
    if len(items) == 0:
        raise ValueError("items: expected at least one held-out item")
    return np.stack([render(scene_for_prompt(it.spec, np.random.default_rng(it.seed), image_size), image_size)
                     for it in items])                                        # (M, I, J, 3)


def layout_order(spec: PromptSpec, scene) -> PromptSpec:
    """The caption of an unrelated pair (two_objects, colour_attribution) written in the scene's
    reading order: the noun phrase of the object further left first, or of the object higher up
    when the two lie more above one another than side by side (centroid offsets). Other
    categories, and a pair already in that order, come back unchanged.

    The two wordings of a pair are one combination (`combination`), so the held-out rule is
    untouched; the image is the same, and only which of its two true captions it gets changes.
    """
    if spec.category not in ("two_objects", "colour_attribution"):
        return spec
    first, second = spec.objects
    a = next(o for o in scene if o.shape == first.shape)          # the shapes of a pair differ
    b = next(o for o in scene if o.shape == second.shape)
    (ax, ay), (bx, by) = a.centroid, b.centroid
    side_by_side = abs(bx - ax) >= abs(by - ay)
    in_order = ax <= bx if side_by_side else ay <= by              # y grows downwards
    return spec if in_order else make_prompt(spec.category, (second, first))


def sample_batch(rng: np.random.Generator, batch_size: int, image_size: int = 32, category_weights=None,
                 label_patch_size: int | None = None, pair_caption_order: str = "any"):
    """A training batch: (images (B, I, J, 3) float32 in [0, 1], captions list[str]), and with
    `label_patch_size` p also each image's `token_labels` at patch size p, (B, (I/p)^2) int32, as a
    third element. The labels draw no random numbers: the images and captions stay the same.

    Each example draws a category (uniformly, or in proportion to `category_weights`: one
    non-negative number per entry of CATEGORIES), then a training caption of that category
    uniformly (never a held-out combination), then a random scene for it. With
    `pair_caption_order="layout"` an unrelated pair's caption is then written in the scene's reading
    order (`layout_order`), which draws no random numbers: the images stay the same.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    image_size = _check_image_size(image_size)
    p = None
    if category_weights is not None:
        w = np.asarray(category_weights, dtype=np.float64)                   # (6,)
        if w.shape != (len(CATEGORIES),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"category_weights: expected {len(CATEGORIES)} finite non-negative numbers with a "
                             f"positive sum, one per category of {CATEGORIES}, got {category_weights!r}")
        p = w / w.sum()                                                      # (6,)
    if label_patch_size is not None:
        label_patch_size = _check_patch_size("label_patch_size", label_patch_size, image_size)
    one_of("pair_caption_order", pair_caption_order, PAIR_CAPTION_ORDERS)
    images = np.empty((int(batch_size), image_size, image_size, 3), dtype=np.float32)  # (B, I, J, 3)
    captions: list[str] = []
    coverages: list = []
    for i in range(int(batch_size)):
        # The uniform draw stays rng.integers, so a run without weights keeps its data stream.
        k = int(rng.integers(len(CATEGORIES))) if p is None else int(rng.choice(len(CATEGORIES), p=p))
        prompts = training_prompts(CATEGORIES[k])
        spec = prompts[int(rng.integers(len(prompts)))]
        scene = scene_for_prompt(spec, rng, image_size)
        images[i], coverage = _render_with_coverage(scene, image_size)
        if pair_caption_order == "layout":
            spec = layout_order(spec, scene)
        captions.append(spec.text)
        if label_patch_size is not None:
            coverages.append(coverage)
    if label_patch_size is not None:
        return images, captions, _labels_from_coverage(coverages, image_size, label_patch_size)  # (B, S)
    return images, captions
