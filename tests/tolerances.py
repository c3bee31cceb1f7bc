"""The one table of tolerances: every numeric comparison in the tests names an entry of it.

Each entry is a dict(rtol=..., atol=...) in NumPy's sense, |actual - expected| <= atol + rtol
|expected|, used as `assert_close(actual, expected, tol=NAME)`; inside `==` (a dict of results)
`approx(expected, tol=NAME)` applies the same entry through pytest.approx, whose max(rtol |e|,
atol) is never looser. Exact claims on indices, counts and bit-for-bit reruns use
np.testing.assert_array_equal (no tolerance); EXACT is that claim for assert_close.

FLOAT32, the reference == accelerated entry: the two halves sum matmuls and reductions in
different orders (NumPy/OpenBLAS against XLA), so results differ by a few ulps per accumulated
term; at the widths drawn in tests (D, F <= 64, inputs of unit scale) the worst case seen is ~2e-6
absolute. rtol/atol = 1e-4 leaves ample margin without hiding a real error, which shows up at 1e-2
or worse.
FLOAT64_GRAD: gradient checks against central finite differences (step 1e-6) of the float64
reference; truncation error O(h^2) and round-off O(eps/h) give ~1e-7 relative.

An entry is never loosened to make a test pass; a comparison that needs less slack than an
existing entry gets its own.
"""
import numpy as np
import pytest

# --- exact and rounding-level ---------------------------------------------------------------
# the claim is equality: values picked or summed without rounding (golden cases, the Euler time grid)
EXACT = dict(rtol=0.0, atol=0.0)
# a few scalar operations against the same formula written out: ~1 float32 ulp (eps = 1.2e-7), relative
ARITHMETIC = dict(rtol=1e-6, atol=0.0)
# float32 array arithmetic redone in another order (the EMA in NumPy): ~1 ulp, and 1 ulp of unit scale near 0
FLOAT32_ULP = dict(rtol=1e-6, atol=1e-7)

# --- reference == accelerated ---------------------------------------------------------------
# the two halves' float32 results (module docstring); assert_close's default
FLOAT32 = dict(rtol=1e-4, atol=1e-4)
# cos/sin(1000 t f): the float32 argument (up to 1000) carries an ulp of 6e-5, so the phase does too
SINUSOIDAL = dict(rtol=1e-4, atol=2e-4)
# a whole model's float32 loss against the reference's: FLOAT32 less its absolute floor (the loss is far from 0)
FLOAT32_LOSS = dict(rtol=1e-4, atol=0.0)
# a float32 mean of up to a few thousand terms against its exact value: summation rounding only, relative
FLOAT32_MEAN = dict(rtol=1e-5, atol=0.0)
# a sampler trajectory: FLOAT32 differences feed back through every Euler step of a whole model
SAMPLER = dict(rtol=1e-3, atol=1e-3)

# --- derivatives ----------------------------------------------------------------------------
# jax.grad in float64 against float64 central differences (module docstring)
FLOAT64_GRAD = dict(rtol=1e-5, atol=1e-6)
# central differences of a path linear in t: no truncation error, round-off eps |x| / h ~ 1e-9
FLOAT64_LINEAR_DERIVATIVE = dict(rtol=1e-6, atol=1e-6)
# a float32 jax.grad's directional derivative (a dot product over ~1,000 weights) against float64 differences
FLOAT32_GRAD = dict(rtol=1e-4, atol=1e-3)

# --- optimiser ------------------------------------------------------------------------------
# an optimiser update read back as p1 - p0 in float32: 1 ulp of p0 (~1e-7 at unit scale) plus relative rounding
OPTIMIZER_UPDATE = dict(rtol=1e-5, atol=1e-7)
# scale x (p1 - p0) of another run: the p0 ulp of both updates plus the scale's rounding, 1-2 ulp of p0
OPTIMIZER_UPDATE_SCALED = dict(rtol=1e-4, atol=3e-7)

# --- ill-conditioned float32 quantities -----------------------------------------------------
# logit(t) of a float32 t = sigmoid(u): near t = 0 or 1 an ulp of t grows by 1 / (t (1 - t))
LOGIT_OF_SIGMOID = dict(rtol=1e-3, atol=1e-3)
# the variance of a float32 LayerNorm output against var / (var + eps): a second moment of rounded values
LAYER_NORM_VARIANCE = dict(rtol=1e-3, atol=1e-3)

# --- statistics and measurements ------------------------------------------------------------
# sample median of 20,001 logit-normal draws: its standard error is ~0.002, so 0.01 is ~5 of them
MEDIAN_OF_20001 = dict(rtol=0.0, atol=0.01)
# the sample std of >= 512 normal draws against another's of the same scale: each has a relative
# standard error of 1 / sqrt(2 n) <= 3.1 %, so their ratio lies within 15 % at over 3 sigma
DRAWN_SCALE = dict(rtol=0.15, atol=0.0)
# shape constants by 512 x 512 midpoint quadrature: one boundary row of cells, <= 1/512 (the diamond: 1.95e-3)
QUADRATURE = dict(rtol=0.0, atol=2e-3)
# a detected centroid against the drawn one, in pixels at 32 x 32: anti-aliased edges move it under a pixel
CENTROID_PX = dict(rtol=0.0, atol=0.3)
# a detected pixel count against the analytic area of an >= 8 px object: edge pixels make +-10 %
DETECTED_AREA = dict(rtol=0.1, atol=0.0)
# parameter increments as fractions of the total: Table 1 prints counts to three significant figures
PAPER_TABLE1 = dict(rtol=0.0, atol=0.01)
# the activated-parameter increment: two counts printed to 0.01e9 each, plus 0.001e9 margin
PAPER_TABLE1_ACTIVATED = dict(rtol=0.0, atol=0.011e9)


def raster_coverage(side: float, supersample: int) -> dict:
    """A rendered shape's colour mass against its analytic area (in pixels): supersampling puts each
    edge within 1 / (2 * supersample) px and every shape's perimeter is under 8 sides."""
    return dict(rtol=0.0, atol=8 * side / (2 * supersample))


# --- margins: draws closer than these to a tie are skipped (hypothesis.assume) --------------
# top-C of float32 affinities: the halves' affinities differ by < 1e-6, so a larger gap cannot flip
NEAR_TIE = 1e-5
# token choice's ordered top-k, judged on float64 affinities of float32 inputs
NEAR_TIE_TOP_K = 1e-4
# a finite-difference step (1e-6 on each input) must not move a token across the top-C or top-k line
NEAR_TIE_FINITE_DIFFERENCE = 1e-3

# --- a loss curve on a device mesh or across processes against one device ----------------------
# relative difference per logged step (the device-mesh issue's bound; observed at most 9e-7)
LOSS_CURVE_RTOL = 1e-3

# --- inequalities -------------------------------------------------------------------------------
# 'changes the output' / 'distinct': 10 x FLOAT32's atol, so rounding cannot fake a difference
MEANINGFULLY_DIFFERENT = 1e-3
# slack on the scene layout's bounds (sizes, centres, gaps, slopes, in image units): float64 rounding
LAYOUT_SLACK = 1e-9


def assert_close(actual, expected, tol=FLOAT32, err_msg=""):
    """np.testing.assert_allclose on host copies with the entry `tol` of this table (FLOAT32 by default)."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=err_msg, **tol)


def approx(expected, tol):
    """pytest.approx with the entry `tol` of this table, for comparisons inside `==`."""
    return pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"])
