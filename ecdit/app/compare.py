"""`ecdit compare`: the seed table of DiffMoE (Shi et al. 2025, Table 1 as restated in
`../shared/papers/diffmoe-notes.md`) at toy scale, on captioned shapes.

Each *row* is a trained *model* evaluated with one inference rule; rows that share a model share
its training run (EC-DiT with a capacity predictor is trained once and sampled both ways, as is
DiffMoE). Every MoE model has f_c = 1 (token choice: top-1), so activated parameters equal the
dense model's, as in the seed table; Dense-XL has about 1.5x (the table's 675M / 458M = 1.47x).

    row                    model                         pool in training      inference
    TC-DiT                 token choice, top-1           isolated (per token)  isolated
    Dense-DiT              dense                         isolated              isolated
    EC-DiT                 expert choice + predictor     local (per image)     local static top-k
    EC-DiT                 (same model)                  local                 local dynamic (predictor)
    DiffMoE                diffmoe                       global (batch)        global static top-k
    DiffMoE                (same model)                  global                global dynamic (predictor)
    Dense-DiT-XL           dense, 1.5x depth             isolated              isolated

Two more rows fill the issue's grid (pool per routing group spanning images, static and dynamic):
`EXTRA_ROWS`, run with `rows=` / `--rows`.

`run_compare` trains each model once on the same data stream, then per row: held-out loss (Eq. 1
on the held-out scenes, with the row's inference rule), shapes-GenEval, the measured experts per
token at every denoising step (so a dynamic row's activated parameters are measured, not
assumed), writing compare.md / compare.json and the figures (training loss, experts per token
against the denoising step, Fig. 6-style heatmaps of the DiffMoE rows).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from ecdit.app.allocation import allocation_detail_correlation, patch_detail
from ecdit.app.heatmap import plot_allocation, step_times
from ecdit.app.plots import plot_compare, plot_experts_per_step
from ecdit.app.reports import evaluate_model, final_loss, fmt_params
from ecdit.core.config import DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, ModelConfig, TrainConfig, preset, train_preset
from ecdit.core.params import count_params
from ecdit.systems import checkpoint, shapes
from ecdit.systems.geneval import TABLE_COLUMNS
from ecdit.systems.train import VALIDATION_TIMESTEPS, train, validation_loss


# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One row of the table: a trained model (`model`, a key of `model_configs`) sampled with one
    inference rule (`dynamic`: DiffMoE's dynamic capacity), with the seed table's words for both."""
    key: str
    label: str
    model: str
    pool: str
    inference: str
    dynamic: bool = False


SEED_ROWS = (
    Row("tc", "TC-DiT (top-1)", "tc", "isolated (per token)", "isolated"),
    Row("dense", "Dense-DiT", "dense", "isolated", "isolated"),
    Row("ec_static", "EC-DiT", "ec", "local (per image)", "local static top-k"),
    Row("ec_dynamic", "EC-DiT", "ec", "local (per image)", "local dynamic (predictor, per image)", True),
    Row("diffmoe_static", "DiffMoE", "diffmoe", "global (batch)", "global static top-k"),
    Row("diffmoe_dynamic", "DiffMoE", "diffmoe", "global (batch)", "global dynamic (predictor)", True),
    Row("dense_xl", "Dense-DiT-XL", "dense_xl", "isolated", "isolated"),
)
EXTRA_ROWS = (
    Row("ec_group_static", "EC-DiT (groups of 4 images)", "ec_group", "routing group (4 images)",
        "group static top-k"),
    Row("ec_group_dynamic", "EC-DiT (groups of 4 images)", "ec_group", "routing group (4 images)",
        "group dynamic (predictor, per group)", True),
)
ROWS = {r.key: r for r in SEED_ROWS + EXTRA_ROWS}
GROUP_IMAGES = 4                                                 # images per routing group of "ec_group"


ROW_FIELDS = ("ffn_kind", "capacity_factor", "num_selected", "capacity_predictor", "dense_matched")


def _base_config(base: str, model_changes) -> ModelConfig:
    """The preset every row starts from: `base` with the shape head and the segment marks off (the
    comparison of docs/fidelity.md was measured without them), then `model_changes`."""
    return preset(base, **{"shape_head_layer": None, "text_segments": False, **(model_changes or {})})


def _base_train(base: str) -> TrainConfig:
    """The training settings every row starts from: `base`'s, with the pair captions in either
    order (docs/data.md), as docs/fidelity.md measured them."""
    return train_preset(base, pair_caption_order="any")


def model_configs(base: str = "tiny", model_changes=None) -> dict[str, ModelConfig]:
    """The models behind the rows, all from one preset (plus `model_changes`), f_c = 1 for every MoE
    (activated parameters equal the dense model's), token choice top-1 with GShard's buffer of twice
    the fair share, and Dense-XL 1.5x as deep (1.46x the activated parameters of tiny). A change
    to a field the rows set themselves (ROW_FIELDS) is refused with a ValueError naming it: it would
    be overwritten, not applied. The shape head of the tiny preset (a deviation that helps the demo
    learn shapes; docs/model.md) stays off, so the rows measure the papers' models as before;
    `shape_head_layer` in `model_changes` turns it on for every row."""
    fixed = sorted(set(model_changes or {}) & set(ROW_FIELDS))
    if fixed:
        raise ValueError(f"set: {', '.join(fixed)} is set by each row of the comparison (f_c = 1 for every MoE, "
                         f"top-1 token choice, the predictor on EC-DiT), so a change to it would not apply")
    base_cfg = _base_config(base, model_changes)
    moe = {"capacity_factor": 1.0}
    s = base_cfg.num_tokens
    return {
        "tc": base_cfg.replace(name=f"{base}-tc", ffn_kind="token_choice", num_selected=1, capacity_factor=2.0),
        "dense": base_cfg.replace(name=f"{base}-dense", ffn_kind="dense", dense_matched=False),
        "ec": base_cfg.replace(name=f"{base}-ec", ffn_kind="expert_choice", capacity_predictor=True, **moe),
        "diffmoe": base_cfg.replace(name=f"{base}-diffmoe", ffn_kind="diffmoe", **moe),
        "dense_xl": base_cfg.replace(name=f"{base}-dense-xl", ffn_kind="dense", dense_matched=False,
                                     depth=base_cfg.depth + base_cfg.depth // 2),
        "ec_group": base_cfg.replace(name=f"{base}-ec-group", ffn_kind="expert_choice", capacity_predictor=True,
                                     train_group_size=GROUP_IMAGES * s, inference_group_size=GROUP_IMAGES * s, **moe),
    }


def pick_rows(keys) -> tuple[Row, ...]:
    """Rows by key (SEED_ROWS and EXTRA_ROWS); ValueError naming an unknown one."""
    keys = tuple(keys)
    unknown = [k for k in keys if k not in ROWS]
    if unknown or not keys:
        raise ValueError(f"rows: unknown row(s) {unknown or '(none given)'}; expected some of {tuple(ROWS)}")
    return tuple(ROWS[k] for k in keys)


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

def run_compare(out_dir="compare", *, steps=600, per_category=30, sample_steps=DEFAULT_SAMPLE_STEPS,
                guidance_scale=DEFAULT_GUIDANCE, seed=0, rows=tuple(r.key for r in SEED_ROWS),
                model_changes=None, train_changes=None, progress=True, mesh=None, base="tiny", stop=None) -> dict:
    """Train each model of `rows` once for `steps` on the same data stream (same seed), evaluate
    each row, write compare.md, compare.json and the figures. Returns {"rows", "markdown"}.
    `base`: the model and training preset every row is made from ("tiny"; "small" for a GPU).
    `mesh` ({"data": n, "expert": m}): train and sample every model on that device mesh (the
    held-out loss runs on one device).

    Each model trains in out_dir/MODEL/; one whose checkpoint there was written with the same
    configs at or before `steps` resumes from it (`_resumable`; a comparison stopped by a signal
    goes on where it stopped, and a model already trained is not trained again), any other is
    removed first. `stop` (a `stopping.StopSignals`) is passed to `train`: a signal during training
    saves the current step and raises TrainingStopped. A row's train_seconds counts the training
    this call did."""
    picked = pick_rows(rows)
    os.makedirs(out_dir, exist_ok=True)
    settings = _settings(steps=steps, per_category=per_category, sample_steps=sample_steps,
                         guidance_scale=guidance_scale, seed=seed, rows=rows, model_changes=model_changes,
                         train_changes=train_changes, mesh=mesh, base=base)
    if os.path.exists(os.path.join(out_dir, SETTINGS)):
        os.remove(os.path.join(out_dir, SETTINGS))               # written again only when this run finishes
    base_tc = _base_train(base)
    decay = steps if base_tc.decay_steps and steps > base_tc.warmup_steps else 0
    tc = base_tc.replace(**{"seed": seed, "decay_steps": decay, **(train_changes or {})})
    configs = model_configs(base, model_changes)
    items = shapes.heldout_items(per_category)
    trained, histories, out_rows = {}, {}, []
    for row in picked:
        cfg = configs[row.model]
        if row.model not in trained:
            run_dir = os.path.join(out_dir, row.model)
            if not _resumable(run_dir, cfg, tc, steps):
                checkpoint.remove(run_dir)
            t0 = time.perf_counter()
            params, history = train(cfg, tc, steps, run_dir, progress=progress, desc=f"train {row.model}", mesh=mesh,
                                    stop=stop)
            trained[row.model] = (params, time.perf_counter() - t0, history)
            histories[row.model] = history
        params, train_s, history = trained[row.model]
        # Sample in batches of the training batch: a batch pool (DiffMoE) then holds as many images
        # at inference as in training.
        res, images, experts, _ = evaluate_model(params, cfg, items, num_steps=sample_steps,
                                                 guidance_scale=guidance_scale, seed=seed, batch_size=tc.batch_size,
                                                 progress=progress, desc=f"sample {row.key}", dynamic=row.dynamic,
                                                 step=steps, mesh=mesh)
        val = validation_loss(params, cfg, items, seed=seed, batch_size=tc.batch_size, dynamic=row.dynamic)
        per_step = experts.mean(axis=(1, 2, 3)).tolist() if cfg.sparse_layers else []   # (T,)
        per_layer = experts.mean(axis=(0, 2, 3)).tolist() if cfg.sparse_layers else []  # (n,)
        detail_r = (allocation_detail_correlation(experts, patch_detail(images, cfg.patch_size))["r_mean"].tolist()
                    if cfg.sparse_layers else [])                # (n,) r(experts per token, edge pixels)
        c = count_params(cfg, experts_per_token=per_layer if row.dynamic else None)
        out_rows.append({**asdict(row), "config": cfg.name, "total": c["total"], "activated": c["activated"],
                         "final_loss": final_loss(history, key="flow_loss"), "val_loss": val["mean"], "val_loss_per_t": val["per_t"],
                         "train_seconds": train_s, "experts_per_step": per_step, "experts_per_layer": per_layer,
                         "allocation_detail_r": detail_r,
                         "results": res})
        if cfg.ffn_kind == "diffmoe":                            # Fig. 6 for DiffMoE, first held-out item
            plot_allocation(images[0], experts[:, :, 0], os.path.join(out_dir, f"heatmap_{row.key}.png"),
                            sparse_layers=cfg.sparse_layers, num_experts=cfg.num_experts,
                            prompt=f"{row.label}, {row.inference}: {items[0].text}")
    if "dense" in histories:                                     # Fig. 8's "the dense final loss in half the steps"
        target = final_loss(histories["dense"], key="flow_loss")
        for r in out_rows:
            r["steps_to_dense_final"] = steps_to_reach(histories[r["model"]], target)
    plot_compare(histories, {r.model: r.label for r in picked}, os.path.join(out_dir, "compare_loss.png"))
    moe_rows = [r for r in out_rows if r["experts_per_step"]]
    if moe_rows:
        plot_experts_per_step({f"{r['label']}, {r['inference']}": r["experts_per_step"] for r in moe_rows},
                              step_times(sample_steps), os.path.join(out_dir, "experts_per_step.png"))
    md = compare_markdown(out_rows, steps, tc, per_category, sample_steps, guidance_scale)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(out_rows, f, indent=2)
    with open(os.path.join(out_dir, SETTINGS), "w") as f:          # last: the mark of a finished run
        json.dump(settings, f, indent=2)
    return {"rows": out_rows, "markdown": md}


SETTINGS = "settings.json"


def _resumable(run_dir: str, cfg: ModelConfig, tc: TrainConfig, steps: int) -> bool:
    """Whether run_dir holds a readable checkpoint of this model's training (the same model and
    train configs) at step `steps` or before: training goes on from it."""
    found = checkpoint.in_run(run_dir)
    if found is None:
        return False
    try:
        meta = checkpoint.read_meta(found)
        return checkpoint.configs(meta, found) == (cfg, tc) and int(meta["step"]) <= steps
    except checkpoint.CheckpointError:
        return False


def _settings(*, steps=600, per_category=30, sample_steps=DEFAULT_SAMPLE_STEPS, guidance_scale=DEFAULT_GUIDANCE,
              seed=0, rows=tuple(r.key for r in SEED_ROWS), model_changes=None, train_changes=None, mesh=None,
              base="tiny", **_ignored) -> dict:
    """What decides a comparison's numbers, as JSON (the mesh does not: the same run on any mesh; the
    preset `base` is in the model's and the training run's fields)."""
    return json.loads(json.dumps({"steps": steps, "per_category": per_category, "sample_steps": sample_steps,
                                  "guidance_scale": guidance_scale, "seed": seed, "rows": list(rows),
                                  "model_changes": model_changes or {}, "train_changes": train_changes or {},
                                  "model": asdict(_base_config(base, model_changes)),
                                  "train": asdict(_base_train(base))}))


def finished_run(out_dir: str, settings: dict) -> list[dict] | None:
    """The rows of a comparison already finished in `out_dir` with exactly these settings (its
    settings.json, written last, equal to them), else None."""
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        if json.load(f) != settings:
            return None
    with open(os.path.join(out_dir, "compare.json")) as f:
        return json.load(f)


def steps_to_reach(history, target: float, frac: float = 0.2, key: str = "flow_loss") -> int | None:
    """The first logged step at which the mean of `key` over a trailing window of `frac` x the run's
    logged records (the window `final_loss` averages) is at or below `target`; None when it never
    is. With `target` the dense model's `final_loss`, the dense row reaches it at its last step,
    and a row that learns twice as fast reaches it at about half its steps (Fig. 8)."""
    records = [(r["step"], r[key]) for r in history if r.get(key) is not None]
    if not records:
        return None
    k = max(1, int(len(records) * frac))
    losses = np.array([v for _, v in records], np.float64)       # (R,)
    trailing = np.convolve(losses, np.ones(k) / k, mode="valid")  # (R - k + 1,) mean of records i-k+1 .. i
    hit = np.nonzero(trailing <= target * (1 + 1e-12))[0]
    return int(records[hit[0] + k - 1][0]) if len(hit) else None


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

def _per_step_cells(values, columns=5):
    """A few experts-per-token values along the denoising steps, t = 1 first."""
    if not values:
        return "-"
    idx = sorted(set(np.linspace(0, len(values) - 1, min(columns, len(values))).round().astype(int)))
    return " → ".join(f"{values[i]:.2f}" for i in idx)


def _steps_cell(v) -> str:
    return "never" if v is None else str(v)


def compare_markdown(rows, steps, tc, per_category, sample_steps, guidance_scale) -> str:
    """The seed table's shape (model, activated params, training pool, inference rule, scores), then
    the losses, and the experts per token along the denoising steps."""
    heads = (["model", "activated params", "pool in training", "inference", "held-out loss"]
             + [h for _, h in TABLE_COLUMNS] + ["experts / token", "total params", "final train loss (Eq. 1)",
                                                 "steps to dense's final loss"])
    lines = ["| " + " | ".join(heads) + " |", "|:---|---:|:---|:---|" + "---:|" * (len(heads) - 4)]
    for r in rows:
        ept = np.mean(r["experts_per_step"]) if r["experts_per_step"] else None
        cells = [r["label"], fmt_params(r["activated"]), r["pool"], r["inference"], f"{r['val_loss']:.4f}"]
        cells += [f"{100 * r['results'][k]:.1f}" if k in r["results"] else "-" for k, _ in TABLE_COLUMNS]
        cells += ["-" if ept is None else f"{ept:.2f}", fmt_params(r["total"]), f"{r['final_loss']:.4f}",
                  _steps_cell(r.get("steps_to_dense_final", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    steps_lines = ["| model | inference | experts per token, t = 1 → 0 (sampler steps, conditional half) "
                   "| r(experts, edge pixels) per sparse layer |", "|:---|:---|:---|:---|"]
    steps_lines += [f"| {r['label']} | {r['inference']} | {_per_step_cells(r['experts_per_step'])} | "
                    + " / ".join(f"{v:+.2f}" for v in r.get("allocation_detail_r", [])) + " |"
                    for r in rows if r["experts_per_step"]]
    return (f"{steps} steps of {tc.batch_size} images each, same data stream (seed {tc.seed}); every MoE at f_c = 1 "
            f"(token choice top-1), so its activated parameters equal the dense model's; a dynamic row's activated "
            f"parameters use its measured experts per token (and count the predictor). Held-out loss = Eq. 1 on the "
            f"held-out items' own scenes at t = {', '.join(f'{t:g}' for t in VALIDATION_TIMESTEPS)} with fixed noise "
            f"(the same for every model), routed with the row's inference rule. Steps to dense's final loss: the first "
            f"step at which the row's training loss (Eq. 1, trailing mean over a fifth of the run) is at or below "
            f"the dense model's final one (Fig. 8). Shapes-GenEval on {per_category} "
            f"held-out items per category, {sample_steps} Euler steps, CFG {guidance_scale}, sampled in batches of "
            f"{tc.batch_size} (a DiffMoE pool holds as many images as in training). r(experts, edge pixels): the "
            f"Pearson correlation, over an image's tokens, of experts per token with the fraction of the token's "
            f"pixels on an edge of the final image, mean over images and steps (ecdit.app.allocation). One seed.\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(steps_lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Several seeds: mean +- spread, and paired differences against the dense row
# ---------------------------------------------------------------------------------------------

SEED_METRICS = (("val_loss", "held-out loss"),) + tuple(TABLE_COLUMNS)
PAIRED_BASELINE = "dense"                                        # the row every other row is paired with
# The papers' claims that are a difference between two rows other than dense, as (row, against, claim):
# each is paired by seed like the rows against dense.
CONTRASTS = (
    ("ec_static", "tc", "expert choice below token choice (EC-DiT Fig. 5, Table 4)"),
    ("diffmoe_static", "ec_static", "global (batch) pool below local (per image), static (seed table)"),
    ("diffmoe_dynamic", "ec_dynamic", "global pool below local, dynamic (seed table)"),
    ("diffmoe_dynamic", "diffmoe_static", "dynamic inference below static, global pool (seed table)"),
    ("ec_dynamic", "ec_static", "dynamic inference against static, local pool (seed table: worse)"),
)


def _spread(values) -> dict:
    """mean, sample standard deviation (ddof 1; 0 for one value), min, max, n."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def _paired(diffs) -> dict:
    """A paired comparison from per-seed differences d_s = row - baseline (same seed, same data
    stream): mean, standard error, Student's t with n - 1 degrees of freedom and its two-sided p
    (scipy.stats.ttest_1samp on d, which is the paired t-test), and how many seeds are below 0."""
    from scipy import stats
    d = np.asarray(diffs, np.float64)
    n = len(d)
    out = {"mean": float(d.mean()), "below_zero": int((d < 0).sum()), "n": n}
    if n > 1 and d.std(ddof=1) > 0:
        test = stats.ttest_1samp(d, 0.0)
        out.update(stderr=float(d.std(ddof=1) / np.sqrt(n)), t=float(test.statistic), p=float(test.pvalue))
    else:
        out.update(stderr=None, t=None, p=None)
    return out


def _seed_value(row: dict, metric: str) -> float:
    """One of SEED_METRICS of one row of one seed (nan for a score the row lacks)."""
    return row["val_loss"] if metric == "val_loss" else row["results"].get(metric, np.nan)


def _rows_by_seed(runs: list[list[dict]]) -> tuple[list[str], list[dict]]:
    """The row keys (the first run's order) and, per seed, {key: row}; ValueError naming `runs` when
    there is no seed or the seeds hold different rows."""
    if not runs:
        raise ValueError("runs: expected the rows of at least one seed")
    keys = [r["key"] for r in runs[0]]
    if any([r["key"] for r in run] != keys for run in runs):
        raise ValueError("runs: every seed must hold the same rows in the same order")
    return keys, [{r["key"]: r for r in run} for run in runs]


def _paired_rows(by_seed: list[dict], key: str, against: str) -> dict:
    """For each of SEED_METRICS, `_paired` over seeds of row `key` minus row `against`."""
    return {m: _paired([_seed_value(s[key], m) - _seed_value(s[against], m) for s in by_seed])
            for m, _ in SEED_METRICS}


def summarize_seeds(runs: list[list[dict]]) -> list[dict]:
    """Per row (in the first run's order): the spread over seeds of each of SEED_METRICS, and, for
    every row but the baseline, the paired difference from the baseline row of the same seed.
    `runs[i]` is run_compare(...)["rows"] of seed i; every run must hold the same rows."""
    keys, by_seed = _rows_by_seed(runs)
    out = []
    for key in keys:
        first = by_seed[0][key]
        summary = {k: first[k] for k in ("key", "label", "model", "pool", "inference", "activated", "total")}
        summary["metrics"] = {m: _spread([_seed_value(s[key], m) for s in by_seed]) for m, _ in SEED_METRICS}
        summary["steps_to_dense_final"] = [s[key].get("steps_to_dense_final") for s in by_seed]
        summary["allocation_detail_r"] = [s[key].get("allocation_detail_r", []) for s in by_seed]
        per_t = [{str(t): v for t, v in (s[key].get("val_loss_per_t") or {}).items()}   # Eq. 1 at each t,
                 for s in by_seed]                               # keyed as in compare.json (a run in memory: floats)
        if all(per_t):
            summary["val_loss_per_t"] = {t: _spread([p[t] for p in per_t]) for t in per_t[0]}
        if PAIRED_BASELINE in by_seed[0] and key != PAIRED_BASELINE:
            summary["paired"] = _paired_rows(by_seed, key, PAIRED_BASELINE)
        out.append(summary)
    return out


def contrasts(runs: list[list[dict]], pairs=CONTRASTS) -> list[dict]:
    """For each (row, against, claim) of `pairs` whose two rows every seed holds: the paired
    comparison (`_paired`) of row - against over seeds, for each of SEED_METRICS. `runs` as for
    `summarize_seeds`."""
    _, by_seed = _rows_by_seed(runs)
    return [{"key": key, "against": against, "claim": claim, "paired": _paired_rows(by_seed, key, against)}
            for key, against, claim in pairs if key in by_seed[0] and against in by_seed[0]]


def _paired_cells(p: dict) -> str:
    """A paired test's table cells: difference ± s.e. | t | p | seeds below 0."""
    se = "-" if p["stderr"] is None else f"{p['stderr']:.4f}"
    t = "-" if p["t"] is None else f"{p['t']:.2f}"
    pv = "-" if p["p"] is None else f"{p['p']:.3f}"
    return f"{p['mean']:+.4f} ± {se} | {t} | {pv} | {p['below_zero']} of {p['n']}"


def seeds_markdown(summary: list[dict], seeds: list[int], steps: int, pairs: list[dict] = ()) -> str:
    """The multi-seed table (mean ± standard deviation over seeds) and the paired differences of the
    held-out loss against the dense row."""
    heads = (["model", "activated params", "pool in training", "inference"] + [h for _, h in SEED_METRICS]
             + ["steps to dense's final loss, per seed"])
    lines = ["| " + " | ".join(heads) + " |", "|:---|---:|:---|:---|" + "---:|" * (len(heads) - 5) + ":---|"]
    for r in summary:
        cells = [r["label"], fmt_params(r["activated"]), r["pool"], r["inference"]]
        for m, _ in SEED_METRICS:
            s = r["metrics"][m]
            scale, digits = (1.0, 4) if m == "val_loss" else (100.0, 1)
            cells.append(f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}")
        cells.append(" / ".join(_steps_cell(v) for v in r.get("steps_to_dense_final", [])) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    paired = ["| model | inference | held-out loss - dense (mean ± s.e.) | t | p (two-sided) | seeds below dense |",
              "|:---|:---|---:|---:|---:|---:|"]
    for r in summary:
        p = r.get("paired", {}).get("val_loss")
        if p is None:
            continue
        paired.append(f"| {r['label']} | {r['inference']} | {_paired_cells(p)} |")
    by_t = [r for r in summary if "val_loss_per_t" in r]
    base = next((r for r in by_t if r["key"] == PAIRED_BASELINE), None)
    t_lines = []
    if by_t:
        ts = list(by_t[0]["val_loss_per_t"])
        t_lines = ["| model | inference | " + " | ".join(f"t = {t}" for t in ts) + " |",
                   "|:---|:---|" + "---:|" * len(ts)]
        for r in by_t:
            cells = []
            for t in ts:
                cell = f"{r['val_loss_per_t'][t]['mean']:.4f}"
                if base is not None and r is not base:
                    rel = r["val_loss_per_t"][t]["mean"] / base["val_loss_per_t"][t]["mean"] - 1
                    cell += f" ({100 * rel:+.1f} %)"
                cells.append(cell)
            t_lines.append(f"| {r['label']} | {r['inference']} | " + " | ".join(cells) + " |")
    t_text = ("\nThe held-out loss at each t (mean over seeds; in brackets, against Dense-DiT's mean). The "
              "mean over t in the tables above weighs every t alike:\n\n"
              + "\n".join(t_lines) + "\n" if t_lines else "")
    others = ["| claim | row - against | held-out loss difference (mean ± s.e.) | t | p (two-sided) | "
              "seeds below 0 | single obj. difference (points) |", "|:---|:---|---:|---:|---:|---:|---:|"]
    for c in pairs:
        p, single = c["paired"]["val_loss"], c["paired"].get("single_object", {"mean": np.nan})
        others.append(f"| {c['claim']} | {c['key']} - {c['against']} | {_paired_cells(p)} | "
                      f"{100 * single['mean']:+.1f} |")
    tail = ("\nThe claims between other rows, paired the same way:\n\n" + "\n".join(others) + "\n"
            if len(others) > 2 else "")
    return (f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {steps} steps each; within a seed every row "
            f"trains on the same data stream, so differences are paired by seed. Mean ± sample standard "
            f"deviation over seeds; GenEval columns in %.\n\n" + "\n".join(lines) + "\n\n"
            + (("Paired against Dense-DiT (same seed, same data): a negative difference is a lower held-out "
                "loss than dense; p from the paired t-test over seeds (scipy.stats).\n\n" + "\n".join(paired) + "\n")
               if len(paired) > 2 else "") + t_text + tail)


def run_compare_seeds(out_dir="compare", *, seeds=3, seed=0, **kwargs) -> dict:
    """run_compare for seeds seed, seed + 1, ..., each in out_dir/seed{S}/ (its own table and
    figures), then the summary over seeds in out_dir/compare.md and compare.json. Returns
    {"runs", "summary", "markdown"}. A seed whose folder already holds a finished comparison with
    the same settings (`finished_run`) is read, not trained again: an interrupted run resumes at
    the next seed, and seeds run side by side as separate processes (`ecdit compare --seed S --out
    OUT/seedS`) are summarised by `--seeds N --out OUT`."""
    positive = isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1
    if not positive:
        raise ValueError(f"seeds: expected a positive number of seeds, got {seeds!r}")
    chosen = [seed + i for i in range(seeds)]
    runs = []
    for s in chosen:
        seed_dir = os.path.join(out_dir, f"seed{s}")
        done = finished_run(seed_dir, _settings(seed=s, **kwargs))
        runs.append(done if done is not None else run_compare(seed_dir, seed=s, **kwargs)["rows"])
    summary, pairs = summarize_seeds(runs), contrasts(runs)
    md = seeds_markdown(summary, chosen, kwargs.get("steps", 600), pairs)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump({"seeds": chosen, "summary": summary, "contrasts": pairs, "runs": runs}, f, indent=2)
    return {"runs": runs, "summary": summary, "contrasts": pairs, "markdown": md}
