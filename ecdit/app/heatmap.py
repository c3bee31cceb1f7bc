"""Compute-allocation heatmaps in the style of Fig. 6 (Sec. 3.4).

Each cell is one image token (a p x p patch); its value is how many experts chose that token,
|{i : s in I_i}| (Eq. 7), from `experts_per_token` recorded by the sampler. Darker = more compute.

  Fig. 6(a): per sparse layer at one denoising step   -> `plot_allocation` top row
  Fig. 6(b): per denoising step, one row per layer     -> `plot_allocation` lower rows

Inputs: experts (T, n, S) for one image (T denoising steps, n sparse layers, S tokens), or the
sampler's (T, n, M, S) with an image index.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  the backend is chosen first
import numpy as np  # noqa: E402


def allocation_grid(experts_per_token, grid_size: int) -> np.ndarray:
    """(..., S) token counts -> (..., g, g) in image layout (row-major tokens, as patchify)."""
    a = np.asarray(experts_per_token)
    if a.shape[-1] != grid_size * grid_size:
        raise ValueError(f"experts_per_token: last axis {a.shape[-1]} is not grid_size^2 = {grid_size ** 2}")
    return a.reshape(a.shape[:-1] + (grid_size, grid_size))


def _check(experts, image):
    e = np.asarray(experts)
    if e.ndim != 3:
        raise ValueError(f"experts: expected (T, n, S) for one image, got shape {e.shape}")
    if e.shape[1] == 0:
        raise ValueError("experts: the model has no sparse layers (dense), so there is no allocation to draw")
    if image is not None and np.asarray(image).ndim != 3:
        raise ValueError(f"image: expected (I, I, 3), got shape {np.shape(image)}")
    return e


def step_times(num_steps: int) -> np.ndarray:
    """t of each Euler step (the sampler evaluates the velocity at t = 1, 1 - 1/T, ...)."""
    return np.linspace(1.0, 0.0, num_steps + 1)[:-1]


def plot_allocation(image, experts, path, *, sparse_layers=None, num_experts=None, step=None,
                    num_step_columns=6, prompt=None):
    """Fig. 6 for one generated image: image + per-layer allocation at `step` (default: the last
    step), then one row per sparse layer over `num_step_columns` denoising steps. Writes a PNG."""
    e = _check(experts, image)
    t_steps, n, s = e.shape
    g = int(round(np.sqrt(s)))
    grid = allocation_grid(e, g)                                  # (T, n, g, g)
    layers = list(sparse_layers) if sparse_layers is not None else list(range(n))
    vmax = num_experts if num_experts is not None else max(1, int(e.max()))
    step = t_steps - 1 if step is None else int(step)
    cols = sorted(set(np.linspace(0, t_steps - 1, min(num_step_columns, t_steps)).round().astype(int)))
    times = step_times(t_steps)
    ncol = max(n + 1, len(cols))
    fig, axes = plt.subplots(1 + n, ncol, figsize=(1.6 * ncol + 0.8, 1.6 * (1 + n) + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if image is not None:
        axes[0, 0].imshow(np.clip(image, 0, 1), interpolation="nearest")
        axes[0, 0].set_title("sample", fontsize=8)
    im = None
    for j in range(n):                                            # Fig. 6(a): per layer at one step
        im = axes[0, j + 1].imshow(grid[step, j], cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        axes[0, j + 1].set_title(f"layer {layers[j] + 1}, t={times[step]:.2f}", fontsize=7)
    for j in range(n):                                            # Fig. 6(b): per step, one row per layer
        for k, c in enumerate(cols):
            im = axes[1 + j, k].imshow(grid[c, j], cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
            axes[1 + j, k].set_title(f"L{layers[j] + 1} t={times[c]:.2f}", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="experts per token")
    fig.suptitle(("compute allocation" + (f": '{prompt}'" if prompt else "")), fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_allocation_overview(images, experts, prompts, path, *, sparse_layers=None, num_experts=None,
                             step=None):
    """One row per prompt: the sample and its per-layer allocation at `step` (default: last),
    plus the mean over all steps. images (M, I, I, 3), experts (T, n, M, S). Writes a PNG."""
    e = np.asarray(experts)
    if e.ndim != 4:
        raise ValueError(f"experts: expected (T, n, M, S), got shape {e.shape}")
    t_steps, n, count, s = e.shape
    if n == 0:
        raise ValueError("experts: the model has no sparse layers (dense), so there is no allocation to draw")
    g = int(round(np.sqrt(s)))
    grid = allocation_grid(e, g)                                  # (T, n, M, g, g)
    layers = list(sparse_layers) if sparse_layers is not None else list(range(n))
    vmax = num_experts if num_experts is not None else max(1, int(e.max()))
    step = t_steps - 1 if step is None else int(step)
    fig, axes = plt.subplots(count, 1 + 2 * n, figsize=(1.5 * (1 + 2 * n) + 0.8, 1.5 * count + 0.5), squeeze=False)
    times = step_times(t_steps)
    for i in range(count):
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].imshow(np.clip(images[i], 0, 1), interpolation="nearest")
        axes[i, 0].set_ylabel(prompts[i], fontsize=6, rotation=0, ha="right", va="center")
        for j in range(n):
            im = axes[i, 1 + j].imshow(grid[step, j, i], cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
            axes[i, 1 + n + j].imshow(grid[:, j, i].mean(axis=0), cmap="Blues", vmin=0, vmax=vmax,
                                      interpolation="nearest")
            if i == 0:
                axes[i, 1 + j].set_title(f"layer {layers[j] + 1}\nt={times[step]:.2f}", fontsize=7)
                axes[i, 1 + n + j].set_title(f"layer {layers[j] + 1}\nmean over t", fontsize=7)
    axes[0, 0].set_title("sample", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.5, label="experts per token")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_image_grid(images, path, captions=None, columns=8, scale=2):
    """A grid of images (M, I, I, 3) in [0, 1], optional captions under each. Writes a PNG."""
    images = np.asarray(images)
    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.9 * scale, rows * (0.9 * scale + 0.25)),
                             squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(np.clip(images[k], 0, 1), interpolation="nearest")
            if captions is not None:
                ax.set_title(captions[k], fontsize=5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
