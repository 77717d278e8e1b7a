"""The request stream a server sees, in the terms of a model's latency profile.

`workload.generate` draws requests at the model's cut points; a `Profile` knows fragment types,
the cuts it was measured at. `make_stream` draws a scenario's requests and renames each cut as its
profile fragment type (`fragment_cuts`), so that everything downstream (plans, batch prices,
replays, figures) speaks of fragment types only.

The clients choose their cuts among the profile's fragment types as a Neurosurgeon-style phone
does (`workload.generate`, with the profile's whole-accelerator latency at batch 1 as the expected
server time; every phone offloads, none runs the whole model itself). With ``private_input`` no
phone uploads the raw input (privacy-preserving split inference: the image never leaves the
phone), so phones choose among the activation cuts only; that is the regime of many fragment
types, since an encoded image (a 16 kB JPEG) is smaller than most activations. Under the
``full-model`` policy every client uploads its raw input (cut 0) instead.

A request is *attainable* when its budget covers its fragment's latency alone on the whole
accelerator (`Stream.attainable`): the network left the others no time at all, so no plan is
sized for them (see `search`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..buckets import bucketed
from ..errors import GraftError
from .profiles import Profile
from .requests import Request
from .workload import ModelCosts, generate

if TYPE_CHECKING:  # a type only: the simulator builds on this module, not the other way round
    from .simulator import Scenario


@dataclass(frozen=True)
class Stream:
    """A request stream in the profile's terms: ``requests[i].fragment`` is a profile fragment
    type, ``send_s[i]`` is when its phone started, ``attainable[i]`` whether its budget covers its
    latency alone on the whole accelerator; ``device_s[i]`` and ``upload_s[i]`` are the phone's
    time on the head and on the upload."""

    requests: tuple[Request, ...]
    send_s: np.ndarray
    attainable: np.ndarray
    duration_s: float
    device_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upload_s: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @cached_property
    def deadline_s(self) -> np.ndarray:
        return np.array([r.deadline_s for r in self.requests])

    @cached_property
    def attainable_budgets(self) -> dict[int, np.ndarray]:
        """Fragment type -> the budgets of its attainable requests (types with some)."""
        budgets: dict[int, list[float]] = {}
        for r, ok in zip(self.requests, self.attainable):
            if ok:
                budgets.setdefault(r.fragment, []).append(r.budget_s)
        return {f: np.array(b) for f, b in sorted(budgets.items())}

    @cached_property
    def fragment(self) -> np.ndarray:
        return np.array([r.fragment for r in self.requests], dtype=int)

    @cached_property
    def arrival_s(self) -> np.ndarray:
        return np.array([r.arrival_s for r in self.requests], dtype=float)

    @cached_property
    def end_s(self) -> float:
        """When the last request arrives, or the sending ends if later."""
        return max(self.duration_s, float(self.arrival_s.max(initial=0.0)))

    def rates(self, attainable_only: bool = False) -> dict[int, float]:
        """Fragment type -> requests per second (of the attainable ones only, if asked)."""
        chosen = self.fragment[self.attainable] if attainable_only else self.fragment
        types, counts = np.unique(chosen, return_counts=True)
        return {int(f): int(n) / self.duration_s for f, n in zip(types, counts)}


def fragment_cuts(profile: Profile, costs: ModelCosts) -> list[int]:
    """For each fragment type of ``profile``, the index of its cut in ``costs.cuts``."""
    index = {cut.name: i for i, cut in enumerate(costs.cuts)}
    missing = [name for name in profile.fragments if name not in index]
    if missing:
        raise GraftError(f"the profile's cuts {missing} are not cut points of the model "
                         f"(it has {[c.name for c in costs.cuts]}): was the profile made for another model, or "
                         "before graft_fx named cuts by their ATen graph nodes (torch.fx names such as "
                         "'layer1_2_relu_2')? Measure it again")
    return [index[name] for name in profile.fragments]


def make_stream(scenario: Scenario, full_model: bool = False) -> Stream:
    """The scenario's requests, each at the cut its phone chooses (``full_model``: the raw input;
    with ``scenario.private_input``, any cut but the raw input)."""
    profile, cuts = scenario.profile, fragment_cuts(scenario.profile, scenario.costs)
    of_cut = {c: f for f, c in enumerate(cuts)}
    one = 1 if scenario.buckets is None else bucketed(1, scenario.buckets)  # a lone request's rows, padded
    alone = [profile.fragment_s(f, one, 1.0) for f in range(len(cuts))]
    workload = generate(scenario.clients, scenario.costs, scenario.duration_s, scenario.seed,
                        server_estimate=lambda c: alone[of_cut[c]],
                        fragments=cuts[:1] if full_model else cuts[1:] if scenario.private_input else cuts,
                        local=False)
    requests = tuple(Request(r.deadline_s, r.arrival_s, r.id, of_cut[r.fragment]) for r in workload.requests)
    attainable = np.array([r.budget_s >= alone[r.fragment] for r in requests], dtype=bool)
    origins = workload.origins
    return Stream(requests, np.array([o.send_s for o in origins]), attainable, scenario.duration_s,
                  np.array([o.device_s for o in origins]), np.array([o.upload_s for o in origins]))
