"""Checkpoints: resume equality, atomic writes, and clear errors for bad files."""
import os

import jax
import numpy as np
import pytest

from ecdit.core.params import init_model
from ecdit.systems import checkpoint as C
from ecdit.systems import optim
from ecdit.systems import train as T
from tests.helpers import small_config, small_train
from tests.tolerances import FLOAT32_ULP, assert_close

TC = small_train()                                  # masks half the tokens


def test_stopped_and_resumed_run_equals_unstopped_run(tmp_path):
    """N steps straight == N/2 steps, checkpoint, reload in a fresh call, N/2 more: bit for bit
    (with masking, so the random keep_index is replayed too)."""
    cfg = small_config()
    straight, _ = T.train(cfg, TC, 6, str(tmp_path / "a"), progress=False)
    T.train(cfg, TC, 3, str(tmp_path / "b"), progress=False)
    resumed, history = T.train(cfg, TC, 6, str(tmp_path / "b"), progress=False, log_every=1)
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(x, y)
    assert [r["step"] for r in history] == [3, 4, 5, 6]  # first half: only its last step was logged
    state, _, _, meta = C.load_train_state(str(tmp_path / "b" / "checkpoint.npz"))
    assert meta["step"] == 6 and int(state["step"]) == 6


def test_params_round_trip_bit_for_bit(tmp_path):
    cfg = small_config()
    state = optim.init_state(init_model(cfg, 3), TC)
    path = C.save_train_state(str(tmp_path / "c.npz"), state, cfg, TC)
    params, cfg2, meta = C.load_params(path)
    assert cfg2 == cfg and meta["step"] == 0
    for x, y in zip(jax.tree.leaves(init_model(cfg, 3)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)


def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = small_config()
    path = str(tmp_path / "checkpoint.npz")
    C.save_train_state(path, optim.init_state(init_model(cfg, 0), TC), cfg, TC)
    good = open(path, "rb").read()

    def crash(f, **arrays):                                      # write half a file, then die
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_train_state(path, optim.init_state(init_model(cfg, 1), TC), cfg, TC)
    monkeypatch.undo()
    assert open(path, "rb").read() == good
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    C.load_params(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    cfg = small_config()
    path = str(tmp_path / "checkpoint.npz")
    C.save_train_state(path, optim.init_state(init_model(cfg, 0), TC), cfg, TC)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(C.CheckpointError, match="corrupt"):
        C.load_params(path)


def test_garbled_checkpoint_is_a_clear_error(tmp_path):
    cfg = small_config()
    path = str(tmp_path / "checkpoint.npz")
    C.save_train_state(path, optim.init_state(init_model(cfg, 0), TC), cfg, TC)
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 64):          # flip bytes inside an array
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(C.CheckpointError, match="corrupt"):
        C.load_params(path)


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(C.CheckpointError, match="no such file"):
        C.load_params(str(tmp_path / "nope.npz"))
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(C.CheckpointError, match="not an ecdit checkpoint"):
        C.load_params(str(other))
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    with pytest.raises(C.CheckpointError):
        C.load_params(str(junk))


def test_ema_is_the_warmed_up_running_average_and_resumes_bit_for_bit(tmp_path):
    """With ema_decay > 0: after each step, ema = d ema + (1 - d) params with
    d = min(ema_decay, (1 + step) / (10 + step)); a stopped and resumed run gives the same EMA as
    an unstopped one; train() and load_params() hand back the EMA, not the raw parameters."""
    cfg, tc = small_config(), TC.replace(ema_decay=0.5)
    state = optim.init_state(init_model(cfg, 0), tc)
    expected = jax.tree.map(np.asarray, state["params"])
    for step in range(3):
        state, _ = T.run_step(state, T.make_batch(tc.seed, step, cfg, tc), cfg, tc)
        d = min(0.5, (1 + step) / (10 + step))
        expected = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), expected, state["params"])
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(state["ema"])):
        assert_close(y, x, tol=FLOAT32_ULP)
    assert any(not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(state["params"])))

    straight, _ = T.train(cfg, tc, 4, str(tmp_path / "a"), progress=False)
    T.train(cfg, tc, 2, str(tmp_path / "b"), progress=False)
    resumed, _ = T.train(cfg, tc, 4, str(tmp_path / "b"), progress=False)
    saved, _, meta = C.load_params(str(tmp_path / "b" / "checkpoint.npz"))
    full, _, _, _ = C.load_train_state(str(tmp_path / "b" / "checkpoint.npz"))
    assert meta["weights"] == "ema"
    for x, y, z, w in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), jax.tree.leaves(saved),
                          jax.tree.leaves(full["ema"])):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(x, w)


def test_a_version_1_checkpoint_loads_with_the_old_ffn_names_mapped(tmp_path):
    """v1 files named a block's FFN 'moe' (expert choice) and 'ffn' (dense); v2 names it by its
    kind. A v1 file written before the rename resumes to the same state."""
    import json
    cfg = small_config()
    state = optim.init_state(init_model(cfg, 5), TC)
    path = C.save_train_state(str(tmp_path / "v2.npz"), state, cfg, TC)
    arrays, meta = C.load(path)
    old = {k.replace("/expert_choice/", "/moe/").replace("/dense/", "/ffn/"): v for k, v in arrays.items()}
    assert any("/blocks/1/moe/" in k for k in old) and any("/blocks/0/ffn/" in k for k in old)
    assert any("text/layers/0/ffn/" in k for k in old)                  # the text encoder's own FFN keeps its name
    meta = dict(meta, format="ecdit-checkpoint-v1", arrays=sorted(old), sha256=C._digest(old))
    with open(tmp_path / "v1.npz", "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **old)
    restored, _, _, _ = C.load_train_state(str(tmp_path / "v1.npz"))
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
