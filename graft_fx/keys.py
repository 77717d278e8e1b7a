"""Layer keys: what makes nodes of different fragments "the same layer".

Two nodes get equal keys when they run the same ATen op on arguments that agree: the same
literals, the same constants (weights equal by value), sizes that are the same expression of the
batch, and rows of the same shape, dtype and layout (the batch aside). Node and module *names*
never enter a key, so fragments built, exported and loaded separately align as well as fragments
cut from one instance.

A reshape is keyed by its input and its output's shape, not by how its sizes were spelled:
``flatten(x, 1)`` and ``reshape(x, [s, 512])`` give the same values whenever ``x`` and the output
shape agree, and a program functionalized by ``run_decompositions`` spells every reshape as a view
(``canonical.py`` respells views as ``reshape``).

A buffer that a fragment updates in place (a write-back target, or the running statistics a
train-mode batch norm updates: ``separable.updates``) is state, not a constant: it
never shares a key with another fragment's, even when their values are equal at the time, or both
fragments would read and update one tensor.

Weights are compared by value through a ``TensorInterner``: the same tensor object is recognised
at once; other tensors are bucketed by a cheap fingerprint (shape, dtype, device and a few sampled
values) and confirmed with an exact ``torch.equal`` before they share a number.

**Structural sharing** (``share="structure"``): a weight whose every use is a weight of a layer in
`STRUCTURAL` (linear, conv2d, eval-mode batch_norm, layer_norm, and a parameter that scales or
shifts rows: layer scale, positional embeddings) is keyed by its shape, dtype and
device instead of its value, so the layers of fine-tuned copies of one model, equal in structure,
different in weights, fall into one class. The realigned graph runs such a class once per run of
fragments with equal weights, each on its own rows (``rewrite.py``), and the lowering batches the
runs in one kernel op where it has one (``lowering.py``: ``segment_matmul``, ``segment_conv2d``,
``segment_affine``). Any
other use of a weight keeps it keyed by value: an op outside the table cannot be run per segment
by a rule, and a computed constant would be computed from one fragment's weights for all.
"""

from __future__ import annotations

import itertools
from typing import Any, Hashable

import sympy
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .canonical import RESHAPES
from .capture import fetch_attr
from .facts import Facts
from .separable import Role, Verdict, updates

SHARES = ("weights", "structure")
STRUCTURAL = {
    torch.ops.aten.linear.default: (1, 2),                 # weight, bias
    torch.ops.aten.conv2d.default: (1, 2),                 # weight, bias
    torch.ops.aten.batch_norm.default: (1, 2, 3, 4),       # weight, bias, running_mean, running_var
    torch.ops.aten.layer_norm.default: (2, 3),             # weight, bias
    torch.ops.aten.mul.Tensor: (0, 1),                     # a scale: layer scale (ConvNeXt, CaiT)
    torch.ops.aten.add.Tensor: (0, 1),                     # a shift: positional embeddings
}
"""Layers that may share by structure, and the argument positions of their weights."""

_SAMPLES = 16
BATCH = sympy.Symbol("B", integer=True, positive=True)
"""The one symbol every fragment's batch is renamed to inside keys."""


def fingerprint(t: torch.Tensor) -> Hashable:
    """Shape, dtype, device, grad flag and a few evenly spaced values: cheap, rarely equal by chance.

    The grad flag keeps a parameter apart from a buffer of equal value (a batch norm's bias and
    running mean are both zeros at initialization, but only one of them may require grad).
    """
    head = (tuple(t.shape), t.dtype, t.device, t.requires_grad)
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return head
    samples = min(_SAMPLES, flat.numel())
    step = (flat.numel() - 1) // max(samples - 1, 1)
    return (*head, tuple(flat[: step * (samples - 1) + 1 : max(step, 1)].tolist()))


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes, dtypes, devices and values, and for floating tensors equal signs too
    (``torch.equal`` has 0.0 == -0.0)."""
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device) or not torch.equal(a, b):
        return False
    return not a.is_floating_point() or torch.equal(torch.signbit(a), torch.signbit(b))


class TensorInterner:
    """Numbers tensors so that tensors equal by value (and dtype, shape, device) share a number."""

    def __init__(self) -> None:
        self._by_object: dict[int, tuple[torch.Tensor, int]] = {}
        self._buckets: dict[Hashable, list[tuple[torch.Tensor, int]]] = {}
        self._numbers = itertools.count()

    def __call__(self, t: torch.Tensor) -> int:
        hit = self._by_object.get(id(t))
        if hit is not None:
            return hit[1]
        bucket = self._buckets.setdefault(fingerprint(t), [])
        number = next((n for other, n in bucket if same_values(other, t)), None)
        if number is None:
            number = next(self._numbers)
            bucket.append((t, number))
        self._by_object[id(t)] = (t, number)
        return number


def freeze(v: Any) -> Hashable:
    """A hashable stand-in for a literal argument (slices and lists are not hashable).

    Equal only where the values compute alike: ``0.0`` and ``-0.0`` differ (``1 / x``), and so do
    ``1``, ``1.0`` and ``True`` (they promote to different dtypes), although Python's ``==`` and
    hash say otherwise.
    """
    if isinstance(v, float):
        return ("float", v.hex())
    if isinstance(v, (bool, int)):
        return (type(v).__name__, v)
    if isinstance(v, slice):
        return ("slice", freeze(v.start), freeze(v.stop), freeze(v.step))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, *map(freeze, v))
    if isinstance(v, dict):
        return ("dict", *sorted((k, freeze(x)) for k, x in v.items()))
    if isinstance(v, torch.Tensor):
        return ("tensor", v.dtype, tuple(v.shape), tuple(map(freeze, v.reshape(-1).tolist())))
    try:
        hash(v)
        return v
    except TypeError:
        return ("repr", repr(v))


def structural(node: fx.Node, verdicts: dict[fx.Node, Verdict]) -> bool:
    """Whether every use of ``node`` is as a weight of a `STRUCTURAL` layer that computes on rows
    (a layer applied to constants alone is itself a constant, which is computed once for all
    the fragments of its class: its weights must be equal)."""
    return bool(node.users) and all(
        verdicts[user].role in (Role.SHARED, Role.PRIVATE, Role.PRIVATE_ROWS) and
        any(user.args[i] is node for i in STRUCTURAL.get(user.target, ()) if i < len(user.args)) and
        sum(a is node for a in pytree.tree_leaves((user.args, user.kwargs))) == 1
        for user in node.users)


class KeyMaker:
    """Computes layer keys for one realign() call; constants are numbered across fragments.
    ``share="structure"`` keys the weights of `STRUCTURAL` layers by shape (module docstring)."""

    def __init__(self, share: str = "weights") -> None:
        self.intern = TensorInterner()
        self.share = share
        self._const_numbers: dict[Hashable, int] = {}

    def const_number(self, key: Hashable) -> int:
        return self._const_numbers.setdefault(key, len(self._const_numbers))

    def key(self, gm: fx.GraphModule, node: fx.Node, facts: dict[fx.Node, Facts], verdicts: dict[fx.Node, Verdict],
            const_ids: dict[fx.Node, int], batch: sympy.Symbol) -> Hashable:
        """The layer key of a SHARED or CONST node; ``const_ids`` numbers its constant inputs and
        ``batch`` is the fragment's batch symbol (renamed to one symbol for all fragments)."""
        if node.op == "get_attr":
            if any(node in updates(u, verdicts) for u in node.users):
                return ("get_attr", "written", id(gm), node.target)  # state: its own, whatever its value
            value = fetch_attr(gm, node.target)
            if not isinstance(value, torch.Tensor):
                return ("get_attr", id(value))
            if self.share == "structure" and structural(node, verdicts):
                return ("get_attr", "structure", tuple(value.shape), value.dtype, value.device, value.requires_grad)
            return ("get_attr", self.intern(value))

        def arg(a: Any) -> Hashable:
            if not isinstance(a, fx.Node):
                return ("literal", freeze(a))
            role = verdicts[a].role
            if role is Role.FOLDED:
                scalar = pytree.tree_map(lambda s: s.subs(batch, BATCH) if isinstance(s, sympy.Basic) else s,
                                         facts[a].scalar)
                return ("scalar", freeze(scalar))
            if role is Role.CONST:
                return ("const", const_ids[a])
            f = facts[a]
            return ("rows", f.pattern, f.dtype, verdicts[a].layout) if f.parts is None else (
                "rows", tuple((p.pattern, p.dtype) for p in f.parts), verdicts[a].layout)

        if node.target in RESHAPES:
            out = facts[node]
            return ("reshape", arg(node.args[0]), out.pattern, out.dtype, verdicts[node].layout)
        leaves, spec = pytree.tree_flatten((node.args, node.kwargs))
        return (node.op, node.target, str(spec), tuple(arg(a) for a in leaves))
