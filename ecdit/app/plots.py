"""Curves as PNGs: one run's training loss, several runs side by side (compare), and the experts
per token along the denoising steps (compare's MoE rows: DiffMoE's compute follows the noise level).

matplotlib with the Agg backend (no screen needed).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  the backend is chosen first
import numpy as np  # noqa: E402


def _running_mean(values, k):
    return np.convolve(values, np.ones(k) / k, mode="valid")


def plot_loss(history, path, title="training loss"):
    """Loss curve (raw and a running mean) of metric records [{step, loss, ...}] as a PNG."""
    steps = np.array([r["step"] for r in history])
    loss = np.array([r["loss"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    if len(loss) >= 5:
        k = max(2, len(loss) // 20)
        ax.plot(steps[k - 1:], _running_mean(loss, k), lw=1.8, label=f"running mean ({k} logs)")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _finish(fig, ax, path, xlabel, ylabel, legend_size=8):
    """Label, grid, legend, save as PNG and close: the end of every multi-series plot here."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_compare(histories: dict, labels: dict, path):
    """Running-mean training loss of several runs ({kind: metric records}) in one PNG: Eq. 1 alone
    ("flow_loss") where the records have it, so auxiliary and predictor losses do not shift a curve."""
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for kind, h in histories.items():
        if not h:
            continue
        steps = np.array([r["step"] for r in h])
        loss = np.array([r.get("flow_loss", r["loss"]) for r in h])
        k = max(1, len(loss) // 15)
        ax.plot(steps[k - 1:], _running_mean(loss, k), label=labels.get(kind, kind))
    return _finish(fig, ax, path, "step", "training loss, Eq. 1 (running mean)")


def plot_experts_per_step(series: dict, times, path):
    """Mean experts per token at each denoising step ({label: (T,) values}) against the step's t,
    t = 1 (noise) on the left: a static row is a flat line at f_c, a dynamic row shows where the
    capacity predictor spends compute."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, values in series.items():
        ax.plot(times, values, marker="o", ms=3, lw=1.4, label=label,
                ls="-" if "dynamic" in label else "--")
    ax.set_xlim(1.0, 0.0)
    ax.set_title("compute per token along sampling (conditional half, mean over layers)")
    return _finish(fig, ax, path, "t of the denoising step (1 = noise, 0 = data)", "activated experts per token",
                   legend_size=7)
