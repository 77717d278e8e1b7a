"""Hypothesis profiles: a small deterministic one for CI, a large one for soaking; and Triton's
interpreter for the kernels.

Choose with GRAFT_HYPOTHESIS_PROFILE=large (default: ci). Without a GPU the kernels run in
Triton's interpreter: ``TRITON_INTERPRET=1`` is set here, before any test imports
``graft_fx.kernels`` (``@triton.jit`` decides at definition time); on a machine with CUDA it is
left unset, so the kernels compile, unless the environment sets it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch._dynamo.utils import counters  # noqa: E402 - imports triton: after TRITON_INTERPRET is set

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


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and counters emptied before and after a test that compiles, so that each
    test counts its own compilations and rewrites."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
