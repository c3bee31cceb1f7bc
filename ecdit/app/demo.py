"""`ecdit demo`: train the tiny EC-DiT on captioned shapes, sample the held-out prompts, score,
draw, and write a report.

`run_demo` trains the tiny EC-DiT on captioned shapes, samples the held-out prompts of every
category with CFG, scores them (shapes-GenEval) beside an untrained model of the same shape,
draws Fig. 6-style heatmaps and the loss curve, and writes <out>/report.md with the PNGs beside it.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time

import numpy as np

from ecdit.app.allocation import allocation_detail_correlation, patch_detail
from ecdit.app.heatmap import plot_allocation, plot_allocation_overview, save_image_grid
from ecdit.app.plots import plot_loss
from ecdit.app.reports import binomial_se, evaluate_model, final_loss, first_per_category, fmt_params, scores_table
from ecdit.core.config import (DEFAULT_EVAL_PER_CATEGORY, DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig,
                               TrainConfig, preset, train_preset)
from ecdit.core.params import count_params, init_model
from ecdit.systems import checkpoint, geneval, shapes
from ecdit.systems.train import train


# ---------------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------------

def run_demo(out_dir="report", *, steps=20000, minutes=10.0, per_category=DEFAULT_EVAL_PER_CATEGORY,
             sample_steps=DEFAULT_SAMPLE_STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=0, model_changes=None,
             train_changes=None, progress=True, resume=False) -> dict:
    """The `ecdit demo` pipeline; returns the summary dict also written to <out>/summary.json."""
    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    cfg = preset("tiny", **(model_changes or {}))
    base = train_preset("tiny")
    decay = steps if base.decay_steps and steps > base.warmup_steps else 0  # a decay ends at --steps
    tc = base.replace(**{"seed": seed, "decay_steps": decay, **(train_changes or {})})
    run_dir = os.path.join(out_dir, "run")
    if not resume:
        checkpoint.remove(run_dir)
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
    pick = first_per_category(items)
    more = [i for i in range(len(items)) if i % per_category < 8]
    save_image_grid(images[more], os.path.join(out_dir, "samples.png"), [items[i].text for i in more], columns=8)
    plot_allocation_overview(images[pick], experts[:, :, pick], [items[i].text for i in pick],
                             os.path.join(out_dir, "heatmaps.png"), sparse_layers=cfg.sparse_layers,
                             num_experts=cfg.num_experts)
    plot_allocation(images[pick[0]], experts[:, :, pick[0]], os.path.join(out_dir, "heatmap_steps.png"),
                    sparse_layers=cfg.sparse_layers, num_experts=cfg.num_experts, prompt=items[pick[0]].text)
    if history:
        plot_loss(history, os.path.join(out_dir, "loss.png"))
        shutil.copyfile(os.path.join(out_dir, "loss.png"), os.path.join(run_dir, "loss.png"))
    detail_r = allocation_detail_correlation(experts, patch_detail(images, cfg.patch_size))["r_mean"]  # (n,)
    total_s = time.perf_counter() - t_start
    counts = count_params(cfg)
    summary = {
        "config": cfg.name, "steps": steps_done, "train_seconds": train_s, "sample_seconds": sample_s,
        "total_seconds": total_s, "final_loss": final_loss(history),
        "final_flow_loss": final_loss(history, key="flow_loss"), "first_loss": history[0]["loss"] if history else None,
        "images_per_s": float(np.median([r["images_per_s"] for r in history[1:]] or [0.0])),
        "trained": trained, "untrained": untrained, "per_category": per_category,
        "sample_steps": sample_steps, "guidance_scale": guidance_scale, "params": counts,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "allocation_detail_r": {str(layer + 1): float(r) for layer, r in zip(cfg.sparse_layers, detail_r)},
        "misses": geneval.miss_breakdown(images, items),
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


def _optimizer_text(tc: TrainConfig) -> str:
    if tc.optimizer == "adamw":
        wd = f", weight decay {tc.weight_decay:g}" if tc.weight_decay else ""
        return f"AdamW (b1 {tc.adam_b1:g}, b2 {tc.adam_b2:g}{wd}; the paper: RMSProp, docs/model.md)"
    return "RMSProp with momentum"


def _untrained_text(cfg: ModelConfig) -> str:
    if cfg.prediction == "x0":
        return ("The untrained model's final layer is zero (DiT init), so it predicts the clean image 0 (grey)\n"
                "and its sampler lands on a grey image: the floor of the scale.")
    return ("The untrained model's final layer is zero (DiT init), so it predicts zero velocity and returns its\n"
            "starting noise: the floor of the scale.")


def _prediction_text(cfg: ModelConfig) -> str:
    if cfg.prediction == "x0":
        return (f" The final layer predicts the clean patches (x-prediction), turned into the velocity "
                f"(x_t - x0) / max(t, {cfg.prediction_min_t:g}) for the loss and the sampler (docs/model.md).")
    return ""


def _shape_head_text(cfg: ModelConfig) -> str:
    if cfg.shape_head_layer is None:
        return ""
    return (f" While training, a shape head on block {cfg.shape_head_layer}'s output learns each token's shape label "
            f"(weight {cfg.shape_loss_weight:g} on its cross-entropy; sampling never runs it; docs/model.md).")


def _segments_text(cfg: ModelConfig) -> str:
    if not cfg.text_segments:
        return ""
    which = "the second noun phrase"
    if cfg.text_segment_rule == "layout":
        which = f'the object that lies right of / below the other; in an "and" caption, those of {which}'
    return f" In a two-object caption the tokenizer marks the words of {which} (segment marks; docs/model.md)."


def _pair_order_text(tc: TrainConfig) -> str:
    if tc.pair_caption_order != "layout":
        return ""
    return ('; the training captions name the two objects of an "and" caption left to right, or top to '
            "bottom when stacked (docs/data.md)")


def _loss_text(cfg: ModelConfig, s: dict) -> str:
    if cfg.shape_head_layer is None or not np.isfinite(s.get("final_flow_loss", np.nan)):
        return ""
    return f" (Eq. 1 alone: {s['final_flow_loss']:.3f})"


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
{fmt_params(s['params']['total'])} parameters ({fmt_params(s['params']['activated'])} activated per token) plus a
{fmt_params(s['params']['text_encoder'])} word-level text encoder.{_prediction_text(cfg)}{_shape_head_text(cfg)}{_segments_text(cfg)}

## Training
{s['steps']} steps of {tc.batch_size} images ({_optimizer_text(tc)}, lr {tc.learning_rate:g}, {tc.warmup_steps} warmup steps,
caption dropout {tc.caption_dropout}, mask ratio {tc.mask_ratio}, logit-normal timesteps with mu {tc.t_mu:g}, sigma {tc.t_sigma:g}{_ema_text(tc)}{_pair_order_text(tc)}); loss {s['first_loss']:.3f} at the first log, {s['final_loss']:.3f}{_loss_text(cfg, s)}
at the end (mean of the last 20% of logs); {s['images_per_s']:.0f} images/s.

![loss](loss.png)

Routing at the last logged step (expert choice: every expert takes exactly C tokens; tokens get 0..E experts):

| sparse layer | mean experts/token | max | std | tokens with no expert |
|---:|---:|---:|---:|---:|
{chr(10).join(routing_lines)}

## Held-out prompts, shapes-GenEval
{s['per_category']} held-out items per category, {s['sample_steps']} Euler steps, CFG scale {s['guidance_scale']}
(percent of items that pass; one item = {100 / s['per_category']:.3g} percentage points, and a score p has a binomial
standard error of sqrt(p (1 - p) / {s['per_category']}), e.g. {binomial_se(0.1, s['per_category']):.1f} points at 10 %):

{scores_table([("tiny EC-DiT, trained", s['trained']), ("same model, untrained", s['untrained'])])}

{_untrained_text(cfg)}

![samples](samples.png)

Where the trained model's two-object prompts fail (`ecdit.systems.geneval.miss_breakdown`; docs/experiments.md,
"Where the two-object prompts fail"):

{chr(10).join("- " + line for line in geneval.format_misses(s.get('misses', {})))}

## Compute allocation (Fig. 6 style)
How many experts chose each image token, per sparse layer: at the last denoising step and averaged
over all steps, for one held-out prompt per category:

![heatmaps](heatmaps.png)

Per denoising step for the first prompt:

![heatmap per step](heatmap_steps.png)

As a number (`ecdit.app.allocation`): the Pearson correlation, over an image's tokens, of the
experts per token with the share of the token's pixels on an edge of the final image, averaged
over the {s['per_category'] * len(shapes.CATEGORIES)} held-out samples and the denoising steps (positive: more compute on
object boundaries, as Fig. 6 shows for EC-DiT; negative: more on flat regions):

| sparse layer | r(experts per token, edge pixels) |
|---:|---:|
{chr(10).join(f"| {layer} | {r:+.3f} |" for layer, r in s.get('allocation_detail_r', {}).items())}
"""
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(md)
