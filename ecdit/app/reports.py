"""What the demo, the comparison and `ecdit eval` share: sample and score a model, format scores.

`evaluate_model` samples every held-out (or validation) item and scores it with shapes-GenEval;
`scores_table` formats results as one markdown table in GenEval's column order.
"""
from __future__ import annotations

import time

import numpy as np

from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig
from ecdit.systems import geneval
from ecdit.systems.sampling import generate


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def final_loss(history, frac=0.2, key="loss") -> float:
    """Mean logged `key` (the total loss; "flow_loss": Eq. 1 alone) over the last `frac` of the run
    (the loss is noisy per batch)."""
    losses = [r[key] for r in history if key in r]
    k = max(1, int(len(losses) * frac))
    return float(np.mean(losses[-k:])) if losses else float("nan")


def evaluate_model(params, config: ModelConfig, items, *, num_steps=DEFAULT_SAMPLE_STEPS,
                   guidance_scale=DEFAULT_GUIDANCE, seed=0,
                   batch_size=64, progress=True, desc="sample", dynamic=False, step=None, mesh=None):
    """Sample every held-out item (noise seeded by its index) and score it (`dynamic`: DiffMoE's
    dynamic capacity; `step`: the checkpoint's training step, for the threshold warm-up check;
    `mesh`: sample on a device mesh, as `generate`).
    Returns (results dict of evaluate, images (M, I, J, 3), experts (T, n, M, S), seconds)."""
    t0 = time.perf_counter()
    images, experts = generate(params, config, [it.text for it in items], seed=seed, num_steps=num_steps,
                               guidance_scale=guidance_scale, batch_size=batch_size, progress=progress,
                               desc=desc, dynamic=dynamic, step=step, mesh=mesh)
    seconds = time.perf_counter() - t0
    return geneval.evaluate(images, items), images, experts, seconds


def scores_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table, one row per (label, evaluate results), in GenEval's column order."""
    lines = []
    for k, (label, res) in enumerate(rows):
        t = geneval.format_table(res, label=label).splitlines()
        lines.extend(t if k == 0 else t[2:])
    return "\n".join(lines)


def binomial_se(p: float, n: int) -> float:
    """Standard error, in percentage points, of a pass rate p measured on n items."""
    return 100.0 * float(np.sqrt(p * (1.0 - p) / n))


def first_per_category(items) -> list[int]:
    seen, out = set(), []
    for i, it in enumerate(items):
        if it.category not in seen:
            seen.add(it.category)
            out.append(i)
    return out
