"""Small runtimes for the runtime, load generator and HTTP tests: a tiny MLP cut at each layer,
profiled on this CPU in well under a second, served by a plan built by hand or by the planner."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from graft_fx.serving.measure import measure
from graft_fx.serving.partitions import cores
from graft_fx.serving.planner import Group, Partition, Plan
from graft_fx.serving.profiles import Profile
from graft_fx.serving.runtime import Runtime

WIDTH = 16


def tiny_model() -> tuple[nn.Module, torch.Tensor]:
    """An MLP with a cut after every layer, and an example batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(WIDTH, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32),
                          nn.ReLU(), nn.Linear(32, 8)).eval()
    return model, torch.randn(2, WIDTH)


@functools.cache
def tiny_profile() -> Profile:
    model, example = tiny_model()
    return measure(model, example, "mlp", device="cpu", batches=(1, 2, 4, 8), reps=3, warmup=1, pieces=4)


def hand_plan(profile: Profile, groups: tuple[tuple[int, ...], ...], budget_s: float = 0.05,
              shared: bool = False, buckets: tuple[int, ...] | None = None) -> Plan:
    """A plan of ``groups`` on this CPU: each on an equal partition of it, or all taking turns on the
    whole of it (``shared``), padding to ``buckets``; sized loosely (the runtime reads fragments,
    shares, partitions, budgets and buckets)."""
    parts = 1 if shared else len(groups)
    partitioning = cores(profile.device, parts)
    made = tuple(Group(g, 1 / parts, 1, budget_s / 2, budget_s / 4, budget_s / 2, budget_s, 1.0) for g in groups)
    partitions = (Partition(1.0, tuple(range(len(groups)))),) if shared else ()
    return Plan(made, partitioning, partitions, buckets)


def small_runtime(groups: tuple[tuple[int, ...], ...] | None = None, budget_s: float = 0.05, shared: bool = False,
                  buckets: tuple[int, ...] | None = None, **options) -> Runtime:
    """A runtime over the tiny MLP's fragments (by default every fragment type in one group);
    ``options`` go to `Runtime`. The caller closes it."""
    model, example = tiny_model()
    profile = tiny_profile()
    groups = groups or (tuple(range(len(profile.fragments))),)
    return Runtime.from_model(model, example, profile, hand_plan(profile, groups, budget_s, shared, buckets), **options)


class SleepyInstance:
    """An `instances.Instance` look-alike whose batch takes ``base_s + per_row_s`` per row of sleep
    (so its timing holds on a busy machine) and answers ``2 * x`` (so each answer can be checked);
    ``fail_on`` makes a batch holding a row whose first value is that number raise."""

    def __init__(self, fragments: tuple[int, ...], width: int = 4, base_s: float = 0.004, per_row_s: float = 0.001,
                 fail_on: float | None = None):
        self.fragments, self.width = fragments, width
        self.base_s, self.per_row_s, self.fail_on = base_s, per_row_s, fail_on
        self.batches: list[int] = []

    def input_spec(self, fragment):
        from graft_fx.capture import InputSpec
        return InputSpec((self.width,), torch.float32, None)

    def output_spec(self, fragment):
        return (self.width,), torch.float32

    def run(self, fragments, rows):
        import time
        x = torch.cat(list(rows))
        self.batches.append(len(rows))
        time.sleep(self.base_s + self.per_row_s * len(rows))
        if self.fail_on is not None and bool((x[:, 0] == self.fail_on).any()):
            raise RuntimeError(f"a row starts with {self.fail_on}")
        return list((2 * x).split(1))


def sleepy_profile(fragments: int = 2, base_s: float = 0.004, per_row_s: float = 0.001, max_batch: int = 8,
                   width: int = 4) -> Profile:
    """A profile that prices `SleepyInstance` batches exactly: every fragment type's tail is one
    piece of ``base_s + per_row_s * rows`` (the first piece; the others cost nothing measurable)."""
    import numpy as np

    from graft_fx.serving.profiles import Piece

    pieces = tuple(Piece(f"cut{f}", f"cut{f + 1}" if f + 1 < fragments else "output", 1.0 / fragments, 4 * width,
                         (width,)) for f in range(fragments))
    batches = np.arange(1, max_batch + 1)
    table = np.full((fragments, 1, max_batch), 1e-9)
    table[-1, 0, :] = base_s + per_row_s * batches
    return Profile("sleepy", "CPU (test)", "made up", pieces, np.array([1.0]), batches, table)


def sleepy_runtime(fragments: int = 2, groups=None, fail_on: float | None = None, base_s: float = 0.004,
                   per_row_s: float = 0.001, **options) -> Runtime:
    """A runtime of `SleepyInstance` groups (by default one group of every type) on one partition."""
    profile = sleepy_profile(fragments, base_s, per_row_s)
    groups = groups or (tuple(range(fragments)),)
    plan = hand_plan(profile, groups, budget_s=options.pop("budget_s", 0.05), shared=True)
    instances = [SleepyInstance(g, fail_on=fail_on, base_s=base_s, per_row_s=per_row_s) for g in groups]
    return Runtime(plan, profile, instances, **options)
