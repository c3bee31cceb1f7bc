"""The one table of tolerances for reference == accelerated comparisons.

float32: the two halves sum matmuls and reductions in different orders (NumPy/OpenBLAS against
XLA), so results differ by a few ulps per accumulated term; at the widths drawn in tests (D, F
<= 64, inputs of unit scale) the worst case seen is ~2e-6 absolute. rtol/atol = 1e-4 leaves
ample margin without hiding a real error, which shows up at 1e-2 or worse.
float64: gradient checks against central finite differences (step 1e-6) of the float64
reference; truncation error O(h^2) and round-off O(eps/h) give ~1e-7 relative.
"""
import numpy as np

FLOAT32 = dict(rtol=1e-4, atol=1e-4)
FLOAT64_GRAD = dict(rtol=1e-5, atol=1e-6)


def assert_close(actual, expected, tol=FLOAT32, err_msg=""):
    """np.testing.assert_allclose on host copies, with the project tolerance by default."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), err_msg=err_msg, **tol)
