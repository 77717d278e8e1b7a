"""Layer keys: equal for the same layer however it was built, different otherwise."""

import copy

import torch
import torch.nn as nn

from graft_fx.analysis import analyze
from graft_fx.keys import KeyMaker, TensorInterner, fingerprint, freeze


def test_interner_matches_by_value_not_identity():
    intern = TensorInterner()
    a = torch.randn(64, 32)
    assert intern(a) == intern(a.clone()) == intern(a)
    b = a.clone()
    b[63, 31] += 1  # a value the fingerprint does not sample still tells them apart
    assert intern(b) != intern(a)
    assert intern(a.double()) != intern(a)
    assert intern(a.reshape(32, 64)) != intern(a)


def test_fingerprint_of_a_huge_weight():
    """Sample positions are integers: float positions run past the end above 2**24 elements."""
    assert len(fingerprint(torch.zeros(2**24 + 4))[-1]) == 16
    assert len(fingerprint(torch.zeros(5))[-1]) == 5
    assert len(fingerprint(torch.zeros(1))[-1]) == 1


def test_interner_keeps_parameters_apart_from_equal_buffers():
    intern = TensorInterner()
    bn = nn.BatchNorm2d(4)
    assert torch.equal(bn.bias, bn.running_mean)
    assert intern(bn.bias) != intern(bn.running_mean)


def layer_key(maker, module, example):
    """The key of the module's one layer; keys compare only within one KeyMaker."""
    a = analyze(module, example)
    const_ids = {}
    for n in a.nodes:  # number the weights, as alignment does
        if n.op == "get_attr":
            const_ids[n] = maker.const_number(maker.key(a.gm, n, a.facts, a.verdicts, const_ids, a.captured.batch))
    node = next(n for n in a.nodes if str(n.target) == "aten.conv2d.default")
    return maker.key(a.gm, node, a.facts, a.verdicts, const_ids, a.captured.batch)


class Wrap(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def test_keys_ignore_names_and_objects():
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    renamed = nn.Sequential()
    renamed.add_module("other_name", copy.deepcopy(conv))
    maker = KeyMaker()
    assert layer_key(maker, Wrap(conv), x) == layer_key(maker, renamed, x)


def test_keys_see_hyperparameters_weights_and_shapes():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    maker = KeyMaker()
    base = layer_key(maker, Wrap(conv), x)
    strided = copy.deepcopy(conv)
    strided.stride = (2, 2)
    assert layer_key(maker, Wrap(strided), x) != base
    reweighted = copy.deepcopy(conv)
    with torch.no_grad():
        reweighted.weight[0, 0, 0, 0] += 1
    assert layer_key(maker, Wrap(reweighted), x) != base
    assert layer_key(maker, Wrap(conv), torch.randn(2, 3, 9, 9)) != base


def test_freeze_makes_literals_hashable():
    hash(freeze((slice(None), [1, 2], {"a": slice(1, None)})))
    assert freeze([1, 2]) != freeze((1, 2))
