"""The accelerator command's report (benchmarks/accelerator.py): the markdown page and the
one-screen summary, both from its results dict (a run's, or its JSON read back). Nothing here
measures; a section whose part of the results is missing says why instead of a table.
"""
from __future__ import annotations

from .derived import overhead_rows, ratio
from .markdown import fmt_bytes, ms, table
from .plans import DENSE, EC, ONEHOT, TC, key

SECTIONS = ("equivalence", "peaks", "overhead", "layers", "train")   # accelerator.SECTIONS, in its order

HEADINGS = {
    "summary": "## Summary",
    "device": "## Device",
    "peaks": "## Matmul peak and memory bandwidth: measured against the vendor's figures",
    "equivalence": "## Equivalence: the twin against the specification on this device",
    "layers": "## The layer at the paper's shapes: expert choice against dense, one-hot and token choice",
    "overhead": "## Inference overhead at the XL preset's full depth (the paper's Fig. 4)",
    "train": "## The train step: model FLOPs utilisation",
    "sections": "## Sections and time",
    "reproduce": "## Reproduce",
}
PAPER_OVERHEAD = "the paper measured 20-28 % against at most 15 % theoretical (Fig. 4, 8 H100s)"


def _smoke(results: dict) -> bool:
    return results["plan"]["name"] == "smoke"


def _tf(gflops: float | None) -> str:
    return "-" if gflops is None else f"{gflops / 1e3:.1f}" if gflops >= 1e3 else f"{gflops / 1e3:.3f}"


def _millions(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e7 else f"{n / 1e6:.3f}M"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def _peak(results: dict, dtype: str, precision: str = "default") -> float | None:
    for r in (results.get("peaks") or {}).get("matmul", []):
        if r["dtype"] == dtype and r["precision"] == precision:
            return r["gflops"]
    return None


def _status(results: dict, name: str) -> dict:
    return results.get("sections", {}).get(name, {"status": "not run"})


def _missing(results: dict, name: str) -> list[str] | None:
    """A line saying why a section has no figures, or None when it has them."""
    st = _status(results, name)
    if st["status"] == "done" and results.get(name):
        return None
    why = st.get("note") or st["status"]
    return [f"Not measured: {why}.\n"]


# ---------------------------------------------------------------------------------------------
# Numbers shared by the page and the summary
# ---------------------------------------------------------------------------------------------

def layer_rows(results: dict, dtype: str) -> list[dict]:
    """Per timed (D, E) cell of `dtype`: medians (s), ratios within rounds, achieved GFLOP/s."""
    out = []
    for cell in (results.get("layers") or {}).get("cells", []):
        if cell["dtype"] != dtype:
            continue
        inf, tr, med = cell["inference"], cell["train"], cell["median"]
        useful = inf["flops"]
        row = {"D": cell["D"], "E": cell["E"], "C": inf["C"], "C_train": tr["C"], "median": med,
               "ec_dense": ratio(cell, key(EC, "jit"), key(DENSE, "jit")),
               "onehot_ec": ratio(cell, key(ONEHOT, "jit"), key(EC, "jit")),
               "tc_ec": ratio(cell, key(TC, "jit"), key(EC, "jit")),
               "ec_dense_fwdbwd": ratio(cell, key(EC, "fwdbwd"), key(DENSE, "fwdbwd")),
               "ec_gflops": useful / med[key(EC, "jit")] / 1e9,
               "dense_gflops": inf["dense_flops"] / med[key(DENSE, "jit")] / 1e9,
               "ec_fwdbwd_gflops": 3 * tr["flops"] / med[key(EC, "fwdbwd")] / 1e9,
               "dense_fwdbwd_gflops": 3 * tr["dense_flops"] / med[key(DENSE, "fwdbwd")] / 1e9}
        out.append(row)
    return out


def _span(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x"


# ---------------------------------------------------------------------------------------------
# The one-screen summary
# ---------------------------------------------------------------------------------------------

def summary(results: dict) -> str:
    """At most ~20 lines: what ran on which device, and every headline figure."""
    dev = results.get("device", {})
    lines = [f"EC-DiT accelerator command: {dev.get('device_kind', '?')} ({dev.get('backend', '?')}), "
             f"{results.get('date', '')}, {results.get('duration_s', 0) / 60:.1f} min"
             + (" -- SMOKE REHEARSAL: tiny sizes, the times measure nothing" if _smoke(results) else "")]
    if dev.get("jax"):
        cuda = ", ".join(f"{k.replace('_', ' ')} {dev[k]}" for k in ("cuda_runtime", "cuda_driver", "cudnn") if dev.get(k))
        lines.append(f"device: {dev.get('device_count', 1)} x {dev['device_kind']}, memory "
                     f"{fmt_bytes(dev['memory_bytes']) if dev.get('memory_bytes') else 'not reported'}; jax {dev['jax']}, "
                     f"jaxlib {dev['jaxlib']}" + (f"; {cuda}" if cuda else "")
                     + (f"; vendor table: {dev['nominal']}" if dev.get("nominal") else "; not in the vendor table"))
    eq = results.get("equivalence") or {}
    mods = eq.get("modules", {})
    if mods:
        bad = [f"{m} ({r['status']}: {r['failed'] + r['error']} failing)" for m, r in mods.items() if r["status"] != "passed"]
        n = sum(r["passed"] for r in mods.values())
        lines.append(f"equivalence: {'PASSED' if eq.get('ok') else 'NOT PROVEN'} -- {len(mods) - len(bad)}/{len(mods)} "
                     f"modules, {n} tests passed, {eq.get('examples')} examples per property"
                     + (f"; {'; '.join(bad)}" if bad else "")
                     + (f"; not selected: {', '.join(eq['not_selected'])}" if eq.get("not_selected") else ""))
    else:
        lines.append(f"equivalence: NOT RUN ({eq.get('note') or _status(results, 'equivalence').get('note', 'no result')})")
    peaks = (results.get("peaks") or {}).get("matmul", [])
    if peaks:
        parts = []
        for r in peaks:
            nom = f" = {r['gflops'] / (1e3 * r['nominal_tflops']):.0%} of {r['nominal_tflops']:g}" if r.get("nominal_tflops") else ""
            parts.append(f"{r['dtype']}{'' if r['precision'] == 'default' else ' ' + r['precision']} {_tf(r['gflops'])}{nom}")
        bw = results["peaks"]["bandwidth_gbs"]
        nominal = results["peaks"].get("nominal")
        lines.append("matmul peak TFLOP/s: " + "; ".join(parts))
        lines.append(f"memory bandwidth: {bw:.0f} GB/s" + (f" = {bw / nominal['bandwidth_gbs']:.0%} of {nominal['bandwidth_gbs']:g}"
                                                          if nominal else " (device not in the vendor table)"))
    for dtype in (results.get("plan") or {}).get("layer_dtypes", []):
        rows = layer_rows(results, dtype)
        if rows:
            peak = _peak(results, dtype)
            lines.append(f"layer {dtype} (D {'/'.join(str(d) for d in sorted({r['D'] for r in rows}))}, E "
                         f"{'/'.join(str(e) for e in sorted({r['E'] for r in rows}))}): EC/dense {_span(r['ec_dense'] for r in rows)} "
                         f"fwd, {_span(r['ec_dense_fwdbwd'] for r in rows)} fwd+bwd; one-hot/EC {_span(r['onehot_ec'] for r in rows)}; "
                         f"token choice/EC {_span(r['tc_ec'] for r in rows)}; EC up to {_tf(max(r['ec_gflops'] for r in rows))} "
                         f"TFLOP/s ({_pct(max(r['ec_gflops'] for r in rows) / peak) if peak else '-'} of peak)")
    for r in overhead_rows({"overhead": (results.get("overhead") or {}).get("rows", [])}):
        lines.append(f"sampler overhead {r['size']} depth {r['depth']}, batch {r['batch']}: measured {100 * r['measured']:+.1f} % "
                     f"against {100 * r['theoretical']:+.1f} % theoretical ({PAPER_OVERHEAD})")
    tr = results.get("train") or {}
    if tr.get("median"):
        lines.append(f"train step {tr['preset']} batch {tr['batch']}: {ms(tr['median'])} ms, {tr['images_per_s']:.1f} images/s, "
                     f"{_tf(tr['gflops'])} TFLOP/s = MFU {_pct(tr['mfu_measured'])} of the measured float32 peak"
                     + (f", {_pct(tr['mfu_nominal'])} of the vendor's" if tr.get("mfu_nominal") else ""))
    for name in SECTIONS:
        st = _status(results, name)
        if st["status"] in ("skipped", "error", "not run"):
            lines.append(f"{name}: {st['status'].upper()} ({st.get('note', '')})")
    stopped = (results.get("layers") or {}).get("stopped_at")
    if stopped:
        lines.append(f"layers: time budget reached before {stopped} (cells after it not timed)")
    lines.append(f"report: {results.get('report', '?')}; exit status {results.get('exit_status', '?')}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

def section_header(results: dict) -> list[str]:
    dev = results["device"]
    if _smoke(results):
        title = f"# Accelerator command: smoke rehearsal on {dev.get('device_kind', 'cpu')} (measures nothing)\n"
        lead = ("This page comes from a smoke run: every section at tiny sizes with XLA's optimisations off, to prove "
                "that the command runs. None of its times says anything about any device.\n")
    else:
        title = f"# EC-DiT on {dev.get('nominal') or dev.get('device_kind')}: the twin against the spec, and the paper's efficiency claims\n"
        lead = ("Every number on this page was measured in this run, on this device, except the vendor figures of the "
                "peak table, which cite their source.\n")
    notes = "".join(f"\n- {n}" for n in results["plan"].get("notes", []))
    return [title, f"Generated by `{results['command']}` on {results['date']} in {results.get('duration_s', 0) / 60:.1f} "
            f"minutes (budget {results['plan']['budget_s'] / 60:.1f} min, compilation included). {lead}" + notes + "\n"]


def section_summary(results: dict) -> list[str]:
    return [HEADINGS["summary"] + "\n", "```\n" + summary(results) + "\n```\n"]


def section_device(results: dict) -> list[str]:
    dev = results["device"]
    host = dev.get("host", {})
    fields = [("device", dev.get("device_kind")), ("devices of this kind", dev.get("device_count")),
              ("vendor table entry", dev.get("nominal") or "not in the table (no vendor figures)"),
              ("backend", dev.get("backend")), ("platform version", dev.get("platform_version")),
              ("device memory (runtime's limit)", fmt_bytes(dev["memory_bytes"]) if dev.get("memory_bytes") else "not reported"),
              ("jax / jaxlib", f"{dev.get('jax')} / {dev.get('jaxlib')}"),
              ("CUDA runtime / driver / cuDNN", " / ".join(str(dev.get(k, "-")) for k in ("cuda_runtime", "cuda_driver", "cudnn"))
               if dev.get("cuda_runtime") else None),
              ("nvidia-smi", dev.get("nvidia_smi")),
              ("jax_default_matmul_precision", dev.get("matmul_precision") if dev.get("matmul_precision") not in (None, "None")
               else "unset (JAX's default precision)"),
              ("host CPU", f"{host.get('cpu')}, {host.get('cores')} cores, {host.get('memory_gib')} GiB" if host else None),
              ("Python / NumPy", f"{host.get('python')} / {host.get('numpy')}" if host else None),
              ("XLA_FLAGS", host.get("xla_flags"))]
    rows = [[k, " ".join(str(v).split())] for k, v in fields if v is not None]     # one line per cell
    return [HEADINGS["device"] + "\n", table(["", ""], rows), ""]


def section_peaks(results: dict) -> list[str]:
    out = [HEADINGS["peaks"] + "\n"]
    missing = _missing(results, "peaks")
    if missing:
        return out + missing
    pk = results["peaks"]
    nominal = pk.get("nominal")
    out.append("Best of square n x n matmuls (`jnp.matmul` under jit, random inputs, each size timed several times) at "
               "JAX's default precision and at `precision=\"highest\"`. JAX's default computes float32 products with TF32 "
               "tensor cores on NVIDIA Ampere and later and with bfloat16 passes on TPU "
               "(https://docs.jax.dev/en/latest/201/precision.html); \"highest\" is true float32. Every float32 time on "
               "this page runs at the default. Bandwidth: STREAM copy / triad on "
               f"{fmt_bytes(4 * pk['bandwidth']['n_floats'])} arrays, bytes read plus written.\n")
    rows = []
    for r in pk["matmul"]:
        sizes = ", ".join(f"{n}: {_tf(v['jax'])}" for n, v in sorted(r["per_size"].items(), key=lambda kv: int(kv[0])))
        nom = r.get("nominal_tflops")
        rows.append([r["dtype"], r["precision"], _tf(r["gflops"]), sizes,
                     f"{nom:g} ({r['nominal_figure']})" if nom else "-",
                     _pct(r["gflops"] / (1e3 * nom)) if nom else "-"])
    bw = pk["bandwidth_gbs"]
    rows.append(["memory", "STREAM", f"{bw:.0f} GB/s", f"copy {pk['bandwidth']['jax']['copy']:.0f}, triad "
                 f"{pk['bandwidth']['jax']['triad']:.0f} GB/s", f"{nominal['bandwidth_gbs']:g} GB/s" if nominal else "-",
                 _pct(bw / nominal["bandwidth_gbs"]) if nominal else "-"])
    out.append(table(["dtype", "precision", "measured TFLOP/s", "per size n", "vendor figure", "measured / vendor"], rows))
    out.append("\nVendor figures: " + (f"{nominal['name']}, {nominal['source']}; dense matmul TFLOP/s, memory "
                                       f"{nominal['memory_gb']:g} GB." if nominal else
                                       "this device is not in the table of benchmarks/devices.py, so there are none.") + "\n")
    return out


def section_equivalence(results: dict) -> list[str]:
    out = [HEADINGS["equivalence"] + "\n"]
    eq = results.get("equivalence")
    if not eq or not eq.get("modules"):
        why = (eq or {}).get("note") or _status(results, "equivalence").get("note", "no result")
        return out + [f"Not run: {why}.\n"]
    out.append(f"The property tests that compare each `accelerated` module with its `reference` module (pytest `-k "
               f"\"{eq['selection']}\"`), run on this device in {eq['workers']} worker process(es), "
               f"{eq['examples']} derandomized hypothesis examples per property, float32 products at true float32 "
               f"(tests/conftest.py), the tolerances of tests/tolerances.py; {eq['duration_s']:.0f} s"
               + (", stopped at its time limit" if eq.get("timed_out") else "") + ". "
               f"Verdict: **{'every module passed' if eq['ok'] else 'NOT PROVEN'}**.\n")
    rows = [[m, ", ".join(f.split("/")[-1] for f in r["files"]), r["passed"], r["failed"], r["error"], r["skipped"],
             f"**{r['status']}**"] for m, r in eq["modules"].items()]
    out.append(table(["twin module", "test files", "passed", "failed", "errors", "skipped", "status"], rows))
    if eq.get("not_selected"):
        out.append(f"\nNot selected in this run: {', '.join(eq['not_selected'])}.")
    fails = [(m, f) for m, r in eq["modules"].items() for f in r["failures"]]
    if fails:
        out.append("\nFailures (first line of each message):\n")
        out += [f"- `{m}`: `{f['test']}`: {f['message']}" for m, f in fails]
    out.append(f"\nCommand of the selection (one process): `{eq.get('command', '')}`\n")
    return out


def section_layers(results: dict) -> list[str]:
    out = [HEADINGS["layers"] + "\n"]
    missing = _missing(results, "layers")
    if missing and not (results.get("layers") or {}).get("cells"):
        return out + missing
    plan = results["plan"]
    paper = not _smoke(results)
    out.append(f"x (G, S, D) -> (G, S, D) with {plan['layer_tokens']:,} tokens per call. *Forward* (the compiled body, "
               f"`.jitted`): groups of S = {plan['layer_S']} tokens{' (the XL preset' + chr(39) + 's inference group)' if paper else ''}, variants EC = "
               "`accelerated.routing.expert_choice_moe` (gather / scatter), dense = `primitives.feed_forward` with "
               "hidden f_c F (the same expert FLOPs, no routing), one-hot = `expert_choice_moe_onehot` (the literal "
               "Algorithm 1), token choice = `token_choice_moe` top-2. *Forward + backward*: jit(value_and_grad) with "
               f"respect to x and every weight, groups of S = {plan['layer_S_train']}{' (the training group)' if paper else ''}. F = 4 D, "
               "C = round(S f_c / E). Ratios are medians over rounds of per-round ratios (variants timed back to back); "
               "TFLOP/s count the expert matmuls only (4 G E C D F per forward, 3x that forward + backward), so every "
               "variant is credited with the same useful work; % of peak is against the measured matmul peak of the "
               "same dtype at the default precision.\n")
    for dtype in plan["layer_dtypes"]:
        rows = layer_rows(results, dtype)
        if not rows:
            continue
        peak = _peak(results, dtype)

        def of_peak(g):
            return f"{_tf(g)} ({_pct(g / peak) if peak else '-'})"
        out.append(f"**{dtype}, forward** (median ms):\n")
        out.append(table(["D", "E", "C", "EC", "dense", "one-hot", "token choice", "EC / dense", "one-hot / EC",
                          "token choice / EC", "EC TFLOP/s (% of peak)", "dense TFLOP/s (% of peak)"],
                         [[r["D"], r["E"], r["C"], ms(r["median"][key(EC, "jit")]), ms(r["median"][key(DENSE, "jit")]),
                           ms(r["median"][key(ONEHOT, "jit")]), ms(r["median"][key(TC, "jit")]), _span([r["ec_dense"]]),
                           _span([r["onehot_ec"]]), _span([r["tc_ec"]]), of_peak(r["ec_gflops"]), of_peak(r["dense_gflops"])]
                          for r in rows]))
        out.append(f"\n**{dtype}, forward + backward** (median ms):\n")
        out.append(table(["D", "E", "C", "EC", "dense", "EC / dense", "EC TFLOP/s (% of peak)", "dense TFLOP/s (% of peak)"],
                         [[r["D"], r["E"], r["C_train"], ms(r["median"][key(EC, "fwdbwd")]),
                           ms(r["median"][key(DENSE, "fwdbwd")]), _span([r["ec_dense_fwdbwd"]]),
                           of_peak(r["ec_fwdbwd_gflops"]), of_peak(r["dense_fwdbwd_gflops"])] for r in rows]) + "\n")
    stopped = (results.get("layers") or {}).get("stopped_at")
    if stopped:
        out.append(f"The time budget ended before {stopped}; the cells from there on were not timed.\n")
    return out


def section_overhead(results: dict) -> list[str]:
    out = [HEADINGS["overhead"] + "\n"]
    missing = _missing(results, "overhead")
    if missing:
        return out + missing
    rows = overhead_rows({"overhead": results["overhead"]["rows"]})
    out.append("The guided sampler (`accelerated.sample.sample`: Euler, classifier-free guidance 5 on a doubled batch, "
               "the preset's inference group) of EC-DiT (every second layer sparse, f_c = 2; the XL preset has 28 "
               "layers, D = 1152, E = 32 and 256 tokens per image) against the dense model of the same shape whose every FFN has "
               "hidden F (the paper's comparison, not activation-matched), float32 at JAX's default precision, timed in "
               "the same interleaved rounds after one untimed call each (its time, compilation included, in the last "
               "columns). Parameters are drawn on the device at init_model's shapes and scales "
               "(`workloads.device_params`). *Theoretical* = activated parameters of EC-DiT / dense - 1 "
               f"(`core.params.count_params`, text encoder excluded); *measured* = median of t(EC-DiT) / t(dense) - 1; "
               f"{PAPER_OVERHEAD}.\n")
    out.append(table(["model", "EC-DiT sampler ms", "dense sampler ms", "activated params (EC, dense)", "theoretical",
                      "measured", "measured - theoretical (points)", "first call s (EC, dense)"],
                     [[r["label"], ms(r["median"]["expert_choice"]), ms(r["median"]["dense"]),
                       f"{_millions(r['activated']['expert_choice'])} / {_millions(r['activated']['dense'])}",
                       f"{100 * r['theoretical']:+.1f} %", f"{100 * r['measured']:+.1f} %",
                       f"{100 * (r['measured'] - r['theoretical']):+.1f}",
                       f"{r['first_call_s']['expert_choice']:.1f} / {r['first_call_s']['dense']:.1f}"] for r in rows]) + "\n")
    return out


def section_train(results: dict) -> list[str]:
    out = [HEADINGS["train"] + "\n"]
    missing = _missing(results, "train")
    if missing:
        tried = (results.get("train") or {}).get("tried")
        return out + missing + ([f"Tried: {tried}\n"] if tried else [])
    tr = results["train"]
    mem = tr.get("memory") or {}
    out.append("One `ecdit.systems.train.train_step` (forward, backward, the preset's optimiser) compiled once with its "
               "state donated, as a training loop runs it, on a synthetic batch of the preset's shape (uniform random "
               "images or latents, one caption; tokens masked as the preset's train config says: half of them for the "
               "Table 1 presets, as the paper trains), float32 at JAX's default "
               "precision; parameters drawn on the device. FLOPs are XLA's cost analysis of the compiled step (every dot "
               "and elementwise op of forward, backward and optimiser); MFU = FLOP rate / the measured float32 matmul "
               "peak at the default precision (and / the vendor's figure for it).\n")
    out.append(table(["preset", "batch (kept tokens per image)", "optimiser", "ms per step", "images/s", "TFLOP per step",
                      "TFLOP/s", "MFU (measured peak)", "MFU (vendor figure)", "compile s", "XLA memory: args / out / temp"],
                     [[f"{tr['preset']} (depth {tr['depth']}, D {tr['width']}, E {tr['experts']})",
                       f"{tr['batch']} ({tr['kept_tokens']})", tr["optimizer"], ms(tr["median"]), f"{tr['images_per_s']:.1f}",
                       f"{tr['flops'] / 1e12:.2f}", _tf(tr["gflops"]), _pct(tr["mfu_measured"]), _pct(tr["mfu_nominal"]),
                       f"{tr['compile_s']:.0f}",
                       " / ".join(fmt_bytes(mem.get(k)) for k in ("argument", "output", "temp")) if mem else "n/a"]]))
    if tr.get("tried"):
        out.append("\nLarger candidates that did not fit: " + "; ".join(f"{t['preset']} batch {t['batch']}: {t['error']}"
                                                                         for t in tr["tried"]))
    return out + [""]


def section_sections(results: dict) -> list[str]:
    rows = [[name, _status(results, name)["status"], f"{_status(results, name).get('seconds', 0):.0f}",
             _status(results, name).get("note", "")] for name in SECTIONS]
    return [HEADINGS["sections"] + "\n", table(["section", "status", "seconds", "note"], rows), ""]


def section_reproduce(results: dict) -> list[str]:
    return [HEADINGS["reproduce"] + "\n",
            "```bash\npip install -e \".[test]\"          # with the JAX of the machine (or \".[cuda,test]\")\n"
            "ecdit bench --accelerator          # this page: docs/benchmarks-<device>.md and .json\n"
            "ecdit bench --accelerator --smoke  # the rehearsal at tiny sizes (any machine, under a minute)\n```\n"]


def render(results: dict) -> str:
    """The whole page, in order."""
    lines = (section_header(results) + section_summary(results) + section_device(results) + section_peaks(results)
             + section_equivalence(results) + section_layers(results) + section_overhead(results)
             + section_train(results) + section_sections(results) + section_reproduce(results))
    return "\n".join(lines) + "\n"

