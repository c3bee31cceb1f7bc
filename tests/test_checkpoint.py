"""Checkpoints: resume equality, atomic commits, the fingerprint, restores across meshes, clear
errors for bad checkpoints, and old .npz files still read."""
import asyncio
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, replace

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ecdit.core.params import init_model
from ecdit.systems import checkpoint as C
from ecdit.systems import optim
from ecdit.systems import train as T
from tests.helpers import ROOT, simulated_devices_env, small_config, small_train
from tests.tolerances import FLOAT32_ULP, assert_close

TC = small_train()                                  # masks half the tokens


def state_at(step, seed=0, cfg=None, tc=TC):
    return dict(optim.init_state(init_model(cfg or small_config(), seed), tc), step=jnp.int32(step))


def assert_same_tree(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(directory) -> list[str]:
    return sorted(os.listdir(directory), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def largest_array_file(step_dir) -> str:
    """The file of the orbax layout that holds the most array bytes (a chunk of the OCDBT store)."""
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    assert files, os.listdir(os.path.join(step_dir, "state"))
    return max(files, key=os.path.getsize)


def write_legacy_npz(path, state, cfg, tc, fmt="ecdit-checkpoint-v2", rename=lambda name: name):
    """A checkpoint as the old writer made it: one .npz, arrays by tree path, SHA-256 in __meta__."""
    arrays = {**C.flatten(state["params"], "params"), **C.flatten(state["opt_state"], "opt")}
    if "ema" in state:
        arrays.update(C.flatten(state["ema"], "ema"))
    arrays = {rename(k): v for k, v in arrays.items()}
    meta = {"model": asdict(cfg), "train": asdict(tc), "step": int(state["step"]), "extra": {},
            "format": fmt, "arrays": sorted(arrays), "sha256": C._digest(arrays)}
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Resume equality and round trips
# ---------------------------------------------------------------------------------------------

def test_stopped_and_resumed_run_equals_unstopped_run(tmp_path):
    """N steps straight == N/2 steps, checkpoint, reload in a fresh call, N/2 more: bit for bit
    (with masking, so the random keep_index is replayed too)."""
    cfg = small_config()
    straight, _ = T.train(cfg, TC, 6, str(tmp_path / "a"), progress=False)
    T.train(cfg, TC, 3, str(tmp_path / "b"), progress=False)
    resumed, history = T.train(cfg, TC, 6, str(tmp_path / "b"), progress=False, log_every=1)
    assert_same_tree(resumed, straight)
    assert [r["step"] for r in history] == [3, 4, 5, 6]  # first half: only its last step was logged
    assert step_dirs(tmp_path / "b" / C.DIRNAME) == ["3", "6"]
    state, _, _, meta = C.load_train_state(str(tmp_path / "b"))             # a run folder
    assert meta["step"] == 6 and int(state["step"]) == 6
    T.train(cfg, TC, 6, str(tmp_path / "b"), progress=False)                 # nothing to do: no new step
    assert step_dirs(tmp_path / "b" / C.DIRNAME) == ["3", "6"]


def test_params_round_trip_bit_for_bit_and_every_path_form_loads(tmp_path):
    cfg = small_config()
    path = C.save_train_state(str(tmp_path / C.DIRNAME), state_at(0, seed=3), cfg, TC, extra={"note": "x"})
    for form in (tmp_path, tmp_path / C.DIRNAME, tmp_path / C.DIRNAME / "0"):  # run folder, directory, step
        params, cfg2, meta = C.load_params(str(form))
        assert cfg2 == cfg and meta["step"] == 0 and meta["extra"] == {"note": "x"} and meta["weights"] == "params"
        assert_same_tree(params, init_model(cfg, 3))
    assert C.find(str(tmp_path)) == path


def test_the_last_two_steps_are_kept_and_steps_only_move_forward(tmp_path):
    cfg, path = small_config(), str(tmp_path / "ck")
    for step in (1, 2, 3):
        C.save_train_state(path, state_at(step), cfg, TC)
    assert step_dirs(path) == ["2", "3"] and C.KEEP == 2
    with pytest.raises(C.CheckpointError, match="not after the newest saved step 3"):
        C.save_train_state(path, state_at(3), cfg, TC)
    C.save_train_state(path, state_at(2, seed=9), cfg, TC, fresh=True)     # another run, started afresh
    assert step_dirs(path) == ["2"]
    assert_same_tree(C.load_params(path)[0], init_model(cfg, 9))


# ---------------------------------------------------------------------------------------------
# Atomic commits
# ---------------------------------------------------------------------------------------------

def test_crash_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A save that dies inside the write (after the arrays, while writing the metadata) leaves
    only orbax's temporary folder: not a step, never read; the last committed step still loads,
    and the next save removes the leftover."""
    cfg, path = small_config(), str(tmp_path / "ck")
    C.save_train_state(path, state_at(1), cfg, TC)
    good = {f: open(f, "rb").read() for f in glob.glob(os.path.join(path, "1", "**"), recursive=True)
            if os.path.isfile(f)}

    async def power_cut(self, directory, *args, **kwargs):
        (directory / "metadata").write_text('{"format": "ecdit-chec')  # half a file, then the lights go out
        raise KeyboardInterrupt("power cut")
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", power_cut)
    with pytest.raises(KeyboardInterrupt):
        C.save_train_state(path, state_at(2, seed=1), cfg, TC)
    monkeypatch.undo()
    left = step_dirs(path)
    assert left[0] == "1" and len(left) == 2 and left[1].startswith("2.orbax-checkpoint-tmp"), left
    assert {f: open(f, "rb").read() for f in good} == good                   # untouched, byte for byte
    params, _, meta = C.load_params(path)
    assert meta["step"] == 1
    assert_same_tree(params, init_model(cfg, 0))
    C.save_train_state(path, state_at(2, seed=1), cfg, TC)
    assert step_dirs(path) == ["1", "2"]
    assert_same_tree(C.load_params(path)[0], init_model(cfg, 1))


def test_an_uncommitted_folder_is_never_read(tmp_path):
    """A copy of a newer step left under orbax's temporary name (a crash before the commit's
    rename) is ignored by loading and by resuming; with nothing committed there is no checkpoint."""
    cfg = small_config()
    run = tmp_path / "run"
    T.train(cfg, TC, 1, str(run), progress=False)
    ck = run / C.DIRNAME
    shutil.copytree(ck / "1", ck / "5.orbax-checkpoint-tmp-1234")
    assert C.load_params(str(run))[2]["step"] == 1 and C.in_run(str(run)) == str(ck)
    shutil.rmtree(ck / "1")
    with pytest.raises(C.CheckpointError, match="holds no committed checkpoint"):
        C.load_params(str(ck))
    assert C.in_run(str(run)) is None                                       # train() starts afresh


# ---------------------------------------------------------------------------------------------
# The fingerprint
# ---------------------------------------------------------------------------------------------

def numpy_fingerprint(x) -> int:
    """The definition (module docstring), in NumPy: sum_p w_p (2 p K + 1) mod 2^32."""
    w = np.ascontiguousarray(x).view(np.uint32).ravel().astype(np.uint64)
    m = (2 * np.arange(w.size, dtype=np.uint64) * C._K + 1) % 2**32
    return int(np.sum((w * m) % 2**32) % 2**32)


def test_fingerprint_is_its_numpy_definition_and_sees_any_one_word_change():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 7, 3)).astype(np.float32)
    got = C.fingerprints({"x": jnp.asarray(x), "i": jnp.arange(10, dtype=jnp.int32)})
    assert got == {"x": numpy_fingerprint(x), "i": numpy_fingerprint(np.arange(10, dtype=np.int32))}
    for flat_index, bit in ((0, 0), (17, 31), (104, 7)):                      # one flipped bit anywhere
        y = x.copy().ravel()
        y.view(np.uint32)[flat_index] ^= np.uint32(1 << bit)
        assert C.fingerprints({"x": jnp.asarray(y.reshape(x.shape))})["x"] != got["x"]
    swapped = x.copy()
    swapped[0, 0, 0], swapped[4, 6, 2] = x[4, 6, 2], x[0, 0, 0]                # same words, moved
    assert C.fingerprints({"x": jnp.asarray(swapped)})["x"] != got["x"]


def test_a_checkpoint_saved_on_one_mesh_restores_onto_another():
    """tests/checkpoint_checks.py on 8 simulated devices: data=2,expert=4 -> data=8 and -> one
    device, one device (and an old .npz) -> data=2,expert=4, bit for bit and placed as the
    target mesh says; the fingerprints are the same numbers on every layout."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        run = subprocess.run([sys.executable, "-m", "tests.checkpoint_checks", root], cwd=ROOT,
                             env=simulated_devices_env(8), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    print(run.stdout.strip().splitlines()[-1], f"(subprocess {time.perf_counter() - t:.1f} s)")


# ---------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """A checkpoint directory with one committed step (1), and that step's folder."""
    path = str(tmp_path / "ck")
    C.save_train_state(path, state_at(1), small_config(), TC)
    return path, os.path.join(path, "1")


def one_line_error(fn, path, match):
    with pytest.raises(C.CheckpointError, match=match) as err:
        fn(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith("checkpoint: "), message
    return message


def test_flipped_bytes_in_an_array_file_are_caught_by_the_fingerprint(saved):
    path, step = saved
    target = largest_array_file(step)
    data = bytearray(open(target, "rb").read())
    for i in range(len(data) // 3, len(data) // 3 + 64):                     # inside a compressed chunk
        data[i] ^= 0xFF
    open(target, "wb").write(bytes(data))
    for fn in (C.load_params, C.load_train_state):
        message = one_line_error(fn, path, "corrupt")
        assert repr(step) in message


def test_a_truncated_or_missing_array_file_is_a_clear_error(saved):
    path, step = saved
    target = largest_array_file(step)
    data = open(target, "rb").read()
    open(target, "wb").write(data[: len(data) // 2])
    one_line_error(C.load_train_state, path, "corrupt")
    os.remove(target)
    one_line_error(C.load_train_state, path, "corrupt")


def _unraisable_report(exc: BaseException, obj=None):
    """The record Python hands sys.unraisablehook for `exc` (raised, so it has a traceback)."""
    try:
        raise exc
    except BaseException as e:                                   # noqa: BLE001
        return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=e.__traceback__,
                                     err_msg=None, object=obj)


def _closed_loop_report():
    """What tensorstore's late completions produce: call_soon_threadsafe on a closed event loop."""
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(print)
    except RuntimeError as e:
        return types.SimpleNamespace(exc_type=RuntimeError, exc_value=e, exc_traceback=e.__traceback__,
                                     err_msg=None, object=None)
    raise AssertionError("a closed loop accepted a callback")


def test_only_closed_loop_reports_are_dropped_around_a_failed_read(monkeypatch):
    """The read guard drops exactly asyncio's "Event loop is closed" reports (what tensorstore's
    abandoned reads produce after a failed restore), passes every other report to the hook it
    wrapped, puts that hook back after a good read and keeps the guard after a failed one."""
    hooked = []
    monkeypatch.setattr(sys, "unraisablehook", hooked.append)
    # Earlier tests' abandoned tensorstore reads may still report real "Event loop is closed" errors
    # from other threads while this test holds the hook (Python's own UnraisableHookArgs records);
    # the assertions look only at the records this test makes.
    mine = lambda: [r for r in hooked if isinstance(r, types.SimpleNamespace)]  # noqa: E731
    monkeypatch.setattr(C, "_SHUTDOWN_SILENCED", True)         # no atexit handler in the pytest process
    stray, other = _closed_loop_report(), _unraisable_report(RuntimeError("Event loop is closed"))
    assert C._is_closed_loop_report(stray) and not C._is_closed_loop_report(other)
    with C._quiet_abandoned_reads():
        sys.unraisablehook(stray)
        sys.unraisablehook(other)
    assert mine() == [other] and sys.unraisablehook == hooked.append  # a good read: the old hook is back
    with pytest.raises(OSError):
        with C._quiet_abandoned_reads():
            raise OSError("a failed read")
    assert sys.unraisablehook != hooked.append                      # a failed read: the guard stays
    sys.unraisablehook(stray)
    sys.unraisablehook(_closed_loop_report())
    assert mine() == [other]


def test_garbled_metadata_is_a_clear_error(saved):
    path, step = saved
    with open(os.path.join(step, "meta", "metadata"), "w") as f:
        f.write('{"format": "ecdit-checkpoint-v3", "mod')
    assert repr(step) in one_line_error(C.load_params, path, "garbled metadata")
    with open(os.path.join(step, "meta", "metadata"), "w") as f:
        json.dump(["not", "a", "dict"], f)
    one_line_error(C.load_params, path, "garbled metadata")


def test_arrays_that_do_not_fit_the_config_are_a_clear_error(saved):
    path, step = saved
    meta_file = os.path.join(step, "meta", "metadata")
    meta = json.load(open(meta_file))
    json.dump(dict(meta, model=asdict(replace(small_config(), width=48))), open(meta_file, "w"))
    one_line_error(C.load_train_state, path, r"array 'params/.*' has shape .* the model expects")
    json.dump(dict(meta, arrays={k: v for k, v in meta["arrays"].items() if not k.startswith("ema/")
                                 and k != "params/text/pos"}), open(meta_file, "w"))
    one_line_error(C.load_params, path, "array 'params/text/pos' is missing")


def test_missing_empty_and_foreign_paths_are_clear_errors(tmp_path):
    one_line_error(C.load_params, str(tmp_path / "nope"), "no such file or directory")
    one_line_error(C.load_params, str(tmp_path / "nope.npz"), "no such file")
    os.makedirs(tmp_path / "empty")
    one_line_error(C.load_params, str(tmp_path / "empty"), "holds no committed checkpoint")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    one_line_error(C.load_params, str(other), "not an ecdit checkpoint")
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    one_line_error(C.load_params, str(junk), "corrupt")
    with pytest.raises(C.CheckpointError, match="no longer written"):
        C.save_train_state(str(tmp_path / "c.npz"), state_at(0), small_config(), TC)


# ---------------------------------------------------------------------------------------------
# The EMA
# ---------------------------------------------------------------------------------------------

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
    saved, _, meta = C.load_params(str(tmp_path / "b"))
    full, _, _, _ = C.load_train_state(str(tmp_path / "b"))
    assert meta["weights"] == "ema"
    for x, y, z, w in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), jax.tree.leaves(saved),
                          jax.tree.leaves(full["ema"])):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
        np.testing.assert_array_equal(x, w)


# ---------------------------------------------------------------------------------------------
# Legacy .npz checkpoints (v1, v2): read only
# ---------------------------------------------------------------------------------------------

def test_a_version_2_npz_loads_and_a_run_resumes_from_it_into_the_new_format(tmp_path):
    """An old run folder (RUN/checkpoint.npz, written by the old writer) loads as a file and as a
    folder, and `train` resumes from it: 2 steps written as .npz + 2 more == 4 straight; the
    new steps go to RUN/checkpoint/, which then wins over the .npz."""
    cfg, tc = small_config(), TC.replace(ema_decay=0.5)
    state = optim.init_state(init_model(cfg, 0), tc)
    for step in range(2):
        state, _ = T.run_step(state, T.make_batch(tc.seed, step, cfg, tc), cfg, tc)
    run = tmp_path / "old"
    os.makedirs(run)
    npz = write_legacy_npz(run / C.LEGACY_NAME, state, cfg, tc)
    for form in (npz, str(run)):
        restored, cfg2, tc2, meta = C.load_train_state(form)
        assert (cfg2, tc2, meta["step"]) == (cfg, tc, 2)
        assert_same_tree(restored, state)
        assert_same_tree(C.load_params(form)[0], state["ema"])
    resumed, _ = T.train(cfg, tc, 4, str(run), progress=False)
    straight, _ = T.train(cfg, tc, 4, str(tmp_path / "new"), progress=False)
    assert_same_tree(resumed, straight)
    assert C.in_run(str(run)) == str(run / C.DIRNAME) and C.load_params(str(run))[2]["step"] == 4


def test_a_version_1_npz_loads_with_the_old_ffn_names_mapped(tmp_path):
    """v1 files named a block's FFN 'moe' (expert choice) and 'ffn' (dense); v2 names it by its
    kind. A v1 file written before the rename resumes to the same state."""
    cfg = small_config()
    state = state_at(0, seed=5)
    old = lambda k: k.replace("/expert_choice/", "/moe/").replace("/dense/", "/ffn/")  # noqa: E731
    path = write_legacy_npz(tmp_path / "v1.npz", state, cfg, TC, fmt="ecdit-checkpoint-v1", rename=old)
    arrays, _ = C.load_npz(path)
    names = list(np.load(path).files)
    assert any("/blocks/1/moe/" in k for k in names) and any("/blocks/0/ffn/" in k for k in names)
    assert any("text/layers/0/ffn/" in k for k in names)              # the text encoder's own FFN keeps its name
    assert any("/blocks/1/expert_choice/" in k for k in arrays)
    restored, _, _, _ = C.load_train_state(path)
    assert_same_tree(restored, state)


def test_a_truncated_or_garbled_npz_is_a_clear_error(tmp_path):
    path = write_legacy_npz(tmp_path / "checkpoint.npz", state_at(0), small_config(), TC)
    data = bytearray(open(path, "rb").read())
    flipped = bytearray(data)
    for i in range(len(data) // 3, len(data) // 3 + 64):                     # flip bytes inside an array
        flipped[i] ^= 0xFF
    open(path, "wb").write(bytes(flipped))
    one_line_error(C.load_params, path, "corrupt")
    open(path, "wb").write(bytes(data[: len(data) // 2]))
    one_line_error(C.load_params, path, "corrupt")
