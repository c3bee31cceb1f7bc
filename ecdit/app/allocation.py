"""Heterogeneous compute as a number (Sec. 3.4, Fig. 6): does a token that holds more of the
picture's detail get more experts?

Fig. 6 shows it as heatmaps; here it is a correlation. For every generated image, each token (a
p x p patch of the final image) gets a *detail* value, the fraction of its pixels that lie on an
edge (a pixel that differs from a 4-neighbour by more than EDGE_THRESHOLD in some channel: object
boundaries, not flat background or flat object interiors). Its *allocation* at denoising step k
and sparse layer l is how many experts chose it, |{i : s in I_i}| (Eq. 7), as the sampler records
it. Per (layer, step), the Pearson correlation of the two over the S tokens of one image, averaged
over images, says how strongly compute follows detail: 0 is no relation, 1 is allocation a linear
function of detail. Images whose detail or allocation is the same on every token (a blank sample,
or a step where every token got the same count) carry no correlation and are left out; `images`
says how many counted.

Expert choice with one image per routing group gives every image the same total compute (E C
slots over S tokens), so only the *distribution* within an image can follow detail; that is what
the correlation measures.
"""
from __future__ import annotations

import numpy as np

EDGE_THRESHOLD = 0.25          # a pixel is an edge pixel when a 4-neighbour differs by more than this
                               # in some channel (images in [0, 1]; palette steps are 1.0, soft
                               # anti-aliased edges ~0.25-0.75)


def edge_pixels(images) -> np.ndarray:
    """(M, I, J, Ch) images in [0, 1] -> (M, I, J) bool: the pixel differs from one of its four
    neighbours by more than EDGE_THRESHOLD in some channel."""
    x = np.asarray(images, np.float32)                           # (M, I, J, Ch)
    if x.ndim != 4:
        raise ValueError(f"images: expected (M, I, J, Ch), got shape {x.shape}")
    dy = np.abs(np.diff(x, axis=1)).max(axis=-1) > EDGE_THRESHOLD  # (M, I-1, J) rows r and r+1 differ
    dx = np.abs(np.diff(x, axis=2)).max(axis=-1) > EDGE_THRESHOLD  # (M, I, J-1) columns c and c+1 differ
    edge = np.zeros(x.shape[:3], bool)                           # (M, I, J)
    edge[:, :-1] |= dy
    edge[:, 1:] |= dy
    edge[:, :, :-1] |= dx
    edge[:, :, 1:] |= dx
    return edge


def patch_detail(images, patch_size: int) -> np.ndarray:
    """(M, I, J, Ch) -> (M, S): the fraction of each p x p patch's pixels that are edge pixels,
    tokens in patchify's row-major order."""
    edge = edge_pixels(images).astype(np.float32)                # (M, I, J)
    m, i, j = edge.shape
    p = int(patch_size)
    if p < 1 or i % p or j % p:
        raise ValueError(f"patch_size: {patch_size} does not divide the image size {i}x{j}")
    g = edge.reshape(m, i // p, p, j // p, p)                    # (M, gi, p, gj, p)
    return g.mean(axis=(2, 4)).reshape(m, (i // p) * (j // p))   # (M, S)


def _pearson_over_tokens(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the Pearson correlation of a and b (..., S) over the last axis, and whether the
    row counts (both vary over the tokens)."""
    a = a - a.mean(axis=-1, keepdims=True)                       # (..., S)
    b = b - b.mean(axis=-1, keepdims=True)                       # (..., S)
    na = np.sqrt((a * a).sum(axis=-1))                           # (...,)
    nb = np.sqrt((b * b).sum(axis=-1))                           # (...,)
    ok = (na > 1e-9) & (nb > 1e-9)                               # (...,)
    r = np.where(ok, (a * b).sum(axis=-1) / np.where(ok, na * nb, 1.0), 0.0)  # (...,)
    return r, ok


def allocation_detail_correlation(experts, detail) -> dict:
    """experts (T, n, M, S) from the sampler and detail (M, S) from `patch_detail` ->
    {"r": (n, T) mean over images of the per-image Pearson correlation at each sparse layer and
    step (NaN where no image counted), "images": (n, T) how many images counted,
    "r_mean": (n,) the mean over steps of r (NaN steps left out)}."""
    e = np.asarray(experts, np.float64)                          # (T, n, M, S)
    d = np.asarray(detail, np.float64)                           # (M, S)
    if e.ndim != 4:
        raise ValueError(f"experts: expected (T, n, M, S), got shape {e.shape}")
    if d.shape != e.shape[2:]:
        raise ValueError(f"detail: expected (M, S) = {e.shape[2:]} to match experts, got shape {d.shape}")
    r, ok = _pearson_over_tokens(e, np.broadcast_to(d, e.shape))  # (T, n, M) x2
    counted = ok.sum(axis=2)                                     # (T, n)
    with np.errstate(invalid="ignore"):
        mean_r = np.where(counted > 0, (r * ok).sum(axis=2) / np.maximum(counted, 1), np.nan)  # (T, n)
    r_layer = mean_r.T                                           # (n, T)
    with np.errstate(invalid="ignore"):
        r_mean = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in r_layer])  # (n,)
    return {"r": r_layer, "images": counted.T, "r_mean": r_mean}


def correlation_lines(result: dict, sparse_layers, times) -> list[str]:
    """Printable lines: one per sparse layer (1-based, as the paper numbers layers), its mean r
    and r at each denoising step."""
    lines = []
    for k, layer in enumerate(sparse_layers):
        per_step = " ".join("  nan" if not np.isfinite(v) else f"{v:+.2f}" for v in result["r"][k])
        lines.append(f"layer {layer + 1}: r = {result['r_mean'][k]:+.3f} (mean over steps); per step "
                     f"(t = {times[0]:.2f} -> {times[-1]:.2f}): {per_step}")
    return lines
