"""Training never dies silently (ecdit/systems/train.py): the first non-finite loss or gradient
norm stops the run with TrainingDiverged naming the step and the quantity, the last good
checkpoint is left as it was, the metrics log stays strict JSON; the CLI prints one line and exits
3. A time-limited run's progress bar counts seconds toward its limit.

The divergence is real, not mocked: learning rate 1e4 with no warm-up blows the small test model
up within a few steps."""
import json
import time

import jax
import numpy as np
import pytest

from ecdit.app.cli import EXIT_DIVERGED, main
from ecdit.core.errors import TrainingDiverged
from ecdit.systems import checkpoint as C
from ecdit.systems import train as T
from tests.helpers import small_config, small_train
from tests.test_cli import SMALL

CFG = small_config()
DIVERGING = small_train(learning_rate=1e4, warmup_steps=0, ema_decay=0.0)


def strict_records(path):
    """Every line of a metrics log, parsed as strict JSON (NaN / Infinity tokens are an error)."""
    def refuse(token):
        raise ValueError(f"{path}: non-JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in open(path)]


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    run = tmp_path_factory.mktemp("diverged")
    with pytest.raises(TrainingDiverged) as caught:
        T.train(CFG, DIVERGING, 40, str(run), checkpoint_every=1, log_every=10, progress=False)
    return run, caught.value


def test_a_diverging_run_stops_at_its_first_non_finite_step_naming_step_and_quantity(diverged):
    run, err = diverged
    assert err.quantity in T.WATCHED and 1 <= err.step < 40
    assert str(err).startswith(f"train: {err.quantity} is ") and f"at step {err.step} " in str(err)
    assert "\n" not in str(err)
    # the step before is the last good one: its checkpoint is on disk and one more step from it is
    # non-finite, so the reported step really is the first bad one
    assert err.checkpoint_step == err.step - 1 >= 1
    state, _, _, meta = C.load_train_state(str(run))
    assert meta["step"] == err.checkpoint_step
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state["params"]))
    batch = T.make_batch(DIVERGING.seed, err.checkpoint_step, CFG, DIVERGING)
    _, metrics = T.run_step(state, batch, CFG, DIVERGING)
    assert not np.isfinite(float(metrics[err.quantity]))
    assert str(run / C.DIRNAME) in str(err) and f"step {err.checkpoint_step}" in str(err)


def test_no_non_finite_array_is_ever_written_and_the_log_stays_strict_json(diverged):
    run, err = diverged
    steps = sorted(int(p.name) for p in (run / C.DIRNAME).iterdir() if p.name.isdigit())
    assert steps and max(steps) == err.checkpoint_step             # nothing saved past the last good step
    for step in steps:
        state, _, _, _ = C.load_train_state(str(run / C.DIRNAME / str(step)))
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))
    records = strict_records(run / "metrics.jsonl")
    assert records[-1]["step"] == err.step and records[-1]["diverged"] == err.quantity
    assert records[-1][err.quantity] is None                       # the non-finite value, as JSON null
    assert all("diverged" not in r for r in records[:-1])


def test_a_diverging_run_without_a_run_folder_says_no_checkpoint_was_written():
    with pytest.raises(TrainingDiverged, match="no checkpoint was written") as caught:
        T.train(CFG, DIVERGING, 40, None, log_every=10, progress=False)
    assert caught.value.checkpoint_step is None


def test_the_cli_prints_one_line_and_exits_3_on_divergence(tmp_path, capsys):
    code = main(["train", "--steps", "40", "--out", str(tmp_path), "--quiet", "--checkpoint-every", "1", *SMALL,
                 "--train-set", "learning_rate=10000", "--train-set", "warmup_steps=0"])   # after SMALL's: these win
    err = capsys.readouterr().err.strip()
    assert code == EXIT_DIVERGED == 3
    assert err.startswith("ecdit: error: train: ") and "training diverged" in err and len(err.splitlines()) == 1
    strict_records(tmp_path / "metrics.jsonl")


def test_json_lines_turn_non_finite_values_into_null():
    line = T._json_line({"loss": float("nan"), "aux": [1.0, float("inf")], "step": 3, "mesh": "1 device"})
    assert json.loads(line) == {"loss": None, "aux": [1.0, None], "step": 3, "mesh": "1 device"}


def test_a_time_limited_runs_bar_counts_seconds_toward_the_limit_and_stops_there(capsys):
    bar = T._progress_bar(20000, 0, 0.5, "train", disable=False)
    assert (bar.total, bar.unit) == (30, "s") and "time limit 0.5 min" in bar.desc
    T._advance(bar, 0.5, time.monotonic() - 12.0)
    assert 12 <= bar.n < 13
    T._advance(bar, 0.5, time.monotonic() - 1000.0)                # never past the limit
    assert bar.n == 30
    bar.close()
    steps = T._progress_bar(200, 50, None, "train", disable=False)
    T._advance(steps, None, time.monotonic())
    assert (steps.total, steps.n, steps.unit) == (200, 51, "step")
    steps.close()


def test_a_time_limited_run_shows_its_limit_and_seconds_on_the_bar(tmp_path, capsys):
    T.train(CFG, small_train(), 3, None, minutes=10, log_every=1, progress=True, desc="train test")
    err = capsys.readouterr().err
    assert "train test (time limit 10 min)" in err and "/600 s" in err and "step=3/3" in err
    assert "/3 [" not in err                                      # no step total on a time-limited bar


def test_a_time_limit_reached_on_a_checkpoint_step_ends_cleanly_with_that_step_saved(tmp_path, monkeypatch):
    """The 2026-12-06 demo stopped at its time limit on step 9,600, a multiple of the checkpoint
    interval, and the final save of the same step raised: the run must end normally instead."""
    calls = []

    def past_after_two_steps(deadline, multi):
        calls.append(1)
        return len(calls) >= 2                                    # the limit falls right after step 2's save
    monkeypatch.setattr(T, "_past", past_after_two_steps)
    _, history = T.train(CFG, small_train(), 10, str(tmp_path), minutes=10, checkpoint_every=2, log_every=1,
                         progress=False)
    assert [r["step"] for r in history] == [1, 2]
    assert C.read_meta(C.in_run(str(tmp_path)))["step"] == 2
