"""The whole model: reference == accelerated, patches, masking, groups, config and the counter."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecdit.accelerated import model as A
from ecdit.core.config import TrainConfig, preset, train_preset
from ecdit.core.params import count as num_params
from ecdit.core.params import count_params, init_model, randomize_zero_init
from ecdit.reference import model as R
from ecdit.systems import text
from tests.helpers import normal, seeds, small_config
from tests.tolerances import MEANINGFULLY_DIFFERENT, PAPER_TABLE1, PAPER_TABLE1_ACTIVATED, assert_close

KINDS = ("dense", "expert_choice", "token_choice")


def inputs(cfg, b=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)
    t = rng.uniform(size=b).astype(np.float32)
    captions = ["a red circle", "", "two squares", "a cross above a ring"] * b
    ids, mask = text.tokenize_batch(captions[:b], cfg.max_text_len)
    return x, t, ids, mask


# ---------------------------------------------------------------------------------------------
# Patches and positions
# ---------------------------------------------------------------------------------------------

def test_patchify_is_row_major_and_inverts():
    # A 4x4 one-channel image with patch 2: token 1 is the top-right 2x2 patch.
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    p = R.patchify(img, 2)
    assert p.shape == (1, 4, 4)
    np.testing.assert_array_equal(p[0, 1], [2, 3, 6, 7])
    np.testing.assert_array_equal(R.unpatchify(p, 2, 4, 4), img)
    np.testing.assert_array_equal(np.asarray(A.patchify(img, 2)), p)
    np.testing.assert_array_equal(np.asarray(A.unpatchify(p, 2, 4, 4)), img)


def test_sincos_positions_are_distinct_and_bounded():
    pos = R.sincos_embedding_2d(8, 32)
    assert pos.shape == (64, 32) and pos.dtype == np.float32
    assert np.abs(pos).max() <= 1.0
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(64)
    assert d.min() > MEANINGFULLY_DIFFERENT


# ---------------------------------------------------------------------------------------------
# reference == accelerated
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pos,pooled,prediction", (("sincos", False, "velocity"), ("learned", True, "velocity"),
                                                 ("sincos", False, "x0")))
def test_forward_matches_reference(kind, pos, pooled, prediction):
    cfg = small_config(kind, pos_embedding=pos, pooled_text=pooled, prediction=prediction)
    params = randomize_zero_init(init_model(cfg, 1))
    x, t, ids, mask = inputs(cfg)
    v_ref, r_ref = R.forward(params, x, t, ids, mask, cfg)
    v_acc, r_acc = A.forward(params, x, t, ids, mask, cfg)
    assert v_ref.shape == (3, cfg.num_tokens, cfg.patch_dim)
    assert_close(v_acc, v_ref)
    for a, b in zip(r_acc, r_ref):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a["experts_per_token"]), b["experts_per_token"])


@pytest.mark.parametrize("kind", ("expert_choice", "token_choice"))
@pytest.mark.parametrize("prediction", ("velocity", "x0"))
def test_forward_matches_reference_with_masking_and_groups(kind, prediction):
    cfg = small_config(kind, prediction=prediction)
    params = randomize_zero_init(init_model(cfg, 2))
    x, t, ids, mask = inputs(cfg, b=4)
    rng = np.random.default_rng(3)
    keep = np.sort(np.stack([rng.permutation(16)[:8] for _ in range(4)]), axis=1).astype(np.int32)
    # group of 16 kept tokens = two images per routing group (the paper's inference setting)
    v_ref, r_ref = R.forward(params, x, t, ids, mask, cfg, keep, 16)
    v_acc, r_acc = A.forward(params, x, t, ids, mask, cfg, keep, 16)
    assert v_ref.shape == (4, 8, cfg.patch_dim)
    assert_close(v_acc, v_ref)
    np.testing.assert_array_equal(np.asarray(r_acc[1]["experts_per_token"]), r_ref[1]["experts_per_token"])


# The pieces `forward` is made of, each against its reference on its own, so that a difference is
# found in the piece that makes it (the walkthrough lists these beside each function).

def _parts(kind="expert_choice", **changes):
    cfg = small_config(kind, **changes)
    params = randomize_zero_init(init_model(cfg, 1))
    return (cfg, params) + inputs(cfg)


@pytest.mark.parametrize("pos", ("sincos", "learned"))
def test_patch_embedding_and_positions_match_reference(pos):
    cfg, params, x, _, _, _ = _parts(pos_embedding=pos)
    table = R.positional_embedding(params, cfg)
    assert table.shape == (cfg.num_tokens, cfg.width)
    assert_close(A.positional_embedding(params, cfg), table)
    assert_close(A.sincos_embedding_2d(cfg.grid_size, cfg.width), R.sincos_embedding_2d(cfg.grid_size, cfg.width))
    tokens = R.embed_patches(x, params, cfg)
    assert_close(tokens, R.patchify(x, cfg.patch_size) @ params["patch_embed"]["w"] + params["patch_embed"]["b"]
                 + table[None])                                  # the linear patch embedding plus positions
    assert_close(A.embed_patches(x, params, cfg), tokens)


@given(b=st.integers(1, 3), s=st.integers(1, 12), kept=st.floats(0, 1), seed=seeds)
def test_keep_tokens_gathers_each_images_listed_tokens_in_both_halves(b, s, kept, seed):
    rng = np.random.default_rng(seed)
    tokens = normal(rng, (b, s, 4))                              # (B, S, D)
    n = max(1, round(kept * s))
    keep = np.sort(np.stack([rng.permutation(s)[:n] for _ in range(b)]), axis=1)  # (B, S')
    out = R.keep_tokens(tokens, keep)
    np.testing.assert_array_equal(out, np.stack([tokens[i, keep[i]] for i in range(b)]))
    np.testing.assert_array_equal(np.asarray(A.keep_tokens(tokens, keep)), out)


@pytest.mark.parametrize("pooled", (False, True))
def test_conditioning_text_encoder_timestep_and_pooled_caption_match_reference(pooled):
    cfg, params, _, t, ids, mask = _parts(pooled_text=pooled)
    y = R.text_encoder(ids, mask, params["text"], cfg.text_heads)
    assert y.shape == (len(ids), cfg.max_text_len, cfg.text_width)
    assert_close(A.text_encoder(ids, mask, params["text"], cfg.text_heads), y)
    c = R.timestep_condition(t, params["t_mlp"], cfg)
    assert_close(A.timestep_condition(t, params["t_mlp"], cfg), c)
    if pooled:
        assert_close(A.pooled_text(y, mask, params["text_pool"]), R.pooled_text(y, mask, params["text_pool"]))


def test_model_block_and_final_layer_match_reference():
    cfg, params, x, t, ids, mask = _parts("expert_choice")      # layer 1 dense, layer 2 expert choice
    tokens = R.embed_patches(x, params, cfg)                     # (B, S, D)
    c = R.timestep_condition(t, params["t_mlp"], cfg)            # (B, D)
    y = R.text_encoder(ids, mask, params["text"], cfg.text_heads)  # (B, L, Dy)
    for block in params["blocks"]:
        out_r, r_r = R.model_block(tokens, c, y, block, cfg, None, mask)
        out_a, r_a = A.model_block(tokens, c, y, block, cfg, None, mask)
        assert_close(out_a, out_r)
        assert (r_a is None) == (r_r is None)
        if r_r is not None:
            np.testing.assert_array_equal(np.asarray(r_a["experts_per_token"]), r_r["experts_per_token"])
        tokens = out_r
    v = R.final_layer(tokens, c, params["final"])
    assert v.shape == (len(x), cfg.num_tokens, cfg.patch_dim)
    assert_close(A.final_layer(tokens, c, params["final"]), v)


def test_velocity_is_unpatchified_forward():
    cfg = small_config("dense")
    params = randomize_zero_init(init_model(cfg, 0))
    x, t, ids, mask = inputs(cfg)
    v = R.velocity(params, x, t, ids, mask, cfg)
    assert v.shape == x.shape
    assert_close(A.velocity(params, x, t, ids, mask, cfg), v)


def test_jitted_forward_does_not_retrace():
    cfg = small_config()
    params = randomize_zero_init(init_model(cfg, 0))
    x, t, ids, mask = inputs(cfg)
    A.forward(params, x, t, ids, mask, cfg)
    before = A.forward.trace_count()
    A.forward(params, x + 1, t, ids, mask, cfg)
    assert A.forward.trace_count() == before


# ---------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------

def test_untrained_model_predicts_zero_velocity():
    """DiT's zero-initialised final layer: the untrained model's velocity is exactly 0."""
    cfg = small_config()
    x, t, ids, mask = inputs(cfg)
    v, _ = R.forward(init_model(cfg, 0), x, t, ids, mask, cfg)
    assert not np.any(v)


@pytest.mark.parametrize("masked", (False, True))
def test_untrained_x0_model_predicts_the_velocity_of_a_zero_image(masked):
    """x-prediction with DiT's zero final layer: x0_hat = 0, so v = x_t / max(t, min_t) on the
    kept patches (the velocity that leads straight to a zero image)."""
    cfg = small_config(prediction="x0", prediction_min_t=0.1)
    x, _, ids, mask = inputs(cfg)
    t = np.array([0.05, 0.5, 1.0], np.float32)
    keep = np.tile(np.arange(0, 16, 2, dtype=np.int32), (3, 1)) if masked else None
    v, _ = R.forward(init_model(cfg, 0), x, t, ids, mask, cfg, keep)
    patches = R.patchify(x, cfg.patch_size)[:, ::2] if masked else R.patchify(x, cfg.patch_size)
    assert_close(v, patches / np.array([0.1, 0.5, 1.0], np.float32)[:, None, None])


def test_masked_tokens_take_no_part():
    """Changing the pixels of dropped patches changes nothing: they never enter the blocks."""
    cfg = small_config()
    params = randomize_zero_init(init_model(cfg, 0))
    x, t, ids, mask = inputs(cfg, b=2)
    keep = np.array([[0, 3, 5, 6, 9, 10, 12, 15]] * 2, dtype=np.int32)
    dropped = np.setdiff1d(np.arange(16), keep[0])
    patches = R.patchify(x, 4)
    patches[:, dropped] += 5.0
    x2 = R.unpatchify(patches, 4, 16, 16)
    v1, r1 = R.forward(params, x, t, ids, mask, cfg, keep)
    v2, r2 = R.forward(params, x2, t, ids, mask, cfg, keep)
    np.testing.assert_array_equal(v1, v2)
    assert r1[1]["experts_per_token"].shape == (2, 8)


def test_caption_changes_the_output():
    cfg = small_config()
    params = randomize_zero_init(init_model(cfg, 0))
    x, t, ids, mask = inputs(cfg, b=2)
    ids2, mask2 = text.tokenize_batch(["a blue square", "three rings"], cfg.max_text_len)
    v1, _ = R.forward(params, x, t, ids, mask, cfg)
    v2, _ = R.forward(params, x, t, ids2, mask2, cfg)
    assert np.abs(v1 - v2).max() > MEANINGFULLY_DIFFERENT


def test_expert_choice_allocation_sums_to_capacity():
    """Every expert chooses exactly C tokens per group: experts_per_token sums to E * C."""
    cfg = small_config()
    params = randomize_zero_init(init_model(cfg, 0))
    x, t, ids, mask = inputs(cfg, b=2)
    _, routing = R.forward(params, x, t, ids, mask, cfg)
    ept = routing[1]["experts_per_token"]                         # (B, S)
    assert routing[0] is None
    np.testing.assert_array_equal(ept.sum(axis=1), [cfg.num_experts * cfg.capacity(16)] * 2)


def test_bad_inputs_name_the_argument():
    cfg = small_config()
    params = init_model(cfg, 0)
    x, t, ids, mask = inputs(cfg)
    with pytest.raises(ValueError, match="^x_t"):
        R.forward(params, x[:, :8], t, ids, mask, cfg)
    with pytest.raises(ValueError, match="^group_size"):
        A.forward(params, x, t, ids, mask, cfg, None, 7)
    with pytest.raises(ValueError, match="^text_ids"):
        A.forward(params, x, t, ids[:2], mask[:2], cfg)
    with pytest.raises(ValueError, match="unknown word 'dog'"):
        text.tokenize_batch(["a dog"], cfg.max_text_len)


# ---------------------------------------------------------------------------------------------
# Config and the parameter counter
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("patch_size", 5), ("num_heads", 5), ("num_kv_heads", 3), ("ffn_kind", "moe"), ("capacity_factor", -1.0),
    ("capacity_factor", 16.0), ("pos_embedding", "rope"), ("depth", 0), ("train_group_size", 0),
    ("num_selected", 9), ("prediction", "epsilon"), ("prediction_min_t", 0.0),
])
def test_bad_config_value_names_the_field(field, value):
    kind = "token_choice" if field == "num_selected" else "expert_choice"
    with pytest.raises(ValueError, match=f"^{field}"):
        small_config(kind, **{field: value})


@pytest.mark.parametrize("field,value", [("mask_ratio", 1.0), ("learning_rate", 0.0), ("caption_dropout", 2.0),
                                         ("optimizer", "sgd"), ("adam_b2", 1.0), ("weight_decay", -0.1),
                                         ("loss_weighting", "snr"), ("category_weights", "mixed"), ("pair_caption_order", "reading"),
                                         ("category_weights", (1, 1, 1, 1, 1, -1)), ("category_weights", (0, 0))])
def test_bad_train_config_value_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        TrainConfig(**{field: value})


def test_category_weights_read_back_from_json_stay_a_hashable_tuple():
    tc = TrainConfig(category_weights=[1, 2, 0.5, 1, 2, 0.5])       # a list, as a checkpoint's JSON holds it
    assert tc.category_weights == (1.0, 2.0, 0.5, 1.0, 2.0, 0.5)
    hash(tc)
    assert tc == TrainConfig(category_weights=(1, 2, 0.5, 1, 2, 0.5))


def test_config_is_hashable_and_sparse_layers_interleave():
    cfg = preset("tiny")
    hash(cfg)
    assert preset("tiny") == cfg
    assert cfg.sparse_layers == (1, 3)            # layers 2 and 4 counted from 1 (Sec. 3.1)
    assert preset("XL").sparse_layers == tuple(range(1, 28, 2))
    assert preset("DENSE-M").depth == 46 and preset("M").depth == 38
    assert preset("XL-8E").num_experts == 8
    with pytest.raises(ValueError, match="^preset"):
        preset("huge")
    assert train_preset("XL").learning_rate == 1e-4 and train_preset("XL").warmup_steps == 20_000


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("matched", (False, True))
def test_counter_matches_initialised_parameters(kind, matched):
    cfg = small_config(kind, dense_matched=matched, pos_embedding="learned", pooled_text=matched)
    params = init_model(cfg, 0)
    c = count_params(cfg)
    assert c["total"] + c["text_encoder"] == num_params(params)
    assert c["text_encoder"] == num_params(params["text"])


def test_counter_reproduces_table1_expert_increments():
    """Table 1: every added expert adds one dense FFN (8 D^2) to each of the depth/2 sparse layers,
    and f_c = 2 activates one FFN more per sparse layer. The dense bases differ (docs/model.md)."""
    paper = {"XL": (1.47e9, {8: 2.51e9, 16: 3.70e9, 32: 6.08e9}, 1.62e9),
             "XXL": (2.35e9, {8: 4.87e9, 16: 7.73e9, 32: 13.47e9}, 2.71e9)}
    for name, (dense_total, totals, activated) in paper.items():
        ours_dense = count_params(preset(f"DENSE-{name}"))["total"]
        for e, total in totals.items():
            ours = count_params(preset(f"{name}-{e}E"))["total"]
            assert_close((ours - ours_dense) / total, (total - dense_total) / total, tol=PAPER_TABLE1)
        ec = count_params(preset(f"{name}-8E"))
        assert_close(ec["activated"] - ours_dense, activated - dense_total, tol=PAPER_TABLE1_ACTIVATED)
