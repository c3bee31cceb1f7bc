"""The demo and the comparison: train, sample the held-out prompts, score, draw, write markdown.

`run_demo`    trains the tiny EC-DiT on captioned shapes, samples the held-out prompts of every
              category with CFG, scores them (shapes-GenEval) beside an untrained model of the
              same shape, draws Fig. 6-style heatmaps and the loss curve, and writes
              <out>/report.md with the PNGs beside it.
`run_compare` trains dense / token-choice / expert-choice tiny models at equal activated
              parameters on the same data stream for the same steps and writes one table.
"""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from ecdit.config import DEFAULT_EVAL_PER_CATEGORY, DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig, TrainConfig, count_params


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _final_loss(history, frac=0.2) -> float:
    """Mean logged loss over the last `frac` of the run (the loss is noisy per batch)."""
    losses = [r["loss"] for r in history]
    k = max(1, int(len(losses) * frac))
    return float(np.mean(losses[-k:])) if losses else float("nan")


def evaluate_model(params, config: ModelConfig, items, *, num_steps=DEFAULT_SAMPLE_STEPS,
                   guidance_scale=DEFAULT_GUIDANCE, seed=0,
                   batch_size=64, progress=True, desc="sample"):
    """Sample every held-out item (noise seeded by its index) and score it.
    Returns (results dict of evaluate, images (N, H, W, 3), experts (T, n, N, S), seconds)."""
    from accelerated.sample import generate
    from ecdit import geneval
    t0 = time.perf_counter()
    images, experts = generate(params, config, [it.text for it in items], seed=seed, num_steps=num_steps,
                               guidance_scale=guidance_scale, batch_size=batch_size, progress=progress,
                               desc=desc)
    seconds = time.perf_counter() - t0
    return geneval.evaluate(images, items), images, experts, seconds


def scores_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table, one row per (label, evaluate results), in GenEval's column order."""
    from ecdit import geneval
    lines = []
    for k, (label, res) in enumerate(rows):
        t = geneval.format_table(res, label=label).splitlines()
        lines.extend(t if k == 0 else t[2:])
    return "\n".join(lines)


def _binomial_se(p: float, n: int) -> float:
    """Standard error, in percentage points, of a pass rate p measured on n items."""
    return 100.0 * float(np.sqrt(p * (1.0 - p) / n))


def _first_per_category(items) -> list[int]:
    seen, out = set(), []
    for i, it in enumerate(items):
        if it.category not in seen:
            seen.add(it.category)
            out.append(i)
    return out


# ---------------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------------

def run_demo(out_dir="report", *, steps=20000, minutes=10.0, per_category=DEFAULT_EVAL_PER_CATEGORY,
             sample_steps=DEFAULT_SAMPLE_STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=0, model_changes=None,
             train_changes=None, progress=True, resume=False) -> dict:
    """The `ecdit demo` pipeline; returns the summary dict also written to <out>/summary.json."""
    from accelerated.train import train
    from ecdit import shapes
    from ecdit.config import preset, train_preset
    from ecdit.heatmap import plot_allocation, plot_allocation_overview, save_image_grid
    from ecdit.model_params import init_model

    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    cfg = preset("tiny", **(model_changes or {}))
    base = train_preset("tiny")
    decay = steps if base.decay_steps and steps > base.warmup_steps else 0  # a decay ends at --steps
    tc = base.replace(**{"seed": seed, "decay_steps": decay, **(train_changes or {})})
    run_dir = os.path.join(out_dir, "run")
    if not resume and os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
        os.remove(os.path.join(run_dir, "checkpoint.npz"))
    # 1. train
    t0 = time.perf_counter()
    params, history = train(cfg, tc, steps, run_dir, minutes=minutes, progress=progress, desc="train tiny EC-DiT")
    train_s = time.perf_counter() - t0
    steps_done = history[-1]["step"] if history else 0
    # 2. sample the held-out prompts and score: trained, then the untrained model of the same shape
    items = shapes.heldout_items(per_category)
    trained, images, experts, sample_s = evaluate_model(
        params, cfg, items, num_steps=sample_steps, guidance_scale=guidance_scale, seed=seed,
        progress=progress, desc="sample held-out (trained)")
    untrained, _, _, _ = evaluate_model(
        init_model(cfg, tc.seed), cfg, items, num_steps=sample_steps, guidance_scale=guidance_scale,
        seed=seed, progress=progress, desc="sample held-out (untrained)")
    # 3. pictures
    pick = _first_per_category(items)
    more = [i for i in range(len(items)) if i % per_category < 8]
    save_image_grid(images[more], os.path.join(out_dir, "samples.png"), [items[i].text for i in more], columns=8)
    plot_allocation_overview(images[pick], experts[:, :, pick], [items[i].text for i in pick],
                             os.path.join(out_dir, "heatmaps.png"), sparse_layers=cfg.sparse_layers,
                             num_experts=cfg.num_experts)
    plot_allocation(images[pick[0]], experts[:, :, pick[0]], os.path.join(out_dir, "heatmap_steps.png"),
                    sparse_layers=cfg.sparse_layers, num_experts=cfg.num_experts, prompt=items[pick[0]].text)
    if os.path.exists(os.path.join(run_dir, "loss.png")):
        import shutil
        shutil.copyfile(os.path.join(run_dir, "loss.png"), os.path.join(out_dir, "loss.png"))
    total_s = time.perf_counter() - t_start
    counts = count_params(cfg)
    summary = {
        "config": cfg.name, "steps": steps_done, "train_seconds": train_s, "sample_seconds": sample_s,
        "total_seconds": total_s, "final_loss": _final_loss(history), "first_loss": history[0]["loss"] if history else None,
        "images_per_s": float(np.median([r["images_per_s"] for r in history[1:]] or [0.0])),
        "trained": trained, "untrained": untrained, "per_category": per_category,
        "sample_steps": sample_steps, "guidance_scale": guidance_scale, "params": counts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _write_demo_markdown(out_dir, cfg, tc, summary, history)
    return summary


def _ema_text(tc: TrainConfig) -> str:
    parts = []
    if tc.ema_decay > 0:
        parts.append(f", samples drawn with an EMA of the weights (decay {tc.ema_decay:g})")
    if tc.text_lr_scale == 0:
        parts.append(", the text encoder frozen at its random init as the paper freezes T5 (docs/model.md)")
    elif tc.text_lr_scale != 1:
        parts.append(f", the text encoder's updates scaled by {tc.text_lr_scale:g}")
    return "".join(parts)


def _write_demo_markdown(out_dir, cfg: ModelConfig, tc: TrainConfig, s: dict, history):
    last = history[-1] if history else {}
    routing_lines = []
    for j, layer in enumerate(cfg.sparse_layers):
        if "unrouted" in last:
            routing_lines.append(f"| {layer + 1} | {last['experts_mean'][j]:.2f} | {last['experts_max'][j]:.0f} "
                                 f"| {last['experts_std'][j]:.2f} | {100 * last['unrouted'][j]:.1f}% |")
    md = f"""# EC-DiT demo: tiny EC-DiT on captioned shapes

Made by `ecdit demo` on {s['machine']} in {s['total_seconds'] / 60:.1f} minutes
(training {s['train_seconds'] / 60:.1f} min, sampling the held-out set {s['sample_seconds']:.0f} s).

## Model
`{cfg.name}`: {cfg.image_size}x{cfg.image_size} images, patch {cfg.patch_size} ({cfg.num_tokens} tokens), {cfg.depth} layers,
D = {cfg.width}, {cfg.num_heads} heads / {cfg.num_kv_heads} kv heads, expert-choice MoE with {cfg.num_experts} experts on
layers {', '.join(str(i + 1) for i in cfg.sparse_layers)} (capacity factor {cfg.capacity_factor}),
{_fmt_params(s['params']['total'])} parameters ({_fmt_params(s['params']['activated'])} activated per token) plus a
{_fmt_params(s['params']['text_encoder'])} word-level text encoder.

## Training
{s['steps']} steps of {tc.batch_size} images (RMSProp with momentum, lr {tc.learning_rate:g}, {tc.warmup_steps} warmup steps,
caption dropout {tc.caption_dropout}, mask ratio {tc.mask_ratio}, logit-normal timesteps with sigma {tc.t_sigma:g}{_ema_text(tc)}); loss {s['first_loss']:.3f} at the first log, {s['final_loss']:.3f}
at the end (mean of the last 20% of logs); {s['images_per_s']:.0f} images/s.

![loss](loss.png)

Routing at the last logged step (expert choice: every expert takes exactly C tokens; tokens get 0..E experts):

| sparse layer | mean experts/token | max | std | tokens with no expert |
|---:|---:|---:|---:|---:|
{chr(10).join(routing_lines)}

## Held-out prompts, shapes-GenEval
{s['per_category']} held-out items per category, {s['sample_steps']} Euler steps, CFG scale {s['guidance_scale']}
(percent of items that pass; one item = {100 / s['per_category']:.3g} percentage points, and a score p has a binomial
standard error of sqrt(p (1 - p) / {s['per_category']}), e.g. {_binomial_se(0.1, s['per_category']):.1f} points at 10 %):

{scores_table([("tiny EC-DiT, trained", s['trained']), ("same model, untrained", s['untrained'])])}

The untrained model's final layer is zero (DiT init), so it predicts zero velocity and returns its
starting noise: the floor of the scale.

![samples](samples.png)

## Compute allocation (Fig. 6 style)
How many experts chose each image token, per sparse layer: at the last denoising step and averaged
over all steps, for one held-out prompt per category:

![heatmaps](heatmaps.png)

Per denoising step for the first prompt:

![heatmap per step](heatmap_steps.png)
"""
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------

KIND_LABELS = {"dense": "dense (activation-matched)", "token_choice": "token choice top-2 (GShard)",
               "expert_choice": "expert choice (EC-DiT)"}


def compare_configs(base: str = "tiny", kinds=("dense", "token_choice", "expert_choice"), model_changes=None):
    """The models of `ecdit compare`: one per FFN kind, equal activated parameters (the dense one
    widens its interleaved layers' FFN by f_c, top-2 equals f_c = 2)."""
    from ecdit.config import preset
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
    from accelerated.train import train, validation_loss
    from ecdit import shapes
    from ecdit.config import train_preset
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
                     "activated": c["activated"], "final_loss": _final_loss(history), "val_loss": val["mean"],
                     "val_loss_per_t": val["per_t"], "train_seconds": train_s, "results": res})
        histories[cfg.ffn_kind] = history
    _plot_compare(histories, os.path.join(out_dir, "compare_loss.png"))
    md = compare_markdown(rows, steps, tc, per_category, sample_steps, guidance_scale)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return {"rows": rows, "markdown": md}


def compare_markdown(rows, steps, tc, per_category, sample_steps, guidance_scale) -> str:
    from accelerated.train import VALIDATION_TIMESTEPS
    from ecdit.geneval import TABLE_COLUMNS
    heads = (["model", "total params", "activated", "final loss", "held-out loss", "train time"]
             + [h for _, h in TABLE_COLUMNS])
    lines = ["| " + " | ".join(heads) + " |", "|:---|" + "---:|" * (len(heads) - 1)]
    for r in rows:
        cells = [r["label"], _fmt_params(r["total"]), _fmt_params(r["activated"]), f"{r['final_loss']:.4f}",
                 f"{r['val_loss']:.4f}", f"{r['train_seconds'] / 60:.1f} min"]
        cells += [f"{100 * r['results'][k]:.1f}" if k in r["results"] else "-" for k, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"{steps} steps of {tc.batch_size} images each, same data stream (seed {tc.seed}); loss = mean of the "
            f"last 20% of logged training losses; held-out loss = Eq. 1 on the held-out items' own scenes "
            f"at t = {', '.join(f'{t:g}' for t in VALIDATION_TIMESTEPS)} with fixed noise (the same for every "
            f"model); shapes-GenEval on {per_category} held-out items per category, "
            f"{sample_steps} Euler steps, CFG {guidance_scale}.\n\n" + "\n".join(lines) + "\n")


def _plot_compare(histories, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for kind, h in histories.items():
        if not h:
            continue
        steps = np.array([r["step"] for r in h])
        loss = np.array([r["loss"] for r in h])
        k = max(1, len(loss) // 15)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, label=KIND_LABELS.get(kind, kind))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
