"""`ecdit`: the command line. Start with `ecdit demo`.

Subcommands: demo, train, sample, eval, heatmap, compare, bench, walkthrough. Bad input (an unknown word, a bad
config value, a missing or corrupt checkpoint) prints one line `ecdit: error: ...` and exits 2; a
training run that diverges (a non-finite loss or gradient) prints one line and exits 3. A command
that writes a file or folder checks that it can, before any work (`outputs.check_output`). SIGINT
(Ctrl-C) or SIGTERM during `train` or `compare` finishes the current step, saves it, prints one
line and exits 130 / 143 (docs/checkpoints.md, "Stopping, preemption and recovery").

Each subcommand imports its machinery when it runs (the only function-level imports of the
project, for start-up time: `ecdit --help` and argument errors answer without loading JAX).
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

from ecdit.app.outputs import check_output
from ecdit.core.errors import TrainingDiverged, TrainingStopped
from ecdit.core.config import DEFAULT_EVAL_PER_CATEGORY, DEFAULT_GUIDANCE, DEFAULT_SAMPLE_STEPS, FFN_KINDS

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3                 # a training run stopped at a non-finite loss or gradient


class UsageError(ValueError):
    """Bad command-line input (reported in one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) so every bad input reads the same."""

    def error(self, message):
        raise UsageError(f"{self.prog.split()[-1]}: {message} (see --help)")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _overrides(pairs, what) -> dict:
    """['width=64', 'ffn_kind=dense'] -> {'width': 64, 'ffn_kind': 'dense'} (Python literals, else str)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UsageError(f"--{what}: expected KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.strip()] = v
    return out


def _positive(convert, what):
    """An argparse type: `convert` the text, and refuse anything not > 0."""
    def parse(text):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {v}")
        return v
    return parse


_positive_int = _positive(int, "integer")


def _step_number(text):
    """An argparse type: a training step, a whole number >= 0."""
    if not (text.strip().isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected a step number (a whole number >= 0), got {text!r}")
    return int(text)
_positive_float = _positive(float, "number")


def _mesh_arg(p):
    p.add_argument("--mesh", default="", metavar="data=N,expert=M",
                   help="device mesh: the batch over `data`, the experts over `expert`, dense weights sharded "
                        "over `data` (default: one device; docs/scaling.md)")


def _mesh(a) -> dict:
    """The parsed --mesh flag ({} without one)."""
    from ecdit.systems.mesh import parse_mesh
    return parse_mesh(a.mesh)


def _checkpoint_path(path):
    """--checkpoint: a run folder, its checkpoint/ directory (or one step folder in it), or a
    legacy .npz file; the checkpoint it names (`checkpoint.find`), or `path` as given when there
    is none (the loader then says what is wrong)."""
    from ecdit.systems.checkpoint import find
    return find(path) or path


def _experiment_args(p, which):
    """The options `demo` and `compare` share: sampling, seed, config changes, progress."""
    p.add_argument("--sample-steps", type=_positive_int, default=DEFAULT_SAMPLE_STEPS,
                   help="Euler steps (default %(default)s)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="CFG scale (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data, init and noise seed (default %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"change a ModelConfig field {which}")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="change a TrainConfig field")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _sampling_args(p):
    """The options `sample`, `eval` and `heatmap` share: Euler steps, guidance, group, seed, progress."""
    p.add_argument("--steps", type=_positive_int, default=DEFAULT_SAMPLE_STEPS, help="Euler steps (default %(default)s)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help="classifier-free guidance scale (default %(default)s)")
    p.add_argument("--group-size", type=_positive_int, default=None,
                   help="inference routing group in tokens (default: the config's, else one image)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    p.add_argument("--inference", choices=("static", "dynamic"), default="static",
                   help="routing at inference for a model with a capacity predictor (DiffMoE): static top-k as "
                        "in training, or dynamic capacity from the predictor and thresholds (default %(default)s)")
    _mesh_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------------------------------
# Subcommands
# ---------------------------------------------------------------------------------------------

def cmd_demo(a):
    check_output(a.out, "--out", "folder")
    from ecdit.app.demo import run_demo
    s = run_demo(a.out, steps=a.steps, minutes=a.minutes, per_category=a.per_category, sample_steps=a.sample_steps,
                 guidance_scale=a.guidance, seed=a.seed, model_changes=_overrides(a.set, "set"),
                 train_changes=_overrides(a.train_set, "train-set"), progress=not a.quiet)
    from ecdit.app.reports import scores_table
    print(scores_table([("trained", s["trained"]), ("untrained", s["untrained"])]))
    print(f"demo finished in {s['total_seconds'] / 60:.1f} min ({s['steps']} training steps); "
          f"report: {os.path.join(a.out, 'report.md')}")
    return 0


def cmd_train(a):
    from ecdit.core.config import preset, train_preset
    changes = _overrides(a.set, "set")
    if a.ffn:
        changes.setdefault("ffn_kind", a.ffn)
    cfg = preset(a.preset, **changes)
    tc = train_preset(a.preset, **_overrides(a.train_set, "train-set"))
    out = check_output(a.out or os.path.join("runs", cfg.name), "--out", "folder")
    if a.resume_step is not None and a.no_resume:
        raise UsageError("train: --resume-step resumes a run; --no-resume starts afresh: give one of them")
    from ecdit.app.plots import plot_loss
    from ecdit.systems import distributed
    from ecdit.systems.checkpoint import DIRNAME, in_run
    from ecdit.systems.mesh import describe_mesh, parse_mesh
    from ecdit.systems.stopping import StopSignals
    from ecdit.systems.train import train
    distributed.initialize(distributed.resolve(a.distributed),  # no flag, no ECDIT_* variables: one process
                           checkpoint_dir=os.path.join(out, DIRNAME))
    axes = parse_mesh(a.mesh)
    _, history = train(cfg, tc, a.steps, out, minutes=a.minutes, resume=not a.no_resume,
                       checkpoint_every=a.checkpoint_every, progress=not a.quiet, desc=f"train {cfg.name}",
                       mesh=axes, stop=StopSignals(), resume_step=a.resume_step)
    if not distributed.is_main_process():
        return 0
    if history:
        plot_loss(history, os.path.join(out, "loss.png"))
    last = history[-1] if history else {}
    print(f"step {last.get('step', 0)}: loss {last.get('loss', float('nan')):.4f} ({describe_mesh(axes)}); "
          f"checkpoint {in_run(out) or os.path.join(out, DIRNAME)}, metrics {os.path.join(out, 'metrics.jsonl')}")
    return 0


def cmd_sample(a):
    check_output(a.out, "--out", "file")
    from ecdit.app.heatmap import save_image_grid
    from ecdit.systems.checkpoint import load_params
    from ecdit.systems.sampling import generate
    params, cfg, meta = load_params(_checkpoint_path(a.checkpoint))
    images, _ = generate(params, cfg, [a.prompt] * a.num, seed=a.seed, num_steps=a.steps,
                         guidance_scale=a.guidance, group_size=a.group_size, progress=not a.quiet,
                         dynamic=a.inference == "dynamic", step=meta.get("step"), mesh=_mesh(a))
    if a.num == 1:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plt.imsave(a.out, images[0])
    else:
        save_image_grid(images, a.out, columns=min(a.num, 8))
    print(f"wrote {a.out}")
    return 0


def cmd_eval(a):
    if a.out:
        check_output(a.out, "--out", "file")
    import json

    from ecdit.app.reports import evaluate_model, scores_table
    from ecdit.systems import shapes
    from ecdit.systems.checkpoint import load_params
    params, cfg, meta = load_params(_checkpoint_path(a.checkpoint))
    items = (shapes.validation_items if a.split == "validation" else shapes.heldout_items)(a.per_category)
    res, images, experts, secs = evaluate_model(params, cfg, items, num_steps=a.steps, guidance_scale=a.guidance,
                                                seed=a.seed, progress=not a.quiet,
                                                dynamic=a.inference == "dynamic", step=meta.get("step"),
                                                mesh=_mesh(a))
    print(scores_table([(f"{cfg.name} @ step {meta.get('step')}, {a.split}, {a.inference}", res)]))
    out = dict(res)
    from ecdit.systems.geneval import format_misses, miss_breakdown
    out["misses"] = misses = miss_breakdown(images, items)
    if misses:
        print("where the two-object prompts fail (ecdit.systems.geneval.miss_breakdown):")
        for line in format_misses(misses):
            print("  " + line)
    if cfg.sparse_layers:
        from ecdit.app.allocation import allocation_detail_correlation, correlation_lines, patch_detail
        from ecdit.app.heatmap import step_times
        per_step = experts.mean(axis=(1, 2, 3))                  # (T,) experts per token at each step
        print(f"experts per token, mean {per_step.mean():.2f}; per denoising step (t = 1 -> 0): "
              + " ".join(f"{v:.2f}" for v in per_step))
        corr = allocation_detail_correlation(experts, patch_detail(images, cfg.patch_size))
        print("experts per token vs the token's edge pixels in the final image (Pearson r over an image's "
              "tokens, mean over images; ecdit.app.allocation):")
        for line in correlation_lines(corr, cfg.sparse_layers, step_times(a.steps)):
            print("  " + line)
        out["allocation_detail_r"] = {str(l + 1): float(v) for l, v in zip(cfg.sparse_layers, corr["r_mean"])}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def cmd_heatmap(a):
    check_output(a.out, "--out", "file")
    from ecdit.app.heatmap import plot_allocation
    from ecdit.systems.checkpoint import load_params
    from ecdit.systems.sampling import generate
    params, cfg, meta = load_params(_checkpoint_path(a.checkpoint))
    if not cfg.sparse_layers:
        raise UsageError("heatmap: the checkpoint is a dense model; there is no expert allocation to draw")
    images, experts = generate(params, cfg, [a.prompt], seed=a.seed, num_steps=a.steps, guidance_scale=a.guidance,
                               group_size=a.group_size, progress=not a.quiet, dynamic=a.inference == "dynamic",
                               step=meta.get("step"), mesh=_mesh(a))
    plot_allocation(images[0], experts[:, :, 0], a.out, sparse_layers=cfg.sparse_layers,
                    num_experts=cfg.num_experts, prompt=a.prompt)
    print(f"wrote {a.out}")
    return 0


def cmd_compare(a):
    check_output(a.out, "--out", "folder")
    from ecdit.app.compare import run_compare, run_compare_seeds
    from ecdit.systems.mesh import parse_mesh
    from ecdit.systems.stopping import StopSignals
    rows = tuple(k.strip() for k in a.rows.split(",") if k.strip())
    kw = dict(steps=a.steps, per_category=a.per_category, sample_steps=a.sample_steps, guidance_scale=a.guidance,
              seed=a.seed, rows=rows, model_changes=_overrides(a.set, "set"),
              train_changes=_overrides(a.train_set, "train-set"), progress=not a.quiet, mesh=parse_mesh(a.mesh),
              base=a.preset, stop=StopSignals())
    r = run_compare(a.out, **kw) if a.seeds == 1 else run_compare_seeds(a.out, seeds=a.seeds, **kw)
    print(r["markdown"])
    print(f"table: {os.path.join(a.out, 'compare.md')}")
    return 0


def cmd_bench(a):
    # The benchmarks sit above the application (they measure it), so the command line runs them
    # as their own program instead of importing them.
    import subprocess
    check_output(a.out, "--out", "folder")
    if a.accelerator:                                            # one prepared run for a GPU or TPU
        if a.full or a.mesh:
            raise UsageError("bench: --accelerator takes no --full or --mesh (it sizes itself to the device)")
        return subprocess.run([sys.executable, "-m", "ecdit.benchmarks.accelerator", *(["--smoke"] if a.smoke else []),
                               "--out", a.out]).returncode
    axes = _mesh(a)
    size = ["--full"] if a.full else ["--smoke"] if a.smoke else []
    rc = subprocess.run([sys.executable, "-m", "ecdit.benchmarks", *size, "--out-dir", a.out]).returncode
    if rc == 0 and axes:                                         # the expert-parallel exchange on that mesh
        mesh = ["--data", str(axes.get("data", 1)), "--expert", str(axes.get("expert", 1))]
        rc = subprocess.run([sys.executable, "-m", "ecdit.benchmarks.exchange", *mesh,
                             *(["--rounds", "3"] if a.smoke else [])]).returncode
    return rc


def cmd_walkthrough(a) -> int:
    """Build the annotated walkthrough pages (ecdit.app.walkthrough) into --out."""
    check_output(a.out, "--out", "folder")
    from ecdit.app.walkthrough import WalkthroughError, build
    try:
        summary = build(a.out)
    except WalkthroughError as e:                               # one line per problem, each naming its function
        for line in str(e).splitlines():
            print(f"ecdit: error: walkthrough: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"ecdit walkthrough: {summary.line()}")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ecdit", description=(
        "EC-DiT: expert-choice MoE diffusion transformers (Sun et al.) on a captioned-shapes data set. "
        "Start with `ecdit demo`."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="train the tiny EC-DiT on CPU, sample, score, draw, write a report",
                       description="Train the `tiny` EC-DiT on captioned shapes for a few minutes on CPU, sample the "
                                   "held-out prompts with classifier-free guidance, score them with shapes-GenEval "
                                   "(beside an untrained model), draw Fig. 6-style heatmaps and the loss curve, and "
                                   "write OUT/report.md with its PNGs.")
    d.add_argument("--out", default="report", help="report folder (default %(default)s)")
    d.add_argument("--steps", type=_positive_int, default=20000, help="training steps at most (default %(default)s)")
    d.add_argument("--minutes", type=_positive_float, default=10.0,
                   help="stop training after this many minutes (default %(default)s)")
    d.add_argument("--per-category", type=_positive_int, default=DEFAULT_EVAL_PER_CATEGORY,
                   help="held-out items per category (default %(default)s)")
    _experiment_args(d, "of tiny")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a preset on captioned shapes (resumable)",
                       description="Train a preset on captioned shapes. Resumes from OUT/checkpoint/ (or a legacy "
                                   "OUT/checkpoint.npz) when present (a resumed run equals an unstopped one on CPU); "
                                   "writes a checkpoint step there every --checkpoint-every steps and at the end "
                                   "(the last two kept), OUT/metrics.jsonl and OUT/loss.png.")
    t.add_argument("--preset", default="tiny", help="tiny, small, XL, XXL, 3XL, M, XL-8E, DENSE-XL, ... (default %(default)s)")
    t.add_argument("--steps", type=_positive_int, default=1000, help="total steps (default %(default)s)")
    t.add_argument("--minutes", type=_positive_float, default=None, help="stop after this many minutes")
    t.add_argument("--out", default=None, help="run folder (default runs/PRESET)")
    t.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a checkpoint")
    t.add_argument("--resume-step", type=_step_number, default=None, metavar="N",
                   help="resume from the committed step N of OUT/checkpoint/ instead of the newest (e.g. when the "
                        "newest is corrupt); the steps after N are moved aside (each renamed STEP.set-aside), not "
                        "deleted")
    t.add_argument("--checkpoint-every", type=_positive_int, default=200, help="steps between checkpoints")
    t.add_argument("--ffn", choices=FFN_KINDS, default=None,
                   help="FFN kind of the interleaved layers (default: the preset's, expert_choice); diffmoe: "
                        "DiffMoE's batch pool and capacity predictor, capacity factor 1 unless --set capacity_factor=...")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="change a ModelConfig field, e.g. ffn_kind=dense")
    t.add_argument("--train-set", action="append", metavar="KEY=VALUE", help="change a TrainConfig field, e.g. mask_ratio=0.5")
    _mesh_arg(t)
    t.add_argument("--distributed", default=None, metavar="HOST:PORT,N,I",
                   help="join N processes (coordinator HOST:PORT, this one is process I), or set ECDIT_COORDINATOR, "
                        "ECDIT_NUM_PROCESSES, ECDIT_PROCESS_ID; --mesh must then cover every device (docs/scaling.md)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="prompt in, PNG out", description="Generate images for one prompt from a checkpoint.")
    s.add_argument("prompt", help='a caption in the shapes grammar, e.g. "a red circle"')
    s.add_argument("--checkpoint", required=True, help="run folder, its checkpoint/ directory, or a legacy .npz file")
    s.add_argument("--out", default="sample.png", help="PNG path (default %(default)s)")
    s.add_argument("--num", type=_positive_int, default=1, help="images (a grid when > 1)")
    _sampling_args(s)
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("eval", help="score a checkpoint on the held-out prompts (shapes-GenEval)",
                       description="Sample the held-out prompts of every category and score them. "
                                   "--split validation scores seen (training) prompts with fresh seeds "
                                   "instead: tune sampling settings there, not on the held-out items.")
    e.add_argument("--checkpoint", required=True, help="run folder, its checkpoint/ directory, or a legacy .npz file")
    e.add_argument("--split", choices=("heldout", "validation"), default="heldout",
                   help="held-out prompts (default) or seen prompts for tuning, e.g. --guidance")
    e.add_argument("--per-category", type=_positive_int, default=DEFAULT_EVAL_PER_CATEGORY,
                   help="items per category (default %(default)s)")
    e.add_argument("--out", default=None, help="also write the scores as JSON here")
    _sampling_args(e)
    e.set_defaults(fn=cmd_eval)

    h = sub.add_parser("heatmap", help="Fig. 6-style expert-allocation heatmaps for one prompt",
                       description="Generate one image and draw how many experts chose each token, per sparse layer "
                                   "and per denoising step (Fig. 6).")
    h.add_argument("prompt", help="a caption in the shapes grammar")
    h.add_argument("--checkpoint", required=True, help="run folder, its checkpoint/ directory, or a legacy .npz file")
    h.add_argument("--out", default="heatmap.png", help="PNG path (default %(default)s)")
    _sampling_args(h)
    h.set_defaults(fn=cmd_heatmap)

    c = sub.add_parser("compare", help="the DiffMoE seed table at toy scale: TC, dense, EC-DiT, DiffMoE, Dense-XL",
                       description="Train token-choice, dense, EC-DiT (with a capacity predictor), DiffMoE and "
                                   "Dense-XL models on the same data for the same steps, at equal activated parameters "
                                   "(Dense-XL: 1.5x); evaluate the seed table's rows (static and dynamic inference); "
                                   "print and write one table of held-out loss, shapes-GenEval scores and experts per "
                                   "token, with figures.")
    c.add_argument("--out", default="compare", help="output folder (default %(default)s)")
    c.add_argument("--preset", default="tiny", choices=("tiny", "small"),
                   help="the model and training preset every row is made from (default %(default)s; small: "
                        "64x64 images, D = 256, 8 layers, for a GPU)")
    c.add_argument("--steps", type=_positive_int, default=600, help="training steps per model (default %(default)s)")
    c.add_argument("--per-category", type=_positive_int, default=30, help="held-out items per category (default %(default)s)")
    c.add_argument("--rows", default="tc,dense,ec_static,ec_dynamic,diffmoe_static,diffmoe_dynamic,dense_xl",
                   help="comma-separated rows (default: the seed table's seven); also ec_group_static, "
                        "ec_group_dynamic (routing groups of 4 images)")
    c.add_argument("--seeds", type=_positive_int, default=1,
                   help="train every row on this many seeds (--seed, --seed + 1, ...; each in OUT/seedS/) and "
                        "report mean ± std over seeds and paired differences against the dense row (default 1)")
    _mesh_arg(c)
    _experiment_args(c, "of every model")
    c.set_defaults(fn=cmd_compare)

    b = sub.add_parser("bench", help="run the benchmarks and write their report",
                       description="Run the benchmark sweep (python -m ecdit.benchmarks) and write OUT/benchmarks.md "
                                   "with its plots.")
    b.add_argument("--full", action="store_true", help="the full benchmark set")
    b.add_argument("--smoke", action="store_true", help="a seconds-long smoke run")
    b.add_argument("--out", default="docs", help="output folder (default %(default)s)")
    b.add_argument("--mesh", default="", metavar="data=N,expert=M",
                   help="also measure the expert-parallel EC layer's exchange on this mesh (bytes from the compiled "
                        "program and the formula; time on simulated CPU devices is a sanity check only)")
    b.add_argument("--accelerator", action="store_true",
                   help="instead: the accelerator run (python -m ecdit.benchmarks.accelerator): the twin checked against "
                        "the spec on the device, the paper's shapes timed, OUT/benchmarks-<device>.md and .json; exit 1 "
                        "if an equivalence check fails (with --smoke: tiny sizes, under a minute, any machine)")
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("walkthrough", help="build the annotated pages: each equation, its spec beside its twin, "
                                           "and the tests that prove them equal",
                       description="Build the annotated walkthrough from the source: one self-contained HTML page per "
                                   "module of the spec (the NumPy spec beside its JAX twin, each formula rendered, "
                                   "the tests that prove them equal) and an index (layers, shapes glossary, equation "
                                   "table, deviations, errata). Needs a source checkout (pip install -e .).")
    w.add_argument("--out", default="pages", help="output folder (default %(default)s); open OUT/index.html")
    w.set_defaults(fn=cmd_walkthrough)
    return p


def main(argv=None) -> int:
    """Entry point of the `ecdit` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "fn", None):
            parser.print_help()
            return 0
        return args.fn(args)
    except SystemExit as e:                                      # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("ecdit: interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        print(f"ecdit: error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingStopped as e:                                 # SIGINT / SIGTERM: the step is saved
        print(f"ecdit: {e}", file=sys.stderr)
        return e.status
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, ModuleNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ecdit: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
