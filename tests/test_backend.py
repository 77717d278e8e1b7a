"""The ``graft`` torch.compile backend: fragments found in one captured graph, realigned."""

import copy
import warnings
from importlib.metadata import entry_points

import pytest
import torch
import torch.nn as nn
import torchvision
from torch._dynamo.utils import counters

import graft_fx
from graft_fx.backend import fragments_of
from graft_fx.testing import fine_tuned
from models import ResidualNet, assert_gradients_match, example, fragments, seeded

DEBUG = {"compiler": "aot_eager", "min_flops_per_byte": 0}


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def compiled(fn, **options):
    return torch.compile(fn, backend="graft", options={**DEBUG, **options}, fullgraph=True)


def check(fn, reference, *inputs):
    """``fn(*inputs)`` equals ``reference(*inputs)`` leaf by leaf."""
    for got, want in zip(fn(*inputs), reference(*inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_the_backend_is_registered_on_import_and_as_an_entry_point():
    assert "graft" in torch._dynamo.list_backends()
    points = entry_points(group="torch_dynamo_backends")
    assert [p.value for p in points if p.name == "graft"] == ["graft_fx.backend:graft"]


def test_two_tails_of_one_model_are_realigned_and_equal_eager_at_every_batch_size():
    model = mlp()
    short, long = model[2:], model

    def serve(xa, xb):
        return short(xa), long(xb)

    fn = compiled(serve)
    for na, nb in ((3, 5), (4, 6), (1, 1), (7, 2), (0, 3), (2, 0)):
        check(fn, serve, torch.randn(na, 32), torch.randn(nb, 8))
    assert counters["graft"]["realign"] >= 1


def test_dynamic_batch_sizes_do_not_recompile_on_every_call():
    model = mlp()

    def serve(xa, xb):
        return model[2:](xa), model(xb)

    fn = compiled(serve)
    for n in range(2, 12):
        check(fn, serve, torch.randn(n, 32), torch.randn(n + 3, 8))
    assert counters["graft"]["realign"] <= 2  # the first (static) graph, then one dynamic graph
    assert counters["stats"]["unique_graphs"] <= 4


def test_split_tails_of_a_residual_net_realign_through_the_backend():
    (head_a, head_b), (a, b) = fragments(seeded(ResidualNet), [1, 3])

    def serve(x, y):
        return a(x), b(y)

    check(compiled(serve), serve, head_a(example(3)), head_b(example(2)))
    assert counters["graft"]["realign"] == 1


def test_fine_tuned_copies_share_by_structure_when_asked():
    copies = fine_tuned(mlp(), 3)

    def serve(x, y, z):
        return copies[0](x), copies[1](y), copies[2](z)

    xs = (torch.randn(3, 8), torch.randn(1, 8), torch.randn(4, 8))
    check(compiled(serve, share="structure"), serve, *xs)
    assert counters["graft"]["realign"] == 1
    torch._dynamo.reset()
    counters.clear()
    check(compiled(serve), serve, *xs)  # by value, nothing is equal: compiled unchanged
    assert counters["graft"]["realign"] == 0


def _bump(layer: nn.Linear) -> None:
    with torch.no_grad():
        layer.weight.add_(1.0)


def _replace(layer: nn.Linear) -> None:
    layer.weight = nn.Parameter(layer.weight.detach() + 1.0)


@pytest.mark.parametrize("change, layer, realigned", [(_bump, 0, 2), (_replace, 0, 2), (_bump, 4, 1)],
                         ids=["updated in place", "replaced", "nothing left to share"])
def test_a_weight_changed_after_compiling_reaches_the_outputs(change, layer, realigned):
    """Dynamo passes the weights as inputs without recompiling; the backend re-aligns, since the
    copies' layers, equal when compiled, differ now. Changing the first layer leaves the suffix
    after it shared; changing the last leaves nothing to share, and the graph then runs
    unchanged from that very call (found by review: that call ran the stale realigned graph)."""
    a = mlp()
    b = copy.deepcopy(a)

    def serve(x, y):
        return a(x), b(y)

    fn = compiled(serve)
    x, y = torch.randn(3, 8), torch.randn(5, 8)
    check(fn, serve, x, y)
    change(b[layer])
    check(fn, serve, x, y)
    assert counters["graft"]["realign"] == realigned


@pytest.mark.parametrize("serve", [
    lambda model, x, y: (model(x),),                      # one fragment
    lambda model, x, y: (model(x) + model(y),),           # outputs that join the fragments
    lambda model, x, y: (model(x), y * 2),                # a fragment without layers to share
], ids=["one fragment", "joined outputs", "nothing shared"])
def test_graphs_with_nothing_to_realign_compile_unchanged(serve):
    model = mlp()
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check(compiled(lambda x, y: serve(model, x, y)), lambda x, y: serve(model, x, y), x, y)
    assert counters["graft"]["realign"] == 0


def test_fragments_of_finds_one_fragment_per_independent_output_group():
    model = mlp()

    def serve(xa, xb):
        return model[2:](xa), model(xb), model(xb).sum(1)

    found = []

    def spy(gm, example_inputs):
        found.extend(fragments_of(gm, example_inputs))
        return gm.forward

    torch.compile(serve, backend=spy)(torch.randn(3, 32), torch.randn(4, 8))
    assert sorted(f.outputs for f in found) == [(0,), (1, 2)]
    assert all(len(f.data) == 1 for f in found)


def test_an_unknown_option_is_a_clear_error():
    with pytest.raises(Exception, match="unknown option"):
        compiled(lambda x: (x * 2,), bogus=1)(torch.randn(2))
    with pytest.raises(Exception, match="compiler='tvm'"):
        compiled(lambda x: (x * 2,), compiler="tvm")(torch.randn(2))


def test_torchvision_tails_realigned_by_the_backend_equal_eager():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    cuts = graft_fx.cut_points(model, x)
    (head_a, a), (head_b, b) = (graft_fx.split(model, cuts[i], x) for i in (len(cuts) - 6, len(cuts) - 3))

    def serve(u, v):
        return a(u), b(v)

    fn = compiled(serve)
    for na, nb in ((2, 3), (1, 0)):
        check(fn, serve, head_a(torch.randn(na, 3, 64, 64)), head_b(torch.randn(nb, 3, 64, 64)))
    assert counters["graft"]["realign"] >= 1


def test_inductor_compiles_the_realigned_module():
    model = mlp()

    def serve(xa, xb):
        return model[2:](xa), model(xb)

    fn = torch.compile(serve, backend="graft", options={"min_flops_per_byte": 0}, fullgraph=True)
    check(fn, serve, torch.randn(3, 32), torch.randn(5, 8))
    assert counters["graft"]["realign"] == 1


class Counted(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls.add_(1)
        return self.body(x)


def test_side_effects_on_weights_alone_keep_the_graph_unchanged():
    """Found by review: a call counter (or a train-mode batch norm's num_batches_tracked) reads
    no data, so it belonged to no fragment and was dropped. Such a graph is compiled unchanged."""
    a = Counted().eval()
    b = copy.deepcopy(a)
    fn = compiled(lambda x, y: (a(x), b(y)))
    for _ in range(3):
        fn(torch.randn(3, 8), torch.randn(4, 8))
    assert a.calls.item() == b.calls.item() == 3
    assert counters["graft"]["realign"] == 0


TEMPERATURE, MEAN, PROTOTYPES = torch.tensor(2.0), torch.randn(1, 32), torch.randn(2, 4)


@pytest.mark.parametrize("tail", [lambda m, x: m[2:](x) / TEMPERATURE, lambda m, x: m[2:](x - MEAN),
                                  lambda m, x: m[2:](x) @ PROTOTYPES.T], ids=["scalar", "row", "matrix"])
def test_tensors_the_function_closes_over_are_constants_not_fragments(tail):
    """Found by review: globals and closures' tensors were taken for batched inputs (a crash)."""
    model = mlp()

    def serve(x, y):
        return tail(model, x), model(y)

    check(compiled(serve), serve, torch.randn(3, 32), torch.randn(4, 8))


def test_sequences_of_varying_length_are_compiled_unchanged():
    """Found by review: with T dynamic, the realigned module fixed T at its first value."""
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).eval()

    def serve(xa, xb):
        return model[2:](xa), model(xb)

    fn = compiled(serve)
    for na, nb, t in ((3, 5, 4), (4, 6, 5), (2, 3, 7)):
        check(fn, serve, torch.randn(na, t, 128), torch.randn(nb, t, 64))


@pytest.mark.parametrize("option, value", [("share", "structur"), ("kernels", "cuda"), ("min_flops_per_byte", "x"),
                                           ("min_flops_per_byte", -1), ("verify", "yes")])
def test_a_bad_option_value_is_a_clear_error_at_compile_time(option, value):
    with pytest.raises(Exception, match=f"{option}="):
        compiled(lambda x: (x * 2,), **{option: value})(torch.randn(2))


def test_gradients_reach_each_copy_s_own_weights_through_the_backend():
    """Found by review: copies equal in value shared one layer, and one copy's gradients went to
    the other's parameters."""
    a = mlp().train()
    b = copy.deepcopy(a)

    def serve(x, y):
        return a(x), b(y)

    assert_gradients_match(compiled(serve), [a, b], [torch.randn(3, 8), torch.randn(5, 8)])
    assert counters["graft"]["realign"] == 1


def test_a_broadcast_argument_or_dynamic_feature_dims_run_the_graph_unchanged():
    """Found by review: a [1, F] argument was taken for rows of its fragment (a GraftError on
    every call), and dynamic=True made every dim symbolic, so nothing was ever realigned."""
    model = mlp()

    def scaled(x, y, scale):
        return model[2:](x), model(y * scale)

    check(compiled(scaled), scaled, torch.randn(3, 32), torch.randn(5, 8), torch.rand(1, 8))

    def serve(x, y):
        return model[2:](x), model(y)

    fn = torch.compile(serve, backend="graft", options=DEBUG, dynamic=True)
    check(fn, serve, torch.randn(3, 32), torch.randn(5, 8))
    assert counters["graft"]["realign"] == 1


def test_a_warmed_up_function_serves_several_threads():
    """After one call from one thread (the realignment, and Dynamo's first compile, which is not
    thread-safe in torch 2.14), calls from several threads at once are exact."""
    import concurrent.futures

    model = mlp()

    def serve(x, y):
        return model[2:](x), model(y)

    fn = compiled(serve)
    inputs = [(torch.randn(3, 32), torch.randn(4, 8)) for _ in range(8)]
    fn(*inputs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda xy: fn(*xy), inputs))
    for (x, y), got in zip(inputs, results):
        for g, want in zip(got, serve(x, y)):
            torch.testing.assert_close(g, want)
    assert counters["graft"]["realign"] == 1
