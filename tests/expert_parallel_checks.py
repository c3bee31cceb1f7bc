"""Expert parallelism on 8 simulated CPU devices: `python -m tests.expert_parallel_checks`.

Run in its own process by tests/test_expert_parallel.py (the device count is fixed when JAX
starts, and the rest of the suite keeps one device). On meshes data x expert = 2 x 4, 1 x 8,
4 x 2 and 8 x 1, and a few layer shapes (G divisible by the 8 devices, E by the expert axis), it
checks that

  * both sharded layers (`expert_choice_moe_sharded`, shard_map + all_to_all, and
    `expert_choice_moe_gspmd`, sharding constraints) equal the single-device
    `accelerated.routing.expert_choice_moe`: out and gating within FLOAT32, index and
    experts_per_token exactly (inputs drawn with a top-C margin above NEAR_TIE);
  * the gradients of a scalar loss w.r.t. x, w_router, w1 and w2 equal the unsharded ones;
  * the shard_map program's only collectives are two all-to-alls whose bytes equal
    `exchange_bytes` (forward), and four in the gradient program (twice the formula);
  * a mesh that does not divide G or E is refused with a ValueError naming the argument;
  * the token-choice layer (`token_choice_moe_sharded`), DiffMoE's pools with the capacity
    predictor (`pool_moe_sharded`, q_e averaged over every device's pools) and dynamic capacity
    (`pool_moe_dynamic_sharded`, one compiled ceiling for the mesh) equal their single-device
    layers (`token_choice.token_choice_moe`, `diffmoe.pool_moe`, `diffmoe.pool_moe_dynamic`),
    gradients included for the two trained forms, and the first two move exactly
    `exchange_bytes` (the dynamic one: the formula at the ceiling that ran);
  * the model's block (`blocks.dit_block`, jitted under `jax.set_mesh(mesh)`, inputs split over
    "data" as the sharded train step places them) runs the shard_map layer when the mesh fits
    (2 more all-to-alls than the same block traced without the context, moving `exchange_bytes`)
    and the plain layer otherwise (expert axis 1, or G not divisible by the devices: no extra
    all-to-all), with the same outputs as on one device either way.

Exits 0 when every check passes; prints one line per check and the failures otherwise.
"""
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before JAX starts
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ecdit.accelerated import blocks  # noqa: E402
from ecdit.accelerated import expert_parallel as ep  # noqa: E402
from ecdit.accelerated import diffmoe, routing, token_choice  # noqa: E402
from ecdit.core.params import init_block, init_predictor  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from tests.helpers import moe_layer, normal, topc_margin  # noqa: E402
from tests.tolerances import FLOAT32, NEAR_TIE, assert_close  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")  # as tests/conftest.py

DEVICES = 8
# (data, expert) -> layer shapes (G, S, D, E, F, capacity_factor): G % 8 == 0, E % expert == 0
CASES = {
    (2, 4): [(8, 16, 8, 8, 12, 2.0), (16, 12, 6, 4, 8, 1.0)],
    (1, 8): [(8, 16, 8, 8, 12, 2.0)],
    (4, 2): [(8, 10, 4, 6, 6, 1.5)],
    (8, 1): [(8, 12, 4, 4, 6, 1.0)],                             # pure data parallelism: no exchange
}


def mesh_of(data, expert, explicit=False):
    """A ("data", "expert") mesh over the 8 devices; jax.make_mesh's default axis types are
    Explicit, jax.sharding.Mesh's Auto: both must work."""
    if explicit:
        return jax.make_mesh((data, expert), ep.GROUPS)
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(data, expert), ep.GROUPS)


def layer_without_near_ties(g, s, d, e, f, capacity_factor, seed=0):
    """moe_layer inputs whose affinities keep every C-th and (C+1)-th choice NEAR_TIE apart."""
    capacity = routing.expert_capacity(s, e, capacity_factor)
    for k in range(seed, seed + 100):
        args = moe_layer(k, g, s, d, e, f)
        if topc_margin(routing.router_affinity(args[0], args[1]), capacity) > NEAR_TIE:
            return args
    raise AssertionError("no draw without near ties in 100 seeds")


def loss_of(fn, target, *extra):
    """A scalar that depends on every input through the output: sum(out * target)."""
    return lambda x, w_router, w1, w2: jnp.sum(fn(x, w_router, w1, w2, *extra)[0] * target)


VARIANTS = {"shard_map": ep.expert_choice_moe_sharded, "gspmd": ep.expert_choice_moe_gspmd}


def check_sharded_layers_equal_the_single_device_layer(mesh, shape):
    g, s, d, e, f, cf = shape
    args = layer_without_near_ties(*shape)
    want_out, want = routing.expert_choice_moe(*args, cf)
    sharded = ep.shard_layer_inputs(*args, mesh)
    for name, fn in VARIANTS.items():
        out, got = fn(*sharded, cf, mesh)
        assert out.shape == want_out.shape and out.sharding.spec == jax.P(ep.GROUPS), (name, out.sharding)
        assert_close(out, want_out, FLOAT32, err_msg=f"{name} out")
        assert_close(got["gating"], want["gating"], FLOAT32, err_msg=f"{name} gating")
        for key in ("index", "experts_per_token"):
            assert got[key].shape == want[key].shape, (name, key)
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=f"{name} {key}")


def check_sharded_gradients_equal_the_single_device_gradients(mesh, shape):
    g, s, d, e, f, cf = shape
    args = layer_without_near_ties(*shape, seed=1)
    target = np.random.default_rng(7).standard_normal((g, s, d)).astype(np.float32)
    want = jax.grad(loss_of(routing.expert_choice_moe, target, cf), argnums=(0, 1, 2, 3))(*args)
    sharded = ep.shard_layer_inputs(*args, mesh)
    for name, fn in VARIANTS.items():
        got = jax.jit(jax.grad(loss_of(fn, target, cf, mesh), argnums=(0, 1, 2, 3)))(*sharded)
        for arg, a, b in zip(("x", "w_router", "w1", "w2"), got, want):
            assert_close(a, b, FLOAT32, err_msg=f"{name} d loss / d {arg}")


def check_the_exchange_moves_exactly_the_formulas_bytes(mesh, shape):
    """Forward: two all-to-alls and no other collective, 2 (n-1)/n E G_l C D x 4 bytes per device.
    Gradient: four all-to-alls (each one's transpose is another), plus only the all-reduces of the
    weights' gradients over the axes that replicate them."""
    g, s, d, e, f, cf = shape
    args = ep.shard_layer_inputs(*moe_layer(0, g, s, d, e, f), mesh)
    capacity = routing.expert_capacity(s, e, cf)
    formula = ep.exchange_bytes(g, e, capacity, d, mesh.shape["expert"], data_axis_size=mesh.shape["data"])
    forward = ep.collective_bytes(ep.compiled_text(ep.expert_choice_moe_sharded, *args, capacity_factor=cf,
                                                   mesh=mesh), DEVICES)
    if mesh.shape["expert"] == 1:
        assert forward == {"count": {}}, forward
        return
    assert forward == {"all-to-all": formula, "count": {"all-to-all": 2}}, (forward, formula)
    grad = jax.jit(jax.grad(loss_of(ep.expert_choice_moe_sharded, np.ones((g, s, d), np.float32), cf, mesh),
                            argnums=(0, 1, 2, 3)))
    backward = ep.collective_bytes(grad.lower(*args).compile().as_text(), DEVICES)
    assert backward["all-to-all"] == 2 * formula and backward["count"]["all-to-all"] == 4, (backward, formula)
    assert set(backward) <= {"all-to-all", "all-reduce", "count"}, backward


def check_a_mesh_that_does_not_divide_the_layer_is_refused(mesh, shape):
    g, s, d, e, f, cf = shape
    layers = {"expert choice": lambda a: ep.expert_choice_moe_sharded(*a, cf, mesh),
              "token choice": lambda a: ep.token_choice_moe_sharded(*a, cf, 2, mesh),
              "pools": lambda a: ep.pool_moe_sharded(*a, predictor_of(d, a[1].shape[1]), cf, mesh),
              "dynamic pools": lambda a: ep.pool_moe_dynamic_sharded(
                  *a, predictor_of(d, a[1].shape[1]), np.full(a[1].shape[1], 0.5, np.float32), mesh)}
    for layer, run in layers.items():
        for args, name in ((moe_layer(0, DEVICES + 1, s, d, e, f), "x"),
                           (moe_layer(0, g, s, d, mesh.shape["expert"] + 1, f), "w_router")):
            try:
                run(args)
            except ValueError as err:
                assert str(err).startswith(f"{name}:"), (layer, err)
            else:
                raise AssertionError(f"{layer}, {name}: an indivisible layer was accepted")


# ---------------------------------------------------------------------------------------------
# Token choice and DiffMoE's pools on the mesh
# ---------------------------------------------------------------------------------------------

def topk_margin(affinity, k):
    """Smallest gap, over tokens, between the k-th and (k+1)-th largest affinity of a token."""
    a = np.sort(np.asarray(affinity, np.float64), axis=-1)[..., ::-1]  # (G, S, E)
    return float(np.min(a[..., k - 1] - a[..., k]))


def token_choice_layer(g, s, d, e, f, seed=0, k=2):
    """moe_layer inputs whose tokens' top-k choices sit NEAR_TIE clear of the next expert."""
    for n in range(seed, seed + 200):
        args = moe_layer(n, g, s, d, e, f)
        if topk_margin(routing.router_affinity(args[0], args[1]), k) > NEAR_TIE:
            return args
    raise AssertionError("no draw without near ties in 200 seeds")


def predictor_of(d, e, seed=3):
    return init_predictor(np.random.default_rng(seed), d, e)


def dynamic_layer(g, s, d, e, f, seed=0):
    """Pool inputs, a predictor and thresholds whose every k_ge is clear of ties: each sigmoid(P)
    NEAR_TIE away from its tau_e and the k_ge-th / (k_ge+1)-th affinities NEAR_TIE apart."""
    for n in range(seed, seed + 200):
        args = moe_layer(n, g, s, d, e, f)
        predictor = predictor_of(d, e, n)
        rng = np.random.default_rng(n)
        probs = np.asarray(jax.nn.sigmoid(diffmoe.capacity_predictor(args[0], predictor)), np.float64)  # (G, S, E)
        threshold = np.quantile(probs.reshape(-1, e), rng.uniform(0.3, 0.8, e), axis=0).diagonal().astype(np.float32)
        if np.min(np.abs(probs - threshold)) <= NEAR_TIE:
            continue
        k = (probs > threshold).sum(axis=1)                       # (G, E)
        a = np.sort(np.swapaxes(np.asarray(routing.router_affinity(args[0], args[1]), np.float64), 1, 2),
                    axis=-1)[..., ::-1]                           # (G, E, S)
        gaps = [a[i, j, k[i, j] - 1] - a[i, j, k[i, j]] for i in range(g) for j in range(e) if 0 < k[i, j] < s]
        if not gaps or min(gaps) > NEAR_TIE:
            return (*args, predictor, threshold)
    raise AssertionError("no draw without near ties in 200 seeds")


def place(args, mesh, replicated):
    """device_put x over groups, the replicated arguments everywhere, w1 / w2 over experts."""
    x, w_router, w1, w2 = ep.shard_layer_inputs(*args[:4], mesh)
    everywhere = NamedSharding(ep._auto(mesh), P())
    return (x, w_router, w1, w2, *[jax.device_put(a, everywhere) for a in replicated])


def assert_records_equal(got, want, exact, close, name):
    for key in exact:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=f"{name} {key}")
    for key in close:
        assert_close(got[key], want[key], FLOAT32, err_msg=f"{name} {key}")


def check_sharded_token_choice_equals_the_single_device_layer(mesh, shape):
    g, s, d, e, f, cf = shape
    args = token_choice_layer(g, s, d, e, f)
    want_out, want = token_choice.token_choice_moe(*args, cf, 2)
    x, w_router, w1, w2 = place(args, mesh, ())
    out, got = ep.token_choice_moe_sharded(x, w_router, w1, w2, cf, 2, mesh)
    assert out.sharding.spec == jax.P(ep.GROUPS), out.sharding
    assert_close(out, want_out, FLOAT32, err_msg="token choice out")
    assert_records_equal(got, want, ("index", "experts", "kept", "experts_per_token"), ("gating", "aux_loss"),
                         "token choice")
    target = np.random.default_rng(7).standard_normal((g, s, d)).astype(np.float32)
    loss = lambda fn, *extra: lambda *a: jnp.sum(fn(*a, *extra)[0] * target) + fn(*a, *extra)[1]["aux_loss"]
    want_grad = jax.grad(loss(token_choice.token_choice_moe, cf, 2), argnums=(0, 1, 2, 3))(*args)
    got_grad = jax.jit(jax.grad(loss(ep.token_choice_moe_sharded, cf, 2, mesh), argnums=(0, 1, 2, 3)))(
        x, w_router, w1, w2)
    for arg, a, b in zip(("x", "w_router", "w1", "w2"), got_grad, want_grad):
        assert_close(a, b, FLOAT32, err_msg=f"token choice d loss / d {arg}")
    if mesh.shape["expert"] > 1:
        capacity = routing.expert_capacity(s, e, cf)
        formula = ep.exchange_bytes(g, e, capacity, d, mesh.shape["expert"], data_axis_size=mesh.shape["data"])
        forward = ep.collective_bytes(ep.compiled_text(ep.token_choice_moe_sharded, x, w_router, w1, w2,
                                                       capacity_factor=cf, num_selected=2, mesh=mesh), DEVICES)
        assert forward["all-to-all"] == formula and forward["count"]["all-to-all"] == 2, (forward, formula)
        assert set(forward) <= {"all-to-all", "all-reduce", "count"}, forward    # + the aux loss's pmean


def check_sharded_pools_equal_the_single_device_pools(mesh, shape):
    """DiffMoE's training form: expert choice per pool + the predictor; kth_score averaged over
    all G pools (pmean over the mesh) equals pool_moe's mean over pools."""
    g, s, d, e, f, cf = shape
    args = layer_without_near_ties(*shape)
    predictor = predictor_of(d, e)
    want_out, want = diffmoe.pool_moe(*args, predictor, cf)
    x, w_router, w1, w2, pr = place(args, mesh, (predictor,))
    out, got = ep.pool_moe_sharded(x, w_router, w1, w2, pr, cf, mesh)
    assert_close(out, want_out, FLOAT32, err_msg="pool out")
    assert_records_equal(got, want, ("index", "experts_per_token", "assignment"),
                         ("gating", "predictor_logits", "kth_score"), "pool")
    target = np.random.default_rng(7).standard_normal((g, s, d)).astype(np.float32)

    def loss(fn, *extra):
        def value(x_, wr, a, b, p):
            out_, r = fn(x_, wr, a, b, p, *extra)
            return jnp.sum(out_ * target) + diffmoe.predictor_loss(r["predictor_logits"], r["assignment"])
        return value

    want_grad = jax.grad(loss(diffmoe.pool_moe, cf), argnums=(0, 1, 2, 3, 4))(*args, predictor)
    got_grad = jax.jit(jax.grad(loss(ep.pool_moe_sharded, cf, mesh), argnums=(0, 1, 2, 3, 4)))(x, w_router, w1, w2, pr)
    for arg, a, b in zip(("x", "w_router", "w1", "w2", "predictor"), got_grad, want_grad):
        jax.tree.map(lambda u, v: assert_close(u, v, FLOAT32, err_msg=f"pool d loss / d {arg}"), a, b)


def check_sharded_dynamic_pools_equal_the_single_device_pools(mesh, shape):
    """DiffMoE's inference form: k_ge per pool from the predictor and tau; every device runs the
    ceiling of the largest k_ge on the mesh, as one device does."""
    g, s, d, e, f, cf = shape
    *args, predictor, threshold = dynamic_layer(g, s, d, e, f)
    want_out, want = diffmoe.pool_moe_dynamic(*args, predictor, threshold)
    x, w_router, w1, w2, pr, th = place(args, mesh, (predictor, threshold))
    out, got = ep.pool_moe_dynamic_sharded(x, w_router, w1, w2, pr, th, mesh)
    assert_close(out, want_out, FLOAT32, err_msg="dynamic out")
    assert_records_equal(got, want, ("capacity", "slots", "assignment", "experts_per_token"), ("predictor_logits",),
                         "dynamic")
    if mesh.shape["expert"] > 1:                                  # every branch holds its own exchange
        text = ep.compiled_text(ep.pool_moe_dynamic_sharded, x, w_router, w1, w2, pr, th, mesh=mesh)
        ceilings = diffmoe._ceilings(s)
        moved = ep.collective_bytes(text, DEVICES)
        formula = sum(ep.exchange_bytes(g, e, c, d, mesh.shape["expert"], data_axis_size=mesh.shape["data"])
                      for c in ceilings)                          # the program holds every branch once
        assert moved["count"]["all-to-all"] == 2 * len(ceilings) and moved["all-to-all"] == formula, (moved, formula)


# The block check: B images of S tokens, width D, E experts; group sizes (tokens) per mesh
BLOCK = dict(b=8, s=16, d=8, heads=2, kv_heads=1, text=4, text_width=8, experts=4)


def block_inputs(seed=0):
    """dit_block's inputs (x, c, y, params, text_mask) for BLOCK, AdaLN gates open."""
    k = BLOCK
    rng = np.random.default_rng(seed)
    params = init_block(rng, k["d"], k["text_width"], k["heads"], k["kv_heads"], 2 * k["d"],
                        num_experts=k["experts"], adaln_zero=False)
    mask = np.ones((k["b"], k["text"]), bool)
    return (normal(rng, (k["b"], k["s"], k["d"])), normal(rng, (k["b"], k["d"])),
            normal(rng, (k["b"], k["text"], k["text_width"])), params, mask)


def check_the_block_runs_the_shard_map_layer_under_a_mesh_context_that_fits(mesh, _shape):
    """dit_block under jax.set_mesh: groups of 16 tokens (G = 8, one per device) take the
    shard_map layer when the expert axis is >= 2; groups of 32 (G = 4) and an expert axis of 1
    fall back to the plain layer. Outputs equal the one-device block's either way."""
    k = BLOCK
    x, c, y, params, mask = block_inputs()
    want_out, want = blocks.dit_block(x, c, y, params, k["heads"], k["kv_heads"], 2.0, 16, mask)
    batch, replicated = NamedSharding(mesh, P(ep.DATA)), NamedSharding(mesh, P())
    placed = [jax.device_put(a, batch) for a in (x, c, y, mask)]
    params = jax.device_put(params, replicated)

    def block(group_size):
        return jax.jit(lambda x_, c_, y_, m_, p_: blocks.dit_block(x_, c_, y_, p_, k["heads"], k["kv_heads"], 2.0,
                                                                   group_size, m_))

    for group_size in (16, 32):
        fn, args = block(group_size), (*placed, params)
        with jax.set_mesh(mesh):
            out, got = fn(*args)
            with_context = ep.collective_bytes(fn.lower(*args).compile().as_text(), DEVICES)
        without = ep.collective_bytes(block(group_size).lower(*args).compile().as_text(), DEVICES)
        groups = k["b"] * k["s"] // group_size
        fits = mesh.shape["expert"] > 1 and groups % DEVICES == 0
        extra = with_context["count"].get("all-to-all", 0) - without["count"].get("all-to-all", 0)
        moved = with_context.get("all-to-all", 0) - without.get("all-to-all", 0)
        capacity = routing.expert_capacity(group_size, k["experts"], 2.0)
        formula = ep.exchange_bytes(groups, k["experts"], capacity, k["d"], mesh.shape["expert"],
                                    data_axis_size=mesh.shape["data"]) if fits else 0
        assert (extra, moved) == ((2, formula) if fits else (0, 0)), (group_size, extra, moved, formula)
        if group_size == 16:
            assert_close(out, want_out, FLOAT32, err_msg="block out")
            for key in ("index", "experts_per_token"):
                np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def main() -> int:
    assert jax.device_count() == DEVICES, f"expected {DEVICES} simulated devices, got {jax.device_count()}"
    failures, t0 = [], time.perf_counter()
    runs = [(check, mesh_of(*axes), shape) for axes, shapes in CASES.items() for shape in shapes
            for check in (check_sharded_layers_equal_the_single_device_layer,
                          check_sharded_gradients_equal_the_single_device_gradients,
                          check_the_exchange_moves_exactly_the_formulas_bytes)]
    runs += [(check, mesh_of(*axes), shapes[0]) for axes, shapes in CASES.items()
             for check in (check_sharded_token_choice_equals_the_single_device_layer,
                           check_sharded_pools_equal_the_single_device_pools,
                           check_sharded_dynamic_pools_equal_the_single_device_pools)]
    runs += [(check_sharded_layers_equal_the_single_device_layer, mesh_of(2, 4, explicit=True), CASES[(2, 4)][0]),
             (check_a_mesh_that_does_not_divide_the_layer_is_refused, mesh_of(2, 4), CASES[(2, 4)][0])]
    runs += [(check_the_block_runs_the_shard_map_layer_under_a_mesh_context_that_fits, mesh_of(*axes), None)
             for axes in ((2, 4), (8, 1))]
    for check, mesh, shape in runs:
        label = f"{check.__name__} mesh={dict(mesh.shape)} {mesh.axis_types[0]} shape={shape}"
        t = time.perf_counter()
        try:
            check(mesh, shape)
            print(f"ok    {time.perf_counter() - t:5.1f}s  {label}", flush=True)
        except Exception as err:                                 # report every failure, not only the first
            failures.append(label)
            print(f"FAIL  {label}\n      {type(err).__name__}: {err}", flush=True)
    print(f"{len(runs) - len(failures)}/{len(runs)} checks passed in {time.perf_counter() - t0:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
