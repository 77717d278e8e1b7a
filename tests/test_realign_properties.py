"""Property tests of realign() on random networks, random cuts and random batch sizes.

Each example draws a network from nets.py (chains and DAGs of conv, linear, eval-mode batch
norm, relu, gelu, pooling, residual adds, concatenated branches and a flatten), one to four cuts
(the same cut may repeat: two fragments of one type), and per-fragment batch sizes from 0 to 3
or None for an absent fragment. Two kinds of property are checked:

  equivalence  the realigned module returns, for every fragment, what the fragment returns when
               run alone (None for an absent one);
  sharing      where sharing must happen, it does: every fragment of one model also runs the
               deepest fragment's whole tail, so that tail is one shared suffix of all of them;
               and where it must not (layers whose rows depend on other rows), it does not.
"""

from __future__ import annotations

import copy
import operator
from typing import NamedTuple, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

import graft_fx
from models import realign_all
from graft_fx.align import NodeClass
from graft_fx.separable import Role
from nets import Drawn, batch_sizes, make_input, networks, rowmix

MAX_FRAGMENTS = 4

GraphModules = Sequence[fx.GraphModule]


class Case(NamedTuple):
    """A drawn network, its cut points in graph order, and the index of each fragment's cut."""

    drawn: Drawn
    cuts: list[graft_fx.CutPoint]
    chosen: list[int]

    @property
    def deepest(self) -> int:
        """The fragment cut latest: every other fragment also runs its whole tail."""
        return max(range(len(self.chosen)), key=self.chosen.__getitem__)


@st.composite
def cases(draw, nets: st.SearchStrategy[Drawn] = networks()) -> Case:
    """A network from ``nets`` and one to MAX_FRAGMENTS cuts of it, repeats allowed."""
    drawn = draw(nets)
    cuts = graft_fx.cut_points(drawn.model, drawn.example)
    k = draw(st.integers(1, MAX_FRAGMENTS))
    chosen = draw(st.lists(st.integers(0, len(cuts) - 1), min_size=k, max_size=k))
    return Case(drawn, cuts, chosen)


@st.composite
def presences(draw, case: Case) -> tuple[int | None, ...]:
    """Per-fragment batch sizes the model accepts, with None for an absent fragment. Absent
    fragments are drawn as a set, which keeps most fragments present in most examples."""
    k = len(case.chosen)
    sizes = draw(st.lists(batch_sizes(case.drawn.min_batch), min_size=k, max_size=k))
    absent = draw(st.sets(st.integers(0, k - 1)))
    return tuple(None if f in absent else b for f, b in enumerate(sizes))


def split_all(case: Case, models: Sequence[nn.Module] | None = None) -> tuple[list, list]:
    """Each fragment's (heads, tails), cut from ``models[f]`` (default: the drawn model).

    Fragments cut at the same place from the same model object get the same head and tail.
    """
    models = models or [case.drawn.model] * len(case.chosen)
    pairs: dict[tuple[int, int], tuple[fx.GraphModule, fx.GraphModule]] = {}
    for model, at in zip(models, case.chosen):
        if (id(model), at) not in pairs:
            pairs[(id(model), at)] = graft_fx.split(model, case.cuts[at], case.drawn.example)
    heads, tails = zip(*(pairs[(id(model), at)] for model, at in zip(models, case.chosen)))
    return list(heads), list(tails)


def tail_inputs(case: Case, heads: GraphModules, batches: Sequence[int | None], seed: int = 0) -> list:
    """What each fragment receives: its head run on fresh random rows (None if absent)."""
    with torch.no_grad():
        return [
            None if b is None else head(make_input(case.drawn, b, seed=seed * MAX_FRAGMENTS + f))
            for f, (head, b) in enumerate(zip(heads, batches))
        ]


def assert_matches_separate(rm: graft_fx.RealignedModule, tails: GraphModules, inputs: Sequence) -> None:
    """``rm(*inputs)[f]`` equals ``tails[f](inputs[f])`` for every fragment, None for an absent one."""
    with torch.no_grad():
        got = rm(*inputs)
        expected = [None if x is None else tail(x) for tail, x in zip(tails, inputs)]
    assert len(got) == len(tails)
    for f, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"fragment {f} is absent but got an output"
        else:
            torch.testing.assert_close(g, e, msg=lambda m, f=f: f"fragment {f}: {m}")


def class_of(rm: graft_fx.RealignedModule) -> dict[tuple[int, str], NodeClass]:
    """The class of every (fragment, node name)."""
    return {(f, n.name): c for c in rm._classes for f, n in c.members}


def partition(rm: graft_fx.RealignedModule) -> set[frozenset[tuple[int, str]]]:
    """The classes as sets of (fragment, node name): what runs as one node."""
    return {frozenset((f, n.name) for f, n in c.members) for c in rm._classes}


def layer_nodes(gm: fx.GraphModule) -> int:
    """Call nodes that run a layer, leaving out the row bookkeeping of rewrite.py: batch sizes
    and their sums, ``narrow`` to slice rows, ``torch.cat`` along dim 0 to gather them."""
    bookkeeping: set[fx.Node] = set()
    for n in gm.graph.nodes:
        if (
            n.op == "call_method" and n.target in ("size", "narrow")
            or n.target is torch.cat and n.args[1:] == (0,)
            or n.target is operator.add and n.all_input_nodes and set(n.all_input_nodes) <= bookkeeping
        ):
            bookkeeping.add(n)
    return sum(n.op.startswith("call_") and n not in bookkeeping for n in gm.graph.nodes)


def assert_deepest_suffix_shared(rm: graft_fx.RealignedModule, case: Case, tails: GraphModules) -> None:
    """Every layer of the deepest fragment is shared (its ops are all batch-separable) and runs
    once, on the rows of every fragment."""
    k, d = len(case.chosen), case.deepest
    a = rm._analyses[d]
    computing = [n for n in a.nodes if a.verdicts[n].role not in (Role.INPUT, Role.CONST, Role.FOLDED)]
    private = [n.name for n in computing if a.verdicts[n].role is not Role.SHARED]
    assert not private, f"fragment {d} keeps batch-separable nodes private: {private}"
    classes = class_of(rm)
    everyone = tuple(range(k))
    for n in computing:
        assert classes[(d, n.name)].fragments == everyone, f"{n.name} of fragment {d} is not shared by all"
    if k > 1 and computing:
        assert everyone in [s.fragments for s in rm.plan.segments], str(rm.plan)
        separate = sum(layer_nodes(t) for t in tails)
        assert layer_nodes(rm.graph_module) <= separate - (k - 1) * len(computing), rm.graph_module.code


@given(cases(), st.data())
def test_realigned_outputs_equal_separate_outputs(case, data):
    heads, tails = split_all(case)
    rm = realign_all(tails)
    assert_matches_separate(rm, tails, tail_inputs(case, heads, data.draw(presences(case))))


@given(cases())
def test_deepest_fragments_tail_is_shared_by_all(case):
    """Sharing where it must: every fragment runs the deepest fragment's tail, so all share it."""
    heads, tails = split_all(case)
    assert_deepest_suffix_shared(realign_all(tails), case, tails)


@given(cases(), st.data())
def test_fragments_cut_from_an_equal_copy_share_alike(case, data):
    """Weights are compared by value: a fragment cut from a deep copy shares as if cut from the
    original."""
    k = len(case.chosen)
    twin = copy.deepcopy(case.drawn.model)
    from_twin = data.draw(st.lists(st.booleans(), min_size=k, max_size=k).filter(any))
    one = realign_all(split_all(case)[1])
    heads, tails = split_all(case, [twin if t else case.drawn.model for t in from_twin])
    mixed = realign_all(tails)
    assert partition(mixed) == partition(one)
    assert mixed.plan == one.plan
    assert_deepest_suffix_shared(mixed, case, tails)
    assert_matches_separate(mixed, tails, tail_inputs(case, heads, data.draw(presences(case))))


def mixes_rows(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is one of nets.py's unshareable layers (the batch_reshape kind is
    recognised by its flattening ``reshape(1, -1)``)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
    if node.op == "call_function":
        return node.target in (rowmix, torch.flip) or node.target is torch.softmax and node.args[1:] == (0,)
    return node.op == "call_method" and node.target == "reshape" and node.args[1:] == (1, -1)


@given(cases(networks(allow_unshareable=True).filter(lambda d: d.unshareable)), st.data())
def test_unshareable_layers_stay_private(case, data):
    """Layers whose rows depend on other rows run alone, and the plan says why; classes merge
    batch-separable nodes only; outputs still equal separate runs."""
    heads, tails = split_all(case)
    rm = realign_all(tails)
    assert_matches_separate(rm, tails, tail_inputs(case, heads, data.draw(presences(case))))
    for c in rm._classes:
        if len(c.members) > 1:
            roles = {rm._analyses[f].verdicts[n].role for f, n in c.members}
            assert roles <= {Role.SHARED, Role.CONST}, f"class of {c.members} has roles {roles}"
    classes = class_of(rm)
    unshared = {(u.fragment, u.node) for u in rm.plan.unshared}
    mixing = [(f, n.name) for f, t in enumerate(tails) for n in t.graph.nodes if mixes_rows(t, n)]
    for member in mixing:
        assert len(classes[member].members) == 1, f"{member} is in the class {classes[member].members}"
        assert member in unshared, f"{member} is not reported in\n{rm.plan}"
    assert bool(rm.plan.unshared) == bool(mixing), str(rm.plan)


@given(cases(), st.data())
def test_presence_patterns_reuse_their_graphs(case, data):
    """One module, many calls, each with its own mix of absent, empty and non-empty fragments.
    Each pattern runs twice; the second run finds the graph built for its present fragments."""
    heads, tails = split_all(case)
    rm = realign_all(tails)
    patterns = data.draw(st.lists(presences(case), min_size=1, max_size=5))
    graphs: dict[frozenset[int], fx.GraphModule] = {}
    for seed, batches in enumerate(patterns + patterns):
        assert_matches_separate(rm, tails, tail_inputs(case, heads, batches, seed))
        present = frozenset(f for f, b in enumerate(batches) if b)
        if present:
            graph = rm.graph_for(present)
            assert graphs.setdefault(present, graph) is graph, f"graph for {set(present)} was rebuilt"


def test_weightless_fragment_realigns_with_weighted_ones():
    """A tail without weights (a lone relu) realigns with one that has them: a failure the
    property tests found, minimized."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    x = torch.randn(2, 4)
    heads, tails = zip(*(graft_fx.split(model, cut, x) for cut in graft_fx.cut_points(model, x)))
    rm = realign_all(tails)
    with torch.no_grad():
        assert_matches_separate(rm, tails, [head(x) for head in heads])
