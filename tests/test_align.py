"""The partition into classes: shared suffixes, distinct fragments, lanes, constants, order."""

import torch
import torch.nn as nn

import graft_fx
from graft_fx.separable import Role
from models import fragments, seeded, realign_all


def classes_of(tails):
    return realign_all(tails)._classes


def test_chain_fragments_share_nested_suffixes():
    _, tails = fragments(seeded(), [0, 3, 6])
    sets = {c.fragments for c in classes_of(tails) if c.role is Role.SHARED}
    assert sets == {(0,), (0, 1), (0, 1, 2)}


def test_members_come_from_distinct_fragments_and_inputs_come_first():
    _, tails = fragments(seeded(), [0, 2, 2, 5])
    classes = classes_of(tails)
    for c in classes:
        assert len(set(c.fragments)) == len(c.fragments)
        assert all(i < c.index for i in c.inputs)
    assert [c.index for c in classes] == list(range(len(classes)))


def test_a_module_called_twice_is_dealt_into_lanes():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(x) + self.act(x * 2)

    model = Twice()
    classes = realign_all([model, model], [torch.randn(1, 3)] * 2)._classes
    tanh = [c for c in classes if c.role is Role.SHARED and str(c.members[0][1].target) == "aten.tanh.default"]
    assert len(tanh) == 2 and all(c.fragments == (0, 1) for c in tanh)


def test_constants_are_merged_by_value():
    class Token(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.ones(1, 1, 4))

        def forward(self, x):
            return torch.cat([self.token.expand(x.shape[0], -1, -1), x], 1)

    a, b = Token(), Token()
    classes = realign_all([a, b], [torch.randn(1, 2, 4)] * 2)._classes
    consts = [c for c in classes if c.role is Role.CONST]
    assert len(consts) == 1 and consts[0].fragments == (0, 1)
    assert any(c.role is Role.SHARED and c.fragments == (0, 1) for c in classes)


def test_private_nodes_are_singletons():
    class Mix(nn.Module):
        def forward(self, x):
            return torch.softmax(x, 0).relu()

    classes = realign_all([Mix(), Mix()], [torch.randn(2, 3)] * 2)._classes
    softmax = [c for c in classes if c.role is Role.PRIVATE_ROWS]
    assert len(softmax) == 2 and all(len(c.members) == 1 for c in softmax)
    assert any(c.role is Role.SHARED and c.fragments == (0, 1) for c in classes)


class Squeezed(nn.Module):
    """Shared layers, then an op that must stay private (squeeze() drops a 1-row batch)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x).squeeze()


def test_a_private_op_near_the_outputs_does_not_block_sharing():
    torch.manual_seed(0)
    model = Squeezed().eval()
    rm = realign_all([model, model], [torch.randn(2, 6)] * 2)
    assert any(s.fragments == (0, 1) and s.num_nodes >= 3 for s in rm.plan.segments)
    assert any("squeeze" in u.reason for u in rm.plan.unshared)
    for sizes in [(1, 3), (2, 1), (0, 1), (1, 1)]:
        inputs = [torch.randn(n, 6) for n in sizes]
        for x, out in zip(inputs, rm(*inputs)):
            torch.testing.assert_close(out, model(x))


def test_the_cost_rule_declines_regions_that_copy_more_than_they_compute():
    class Tiny(nn.Module):
        def forward(self, x):
            return (x * 2).relu()

    wide = [torch.randn(2, 256)] * 2
    declined = graft_fx.realign([Tiny(), Tiny()], wide)
    assert not any(s.batched for s in declined.plan.segments)
    assert declined.plan.declined and "not worth batching" in str(declined.plan)
    shared = realign_all([Tiny(), Tiny()], wide)
    assert any(s.batched for s in shared.plan.segments)


def test_the_cost_rule_keeps_regions_with_real_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    rm = graft_fx.realign([model, model], [torch.randn(2, 64)] * 2)
    assert any(s.fragments == (0, 1) for s in rm.plan.segments) and not rm.plan.declined
