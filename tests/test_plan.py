"""The plan: segments, batched FLOPs, and its printed table."""

from graft_fx.plan import Plan, Segment, Unshared
from models import fragments, seeded, realign_all


def test_segments_of_a_chain():
    _, tails = fragments(seeded(), [0, 3, 6])
    plan = realign_all(tails).plan
    assert [s.fragments for s in plan.segments] == [(0,), (0, 1), (0, 1, 2)]
    assert all(s.num_nodes > 0 and s.flops_per_row >= 0 for s in plan.segments)
    assert 0 < plan.batched_flops_fraction < 1


def test_batched_fraction_weighs_segments_by_fragments_served():
    plan = Plan(2, (Segment((0,), 3, 100), Segment((0, 1), 5, 200)), ())
    assert plan.batched_flops_fraction == 400 / 500


def test_table_lists_segments_and_unshared_nodes():
    plan = Plan(2, (Segment((0,), 3, 2_000_000), Segment((0, 1), 5, 4_000_000)),
                (Unshared(1, "bn", "BatchNorm2d in training mode"),))
    text = str(plan)
    assert "2 segments" in text and "80.0% of FLOPs run batched" in text
    assert "0,1" in text and "4.00" in text
    assert "fragment 1: bn: BatchNorm2d in training mode" in text
