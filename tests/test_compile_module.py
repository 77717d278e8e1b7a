"""torch.compile and torch.export of a RealignedModule: same outputs as each fragment run alone,
per-fragment batch sizes dynamic, absent (None) and empty (batch 0) fragments handled."""

import pytest
import torch
import torch._dynamo
import torch.nn as nn
from torch._dynamo.utils import counters
from torch.export import Dim

from graft_fx.testing import assert_close, random_inputs
from models import fragments, realign_all, seeded


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3)).eval()


class TwoInputs(nn.Module):
    """A fragment with two inputs (of one batch) that feeds the shared tail."""

    def __init__(self, tail: nn.Module):
        super().__init__()
        self.tail = tail

    def forward(self, x, y):
        return self.tail(x * y)


@pytest.fixture(scope="module")
def rm():
    """Two tails of one MLP: the whole of it, and the part after its first layer."""
    model = mlp()
    return realign_all([model, model[2:]], [torch.randn(2, 6), torch.randn(2, 8)])


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def assert_matches_fragments(rm, outputs, args):
    """``outputs`` equal each fragment run alone on its argument (None where it is absent)."""
    assert len(outputs) == rm.num_fragments
    for f, (out, x) in enumerate(zip(outputs, args)):
        if x is None:
            assert out is None
        else:
            with torch.no_grad():
                assert_close(out, rm.reference(f)(*(x if isinstance(x, tuple) else (x,))))


SIZES = [(2, 3), (5, 4), (1, 1), (1, 6), (0, 2), (3, 0), (0, 0), (None, 3), (4, None), (None, 0)]


@pytest.mark.parametrize("dynamic", [None, True, False])
@torch._dynamo.config.patch(recompile_limit=len(SIZES) + 1)  # a graph per pattern, and per size if static
def test_compiled_fullgraph_matches_separate_execution(rm, dynamic):
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for seed, sizes in enumerate(SIZES):
        args = random_inputs(rm, sizes, seed=seed)
        assert_matches_fragments(rm, fast(*args), args)


def test_dynamic_batch_sizes_compile_once_per_pattern_of_presence(rm):
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True, dynamic=True)
    for sizes in [(2, 3), (5, 4), (7, 2), (3, 9), (11, 13)]:
        fast(*random_inputs(rm, sizes))
    assert compiled_graphs() == 1
    for sizes in [(None, 4), (None, 6), (None, 2)]:
        fast(*random_inputs(rm, sizes))
    assert compiled_graphs() == 2


def test_default_dynamic_recompiles_once_then_never(rm):
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True)
    for sizes in [(2, 3), (3, 4), (5, 6), (4, 2), (9, 7)]:
        fast(*random_inputs(rm, sizes))
    assert compiled_graphs() == 2  # static for the first sizes, dynamic from the second on


def test_batch_sizes_zero_and_one_compile_their_own_graph_once(rm):
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True, dynamic=True)
    for sizes in [(2, 3), (0, 4), (0, 5), (1, 4), (1, 7)]:
        fast(*random_inputs(rm, sizes))
    assert compiled_graphs() == 3


def test_compiled_convolutional_tails_match_separate_execution():
    _, tails = fragments(seeded(), [1, 3])
    rm = realign_all(tails)
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True, dynamic=True)
    for sizes in [(2, 3), (4, 1), (0, 2), (None, 5)]:
        args = random_inputs(rm, sizes)
        assert_matches_fragments(rm, fast(*args), args)


def test_compiled_with_inductor_matches_separate_execution(rm):
    fast = torch.compile(rm, fullgraph=True, dynamic=True)
    for sizes in [(2, 3), (6, 5)]:
        args = random_inputs(rm, sizes)
        assert_matches_fragments(rm, fast(*args), args)
    assert compiled_graphs() == 1


def test_compiled_module_follows_weights_updated_in_place_after_one_eager_call():
    model = mlp()
    copy = mlp()  # equal weights, so shared by value until one changes
    rm = realign_all([model, copy], [torch.randn(2, 6), torch.randn(2, 6)])
    fast = torch.compile(rm, backend="aot_eager", fullgraph=True)
    args = random_inputs(rm, (3, 2))
    fast(*args)
    with torch.no_grad():
        copy[4].weight.mul_(2)
    assert rm.weights_updated()
    rm(*args)  # re-aligns
    assert_matches_fragments(rm, fast(*args), args)


@pytest.mark.parametrize("strict", [False, True])
def test_exported_program_runs_at_new_batch_sizes(rm, strict):
    program = torch.export.export(rm, random_inputs(rm, (2, 3)), strict=strict,
                                  dynamic_shapes={"inputs": ({0: Dim("a")}, {0: Dim("b")})})
    run = program.module()
    for seed, sizes in enumerate([(5, 7), (1, 4), (1, 1), (0, 3), (6, 0)]):
        args = random_inputs(rm, sizes, seed=seed)
        assert_matches_fragments(rm, run(*args), args)


def test_exported_program_keeps_an_absent_fragment_absent(rm):
    program = torch.export.export(rm, random_inputs(rm, (None, 3)), dynamic_shapes={"inputs": (None, {0: Dim("b")})})
    args = random_inputs(rm, (None, 6))
    assert_matches_fragments(rm, program.module()(*args), args)


def test_exported_fragment_with_two_inputs_shares_one_dim():
    model = mlp()
    rm = realign_all([TwoInputs(model[2:]), model[2:]], [(torch.randn(2, 8), torch.randn(2, 8)), torch.randn(2, 8)])
    batch = Dim("batch")
    program = torch.export.export(rm, random_inputs(rm, (2, 3)),
                                  dynamic_shapes={"inputs": (({0: batch}, {0: batch}), {0: Dim("other")})})
    for sizes in [(5, 2), (1, 7)]:
        args = random_inputs(rm, sizes)
        assert_matches_fragments(rm, program.module()(*args), args)
