"""Sampling on a device mesh equals sampling on one device (run by tests/test_mesh_sampling.py in
its own Python with XLA_FLAGS=--xla_force_host_platform_device_count=4).

For an expert-choice model (static) and a DiffMoE model (dynamic capacity, trained thresholds;
one pool per CFG half, and pools of one image, which run expert-parallel):
`generate(..., mesh={"data": 2, "expert": 2})` returns the one-device images (within FLOAT32) and
the same experts-per-token records, the parameters it samples with are really placed on the mesh
(an expert weight split over `expert`), and the expert-choice and pooled DiffMoE samplers
exchange tokens with all_to_all (the model's expert-parallel layer, accelerated/expert_parallel.py)."""
import jax
import numpy as np

from ecdit.core.params import init_model, randomize_zero_init
from ecdit.accelerated.sample import sample
from ecdit.systems import sampling, text
from tests.helpers import small_config
from tests.tolerances import FLOAT32, assert_close

PROMPTS = ["a red circle", "two squares", "a blue cross", "a ring above a square", "three triangles",
           "a green diamond"]
AXES = {"data": 2, "expert": 2}


def model(kind, **changes):
    cfg = small_config(kind, capacity_factor=1.0, **changes)
    params = randomize_zero_init(init_model(cfg, 0))
    if cfg.has_predictor:                                        # thresholds as after training
        for block in params["blocks"]:
            if kind in block:
                block[kind]["threshold"] = np.linspace(0.3, 0.7, cfg.num_experts).astype(np.float32)
    return cfg, params


def main():
    assert jax.device_count() == 4, jax.device_count()
    # DiffMoE twice: one pool per CFG half (GSPMD), and pool_images = 1, i.e. 4 pools of one image
    # per half on 4 devices (one pool per device: the expert-parallel dynamic layer)
    for kind, dynamic, changes in (("expert_choice", False, {}), ("diffmoe", True, {}),
                                   ("diffmoe", True, {"pool_images": 1})):
        cfg, params = model(kind, **changes)
        kw = dict(num_steps=2, batch_size=4, progress=False, dynamic=dynamic)
        one_images, one_experts = sampling.generate(params, cfg, PROMPTS, **kw)
        mesh_images, mesh_experts = sampling.generate(params, cfg, PROMPTS, mesh=AXES, **kw)
        assert_close(mesh_images, one_images, tol=FLOAT32, err_msg=kind)
        np.testing.assert_array_equal(mesh_experts, one_experts, err_msg=kind)
        placed = sampling._placement(params, cfg, AXES, 4, len(PROMPTS))(params)
        w1 = placed["blocks"][1][kind]["w1"]
        assert w1.sharding.spec[0] == "expert", w1.sharding.spec
        assert {s.data.shape[0] for s in w1.addressable_shards} == {cfg.num_experts // 2}
        if kind == "expert_choice" or changes:                   # the expert-parallel exchange is used
            place = sampling._placement(params, cfg, AXES, 4, len(PROMPTS))
            ids, mask = text.tokenize_batch(PROMPTS[:4], cfg.max_text_len)
            noise = np.zeros((4, cfg.image_size, cfg.image_size, cfg.channels), np.float32)
            with place.context():
                hlo = sample.jitted.lower(placed, *place((noise, ids, mask)), cfg, 2, 5.0, None, dynamic) \
                    .compile().as_text()
            assert "all-to-all" in hlo, f"{kind} {changes}: the sampler on the mesh has no all-to-all"
        print(kind, changes, "dynamic" if dynamic else "static", "ok: max image difference",
              float(np.abs(mesh_images - one_images).max()))
    cfg, params = model("diffmoe")
    try:
        sampling.generate(params, cfg, PROMPTS[:5], num_steps=1, batch_size=4, progress=False, mesh=AXES)
    except ValueError as err:
        assert str(err).startswith("--mesh: data=2 does not divide the last batch of 1"), err
    else:
        raise AssertionError("a DiffMoE batch of 1 image on data=2 was not refused")
    print("mesh sampling checks passed")


if __name__ == "__main__":
    main()
