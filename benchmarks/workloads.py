"""The workloads every benchmark times: sizes, inputs, and one zero-argument callable per
(variant, implementation, mode). Shared by the pytest-benchmark suites and the report, so both
time exactly the same thing.

Variants of the FFN/MoE layer (all take x (G, S, D) and return (G, S, D)), named as the FFN kinds
are everywhere in ecdit (config values, CLI, parameter keys), the one-hot form by its function:
  expert_choice         expert-choice MoE, gather dispatch + scatter-add combine (`expert_choice_moe`)
  expert_choice_onehot  the same layer as the literal Algorithm 1, with the (G, E, C, S) one-hot
                        tensor (`expert_choice_moe_onehot`)
  token_choice          token-choice top-2 (GShard), the paper's Sec. 3.5 baseline (`token_choice_moe`)
  dense                 the FLOP-equal dense FFN: hidden width H = E C F / S (= f_c F when E C = S f_c),
                        so it does exactly the expert matmul FLOPs of `expert_choice`, with no routing
                        (the fair baseline)

Implementations: `acc` (JAX, accelerated/) and `ref` (NumPy, reference/).
Modes:
  fwd     the public function: its shared argument check (shapes, and a finite-value scan of
          every input array, once per JAX array object) and then its jit-compiled body
  jit     the compiled body alone (`fn.jitted`), no argument check
  fwdbwd  jax.jit(jax.value_and_grad(sum(layer(x, W) * cotangent))) w.r.t. x and every weight;
          inside the trace the check sees tracers and only checks shapes
  check   the argument check alone (what `fwd` pays over `jit`)

FLOPs counted (`Case.flops`): the two expert matmuls, 2 * 2 * G * E * C * D * F. Router
(2 G S D E), GELU and combine are not counted: they are the overhead being measured.
"""
from __future__ import annotations

import functools
import math
from unittest import mock
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from ecdit import accelerated, reference
from ecdit.accelerated import diffmoe as DM
from ecdit.accelerated import routing as R
from ecdit.accelerated.blocks import dit_block
from ecdit.accelerated.sample import sample
from ecdit.core import params as P
from ecdit.core.config import ModelConfig, TrainConfig, expert_capacity, preset
from ecdit.core.params import init_model, randomize_zero_init
from ecdit.reference import blocks as reference_blocks
from ecdit.systems import text
from ecdit.systems import train as T
from ecdit.systems.optim import init_state
from ecdit.systems.sampling import sample_noise

EXPERT_CHOICE = "expert_choice"
EXPERT_CHOICE_ONEHOT = "expert_choice_onehot"
TOKEN_CHOICE = "token_choice"
DENSE = "dense"
LAYER_KINDS = (EXPERT_CHOICE, EXPERT_CHOICE_ONEHOT, TOKEN_CHOICE, DENSE)
LAYER_NAMES = {
    EXPERT_CHOICE: "EC MoE (gather/scatter)",
    EXPERT_CHOICE_ONEHOT: "EC MoE (one-hot Alg. 1)",
    TOKEN_CHOICE: "token-choice top-2",
    DENSE: "dense FFN (FLOP-equal)",
}
_FUNCTIONS = {                      # kind -> (module under accelerated/ or reference/, function)
    EXPERT_CHOICE: ("routing", "expert_choice_moe"),
    EXPERT_CHOICE_ONEHOT: ("routing", "expert_choice_moe_onehot"),
    TOKEN_CHOICE: ("token_choice", "token_choice_moe"),
    DENSE: ("primitives", "feed_forward"),
}
TOP_K = 2                           # token choice: top-2, the activation of f_c = 2 (Sec. 3.5)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One layer size: G groups of S tokens of width D, E experts of hidden F, capacity factor fc."""
    S: int
    D: int
    E: int
    fc: float
    G: int = 1
    F: int | None = None             # expert hidden width; None = 4 D (DiT; each expert = the dense FFN)
    dtype: str = "float32"

    @property
    def hidden(self) -> int:
        return 4 * self.D if self.F is None else self.F

    @property
    def C(self) -> int:
        return expert_capacity(self.S, self.E, self.fc)

    @property
    def H(self) -> int:
        """Hidden width of the FLOP-equal dense FFN: S H = E C F (exact when E C = S f_c)."""
        return max(1, int(round(self.E * self.C * self.hidden / self.S)))

    @property
    def flop_equal(self) -> bool:
        return self.E * self.C * self.hidden == self.S * self.H

    @property
    def tokens(self) -> int:
        return self.G * self.S

    @property
    def flops(self) -> float:
        """Expert matmul FLOPs of one forward call: 2 matmuls x 2 G E C D F."""
        return 4.0 * self.G * self.E * self.C * self.D * self.hidden

    @property
    def dense_flops(self) -> float:
        return 4.0 * self.G * self.S * self.D * self.H

    def layer_flops(self, kind: str) -> float:
        return self.dense_flops if kind == DENSE else self.flops

    @property
    def label(self) -> str:
        fc = f"{self.fc:g}"
        dt = "" if self.dtype == "float32" else f" {self.dtype}"
        return f"S={self.S} D={self.D} E={self.E} fc={fc} G={self.G}{dt}"

    @property
    def key(self) -> str:
        """A short id usable in test ids and file names."""
        return f"S{self.S}-D{self.D}-E{self.E}-fc{self.fc:g}-G{self.G}" + ("" if self.dtype == "float32" else f"-{self.dtype}")

    def weight_bytes(self) -> int:
        return 4 * (2 * self.E * self.D * self.hidden + self.D * self.E)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _uniform(rng, shape, std) -> np.ndarray:
    """Zero-mean uniform values of standard deviation `std`, float32 (fast for big weights)."""
    a = rng.random(shape, dtype=np.float32)
    a -= np.float32(0.5)
    a *= np.float32(std * math.sqrt(12.0))
    return a


@functools.lru_cache(maxsize=8)
def _expert_weights(d: int, e: int, f: int, seed: int):
    """Router and expert weights, cached: the E sweep times every E of a row at once."""
    rng = np.random.default_rng([seed, d, e, f])
    w_router = (rng.standard_normal((d, e), dtype=np.float32) / np.float32(math.sqrt(d)))
    return w_router, _uniform(rng, (e, d, f), 1 / math.sqrt(d)), _uniform(rng, (e, f, d), 1 / math.sqrt(f))


def clear_weight_cache():
    """Drop the cached expert weights (they reach GiBs at D = 1024, E = 64)."""
    _expert_weights.cache_clear()


@dataclass
class Arrays:
    """NumPy inputs of one case (float32) and, once `to_device` ran, their JAX twins."""
    case: Case
    host: dict
    device: dict = field(default_factory=dict)

    def to_device(self):
        if not self.device:
            dt = jnp.dtype(self.case.dtype)
            self.device = {k: jnp.asarray(v, dtype=dt if v.dtype.kind == "f" else None)
                           for k, v in self.host.items()}
        return self.device

    def release(self):
        self.device = {}


def make_arrays(case: Case, seed: int = 0) -> Arrays:
    """x, router and expert weights (LeCun scale), the dense FFN's weights and a cotangent."""
    rng = np.random.default_rng([seed, case.G, case.S, case.D])
    d, h = case.D, case.H
    w_router, w1, w2 = _expert_weights(d, case.E, case.hidden, seed)
    host = {
        "x": rng.standard_normal((case.G, case.S, d), dtype=np.float32),
        "w_router": w_router, "w1": w1, "w2": w2,
        "ffn_w1": _uniform(rng, (d, h), 1 / math.sqrt(d)),
        "ffn_w2": _uniform(rng, (h, d), 1 / math.sqrt(h)),
        "cotangent": rng.standard_normal((case.G, case.S, d), dtype=np.float32),
    }
    return Arrays(case, host)


def dtype_support(dtype: str) -> str | None:
    """None if every layer variant runs in `dtype` (forward and fwd+bwd, tiny sizes), else the
    reason it does not (e.g. the shared argument checks refuse the dtype)."""
    if dtype == "float32":
        return None
    case = Case(S=16, D=8, E=4, fc=2.0, G=1, dtype=dtype)
    arrays = make_arrays(case)
    try:
        for kind in LAYER_KINDS:
            for mode in ("fwd", "fwdbwd"):
                make_call(kind, "acc", mode, case, arrays)()
    except (ValueError, TypeError) as exc:
        return f"{kind} {mode}: {exc}"
    return None


# ---------------------------------------------------------------------------------------------
# Callables
# ---------------------------------------------------------------------------------------------

def layer_function(kind: str, impl: str = "acc"):
    """The public layer function of a variant in `accelerated/` (impl 'acc') or `reference/`."""
    module, name = _FUNCTIONS[kind]
    return getattr(getattr(accelerated if impl == "acc" else reference, module), name)


def check_function(kind: str):
    """The argument check alone: the layer's contract (ecdit.core.contracts), which both halves run."""
    fn = layer_function(kind, "acc")
    return fn.contract.bind(fn)


def layer_args(kind: str, case: Case, arrays: dict) -> tuple:
    """Positional arguments of the layer (static ones, capacity_factor and k, included)."""
    if kind == DENSE:
        return arrays["x"], arrays["ffn_w1"], arrays["ffn_w2"]
    args = (arrays["x"], arrays["w_router"], arrays["w1"], arrays["w2"], case.fc)
    return args + (TOP_K,) if kind == TOKEN_CHOICE else args


@functools.lru_cache(maxsize=64)
def fwdbwd_function(kind: str, fc: float):
    """jit(value_and_grad) of sum(layer * cotangent) w.r.t. x and every weight of the layer."""
    fn = layer_function(kind, "acc")
    if kind == DENSE:
        def loss(x, w1, w2, ct):
            return jnp.sum(fn(x, w1, w2) * ct)
        argnums = (0, 1, 2)
    else:
        static = (fc, TOP_K) if kind == TOKEN_CHOICE else (fc,)

        def loss(x, w_router, w1, w2, ct):
            out, _ = fn(x, w_router, w1, w2, *static)
            return jnp.sum(out * ct)
        argnums = (0, 1, 2, 3)
    return jax.jit(jax.value_and_grad(loss, argnums=argnums))


def _dynamic_args(kind: str, case: Case, arrays: dict) -> tuple:
    """The array arguments only (what a fwdbwd function takes, cotangent last)."""
    n = 3 if kind == DENSE else 4
    return layer_args(kind, case, arrays)[:n] + (arrays["cotangent"],)


def make_call(kind: str, impl: str, mode: str, case: Case, arrays: Arrays):
    """A zero-argument callable running one layer call to completion (block_until_ready)."""
    if impl == "ref":
        if mode not in ("fwd", "check"):
            raise ValueError(f"mode: the NumPy reference has only 'fwd' and 'check', got {mode!r}")
        args = layer_args(kind, case, arrays.host)
        fn = layer_function(kind, "ref") if mode == "fwd" else check_function(kind)
        return lambda: fn(*args)
    dev = arrays.to_device()
    if mode == "fwdbwd":
        g = fwdbwd_function(kind, case.fc)
        dargs = _dynamic_args(kind, case, dev)
        return lambda: jax.block_until_ready(g(*dargs))
    args = layer_args(kind, case, dev)
    if mode == "check":
        fn = check_function(kind)
        return lambda: fn(*args)
    fn = layer_function(kind, "acc")
    if mode == "jit":
        fn = fn.jitted
    elif mode != "fwd":
        raise ValueError(f"mode: expected 'fwd', 'jit', 'fwdbwd' or 'check', got {mode!r}")
    return lambda: jax.block_until_ready(fn(*args))


def compiled_memory(kind: str, mode: str, case: Case, arrays: Arrays) -> dict | None:
    """XLA's compiled memory analysis of one accelerated call: bytes of arguments, outputs and
    temporaries (None where the backend does not report it). `mode` 'fwd' or 'fwdbwd'."""
    dev = arrays.to_device()
    if mode == "fwdbwd":
        lowered = fwdbwd_function(kind, case.fc).lower(*_dynamic_args(kind, case, dev))
    else:
        lowered = layer_function(kind, "acc").jitted.lower(*layer_args(kind, case, dev))
    try:
        m = lowered.compile().memory_analysis()
    except Exception:                                              # backend without the analysis
        return None
    if m is None:
        return None
    return {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
            "temp": int(m.temp_size_in_bytes),
            "working": int(m.output_size_in_bytes + m.temp_size_in_bytes)}


# ---------------------------------------------------------------------------------------------
# Where the EC layer's time goes: one compiled function per stage of Eq. 5-8
# ---------------------------------------------------------------------------------------------

def ec_stage_calls(case: Case, arrays: Arrays) -> dict:
    """Zero-argument callables for each stage of the EC layer, each compiled alone and fed the
    previous stage's real output: router (Eq. 5), top-C (Eq. 6), dispatch gather (Eq. 7), the
    experts, combine scatter-add (Eq. 8), experts-per-token count.

    The stages are the public functions `accelerated.routing.expert_choice_moe` is built from,
    so the profile follows the layer if its implementation changes."""
    dev = arrays.to_device()
    x, wr, w1, w2 = dev["x"], dev["w_router"], dev["w1"], dev["w2"]
    c, s = case.C, case.S
    affinity = R.router_affinity.jitted(x, wr)
    gating, index = R.expert_choice_gating.jitted(affinity, c)
    done = jax.block_until_ready
    calls = {
        "router (x W_r, softmax)": lambda: done(R.router_affinity.jitted(x, wr)),
        "top-C per expert": lambda: done(R.expert_choice_gating.jitted(affinity, c)),
    }
    x_in = R.dispatch.jitted(x, index)
    x_e = R.expert_ffn.jitted(x_in, w1, w2)
    calls.update({
        "dispatch (gather)": lambda: done(R.dispatch.jitted(x, index)),
        "experts (2 matmuls + GELU)": lambda: done(R.expert_ffn.jitted(x_in, w1, w2)),
        "combine (scatter-add)": lambda: done(R.combine.jitted(x_e, gating, index, s)),
    })
    calls["experts per token"] = lambda: done(R.experts_per_token.jitted(index, s))
    return calls


# ---------------------------------------------------------------------------------------------
# DiffMoE: the dynamic-capacity layer at chosen token counts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DynamicCase:
    """A DiffMoE pool of B images x S tokens of width D, E experts of hidden 4 D; `fractions`: the
    share of the pool each expert takes (k_e = fraction N, set through the thresholds)."""
    B: int
    S: int
    D: int
    E: int = 8
    fractions: tuple = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)

    @property
    def N(self) -> int:
        return self.B * self.S

    @property
    def label(self) -> str:
        return f"B={self.B} S={self.S} (N={self.N}) D={self.D} E={self.E}"


def dynamic_thresholds(scores: np.ndarray, k: int) -> np.ndarray:
    """Per expert, a threshold between its k-th and (k+1)-th largest score, so that exactly k
    scores lie above it (scores (N, E) without ties at that rank). (E,) float32."""
    top = -np.sort(-scores, axis=0)                              # (N, E) descending
    above = top[k - 1] if k >= 1 else np.ones(scores.shape[1], scores.dtype)
    below = top[k] if k < scores.shape[0] else np.zeros(scores.shape[1], scores.dtype)
    return ((above.astype(np.float64) + below) / 2).astype(np.float32)


def make_dynamic_calls(case: DynamicCase, seed: int = 0) -> dict:
    """{label: (call, capacity (E,), slots)}: the compiled dynamic layer (`.jitted`) with the
    thresholds set so each expert takes fraction x N tokens, and the static training form (k = N / E,
    f_c = 1) beside it."""
    rng = np.random.default_rng([seed, case.N, case.D])
    d, e, f = case.D, case.E, 4 * case.D
    w_router, w1, w2 = _expert_weights(d, e, f, seed)
    x = jnp.asarray(rng.standard_normal((case.B, case.S, d), dtype=np.float32))
    predictor = {"w1": jnp.asarray(_uniform(rng, (d, d), 1 / math.sqrt(d))), "b1": jnp.zeros((d,)),
                 "w2": jnp.asarray(_uniform(rng, (d, e), 1 / math.sqrt(d))), "b2": jnp.zeros((e,))}
    w_router, w1, w2 = jnp.asarray(w_router), jnp.asarray(w1), jnp.asarray(w2)
    scores = np.asarray(accelerated.primitives.sigmoid(DM.capacity_predictor(x, predictor))).reshape(case.N, e)  # (N, E)
    calls = {}
    for fraction in case.fractions:
        k = max(1, int(round(fraction * case.N)))
        tau = jnp.asarray(dynamic_thresholds(scores, k))
        _, routing = DM.diffmoe_moe_dynamic(x, w_router, w1, w2, predictor, tau)
        call = (lambda tau=tau: jax.block_until_ready(
            DM.diffmoe_moe_dynamic.jitted(x, w_router, w1, w2, predictor, tau)))
        calls[f"dynamic k_e = N/{round(1 / fraction)}"] = (call, np.asarray(routing["capacity"]),
                                                           int(routing["slots"]))
    _, static = DM.diffmoe_moe(x, w_router, w1, w2, predictor, 1.0)
    k = static["index"].shape[-1]
    calls["static top-k, f_c = 1"] = (lambda: jax.block_until_ready(
        DM.diffmoe_moe.jitted(x, w_router, w1, w2, predictor, 1.0)), np.full(e, k), k)
    return calls


# ---------------------------------------------------------------------------------------------
# The DiT block
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockCase:
    """A batch of B images of S tokens through one DiT block of width D (heads of 64)."""
    B: int
    S: int
    D: int
    E: int = 8
    fc: float = 2.0
    L: int = 16                      # text tokens
    heads: int | None = None

    @property
    def num_heads(self) -> int:
        return self.heads or max(1, self.D // 64)

    @property
    def num_kv_heads(self) -> int:
        return max(1, self.num_heads // 2)

    @property
    def label(self) -> str:
        return f"B={self.B} S={self.S} D={self.D} E={self.E} fc={self.fc:g}"

    @property
    def key(self) -> str:
        return f"B{self.B}-S{self.S}-D{self.D}-E{self.E}-fc{self.fc:g}"


BLOCK_KINDS = (EXPERT_CHOICE, DENSE)  # EC block; dense block with the FLOP-equal FFN (hidden f_c F)


def make_block(case: BlockCase, kind: str, seed: int = 0) -> tuple[tuple, dict]:
    """(x, c, y, text_mask) as NumPy and the block's parameters (AdaLN not zero, so every path
    computes). kind 'expert_choice': MoE of E experts of hidden 4 D; 'dense': one FFN of hidden f_c 4 D."""
    rng = np.random.default_rng([seed, case.B, case.S, case.D])
    d, f = case.D, 4 * case.D
    if kind == EXPERT_CHOICE:
        params = P.init_block(rng, d, d, case.num_heads, case.num_kv_heads, f, num_experts=case.E, adaln_zero=False)
    else:
        params = P.init_block(rng, d, d, case.num_heads, case.num_kv_heads, int(round(case.fc * f)), adaln_zero=False)
    x = rng.standard_normal((case.B, case.S, d), dtype=np.float32)
    c = rng.standard_normal((case.B, d), dtype=np.float32)
    y = rng.standard_normal((case.B, case.L, d), dtype=np.float32)
    mask = np.ones((case.B, case.L), dtype=bool)
    return (x, c, y, mask), params


def make_block_call(case: BlockCase, kind: str, impl: str, mode: str = "fwd"):
    """Zero-argument callable: one DiT block forward (public API) or fwd+bwd (jitted)."""
    (x, c, y, mask), params = make_block(case, kind)
    if impl == "ref":
        return lambda: reference_blocks.dit_block(x, c, y, params, case.num_heads, case.num_kv_heads, case.fc,
                                                  None, mask)


    jp = jax.tree.map(jnp.asarray, params)
    jx, jc, jy, jm = (jnp.asarray(a) for a in (x, c, y, mask))
    if mode == "fwd":
        return lambda: jax.block_until_ready(
            dit_block(jx, jc, jy, jp, case.num_heads, case.num_kv_heads, case.fc, None, jm))
    g = _block_fwdbwd(case.num_heads, case.num_kv_heads, case.fc)
    return lambda: jax.block_until_ready(g(jp, jx, jc, jy, jm))


@functools.lru_cache(maxsize=16)
def _block_fwdbwd(num_heads: int, num_kv_heads: int, fc: float):
    """jit(value_and_grad) of a DiT block w.r.t. its parameters and x (one per static setting,
    so equal shapes reuse the compiled function)."""
    def loss(p, x_, c_, y_, m_):     # every array an argument: closed-over arrays would be
        out, _ = dit_block(x_, c_, y_, p, num_heads, num_kv_heads, fc, None, m_)
        return jnp.sum(out * x_)     # constants of the trace, and their value check would fail
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


# ---------------------------------------------------------------------------------------------
# The whole model: train step and sampler
# ---------------------------------------------------------------------------------------------

MODEL_KINDS = ("expert_choice", "dense", "dense_matched", "token_choice")
MODEL_NAMES = {
    "expert_choice": "EC-DiT",
    "dense": "dense (hidden F)",
    "dense_matched": "dense FLOP-equal (f_c F)",
    "token_choice": "token choice top-2",
}


def model_config(size: str, kind: str):
    """A model of preset `size` ('micro', 'tiny' or 'small') with its FFN kind set; 'micro' is a
    two-layer toy for the smoke test."""
    if size == "micro":
        base = ModelConfig(name="micro", image_size=8, patch_size=2, depth=2, width=32, num_heads=2,
                           num_kv_heads=1, num_experts=4, text_width=16, text_depth=1, text_heads=2,
                           freq_dim=16)
    else:
        base = preset(size)
    if kind == "dense_matched":
        return base.replace(ffn_kind="dense", dense_matched=True)
    return base.replace(ffn_kind=kind)


def make_train_step_call(size: str, kind: str, batch_size: int):
    """Zero-argument callable: one jit-compiled optimisation step (forward + backward + the optimiser update)."""
    cfg = model_config(size, kind)
    tcfg = TrainConfig(batch_size=batch_size, warmup_steps=0, mask_ratio=0.0)
    state = init_state(init_model(cfg, 0), tcfg)
    batch = T.make_batch(0, 0, cfg, tcfg)
    return lambda: jax.block_until_ready(T.run_step(state, batch, cfg, tcfg))


@dataclass(frozen=True)
class StepCase:
    """The training step of a preset as `ecdit train` runs it (its train preset: masking, EMA,
    frozen text encoder), at a batch size and optionally another width (heads of 16 wide)."""
    size: str
    batch: int
    width: int | None = None

    def configs(self):
        from ecdit.core.config import train_preset
        cfg = model_config(self.size, "expert_choice")
        if self.width is not None and self.width != cfg.width:
            heads = max(1, self.width // 16)
            cfg = cfg.replace(width=self.width, num_heads=heads, num_kv_heads=max(1, heads // 2))
        return cfg, train_preset(self.size if self.size != "micro" else "tiny").replace(batch_size=self.batch)

    @property
    def label(self) -> str:
        cfg, _ = self.configs()
        return f"{self.size} D={cfg.width} batch {self.batch}"


def make_step_case_call(case: StepCase) -> tuple:
    """(zero-argument callable running one step, XLA's FLOP count of that compiled step, images per
    step). The FLOPs are `compiled.cost_analysis()`'s: every dot and elementwise op of forward,
    backward and optimiser, as XLA counts them."""
    cfg, tcfg = case.configs()
    state = init_state(init_model(cfg, 0), tcfg)
    batch = T.make_batch(0, 0, cfg, tcfg)
    compiled = T.train_step.jitted.lower(state, batch, cfg, tcfg, cfg.train_group_size).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    return (lambda: jax.block_until_ready(T.run_step(state, batch, cfg, tcfg))), flops, case.batch


@dataclass(frozen=True)
class OverheadCase:
    """EC-DiT against its dense base model (FFN of hidden F in every layer: the paper's Fig. 4
    comparison, not activation-matched) in the guided sampler. `depth` overrides the preset's (the
    XL-shaped rows run at reduced depth); batch = images sampled (CFG doubles it)."""
    size: str
    batch: int
    steps: int
    depth: int | None = None

    def config(self, kind: str):
        cfg = model_config(self.size, kind)
        return cfg if self.depth is None else cfg.replace(depth=self.depth)

    @property
    def label(self) -> str:
        cfg = self.config("expert_choice")
        return f"{self.size}" + (f" at depth {self.depth}" if self.depth is not None else "") + \
            f" (D={cfg.width}, E={cfg.num_experts}, {cfg.num_tokens} tokens, batch {self.batch}, {self.steps} steps)"


def make_overhead_calls(case: OverheadCase, params_fn=None) -> dict:
    """{kind: (sampler callable, activated parameters)} for 'expert_choice' and 'dense'.
    params_fn(cfg) -> device parameters; default: init_model with its zero-initialised layers
    filled (randomize_zero_init); `device_params` for the paper's sizes."""
    out = {}
    for kind in ("expert_choice", "dense"):
        cfg = case.config(kind)
        params = (params_fn(cfg) if params_fn is not None
                  else jax.tree.map(jnp.asarray, randomize_zero_init(init_model(cfg, 0))))
        ids, mask = text.tokenize_batch(["a red circle"] * case.batch, cfg.max_text_len)
        noise = sample_noise(np.random.default_rng(0), case.batch, cfg)
        call = (lambda params=params, noise=noise, ids=ids, mask=mask, cfg=cfg: jax.block_until_ready(
            sample(params, noise, ids, mask, cfg, num_steps=case.steps)))
        out[kind] = (call, P.count_params(cfg)["activated"])
    return out


# ---------------------------------------------------------------------------------------------
# The paper's sizes: parameters made on the device, a latent batch, the donated train step
# ---------------------------------------------------------------------------------------------

def _scale_only(rng, shape, fan_in):
    """Stands in for core.params._normal while `device_params` reads init_model's tree: no draws,
    a zero-stride array of the right shape whose one value is the std 1 / sqrt(fan_in)."""
    return np.broadcast_to(np.float32(1.0 / math.sqrt(fan_in)), shape)


def device_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Parameters with init_model's tree, shapes, dtypes and scales, drawn on the device.

    init_model draws in NumPy, one float64 normal at a time: the XL preset's 5.4B parameters take
    minutes on a CPU core. Timing does not depend on the values (expert choice gives every expert
    exactly C tokens whatever they are), so here init_model runs with its normal draws replaced by
    zero-stride arrays carrying the scale (`_scale_only`; nothing allocated), and each such leaf
    becomes scale times a window, at a random offset, of one vector of N(0, 1) draws made on the
    device (one compiled program per distinct shape, not one per leaf). The small arrays init_model
    draws itself (text embeddings) are kept; zero-initialised matrices (AdaLN-Zero, the final layer)
    get scale 0.05 as in randomize_zero_init, so no matmul runs on zeros; biases stay 0."""
    with mock.patch.object(P, "_normal", _scale_only):
        host = init_model(cfg, seed)
    leaves, treedef = jax.tree.flatten(host)
    drawn = {}                                                    # leaf index -> std
    for i, a in enumerate(leaves):
        a = np.asarray(a)
        if a.ndim and a.size > 1 and not any(a.strides):           # a scale-only stand-in
            drawn[i] = float(a.reshape(-1)[0])
        elif a.ndim >= 2 and not a.any():                           # AdaLN-Zero, final layer
            drawn[i] = 0.05
    out = [jnp.asarray(a) for a in leaves]
    if drawn:
        largest = max(leaves[i].size for i in drawn)
        base = jax.random.normal(jax.random.PRNGKey(seed), (2 * largest,), jnp.float32)
        offsets = np.random.default_rng(seed).integers(0, largest + 1, size=len(leaves))
        for i, std in drawn.items():
            out[i] = _scaled_window(base, int(offsets[i]), std, tuple(leaves[i].shape))
    return jax.tree.unflatten(treedef, out)


@functools.partial(jax.jit, static_argnums=(3,))
def _scaled_window(base, offset, std, shape):
    """std * base[offset : offset + prod(shape)] reshaped to `shape` (compiled once per shape)."""
    return jax.lax.dynamic_slice(base, (offset,), (math.prod(shape),)).reshape(shape) * std


def synthetic_step_batch(cfg: ModelConfig, tcfg: TrainConfig, seed: int = 0) -> dict:
    """One training step's inputs (`sample_step_inputs`) for any preset: uniform random images of
    the config's shape and channels (the Table 1 presets take 8-channel latents, which the shapes
    data set does not draw), one caption, masking as the train config says, on the device."""
    rng = np.random.default_rng(seed)
    b = tcfg.batch_size
    images = rng.random((b, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.float32)
    labels = [np.zeros((b, cfg.num_tokens), np.int32)] if cfg.shape_head_layer is not None else []
    batch = T.sample_step_inputs(rng, images, ["a red circle"] * b, cfg, tcfg, *labels)
    return jax.tree.map(jnp.asarray, batch)


def compile_train_step(cfg: ModelConfig, tcfg: TrainConfig, params_fn=device_params) -> dict:
    """The train step as a training loop runs it, compiled once: its state donated (the new state
    takes the old one's memory, so a step needs one copy of parameters and optimiser state).

    Returns {call: zero-argument callable running one step on its own carried state, flops: XLA's
    cost analysis of the step (every dot and elementwise op), memory: XLA's memory analysis
    (bytes of arguments, outputs, temporaries), compile_s, images: batch size}."""
    import time
    state = init_state(params_fn(cfg), tcfg)
    batch = synthetic_step_batch(cfg, tcfg)
    step = jax.jit(T.train_step.jitted, static_argnums=(2, 3, 4), donate_argnums=(0,))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, cfg, tcfg, cfg.train_group_size).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    memory = None if mem is None else {"argument": int(mem.argument_size_in_bytes),
                                       "output": int(mem.output_size_in_bytes),
                                       "alias": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes)}
    carried = {"state": state}

    def call():
        carried["state"], metrics = compiled(carried["state"], batch)
        return jax.block_until_ready(metrics)
    return {"call": call, "flops": float(cost.get("flops", float("nan"))) if cost else float("nan"),
            "memory": memory, "compile_s": compile_s, "images": tcfg.batch_size}


def make_sampler_call(size: str, kind: str, batch_size: int, num_steps: int):
    """Zero-argument callable: Euler + classifier-free guidance sampling of a batch (the paper's
    Fig. 4 measures this: inference time)."""
    cfg = model_config(size, kind)
    params = jax.tree.map(jnp.asarray, randomize_zero_init(init_model(cfg, 0)))
    ids, mask = text.tokenize_batch(["a red circle"] * batch_size, cfg.max_text_len)
    noise = sample_noise(np.random.default_rng(0), batch_size, cfg)
    return lambda: jax.block_until_ready(sample(params, noise, ids, mask, cfg, num_steps=num_steps))


# ---------------------------------------------------------------------------------------------
# Sizes of the pytest-benchmark suites (`pytest benchmarks/ --bench-size=...`)
# ---------------------------------------------------------------------------------------------

SUITE_LAYER_CASES = {
    "smoke": [Case(S=32, D=16, E=8, fc=2.0, G=2)],
    "quick": [Case(S=256, D=256, E=8, fc=2.0, G=16), Case(S=1024, D=256, E=8, fc=2.0, G=4),
              Case(S=4096, D=256, E=8, fc=2.0, G=1)],
    "full": [Case(S=s, D=d, E=8, fc=2.0, G=max(1, 8192 // s)) for d in (256, 512, 1024)
             for s in (256, 1024, 4096)],
}
SUITE_REFERENCE_MAX_TOKENS = {"smoke": 10**9, "quick": 4096, "full": 4096}   # G S above which ref is skipped
SUITE_BLOCK_CASES = {
    "smoke": [BlockCase(B=2, S=16, D=32, E=4, L=4)],
    "quick": [BlockCase(B=4, S=256, D=256)],
    "full": [BlockCase(B=4, S=256, D=256), BlockCase(B=2, S=1024, D=512)],
}
SUITE_MODEL = {     # size, train batch, sampler batch, sampler steps
    "smoke": ("micro", 4, 2, 2),
    "quick": ("tiny", 32, 8, 10),
    "full": ("tiny", 64, 16, 25),
}
