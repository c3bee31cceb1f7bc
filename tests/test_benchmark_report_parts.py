"""The parts of the benchmark report other than the targets, on hand-made inputs: the markdown
table helper, the variant names (one vocabulary with the rest of ecdit) and the reading of older
--json dumps, and the numbers derived from samples. No timing and no JAX."""
import json

import pytest

from ecdit.benchmarks import derived, markdown, plans, sweep
from ecdit.benchmarks import workloads as W


def test_table_helper_writes_header_separator_and_rows():
    assert markdown.table(["a", "b"], [[1, "x"], [2.5, "y"]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"


def test_table_helper_writes_an_empty_cell_as_one_space():
    assert markdown.table(["", ""], [["k", ""]]) == "| | |\n|---|---|\n| k | |"


def test_layer_kinds_are_named_as_the_ffn_kinds_of_the_configuration():
    from ecdit.core.config import FFN_KINDS
    assert W.LAYER_KINDS == ("expert_choice", "expert_choice_onehot", "token_choice", "dense")
    # DiffMoE's layer has its own section (I: dynamic capacity against the static form)
    assert set(W.LAYER_KINDS) - {W.EXPERT_CHOICE_ONEHOT} == set(FFN_KINDS) - {"diffmoe"}
    assert set(W.BLOCK_KINDS) <= set(FFN_KINDS) and set(W.LAYER_NAMES) == set(W.LAYER_KINDS)


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_every_plan_measures_only_named_layer_kinds(name):
    plan = plans.make_plan(name)
    assert {k for k, _ in plans.GRID_VARIANTS} <= set(W.LAYER_KINDS)
    assert {k for k, _ in plan.memory_kinds} <= set(W.LAYER_KINDS)


def test_older_dumps_are_read_with_todays_variant_names(tmp_path):
    old = {"info": {"load_average_start": [1, 2, 3]},
           "grid": [{"samples": {"ec:fwd": [1.0], "onehot:fwd": [2.0], "tc:fwd": [3.0], "dense:fwd": [4.0]}}],
           "sweep": [{"cases": {"8": {}, "16": {}}, "samples": {"ec16:jit": [1.0], "dense:jit": [1.0]}}],
           "profile": [{"median": {"whole EC layer (jit)": 1.0}}],
           "model": {"median": {"sample:expert_choice": 1.0}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    r = sweep.load_results(path)
    assert list(r["grid"][0]["samples"]) == ["expert_choice:fwd", "expert_choice_onehot:fwd", "token_choice:fwd",
                                             "dense:fwd"]
    assert list(r["sweep"][0]["samples"]) == ["expert_choice[E=16]:jit", "dense:jit"]
    assert list(r["sweep"][0]["cases"]) == [8, 16]
    assert r["profile"][0]["median"] == {"whole EC layer (jit)": 1.0}
    assert r["model"]["median"] == {"sample:expert_choice": 1.0}
    assert r["info"]["load_average_start"] == (1, 2, 3)
    assert sweep.upgrade_names(r) == r                                  # today's names stay as they are


def test_dump_and_load_round_trip_creates_the_folder(tmp_path):
    results = {"info": {}, "sweep": [{"cases": {8: {"G": 1}}}], "x": 1.5}
    path = tmp_path / "new" / "raw.json"
    sweep.dump_results(results, path)
    assert sweep.load_results(path) == results


def _sweep_cell(times: dict, cases=(8, 16, 64)):
    return {"S": 1024, "D": 256, "fc": 2.0, "cases": {e: {"G": 1, "C": 2048 // e} for e in cases},
            "samples": {k: [t] * 3 for k, t in times.items()}}


def test_flatness_is_time_at_E_over_time_at_8_per_mode():
    at = plans.expert_choice_at
    times = {f"{at(e)}:{m}": t * (1.0 if m == "fwd" else 2.0)
             for e, t in ((8, 1.0), (16, 1.2), (64, 0.95)) for m in ("fwd", "jit")}
    (row,) = derived.flatness({"sweep": [_sweep_cell(times)]})
    assert row.label == "S=1024 D=256 fc=2"
    assert row.ratios_fwd == pytest.approx({16: 1.2, 64: 0.95}) and row.ratios_jit == pytest.approx({16: 1.2, 64: 0.95})
    assert row.rows == {16: 128, 64: 32}
    assert row.worst("fwd") == (pytest.approx(0.2), 16)


def test_flatness_needs_E_8_in_the_row():
    at = plans.expert_choice_at
    times = {f"{at(e)}:{m}": 1.0 for e in (16, 64) for m in ("fwd", "jit")}
    assert derived.flatness({"sweep": [_sweep_cell(times, cases=(16, 64))]}) == []


def test_memory_scaling_fits_the_growth_with_S():
    def row(S, ec, onehot):
        return {"case": {"S": S, "D": 16, "G": 1, "E": 8, "C": S // 4},
                "bytes": {"expert_choice:fwd": {"working": ec}, "expert_choice_onehot:fwd": {"working": onehot}}}
    (fit,) = derived.memory_scaling({"memory": {"vs_S": [row(64, 4096, 4096), row(256, 16384, 65536)]}})
    assert fit.D == 16 and fit.slope == pytest.approx(1.0) and fit.onehot_slope == pytest.approx(2.0)
    assert fit.per_ECd_min == fit.per_ECd_max == pytest.approx(4096 / (4 * 8 * 16 * 16))


def test_onehot_slowdown_bound_is_one_plus_S_over_4D():
    assert derived.onehot_slowdown_bound(4096, 1024) == 2.0
    assert derived.onehot_slowdown_bound(4096, 512) == 3.0
