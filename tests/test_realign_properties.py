"""Property tests of realign() on random networks, random fragments and random calls.

Each example draws a network from nets.py (chains and DAGs of conv, linear, batch/layer/group
norms, activations in and out of place, pooling, residual adds, concatenated branches, size-
derived reshapes and slices, hooks; with ``allow_unshareable``, batch-mixing layers too) and one
to four fragments of it. A fragment is a suffix of the network, given in one of four forms:

  tail      a ``graft_fx.split`` tail at a random cut point of the captured graph
  module    ``Net.suffix(k)``: the plan after value k, an nn.Module over the same layer objects
  graph     ``torch.fx.symbolic_trace`` of that suffix (only for networks where tracing is
            faithful: no hook on the network itself)
  exported  ``torch.export.export`` of that suffix, batch-2 example, dynamic batch

and cut from the drawn network or from a deep copy of it (a twin built separately). The same
fragment may repeat: two fragments of one type. Calls draw per-fragment batch sizes from 0 (or
the network's ``min_batch``) to 3, or None for an absent fragment. The properties:

  equivalence  the realigned module returns, for every fragment, what the fragment returns when
               run alone (``graft_fx.testing.assert_equivalent``, None for an absent one);
  sharing      where sharing must happen, it does: every fragment runs the deepest fragment's
               whole computation, so that is one shared suffix of all of them, whatever the
               fragments' forms and whichever copy they were cut from; and where it must not
               (layers whose rows depend on other rows), it does not.

Properties realign with ``verify=False`` and check for themselves; one keeps ``verify=True``.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import given, reject
from hypothesis import strategies as st
from torch.export import Dim

import graft_fx
import graft_fx.testing
from graft_fx.capture import layer_name
from graft_fx.separable import CHECKS, Role, op_name
from models import realign_all
from nets import Drawn, Net, make_input, networks

MAX_FRAGMENTS = 4
FORMS = ("tail", "module", "graph", "exported")
NOT_COMPUTING = (Role.INPUT, Role.CONST, Role.FOLDED, Role.CHECK, Role.WRITE)

SHAREABLE = networks()
UNSHAREABLE = networks(allow_unshareable=True).filter(lambda d: d.unshareable)


class Fragment(NamedTuple):
    """How to make one fragment: its form, where it starts (an index into ``Case.cuts`` for a
    tail, a value of ``Net.cuts()`` otherwise), and whether it is cut from the twin."""

    form: str
    at: int
    twin: bool = False


class Case(NamedTuple):
    drawn: Drawn
    cuts: list[graft_fx.CutPoint]  # graft_fx.cut_points of the drawn network
    fragments: list[Fragment]

    def with_twins(self, twins: Sequence[bool]) -> "Case":
        return self._replace(fragments=[f._replace(twin=t) for f, t in zip(self.fragments, twins)])


@st.composite
def cases(draw, nets: st.SearchStrategy[Drawn] = networks(), forms: Sequence[str] = FORMS,
          twins: bool = True) -> Case:
    """A network from ``nets`` and one to MAX_FRAGMENTS fragments of it, repeats allowed."""
    drawn = draw(nets)
    cuts = graft_fx.cut_points(drawn.model, drawn.example)
    allowed = [form for form in forms if form != "graph" or drawn.traceable]
    fragments = []
    for _ in range(draw(st.integers(1, MAX_FRAGMENTS))):
        form = draw(st.sampled_from(allowed))
        at = draw(st.integers(0, len(cuts) - 1) if form == "tail" else st.sampled_from(drawn.model.cuts()))
        fragments.append(Fragment(form, at, twins and draw(st.booleans())))
    return Case(drawn, cuts, fragments)


def exported(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    return torch.export.export(module, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)


class Built(NamedTuple):
    fragments: list[Any]
    examples: list[torch.Tensor | None]
    heads: dict[int, fx.GraphModule]  # fragment index -> its head, for tails
    models: dict[bool, Net]  # twin? -> the network the fragments were cut from


def build(case: Case, made: dict | None = None) -> Built:
    """The fragments of ``case``, with the example inputs realign() needs (None where the
    fragment records its input shape). Equal Fragment specs give the same object, also across
    calls that pass the same ``made`` dict."""
    drawn = case.drawn
    made = {} if made is None else made
    if "twin" not in made:
        made["twin"] = copy.deepcopy(drawn.model)
    models = {False: drawn.model, True: made["twin"]}
    for spec in case.fragments:
        if spec in made:
            continue
        model = models[spec.twin]
        if spec.form == "tail":
            head, tail = graft_fx.split(model, case.cuts[spec.at], drawn.example)
            made[spec] = (tail, None, head)
            continue
        suffix, example = model.suffix(spec.at), drawn.suffix_example(spec.at)
        if spec.form == "module":
            made[spec] = (suffix, example, None)
        elif spec.form == "graph":
            made[spec] = (fx.symbolic_trace(suffix), example, None)
        else:
            made[spec] = (exported(suffix, example), None, None)
    fragments, examples, heads = zip(*(made[spec] for spec in case.fragments))
    return Built(list(fragments), list(examples), {f: h for f, h in enumerate(heads) if h is not None}, models)


def realign(case: Case, built: Built | None = None, **kwargs) -> graft_fx.RealignedModule:
    """``realign_all`` of the case's fragments. Two fragments cut from one model whose train-mode
    batch norm both run would update one buffer: realign refuses that by design (its message is
    checked), and the example is rejected."""
    built = built or build(case)
    try:
        return realign_all(built.fragments, built.examples, **{"verify": False, **kwargs})
    except graft_fx.GraftError as e:
        if "batchnorm_train" in case.drawn.unshareable and "both update the buffer" in str(e):
            reject()
        raise


def fragment_calls(rm: graft_fx.RealignedModule, min_batch: int = 0, everyone: bool = False
                   ) -> st.SearchStrategy[tuple]:
    """``graft_fx.testing.calls(rm)``, or for networks that need ``min_batch`` rows, the same
    with batch sizes from ``min_batch`` to 3. With ``everyone``, every fragment is present with
    at least one row: the calls where shared layers run on the most gathered rows."""
    if min_batch == 0 and not everyone:
        return graft_fx.testing.calls(rm)
    n = rm.num_fragments
    return st.builds(
        lambda present, sizes, seed: graft_fx.testing.random_inputs(
            rm, [b if p else None for p, b in zip(present, sizes)], seed=seed),
        st.just([True] * n) if everyone else graft_fx.testing.presence(n),
        st.lists(st.integers(max(min_batch, everyone), 3), min_size=n, max_size=n),
        st.integers(0, 2**32 - 1),
    )


def computing(a) -> list[fx.Node]:
    """The nodes of a captured graph that compute on rows (not inputs, weights, sizes, checks,
    write-backs or what only feeds a write-back)."""
    return [n for n in a.nodes if a.verdicts[n].role not in NOT_COMPUTING and n not in a.write_only]


def class_of(rm: graft_fx.RealignedModule) -> dict[tuple[int, str], Any]:
    """The class of every (fragment, node name)."""
    return {(f, n.name): c for c in rm._classes for f, n in c.members}


def partition(rm: graft_fx.RealignedModule) -> set[frozenset[tuple[int, str]]]:
    """The classes as sets of (fragment, node name): what runs as one node."""
    return {frozenset((f, n.name) for f, n in c.members) for c in rm._classes}


def layer_nodes(gm: fx.GraphModule) -> int:
    """ATen ops that run a layer, leaving out sizes and export's checks: the realigned graph's
    row bookkeeping (``size``, ``narrow``, ``torch.cat``, ``take_rows``, Python arithmetic on
    sizes) is not ATen, so it is not counted either."""
    return sum(
        n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
        and op_name(n) not in CHECKS and op_name(n) != "sym_size"
        for n in gm.graph.nodes
    )


def assert_deepest_suffix_shared(rm: graft_fx.RealignedModule) -> None:
    """Every fragment is a suffix of one network, so every fragment runs all of the deepest
    fragment's computation (the one with the fewest computing nodes): each of its nodes is
    shared (they are all batch-separable), by every fragment, and runs once."""
    k = rm.num_fragments
    d = min(range(k), key=lambda f: len(computing(rm.analysis(f))))
    a = rm.analysis(d)
    deepest = computing(a)
    private = [f"{n.name}: {a.verdicts[n].reason}" for n in deepest if a.verdicts[n].role is not Role.SHARED]
    assert not private, f"fragment {d} keeps batch-separable nodes private: {private}"
    classes = class_of(rm)
    everyone = tuple(range(k))
    for n in deepest:
        assert classes[(d, n.name)].fragments == everyone, f"{n.name} of fragment {d} is not shared by all\n{rm.plan}"
    if k > 1 and deepest:
        assert everyone in [s.fragments for s in rm.plan.segments], str(rm.plan)
        separate = sum(layer_nodes(rm.analysis(f).gm) for f in range(k))
        assert layer_nodes(rm.graph_module) <= separate - (k - 1) * len(deepest), rm.graph_module.code


def assert_tails_compose(case: Case, built: Built) -> None:
    """The reference of a tail fragment is graft_fx's own split: check it against the network
    (head then tail equals the whole network), so the equivalence oracle is eager PyTorch."""
    drawn = case.drawn
    x = make_input(drawn, max(drawn.min_batch, 3), seed=1)
    with torch.no_grad():
        for f, head in built.heads.items():
            model = built.models[case.fragments[f].twin]
            whole = model(x.clone())
            torch.testing.assert_close(built.fragments[f](head(x.clone())), whole,
                                       msg=lambda m, f=f: f"tail {f} after its head: {m}")


# Half the networks have batch-mixing layers: a wrong result needs one, run on gathered rows.
ANY_NETWORK = st.one_of(networks(), networks(allow_unshareable=True).filter(lambda d: d.unshareable))


@given(cases(ANY_NETWORK), st.data())
def test_realigned_outputs_equal_separate_outputs(case, data):
    built = build(case)
    assert_tails_compose(case, built)
    rm = realign(case, built)
    min_batch = case.drawn.min_batch
    for args in [data.draw(fragment_calls(rm, min_batch, everyone=True)), data.draw(fragment_calls(rm, min_batch))]:
        graft_fx.testing.assert_equivalent(rm, args)


@given(cases(SHAREABLE))
def test_deepest_fragments_computation_is_shared_by_all(case):
    """Sharing where it must, across forms and copies; with realign's own verification on."""
    assert_deepest_suffix_shared(realign(case, verify=True))


@given(cases(SHAREABLE, twins=False), st.data())
def test_fragments_cut_from_an_equal_copy_share_alike(case, data):
    """Weights are compared by value: a fragment cut from a deep copy shares as if cut from the
    original, in whatever form it comes."""
    k = len(case.fragments)
    made: dict = {}  # the fragments cut from the original are the same objects in both
    one = realign(case, build(case, made))
    mixed_case = case.with_twins(data.draw(st.lists(st.booleans(), min_size=k, max_size=k).filter(any)))
    mixed = realign(mixed_case, build(mixed_case, made))
    assert partition(mixed) == partition(one)
    assert mixed.plan == one.plan
    assert_deepest_suffix_shared(mixed)
    graft_fx.testing.assert_equivalent(mixed, data.draw(fragment_calls(mixed, case.drawn.min_batch)))


def stack_paths(node: fx.Node) -> set[str]:
    return {path for path, _ in (node.meta.get("nn_module_stack") or {}).values()}


def contains_mixer(case: Case, rm: graft_fx.RealignedModule, f: int) -> bool:
    spec = case.fragments[f]
    drawn = case.drawn
    if spec.form == "tail":
        return any(stack_paths(n) & drawn.mixer_paths() for n in rm.analysis(f).nodes)
    return any(s.op == "module" and s.layer in drawn.mixers for s in drawn.model.plan[spec.at:])


@given(cases(UNSHAREABLE), st.data())
def test_unshareable_layers_stay_private(case, data):
    """Layers whose rows depend on other rows run alone, and the plan says why; classes merge
    batch-separable nodes only; outputs still equal separate runs.

    The unshareable layers are found by their module path in ``nn_module_stack``, which traced
    GraphModules lose (symbolic_trace inlines them): those fragments get the other checks."""
    rm = realign(case)
    graft_fx.testing.assert_equivalent(rm, data.draw(fragment_calls(rm, case.drawn.min_batch, everyone=True)))
    for c in rm._classes:
        if len(c.members) > 1:
            roles = {rm.analysis(f).verdicts[n].role for f, n in c.members}
            assert roles <= {Role.SHARED, Role.CONST}, f"class of {c.members} has roles {roles}"
    classes = class_of(rm)
    unshared = {(u.fragment, u.node) for u in rm.plan.unshared}
    paths = case.drawn.mixer_paths()
    for f, spec in enumerate(case.fragments):
        a = rm.analysis(f)
        if spec.form != "graph":
            for n in computing(a):
                if stack_paths(n) & paths:
                    member = (f, n.name)
                    assert a.verdicts[n].role in (Role.PRIVATE, Role.PRIVATE_ROWS), f"{member} is {a.verdicts[n]}"
                    assert len(classes[member].members) == 1, f"{member} is in the class {classes[member].members}"
                    assert (f, layer_name(n)) in unshared, f"{member} is not reported in\n{rm.plan}"
        reported = any(u.fragment == f for u in rm.plan.unshared)
        assert reported == contains_mixer(case, rm, f), f"fragment {f} ({spec}):\n{rm.plan}"


@given(cases(ANY_NETWORK, forms=("tail", "module")), st.data())
def test_presence_patterns_reuse_their_graphs(case, data):
    """One module, many calls, each with its own mix of absent, empty and non-empty fragments.
    Each pattern runs twice; the second run finds the graph built for its present fragments."""
    rm = realign(case)
    calls = data.draw(st.lists(fragment_calls(rm, case.drawn.min_batch), min_size=1, max_size=5))
    graphs: dict[frozenset[int], fx.GraphModule] = {}
    for args in calls + calls:
        graft_fx.testing.assert_equivalent(rm, args)
        present = frozenset(f for f, x in enumerate(args) if x is not None and x.shape[0] > 0)
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
        graft_fx.testing.assert_equivalent(rm, [head(x) for head in heads])
