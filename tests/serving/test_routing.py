"""Routing: a group's requests go to its replicas' partitions in turn, per group, whatever else
shares those partitions; a type the plan does not serve has no route."""

from graft_fx.serving.planner import Group, Partition, Plan
from graft_fx.serving.routing import Router


def group(fragments, replicas, share=0.25):
    return Group(tuple(fragments), share, replicas, 0.01, 0.001, 0.001, 1.0, 1.0)


def plan():
    """Group 0 (types 0, 1) on three partitions of its own; groups 1 (type 3) and 2 (types 4, 5)
    take turns on partitions 3 and 4 (time sharing), group 2 also on partition 5 alone."""
    groups = (group((0, 1), 3), group((3,), 2), group((4, 5), 3))
    partitions = (Partition(0.25, (0,)),) * 3 + (Partition(0.5, (1, 2)), Partition(0.5, (2, 1)),
                                                 Partition(0.25, (2,)))
    return Plan(groups, partitions=partitions)


def test_seats_are_the_partitions_of_each_groups_replicas_in_plan_order():
    the_plan = plan()
    router = Router(the_plan)
    assert router.seats == {0: (0, 1, 2), 1: (3, 4), 2: (3, 4, 5)}
    for g, places in router.seats.items():
        assert places == tuple(p for p, partition in enumerate(the_plan.partitions) if g in partition.groups)
        assert len(places) == the_plan.groups[g].replicas


def test_each_group_goes_round_robin_over_its_replicas_in_arrival_order():
    router = Router(plan())
    fragments = [0, 3, 1, 4, 0, 5, 3, 1, 4, 0, 3, 5, 1]
    routes = [router.route(f) for f in fragments]
    assert [g for g, _ in routes] == [0, 1, 0, 2, 0, 2, 1, 0, 2, 0, 1, 2, 0]
    by_group: dict[int, list[int]] = {}
    for g, p in routes:
        by_group.setdefault(g, []).append(p)
    # every member type of a group takes the group's next turn; other groups' requests do not
    assert by_group == {0: [0, 1, 2, 0, 1, 2], 1: [3, 4, 3], 2: [3, 4, 5, 3]}


def test_a_group_splits_its_requests_as_slices_of_its_arrivals():
    """The i-th request of a group goes to ``seats[i % replicas]``: replica r gets ``arrivals[r::n]``."""
    router = Router(plan())
    arrivals = list(range(30))
    got: dict[int, list[int]] = {}
    for i in arrivals:
        _, p = router.route(4 if i % 2 else 5)
        got.setdefault(p, []).append(i)
    assert got == {p: arrivals[r::3] for r, p in enumerate((3, 4, 5))}


def test_a_type_the_plan_does_not_serve_has_no_route_and_takes_no_turn():
    router = Router(plan())
    assert router.route(2) is None and router.route(99) is None
    assert router.route(0) == (0, 0)
    assert router.route(2) is None
    assert router.route(1) == (0, 1)
    assert Router(Plan(())).route(0) is None


def test_a_plan_of_one_partition_per_replica_routes_as_the_default_partitions():
    the_plan = Plan((group((0,), 2), group((1, 2), 1)))
    router = Router(the_plan)
    assert router.seats == {0: (0, 1), 1: (2,)}
    assert [router.route(f) for f in (0, 0, 0, 2, 1)] == [(0, 0), (0, 1), (0, 0), (1, 2), (1, 2)]
