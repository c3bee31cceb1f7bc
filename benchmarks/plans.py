"""What the report measures: the smoke, quick and full plans, and the names of what they time.

A plan lists the sizes of every section of the report (A-H, see report.py); `make_plan(name,
backend)` returns one. The names of the measured variants are made here too, so the sweep, the
targets, the plots and the markdown all read the same keys:

    "<kind>:<mode>"               e.g. "expert_choice:fwd", "dense:fwdbwd" (kinds: workloads.LAYER_KINDS)
    "expert_choice[E=<E>]:<mode>" the E sweep (section B), where one row times several E
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import workloads as W

ALLOCATOR_SETTINGS = [
    ("default", None),
    ("hugetlb", "glibc.malloc.hugetlb=1"),
    ("no-mmap", "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"),
]

EC, ONEHOT, TC, DENSE = W.EXPERT_CHOICE, W.EXPERT_CHOICE_ONEHOT, W.TOKEN_CHOICE, W.DENSE


def key(kind: str, mode: str) -> str:
    """The name of one measured variant: kind and mode ('fwd', 'jit', 'fwdbwd', 'check', 'ref', 'acc')."""
    return f"{kind}:{mode}"


def expert_choice_at(e) -> str:
    """The kind name of the expert-choice layer with `e` experts in the E sweep (section B)."""
    return f"{EC}[E={e}]"


GRID_VARIANTS = [(EC, "fwd"), (EC, "jit"), (DENSE, "fwd"), (DENSE, "jit"), (ONEHOT, "fwd"),
                 (TC, "fwd"), (EC, "fwdbwd"), (DENSE, "fwdbwd"), (EC, "check"), (DENSE, "check")]


@dataclass
class Plan:
    name: str
    peak_sizes: tuple = (1024, 2048, 3072)
    peak_repeats: int = 5
    # A: S x D grid at one E, f_c; tokens per batch (G S) per D
    grid_D: tuple = (256, 512)
    grid_S: tuple = (256, 1024, 4096)
    grid_E: int = 8
    grid_fc: float = 2.0
    tokens: dict = field(default_factory=lambda: {256: 8192, 512: 8192, 1024: 8192})
    grid_rounds: int = 3
    grid_rounds_by_D: dict = field(default_factory=dict)   # overrides grid_rounds per D
    grid_max_S_by_D: dict = field(default_factory=dict)    # largest S timed at a D (time budget)
    onehot_max_work: float = 8.0     # one-hot timed where its cost ~ 1 + S / (4 D) stays below this
    # B: E x f_c sweep at these (S, D)
    sweep_SD: tuple = ((1024, 256),)
    sweep_E: tuple = (4, 8, 16, 32, 64)
    sweep_fc: tuple = (1.0, 2.0)
    sweep_rounds: int = 3
    sweep_fwdbwd_max_D: int = 1024
    # C: compiled memory (compile only)
    memory_S: tuple = (256, 1024, 4096, 16384)
    memory_D: tuple = (256,)
    memory_G: int = 2
    memory_E: tuple = (4, 8, 16, 32, 64)
    memory_kinds: tuple = ((EC, "fwd"), (ONEHOT, "fwd"), (TC, "fwd"), (DENSE, "fwd"), (EC, "fwdbwd"),
                           (DENSE, "fwdbwd"))
    # D: stage profile
    profile: tuple = ()
    profile_rounds: int = 5
    # E: NumPy reference against JAX
    reference: tuple = ()
    reference_rounds: int = 3
    # F: DiT block
    blocks: tuple = ()
    block_rounds: int = 3
    # G: model: (size, train batch, sampler batch, sampler steps), kinds
    model: tuple | None = ("tiny", 32, 8, 10)
    model_kinds: tuple = W.MODEL_KINDS
    model_train_kinds: tuple = W.MODEL_KINDS
    model_rounds: int = 5          # G: its samplers are noisy at 3 (2026-12-04: EC-DiT 0.49-0.70 s)
    # I: DiffMoE's dynamic-capacity layer at chosen token counts
    dynamic: tuple = ()
    dynamic_rounds: int = 3
    # H: allocator probe in subprocesses
    probe: W.Case | None = None
    probe_settings: tuple = tuple(ALLOCATOR_SETTINGS)
    probe_reps: int = 1
    probe_rounds: int = 3
    dtypes: tuple = ("float32",)
    # roofline: STREAM arrays of this many float32 (roofline.memory_bandwidth)
    bandwidth_floats: int = 1 << 25
    # K: train step utilisation (preset's train config) against batch and width
    utilisation: tuple = ()
    utilisation_rounds: int = 3
    utilisation_profile_steps: int = 10      # K3: steps of the step_probe row run under the profiler
    # K2: the step under process-level settings (fresh processes): (size, batch), how many settings
    step_probe: tuple | None = None
    step_settings: int = 3
    step_probe_rounds: int = 5
    step_probe_reps: int = 1
    # L: inference overhead of EC-DiT over its dense base model (Fig. 4)
    overhead: tuple = ()
    overhead_rounds: int = 3
    overhead_profile_calls: int = 3          # L: sampler calls of each kind run under the profiler

    def grid_case(self, s: int, d: int, e: int | None = None, fc: float | None = None, dtype="float32") -> W.Case:
        g = max(1, self.tokens.get(d, 8192) // s)
        return W.Case(S=s, D=d, E=self.grid_E if e is None else e, fc=self.grid_fc if fc is None else fc,
                      G=g, dtype=dtype)


def make_plan(name: str, backend: str = "cpu") -> Plan:
    """The sweep of one report size: 'smoke', 'quick' (default) or 'full'."""
    gpu = backend == "gpu"
    dtypes = ("float32", "bfloat16") if gpu else ("float32",)
    if name == "smoke":             # the shapes of the suites' smoke sizes: compiled once, shared
        return Plan(
            name="smoke", peak_sizes=(64,), peak_repeats=1,
            grid_D=(16,), grid_S=(32,), grid_E=8, tokens={16: 64}, grid_rounds=1,
            sweep_SD=((32, 16),), sweep_E=(8, 16), sweep_fc=(2.0,), sweep_rounds=1,
            memory_S=(32, 64), memory_D=(16,), memory_E=(8, 16),
            memory_kinds=((EC, "fwd"), (ONEHOT, "fwd"), (DENSE, "fwd")),
            profile=(W.Case(S=32, D=16, E=8, fc=2.0, G=2),), profile_rounds=1,
            reference=(W.Case(S=32, D=16, E=8, fc=2.0, G=2),), reference_rounds=1,
            blocks=tuple(W.SUITE_BLOCK_CASES["smoke"]), block_rounds=1,
            model=W.SUITE_MODEL["smoke"], model_kinds=("expert_choice",), model_train_kinds=("expert_choice",),
            model_rounds=1,
            probe=W.Case(S=32, D=16, E=8, fc=2.0, G=2), probe_settings=(ALLOCATOR_SETTINGS[0],),
            probe_rounds=1, dtypes=("float32",),
            dynamic=(W.DynamicCase(B=2, S=16, D=16, E=4, fractions=(1 / 8, 1 / 4)),), dynamic_rounds=1,
            bandwidth_floats=1 << 16, utilisation=(W.StepCase("micro", 4), W.StepCase("micro", 4, width=48)),
            utilisation_rounds=1, step_probe=("micro", 4), step_settings=1, step_probe_rounds=1,
            overhead=(W.OverheadCase("micro", 2, 2),), overhead_rounds=1, overhead_profile_calls=1)
    if name == "quick":
        return Plan(
            name="quick", peak_sizes=(1024, 2048), peak_repeats=5,
            grid_D=(256, 512), grid_S=(256, 1024, 4096), grid_E=8, tokens={256: 8192, 512: 8192},
            grid_rounds=3, grid_rounds_by_D={256: 5},
            sweep_SD=((1024, 256),), sweep_rounds=4,
            memory_S=(256, 1024, 4096, 16384), memory_D=(256,),
            profile=(W.Case(S=1024, D=512, E=8, fc=2.0, G=8),), profile_rounds=5,
            reference=(W.Case(S=256, D=256, E=8, fc=2.0, G=8), W.Case(S=1024, D=256, E=8, fc=2.0, G=2)),
            reference_rounds=2, blocks=(W.BlockCase(B=4, S=256, D=256),),
            model=("tiny", 32, 8, 10), model_kinds=("expert_choice", "dense", "dense_matched"),
            model_train_kinds=("expert_choice", "dense_matched"),
            probe=W.Case(S=1024, D=512, E=8, fc=2.0, G=4), probe_reps=1, dtypes=dtypes,
            dynamic=(W.DynamicCase(B=16, S=256, D=256),),
            utilisation=(W.StepCase("tiny", 16), W.StepCase("tiny", 64), W.StepCase("tiny", 16, width=256)),
            step_probe=("tiny", 16), step_probe_rounds=3,
            overhead=(W.OverheadCase("tiny", 8, 20),))
    if name == "full":
        return Plan(
            name="full", peak_sizes=(1024, 2048, 3072), peak_repeats=5,
            grid_D=(256, 512, 1024), grid_S=(256, 1024, 4096, 16384), grid_E=8,
            tokens={256: 16384, 512: 8192, 1024: 4096}, grid_rounds=3,
            grid_max_S_by_D={1024: 4096}, grid_rounds_by_D={256: 4},
            sweep_SD=((1024, 256), (4096, 256), (1024, 512), (4096, 512), (1024, 1024), (4096, 1024)),
            sweep_rounds=3, sweep_fwdbwd_max_D=512,
            memory_S=(256, 1024, 4096, 16384), memory_D=(256, 1024),
            profile=(W.Case(S=1024, D=256, E=8, fc=2.0, G=16), W.Case(S=1024, D=256, E=64, fc=2.0, G=16),
                     W.Case(S=1024, D=512, E=8, fc=2.0, G=8), W.Case(S=1024, D=1024, E=8, fc=2.0, G=4)),
            reference=(W.Case(S=256, D=256, E=8, fc=2.0, G=8), W.Case(S=1024, D=256, E=8, fc=2.0, G=2),
                       W.Case(S=1024, D=512, E=8, fc=2.0, G=2)),
            blocks=(W.BlockCase(B=4, S=256, D=256), W.BlockCase(B=2, S=1024, D=512)),
            model=("tiny", 64, 16, 25), model_kinds=W.MODEL_KINDS, model_train_kinds=W.MODEL_KINDS,
            probe=W.Case(S=1024, D=512, E=8, fc=2.0, G=8), probe_reps=2, dtypes=dtypes,
            dynamic=(W.DynamicCase(B=16, S=256, D=256), W.DynamicCase(B=16, S=256, D=512)),
            utilisation=tuple(W.StepCase("tiny", b) for b in (16, 32, 64, 128))
            + tuple(W.StepCase("tiny", b, width=w) for w in (128, 256) for b in (16, 64))
            + (W.StepCase("small", 8), W.StepCase("small", 32)),
            step_probe=("tiny", 16), step_probe_reps=2,
            overhead=(W.OverheadCase("tiny", 16, 20), W.OverheadCase("small", 8, 20),
                      W.OverheadCase("XL", 2, 4, depth=2)))
    raise ValueError(f"plan: expected 'smoke', 'quick' or 'full', got {name!r}")
