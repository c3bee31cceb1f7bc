"""The accelerator command (benchmarks/accelerator.py) stays ready for a device it rarely gets:
the parts a CPU cannot exercise (the vendor table, the sizes chosen for a GPU, the reading of the
equivalence run, the report from a device's results) are checked on hand-made inputs here, and
the whole command runs end to end at smoke sizes in a system test.

Unit tests: no timing, no device; at most one tiny compile (the bfloat16 layer)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ecdit import reference
from ecdit.benchmarks import accelerator as A
from ecdit.benchmarks import accelerator_report as R
from ecdit.benchmarks import devices as D
from ecdit.benchmarks import equivalence as EQ
from ecdit.benchmarks import workloads as W
from ecdit.core.config import preset
from tests.tolerances import DRAWN_SCALE, assert_close

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30

# jax.Device.device_kind strings as JAX reports them, and the table entry each must find
KINDS = {
    "NVIDIA H100 80GB HBM3": "H100 SXM", "NVIDIA H100 PCIe": "H100 PCIe", "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM", "NVIDIA H200 NVL": "H200 NVL", "NVIDIA A100-SXM4-80GB": "A100 SXM 80GB",
    "NVIDIA A100-SXM4-40GB": "A100 SXM 40GB", "NVIDIA A100-PCIE-40GB": "A100 PCIe 40GB",
    "NVIDIA A100 80GB PCIe": "A100 PCIe 80GB", "NVIDIA L4": "L4", "TPU v4": "TPU v4", "TPU v5 lite": "TPU v5e",
    "TPU v5e": "TPU v5e", "TPU v5": "TPU v5p", "TPU v5p": "TPU v5p", "TPU v6 lite": "TPU v6e",
    # not in the table: an H100-class GPU with other memory, an Ada card, an older GPU, the CPU
    "NVIDIA GH200 480GB": None, "NVIDIA L40S": None, "Tesla V100-SXM2-16GB": None, "cpu": None,
}


# ---------------------------------------------------------------------------------------------
# The vendor table
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, name", KINDS.items())
def test_the_vendor_table_finds_each_device_by_the_name_jax_gives_it(kind, name):
    found = D.lookup(kind)
    assert (found.name if found else None) == name


def test_every_vendor_figure_cites_its_page_and_dense_rates_are_ordered():
    for _, n in D.TABLE:
        assert "https://" in n.source, n.name
        assert n.bf16 > 0 and n.memory_gb > 0 and n.bandwidth_gbs > 0, n.name
        if n.tpu:
            assert n.tf32 is None and n.fp32 is None, n.name                # TPUs print bf16 only
        else:
            assert n.bf16 == pytest.approx(2 * n.tf32, rel=0.01) and n.fp32 < n.tf32, n.name


def test_the_nominal_figure_follows_the_dtype_and_precision_that_ran():
    h100, v5e = D.lookup("NVIDIA H100 80GB HBM3"), D.lookup("TPU v5 lite")
    assert h100.peak_for("bfloat16", "default")[0] == 989.5
    assert h100.peak_for("float32", "default") == (494.5, "TF32 tensor (JAX's default float32 matmul on Ampere and later)")
    assert h100.peak_for("float32", "highest")[0] == 67.0
    assert v5e.peak_for("float32", "default")[0] == 197.0                  # bf16 passes on TPU
    assert v5e.peak_for("float32", "highest")[0] is None


def test_the_report_file_is_named_after_the_device():
    assert D.slug("NVIDIA H100 80GB HBM3", "gpu") == "h100-sxm"
    assert D.slug("TPU v5 lite", "tpu") == "tpu-v5e"
    assert D.slug("NVIDIA GH200 480GB", "gpu") == "nvidia-gh200-480gb"
    assert D.slug("cpu", "cpu") == "cpu"


# ---------------------------------------------------------------------------------------------
# Sizes chosen for a device
# ---------------------------------------------------------------------------------------------

def test_the_sampler_batch_fills_a_gpu_and_shrinks_to_the_memory():
    assert A.choose_sampler_batch(None) == 32                    # 2 x 32 x 256 tokens = 16,384 per forward
    assert A.choose_sampler_batch(80 * GIB) == 32                # H100: both XL models and a full batch
    assert A.choose_sampler_batch(48e9) == 16                    # 25.5 GB of weights leave room for 16
    assert A.choose_sampler_batch(16e9) is None                  # the XL preset's 5.4B parameters alone do not fit


def test_the_train_step_takes_xl_8e_at_the_largest_batch_that_fits():
    est = [A.train_memory_estimate("XL-8E", b) for b in (8, 16, 32, 64)]
    assert est == sorted(est) and est[0] > 4 * 1.9e9 * 4          # params, 2 optimiser slots, gradients
    assert A.choose_train_candidates(80 * GIB)[0] == ("XL-8E", 64)
    assert A.choose_train_candidates(141e9)[0] == ("XL-8E", 64)
    assert A.choose_train_candidates(24e9)[0] == ("small", 64)   # an L4: XL-8E's state alone is 31 GB
    assert A.choose_train_candidates(None) == list(A.TRAIN_CANDIDATES)
    for size, batch in A.TRAIN_CANDIDATES:                        # the kept tokens fill whole training groups
        cfg, tcfg = W.StepCase(size, batch).configs()
        assert batch * tcfg.kept_tokens(cfg.num_tokens) % cfg.train_group_size == 0, (size, batch)


def test_the_device_plan_times_the_papers_shapes():
    plan = A.make_plan("device", 80 * GIB, cores=16, backend="gpu")
    xl = preset("XL")
    assert plan.layer_D == (1152, 2048) and plan.layer_E == (8, 16, 32, 64)
    assert (plan.layer_S, plan.layer_S_train) == (xl.inference_group_size, xl.train_group_size) == (512, 1024)
    assert set(plan.layer_dtypes) == {"bfloat16", "float32"}
    assert plan.overhead.size == "XL" and plan.overhead.depth is None     # the preset's full depth
    assert plan.overhead.config("expert_choice").depth == 28
    assert plan.train[0] == ("XL-8E", 64) and plan.equivalence_modules is None
    assert plan.equivalence_workers == 5                            # 16 host cores: 3 for each compiling worker
    assert A.make_plan("device", 16 * GIB, cores=16, backend="tpu").equivalence_workers == 1
    assert A.make_plan("device", 16 * GIB, cores=16, backend="tpu").overhead is None
    for d in plan.layer_D:                                    # every cell is flop-equal to its dense FFN
        for e in plan.layer_E:
            case = W.Case(S=plan.layer_S, D=d, E=e, fc=2.0, G=plan.layer_tokens // plan.layer_S)
            assert case.flop_equal and case.tokens == plan.layer_tokens


def test_no_process_of_a_device_run_passes_the_cpu_only_xla_flag():
    env = A.without_cpu_defaults({"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=",
                                  "PATH": "/bin"})
    assert env == {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "ECDIT_XLA_DEFAULTS": "0", "PATH": "/bin"}


def test_a_later_try_may_name_the_sections_it_runs():
    assert A.SECTIONS == R.SECTIONS == ("equivalence", "peaks", "overhead", "layers", "train")
    with pytest.raises(ValueError, match="sections: unknown"):
        A.run(sections=("layers", "roofline"))                      # refused before anything starts
    with pytest.raises(SystemExit):
        A.main(["--sections", "layers,bogus"])


def test_the_smoke_plan_runs_every_section_at_tiny_sizes():
    plan = A.make_plan("smoke")
    assert plan.fast_compile and plan.equivalence_modules and plan.layer_D == (16,)
    assert "bfloat16" in plan.layer_dtypes and plan.overhead.size == "micro" and plan.train == (("micro", 4),)
    with pytest.raises(ValueError, match="plan"):
        A.make_plan("quick")


# ---------------------------------------------------------------------------------------------
# The equivalence run
# ---------------------------------------------------------------------------------------------

def _test_names(path: Path) -> list[str]:
    return re.findall(r"^def (test_\w+)", path.read_text(), re.M)


def test_the_equivalence_run_covers_every_twin_module():
    assert set(EQ.EQUIVALENCE_TESTS) == set(reference.MODULES)
    words = [w.strip() for w in EQ.SELECTION.split(" or ")]
    for module, files in EQ.EQUIVALENCE_TESTS.items():
        selected = [n for f in files for n in _test_names(ROOT / f) if any(w in n for w in words)]
        assert selected, f"{module}: no test of {files} compares the halves"


def test_workers_share_the_tests_each_once_heaviest_apart():
    tests = [f"tests/test_diffmoe_model.py::test_{i}" for i in range(10)] + ["tests/test_routing.py::test_a",
                                                                          "tests/test_routing.py::test_b"]
    groups = EQ.assign(tests, 4)
    assert len(groups) == 4 and sorted(t for g in groups for t in g) == sorted(tests)
    assert all(3 <= len(g) for g in groups)                     # 21 s each of diffmoe_model: spread, not stacked
    assert all(g == sorted(g, key=tests.index) for g in groups)  # file order kept within a worker
    assert EQ.assign(["tests/test_routing.py::test_a"], 4) == [["tests/test_routing.py::test_a"]]
    assert EQ.module_of_file("tests/test_shape_head.py::test_x[0.5]") == "objective"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_primitives" name="test_softmax_matches_reference_and_sums_to_one" time="1"/>
<testcase classname="tests.test_routing" name="test_gating_matches_reference_exactly_even_with_ties" time="1">
  <failure message="AssertionError: Arrays are not equal&#10;Mismatched elements: 3 / 64">trace</failure></testcase>
<testcase classname="tests.test_routing" name="test_expert_choice_moe_matches_reference" time="1"/>
<testcase classname="tests.test_diffmoe_model" name="test_training_loss_of_a_diffmoe_model_matches_reference[0.0]" time="1"/>
</testsuite></testsuites>"""


def test_the_junit_report_is_read_per_module(tmp_path):
    path = tmp_path / "w.xml"
    path.write_text(JUNIT)
    cases = EQ.read_junit(path)
    assert [c["module"] for c in cases] == ["primitives", "routing", "routing", "diffmoe"]
    out = EQ.summarise(cases, ["primitives", "routing", "diffmoe", "sample"],
                       {"primitives": True, "routing": True, "diffmoe": False, "sample": True})
    assert out["primitives"]["status"] == "passed" and out["primitives"]["passed"] == 1
    assert out["routing"]["status"] == "FAILED" and out["routing"]["failed"] == 1
    assert out["routing"]["failures"][0]["message"] == "AssertionError: Arrays are not equal"
    assert out["diffmoe"]["status"] == "incomplete"                # its worker was stopped: not a pass
    assert out["sample"]["status"] == "not run"


# ---------------------------------------------------------------------------------------------
# The report from a device's results (made up here: nothing measured)
# ---------------------------------------------------------------------------------------------

def _cell(d, e, dtype, t_ec=2e-3):
    infer = W.Case(S=512, D=d, E=e, fc=2.0, G=32, dtype=dtype)
    train = W.Case(S=1024, D=d, E=e, fc=2.0, G=16, dtype=dtype)

    def case(c):
        return {"S": c.S, "D": c.D, "E": c.E, "G": c.G, "C": c.C, "flops": c.flops, "dense_flops": c.dense_flops,
                "dtype": dtype, "label": c.label}
    med = {"expert_choice:jit": t_ec, "dense:jit": 1.6e-3, "expert_choice_onehot:jit": 4e-3,
           "token_choice:jit": 3e-3, "expert_choice:fwdbwd": 3 * t_ec, "dense:fwdbwd": 5e-3}
    return {"D": d, "E": e, "dtype": dtype, "inference": case(infer), "train": case(train), "seconds": 3.0,
            "median": med, "samples": {k: [v, v, v] for k, v in med.items()}}


def fake_results(smoke=False, drop=()):
    plan = A.make_plan("smoke" if smoke else "device", 80 * GIB, cores=16)
    h100 = D.lookup("NVIDIA H100 80GB HBM3")
    mods = {m: {"passed": 3, "failed": 0, "error": 0, "skipped": 0, "status": "passed", "files": list(f), "failures": []}
            for m, f in EQ.EQUIVALENCE_TESTS.items()}
    results = {
        "command": "ecdit bench --accelerator", "date": "2026-12-08 10:00 UTC", "duration_s": 420.0,
        "plan": {**A.dataclasses.asdict(plan)}, "exit_status": 0, "report": "docs/benchmarks-h100-sxm.md",
        "device": {"device_kind": "NVIDIA H100 80GB HBM3", "backend": "gpu", "device_count": 1, "nominal": "H100 SXM",
                   "slug": "h100-sxm", "memory_bytes": 79 * GIB, "jax": "0.11.2", "jaxlib": "0.11.2",
                   "cuda_runtime": "13000", "cuda_driver": "13000", "cudnn": "91000", "matmul_precision": "None",
                   "host": {"cpu": "x86", "cores": 16, "memory_gib": 128, "python": "3.12", "numpy": "2.5"}},
        "equivalence": {"ok": True, "examples": 4, "workers": 4, "selection": EQ.SELECTION, "duration_s": 150.0,
                        "timed_out": False, "modules": mods, "not_selected": [], "command": "python -m pytest ..."},
        "peaks": {"matmul": [
            {"dtype": "bfloat16", "precision": "default", "gflops": 800e3, "per_size": {4096: {"jax": 700e3}, 8192: {"jax": 800e3}},
             "nominal_tflops": 989.5, "nominal_figure": "BF16 tensor"},
            {"dtype": "float32", "precision": "default", "gflops": 400e3, "per_size": {"8192": {"jax": 400e3}},
             "nominal_tflops": 494.5, "nominal_figure": "TF32 tensor"},
            {"dtype": "float32", "precision": "highest", "gflops": 50e3, "per_size": {"8192": {"jax": 50e3}},
             "nominal_tflops": 67.0, "nominal_figure": "FP32"}],
            "bandwidth_gbs": 3000.0, "bandwidth": {"n_floats": 1 << 28, "jax": {"copy": 2900.0, "triad": 3000.0}},
            "nominal": A.dataclasses.asdict(h100)},
        "overhead": {"rows": [{"label": "XL (D=1152, E=32, 256 tokens, batch 32, 8 steps)", "size": "XL", "batch": 32,
                               "steps": 8, "depth": 28, "activated": {"expert_choice": 979e6, "dense": 830e6},
                               "first_call_s": {"expert_choice": 40.0, "dense": 25.0},
                               "samples": {"expert_choice": [1.23, 1.25, 1.24], "dense": [1.0, 1.0, 1.0]},
                               "median": {"expert_choice": 1.24, "dense": 1.0}}]},
        "layers": {"cells": [_cell(d, e, dt) for d in (1152, 2048) for e in (8, 16, 32, 64)
                             for dt in ("bfloat16", "float32")], "stopped_at": None},
        "train": {"preset": "XL-8E", "batch": 64, "kept_tokens": 128, "optimizer": "rmsprop", "depth": 28, "width": 1152,
                  "experts": 8, "flops": 60e12, "memory": {"argument": 30 * GIB, "output": 30 * GIB, "alias": 29 * GIB,
                                                           "temp": 12 * GIB},
                  "compile_s": 80.0, "samples": [0.3] * 5, "median": 0.3, "images_per_s": 213.3, "gflops": 200e3,
                  "mfu_measured": 0.5, "mfu_nominal": 0.404, "tried": []},
        "sections": {n: {"status": "done", "seconds": 60.0} for n in R.SECTIONS},
    }
    for name in drop:
        results.pop(name)
        results["sections"][name] = {"status": "skipped", "note": "time budget: 40 s left, 100 s needed", "seconds": 0.0}
    return results


def test_the_report_has_every_section_with_the_headline_figures():
    text = R.render(fake_results())
    for heading in R.HEADINGS.values():
        assert heading in text, heading
    assert "H100 SXM" in text and "https://www.nvidia.com/en-us/data-center/h100/" in text
    assert "| routing | test_routing.py | 3 | 0 | 0 | 0 | **passed** |" in text
    assert "+24.0 %" in text and "+18.0 %" in text                 # measured and theoretical overhead
    assert "| 1152 | 8 | 128 | 2.00 | 1.60 | 4.00 | 3.00 | 1.25x | 2.00x | 1.50x |" in text
    assert "50 %" in text                                          # the train step's MFU


def test_the_summary_fits_one_screen_and_names_every_figure():
    lines = R.summary(fake_results()).splitlines()
    assert len(lines) <= 20 and all(len(line) <= 240 for line in lines)
    text = "\n".join(lines)
    assert "device: 1 x NVIDIA H100 80GB HBM3, memory 79.00 GiB; jax 0.11.2, jaxlib 0.11.2; cuda runtime 13000" in text
    assert "equivalence: PASSED -- 10/10 modules" in text
    assert "bfloat16 800.0 = 81% of 989.5" in text and "memory bandwidth: 3000 GB/s = 90% of 3350" in text
    assert "EC/dense 1.25x fwd, 1.20x fwd+bwd" in text
    assert "measured +24.0 % against +18.0 % theoretical" in text
    assert "train step XL-8E batch 64" in text and "MFU 50 %" in text


def test_a_section_that_did_not_run_says_why_and_the_summary_lists_it():
    results = fake_results(drop=("train", "overhead"))
    text = R.render(results)
    assert text.count("Not measured: time budget: 40 s left, 100 s needed.") == 2
    assert "train: SKIPPED (time budget" in R.summary(results)


def test_a_failed_equivalence_check_is_named_in_the_summary():
    results = fake_results()
    routing = results["equivalence"]["modules"]["routing"]
    routing.update(status="FAILED", failed=1, failures=[{"test": "test_gating", "message": "ties broken differently"}])
    results["equivalence"]["ok"] = False
    assert "NOT PROVEN -- 9/10 modules" in R.summary(results) and "routing (FAILED: 1 failing)" in R.summary(results)
    assert "`routing`: `test_gating`: ties broken differently" in R.render(results)


def test_a_smoke_report_says_it_measures_nothing():
    results = fake_results(smoke=True)
    assert "smoke rehearsal" in R.render(results) and "measures nothing" in R.render(results)
    assert "SMOKE REHEARSAL" in R.summary(results).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# bfloat16: the shared argument checks accept it, and still refuse its NaN
# ---------------------------------------------------------------------------------------------

def _bf16_layer_args(nan=False):
    import ml_dtypes
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 8)).astype(ml_dtypes.bfloat16)
    if nan:
        x[1, 3, 2] = np.nan
    return (x, rng.standard_normal((8, 4)).astype(ml_dtypes.bfloat16),
            (rng.standard_normal((4, 8, 32)) / 3).astype(ml_dtypes.bfloat16),
            (rng.standard_normal((4, 32, 8)) / 6).astype(ml_dtypes.bfloat16), 2.0)


@pytest.mark.parametrize("kind", ["expert_choice", "expert_choice_onehot", "token_choice"])
def test_the_layer_contracts_accept_bfloat16_and_refuse_its_nan(kind):
    check = W.check_function(kind)
    extra = (2,) if kind == "token_choice" else ()
    check(*_bf16_layer_args(), *extra)
    with pytest.raises(ValueError, match="^x: contains NaN or infinity"):
        check(*_bf16_layer_args(nan=True), *extra)


# ---------------------------------------------------------------------------------------------
# End to end (system): the command at smoke sizes, and parameters drawn on the device
# ---------------------------------------------------------------------------------------------

@pytest.mark.system
def test_the_smoke_run_writes_a_report_with_every_section(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ecdit", "bench", "--accelerator", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, js = tmp_path / "benchmarks-cpu-smoke.md", tmp_path / "benchmarks-cpu-smoke.json"
    text = md.read_text()
    for heading in R.HEADINGS.values():
        assert heading in text, heading
    assert "Not measured" not in text and "Not run" not in text
    results = json.loads(js.read_text())
    assert {n: s["status"] for n, s in results["sections"].items()} == {n: "done" for n in R.SECTIONS}
    assert results["equivalence"]["ok"] and results["exit_status"] == 0
    assert {c["dtype"] for c in results["layers"]["cells"]} == {"bfloat16", "float32"}
    assert "equivalence: PASSED" in proc.stdout and "SMOKE REHEARSAL" in proc.stdout
    assert str(md) in proc.stdout


@pytest.mark.system
def test_the_twin_runs_the_expert_choice_layer_in_bfloat16():
    from ecdit.accelerated.routing import expert_choice_moe
    args = [jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in _bf16_layer_args()]
    out, routing = expert_choice_moe(*args)
    assert out.dtype == jnp.bfloat16 and out.shape == args[0].shape and bool(jnp.all(jnp.isfinite(out)))
    index = np.asarray(routing["index"])                       # (G, E, C): C = 16 * 2 / 4 = 8 distinct tokens each
    assert index.shape == (2, 4, 8)
    assert all(len(set(index[g, e])) == 8 for g in range(2) for e in range(4))


@pytest.mark.system
def test_device_params_have_init_models_tree_shapes_and_scales():
    import jax
    from ecdit.core.params import init_model
    cfg = W.model_config("micro", "expert_choice")
    fast, real = W.device_params(cfg), init_model(cfg, 0)
    assert jax.tree.structure(fast) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(real)):
        assert a.shape == np.shape(b) and a.dtype == np.asarray(b).dtype
        if np.size(b) >= 512 and np.std(b) > 0:                  # drawn: the same scale, other values
            assert_close(float(np.std(a)), float(np.std(b)), tol=DRAWN_SCALE)
    zero_matrices = [a for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(real)) if np.ndim(b) >= 2 and not np.any(b)]
    assert zero_matrices and all(float(np.std(a)) > 0 for a in zero_matrices)     # AdaLN-Zero filled
