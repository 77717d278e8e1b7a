"""Checks of the random-network generator in nets.py, which the property tests rely on."""

import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from nets import (BATCH_STATISTICS, HOOK_KINDS, INPLACE_RELUS, NEEDS_A_ROW, PLACEMENTS, UNSHAREABLE_KINDS,
                  make_input, networks)

any_network = st.tuples(st.booleans(), st.booleans()).flatmap(lambda flags: networks(*flags))


@settings(max_examples=30, deadline=None)
@given(any_network)
def test_traces_and_runs_at_small_batches(drawn):
    """The model runs at every batch size from its min_batch; its traced GraphModule computes the
    same where the draw says tracing is faithful; at 3 rows, every suffix after its prefix
    computes the same, from a value with the batch in dim 0 and the row shape the draw recorded."""
    model = drawn.model
    traced = torch.fx.symbolic_trace(model) if drawn.traceable else None
    with torch.no_grad():
        for batch in [b for b in (0, 1, 3) if b >= drawn.min_batch]:
            x = make_input(drawn, batch)
            out = model(x.clone())
            assert out.dim() == 2 and out.shape[0] == batch
            if traced is not None:
                torch.testing.assert_close(traced(x.clone()), out, rtol=0, atol=0)
            for k in model.cuts() if batch == 3 else ():
                value = model.prefix(k)(x.clone())
                assert tuple(value.shape) == (batch, *drawn.row_shapes[k]), f"v{k}"
                torch.testing.assert_close(model.suffix(k)(value), out, rtol=0, atol=0, msg=f"suffix at v{k}")


@settings(max_examples=30, deadline=None)
@given(st.booleans().flatmap(lambda views: networks(inplace_on_views=views)))
def test_shareable_networks_are_batch_separable(drawn):
    x = make_input(drawn, 3)
    with torch.no_grad():
        rows = torch.cat([drawn.model(x[i : i + 1].clone()) for i in range(3)])
        torch.testing.assert_close(drawn.model(x.clone()), rows, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(any_network)
def test_only_drawn_batch_norms_are_in_training_mode(drawn):
    training = [m for m in drawn.model.modules() if m.training]
    assert bool(training) == ("batchnorm_train" in drawn.unshareable)
    assert all(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in training)
    batch_statistics = bool(set(drawn.unshareable) & set(BATCH_STATISTICS))
    assert drawn.min_batch == (2 if batch_statistics else 1 if drawn.features & NEEDS_A_ROW else 0)
    assert drawn.example.shape[0] == 2
    assert len(drawn.mixers) == len(drawn.unshareable)


class _WritesToViews(TorchDispatchMode):
    """Records the in-place ops that write to a view."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        schema = func._schema
        for argument, value in zip(schema.arguments, args):
            writes = argument.alias_info is not None and argument.alias_info.is_write
            if writes and isinstance(value, torch.Tensor) and value._is_view():
                self.found.append(str(func))
        return func(*args, **(kwargs or {}))


@settings(max_examples=30, deadline=None)
@given(st.booleans().flatmap(lambda mixing: networks(mixing, inplace_on_views=False)))
def test_networks_that_must_not_write_to_views_do_not(drawn):
    mode = _WritesToViews()
    with torch.no_grad(), mode:
        drawn.model(make_input(drawn, 3))
    assert not mode.found, mode.found


def _derandomized_draws(max_examples: int = 10, strategy=None) -> list:
    """The networks of a derandomized run: the same draws every time it is called."""
    drawn = []

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None)
    @given(strategy or networks(allow_unshareable=True))
    def record(d):
        drawn.append(d)

    record()
    return drawn


def test_draws_every_kind_of_layer_and_call_style():
    drawn = _derandomized_draws(max_examples=120)
    kinds = {kind for d in drawn for kind in d.unshareable}
    assert kinds == set(UNSHAREABLE_KINDS)
    features = set().union(*(d.features for d in drawn))
    wanted = [  # at least one of each
        INPLACE_RELUS, ("y.add_", "skip.add_"), ("preact",),  # in place
        ("nn.BatchNorm2d",), ("nn.BatchNorm1d",), ("nn.LayerNorm",), ("layer_norm_sizes",), ("nn.GroupNorm",),
        ("view_flat", "view_flat_sizes"), ("reshape_flat",), ("slice_half",), ("fold_batch",),  # sizes
        ("pair_flat", "pair_flat_sizes", "pair_reshape", "pair_reshape_sizes"),
        *((f"placement:{p}",) for p in PLACEMENTS), *((f"hook:{k}",) for k in HOOK_KINDS), ("hook:network",),
    ]
    missing = [group for group in wanted if not features & set(group)]
    assert not missing, f"never drawn: {missing}"
    assert {d.traceable for d in drawn} == {True, False}
    assert {d.min_batch for d in drawn} == {0, 1, 2}
    traced = [torch.fx.symbolic_trace(d.model) for d in drawn if d.traceable]
    ops = {node.op for gm in traced for node in gm.graph.nodes}
    assert {"call_module", "call_function", "call_method"} <= ops


def test_weights_depend_only_on_the_draw():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        first = _derandomized_draws()
        torch.manual_seed(2)
        rng_state = torch.random.get_rng_state()
        second = _derandomized_draws()
        assert torch.equal(torch.random.get_rng_state(), rng_state), "drawing used the global RNG"
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a.example, b.example)
        a_state, b_state = a.model.state_dict(), b.model.state_dict()
        assert a_state.keys() == b_state.keys()
        assert all(torch.equal(a_state[k], b_state[k]) for k in a_state)
