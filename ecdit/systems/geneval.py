"""A GenEval-style scorer for captioned-shapes images, in plain NumPy.

GenEval (Ghosh et al., 2023) scores a text-to-image model by detecting the objects in each
generated image and checking the prompt's requirement (object present, count, colour, relative
position). Here the "detector" is exact-by-construction for our synthetic world:

1. **Segment by colour.** Every pixel goes to its nearest palette entry (the six colours or the
   background) if it lies within COLOUR_THRESHOLD of it, else to nothing. A white background
   and cube-corner colours keep soft (blurred, anti-aliased) edges out of the wrong colour.
2. **Connected components** (8-connected, same colour label) by vectorised min-label
   propagation; components under MIN_AREA_FRACTION of the image (specks) are ignored.
3. **Classify the shape by where its mass lies.** For a component of colour c we estimate each
   pixel's coverage alpha = projection of (pixel - background) on (c - background), on the
   component grown by one pixel (so soft edges count). Its mass and centroid fix, for every
   candidate shape, the pose that shape would need: box side sqrt(area / fill) and centre at the
   centroid (less the triangle's centroid offset). The shape whose template, drawn at that pose,
   overlaps the coverage best (soft IoU = sum min / sum max) wins; below MIN_IOU the component is
   no recognisable shape and is dropped. Moments survive blur (blur keeps mass and centroid)
   and noise (they average many pixels), which is what a small diffusion model produces.
4. **Check the prompt** like GenEval: single object = at least one of the shape; two objects =
   both present; counting = exactly N; colours = some object of the shape has the colour;
   position = both present and every (A, B) pair satisfies the relation under GenEval's rule;
   colour attribution = both (colour, shape) pairs present.

Position rule (GenEval's `relative_position`): with offset = centroid(A) - centroid(B) and the
two bounding-box sides, shrink each axis' |offset| by 0.1 x (dim A + dim B) (never below 0),
divide by |offset|, and say "left of" when the x part < -0.5 (right > 0.5; above: y < -0.5;
below: y > 0.5, y pointing down). Renders from `ecdit.systems.shapes` keep the perpendicular offset under
0.35 x the offset along the axis, well inside this rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ecdit.systems.shapes import (
    BACKGROUND, CATEGORIES, COLOURS, SHAPE_CENTROID_DY, SHAPE_FILL, SHAPES, PromptSpec,
    parse_prompt, shape_coverage,
)

COLOUR_THRESHOLD = 0.45        # max RGB distance from a palette entry (entries are >= 1.0 apart)
MIN_AREA_FRACTION = 0.01       # components smaller than this fraction of the image are specks
MIN_AREA_PIXELS = 3            # ... and never fewer pixels than this
MIN_IOU = 0.6                  # best template overlap below this: not a recognisable shape
BLUR_LEVELS = 1                # templates are also matched blurred this many times ([1,2,1]/4)
POSITION_THRESHOLD = 0.1       # GenEval's box-size allowance in the position rule

_PALETTE_NAMES: tuple[str, ...] = ("background",) + tuple(COLOURS)
_PALETTE = np.array([BACKGROUND] + [COLOURS[c] for c in COLOURS], dtype=np.float32)  # (7, 3)
_BG = np.asarray(BACKGROUND, dtype=np.float32)                                     # (3,)

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("overall", "Overall"), ("single_object", "Single obj."), ("two_objects", "Two obj."),
    ("counting", "Counting"), ("colours", "Colors"), ("position", "Position"),
    ("colour_attribution", "Color attr."),
)


@dataclass(frozen=True)
class Detection:
    """One object found in an image.

    centroid is (x, y) in pixels (x right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5));
    area is the coverage mass in pixels; bbox is (x0, y0, x1, y1) of the segmented pixels,
    exclusive at the high end; iou is the template overlap that chose `shape`.
    """
    shape: str
    colour: str
    centroid: tuple[float, float]
    area: float
    bbox: tuple[int, int, int, int]
    iou: float


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _check_image(image, name: str = "image") -> np.ndarray:
    """Return `image` as (I, J, 3) float32, or raise ValueError naming `name`."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (I, J, 3), got {a.shape}")
    if a.shape[0] < 4 or a.shape[1] < 4:
        raise ValueError(f"{name}: expected I, J >= 4, got {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
    return a


def _as_spec(spec_or_text, name: str = "spec_or_text") -> PromptSpec:
    """A PromptSpec from a spec, a caption, or an object with a `.spec` (a held-out item)."""
    if isinstance(spec_or_text, str):
        return parse_prompt(spec_or_text)
    if isinstance(spec_or_text, PromptSpec):
        spec = spec_or_text
    elif isinstance(getattr(spec_or_text, "spec", None), PromptSpec):
        spec = spec_or_text.spec
    else:
        raise ValueError(f"{name}: expected a PromptSpec, a caption str or a held-out item, "
                         f"got {type(spec_or_text).__name__}")
    if spec.category not in CATEGORIES:
        raise ValueError(f"{name}: unknown category {spec.category!r}; expected one of {CATEGORIES}")
    return spec


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index: 0 background, 1..6 the colours in COLOURS order, -1 none.

    A pixel gets its nearest palette entry when within COLOUR_THRESHOLD of it. (I, J) int.
    """
    img = _check_image(image)                                                # (I, J, 3)
    d = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=-1)   # (I, J, 7)
    lab = np.argmin(d, axis=-1)                                              # (I, J)
    return np.where(np.min(d, axis=-1) <= COLOUR_THRESHOLD, lab, -1)


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _neighbour_views(a: np.ndarray, fill) -> list[np.ndarray]:
    """For each of the 8 neighbour offsets (dy, dx): the (I, J) array v with v[i, j] = a[i+dy, j+dx]
    (`fill` outside the image), as views into one padded copy."""
    h, w = a.shape
    p = np.pad(a, 1, constant_values=fill)                                   # (H+2, W+2)
    return [p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _NEIGHBOURS]


def connected_components(labels: np.ndarray) -> np.ndarray:
    """8-connected components of equal positive labels; (I, J) int, -1 outside components.

    Each pixel starts with its own flat index; every round it takes the smallest index among its
    same-label neighbours, then jumps to its label's label (pointer jumping), until nothing
    changes. Labels always name a pixel of the same component, so the fixed point gives each
    component its smallest pixel index. Rounds ~ log of the component's diameter.
    """
    lab = np.asarray(labels)                                                 # (I, J)
    h, w = lab.shape
    fg = lab > 0
    big = h * w
    links = [fg & (v == lab) for v in _neighbour_views(lab, -1)]             # 8 x (I, J)
    comp = np.where(fg, np.arange(big).reshape(h, w), big)                   # (I, J)
    buf = np.full((h + 2, w + 2), big, dtype=comp.dtype)                     # (H+2, W+2)
    views = [buf[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _NEIGHBOURS]
    for _ in range(big):
        buf[1:-1, 1:-1] = comp
        new = comp.copy()
        for same, v in zip(links, views):
            np.minimum(new, np.where(same, v, big), out=new)
        new = np.append(new.ravel(), big)[new]                               # pointer jumping
        if np.array_equal(new, comp):
            break
        comp = new
    return np.where(fg, comp, -1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Mask grown by one pixel in the 8-neighbourhood. (I, J) bool."""
    out = mask.copy()
    for v in _neighbour_views(mask, False):
        out |= v
    return out


# ---------------------------------------------------------------------------------------------
# Shape classification
# ---------------------------------------------------------------------------------------------

def coverage_map(image: np.ndarray, component: np.ndarray, colour: str, labels: np.ndarray) -> np.ndarray:
    """Soft coverage alpha of `colour` on the component grown by one pixel. (I, J) float32.

    alpha = <pixel - bg, c - bg> / |c - bg|^2 clipped to [0, 1]; pixels labelled with another
    colour are excluded so a close neighbour never leaks in.
    """
    c = np.asarray(COLOURS[colour], dtype=np.float32) - _BG                  # (3,)
    alpha = np.clip((image - _BG) @ c / float(c @ c), 0.0, 1.0)              # (I, J)
    own = _PALETTE_NAMES.index(colour)
    region = _dilate(component) & ((labels <= 0) | (labels == own))          # (I, J)
    return np.where(region, alpha, 0.0).astype(np.float32)


def _blur(a: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (Gaussian sigma ~0.7 px), zero outside. (I, J)."""
    b = 0.5 * a                                                              # (I, J)
    b[1:] += 0.25 * a[:-1]
    b[:-1] += 0.25 * a[1:]
    c = 0.5 * b
    c[:, 1:] += 0.25 * b[:, :-1]
    c[:, :-1] += 0.25 * b[:, 1:]
    return c


def shape_scores(alpha: np.ndarray) -> dict[str, float]:
    """Soft IoU of the coverage `alpha` (I, J) with each shape posed by alpha's mass and centroid."""
    h, w = alpha.shape
    mass = float(alpha.sum())
    if mass <= 0:
        return {s: 0.0 for s in SHAPES}
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5                     # (I, J) pixel centres
    cx = float((alpha * xs).sum() / mass)
    cy = float((alpha * ys).sum() / mass)
    out = {}
    for s in SHAPES:
        size = math.sqrt(mass / SHAPE_FILL[s])
        t = shape_coverage(s, cx, cy - SHAPE_CENTROID_DY[s] * size, size, h, w)  # (I, J)
        best = 0.0
        for _ in range(BLUR_LEVELS + 1):
            best = max(best, float(np.minimum(alpha, t).sum() / np.maximum(alpha, t).sum()))
            t = _blur(t)
        out[s] = best
    return out


def find_objects(image) -> list[Detection]:
    """The recognisable objects in `image` ((I, J, 3), values nominally in [0, 1]).

    Colour-segmented 8-connected components of at least max(MIN_AREA_PIXELS,
    MIN_AREA_FRACTION * H * W) pixels whose best shape template overlaps with IoU >= MIN_IOU;
    sorted by decreasing area.
    """
    img = _check_image(image)                                                # (I, J, 3)
    h, w, _ = img.shape
    labels = colour_labels(img)                                              # (I, J)
    comps = connected_components(labels)                                     # (I, J)
    min_area = max(MIN_AREA_PIXELS, MIN_AREA_FRACTION * h * w)
    ids, counts = np.unique(comps[comps >= 0], return_counts=True)
    found = []
    for cid, n in zip(ids, counts):
        if n < min_area:
            continue
        mask = comps == cid                                                  # (I, J)
        colour = _PALETTE_NAMES[int(labels[mask][0])]
        alpha = coverage_map(img, mask, colour, labels)                      # (I, J)
        scores = shape_scores(alpha)
        shape = max(scores, key=scores.get)
        if scores[shape] < MIN_IOU:
            continue
        mass = float(alpha.sum())
        ys, xs = np.nonzero(mask)
        centroid = (float((alpha.sum(axis=0) * (np.arange(w) + 0.5)).sum() / mass),
                    float((alpha.sum(axis=1) * (np.arange(h) + 0.5)).sum() / mass))
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        found.append(Detection(shape, colour, centroid, mass, bbox, scores[shape]))
    return sorted(found, key=lambda d: -d.area)


# ---------------------------------------------------------------------------------------------
# Prompt checks
# ---------------------------------------------------------------------------------------------

def relations(a: Detection, b: Detection) -> set[str]:
    """Relations that hold for "a <relation> b" under GenEval's rule (see module docstring)."""
    off = np.subtract(a.centroid, b.centroid)                                # (2,) x, y
    dims_a = np.array([a.bbox[2] - a.bbox[0], a.bbox[3] - a.bbox[1]], dtype=np.float64)
    dims_b = np.array([b.bbox[2] - b.bbox[0], b.bbox[3] - b.bbox[1]], dtype=np.float64)
    revised = np.maximum(np.abs(off) - POSITION_THRESHOLD * (dims_a + dims_b), 0.0) * np.sign(off)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(off)
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def _matching(detections, o):
    """The detections of the requested object o: its shape, and its colour when o names one."""
    return [d for d in detections if d.shape == o.shape and (o.colour is None or d.colour == o.colour)]


def satisfies(detections, spec: PromptSpec) -> bool:
    """Does a list of Detections satisfy the prompt `spec`? (GenEval's per-category rule.)"""
    spec = _as_spec(spec, "spec")

    groups = [_matching(detections, o) for o in spec.objects]
    if spec.category == "counting":
        return len(groups[0]) == spec.objects[0].count
    if not all(groups):
        return False
    if spec.category == "position":
        return all(spec.relation in relations(a, b) for a in groups[0] for b in groups[1])
    return True


def score_image(image, spec_or_text) -> bool:
    """True when `image` ((I, J, 3)) satisfies the prompt (a PromptSpec or a caption string)."""
    spec = _as_spec(spec_or_text)
    return satisfies(find_objects(image), spec)


def _images_and_specs(images, items) -> tuple[list, list[PromptSpec]]:
    """images (M, I, J, 3) or a sequence of (I, J, 3), and items (M specs, captions or held-out
    items), as two lists; ValueError naming images or items[i] when they do not pair up."""
    items = list(items)
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"images: expected shape (M, I, J, 3), got {images.shape}")
    imgs = list(images)
    if len(imgs) != len(items):
        raise ValueError(f"images: got {len(imgs)} images for {len(items)} items")
    return imgs, [_as_spec(it, f"items[{i}]") for i, it in enumerate(items)]


def score_items(images, items) -> np.ndarray:
    """Per-item pass/fail: images (M, I, J, 3) or a sequence of (I, J, 3); items M specs,
    captions or held-out items. Returns (M,) bool."""
    imgs, specs = _images_and_specs(images, items)
    return np.array([score_image(_check_image(im, f"images[{i}]"), sp)
                     for i, (im, sp) in enumerate(zip(imgs, specs))], dtype=bool)


def evaluate(images, items) -> dict[str, float]:
    """GenEval-style accuracies: {category: fraction passed, ..., "overall": mean over categories}.

    Only categories that occur in `items` get a key; "overall" is the unweighted mean of their
    accuracies (as in GenEval's Table 2), not the fraction of all items.
    """
    passed = score_items(images, items)                                      # (M,)
    cats = np.array([_as_spec(it).category for it in items])                 # (M,)
    if len(cats) == 0:
        raise ValueError("items: empty")
    out = {c: float(passed[cats == c].mean()) for c in CATEGORIES if np.any(cats == c)}
    out["overall"] = float(np.mean([out[c] for c in CATEGORIES if c in out]))
    return out


PAIR_CATEGORIES: tuple[str, ...] = ("two_objects", "position", "colour_attribution")


def miss_breakdown(images, items) -> dict[str, dict]:
    """Where the two-object prompts fail (a diagnostic beside `evaluate`, not a score).

    For each category of PAIR_CATEGORIES present in `items`: "items"; "named" (2 per item) and
    "named_found" (named objects with a detection of their shape, and colour when the prompt gives
    one); "both_found" (items whose two named objects are both found: the two-object and colour
    attribution scores, and an upper bound on position's); "objects" (items by the number of
    recognised objects: "0", "1", "2", "3+"); "same_shape_pairs" (items with exactly two recognised
    objects of one shape: the two objects took the same shape). images (M, I, J, 3), items M specs,
    captions or held-out items, as in `score_items`."""
    imgs, specs = _images_and_specs(images, items)
    out: dict[str, dict] = {}
    for i, (im, spec) in enumerate(zip(imgs, specs)):
        if spec.category not in PAIR_CATEGORIES:
            continue
        found = find_objects(_check_image(im, f"images[{i}]"))
        row = out.setdefault(spec.category, {"items": 0, "named": 0, "named_found": 0, "both_found": 0,
                                             "objects": {"0": 0, "1": 0, "2": 0, "3+": 0}, "same_shape_pairs": 0})
        hits = [bool(_matching(found, o)) for o in spec.objects]
        row["items"] += 1
        row["named"] += len(hits)
        row["named_found"] += sum(hits)
        row["both_found"] += all(hits)
        row["objects"][str(len(found)) if len(found) < 3 else "3+"] += 1
        row["same_shape_pairs"] += len(found) == 2 and found[0].shape == found[1].shape
    return {c: out[c] for c in PAIR_CATEGORIES if c in out}


def format_misses(breakdown: dict[str, dict]) -> list[str]:
    """One line per category of `miss_breakdown`'s result."""
    lines = []
    for cat, r in breakdown.items():
        objs = ", ".join(f"{k}: {v}" for k, v in r["objects"].items())
        lines.append(f"{cat}: named shapes found {r['named_found']} of {r['named']}, both found in "
                     f"{r['both_found']} of {r['items']}; images by objects found ({objs}); two objects of "
                     f"one shape in {r['same_shape_pairs']}")
    return lines


def format_table(results: dict, label: str | None = None) -> str:
    """Markdown table of `evaluate` results in GenEval Table 2 column order, in percent.

    Missing categories print as "-". With `label`, a leading "Model" column holds it.
    """
    if not isinstance(results, dict):
        raise ValueError(f"results: expected a dict from evaluate, got {type(results).__name__}")
    unknown = set(results) - {k for k, _ in TABLE_COLUMNS}
    if unknown:
        raise ValueError(f"results: unknown keys {sorted(unknown)}")
    heads = [h for _, h in TABLE_COLUMNS]
    cells = []
    for key, _ in TABLE_COLUMNS:
        v = results.get(key)
        if v is None:
            cells.append("-")
        else:
            v = float(v)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"results: {key} = {v} is not a fraction in [0, 1]")
            cells.append(f"{100.0 * v:.1f}")
    if label is not None:
        heads, cells = ["Model"] + heads, [str(label)] + cells
    lines = ["| " + " | ".join(heads) + " |",
             "|" + "|".join([":---"] * (label is not None) + ["---:"] * len(TABLE_COLUMNS)) + "|",
             "| " + " | ".join(cells) + " |"]
    return "\n".join(lines)
