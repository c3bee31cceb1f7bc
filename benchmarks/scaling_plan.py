"""The scaling plan of docs/scaling.md, on paper: parameters, training-state memory per device and
the expert exchange per step for the Table 1 backbones on realistic meshes.

    .venv/bin/python -m ecdit.benchmarks.scaling_plan          # prints the tables of docs/scaling.md

Nothing here runs a model: every number is arithmetic on the configs (`ecdit.core.config.preset`),
the parameter counter (`ecdit.core.params.count_params`), the project's sharding rules
(`ecdit.systems.mesh.param_shardings` and `check_mesh`, applied to an abstract mesh of the planned
size) and the exchange formula of the shard_map EC layer (`ecdit.accelerated.expert_parallel.
exchange_bytes`). The hardware figures and the other assumptions are the constants below, each
with its source; docs/scaling.md repeats them.

The per-device parameter counts come from a shape-only copy of `init_model`'s tree
(`shape_tree`), checked at start against the real `init_model` on small configs of the same
structure, so the sharding rule sees exactly the arrays the model has.

GB = 1e9 bytes throughout.
"""
from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from ecdit.accelerated.expert_parallel import exchange_bytes
from ecdit.core.config import ModelConfig, preset, train_preset
from ecdit.core.params import count_params, init_model
from ecdit.systems import mesh as mesh_lib

GB = 1e9

# ---------------------------------------------------------------------------------------------
# Assumptions (each one is named in docs/scaling.md)
# ---------------------------------------------------------------------------------------------

# The paper's variants (Table 1 columns): XL, XXL, 3XL with 8, 16, 32 experts; M with 64.
VARIANTS = ("XL-8E", "XL-16E", "XL-32E", "XXL-8E", "XXL-16E", "XXL-32E",
            "3XL-8E", "3XL-16E", "3XL-32E", "M-64E")
PRESETS = ("XL", "XXL", "3XL", "M")                     # the presets: largest E of each row
# Table 1 "Total Params." of the same variants (paper, billions), printed beside our count
PAPER_TOTAL_B = {"XL-8E": 2.51, "XL-16E": 3.70, "XL-32E": 6.08, "XXL-8E": 4.87, "XXL-16E": 7.73,
                 "XXL-32E": 13.47, "3XL-8E": 10.74, "3XL-16E": 17.87, "3XL-32E": 32.15, "M-64E": 97.21}
# The frozen T5-based text encoder of the paper (Sec. 3.1: "670M"); kept in bf16, no optimiser state
T5_PARAMS, T5_BYTES = 670e6, 2

# Bytes of training state per parameter. Today's code keeps everything in float32: params (4),
# gradients (4, alive during the update), RMSProp's nu and momentum trace (4 + 4), EMA (4).
STATE_VARIANTS = {
    "float32, EMA on (today's code; used in every table)": dict(params=4, grads=4, moments=8, ema=4),
    "float32, no EMA": dict(params=4, grads=4, moments=8, ema=0),
    "bf16 params + grads, float32 moments + EMA": dict(params=2, grads=2, moments=8, ema=4),
    "bf16 everything (params, grads, moments, EMA)": dict(params=2, grads=2, moments=4, ema=2),
}
STATE_BYTES = sum(next(iter(STATE_VARIANTS.values())).values())          # 20 bytes per parameter
# Share of HBM the training state may take when choosing a mesh; the rest is left for
# activations, XLA's buffers and the text encoder (activations are not estimated here).
STATE_BUDGET = 0.6
ACT_BYTES = 4                                           # exchanged activations: float32, as the code computes

# Hardware (vendor spec sheets; "per direction" = half the bidirectional figure):
#   TPU v5p: Google Cloud TPU docs, "TPU v5p" system architecture: 95 GB HBM2e per chip, 459 TFLOPS
#     bf16, inter-chip interconnect 4,800 Gbps per chip (newer page: 1,200 GB/s bidirectional),
#     i.e. 600 GB/s per direction; the slices used here are one ICI domain (3D torus).
#   H100 SXM5: NVIDIA H100 datasheet: 80 GB HBM3, 989 TFLOPS bf16 dense (1,979 with sparsity),
#     NVLink 900 GB/s total (450 GB/s per direction), 8 GPUs per HGX/DGX host.
#   H200 SXM: NVIDIA H200 datasheet: 141 GB HBM3e, same compute and NVLink as H100 SXM.
#   Between GPU hosts: one 400 Gb/s InfiniBand NDR port (ConnectX-7) per GPU, as in DGX H100 / H200:
#     50 GB/s per direction.
HARDWARE = {
    "TPU v5p": dict(hbm_gb=95, tflops=459, host=None, fast=600e9, slow=None,
                    source="Google Cloud TPU docs, TPU v5p: ICI 4,800 Gbps per chip"),
    "H100 80GB": dict(hbm_gb=80, tflops=989, host=8, fast=450e9, slow=50e9,
                      source="NVIDIA H100 SXM datasheet: NVLink 900 GB/s total; IB: 400 Gb/s NDR per GPU"),
    "H200 141GB": dict(hbm_gb=141, tflops=989, host=8, fast=450e9, slow=50e9,
                       source="NVIDIA H200 SXM datasheet: NVLink 900 GB/s total; IB: 400 Gb/s NDR per GPU"),
}
CASES = (("TPU v5p", 64), ("TPU v5p", 256), ("H100 80GB", 8), ("H100 80GB", 64),
         ("H200 141GB", 8), ("H200 141GB", 64))


# ---------------------------------------------------------------------------------------------
# The parameter tree, shapes only
# ---------------------------------------------------------------------------------------------

def _s(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _cross(d_q, d_kv, d_out):
    return {"wq": _s(d_q, d_out), "wk": _s(d_kv, d_out), "wv": _s(d_kv, d_out), "wo": _s(d_out, d_out)}


def shape_tree(cfg: ModelConfig) -> dict:
    """`init_model(cfg)`'s tree with jax.ShapeDtypeStruct leaves (core.params layout), so a
    97B-parameter model can be sharded on paper without allocating it."""
    d, dy, pdim, e = cfg.width, cfg.text_width, cfg.patch_dim, cfg.num_experts
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    tree = {"patch_embed": {"w": _s(pdim, d), "b": _s(d)}}
    if cfg.pos_embedding == "learned":
        tree["pos_embed"] = _s(cfg.num_tokens, d)
    tree["t_mlp"] = {"w1": _s(cfg.freq_dim, d), "b1": _s(d), "w2": _s(d, d), "b2": _s(d)}
    tree["text"] = {"embed": _s(cfg.vocab_size, dy), "pos": _s(cfg.max_text_len, dy),
                    "layers": [{"attn": _cross(dy, dy, dy), "ffn": {"w1": _s(dy, 4 * dy), "w2": _s(4 * dy, dy)}}
                               for _ in range(cfg.text_depth)]}
    if cfg.pooled_text:
        tree["text_pool"] = {"w": _s(dy, d), "b": _s(d)}
    blocks = []
    for layer in range(cfg.depth):
        block = {"adaln": {"w": _s(d, 6 * d), "b": _s(6 * d)},
                 "self_attn": {"wq": _s(d, n * h), "wk": _s(d, k * h), "wv": _s(d, k * h), "wo": _s(n * h, d)},
                 "cross_attn": _cross(d, dy, d)}
        f = cfg.layer_ffn_hidden(layer)
        if layer in cfg.sparse_layers:
            moe = {"w_router": _s(d, e), "w1": _s(e, d, f), "w2": _s(e, f, d)}
            if cfg.has_predictor:
                moe["predictor"] = {"w1": _s(d, d), "b1": _s(d), "w2": _s(d, e), "b2": _s(e)}
                moe["threshold"] = _s(e)
            block[cfg.ffn_kind] = moe
        else:
            block["dense"] = {"w1": _s(d, f), "w2": _s(f, d)}
        blocks.append(block)
    tree["blocks"] = blocks
    tree["final"] = {"adaln": {"w": _s(d, 2 * d), "b": _s(2 * d)}, "linear": {"w": _s(d, pdim), "b": _s(pdim)}}
    return tree


def _miniature(cfg: ModelConfig) -> ModelConfig:
    """The same structure (depth, experts, heads, groups) at a width that initialises in a blink."""
    return cfg.replace(width=cfg.num_heads * 2, text_width=16, text_heads=2, max_text_len=8, freq_dim=16)


def check_shape_tree() -> int:
    """shape_tree == init_model's shapes (structure and every shape) and its DiT part sums to
    count_params' total, on miniatures of every variant and on variants of the optional parts.
    Raises AssertionError on a mismatch; returns the number of configs checked."""
    configs = [_miniature(preset(v)) for v in VARIANTS] + [preset("tiny"), preset("small")]
    configs += [configs[0].replace(capacity_predictor=True, pos_embedding="learned", pooled_text=True),
                preset("tiny", ffn_kind="dense", dense_matched=True), preset("tiny", ffn_kind="diffmoe")]
    for cfg in configs:
        real = jax.tree.map(np.shape, init_model(cfg))
        planned = jax.tree.map(lambda s: tuple(s.shape), shape_tree(cfg))
        if jax.tree.structure(real) != jax.tree.structure(planned) or jax.tree.leaves(real) != jax.tree.leaves(planned):
            raise AssertionError(f"shape_tree({cfg.name!r}) differs from init_model's tree")
        dit = {key: v for key, v in shape_tree(cfg).items() if key != "text"}
        if sum(math.prod(s.shape) for s in jax.tree.leaves(dit)) != count_params(cfg)["total"]:
            raise AssertionError(f"shape_tree({cfg.name!r}) does not sum to count_params' total")
    return len(configs)


# ---------------------------------------------------------------------------------------------
# The arithmetic
# ---------------------------------------------------------------------------------------------

def param_split(cfg: ModelConfig, data: int, expert: int) -> dict:
    """DiT parameters (text encoder apart) per class and per device under mesh.py's rules
    (`param_shardings` on an abstract (data, expert) mesh): 'expert' the stacked expert weights
    (split over expert), 'fsdp' the 2-D weights split over data, 'replicated' the rest (biases,
    router, predictor, 2-D weights data does not divide). Each class: (total, per device)."""
    tree = {key: v for key, v in shape_tree(cfg).items() if key != "text"}
    shardings = mesh_lib.param_shardings(tree, AbstractMesh((data, expert), mesh_lib.AXES))
    out = {c: [0, 0] for c in ("expert", "fsdp", "replicated")}
    for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        names = [a for a in sh.spec if a is not None]
        cls = "expert" if "expert" in names else "fsdp" if "data" in names and data > 1 else "replicated"
        out[cls][0] += math.prod(leaf.shape)
        out[cls][1] += math.prod(sh.shard_shape(leaf.shape))
    return {c: tuple(v) for c, v in out.items()}


def per_device_params(split: dict) -> int:
    return sum(v[1] for v in split.values())


def train_shape(cfg: ModelConfig) -> dict:
    """The paper's step (Sec. 3.1): batch 4096, mask ratio 0.5 -> S' kept tokens per image,
    groups of train_group_size tokens, C = round(group f_c / E)."""
    tc = train_preset(cfg.name)
    kept = tc.kept_tokens(cfg.num_tokens)
    tokens = tc.batch_size * kept
    group = cfg.train_group_size
    return dict(batch=tc.batch_size, kept=kept, tokens=tokens, group=group, groups=tokens // group,
                capacity=cfg.capacity(group), train_cfg=tc)


def candidate_meshes(cfg: ModelConfig, devices: int):
    """(data, expert) with data * expert = devices that check_mesh accepts for the paper's batch
    and that the shard_map layer accepts (groups split over all devices), expert ascending."""
    shape = train_shape(cfg)
    out = []
    for expert in range(1, devices + 1):
        if devices % expert or cfg.num_experts % expert or shape["groups"] % devices:
            continue
        axes = {"data": devices // expert, "expert": expert}
        try:
            mesh_lib.check_mesh(axes, cfg, shape["train_cfg"], num_devices=devices)
        except ValueError:
            continue
        out.append((devices // expert, expert))
    return out


def _bandwidth(hw: str, data: int, expert: int, axis: str) -> tuple[float, str]:
    """Bytes per second one device sends on a ring collective over `axis`, and the link. The
    mesh puts `expert` innermost, so on GPUs an expert axis of at most one host stays on NVLink,
    and the data axis stays on NVLink only when all its peers share a host; otherwise the ring
    crosses InfiniBand and runs at its speed. A TPU slice is one ICI domain."""
    h = HARDWARE[hw]
    if h["host"] is None:
        return h["fast"], "ICI"
    if axis == "expert":
        inside = expert <= h["host"]
    else:
        inside = data <= max(1, h["host"] // expert)
    return (h["fast"], "NVLink") if inside else (h["slow"], "IB")


def exchange_plan(cfg: ModelConfig, hw: str, data: int, expert: int) -> dict:
    """Bytes one device sends in the EC layers' all_to_alls per training step (shard_map layout:
    groups over data x expert) and the time at the assumed link bandwidths."""
    shape = train_shape(cfg)
    fwd = exchange_bytes(shape["groups"], cfg.num_experts, shape["capacity"], cfg.width, expert,
                         dtype_bytes=ACT_BYTES, data_axis_size=data)
    layer_step = 2 * fwd                                 # forward + backward (transpose of all_to_all)
    layers = len(cfg.sparse_layers)
    step = layers * layer_step
    h = HARDWARE[hw]
    if h["host"] is None or expert <= h["host"]:         # one ICI domain, or the expert axis inside a host
        bandwidth, link = _bandwidth(hw, data, expert, "expert")
        seconds = step / bandwidth
    else:                                                # an all_to_all: host - 1 peers over NVLink, the rest over IB
        per_peer = step / (expert - 1)
        seconds = max((h["host"] - 1) * per_peer / h["fast"], (expert - h["host"]) * per_peer / h["slow"])
        link = "NVLink + IB"
    devices = data * expert
    compute = 6 * count_params(cfg)["activated"] * shape["tokens"] / (devices * h["tflops"] * 1e12)
    return dict(g_local=shape["groups"] // devices, tokens=shape["tokens"] // devices, fwd=fwd,
                layer_step=layer_step, layers=layers, step=step, seconds=seconds, link=link, compute=compute)


def weight_traffic(cfg: ModelConfig, hw: str, data: int, expert: int) -> dict:
    """Rough bytes one device sends per step for the weights (float32, ring collectives), with
    today's parameter shardings and the tokens split over data x expert (the shard_map layout):

      over data:    expert-weight gradients all-reduced (replicated over data)  2 (d-1)/d x local expert bytes
                    FSDP weights all-gathered in forward and backward, their
                    gradients reduce-scattered                                   3 (d-1)/d x their full bytes
                    replicated weights' gradients all-reduced                    2 (d-1)/d x local replicated bytes
      over expert:  every non-expert gradient all-reduced (other tokens)         2 (e-1)/e x local non-expert bytes
    """
    s = param_split(cfg, data, expert)
    fd, fe = (data - 1) / data, (expert - 1) / expert
    on_data = (2 * fd * s["expert"][1] + 3 * fd * s["fsdp"][0] + 2 * fd * s["replicated"][1]) * 4
    on_expert = 2 * fe * (s["fsdp"][1] + s["replicated"][1]) * 4
    seconds = on_data / _bandwidth(hw, data, expert, "data")[0] + on_expert / _bandwidth(hw, data, expert, "expert")[0]
    return dict(on_data=on_data, on_expert=on_expert, seconds=seconds,
                data_link=_bandwidth(hw, data, expert, "data")[1], expert_link=_bandwidth(hw, data, expert, "expert")[1])


def evaluate(cfg: ModelConfig, hw: str, data: int, expert: int) -> dict:
    """Everything the tables show for one (model, hardware, mesh)."""
    split = param_split(cfg, data, expert)
    state = STATE_BYTES * per_device_params(split)
    x = exchange_plan(cfg, hw, data, expert)
    w = weight_traffic(cfg, hw, data, expert)
    return dict(data=data, expert=expert, split=split, state=state,
                fits=state <= STATE_BUDGET * HARDWARE[hw]["hbm_gb"] * GB,
                exchange=x, weights=w, comm_seconds=x["seconds"] + w["seconds"])


def choose_mesh(cfg: ModelConfig, hw: str, devices: int) -> dict:
    """The rule of docs/scaling.md: among the meshes check_mesh accepts whose per-device training
    state (today's layout, STATE_BYTES per parameter) fits in STATE_BUDGET of HBM, the one with
    the least estimated communication time per step (EC exchange + weights' collectives; the
    smaller expert axis on a tie). If none fits, the one with the least state, marked not fitting."""
    cands = [evaluate(cfg, hw, d, e) for d, e in candidate_meshes(cfg, devices)]
    fitting = [c for c in cands if c["fits"]]
    if fitting:
        return min(fitting, key=lambda c: (c["comm_seconds"], c["expert"]))
    return min(cands, key=lambda c: (c["state"], c["expert"]))


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------

def _table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _b(n) -> str:
    return f"{n / 1e9:.2f}B"


def _gb(n) -> str:
    return f"{n / GB:.1f}" if n >= 10 * GB else f"{n / GB:.2f}"


def _mb(n) -> str:
    return f"{n / 1e6:.1f}"


def _ms(s) -> str:
    return f"{1e3 * s:.1f}"


def table_assumptions() -> str:
    rows = [["global batch (images / step)", PAPER_BATCH_LINE[0], "paper Sec. 3.1"],
            ["kept tokens per image S'", PAPER_BATCH_LINE[1], "256 tokens, mask ratio 0.5 (Sec. 3.1)"],
            ["tokens per step", PAPER_BATCH_LINE[2], "batch x S'"],
            ["train group / groups per step G", PAPER_BATCH_LINE[3], "group 1024 (Sec. 3.1)"],
            ["f_c, E x C per group", PAPER_BATCH_LINE[4], "C = round(1024 f_c / E): 256, 128, 64, 32 for E = 8, 16, 32, 64"],
            ["exchanged activations", f"{ACT_BYTES} bytes (float32)", "the code computes in float32"],
            ["state budget for choosing a mesh", f"{STATE_BUDGET:.0%} of HBM", "assumption: the rest for activations etc."],
            ["frozen T5 encoder per device", f"{_gb(T5_PARAMS * T5_BYTES)} GB", "670M params in bf16 (Sec. 3.1), replicated"]]
    for hw, h in HARDWARE.items():
        link = f"{h['fast'] / 1e9:.0f} GB/s per direction" + (
            "" if h["slow"] is None else f" in a host of {h['host']}, {h['slow'] / 1e9:.0f} GB/s between hosts")
        rows.append([hw, f"{h['hbm_gb']} GB, {h['tflops']} TFLOPS bf16 dense, {link}", h["source"]])
    return _table(["quantity", "value", "source / note"], rows)


def table_state_bytes() -> str:
    rows = [[name, v["params"], v["grads"], v["moments"], v["ema"], sum(v.values())] for name, v in STATE_VARIANTS.items()]
    return _table(["state variant", "params", "grads", "2 moments", "EMA", "bytes / param"], rows)


def table_params() -> str:
    rows = []
    for v in VARIANTS:
        cfg = preset(v)
        c = count_params(cfg)
        split = param_split(cfg, 1, 1)
        experts = split["expert"][0]
        rows.append([v, cfg.depth, cfg.width, cfg.num_experts, len(cfg.sparse_layers), _b(c["total"]),
                     f"{PAPER_TOTAL_B[v]:.2f}B", _b(c["activated"]), _b(experts), f"{experts / c['total']:.0%}",
                     _b(c["total"] - experts),
                     _b(c["text_encoder"]), _gb(STATE_BYTES * c["total"])])
    return _table(["variant", "layers", "D", "E", "sparse layers", "total (ours)", "total (Table 1)", "activated",
                   "in expert stacks", "share", "rest", "text enc. (stand-in, apart)",
                   f"state GB at {STATE_BYTES} B/param (1 device)"], rows)


def mesh_plan() -> list[dict]:
    """The chosen mesh of every preset on every hardware case."""
    plans = []
    for name in PRESETS:
        cfg = preset(name)
        for hw, n in CASES:
            plans.append(dict(name=name, cfg=cfg, hw=hw, n=n, **choose_mesh(cfg, hw, n)))
    return plans


def _fit(p) -> str:
    return "yes" if p["fits"] else "**no**"


def table_memory(plans) -> str:
    rows = []
    for p in plans:
        s, hbm = p["split"], HARDWARE[p["hw"]]["hbm_gb"] * GB
        ideal = STATE_BYTES * count_params(p["cfg"])["total"] / p["n"]
        rows.append([p["name"], f"{p['hw']} x {p['n']}", f"data={p['data']},expert={p['expert']}",
                     _b(s["expert"][1]), _b(s["fsdp"][1]), _b(s["replicated"][1]), _b(per_device_params(s)),
                     _gb(p["state"]), f"{p['state'] / hbm:.0%}", _fit(p), _gb(ideal), f"{ideal / hbm:.0%}"])
    return _table(["preset", "hardware", "mesh", "expert params / dev", "FSDP params / dev", "replicated / dev",
                   "params / dev", "state GB / dev", "of HBM", f"within {STATE_BUDGET:.0%}",
                   "fully sharded GB / dev", "of HBM"], rows)


def table_variants() -> str:
    header = ["variant"] + [f"{hw} x {n}" for hw, n in CASES]
    rows = []
    for v in VARIANTS:
        cfg = preset(v)
        row = [v]
        for hw, n in CASES:
            c = choose_mesh(cfg, hw, n)
            row.append(f"{c['data']}x{c['expert']}: {_gb(c['state'])}" + ("" if c["fits"] else " **no**"))
        rows.append(row)
    return _table(header, rows)


def table_exchange(plans) -> str:
    rows = []
    for p in plans:
        x = p["exchange"]
        rows.append([p["name"], f"{p['hw']} x {p['n']}", f"{p['data']}x{p['expert']}", x["g_local"], f"{x['tokens']:,}",
                     p["cfg"].capacity(p["cfg"].train_group_size), _mb(x["fwd"]), _mb(x["layer_step"]), x["layers"],
                     _gb(x["step"]), x["link"], _ms(x["seconds"]), _ms(x["compute"]),
                     f"{x['seconds'] / x['compute']:.2f}"])
    return _table(["preset", "hardware", "data x expert", "G_l", "tokens / dev", "C", "fwd MB / layer",
                   "fwd+bwd MB / layer", "sparse layers", "GB / step", "link", "ms / step", "ideal compute ms / step",
                   "exchange / compute"], rows)


def _weights_row(p):
    x, w = p["exchange"], p["weights"]
    return [_gb(x["step"]), _ms(x["seconds"]), f"{_gb(w['on_data'])} ({w['data_link']})",
            f"{_gb(w['on_expert'])} ({w['expert_link']})", _ms(w["seconds"]), _ms(p["comm_seconds"]),
            _ms(x["compute"])]


WEIGHT_HEADER = ["EC exchange GB", "exchange ms", "weights over data GB (link)", "weights over expert GB (link)",
                 "weights ms", "comm. ms", "ideal compute ms"]


def table_weights(plans) -> str:
    rows = [[p["name"], f"{p['hw']} x {p['n']}", f"{p['data']}x{p['expert']}"] + _weights_row(p) for p in plans]
    return _table(["preset", "hardware", "data x expert"] + WEIGHT_HEADER, rows)


# Two cases whose every candidate mesh is listed (table I): why the chosen one was chosen
SHOWN_CASES = (("XL", "H100 80GB", 64), ("M", "TPU v5p", 256))


def table_candidates() -> str:
    rows = []
    for name, hw, n in SHOWN_CASES:
        cfg = preset(name)
        chosen = choose_mesh(cfg, hw, n)
        for d, e in candidate_meshes(cfg, n):
            c = evaluate(cfg, hw, d, e)
            mark = " (chosen)" if (d, e) == (chosen["data"], chosen["expert"]) else ""
            rows.append([name, f"{hw} x {n}", f"{d}x{e}{mark}", _gb(c["state"]), _fit(c)] + _weights_row(c))
    return _table(["preset", "hardware", "data x expert", "state GB / dev", f"within {STATE_BUDGET:.0%}"]
                  + WEIGHT_HEADER, rows)


def _paper_batch_line():
    cfg = preset("XL")
    s = train_shape(cfg)
    return (f"{s['batch']:,}", f"{s['kept']}", f"{s['tokens']:,}", f"{s['group']} / {s['groups']}",
            f"{cfg.capacity_factor:g}, {cfg.capacity_factor * s['group']:g}")


PAPER_BATCH_LINE = _paper_batch_line()


def report() -> str:
    checked = check_shape_tree()
    plans = mesh_plan()
    return "\n\n".join([
        f"<!-- generated by `python -m ecdit.benchmarks.scaling_plan`; shape_tree checked against "
        f"init_model on {checked} configs -->",
        "#### A. Assumptions\n\n" + table_assumptions(),
        "#### B. Bytes of training state per parameter\n\n" + table_state_bytes(),
        "#### C. Parameters (count_params; the text encoder apart)\n\n" + table_params(),
        "#### D. Memory per device, presets (chosen mesh; today's sharding rules; "
        f"{STATE_BYTES} B/param)\n\n" + table_memory(plans),
        "#### E. Every Table 1 variant: chosen mesh (data x expert) and state GB per device\n\n" + table_variants(),
        "#### F. EC exchange per device per training step (shard_map layout, float32)\n\n" + table_exchange(plans),
        "#### G. Communication per device per step: the exchange beside the weights' collectives (rough)\n\n"
        + table_weights(plans),
        "#### H. Every candidate mesh of two cases\n\n" + table_candidates(),
    ])


def main(argv=None) -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
