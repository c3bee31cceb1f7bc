"""The report's plots, one function each: `plot_<name>(results, title)` draws <name>.png's figure
from a sweep's results (None where the sweep has nothing for it); `make_plots` saves them all.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  the backend is chosen first
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from . import workloads as W
from .derived import expert_choice_cells, gflops, peak, ratio
from .plans import DENSE, EC, ONEHOT, TC, expert_choice_at, key
from .targets import TARGET_FLAT, TARGET_FWD, TARGET_FWDBWD, TARGET_PEAK

COLORS = {EC: "C0", ONEHOT: "C3", TC: "C2", DENSE: "C7"}


def _log_x_ticks(ax, values):
    ax.set_xticks(values, [str(v) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finish(fig, title: str, legend_rect=None):
    """The run's title on top; `legend_rect`: leave room below for a figure legend."""
    if legend_rect is None:
        fig.suptitle(title, fontsize=8, y=0.995)
        fig.tight_layout()
    else:
        fig.tight_layout(rect=legend_rect)
        fig.suptitle(title, fontsize=8, y=0.995)
    return fig


def _float32_grid(results):
    return [c for c in results["grid"] if c["case"]["dtype"] == "float32"]


def plot_time_vs_S(results: dict, title: str):
    """A: ms per call against S, one panel per D, every variant (fwd, and fwd+bwd dashed)."""
    grid = _float32_grid(results)
    if not grid:
        return None
    dims = sorted({c["case"]["D"] for c in grid})
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 4.2), squeeze=False)
    for ax, d in zip(axes[0], dims):
        cs = sorted([c for c in grid if c["case"]["D"] == d], key=lambda c: c["case"]["S"])
        for kind, mode, style in ((EC, "fwd", "-o"), (ONEHOT, "fwd", "-s"), (TC, "fwd", "-^"),
                                  (DENSE, "fwd", "-x"), (EC, "fwdbwd", "--o"), (DENSE, "fwdbwd", "--x")):
            pts = [(c["case"]["S"], 1e3 * c["median"][key(kind, mode)]) for c in cs if key(kind, mode) in c["median"]]
            if pts:
                ax.plot(*zip(*pts), style, color=COLORS[kind], label=f"{W.LAYER_NAMES[kind]} {mode}", ms=4)
        g = ", ".join(f"S={c['case']['S']}: G={c['case']['G']}" for c in cs)
        ax.set(xscale="log", yscale="log", xlabel="tokens per group S", ylabel="ms per call",
               title=f"D={d}, E={cs[0]['case']['E']}, fc={cs[0]['case']['fc']:g}\n({g})")
        _log_x_ticks(ax, [c["case"]["S"] for c in cs])
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=3, loc="lower center")
    return _finish(fig, title, legend_rect=(0, 0.14, 1, 0.97))


def plot_ratio_vs_S(results: dict, title: str):
    """A: EC / FLOP-equal dense against S per D and mode, with the 1.05 and 1.10 targets."""
    grid = _float32_grid(results)
    if not grid:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, d in enumerate(sorted({c["case"]["D"] for c in grid})):
        cs = sorted([c for c in grid if c["case"]["D"] == d], key=lambda c: c["case"]["S"])
        for mode, style in (("fwd", "-o"), ("jit", ":o"), ("fwdbwd", "--s")):
            pts = [(c["case"]["S"], ratio(c, key(EC, mode), key(DENSE, mode))) for c in cs]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), style, color=f"C{i}", label=f"D={d} {mode}", ms=4)
    ax.axhline(TARGET_FWD, color="k", lw=0.8, ls="-")
    ax.axhline(TARGET_FWDBWD, color="k", lw=0.8, ls="--")
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set(xscale="log", xlabel="tokens per group S", ylabel="EC time / dense-equivalent time",
           title="EC / FLOP-equal dense (lines: targets 1.05 fwd, 1.10 fwd+bwd)")
    _log_x_ticks(ax, sorted({c["case"]["S"] for c in grid}))
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return _finish(fig, title)


def plot_ratio_vs_E(results: dict, title: str):
    """B: EC / dense against E (compiled forward; fwd+bwd), and t(E) / t(8) against rows per
    expert G C (colour: D, line: f_c, marker: S)."""
    sweep = results["sweep"]
    if not sweep:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    d_all = sorted({c["D"] for c in sweep})
    s_all = sorted({c["S"] for c in sweep})
    markers = "os^vD"
    for cell in sweep:
        es = sorted(int(e) for e in cell["cases"])
        style = dict(color=f"C{d_all.index(cell['D'])}", ls="-" if cell["fc"] == 1 else "--",
                     marker=markers[s_all.index(cell["S"]) % len(markers)], ms=4)
        lab = f"D={cell['D']} S={cell['S']} fc={cell['fc']:g}"
        for ax, mode in ((axes[0], "jit"), (axes[1], "fwdbwd")):
            pts = [(e, ratio(cell, key(expert_choice_at(e), mode), key(DENSE, mode))) for e in es]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(*zip(*pts), label=lab, **style)
        if 8 in cell["cases"]:
            pts = sorted((cell["cases"][e]["G"] * cell["cases"][e]["C"],
                          ratio(cell, key(expert_choice_at(e), "jit"), key(expert_choice_at(8), "jit"))) for e in es)
            axes[2].plot(*zip(*pts), label=lab, **style)
    axes[0].axhline(TARGET_FWD, color="k", lw=0.8)
    axes[1].axhline(TARGET_FWDBWD, color="k", lw=0.8)
    axes[0].set(xscale="log", xlabel="experts E", ylabel="EC / FLOP-equal dense",
                title="forward (compiled bodies) against E; line: 1.05")
    axes[1].set(xscale="log", xlabel="experts E", ylabel="EC / FLOP-equal dense",
                title="forward+backward against E; line: 1.10")
    axes[2].axhspan(1 - TARGET_FLAT, 1 + TARGET_FLAT, color="g", alpha=0.1)
    axes[2].set(xscale="log", xlabel="rows per expert per call, G C (fewer as E grows)",
                ylabel="EC time(E) / time(E=8)", title="EC layer time (compiled body) against G C; band +-10 %")
    e_ticks = sorted({int(e) for c in sweep for e in c["cases"]})
    for ax in axes[:2]:
        _log_x_ticks(ax, e_ticks)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(8)
    handles, labels = axes[2].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, ncol=6, loc="lower center")
    return _finish(fig, title, legend_rect=(0, 0.12, 1, 0.97))


def plot_gflops(results: dict, title: str):
    """Achieved GFLOP/s of EC (public API, compiled body) and dense per D, against the matmul peak."""
    pts = []
    for case, ec, cell in expert_choice_cells(results):
        for mode in ("fwd", "jit"):
            for kind, name in ((EC, ec), (DENSE, DENSE)):
                t = cell["median"].get(key(name, mode))
                if t and case["dtype"] == "float32":
                    pts.append((kind, mode, case, gflops(case["flops"] if kind == EC else case["dense_flops"], t)))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    dims_all = sorted({c["D"] for _, _, c, _ in pts})
    for kind, mode, marker in ((EC, "jit", "o"), (EC, "fwd", "."), (DENSE, "jit", "x")):
        xs = [(dims_all.index(c["D"]) + 0.25 * (kind == DENSE) - 0.1 * (mode == "fwd")
               + 0.03 * math.log2(c["E"]), g) for k, m, c, g in pts if k == kind and m == mode]
        if xs:
            ax.scatter(*zip(*xs), marker=marker, color=COLORS[kind], s=18,
                       label=f"{'EC' if kind == EC else 'dense'} {'public API' if mode == 'fwd' else 'compiled body'}")
    for pk, ls in ((results["peak_start"], "-"), (results["peak_end"], ":")):
        ax.axhline(pk["jax"], color="C1", ls=ls, lw=1)
        if pk.get("numpy"):
            ax.axhline(pk["numpy"], color="C4", ls=ls, lw=1)
    p = peak(results)
    ax.axhline(TARGET_PEAK * p, color="k", lw=0.6, ls="--")
    ax.set_xticks(range(len(dims_all)), [f"D={d}" for d in dims_all])
    ax.set_ylim(bottom=0)
    ax.set(ylabel="GFLOP/s (expert matmul FLOPs)",
           title=f"achieved GFLOP/s; orange = JAX matmul peak, purple = NumPy (solid start, dotted end); dashed = 80 % of {p:.0f}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return _finish(fig, title)


def _mib(rows, name):
    """Working memory of variant `name` in each row, MiB (None if any row lacks it)."""
    ys = [(r["bytes"].get(name) or {}).get("working") for r in rows]
    return np.array(ys) / 2**20 if all(ys) else None


def plot_memory(results: dict, title: str):
    """C: compiled working memory against S (one panel per D, with G E C d and G E C S), and against E."""
    mem = results.get("memory") or {}
    if not mem.get("vs_S"):
        return None
    ds = sorted({r["case"]["D"] for r in mem["vs_S"]})
    fig, axes = plt.subplots(1, len(ds) + 1, figsize=(4.2 * (len(ds) + 1), 3.6), squeeze=False)
    for ax, d in zip(axes[0], ds):
        rows = sorted([r for r in mem["vs_S"] if r["case"]["D"] == d], key=lambda r: r["case"]["S"])
        s = [r["case"]["S"] for r in rows]
        for kind, mode, style in ((EC, "fwd", "-o"), (ONEHOT, "fwd", "-s"), (TC, "fwd", "-^"), (DENSE, "fwd", "-x"),
                                  (EC, "fwdbwd", "--o"), (DENSE, "fwdbwd", "--x")):
            ys = _mib(rows, key(kind, mode))
            if ys is not None:
                ax.plot(s, ys, style, color=COLORS[kind], label=key(kind, mode), ms=4)
        g, e = rows[0]["case"]["G"], rows[0]["case"]["E"]
        ecd = np.array([4 * g * r["case"]["E"] * r["case"]["C"] * d for r in rows]) / 2**20
        ecs = np.array([4 * g * r["case"]["E"] * r["case"]["C"] * r["case"]["S"] for r in rows]) / 2**20
        ax.plot(s, ecd, color="k", lw=0.6, label="G*E*C*d*4 B")
        ax.plot(s, ecs, color="k", lw=0.6, ls=":", label="G*E*C*S*4 B")
        ax.set(xscale="log", yscale="log", xlabel="S", ylabel="MiB (outputs + temporaries)",
               title=f"compiled working memory, D={d} E={e} fc=2 G={g}")
        _log_x_ticks(ax, s)
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=5)
    ax = axes[0][-1]
    rows = mem.get("vs_E", [])
    if rows:
        es = [r["case"]["E"] for r in rows]
        for kind, style in ((EC, "-o"), (ONEHOT, "-s"), (DENSE, "-x")):
            ys = _mib(rows, key(kind, "fwd"))
            if ys is not None:
                ax.plot(es, ys, style, color=COLORS[kind], label=key(kind, "fwd"), ms=4)
        ax.set(xscale="log", xlabel="E", ylabel="MiB", title=f"working memory against E ({rows[0]['case']['label'].split(' E=')[0]})")
        _log_x_ticks(ax, es)
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _finish(fig, title)


def plot_reference_vs_jax(results: dict, title: str):
    """E: ms per forward call of every layer kind, NumPy reference and JAX, per case."""
    ref = results.get("reference") or []
    if not ref:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    kinds = W.LAYER_KINDS
    width = 0.8 / (2 * len(ref))
    for i, row in enumerate(ref):
        for j, impl in enumerate(("ref", "acc")):
            xs = np.arange(len(kinds)) + (2 * i + j) * width
            ys = [1e3 * row["median"][key(k, impl)] for k in kinds]
            ax.bar(xs, ys, width, label=f"{'NumPy' if impl == 'ref' else 'JAX jit'} {row['case']['label']}",
                   color=f"C{2 * i + j}")
    ax.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, [W.LAYER_NAMES[k] for k in kinds], fontsize=7)
    ax.set(yscale="log", ylabel="ms per forward call", title="NumPy reference against JAX (public APIs)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, title)


def plot_profile(results: dict, title: str):
    """D: the stages of the EC layer stacked, with the whole layer and the dense FFN marked."""
    prof = results.get("profile") or []
    if not prof:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 2.4 + 0.6 * len(prof)))
    stage_names = [k for k in prof[0]["median"] if not k.startswith(("whole", "dense", "argument"))]
    for i, row in enumerate(prof):
        left = 0.0
        for j, k in enumerate(stage_names):
            v = 1e3 * row["median"][k]
            ax.barh(i, v, left=left, color=f"C{j}", label=k if i == 0 else None)
            left += v
        ax.plot(1e3 * row["median"]["whole EC layer (jit)"], i + 0.3, "kv", label="whole EC layer" if i == 0 else None)
        ax.plot(1e3 * row["median"]["dense FFN, FLOP-equal (jit)"], i + 0.3, "rv", label="dense FFN" if i == 0 else None)
    ax.set_yticks(range(len(prof)), [r["case"]["label"] for r in prof], fontsize=7)
    ax.set(xlabel="ms", title="where the EC layer's time goes (each stage timed alone, compiled bodies)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4)
    return _finish(fig, title)


def plot_model(results: dict, title: str):
    """G: sampler and train step time of the whole model per FFN kind."""
    model = results.get("model")
    if not model:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, what in zip(axes, ("sample", "train")):
        items = [(k.split(":", 1)[1], v) for k, v in model["median"].items() if k.startswith(what + ":")]
        if items:
            ax.barh([W.MODEL_NAMES[k] for k, _ in items], [1e3 * v for _, v in items], color="C0")
        ax.set(xlabel="ms per call", title=("sampler: batch %d x %d steps" % (model["sample_batch"], model["steps"])
                                            if what == "sample" else f"train step: batch {model['train_batch']}"))
        ax.tick_params(axis="y", labelsize=6)
        ax.title.set_fontsize(9)
    return _finish(fig, title)


def plot_dynamic(results: dict, title: str):
    """DiffMoE's dynamic layer: time against the slots each expert computes, with the proportional line."""
    rows = results.get("dynamic") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, row in enumerate(rows):
        names = sorted((n for n in row["median"] if n.startswith("dynamic")), key=lambda n: row["slots"][n])
        slots = np.array([row["slots"][n] for n in names], float)
        t = np.array([1e3 * row["median"][n] for n in names])
        ax.plot(slots, t, "o-", color=f"C{i}", label=row["case"]["label"])
        ax.plot(slots, t[-1] * slots / slots[-1], ":", color=f"C{i}", lw=1)
        static = [n for n in row["median"] if not n.startswith("dynamic")]
        for n in static:
            ax.plot([row["slots"][n]], [1e3 * row["median"][n]], "s", color=f"C{i}", mfc="none")
    ax.set(xscale="log", yscale="log", xlabel="slots computed per expert (the compiled ceiling)", ylabel="ms",
           title="DiffMoE dynamic layer: time against tokens (dotted: proportional; square: static top-k)")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _finish(fig, title)


PLOTS = {"time_vs_S": plot_time_vs_S, "ratio_vs_S": plot_ratio_vs_S, "ratio_vs_E": plot_ratio_vs_E,
         "gflops": plot_gflops, "memory": plot_memory, "reference_vs_jax": plot_reference_vs_jax,
         "profile": plot_profile, "model": plot_model, "dynamic": plot_dynamic}


def make_plots(results: dict, plot_dir: Path, title: str) -> dict[str, Path]:
    """Every plot the results have data for, as <plot_dir>/<name>.png; returns {name: path}."""
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in PLOTS.items():
        fig = draw(results, title)
        if fig is None:
            continue
        paths[name] = plot_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=90)
        plt.close(fig)
    return paths
