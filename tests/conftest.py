"""Hypothesis profiles: a small deterministic one for CI, a large one for soaking.

Choose with GRAFT_HYPOTHESIS_PROFILE=large (default: ci).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "large", max_examples=500, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("GRAFT_HYPOTHESIS_PROFILE", "ci"))
