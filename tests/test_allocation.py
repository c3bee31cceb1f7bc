"""Heterogeneous compute as a number (ecdit.app.allocation): edge pixels, per-token detail, and the
correlation of experts per token with it."""
import numpy as np
import pytest

from ecdit.app.allocation import allocation_detail_correlation, edge_pixels, patch_detail


def white_with_red_square(size=16, lo=4, hi=12):
    img = np.ones((size, size, 3), np.float32)
    img[lo:hi, lo:hi] = (1.0, 0.0, 0.0)
    return img


def test_edge_pixels_are_the_boundary_on_both_sides_and_nothing_else():
    edge = edge_pixels(white_with_red_square()[None])[0]
    want = np.zeros((16, 16), bool)
    want[3:13, 3:13] = True                                      # the square grown by one ...
    want[5:11, 5:11] = False                                     # ... less its interior shrunk by one
    want[3, 3] = want[3, 12] = want[12, 3] = want[12, 12] = False  # corners touch only diagonally
    assert (edge == want).all()


def test_patch_detail_is_the_edge_fraction_of_each_patch_in_row_major_order():
    img = white_with_red_square()
    detail = patch_detail(np.stack([img, np.ones_like(img)]), 4)
    assert detail.shape == (2, 16)
    assert (detail[1] == 0).all()                                # a blank image has no detail
    want = edge_pixels(img[None])[0].reshape(4, 4, 4, 4).mean(axis=(1, 3)).ravel()
    np.testing.assert_array_equal(detail[0], want)
    assert (detail[0, 0], detail[0, 1], detail[0, 5]) == (0.0, 4 / 16, 7 / 16)  # outside, above, on the corner


def test_allocation_that_follows_detail_correlates_one_and_the_reverse_minus_one():
    rng = np.random.default_rng(0)
    detail = rng.random((3, 16))                                 # (M, S)
    experts = np.stack([np.stack([2 + 4 * detail, 5 - 3 * detail])] * 4)  # (T=4, n=2, M=3, S=16)
    res = allocation_detail_correlation(experts, detail)
    np.testing.assert_allclose(res["r"][0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(res["r"][1], -1.0, rtol=1e-12)
    np.testing.assert_allclose(res["r_mean"], [1.0, -1.0], rtol=1e-12)
    assert (res["images"] == 3).all()


def test_uniform_allocation_or_a_blank_image_counts_for_nothing():
    detail = np.zeros((2, 16))
    detail[0, :8] = 1.0                                          # image 0 has detail; image 1 is blank
    experts = np.zeros((2, 1, 2, 16))
    experts[0, 0] = np.arange(16)                                # step 0: varies; step 1: every token 0
    res = allocation_detail_correlation(experts, detail)
    assert res["images"].tolist() == [[1, 0]]
    assert np.isnan(res["r"][0, 1]) and res["r"][0, 0] < 0       # more experts on the detail-free half
    assert res["r_mean"][0] == res["r"][0, 0]


def test_orthogonal_allocation_correlates_zero():
    detail = np.tile([1.0, 0.0], 8)[None]                        # (1, 16)
    experts = np.tile([1.0, 1.0, 0.0, 0.0], 4)[None, None, None]  # (1, 1, 1, 16), uncorrelated with it
    assert abs(allocation_detail_correlation(experts, detail)["r"][0, 0]) < 1e-12


@pytest.mark.parametrize("call,argument", [
    (lambda: edge_pixels(np.ones((4, 4, 3))), "images"),
    (lambda: patch_detail(np.ones((1, 8, 8, 3)), 3), "patch_size"),
    (lambda: allocation_detail_correlation(np.ones((2, 1, 16)), np.ones((1, 16))), "experts"),
    (lambda: allocation_detail_correlation(np.ones((2, 1, 3, 16)), np.ones((2, 16))), "detail"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}"):
        call()
