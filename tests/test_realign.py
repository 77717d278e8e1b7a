"""realign() and RealignedModule: the public contract, the calling convention and its errors."""

import copy

import pytest
import torch
import torch.nn as nn

import graft_fx
from graft_fx import GraftError
from models import ResidualNet, assert_gradients_match, example, fragments, seeded, realign_all


@pytest.fixture(scope="module")
def setup():
    model = seeded()
    heads, tails = fragments(model, [0, 2, 5])
    return model, heads, tails, realign_all(tails)


def inputs(heads, batches):
    return [None if b is None else h(example(b)) for h, b in zip(heads, batches)]


def assert_matches(rm, tails, xs):
    with torch.no_grad():
        outs = rm(*xs)
        assert len(outs) == len(tails)
        for out, tail, x in zip(outs, tails, xs):
            if x is None:
                assert out is None
            else:
                torch.testing.assert_close(out, tail(x))


@pytest.mark.parametrize("batches", [(1, 2, 3), (3, None, 1), (0, 2, 0), (None, None, 2), (None, None, None), (0, 0, 0)])
def test_outputs_equal_separate_execution(setup, batches):
    _, heads, tails, rm = setup
    assert_matches(rm, tails, inputs(heads, batches))


def test_the_shared_suffix_runs_once(setup):
    _, _, tails, rm = setup
    everyone = tuple(range(len(tails)))
    assert any(s.fragments == everyone and s.num_nodes > 3 for s in rm.plan.segments)
    ran = lambda gm: sum(str(n.target) in ("aten.conv2d.default", "aten.linear.default") for n in gm.graph.nodes)
    assert ran(rm.graph_module) < sum(ran(t) for t in tails)


def test_absent_fragments_cost_nothing(setup):
    _, heads, tails, rm = setup
    only_last = rm.graph_for(frozenset({2}))
    assert not any(n.name.startswith(("f0_", "f1_")) and n.op == "call_function" for n in only_last.graph.nodes)
    assert rm.graph_for(frozenset({2})) is only_last


def test_separately_loaded_fragments_share_like_one_instance(setup):
    model, heads, tails, rm = setup
    copies = [copy.deepcopy(model) for _ in tails]
    loaded = [graft_fx.split(m, graft_fx.cut_points(model, example())[i], example())[1] for m, i in zip(copies, [0, 2, 5])]
    rm2 = realign_all(loaded)
    assert [s.fragments for s in rm2.plan.segments] == [s.fragments for s in rm.plan.segments]
    assert_matches(rm2, loaded, inputs(heads, (2, 1, 2)))


def test_different_weights_are_not_shared():
    heads, tails = fragments(seeded(seed=0), [3])
    _, others = fragments(seeded(seed=1), [3])
    rm = realign_all([tails[0], others[0]])
    assert all(not s.batched for s in rm.plan.segments)
    assert_matches(rm, [tails[0], others[0]], inputs(heads * 2, (2, 3)))


def test_plain_modules_with_example_inputs_and_tuple_inputs():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x, y):
            return self.lin(x) * y

    torch.manual_seed(0)
    pair, twin = Pair(), Pair()
    twin.load_state_dict(pair.state_dict())
    rm = realign_all([pair, twin], [(torch.randn(1, 4), torch.randn(1, 3))] * 2)
    assert any(s.batched and s.num_nodes == 2 for s in rm.plan.segments)
    x, y, z, w = torch.randn(2, 4), torch.randn(2, 3), torch.randn(5, 4), torch.randn(5, 3)
    a, b = rm((x, y), [z, w])
    torch.testing.assert_close(a, pair(x, y))
    torch.testing.assert_close(b, twin(z, w))


def test_weights_equal_at_realign_and_updated_after_stay_each_fragment_s_own():
    """Two copies with equal weights share one layer; a fine-tune then loaded into one of them
    (in place, as ``load_state_dict`` does) must reach its outputs alone: the module re-aligns."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    b = copy.deepcopy(a)
    rm = graft_fx.realign([a, b], [torch.randn(2, 8)] * 2, min_flops_per_byte=0)
    assert any(s.batched for s in rm.plan.segments)
    tuned = copy.deepcopy(a)
    with torch.no_grad():
        tuned[2].weight.add_(1.0)
    b.load_state_dict(tuned.state_dict())
    x, y = torch.randn(3, 8), torch.randn(2, 8)
    out_a, out_b = rm(x, y)
    torch.testing.assert_close(out_a, a(x))
    torch.testing.assert_close(out_b, b(y))


def test_a_layer_feeding_different_users_is_not_shared():
    """Sharing grows back from the outputs: a common layer followed by different ones stays apart."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    rm = realign_all([nn.Sequential(lin, nn.ReLU()), nn.Sequential(lin, nn.Tanh())], [torch.randn(1, 4)] * 2)
    assert not any(s.batched for s in rm.plan.segments)


def test_output_structures_are_reproduced():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return {"logits": y, "parts": [y.relu(), x.shape[1]]}

    model = Dict()
    rm = realign_all([model, model], [torch.randn(1, 4)] * 2)
    x = torch.randn(3, 4)
    out, _ = rm(x, x)
    ref = model(x)
    assert set(out) == {"logits", "parts"} and isinstance(out["parts"], list) and out["parts"][1] == 4
    torch.testing.assert_close(out["logits"], ref["logits"])


def test_plan_reports_what_was_not_shared():
    class TrainBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.lin(self.bn(x))

    model = TrainBN().train()
    rm = realign_all([model, copy.deepcopy(model)], [torch.randn(2, 4)] * 2)  # each its own statistics
    assert {u.fragment for u in rm.plan.unshared} == {0, 1}
    assert all("training" in u.reason for u in rm.plan.unshared)
    assert any(s.batched for s in rm.plan.segments)  # the linear after it is shared
    text = str(rm.plan)
    assert "not shared" in text and "% of FLOPs run batched" in text
    x, y = torch.randn(3, 4), torch.randn(2, 4)
    plan = rm.plan
    a, b = rm(x, y)
    torch.testing.assert_close(a, model(x))
    torch.testing.assert_close(b, model(y))
    assert rm.plan is plan  # the statistics it updates as it runs are not weights to re-align on


class TestErrors:
    def test_empty_fragment_list(self):
        with pytest.raises(GraftError, match="at least one fragment"):
            realign_all([])

    def test_untraceable_fragment_suggests_export(self):
        class Branchy(nn.Module):
            def forward(self, x):
                if x.sum() > 0:
                    return x
                return -x

        with pytest.raises(graft_fx.TraceError, match=r"x\.sum\(\) > 0.*torch\.cond"):
            realign_all([Branchy()], [torch.randn(1, 3)])

    def test_mixed_dtypes_and_devices(self):
        with pytest.raises(GraftError, match="float32.*float64"):
            realign_all([nn.Linear(3, 4), nn.Linear(3, 4).double()], [torch.randn(1, 3), torch.randn(1, 3).double()])
        meta = nn.Linear(3, 4).to("meta")
        with pytest.raises(GraftError, match="devices"):
            realign_all([nn.Linear(3, 4), meta], [torch.randn(1, 3), torch.randn(1, 3, device="meta")])

    def test_wrong_number_of_inputs(self, setup):
        _, heads, _, rm = setup
        with pytest.raises(GraftError, match="takes 3 inputs"):
            rm(heads[0](example()))

    def test_wrong_row_shape_names_fragment_and_expected_shape(self, setup):
        _, heads, _, rm = setup
        xs = inputs(heads, (1, 1, 1))
        xs[1] = xs[0]
        with pytest.raises(GraftError, match=r"fragment 1 .*got shape \(1, 3, 6, 6\), expected \(\*, 4, 6, 6\)"):
            rm(*xs)

    def test_wrong_dtype_and_arity(self, setup):
        _, heads, _, rm = setup
        xs = inputs(heads, (1, 1, 1))
        with pytest.raises(GraftError, match="dtype"):
            rm(xs[0].double(), xs[1], xs[2])
        with pytest.raises(GraftError, match="takes 1 input"):
            rm((xs[0], xs[0]), xs[1], xs[2])

    def test_shapes_unknown(self):
        with pytest.raises(GraftError, match="unknown"):
            realign_all([ResidualNet()])


class Masked(nn.Module):
    """An optional argument with a default, as attention blocks often have."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x, mask=None):
        h = torch.relu(self.fc(x))
        if mask is not None:
            h = h * mask
        return self.out(h)


def test_optional_arguments_keep_their_defaults_in_cuts_and_splits():
    torch.manual_seed(0)
    model = Masked().eval()
    x = torch.randn(3, 4)
    cuts = graft_fx.cut_points(model, x)
    assert len(cuts) >= 3
    for cut in cuts:
        head, tail = graft_fx.split(model, cut, x)
        torch.testing.assert_close(tail(head(x)), model(x))


def test_fragments_from_every_source_share_with_each_other():
    torch.manual_seed(0)
    model = Masked().eval()
    x = torch.randn(2, 4)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False)
    traced = torch.fx.symbolic_trace(model, concrete_args={"mask": None})
    rm = realign_all([model, program, traced], [x, None, x])
    assert any(s.fragments == (0, 1, 2) for s in rm.plan.segments)
    inputs = [torch.randn(1, 4), torch.randn(2, 4), torch.randn(0, 4)]
    for got, inp in zip(rm(*inputs), inputs):
        torch.testing.assert_close(got, model(inp))


def test_autocast_regions_are_captured_as_they_run():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = self.fc(x)
            return h.float().relu()

    torch.manual_seed(0)
    model = Mixed().eval()
    rm = realign_all([model, model], [torch.randn(2, 8)] * 2)
    assert any(s.fragments == (0, 1) for s in rm.plan.segments)
    x, y = torch.randn(3, 8), torch.randn(1, 8)
    a, b = rm(x, y)
    torch.testing.assert_close(a, model(x))  # float32 tolerance: bf16 rounding would exceed it if dropped
    torch.testing.assert_close(b, model(y))


def test_weights_made_under_inference_mode_realign_and_run():
    """Inference tensors have no version counter; the module must not read one (found by the
    compile benchmark, whose models were built under inference_mode)."""
    with torch.inference_mode():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).eval()
        x = torch.randn(2, 8)
        rm = graft_fx.realign([m, m[1:]], [x, m[0](x)])
        a, b = rm(x, m[0](x))
        torch.testing.assert_close(a, m(x))
        torch.testing.assert_close(b, m[1:](m[0](x)))


class WritesInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        x.mul_(2).add_(1)
        return self.lin(x)


def test_one_tensor_given_to_two_fragments_that_write_into_it_is_refused():
    """Found by review: run one after the other, the second fragment reads the first's writes;
    batched, neither does. A clone each is fine."""
    torch.manual_seed(0)
    m = WritesInput().eval()
    rm = graft_fx.realign([m, m], [torch.randn(3, 8)] * 2)
    y = torch.randn(3, 8)
    with pytest.raises(GraftError, match="writes into its input 0 in place, and fragment 1's input 0 is the same"):
        rm(y, y)
    a, b = y.clone(), y.clone()
    out_a, out_b = rm(a, b)
    want = y.clone()
    torch.testing.assert_close(out_a, m(want))
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(a, want)


@pytest.mark.parametrize("share", ["weights", "structure"])
def test_copies_equal_in_value_get_each_their_own_gradients(share):
    """Found by review: a layer shared because two copies' parameters are equal in value read
    fragment 0's parameter for both, so fragment 1's gradients went to fragment 0's. In grad mode
    each fragment reads its own parameters."""
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))
    b = copy.deepcopy(a)
    rm = graft_fx.realign([a, b], [torch.randn(2, 8)] * 2, min_flops_per_byte=0, share=share)
    assert any(s.batched for s in rm.plan.segments)
    assert_gradients_match(rm, [a, b], [torch.randn(3, 8), torch.randn(2, 8)])
