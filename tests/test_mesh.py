"""The device mesh (ecdit/systems/mesh.py): the --mesh flag, its checks, the sharding rules, and
the sharded train step on 8 simulated devices.

The device count is fixed when JAX starts, so the multi-device step runs in its own Python
(tests/mesh_checks.py, with XLA_FLAGS=--xla_force_host_platform_device_count=8); this process
keeps one device. The flag, the checks (given `num_devices`) and the sharding rules (on an
AbstractMesh of any shape, which needs no devices) are tested here.
"""
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from ecdit.core.params import init_model
from ecdit.systems import mesh as M
from ecdit.systems import train as T
from ecdit.systems.optim import init_state
from tests.helpers import ROOT, simulated_devices_env, small_config, small_train


def abstract_mesh(data, expert):
    return AbstractMesh((data, expert), M.AXES, axis_types=(AxisType.Auto,) * 2)


def raises_mesh_error(fn, *args, match="", **kwargs) -> str:
    """The error of a bad mesh: a ValueError of one line that names the flag."""
    with pytest.raises(ValueError, match=match) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert message.startswith("--mesh: ") and "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# The flag
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, axes", [
    ("data=2,expert=4", {"data": 2, "expert": 4}),
    ("expert=4,data=2", {"data": 2, "expert": 4}),      # written in any order, kept in mesh order
    (" data = 2 , expert=4 ", {"data": 2, "expert": 4}),
    ("data=8", {"data": 8}),
    ("expert=1", {"expert": 1}),
    ("", {}), ("  ", {}), (None, {}),                    # the default: one device
])
def test_parse_mesh_reads_axis_sizes_in_mesh_order(text, axes):
    parsed = M.parse_mesh(text)
    assert parsed == axes and list(parsed) == [a for a in M.AXES if a in axes]


@pytest.mark.parametrize("text, match", [
    ("data=2,model=4", "unknown axis 'model'"),
    ("tensor=2", "unknown axis 'tensor'"),
    ("data=2,data=4", "given twice"),
    ("data=0", "positive integer"),
    ("data=-2", "positive integer"),
    ("data=two", "positive integer"),
    ("data=2.5", "positive integer"),
    ("data", "axis=size"),
    ("data=2,", "axis=size"),
    ("=2", "axis=size"),
    ("data=2;expert=4", "positive integer"),
])
def test_bad_mesh_flags_are_one_line_errors_naming_the_flag(text, match):
    raises_mesh_error(M.parse_mesh, text, match=match)


def test_format_and_describe_spell_the_mesh_as_the_flag_does():
    assert M.format_mesh(M.parse_mesh("expert=4,data=2")) == "data=2,expert=4"
    assert M.describe_mesh(M.parse_mesh("data=2,expert=4")) == "mesh data=2,expert=4 (8 devices)"
    assert M.describe_mesh(M.parse_mesh("data=1")) == "mesh data=1 (1 device)"
    assert M.describe_mesh({}) == "mesh: 1 device"
    assert M.mesh_shape({"expert": 4}) == (1, 4) and M.num_mesh_devices({}) == 1


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------

def test_a_mesh_that_fits_the_model_batch_and_devices_passes():
    cfg, tc = small_config(), small_train()                  # E = 4, B = 8
    for text in ("", "data=2,expert=4", "data=8", "expert=4", "data=2,expert=2"):
        axes = M.parse_mesh(text)
        assert M.check_mesh(axes, cfg, tc, num_devices=8) == axes


def test_a_mesh_may_use_fewer_devices_than_the_machine_has():
    assert M.check_mesh({"data": 2}, small_config(), small_train(), num_devices=8) == {"data": 2}


def test_more_mesh_devices_than_available_is_an_error():
    message = raises_mesh_error(M.check_mesh, {"data": 2, "expert": 4}, small_config(), small_train(),
                                num_devices=4, match="needs 8 devices")
    assert "4 are available" in message


def test_the_default_machine_is_asked_for_its_device_count():
    axes = {"data": jax.device_count() + 1}
    raises_mesh_error(M.check_mesh, axes, small_config(), small_train(batch_size=8 * (jax.device_count() + 1)),
                      match=f"needs {jax.device_count() + 1} devices")


@pytest.mark.parametrize("kind", ["expert_choice", "token_choice", "diffmoe"])
def test_expert_axis_must_divide_the_experts_of_an_moe_model(kind):
    raises_mesh_error(M.check_mesh, {"expert": 3}, small_config(kind), small_train(), num_devices=8,
                      match="expert=3 does not divide num_experts = 4")


def test_a_dense_model_only_replicates_over_the_expert_axis():
    """One --mesh serves every row of `compare`, the dense ones too: no expert weights to split."""
    assert M.check_mesh({"expert": 3}, small_config("dense"), small_train(), num_devices=8) == {"expert": 3}


def test_data_axis_must_divide_the_batch():
    raises_mesh_error(M.check_mesh, {"data": 3}, small_config(), small_train(batch_size=8), num_devices=8,
                      match="data=3 does not divide the batch size 8")
    raises_mesh_error(M.check_mesh, {"data": 3}, small_config(), num_devices=8, batch_size=4,
                      match="does not divide the batch size 4")


def test_routing_groups_must_not_straddle_devices():
    # S = 16 tokens, S' = 8 kept; B = 8. data=4: 2 images x 8 = 16 tokens a device, a group of 32 straddles
    cfg, tc = small_config(train_group_size=32), small_train(batch_size=8)
    assert M.check_mesh({"data": 2}, cfg, tc, num_devices=8) == {"data": 2}      # 4 x 8 = 32: one group
    raises_mesh_error(M.check_mesh, {"data": 4}, cfg, tc, num_devices=8,
                      match="16 tokens on a device, not a multiple of train_group_size = 32")
    # sampling: all S = 16 tokens, inference_group_size over (B / data) S
    cfg = small_config(inference_group_size=32)
    raises_mesh_error(M.check_mesh, {"data": 4}, cfg, num_devices=8, batch_size=4,
                      match="not a multiple of inference_group_size = 32")


def test_make_mesh_always_has_both_axes():
    mesh = M.make_mesh({})
    assert mesh.axis_names == M.AXES and dict(mesh.shape) == {"data": 1, "expert": 1}
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    raises_mesh_error(M.make_mesh, {"data": jax.device_count() + 1}, match="devices")


# ---------------------------------------------------------------------------------------------
# The sharding rules (on an abstract 2 x 4 mesh: no devices needed)
# ---------------------------------------------------------------------------------------------

def specs(tree):
    return jax.tree.map(lambda s: s.spec, tree)


@pytest.mark.parametrize("kind", ["expert_choice", "token_choice", "diffmoe"])
def test_expert_stacks_split_over_expert_and_routing_weights_stay_whole(kind):
    params = init_model(small_config(kind), 0)
    moe = specs(M.param_shardings(params, abstract_mesh(2, 4)))["blocks"][1][kind]
    assert moe["w1"] == moe["w2"] == P("expert", None, None)          # (E, D, F), (E, F, D)
    assert moe["w_router"] == P()                                       # (D, E)
    if kind == "diffmoe":
        assert moe["threshold"] == P() and set(moe["predictor"].values()) == {P()}


def test_dense_weights_split_over_data_on_their_largest_divisible_axis():
    sh = specs(M.param_shardings(init_model(small_config(), 0), abstract_mesh(2, 4)))
    assert sh["blocks"][0]["adaln"]["w"] == P(None, "data")             # (D, 6D): the wider axis
    assert sh["blocks"][0]["self_attn"]["wq"] == P("data", None)        # (D, D): axis 0 on a tie
    assert sh["blocks"][0]["dense"]["w2"] == P("data", None)            # (F, D)
    assert sh["blocks"][0]["adaln"]["b"] == P() and sh["patch_embed"]["b"] == P()  # biases
    assert sh["final"]["linear"]["w"] == P(None, "data")                # (D, P) = (32, 48): 48 is wider
    odd = {"w": np.zeros((3, 5), np.float32)}                           # neither axis divides by 2
    assert specs(M.param_shardings(odd, abstract_mesh(2, 1)))["w"] == P()
    assert specs(M.param_shardings({"w": np.zeros((6, 5), np.float32)}, abstract_mesh(3, 1)))["w"] == P("data", None)


def test_one_device_on_data_replicates_the_dense_weights():
    sh = specs(M.param_shardings(init_model(small_config(), 0), abstract_mesh(1, 4)))
    assert sh["blocks"][0]["self_attn"]["wq"] == P()
    assert sh["blocks"][1]["expert_choice"]["w1"] == P("expert", None, None)


def test_optimizer_moments_and_ema_are_placed_like_their_parameters():
    tc = small_train(ema_decay=0.9)
    state = init_state(init_model(small_config(), 0), tc)
    mesh = abstract_mesh(2, 4)
    sh = M.state_shardings(state, mesh)
    want = specs(M.param_shardings(state["params"], mesh))
    assert jax.tree.structure(sh) == jax.tree.structure(state)
    assert specs(sh["params"]) == want and specs(sh["ema"]) == want and sh["step"].spec == P()
    params_def = jax.tree.structure(state["params"])
    moments = [t for t in jax.tree.leaves(sh["opt_state"], is_leaf=lambda n: jax.tree.structure(n) == params_def)
               if jax.tree.structure(t) == params_def]
    assert len(moments) == 2 and all(specs(t) == want for t in moments)  # RMSProp's nu, the momentum trace
    others = [s for s in jax.tree.leaves(specs(sh["opt_state"])) if s not in jax.tree.leaves(want)]
    assert set(others) <= {P()}                                          # counts: replicated


@pytest.mark.parametrize("batch_size, axes", [(8, ("data", "expert")), (16, ("data", "expert")), (6, ("data",))])
def test_batch_splits_over_every_device_when_it_can_else_over_data_and_none_stays_none(batch_size, axes):
    """data x expert = 8 divides 8 and 16: the batch over both axes (no layer's work repeats);
    6 only over data (the expert devices of a data slice share its images)."""
    cfg, tc = small_config(), small_train(mask_ratio=0.0, batch_size=batch_size)
    batch = T.make_batch(0, 0, cfg, tc)
    assert batch["keep_index"] is None
    sh = M.batch_shardings(batch, abstract_mesh(2, 4))
    assert sh["keep_index"] is None
    assert {k: s.spec for k, s in sh.items() if s is not None} == {k: P(axes) for k in batch if k != "keep_index"}


# ---------------------------------------------------------------------------------------------
# When the blocks run the shard_map EC layer (the mesh in context, on an AbstractMesh)
# ---------------------------------------------------------------------------------------------

def test_the_ec_layer_goes_expert_parallel_only_under_a_mesh_context_that_fits():
    """`expert_parallel.context_mesh` (what `blocks.dit_block` asks): the mesh set around the
    trace (`jax.set_mesh` in `sharded_train_step`; here `use_abstract_mesh`, which needs no
    devices) when it has axes (data, expert) of Auto type, expert >= 2, and divides G over all
    devices and E over expert; None otherwise, and then the block runs the plain layer."""
    from ecdit.accelerated.expert_parallel import context_mesh
    assert context_mesh(8, 4) is None                                   # no context: one device
    with jax.sharding.use_abstract_mesh(abstract_mesh(2, 4)):
        assert context_mesh(8, 4) == abstract_mesh(2, 4)                # G = 8 over 8 devices, E = 4 over 4
        assert context_mesh(16, 8) == abstract_mesh(2, 4)
        assert context_mesh(4, 4) is None                               # 4 groups cannot split over 8 devices
        assert context_mesh(8, 6) is None                               # 6 experts cannot split over 4
        # the context is part of jit's cache key: the same function traces apart under it
        assert jax.jit(lambda v: v * (context_mesh(8, 4) is not None))(1.0) == 1.0
    assert jax.jit(lambda v: v * (context_mesh(8, 4) is not None))(1.0) == 0.0
    for mesh in (abstract_mesh(8, 1),                                   # nothing to exchange: GSPMD
                 AbstractMesh((2, 4), ("expert", "data"), axis_types=(AxisType.Auto,) * 2),
                 AbstractMesh((2, 4), M.AXES, axis_types=(AxisType.Explicit,) * 2)):
        with jax.sharding.use_abstract_mesh(mesh):
            assert context_mesh(8, 4) is None, mesh


# ---------------------------------------------------------------------------------------------
# The sharded step, on 8 simulated devices
# ---------------------------------------------------------------------------------------------

def test_sharded_train_step_on_data2_expert4_equals_one_device():
    """For expert_choice, token_choice and diffmoe: after one step the sharded state and metrics
    equal the one-device ones (FLOAT32), 5 steps' losses agree within 1e-3 relative, and the
    shardings are applied and kept; expert_choice's step runs the shard_map layer (its HLO has the
    layer's all-to-alls, fewer all-gather bytes than the pure-GSPMD step's; the script's docstring). The script's XLA_FLAGS add
    --xla_backend_optimization_level=0: LLVM's optimisation of the CPU code is half of the
    compile time and changes nothing the SPMD partitioner does (both programs get it)."""
    env = simulated_devices_env(8)
    run = subprocess.run([sys.executable, "-m", "tests.mesh_checks"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    assert "mesh checks passed" in run.stdout


def _cli(*args, devices=1):
    env = simulated_devices_env(devices)
    run = subprocess.run([sys.executable, "-m", "ecdit", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return run.stdout


def test_a_run_resumes_from_one_device_onto_a_mesh_and_back_with_the_one_device_losses(tmp_path):
    """Steps 1-2 on one device, 3-4 with `ecdit train --mesh data=2,expert=2` on 4 simulated
    devices (the one-device checkpoint restored straight into the mesh's shardings), 5-6 on one
    device again (from the checkpoint every device wrote its shards of): the logged losses equal
    a one-device run's (relative 1e-3, the issue's bound), every record names its mesh, and the
    run ends at the same parameters (a run saved on one mesh resumes on another). The one-device
    stages run here, so only the mesh stage pays for a Python of its own."""
    from ecdit.app.cli import main
    from ecdit.systems.checkpoint import load_params
    from ecdit.systems.train import read_metrics
    from tests.test_cli import SMALL
    from tests.tolerances import FLOAT32, assert_close
    mesh_run, one_run = tmp_path / "mesh", tmp_path / "one"
    common = ("train", "--quiet", *SMALL)
    assert main([*common, "--steps", "2", "--out", str(mesh_run)]) == 0
    out = _cli(*common, "--steps", "4", "--out", str(mesh_run), "--mesh", "data=2,expert=2", devices=4)
    assert "mesh data=2,expert=2 (4 devices)" in out
    assert main([*common, "--steps", "6", "--out", str(mesh_run)]) == 0        # 4 devices -> one device
    for steps in ("2", "4", "6"):                                              # the same stops, one device
        assert main([*common, "--steps", steps, "--out", str(one_run)]) == 0
    meshed, single = read_metrics(str(mesh_run / "metrics.jsonl")), read_metrics(str(one_run / "metrics.jsonl"))
    assert [r["step"] for r in meshed] == [r["step"] for r in single] == [2, 4, 6]
    assert [r["mesh"] for r in meshed] == ["1 device", "data=2,expert=2", "1 device"]
    assert {r["mesh"] for r in single} == {"1 device"}
    for a, b in zip(meshed, single):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(b["loss"]), (a["step"], a["loss"], b["loss"])
    p_mesh, _, meta = load_params(str(mesh_run))
    p_one, _, _ = load_params(str(one_run))
    assert meta["step"] == 6
    for x, y in zip(jax.tree.leaves(p_mesh), jax.tree.leaves(p_one)):
        assert_close(x, y, tol=FLOAT32)


def test_a_bad_mesh_flag_is_a_one_line_cli_error(tmp_path, capsys):
    from ecdit.app.cli import main
    for flag, needle in (("data=3", "--mesh: data=3 needs 3 devices"), ("model=2", "--mesh: unknown axis")):
        assert main(["train", "--steps", "1", "--out", str(tmp_path), "--mesh", flag, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"ecdit: error: {needle}"), err
