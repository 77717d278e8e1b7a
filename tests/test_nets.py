"""Checks of the random-network generator in nets.py, which the property tests rely on."""

import torch
import torch.fx
from hypothesis import given, settings
from hypothesis import strategies as st

from nets import UNSHAREABLE_KINDS, make_input, networks

any_network = st.booleans().flatmap(networks)


@settings(max_examples=30, deadline=None)
@given(any_network)
def test_traces_and_runs_at_small_batches(drawn):
    traced = torch.fx.symbolic_trace(drawn.model)
    for batch in [b for b in (0, 1, 3) if b >= drawn.min_batch]:
        x = make_input(drawn, batch)
        out = traced(x)
        assert out.dim() == 2 and out.shape[0] == batch
        torch.testing.assert_close(out, drawn.model(x), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(networks())
def test_shareable_networks_are_batch_separable(drawn):
    x = make_input(drawn, 3)
    rows = torch.cat([drawn.model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(drawn.model(x), rows, rtol=1e-4, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(any_network)
def test_only_drawn_batch_norms_are_in_training_mode(drawn):
    training = [m for m in drawn.model.modules() if m.training]
    assert bool(training) == ("batchnorm_train" in drawn.unshareable)
    assert all(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in training)
    assert drawn.min_batch == (2 if training else 0)
    assert drawn.example.shape[0] == 2


def _derandomized_draws(max_examples: int = 10) -> list:
    """The networks of a derandomized run: the same draws every time it is called."""
    drawn = []

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None)
    @given(networks(allow_unshareable=True))
    def record(d):
        drawn.append(d)

    record()
    return drawn


def test_draws_every_unshareable_kind_and_call_style():
    drawn = _derandomized_draws(max_examples=50)
    kinds = {kind for d in drawn for kind in d.unshareable}
    assert kinds == set(UNSHAREABLE_KINDS)
    ops = {node.op for d in drawn for node in torch.fx.symbolic_trace(d.model).graph.nodes}
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
