"""pytest plugin of the device equivalence run (benchmarks/equivalence.py): registers the hypothesis
profile "ecdit-device", `ECDIT_DEVICE_EXAMPLES` examples per property (default 4), derandomized
(the same examples on every device) and without deadlines (first calls compile).

Loaded with `-p ecdit.benchmarks.equivalence_plugin` before tests/conftest.py; hypothesis loads the
profile named by `--hypothesis-profile` after the conftest registered its own, so this one wins.
"""
import os

from hypothesis import HealthCheck, settings

from .equivalence import PROFILE

settings.register_profile(
    PROFILE, max_examples=int(os.environ.get("ECDIT_DEVICE_EXAMPLES", "4")), deadline=None, derandomize=True,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
