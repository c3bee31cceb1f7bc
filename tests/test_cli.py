"""The `ecdit` command: real --help, a train -> sample -> heatmap -> eval round trip on a very
small model, and one-line errors (no traceback, non-zero exit) for bad input."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecdit.app.cli import main
from ecdit.core.config import preset, train_preset
from ecdit.systems.shapes import CATEGORIES
from tests.helpers import small_config, small_train
from tests.test_checkpoint import largest_array_file

ROOT = Path(__file__).resolve().parents[1]


def _overrides(flag, wanted, base):
    """--set KEY=VALUE for every field where `wanted` differs from the preset `base`."""
    out = []
    for f in dataclasses.fields(wanted):
        if getattr(wanted, f.name) != getattr(base, f.name):
            out += [flag, f"{f.name}={getattr(wanted, f.name)!r}"]
    return out


# The small model of tests/helpers.py (a few thousand parameters): the round trip takes seconds, and
# in one pytest process it reuses the compiled step of test_train and test_checkpoint.
SMALL = (_overrides("--set", small_config(), preset("tiny"))
         + _overrides("--train-set", small_train(), train_preset("tiny")))


def _small_model() -> dict:
    """The ModelConfig fields that make the helpers' small model out of `tiny` (for run_demo / run_compare)."""
    return {k: getattr(small_config(), k) for k in ("image_size", "depth", "width", "num_heads", "num_kv_heads",
                                                    "num_experts", "text_width", "text_depth", "text_heads",
                                                    "freq_dim")}


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ecdit", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("command", ["demo", "train", "sample", "eval", "heatmap", "compare", "bench"])
def test_every_subcommand_has_real_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ecdit " + command) and len(out.splitlines()) > 5


def test_top_level_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "sample", "eval", "heatmap", "compare", "bench"):
        assert command in out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    assert main(["train", "--steps", "2", "--out", str(run), "--quiet", *SMALL]) == 0
    return run / "checkpoint"                                    # the checkpoint directory; .parent: the run folder


def test_train_then_sample_heatmap_and_eval_write_their_outputs(checkpoint, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["sample", "a red circle", "--checkpoint", str(checkpoint), "--out", str(png), "--steps", "2",
                 "--quiet"]) == 0
    assert png.stat().st_size > 100
    heat = tmp_path / "h.png"
    assert main(["heatmap", "two squares", "--checkpoint", str(checkpoint.parent), "--out", str(heat),
                 "--steps", "2", "--quiet"]) == 0
    assert heat.stat().st_size > 1000
    assert main(["eval", "--checkpoint", str(checkpoint), "--per-category", "1", "--steps", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Single obj." in out and "heldout" in out
    assert "edge pixels" in out and "layer 2: r = " in out          # the small model's one sparse layer
    scores = tmp_path / "v.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--split", "validation", "--per-category", "1",
                 "--steps", "2", "--guidance", "2", "--out", str(scores), "--quiet"]) == 0
    assert "validation" in capsys.readouterr().out
    written = json.loads(scores.read_text())
    assert set(written) == {"overall", *CATEGORIES, "allocation_detail_r", "misses"}
    assert set(written["allocation_detail_r"]) == {"2"}
    assert set(written["misses"]) == {"two_objects", "position", "colour_attribution"}
    assert all(r["items"] == 1 and r["named"] == 2 for r in written["misses"].values())


def test_a_new_user_trains_and_samples_a_diffmoe_model_with_the_cli(tmp_path, capsys):
    """`ecdit train --ffn diffmoe`, then sample / eval / heatmap with --inference dynamic: the
    checkpoint says diffmoe with f_c = 1, eval prints the experts per token at every step, a young
    checkpoint's thresholds are warned about, and a model without a predictor is a one-line error."""
    from ecdit.systems.checkpoint import load_params
    run = tmp_path / "diffmoe"
    assert main(["train", "--ffn", "diffmoe", "--steps", "2", "--out", str(run), "--quiet", *SMALL]) == 0
    _, cfg, _ = load_params(str(run / "checkpoint"))
    assert cfg.ffn_kind == "diffmoe" and cfg.capacity_factor == 1.0
    png = tmp_path / "d.png"
    with pytest.warns(UserWarning, match="^thresholds: the checkpoint has trained 2 steps"):
        assert main(["sample", "a red circle", "--checkpoint", str(run), "--out", str(png), "--steps", "2",
                     "--inference", "dynamic", "--quiet"]) == 0
        assert main(["eval", "--checkpoint", str(run), "--per-category", "1", "--steps", "2", "--inference",
                     "dynamic", "--quiet"]) == 0
        assert main(["heatmap", "two squares", "--checkpoint", str(run), "--out", str(tmp_path / "h.png"),
                     "--steps", "2", "--inference", "dynamic", "--quiet"]) == 0
    assert png.stat().st_size > 100 and (tmp_path / "h.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "dynamic" in out and "experts per token, mean" in out


def test_dynamic_inference_without_a_predictor_is_a_one_line_error(checkpoint, tmp_path):
    _one_line_error(run_cli("sample", "a circle", "--checkpoint", str(checkpoint), "--inference", "dynamic",
                            "--out", str(tmp_path / "x.png"), "--quiet"), "dynamic")


def _one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ecdit: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for n in needles:
        assert n in lines[0]


def test_unknown_word_is_a_one_line_error(checkpoint, tmp_path):
    _one_line_error(run_cli("sample", "a purple dog", "--checkpoint", str(checkpoint), "--out",
                            str(tmp_path / "x.png"), "--quiet"), "unknown word 'purple'")


def test_missing_and_corrupt_checkpoints_are_one_line_errors(checkpoint, tmp_path):
    _one_line_error(run_cli("eval", "--checkpoint", str(tmp_path / "none.npz")), "no such file")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(run_cli("sample", "a circle", "--checkpoint", str(bad)), "corrupt")
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoint")
    chunk = largest_array_file(str(run / "checkpoint" / "2"))
    data = open(chunk, "rb").read()
    open(chunk, "wb").write(data[: len(data) // 2])              # a truncated array file (tensorstore's error)
    _one_line_error(run_cli("eval", "--checkpoint", str(run)), "corrupt", str(run / "checkpoint" / "2"))


def test_bad_config_values_are_one_line_errors(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--set", "capacity_factor=-1"]) == 2
    assert capsys.readouterr().err.strip().startswith("ecdit: error: capacity_factor")
    assert main(["train", "--out", str(tmp_path), "--set", "colour=red"]) == 2
    assert "colour: not a ModelConfig field" in capsys.readouterr().err
    assert main(["train", "--steps", "-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps" in err[0]
    assert main(["train", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:thresholds. the checkpoint has trained 3 steps:UserWarning")  # 3 steps, on purpose
def test_compare_writes_the_seed_tables_seven_rows_with_losses_and_experts_per_step(tmp_path):
    """`ecdit compare` end to end at toy size: the seed table's seven rows in its order (five
    trainings: the EC-DiT and DiffMoE models serve a static and a dynamic row each), finite losses,
    experts per token at every denoising step for the MoE rows (exactly f_c = 1 on average for the
    expert-choice static rows), the table and the figures on disk."""
    from ecdit.app.compare import SEED_ROWS, run_compare
    r = run_compare(str(tmp_path), steps=3, per_category=1, sample_steps=2, model_changes=_small_model(),
                    progress=False)
    assert [row["key"] for row in r["rows"]] == [row.key for row in SEED_ROWS]
    for row in r["rows"]:
        losses = [row["final_loss"], row["val_loss"], *row["val_loss_per_t"].values()]
        assert all(math.isfinite(v) and v > 0 for v in losses)
    by_key = {row["key"]: row for row in r["rows"]}
    for key in ("ec_static", "diffmoe_static"):
        assert by_key[key]["experts_per_step"] == pytest.approx([1.0, 1.0])   # f_c = 1: k = S / E per pool
    for key in ("ec_dynamic", "diffmoe_dynamic"):
        assert len(by_key[key]["experts_per_step"]) == 2 and by_key[key]["dynamic"]
    for key in ("tc", "ec_static", "ec_dynamic", "diffmoe_static", "diffmoe_dynamic"):
        r_layers = by_key[key]["allocation_detail_r"]           # one r per sparse layer; NaN: nothing varied
        assert len(r_layers) == 1 and all(math.isnan(v) or -1 <= v <= 1 for v in r_layers)
    assert by_key["dense"]["allocation_detail_r"] == []
    assert by_key["dense"]["experts_per_step"] == [] and by_key["dense_xl"]["activated"] > by_key["dense"]["activated"]
    assert by_key["ec_static"]["train_seconds"] == by_key["ec_dynamic"]["train_seconds"]  # one training, two rows
    assert by_key["dense"]["steps_to_dense_final"] == 3                   # its own final loss, at its last step
    md = (tmp_path / "compare.md").read_text()
    assert "held-out loss" in md and "pool in training" in md
    table = md.split("\n\n")[1].splitlines()
    assert sum(line.startswith("| ") for line in table) == 8     # header + 7 rows
    assert len(json.loads((tmp_path / "compare.json").read_text())) == 7
    for png in ("compare_loss.png", "experts_per_step.png", "heatmap_diffmoe_static.png", "heatmap_diffmoe_dynamic.png"):
        assert (tmp_path / png).stat().st_size > 0


def test_compare_refuses_an_unknown_row():
    from ecdit.app.compare import pick_rows
    with pytest.raises(ValueError, match="^rows: unknown row"):
        pick_rows(["tc", "moe"])


def test_demo_writes_the_report_end_to_end(tmp_path):
    """`ecdit demo` at toy size: summary.json with trained and untrained scores, report.md with
    the table and every picture it links."""
    from ecdit.app.demo import run_demo
    s = run_demo(str(tmp_path), steps=3, per_category=2, sample_steps=2, model_changes=_small_model(), progress=False)
    assert s["steps"] == 3 and s["per_category"] == 2
    for model in ("trained", "untrained"):
        assert set(s[model]) == {"overall", *CATEGORIES}
        assert all(0.0 <= v <= 1.0 for v in s[model].values())
    assert json.loads((tmp_path / "summary.json").read_text())["trained"] == s["trained"]
    md = (tmp_path / "report.md").read_text()
    assert "Single obj." in md and "same model, untrained" in md and "one item = 50 percentage points" in md
    assert "a shape head on block 2's output" in md and "(Eq. 1 alone: " in md   # the tiny preset trains one
    assert set(s["allocation_detail_r"]) == {"2"} and "| 2 | " in md.split("r(experts per token, edge pixels)")[1]
    assert set(s["misses"]) == {"two_objects", "position", "colour_attribution"}
    assert all(r["items"] == 2 and r["named"] == 4 for r in s["misses"].values())
    assert "- position: named shapes found" in md
    for png in ("loss.png", "samples.png", "heatmaps.png", "heatmap_steps.png"):
        assert f"]({png})" in md and (tmp_path / png).stat().st_size > 1000, png


def _fake_row(key, val_loss, single):
    return {"key": key, "label": key, "model": key, "pool": "-", "inference": "-", "activated": 1, "total": 1,
            "val_loss": val_loss, "results": {"single_object": single}}


def test_seed_summary_gives_mean_spread_and_the_paired_t_test_against_dense():
    """Three seeds, hand-checkable: ec - dense = -0.02, -0.01, -0.03 (mean -0.02, sample sd 0.01,
    s.e. 0.01 / sqrt(3), t = -0.02 / s.e. = -3.464, two-sided p = 0.0742 for 2 degrees of freedom)."""
    from ecdit.app.compare import seeds_markdown, summarize_seeds
    runs = [[_fake_row("dense", d, 0.5), _fake_row("ec", d + diff, 0.6)]
            for d, diff in ((0.30, -0.02), (0.40, -0.01), (0.35, -0.03))]
    summary = summarize_seeds(runs)
    dense, ec = summary
    assert dense["metrics"]["val_loss"]["mean"] == pytest.approx(0.35)
    assert dense["metrics"]["val_loss"]["std"] == pytest.approx(0.05)
    assert "paired" not in dense
    p = ec["paired"]["val_loss"]
    assert p["mean"] == pytest.approx(-0.02) and p["below_zero"] == 3 and p["n"] == 3
    assert p["stderr"] == pytest.approx(0.01 / math.sqrt(3))
    assert p["t"] == pytest.approx(-2 * math.sqrt(3), rel=1e-9)
    assert p["p"] == pytest.approx(0.0742, abs=5e-4)
    assert ec["paired"]["single_object"]["mean"] == pytest.approx(0.1)
    md = seeds_markdown(summary, [0, 1, 2], 10)
    assert "| ec | - | -0.0200 ± 0.0058 | -3.46 | 0.074 | 3 of 3 |" in md
    assert "0.3500 ± 0.0500" in md


def test_compare_builds_every_row_from_the_preset_it_is_given(tmp_path):
    """--preset small (for a GPU): the rows' models and the training run come from `small` (its
    masking ratio 0.5), shrunk here to a toy size; the settings record it, so a tiny run's folder is
    not mistaken for it."""
    from ecdit.app.compare import _settings, run_compare
    shrink = {"image_size": 16, "width": 32, "depth": 2, "num_heads": 2, "num_kv_heads": 1, "text_width": 16,
              "text_depth": 1, "text_heads": 2, "num_experts": 4, "freq_dim": 32, "train_group_size": 32,
              "inference_group_size": 16}
    r = run_compare(str(tmp_path), steps=2, per_category=1, sample_steps=2, rows=("dense", "ec_static"),
                    model_changes=shrink, train_changes={"batch_size": 8}, progress=False, base="small")
    assert [row["config"] for row in r["rows"]] == ["small-dense", "small-ec"]
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["model"]["name"] == "small" and settings["train"]["mask_ratio"] == 0.5
    assert _settings(base="tiny") != _settings(base="small")
    out = run_cli("compare", "--preset", "XL", "--steps", "1")
    assert out.returncode == 2 and "--preset: invalid choice: 'XL'" in out.stderr


@pytest.mark.parametrize("field, value", [("capacity_factor", 2.0), ("ffn_kind", "dense"), ("num_selected", 2)])
def test_compare_refuses_a_change_that_its_rows_would_overwrite(field, value):
    """--set capacity_factor=2 used to be overwritten by every MoE row's f_c = 1: a silent no-op."""
    from ecdit.app.compare import model_configs
    with pytest.raises(ValueError, match=f"^set: {field} is set by each row"):
        model_configs("tiny", {field: value})
    assert model_configs("tiny", {"num_experts": 4})["ec"].num_experts == 4      # other fields apply


def test_claim_contrasts_pair_two_non_dense_rows_by_seed():
    """ec_static - tc = -0.02, -0.01, -0.03 over three seeds (the hand-checked numbers above: t =
    -3.464, p = 0.0742); a contrast whose rows are not both run is left out."""
    from ecdit.app.compare import contrasts, seeds_markdown, summarize_seeds
    runs = [[_fake_row("tc", d, 0.5), _fake_row("ec_static", d + diff, 0.6)]
            for d, diff in ((0.30, -0.02), (0.40, -0.01), (0.35, -0.03))]
    pairs = contrasts(runs)
    assert [(c["key"], c["against"]) for c in pairs] == [("ec_static", "tc")]
    p = pairs[0]["paired"]["val_loss"]
    assert p["mean"] == pytest.approx(-0.02) and p["below_zero"] == 3
    assert p["t"] == pytest.approx(-2 * math.sqrt(3), rel=1e-9) and p["p"] == pytest.approx(0.0742, abs=5e-4)
    md = seeds_markdown(summarize_seeds(runs), [0, 1, 2], 10, pairs)
    assert "| ec_static - tc | -0.0200 ± 0.0058 | -3.46 | 0.074 | 3 of 3 | +10.0 |" in md
    assert "claims between other rows" not in seeds_markdown(summarize_seeds(runs), [0, 1, 2], 10)
    with pytest.raises(ValueError, match="^runs: every seed"):
        contrasts([runs[0], runs[1][:1]])


def test_seed_summary_gives_the_held_out_loss_at_each_t_against_dense():
    """Per-t held-out losses averaged over seeds, and each row's mean against dense's in percent:
    ec at t = 0.1 is 0.8 and 0.6 against dense's 1.0 twice (-30 %), at t = 0.9 0.22 against 0.2."""
    from ecdit.app.compare import seeds_markdown, summarize_seeds
    runs = [[{**_fake_row("dense", 0.6, 0.5), "val_loss_per_t": {"0.1": 1.0, "0.9": 0.2}},
             {**_fake_row("ec", 0.5, 0.5), "val_loss_per_t": {"0.1": ec, "0.9": 0.22}}] for ec in (0.8, 0.6)]
    for row in runs[0]:                                  # a seed run in this process: float keys, as validation_loss
        row["val_loss_per_t"] = {float(t): v for t, v in row["val_loss_per_t"].items()}   # gives them
    summary = summarize_seeds(runs)
    assert summary[1]["val_loss_per_t"]["0.1"]["mean"] == pytest.approx(0.7)
    md = seeds_markdown(summary, [0, 1], 10)
    assert "| dense | - | 1.0000 | 0.2000 |" in md
    assert "| ec | - | 0.7000 (-30.0 %) | 0.2200 (+10.0 %) |" in md
    assert "at each t" not in seeds_markdown(summarize_seeds([[_fake_row("dense", 0.6, 0.5)]]), [0], 10)


def test_a_row_that_learns_twice_as_fast_reaches_the_dense_final_loss_in_about_half_the_steps():
    """steps_to_reach on loss curves 1/x (dense) and 1/(2x): dense reaches its own final loss (the
    mean over its last fifth) at its last step, the faster row at 560 of 1000 steps (the trailing
    window adds a little to the exact half), and a row that never gets there gives None."""
    from ecdit.app.compare import steps_to_reach
    from ecdit.app.reports import final_loss
    dense = [{"step": 10 * (i + 1), "flow_loss": 1.0 / (i + 1)} for i in range(100)]
    fast = [{"step": 10 * (i + 1), "flow_loss": 0.5 / (i + 1)} for i in range(100)]
    slow = [{"step": 10 * (i + 1), "flow_loss": 2.0 / (i + 1)} for i in range(100)]
    target = final_loss(dense, key="flow_loss")
    assert steps_to_reach(dense, target) == 1000
    assert steps_to_reach(fast, target) == 560
    assert steps_to_reach(slow, target) is None
    md_row = {**_fake_row("ec", 0.3, 0.5), "steps_to_dense_final": [560, None]}
    from ecdit.app.compare import seeds_markdown
    assert "| 560 / never |" in seeds_markdown([{**md_row, "metrics": {m: {"mean": 0.1, "std": 0.0} for m in
                                                                       ("val_loss", "overall", "single_object",
                                                                        "two_objects", "counting", "colours",
                                                                        "position", "colour_attribution")}}],
                                               [0, 1], 10)


def test_seed_summary_refuses_runs_with_different_rows():
    from ecdit.app.compare import summarize_seeds
    with pytest.raises(ValueError, match="^runs: every seed"):
        summarize_seeds([[_fake_row("dense", 0.3, 0.5)], [_fake_row("ec", 0.3, 0.5)]])
    with pytest.raises(ValueError, match="^runs:"):
        summarize_seeds([])


def test_compare_over_two_seeds_writes_each_seeds_table_and_the_summary(tmp_path):
    from ecdit.app.compare import run_compare_seeds
    r = run_compare_seeds(str(tmp_path), seeds=2, steps=2, per_category=1, sample_steps=2, rows=("dense", "tc"),
                          model_changes=_small_model(), progress=False)
    assert [len(run) for run in r["runs"]] == [2, 2]
    assert r["runs"][0][0]["val_loss"] != r["runs"][1][0]["val_loss"]       # two seeds, two data streams
    for s in (0, 1):
        assert (tmp_path / f"seed{s}" / "compare.md").exists()
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["summary"][1]["paired"]["val_loss"]["n"] == 2
    assert "2 seeds (0, 1)" in (tmp_path / "compare.md").read_text()


def test_compare_seeds_reads_finished_seeds_and_reruns_only_what_changed(tmp_path, monkeypatch):
    """A seed folder with a finished comparison of the same settings is read, not trained again
    (seeds run side by side as separate processes, or an interrupted run, are summarised); another
    setting, or an unfinished folder (no settings.json), trains again."""
    import ecdit.app.compare as C
    kw = dict(steps=2, per_category=1, sample_steps=2, rows=("dense", "tc"), model_changes=_small_model(),
              progress=False)
    C.run_compare(str(tmp_path / "seed1"), seed=1, **kw)                  # seed 1 ran on its own
    calls = []
    real = C.run_compare
    monkeypatch.setattr(C, "run_compare", lambda out, **k: calls.append((out, k["seed"])) or real(out, **k))
    first = C.run_compare_seeds(str(tmp_path), seeds=2, **kw)
    assert [seed for _, seed in calls] == [0]                              # only seed 0 was trained
    calls.clear()
    again = C.run_compare_seeds(str(tmp_path), seeds=2, **kw)
    assert calls == [] and json.dumps(again["summary"]) == json.dumps(first["summary"])   # NaN-safe
    C.run_compare_seeds(str(tmp_path), seeds=2, **{**kw, "sample_steps": 3})
    assert [seed for _, seed in calls] == [0, 1]                           # another setting: both again
    calls.clear()
    os.remove(tmp_path / "seed0" / C.SETTINGS)                             # as if seed 0 was cut off
    C.run_compare_seeds(str(tmp_path), seeds=2, **{**kw, "sample_steps": 3})
    assert [seed for _, seed in calls] == [0]
