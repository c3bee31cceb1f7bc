"""Checkpoints across meshes (ecdit/systems/checkpoint.py) on 8 simulated CPU devices.

Run by tests/test_checkpoint.py in its own Python, since the device count is fixed when JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu python -m tests.checkpoint_checks DIR

A trained-looking state (random parameters, EMA and optimiser moments, step 7) of the small
expert_choice model:
  (a) saved sharded on data=2,expert=4 (each device writes its shards), restored onto
      data=8,expert=1 and onto one device (shardings=None), and saved from one device then
      restored onto data=2,expert=4: every array bit for bit, placed as the target mesh says
      (expert stacks split on E, dense weights FSDP over data), shards of the expected shapes;
  (b) the fingerprint of each array is the same number on every layout (the metadata of the
      sharded save equals that of the one-device save);
  (c) a pytree of shardings (mesh.state_shardings) works as well as a Mesh;
  (d) an old .npz checkpoint restores onto data=2,expert=4 too.
"""
import os
import sys
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ecdit.core.params import init_model, randomize_zero_init
from ecdit.systems import checkpoint as C
from ecdit.systems import mesh as M
from ecdit.systems.optim import init_state
from tests.helpers import small_config, small_train
from tests.test_checkpoint import write_legacy_npz

CONFIG = small_config("expert_choice")
TRAIN = small_train(ema_decay=0.9)
DEVICES = 8


def start_state() -> dict:
    """Every array non-trivial (moments too), so a misplaced shard cannot go unnoticed."""
    state = init_state(randomize_zero_init(init_model(CONFIG, 0)), TRAIN)
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda x: np.asarray(x) + rng.standard_normal(np.shape(x)).astype(np.float32)
                         if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x), state)
    return dict(state, step=np.int32(7))


def assert_same(got, want, where):
    assert jax.tree.structure(got) == jax.tree.structure(want), where
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{where}: state{jax.tree_util.keystr(path)}")


def check_placement(state, mesh, where):
    data, expert = mesh.shape["data"], mesh.shape["expert"]
    w1 = state["params"]["blocks"][CONFIG.sparse_layers[0]]["expert_choice"]["w1"]   # (E, D, F)
    e, d, f = w1.shape
    spec = P("expert", None, None) if expert > 1 else w1.sharding.spec
    assert w1.sharding.mesh.shape == mesh.shape and w1.sharding.spec == spec, (where, w1.sharding)
    assert {s.data.shape for s in w1.addressable_shards} == {(e // expert, d, f)}, where
    wq = state["ema"]["blocks"][0]["self_attn"]["wq"]                                # (D, N H): FSDP
    assert wq.sharding.spec == P("data", None) and {s.data.shape for s in wq.addressable_shards} == {
        (wq.shape[0] // data, wq.shape[1])}, (where, wq.sharding)
    assert state["step"].sharding.is_fully_replicated and int(state["step"].addressable_data(0)) == 7


def main(argv) -> int:
    if jax.device_count() < DEVICES:
        print(f"needs {DEVICES} devices, got {jax.device_count()}", file=sys.stderr)
        return 2
    root = argv[0]
    want = start_state()
    m24 = M.make_mesh({"data": 2, "expert": 4})
    m81 = M.make_mesh({"data": 8})
    t = time.perf_counter()
    sharded = M.shard_state(want, m24)
    C.save_train_state(os.path.join(root, "from_mesh"), sharded, CONFIG, TRAIN)       # (a) 2 x 4 ->
    C.save_train_state(os.path.join(root, "from_one"), want, CONFIG, TRAIN)           # one device ->
    t_save = time.perf_counter() - t

    t = time.perf_counter()
    on81, _, _, meta = C.load_train_state(os.path.join(root, "from_mesh"), shardings=m81)       # -> 8 x 1
    check_placement(on81, m81, "2x4 -> 8x1")
    assert_same(on81, want, "2x4 -> 8x1")
    on_one, _, _, _ = C.load_train_state(os.path.join(root, "from_mesh"))                       # -> one device
    assert all(len(x.devices()) == 1 for x in jax.tree.leaves(on_one))
    assert_same(on_one, want, "2x4 -> one device")
    on24, _, _, meta_one = C.load_train_state(os.path.join(root, "from_one"), shardings=m24)    # one -> 2 x 4
    check_placement(on24, m24, "one device -> 2x4")
    assert_same(on24, want, "one device -> 2x4")
    tree = M.state_shardings(C.abstract_train_state(CONFIG, TRAIN), m24)                       # (c)
    again, _, _, _ = C.load_train_state(os.path.join(root, "from_mesh"), shardings=tree)
    check_placement(again, m24, "2x4 -> 2x4 (pytree of shardings)")
    assert_same(again, want, "2x4 -> 2x4")
    npz = write_legacy_npz(os.path.join(root, "old.npz"), want, CONFIG, TRAIN)                 # (d)
    legacy, _, _, _ = C.load_train_state(npz, shardings=m24)
    check_placement(legacy, m24, "old .npz -> 2x4")
    assert_same(legacy, want, "old .npz -> 2x4")
    t_load = time.perf_counter() - t

    assert meta["arrays"] == meta_one["arrays"], "(b) the fingerprints depend on the layout"     # (b)
    prints = C.fingerprints(C.named_leaves(on81, "s"))
    assert prints == C.fingerprints(C.named_leaves(on_one, "s")) == C.fingerprints(C.named_leaves(on24, "s"))
    print(f"checkpoint checks passed: {len(meta['arrays'])} arrays, saves {t_save:.1f} s, "
          f"5 restores {t_load:.1f} s (compilation included)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
