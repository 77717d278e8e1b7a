"""Routing: which replica of which group of a plan receives a request.

One home for the rule that the simulator (`replay.run_epochs`, one router per plan) and the
runtime both follow. A fragment type is served by exactly one group of the plan
(`Plan.group_of`); a group runs one replica on each partition that lists it (`Plan.partitions`),
and a group's requests go to its replicas in turn, in the order they reach the router (round
robin). Round robin needs no load figures and splits a
group's arrivals evenly, which is what the planner sized each replica for: ``rate / replicas``
(`planner.Group`). A type the plan does not serve has no route.
"""

from __future__ import annotations

from collections.abc import Mapping

from .planner import Plan


class Router:
    """Routes requests of fragment types to ``(group, partition)`` of ``plan``, round robin per
    group. Not thread-safe: a concurrent caller holds a lock around `route`."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.group: Mapping[int, int] = {f: g for g, group in enumerate(plan.groups) for f in group.fragments}
        seats: dict[int, list[int]] = {}
        for p, partition in enumerate(plan.partitions):
            for g in partition.groups:
                seats.setdefault(g, []).append(p)
        self.seats: Mapping[int, tuple[int, ...]] = {g: tuple(places) for g, places in seats.items()}
        """group -> the partitions of its replicas, in plan order"""
        self._turn = dict.fromkeys(self.seats, 0)

    def route(self, fragment: int) -> tuple[int, int] | None:
        """``(group, partition)`` for the next request of ``fragment``; None if no group serves it."""
        g = self.group.get(fragment)
        if g is None:
            return None
        places = self.seats[g]
        turn = self._turn[g]
        self._turn[g] = turn + 1
        return g, places[turn % len(places)]
