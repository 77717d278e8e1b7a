"""Shape propagation at two batch sizes: which values carry rows, which are literals."""

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

from graft_fx.errors import GraftError
from graft_fx.rows import BATCH, InputSpec, Kind, MetaCache, propagate


def facts_of(fn, *row_shapes):
    gm = fx.symbolic_trace(fn)
    facts = propagate(gm, [InputSpec(s, torch.float32) for s in row_shapes], MetaCache(), "test")
    return {n.name: f for n, f in facts.items()}


def test_tensor_kinds():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return x @ self.w, self.w * 2, x.sum(0)

    f = facts_of(M(), (4, 3))
    assert f["x"].kind is Kind.ROWS and f["x"].row_shape == (4, 3)
    assert f["matmul"].kind is Kind.ROWS and f["matmul"].row_shape == (4, 5)
    assert f["w"].kind is Kind.CONST and f["mul"].kind is Kind.CONST
    assert f["sum_1"].kind is Kind.OTHER


def test_sizes_become_literals_and_the_batch_marker():
    def fn(x):
        n, c = x.shape[0], x.shape[1]
        return x.view(n, c, 1), x.dim(), x.size(0) * 2

    f = facts_of(fn, (7,))
    assert f["getitem"].scalar is BATCH
    assert f["getitem_1"].scalar == 7
    assert f["dim"].scalar == 4 - 2
    assert f["getattr_1"].scalar == (BATCH, 7)
    assert f["mul"].kind is Kind.OTHER  # 2 * batch is neither a literal nor the batch


def test_flops_and_bytes_per_row():
    f = facts_of(nn.Linear(8, 16), (8,))
    linear = list(f.values())[-1]
    assert linear.flops_per_row == 2 * 8 * 16
    assert linear.bytes_per_row == 16 * 4


def test_containers_of_rows():
    def fn(x):
        return torch.max(x, 1)

    f = facts_of(fn, (5,))
    assert f["max_1"].kind is Kind.ROWS and not f["max_1"].is_tensor


def test_hard_coded_batch_fails_with_the_node_named():
    def fn(x):
        return x.view(2, 6)

    with pytest.raises(GraftError, match=r"node 'view'.*batch size 3"):
        facts_of(fn, (6,))


def test_meta_cache_converts_each_weight_once():
    layer = nn.Linear(3, 3)
    cache = MetaCache()
    first = cache.state(layer)
    assert cache.state(layer) is first
    assert all(t.device.type == "meta" for t in first.values())
