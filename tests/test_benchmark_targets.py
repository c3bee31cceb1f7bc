"""Each target of the benchmark report, on hand-made measurements whose answer is known: met,
missed, and the edge at the threshold. No timing: the targets are pure functions of
the measured numbers (benchmarks/targets.py)."""
from ecdit.benchmarks import targets as T
from ecdit.benchmarks.derived import Flatness, MemoryFit


# ---------------------------------------------------------------------------------------------
# Forward and forward+backward against the FLOP-equal dense FFN
# ---------------------------------------------------------------------------------------------

def test_forward_target_is_met_when_every_cell_is_at_most_1_05_including_the_edge():
    t = T.forward_within_dense([(1.0, "S=1024 D=256"), (1.05, "S=4096 D=256")])
    assert t.met
    assert "worst 1.05x (S=4096 D=256)" in t.measured and "2/2 cells within 1.05x" in t.measured


def test_forward_target_is_missed_when_one_cell_is_above_1_05():
    t = T.forward_within_dense([(0.9, "a"), (1.06, "b"), (1.0, "c")])
    assert not t.met
    assert "worst 1.06x (b)" in t.measured and "median 1.00x" in t.measured and "2/3 cells" in t.measured


def test_forward_target_judges_the_compiled_bodies_separately():
    t = T.forward_within_dense([(1.0, "a")], jit_ratios=[(1.2, "a")])
    assert t.met and t.met_jit is False
    assert "Compiled bodies only (no argument check): worst 1.20x, median 1.20x, 0/1 within" in t.measured
    assert T.forward_within_dense([(1.2, "a")], jit_ratios=[(1.05, "a")]).met_jit is True


def test_forward_target_without_compiled_bodies_has_no_separate_verdict():
    assert T.forward_within_dense([(1.0, "a")]).met_jit is None


def test_forward_backward_target_edge_at_1_10_is_met_and_just_above_is_missed():
    assert T.forward_backward_within_dense([(1.10, "a")]).met
    t = T.forward_backward_within_dense([(1.10, "a"), (1.1001, "b")])
    assert not t.met and "1/2 cells within 1.10x" in t.measured and t.met_jit is None


def test_targets_with_nothing_measured_are_left_out():
    assert T.forward_within_dense([]) is None
    assert T.forward_backward_within_dense([]) is None
    assert T.gather_beats_onehot([]) is None
    assert T.memory_grows_as_ECd([]) is None
    assert T.share_of_matmul_peak(100.0, [], []) is None
    assert T.flat_across_experts([]) is None


# ---------------------------------------------------------------------------------------------
# Gather/scatter against the one-hot Algorithm 1
# ---------------------------------------------------------------------------------------------

def test_onehot_target_edge_at_3x_is_met_and_below_is_missed():
    assert T.gather_beats_onehot([(3.0, "S=4096 D=256 E=8 fc=2 G=2", 4096, 256)]).met
    t = T.gather_beats_onehot([(3.0, "S=4096 D=256 E=8 fc=2 G=2", 4096, 256),
                               (2.99, "S=4096 D=512 E=8 fc=2 G=2", 4096, 512)])
    assert not t.met
    assert t.measured.startswith("3.00x at D=256; 2.99x at D=512 (1/2 met; worst 2.99x)")


def test_onehot_target_explains_cells_where_3x_is_out_of_reach_by_arithmetic():
    """At S = 4096, D = 1024 the one-hot form does only 1 + S/(4D) = 2 times the FLOPs."""
    t = T.gather_beats_onehot([(1.9, "S=4096 D=1024 E=8 fc=2 G=1", 4096, 1024)])
    assert not t.met
    assert "2.00x at D=1024" in t.measured and "below the 3x target by arithmetic" in t.measured


def test_onehot_target_gives_no_arithmetic_excuse_where_the_bound_reaches_3x():
    """At D = 512 the bound is exactly 3: reachable, so no explanation is added."""
    t = T.gather_beats_onehot([(2.5, "S=4096 D=512 E=8 fc=2 G=2", 4096, 512)])
    assert "arithmetic" not in t.measured


# ---------------------------------------------------------------------------------------------
# Memory ~ E C d
# ---------------------------------------------------------------------------------------------

def test_memory_target_is_met_when_memory_grows_linearly_with_S():
    t = T.memory_grows_as_ECd([MemoryFit(D=256, slope=1.0, onehot_slope=2.0, per_ECd_min=1.0, per_ECd_max=2.0)])
    assert t.met
    assert t.measured == "D=256: working memory ~ S^1.00 (one-hot ~ S^2.00), 1.0-2.0 x G*E*C*d*4 bytes"


def test_memory_target_edge_at_slope_1_15_is_met_and_quadratic_growth_is_missed():
    assert T.memory_grows_as_ECd([MemoryFit(256, 1.15, 2.0, 1.0, 1.0)]).met
    assert not T.memory_grows_as_ECd([MemoryFit(256, 1.16, 2.0, 1.0, 1.0)]).met


def test_memory_target_must_hold_at_every_D():
    t = T.memory_grows_as_ECd([MemoryFit(256, 1.0, 2.0, 1.0, 1.0), MemoryFit(1024, 2.0, 2.0, 1.0, 1.0)])
    assert not t.met and "D=256" in t.measured and "D=1024" in t.measured


# ---------------------------------------------------------------------------------------------
# Share of the matmul peak
# ---------------------------------------------------------------------------------------------

def test_peak_target_edge_at_80_percent_is_met_and_below_is_missed():
    t = T.share_of_matmul_peak(100.0, [(0.80, "a"), (0.9, "b")], [(0.85, "a")])
    assert t.met and t.met_jit
    t = T.share_of_matmul_peak(100.0, [(0.79, "a"), (0.9, "b")], [(0.85, "a")])
    assert not t.met and t.met_jit
    assert t.measured == ("peak 100 GFLOP/s; public API: worst 79 % (a), median 84 %; "
                          "compiled body: worst 85 %, median 85 %")


def test_peak_target_judges_the_compiled_bodies_separately():
    t = T.share_of_matmul_peak(50.0, [(0.9, "a")], [(0.5, "a")])
    assert t.met and t.met_jit is False


# ---------------------------------------------------------------------------------------------
# Flat against E
# ---------------------------------------------------------------------------------------------

def _row(fwd: dict, jit: dict | None = None, rows: dict | None = None, label="S=1024 D=256 fc=2"):
    jit = fwd if jit is None else jit
    return Flatness(label=label, rows=rows or {e: 2048 // e * 8 for e in fwd}, ratios_fwd=fwd, ratios_jit=jit)


def test_flat_target_is_met_within_10_percent_including_both_edges():
    t = T.flat_across_experts([_row({16: 1.1, 32: 0.9, 64: 1.0})])
    assert t.met and t.met_jit


def test_flat_target_is_missed_when_one_E_is_more_than_10_percent_off():
    t = T.flat_across_experts([_row({16: 1.05, 64: 1.25}, label="S=1024 D=256 fc=1"),
                               _row({16: 1.0, 64: 1.0}, label="S=1024 D=256 fc=2")])
    assert not t.met and not t.met_jit
    assert "public API: worst +25 % (E=64 vs 8, S=1024 D=256 fc=1)" in t.measured


def test_flat_target_judges_the_compiled_bodies_separately():
    t = T.flat_across_experts([_row({16: 1.3}, jit={16: 1.02})])
    assert not t.met and t.met_jit


def test_flat_target_summarises_experts_with_many_and_few_rows_apart():
    t = T.flat_across_experts([_row({16: 1.0, 64: 1.0}, jit={16: 1.05, 64: 1.5}, rows={16: 2048, 64: 512})])
    assert f"gets >= {T.ROWS_MANY} rows per call (G C): worst 5 % (1 cells)" in t.measured
    assert f"gets < {T.ROWS_MANY} rows per call (G C): worst 50 % (1 cells)" in t.measured


# ---------------------------------------------------------------------------------------------
# evaluate: the numbers picked out of a sweep's results
# ---------------------------------------------------------------------------------------------

def _case(S, D, E=8, G=1):
    C = S * 2 // E
    return {"S": S, "D": D, "E": E, "G": G, "C": C, "F": 4 * D, "dtype": "float32",
            "flops": 4.0 * G * E * C * D * 4 * D, "dense_flops": 4.0 * G * E * C * D * 4 * D,
            "label": f"S={S} D={D} E={E} fc=2 G={G}"}


def _cell(case, times: dict):
    """A cell of three rounds with the same time in each."""
    return {"case": case, "samples": {k: [t] * 3 for k, t in times.items()}, "median": dict(times)}


def _results(backend="cpu"):
    small = _cell(_case(256, 512), {"expert_choice:fwd": 9.0, "dense:fwd": 1.0})     # S < 1024: not judged
    big = _cell(_case(4096, 512), {"expert_choice:fwd": 1.0, "dense:fwd": 1.0, "expert_choice:jit": 0.5,
                                   "dense:jit": 0.5, "expert_choice_onehot:fwd": 4.0})
    return {"info": {"backend": backend}, "grid": [small, big], "sweep": [], "memory": {},
            "peak_start": {"peak": 1.0}, "peak_end": {"peak": 2.0}}


def test_evaluate_judges_only_cells_with_S_of_at_least_1024():
    fwd = T.evaluate(_results())[0]
    assert fwd.target.startswith("Forward EC layer") and fwd.met and "1/1 cells" in fwd.measured


def test_evaluate_lists_the_targets_measured_in_the_order_of_the_report():
    names = [t.target.split()[0] for t in T.evaluate(_results())]
    assert names == ["Forward", "Gather/scatter", "EC"]            # no fwd+bwd, memory or E sweep here
    assert T.evaluate(_results())[1].met                             # one-hot 4x slower at S = 4096


def test_evaluate_judges_the_matmul_peak_on_cpu_only():
    assert any("matmul peak" in t.target for t in T.evaluate(_results("cpu")))
    assert not any("matmul peak" in t.target for t in T.evaluate(_results("gpu")))


def test_the_target_functions_are_pure_python_over_measured_numbers():
    """targets.py and derived.py compute on measured numbers only: they import no JAX (the package
    around them does, to measure)."""
    import ast
    from pathlib import Path
    for name in ("targets.py", "derived.py"):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "benchmarks" / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] in ("jax", "jaxlib") for m in imported), name



# ---------------------------------------------------------------------------------------------
# DiffMoE: the dynamic layer's time follows its slots
# ---------------------------------------------------------------------------------------------

def test_dynamic_target_is_met_when_every_halving_of_the_slots_at_least_nearly_halves_the_time():
    met = T.dynamic_follows_tokens([(0.52, "256 vs 512"), (0.60, "512 vs 1024")])
    assert met.met and "2/2 halvings" in met.measured
    missed = T.dynamic_follows_tokens([(0.52, "256 vs 512"), (0.95, "512 vs 1024")])   # a masked layer: ~1
    assert not missed.met and "worst 0.95x (512 vs 1024)" in missed.measured
    assert T.dynamic_follows_tokens([]) is None


def test_dynamic_halvings_pair_each_slot_count_with_its_double_from_the_minimum_up():
    samples = {"dynamic a": [1.0, 1.0], "dynamic b": [2.0, 2.0], "dynamic c": [4.2, 4.2], "dynamic d": [8.0, 8.0],
               "static top-k": [3.0, 3.0]}
    row = {"case": {"label": "toy"}, "samples": samples, "median": {k: v[0] for k, v in samples.items()},
           "slots": {"dynamic a": 128, "dynamic b": 256, "dynamic c": 512, "dynamic d": 1024, "static top-k": 512}}
    halvings = T.dynamic_halvings({"dynamic": [row]})
    assert [label for _, label in halvings] == ["toy: 256 vs 512 slots", "toy: 512 vs 1024 slots"]   # 128 < the minimum
    assert [round(r, 3) for r, _ in halvings] == [round(2.0 / 4.2, 3), round(4.2 / 8.0, 3)]


# ---------------------------------------------------------------------------------------------
# The roofline, the dense baseline, the train step and the inference overhead (performance issue)
# ---------------------------------------------------------------------------------------------

def test_roofline_target_edge_at_1_25_is_met_and_names_the_worst_call_and_its_roof():
    assert T.within_roofline([(1.25, "EC fwd a", "compute"), (1.0, "dense fwd a", "memory")]).met
    t = T.within_roofline([(1.26, "EC fwd b", "memory"), (1.0, "dense fwd b", "compute")])
    assert not t.met
    assert "worst 1.26x (EC fwd b, memory-bound)" in t.measured and "1/2 calls within 1.25x" in t.measured
    assert "1 of 2 bound by memory" in t.measured
    assert T.within_roofline([]) is None


def test_dense_baseline_target_needs_every_cell_at_90_percent_of_its_forward_rate():
    assert T.dense_baseline_fast([(0.90, "a"), (1.2, "b")]).met
    t = T.dense_baseline_fast([(0.89, "a"), (1.0, "b")])
    assert not t.met and "worst 89 % (a)" in t.measured and "1/2 cells" in t.measured
    assert T.dense_baseline_fast([]) is None


def _step_row(size, batch, width, flops, seconds):
    return {"size": size, "batch": batch, "width": width, "flops": flops, "median": seconds, "images": batch,
            "label": f"{size} D={width} batch {batch}"}


def test_train_step_target_reads_the_demo_row_only():
    rows = [(0.49, _step_row("tiny", 16, 64, 1e9, 0.1)), (0.9, _step_row("tiny", 16, 256, 1e9, 0.1)),
            (0.8, _step_row("tiny", 64, 64, 1e9, 0.4))]
    t = T.train_step_uses_the_machine(rows)
    assert not t.met and t.measured.startswith("49 % (160 images/s)") and "best row 90 % (tiny D=256 batch 16)" in t.measured
    assert T.train_step_uses_the_machine([(0.5, _step_row("tiny", 16, 64, 1e9, 0.1))]).met
    assert T.train_step_uses_the_machine([(0.9, _step_row("small", 8, 256, 1e9, 0.1))]) is None


def test_overhead_target_compares_measured_with_theoretical_per_shape():
    rows = [{"label": "tiny (D=64)", "measured": 0.20, "theoretical": 0.17},
            {"label": "XL at depth 2 (D=1152)", "measured": 0.10, "theoretical": 0.12}]
    t = T.overhead_near_theory(rows)
    assert t.met and "tiny: measured +20 %, theoretical +17 %" in t.measured and "worst gap +3 points" in t.measured
    rows[1]["measured"] = 0.16
    assert not T.overhead_near_theory(rows).met
    assert T.overhead_near_theory([]) is None


def test_roofline_bound_is_the_larger_of_compute_and_memory_time():
    from ecdit.benchmarks import roofline as RL
    assert RL.bound_seconds(2e9, 1e9, 100.0, 10.0) == 0.1          # memory: 1 GB at 10 GB/s
    assert RL.bound_seconds(2e10, 1e9, 100.0, 10.0) == 0.2         # compute: 20 GFLOP at 100 GFLOP/s
    assert RL.limit(2e9, 1e9, 100.0, 10.0) == "memory" and RL.limit(2e10, 1e9, 100.0, 10.0) == "compute"


def test_layer_bytes_count_weights_activations_and_the_gradients():
    from ecdit.benchmarks import roofline as RL
    case = {"G": 2, "S": 8, "D": 4, "E": 2, "C": 8, "F": 16, "H": 32}
    weights = 2 * 2 * 4 * 16 + 4 * 2
    ec = weights + 2 * 2 * 8 * 4 + 2 * (2 * 2 * 2 * 8 * 4 + 2 * 2 * 8 * 16)
    assert RL.layer_bytes(case, "expert_choice") == 4 * ec
    assert RL.layer_bytes(case, "expert_choice", "fwdbwd") == 4 * (ec + weights + 2 * 8 * 4)
    dense = 2 * 4 * 32 + 2 * 2 * 8 * 4 + 2 * 2 * 8 * 32
    assert RL.layer_bytes(case, "dense") == 4 * dense
