"""Numbers derived from the measured samples, shared by the targets, the plots and the markdown:
ratios within rounds, GFLOP/s, the matmul peak, flatness against E and memory growth with S.

Everything here reads the results dict of a sweep (sweep.measure, or a --json dump) and
computes; nothing is timed or drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import timing
from .plans import EC, ONEHOT, expert_choice_at, key


def ratio(cell: dict, a: str, b: str) -> float | None:
    """Median over rounds of the per-round ratio of variants a / b of one cell (None if either is missing)."""
    s = cell["samples"]
    if a not in s or b not in s:
        return None
    return timing.median_ratio(s[a], s[b])


def peak(results: dict) -> float:
    """The matmul peak of the run: the best of its start and end measurements (GFLOP/s)."""
    return max(results["peak_start"]["peak"], results["peak_end"]["peak"])


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds else float("nan")


def onehot_slowdown_bound(S: int, D: int) -> float:
    """How many times slower the one-hot Algorithm 1 can be than the gather form at equal FLOP
    rate: its dispatch and combine einsums add 2 x 2 G E C S D FLOPs to the experts' 2 x 2 G E C D F
    (F = 4 D), i.e. 1 + S / (4 D)."""
    return 1.0 + S / (4.0 * D)


def expert_choice_cells(results: dict) -> list[tuple[dict, str, dict]]:
    """Every timed cell with an expert-choice and a dense measurement: (case dict, kind name of the
    expert-choice variant in the cell, cell) over the S x D grid and the E sweep."""
    out = []
    for cell in results["grid"]:
        out.append((cell["case"], EC, cell))
    for cell in results["sweep"]:
        for e, case in cell["cases"].items():
            out.append((case, expert_choice_at(e), cell))
    return out


@dataclass(frozen=True)
class Flatness:
    """One (S, D, f_c) row of the E sweep: EC time at E relative to E = 8."""
    label: str
    rows: dict                      # E -> rows per expert per call (G C), every E in 9..64 timed
    ratios_fwd: dict                # E -> t(E) / t(8), public API
    ratios_jit: dict                # E -> t(E) / t(8), compiled body

    def worst(self, mode: str) -> tuple[float, int]:
        """(largest |t(E) / t(8) - 1|, its E) for mode 'fwd' or 'jit'."""
        ratios = self.ratios_fwd if mode == "fwd" else self.ratios_jit
        return max((abs(r - 1.0), e) for e, r in ratios.items())


def flatness(results: dict) -> list[Flatness]:
    """Per (S, D, f_c) of the E sweep that timed E = 8 and some E in 9..64: t(E) / t(8) per mode."""
    rows = []
    for cell in results["sweep"]:
        cases = {int(e): c for e, c in cell["cases"].items()}
        es = [e for e in cases if 8 < e <= 64]
        if 8 not in cases or not es:
            continue
        ratios = {mode: {e: ratio(cell, key(expert_choice_at(e), mode), key(expert_choice_at(8), mode)) for e in es}
                  for mode in ("fwd", "jit")}
        rows.append(Flatness(label=f"S={cell['S']} D={cell['D']} fc={cell['fc']:g}",
                             rows={e: cases[e]["G"] * cases[e]["C"] for e in es},
                             ratios_fwd=ratios["fwd"], ratios_jit=ratios["jit"]))
    return rows


def log_slope(xs, ys) -> float:
    """Slope of log y against log x (least squares); nan for fewer than two points."""
    xs, ys = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(xs, ys, 1)[0]) if len(xs) >= 2 else float("nan")


@dataclass(frozen=True)
class MemoryFit:
    """Compiled working memory against S at one D (fixed E and f_c)."""
    D: int
    slope: float                    # expert choice: working memory ~ S^slope
    onehot_slope: float             # the one-hot Algorithm 1
    per_ECd_min: float              # expert choice's working memory / (4 G E C d bytes), over S
    per_ECd_max: float


def memory_scaling(results: dict) -> list[MemoryFit]:
    """Per D with at least two S where both expert-choice forms report their memory."""
    rows = []
    mem = results.get("memory") or {}
    ec, oh = key(EC, "fwd"), key(ONEHOT, "fwd")
    for d in sorted({r["case"]["D"] for r in mem.get("vs_S", [])}):
        ok = [r for r in mem["vs_S"] if r["case"]["D"] == d and r["bytes"].get(ec) and r["bytes"].get(oh)]
        if len(ok) < 2:
            continue
        s = [r["case"]["S"] for r in ok]
        ec_bytes = [r["bytes"][ec]["working"] for r in ok]
        oh_bytes = [r["bytes"][oh]["working"] for r in ok]
        per = [b / (4 * r["case"]["G"] * r["case"]["E"] * r["case"]["C"] * d) for b, r in zip(ec_bytes, ok)]
        rows.append(MemoryFit(D=d, slope=log_slope(s, ec_bytes), onehot_slope=log_slope(s, oh_bytes),
                              per_ECd_min=min(per), per_ECd_max=max(per)))
    return rows



# ---------------------------------------------------------------------------------------------
# The roofline (benchmarks/roofline.py): time against max(FLOPs / peak, bytes / bandwidth)
# ---------------------------------------------------------------------------------------------

def bandwidth(results: dict) -> float | None:
    """The memory bandwidth of the run: the best of its start and end STREAM measurements (GB/s);
    None for a dump written before the roofline existed."""
    found = [results[k]["bandwidth"] for k in ("bandwidth_start", "bandwidth_end") if results.get(k)]
    return max(found) if found else None


def roofline_bound(results: dict, case: dict, kind: str, mode: str) -> tuple[float, str] | None:
    """(bound seconds, 'compute' or 'memory') of one layer call of a cell: kind 'dense' or an
    expert-choice kind, mode 'jit' / 'fwd' (one forward) or 'fwdbwd' (three times the FLOPs)."""
    from . import roofline
    bw = bandwidth(results)
    if bw is None:
        return None
    dense = kind == "dense"
    flops = (case["dense_flops"] if dense else case["flops"]) * (3 if mode == "fwdbwd" else 1)
    nbytes = roofline.layer_bytes(case, "dense" if dense else "expert_choice", mode)
    p = peak(results)
    return roofline.bound_seconds(flops, nbytes, p, bw), roofline.limit(flops, nbytes, p, bw)


def over_bound(results: dict, case: dict, cell: dict, kind_key: str, mode: str) -> float | None:
    """time / roofline bound of variant `kind_key` ('dense' or an EC kind name of the cell) in `mode`."""
    t = cell["median"].get(key(kind_key, mode))
    b = roofline_bound(results, case, "dense" if kind_key == "dense" else EC, mode)
    return None if t is None or b is None else t / b[0]


def roofline_cells(results: dict, modes=("jit", "fwdbwd")) -> list[tuple[float, str, str]]:
    """(time / bound, label, which roof) of every float32 EC and dense compiled call of the grid and
    the E sweep, in `modes`."""
    out = []
    seen_dense = set()
    for case, ec, cell in expert_choice_cells(results):
        if case["dtype"] != "float32":
            continue
        for mode in modes:
            for kind in (ec, "dense"):
                dense_key = (id(cell), mode)
                if kind == "dense":
                    if dense_key in seen_dense:
                        continue                                 # the E sweep times dense once per row
                    seen_dense.add(dense_key)
                    # the E sweep's dense baseline has the first E's case (every E shares H = f_c F)
                    dcase = cell.get("base", case)
                else:
                    dcase = case
                r = over_bound(results, dcase, cell, kind, mode)
                if r is not None:
                    b = roofline_bound(results, dcase, "dense" if kind == "dense" else EC, mode)
                    name = "dense" if kind == "dense" else "EC"
                    out.append((r, f"{name} {'fwd+bwd' if mode == 'fwdbwd' else 'fwd'} {dcase['label']}", b[1]))
    return out


def step_utilisation(results: dict) -> list[tuple[float, dict]]:
    """(achieved FLOP rate / the run's matmul peak, row) of every train-step row of section K."""
    p = peak(results)
    return [(gflops(r["flops"], r["median"]) / p, r) for r in results.get("utilisation") or []]


def overhead_rows(results: dict) -> list[dict]:
    """Section L: per model shape, measured sampler overhead of EC-DiT over dense (median over rounds
    of t_EC / t_dense - 1) and the theoretical one (activated parameters EC / dense - 1)."""
    out = []
    for row in results.get("overhead") or []:
        s = row["samples"]
        measured = timing.median_ratio(s["expert_choice"], s["dense"]) - 1.0
        act = row["activated"]
        out.append({**row, "measured": measured, "theoretical": act["expert_choice"] / act["dense"] - 1.0})
    return out
