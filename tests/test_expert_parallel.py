"""Expert parallelism (accelerated/expert_parallel.py): the sharded EC layers on 8 simulated
devices, in a subprocess (tests/expert_parallel_checks.py), and the byte accounting in-process.

The device count is fixed when JAX starts, so the multi-device checks run in their own Python
with XLA_FLAGS=--xla_force_host_platform_device_count=8; this process keeps one device.
"""
import subprocess
import sys

import pytest

from ecdit.accelerated import expert_parallel as ep
from tests.helpers import ROOT, simulated_devices_env


def test_sharded_layers_equal_the_single_device_layer_on_8_simulated_devices():
    """Values, routing records and gradients of both sharded layers equal the unsharded layer's,
    and the shard_map program's all-to-all bytes equal `exchange_bytes` (the script's docstring)."""
    env = simulated_devices_env(8)
    run = subprocess.run([sys.executable, "-m", "tests.expert_parallel_checks"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]


# ---------------------------------------------------------------------------------------------
# exchange_bytes: the formula's arithmetic
# ---------------------------------------------------------------------------------------------

def test_exchange_bytes_is_twice_the_dispatched_tensor_less_the_local_chunk():
    # G = 8 over 2 x 4 devices -> G_l = 1; (E, G_l, C, D) = (8, 1, 4, 8) float32 = 1,024 bytes,
    # 3/4 of it leaves the device, there and back.
    assert ep.exchange_bytes(8, 8, 4, 8, 4, data_axis_size=2) == 2 * 1024 * 3 // 4 == 1536


def test_one_device_on_the_expert_axis_sends_nothing():
    assert ep.exchange_bytes(8, 4, 4, 16, 1, data_axis_size=8) == 0


def test_exchange_bytes_scale_linearly_with_capacity_width_and_dtype():
    base = ep.exchange_bytes(16, 8, 2, 8, 4)
    assert ep.exchange_bytes(16, 8, 6, 8, 4) == 3 * base
    assert ep.exchange_bytes(16, 8, 2, 24, 4) == 3 * base
    assert ep.exchange_bytes(16, 8, 2, 8, 4, dtype_bytes=2) * 2 == base


def test_exchange_bytes_depend_on_the_groups_each_device_holds_not_on_the_data_axis():
    """Doubling the data axis with twice the groups leaves every device's traffic unchanged."""
    assert ep.exchange_bytes(8, 8, 4, 8, 4, data_axis_size=1) == ep.exchange_bytes(16, 8, 4, 8, 4, data_axis_size=2)


def test_exchange_bytes_fraction_that_leaves_a_device_grows_with_the_expert_axis():
    """(n - 1) / n of the dispatched tensor leaves: 1/2, 3/4, 7/8 for n = 2, 4, 8 at fixed G_l."""
    whole = 2 * 8 * 1 * 4 * 8 * 4                                # 2 x (E, G_l, C, D) float32 bytes
    assert [ep.exchange_bytes(n, 8, 4, 8, n) for n in (2, 4, 8)] == [whole // 2, whole * 3 // 4, whole * 7 // 8]


@pytest.mark.parametrize("groups, experts, name", [(6, 8, "num_groups"), (8, 6, "num_experts")])
def test_exchange_bytes_refuses_a_layer_the_mesh_does_not_divide(groups, experts, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        ep.exchange_bytes(groups, experts, 4, 8, 4, data_axis_size=2)


# ---------------------------------------------------------------------------------------------
# collective_bytes: reading XLA's HLO text
# ---------------------------------------------------------------------------------------------

# Lines in the forms XLA:CPU printed for these programs (metadata cut), one per replica_groups form.
HLO = """
  %all-to-all = (f32[2,1,4,8]{3,2,1,0}, f32[2,1,4,8]{3,2,1,0}, f32[2,1,4,8]{3,2,1,0}, f32[2,1,4,8]{3,2,1,0}) all-to-all(%a, %b, %c, %d), channel_id=1, replica_groups={{0,1,2,3},{4,5,6,7}}
  %get-tuple-element.10 = f32[2,1,4,8]{3,2,1,0} get-tuple-element(%all-to-all), index=0
  %all-gather.2 = f32[128,8]{1,0} all-gather(%bitcast), channel_id=7, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, dimensions={0}
  %all-to-all.2 = (f32[1,2,1,4,8]{4,3,2,1,0}, f32[1,2,1,4,8]{4,3,2,1,0}) all-to-all(%e, %f), channel_id=8, replica_groups=mesh['axis_0'=4,'axis_1'=2,'axis_2'=1], device_ids=([2,4]T(1,0)) {'axis_1'}
  %all-reduce = s32[8,16]{1,0} all-reduce(%s), channel_id=15, replica_groups=[2,4]<=[8], to_apply=%region
  %collective-permute = f32[4,4]{1,0} collective-permute(%p), channel_id=3, source_target_pairs={{0,1},{1,0}}
"""


def test_collective_bytes_reads_every_replica_group_form_and_kind():
    got = ep.collective_bytes(HLO, devices=8)
    assert got["count"] == {"all-to-all": 2, "all-gather": 1, "all-reduce": 1, "collective-permute": 1}
    assert got["all-to-all"] == 4 * 2 * 4 * 8 * 4 * 3 // 4 + 2 * 2 * 4 * 8 * 4 // 2   # n = 4, then n = 2
    assert got["all-gather"] == 128 * 8 * 4 * 7 // 8                                  # n = 8
    assert got["all-reduce"] == 2 * 8 * 16 * 4 * 3 // 4                               # ring, groups of 4
    assert got["collective-permute"] == 4 * 4 * 4


def test_collective_bytes_of_a_program_without_collectives_is_empty():
    assert ep.collective_bytes("%add = f32[4]{0} add(%a, %b)\n", devices=8) == {"count": {}}
