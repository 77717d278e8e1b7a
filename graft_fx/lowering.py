"""Lowering: rewrite patterns of a realigned graph into graft's kernel ops, by a table of rules.

A realigned graph runs shared layers on the rows of several fragments, which it first gathers
into one tensor (``torch.cat`` of narrow views, `rewrite._Emitter.gather`). Some of those
patterns have a fused kernel in `graft_fx.kernels`: a gather that feeds only a shared
``aten.linear`` becomes ``graft::gather_linear``, which reads each fragment's rows straight from
its own tensor, with the activation that follows fused in when the linear feeds only that.

Every rule is data (`Rule`, `RULES`, in the style of the separability table): the op a match
ends in, a matcher that reads the nodes around it and returns the kernel op's arguments, and
the op they become. `lower` runs the rules over a graph, replacing each match with one
``call_function`` of the kernel op, and counts each rewrite in
``torch._dynamo.utils.counters["graft"][rule.name]``, so a test can tell a real rewrite from a
silent fallback. Matchers see shapes through ``meta["val"]``, which `lower` fills by running the
graph on fake tensors (`FakeTensorProp`) of the present fragments' input specs.

``kernels`` selects the path (`KERNELS`): ``"torch"`` rewrites nothing; ``"triton"`` rewrites
every match (the kernel ops run Triton where it can run, their torch references elsewhere:
`kernels.dispatch`); ``"auto"``, the default, rewrites a match only on a CUDA device with Triton
installed and a weight of at least `MIN_WEIGHT_ELEMENTS` elements, where the kernel is expected
to be faster (launch-bound small layers stay on the library ops).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .errors import GraftError

aten = torch.ops.aten

KERNELS = ("auto", "triton", "torch")
MIN_WEIGHT_ELEMENTS = 1 << 16
"""``"auto"`` lowers a layer only when its weight has at least this many elements (a 256 x 256
linear): below it a layer is launch-bound and the library op is as fast. Not measured yet on a
GPU (benchmarks/gpu_check.sh measures the kernels against torch); until then, a floor."""

_ACTIVATIONS = {aten.relu.default: "relu", aten.gelu.default: "gelu"}  # fused when the only user


@dataclass(frozen=True)
class Match:
    """What a rule found: the kernel op's ``args`` and ``kwargs``, the node whose value the op's
    result replaces (``last``), and the nodes the rewrite makes dead."""

    args: tuple
    kwargs: dict
    last: fx.Node
    dead: tuple[fx.Node, ...]
    weight: torch.Tensor  # the fake weight, for the "auto" threshold and device


@dataclass(frozen=True)
class Rule:
    """``anchor``: the op a match ends in; ``match(node)`` reads the pattern around an anchor node
    (a `Match`, or None); ``op()`` the kernel op it becomes (resolved late: the kernels import
    Triton)."""

    name: str
    anchor: Any
    match: Callable[[fx.Node], Match | None]
    op: Callable[[], Any]


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _gathered_linear(node: fx.Node) -> Match | None:
    """``linear(cat(xs, 0), w, b)`` with the cat used only here and 2-D rows: the kernel reads
    each ``x`` in place. A relu or exact gelu that is the linear's only user is fused in."""
    x, w, b = (list(node.args) + [None])[:3]
    if node.kwargs or not isinstance(x, fx.Node) or x.op != "call_function":
        return None
    if x.target not in (torch.cat, aten.cat.default) or len(x.users) != 1:
        return None
    dim = x.args[1] if len(x.args) > 1 else x.kwargs.get("dim", 0)
    xs, weight = x.args[0], _val(w)
    if dim != 0 or not isinstance(xs, (list, tuple)) or weight is None or weight.dim() != 2:
        return None
    if any(_val(part) is None or _val(part).dim() != 2 for part in xs):
        return None
    last, activation, dead = node, "none", (x, node)
    if len(node.users) == 1:
        (user,) = node.users
        act = _ACTIVATIONS.get(user.target)
        if act is not None and len(user.args) == 1 and user.kwargs.get("approximate", "none") == "none":
            last, activation, dead = user, act, (x, node, user)
    return Match((list(xs), w, b), {"activation": activation}, last, dead, weight)


def _gather_linear_op() -> Any:
    from .kernels import gather_linear  # noqa: F401 - registers graft::gather_linear

    return torch.ops.graft.gather_linear.default


RULES: tuple[Rule, ...] = (
    Rule("gather_linear", aten.linear.default, _gathered_linear, _gather_linear_op),
)


def lower(gm: fx.GraphModule, example_inputs: Sequence[Any], kernels: str = "auto",
          rules: Sequence[Rule] = RULES) -> fx.GraphModule:
    """Rewrite the matches of ``rules`` in ``gm`` into kernel ops, in place; returns ``gm``.

    ``example_inputs``: the graph's inputs (tensors, or None for an absent fragment's), whose
    shapes and dtypes stand for any batch size; they are only faked. ``kernels``: see the module
    docstring. Raises GraftError for an unknown ``kernels``.
    """
    if kernels not in KERNELS:
        raise GraftError(f"kernels={kernels!r}: expected one of {', '.join(KERNELS)}")
    if kernels == "torch" or (kernels == "auto" and not _on_cuda(example_inputs)):
        return gm
    anchors = {r.anchor: r for r in rules}
    if not any(n.op == "call_function" and n.target in anchors for n in gm.graph.nodes):
        return gm
    try:  # weights stay real (get_attr): the mode fakes them as it meets them
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*example_inputs)
    except Exception as e:  # noqa: BLE001 - a graph fake tensors cannot run keeps the library ops
        warnings.warn(f"graph not lowered to graft's kernels: fake propagation failed ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=2)
        return gm
    changed = False
    for node in list(gm.graph.nodes):
        rule = anchors.get(node.target) if node.op == "call_function" else None
        match = rule.match(node) if rule is not None else None
        if match is None or not _worth(match, kernels):
            continue
        with gm.graph.inserting_after(match.last):
            fused = gm.graph.call_function(rule.op(), match.args, match.kwargs)
        fused.meta.update(match.last.meta)
        match.last.replace_all_uses_with(fused)
        for dead in reversed(match.dead):
            gm.graph.erase_node(dead)
        counters["graft"][rule.name] += 1
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _on_cuda(example_inputs: Sequence[Any]) -> bool:
    """Whether "auto" could lower anything: Triton installed and an input on a CUDA device."""
    from .kernels.dispatch import HAS_TRITON

    return HAS_TRITON and any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs)


def _worth(match: Match, kernels: str) -> bool:
    """Whether to rewrite ``match``: always when ``kernels="triton"``; under ``"auto"`` only on a
    CUDA device with Triton installed, for a weight of at least `MIN_WEIGHT_ELEMENTS`."""
    if kernels == "triton":
        return True
    from .kernels.dispatch import HAS_TRITON

    return HAS_TRITON and match.weight.device.type == "cuda" and match.weight.numel() >= MIN_WEIGHT_ELEMENTS
