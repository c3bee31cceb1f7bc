"""`ecdit compare`: dense vs token choice vs expert choice at equal activated parameters.

`run_compare` trains one tiny model per FFN kind (the dense one activation-matched) on the same
data stream for the same steps, scores each on the held-out prompts and its held-out loss, and
writes one table (<out>/compare.md, compare.json) with the loss curves (compare_loss.png).
"""
from __future__ import annotations

import json
import os
import time

from ecdit.app.plots import plot_compare
from ecdit.app.reports import evaluate_model, final_loss, fmt_params
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, preset, train_preset
from ecdit.core.params import count_params
from ecdit.systems import shapes
from ecdit.systems.geneval import TABLE_COLUMNS
from ecdit.systems.train import VALIDATION_TIMESTEPS, train, validation_loss


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------

KIND_LABELS = {"dense": "dense (activation-matched)", "token_choice": "token choice top-2 (GShard)",
               "expert_choice": "expert choice (EC-DiT)"}


def compare_configs(base: str = "tiny", kinds=("dense", "token_choice", "expert_choice"), model_changes=None):
    """The models of `ecdit compare`: one per FFN kind, equal activated parameters (the dense one
    widens its interleaved layers' FFN by f_c, top-2 equals f_c = 2)."""
    out = []
    for kind in kinds:
        if kind not in KIND_LABELS:
            raise ValueError(f"kinds: unknown FFN kind {kind!r}; expected some of {tuple(KIND_LABELS)}")
        out.append(preset(base, ffn_kind=kind, dense_matched=(kind == "dense"), name=f"{base}-{kind}",
                          **(model_changes or {})))
    return out


def run_compare(out_dir="compare", *, steps=600, per_category=30, sample_steps=DEFAULT_SAMPLE_STEPS,
                guidance_scale=DEFAULT_GUIDANCE, seed=0,
                kinds=("dense", "token_choice", "expert_choice"), model_changes=None, train_changes=None,
                progress=True) -> dict:
    """Train each kind for `steps` on the same data stream (same seed), score, write compare.md."""
    os.makedirs(out_dir, exist_ok=True)
    base = train_preset("tiny")
    decay = steps if base.decay_steps and steps > base.warmup_steps else 0
    tc = base.replace(**{"seed": seed, "decay_steps": decay, **(train_changes or {})})
    items = shapes.heldout_items(per_category)
    rows = []
    histories = {}
    for cfg in compare_configs("tiny", kinds, model_changes):
        run_dir = os.path.join(out_dir, cfg.ffn_kind)
        if os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
            os.remove(os.path.join(run_dir, "checkpoint.npz"))
        t0 = time.perf_counter()
        params, history = train(cfg, tc, steps, run_dir, progress=progress, desc=f"train {cfg.ffn_kind}")
        train_s = time.perf_counter() - t0
        res, _, _, _ = evaluate_model(params, cfg, items, num_steps=sample_steps, guidance_scale=guidance_scale,
                                      seed=seed, progress=progress, desc=f"sample {cfg.ffn_kind}")
        val = validation_loss(params, cfg, items, seed=seed)
        c = count_params(cfg)
        rows.append({"kind": cfg.ffn_kind, "label": KIND_LABELS[cfg.ffn_kind], "total": c["total"],
                     "activated": c["activated"], "final_loss": final_loss(history), "val_loss": val["mean"],
                     "val_loss_per_t": val["per_t"], "train_seconds": train_s, "results": res})
        histories[cfg.ffn_kind] = history
    plot_compare(histories, KIND_LABELS, os.path.join(out_dir, "compare_loss.png"))
    md = compare_markdown(rows, steps, tc, per_category, sample_steps, guidance_scale)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return {"rows": rows, "markdown": md}


def compare_markdown(rows, steps, tc, per_category, sample_steps, guidance_scale) -> str:
    heads = (["model", "total params", "activated", "final loss", "held-out loss", "train time"]
             + [h for _, h in TABLE_COLUMNS])
    lines = ["| " + " | ".join(heads) + " |", "|:---|" + "---:|" * (len(heads) - 1)]
    for r in rows:
        cells = [r["label"], fmt_params(r["total"]), fmt_params(r["activated"]), f"{r['final_loss']:.4f}",
                 f"{r['val_loss']:.4f}", f"{r['train_seconds'] / 60:.1f} min"]
        cells += [f"{100 * r['results'][k]:.1f}" if k in r["results"] else "-" for k, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"{steps} steps of {tc.batch_size} images each, same data stream (seed {tc.seed}); loss = mean of the "
            f"last 20% of logged training losses; held-out loss = Eq. 1 on the held-out items' own scenes "
            f"at t = {', '.join(f'{t:g}' for t in VALIDATION_TIMESTEPS)} with fixed noise (the same for every "
            f"model); shapes-GenEval on {per_category} held-out items per category, "
            f"{sample_steps} Euler steps, CFG {guidance_scale}.\n\n" + "\n".join(lines) + "\n")
