"""The pieces of a latency profile: where to cut a model, the piece modules, and their layer costs.

A profile (`graft_fx.serving.profiles`) times a model as a chain of *pieces* between consecutive
cut points. This module chooses those cuts, builds the pieces as GraphModules (for
`graft_fx.serving.measure`, which times them) and lists the work of every layer in each piece
(for `graft_fx.serving.roofline`, which models their time).

Choosing the cuts (`spread`): a model has from a handful (VGG, ViT) to a hundred (MobileNet) cut
points. A profile keeps ``pieces + 1`` of them, evenly spaced by *index* over the cut points that
leave at least `MIN_WORK_LEFT` of the model's FLOPs after them (a piece with nothing in it would be
all launch overhead and noise): cut ``round(i * (n - 1) / pieces)`` for ``i = 0 .. pieces``,
without repeats, so the raw input is always the first cut and the last usable one the last. This
is the rule that produced the shipped H200 profile, so profiles built here are comparable with it
piece by piece. A profile's pieces can also be named explicitly (``select(..., at=[...])``), which
is how a model is matched to a profile measured elsewhere.

Building the pieces: the model is split at the first cut with `graft_fx.split`, and the tail is
split again at each next cut, so piece ``i`` is exactly ``split(tail_i, cut_{i+1})[0]`` (the last
piece is the final tail). Pieces are ATen-level GraphModules (graft_fx captures with
``torch.export``), so timing one times the ATen ops of its graph, not the model's own
``forward``. Each piece's input placeholder records its shape, so it runs on random rows of
``Piece.row_shape``. The pieces hold the model's own parameter and buffer tensors (``get_attr``
attributes, no copies), as `graft_fx.split` does.

Layer costs (`LayerCost`): for every node between two cuts, from the shape and FLOP facts of one
graph analysis (`graft_fx.analysis`, fake tensors, no compute): FLOPs per row (as
``torch.utils.flop_counter`` counts them: 2 per multiply-add, convolutions, matrix products and
attention only), the bytes of weights the node reads (its constant inputs: parameters, buffers
and tensors computed from them alone), activation bytes per row read and written, a *kind* that
says which peak rate applies, and the number of kernels the node launches in eager execution.
The kind goes by the ATen op: ``"conv"`` for `CONV_OPS`, ``"matmul"`` for `MATMUL_OPS` (which
include ``scaled_dot_product_attention``) or any other op with counted FLOPs, ``"memory"`` for the
rest. The kernel count is a rule of thumb, 1 for every op but these, which launch none:
`VIEW_OPS` (views and metadata: reshape, permute, getitem, ``sym_size``, ...), dropout that is not
training, nodes that compute Python values (sizes, asserts) and nodes that no input reaches. A
node that launches no kernel reads and writes nothing. The rule does not look at strides, so it
misses the copies that some views make (a ``reshape`` of a permuted tensor, a ``linear`` on a
transposed one) and charges ``contiguous`` and ``clone`` a kernel even where they are no-ops; it
counts ``scaled_dot_product_attention`` as one kernel, and multi-head attention as the ATen ops
that ``torch.export`` records for it (input and output ``linear``, head split, attention), which
is the slow path of ``nn.MultiheadAttention``: eager inference takes its fused fast path instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .. import cuts as _cuts
from ..analysis import Analysis, analyze
from ..cuts import CutPoint
from ..errors import GraftError
from ..facts import Kind, hint
from .profiles import Piece

MIN_WORK_LEFT = 0.02
"""The last piece must still hold this fraction of the model's FLOPs (see `spread`)."""

CONV_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "cudnn_convolution", "cudnn_convolution_transpose", "mkldnn_convolution",
})
"""ATen ops (by name, without namespace or overload) that run at the convolution rate."""
MATMUL_OPS = frozenset({
    "linear", "addmm", "mm", "bmm", "matmul", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "inner",
    "outer", "tensordot", "einsum", "bilinear", "_trilinear", "chain_matmul", "linalg_multi_dot", "_scaled_mm",
    "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
})
"""ATen ops that run at the matrix-product rate (any other op with counted FLOPs does too)."""
VIEW_OPS = frozenset({
    "getitem", "view", "reshape", "_unsafe_view", "view_as", "flatten", "unflatten", "permute",
    "transpose", "t", "expand", "expand_as", "unsqueeze", "squeeze", "narrow", "select", "slice",
    "split", "split_with_sizes", "chunk", "unbind", "alias", "detach", "as_strided", "movedim",
    "swapaxes", "swapdims", "diagonal", "unfold", "identity", "sym_size", "sym_numel", "sym_stride",
    "sym_storage_offset", "size", "dim", "numel",
})
"""Ops that launch no kernel: views and metadata (see the module docstring)."""
DROPOUT_OPS = frozenset({"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"})
"""``op(input, p, train)``: no kernel unless ``train``."""


@dataclass(frozen=True)
class LayerCost:
    """The work of one graph node, per row of its batch except for the weights.

    ``kind`` chooses the peak rate a roofline uses: "conv", "matmul", or "memory" (no counted
    FLOPs). ``kernels`` is how many kernels the node launches in eager execution (0 for views).
    """

    name: str
    op: str
    kind: str
    kernels: int
    flops_per_row: int
    weight_bytes: int
    read_bytes_per_row: int
    write_bytes_per_row: int


def spread(cuts: Sequence[CutPoint], pieces: int) -> list[CutPoint]:
    """Up to ``pieces + 1`` of ``cuts`` (in graph order), evenly spaced by index over those that
    leave at least `MIN_WORK_LEFT` of the FLOPs after them; see the module docstring."""
    if pieces < 1:
        raise GraftError(f"pieces={pieces}: expected at least 1")
    usable = [c for c in cuts if c.flops_before <= 1 - MIN_WORK_LEFT]
    if not usable:
        raise GraftError("the model has no cut point with work left after it")
    picks = sorted({round(i * (len(usable) - 1) / pieces) for i in range(pieces + 1)})
    return [usable[i] for i in picks]


class Selection:
    """A model's chosen cuts, one graph analysis of it, and the pieces between the cuts.

    ``pieces`` are the `Piece` records of a `Profile`; `modules` builds the pieces and `costs`
    lists their layers. Build one with `select`.
    """

    def __init__(self, model: Any, example: Any, analysis: Analysis, chosen: list[tuple[CutPoint, int]]):
        self.model = model
        self.example = example
        self.analysis = analysis
        self.cuts = [c for c, _ in chosen]
        self._positions = [p for _, p in chosen]
        facts = analysis.facts
        nodes = analysis.nodes
        pieces = []
        for i, ((cut, pos), layers) in enumerate(zip(chosen, self.costs())):
            end = self.cuts[i + 1] if i + 1 < len(chosen) else None
            row_shape = facts[nodes[pos]].row_shape or ()
            workspace = max((c.read_bytes_per_row + c.write_bytes_per_row for c in layers), default=0)
            pieces.append(Piece(cut.name, end.name if end else "output",
                                (end.flops_before if end else 1.0) - cut.flops_before,
                                cut.activation_bytes, tuple(int(d) for d in row_shape),
                                sum(c.weight_bytes for c in layers), workspace))
        self.pieces: tuple[Piece, ...] = tuple(pieces)

    def row_dtype(self, piece: int) -> torch.dtype:
        """The dtype of the tensor that enters ``piece``."""
        return self.analysis.facts[self.analysis.nodes[self._positions[piece]]].dtype or torch.float32

    def modules(self) -> list[fx.GraphModule]:
        """The pieces as GraphModules, built with `graft_fx.split` (see the module docstring).

        They hold the model's own tensors: ``.to(device)`` on a piece moves the model's parameters
        in place (and rebinds the buffers in that piece only), so copy a piece before moving it,
        as `graft_fx.serving.measure` does.
        """
        _, rest = _cuts.split(self.model, self.cuts[0], self.example)
        out = []
        for cut in self.cuts[1:]:
            piece, rest = _cuts.split(rest, cut.name, None)
            out.append(piece)
        out.append(rest)
        return out

    def costs(self) -> list[tuple[LayerCost, ...]]:
        """For each piece, the `LayerCost` of every node after its first cut, up to and including
        its last one (the last piece: up to the output)."""
        a = self.analysis
        nodes = a.nodes
        bounds = self._positions[1:] + [len(nodes) - 1]
        return [tuple(layer_cost(a, n) for n in nodes[start + 1: stop + 1])
                for start, stop in zip(self._positions, bounds)]


def select(model: Any, example: Any, pieces: int = 10, *, at: Sequence[str] | None = None) -> Selection:
    """Choose a profile's cuts of ``model`` (example input: batch dim 0, any batch size).

    By default up to ``pieces + 1`` cuts by `spread`; with ``at``, exactly the named cut points
    (in graph order), e.g. ``[p.start for p in profile.pieces]`` to match a measured profile.
    """
    a = analyze(model, example, f"model ({type(model).__name__})")
    located = _cuts.located_cuts(a)
    if at is None:
        keep = {c.name for c in spread([c for c, _ in located], pieces)}
        chosen = [(c, p) for c, p in located if c.name in keep]
    else:
        by_name = {c.name: (c, p) for c, p in located}
        missing = [n for n in at if n not in by_name]
        if missing:
            raise GraftError(f"{missing} are not cut points of this model; it has {len(located)} "
                             f"cut points: {', '.join(list(by_name)[:12])}{', ...' if len(by_name) > 12 else ''}")
        chosen = sorted((by_name[n] for n in dict.fromkeys(at)), key=lambda cp: cp[1])
    return Selection(model, example, a, chosen)


def build_pieces(model: Any, example: Any, pieces: int = 10) -> tuple[tuple[Piece, ...], list[fx.GraphModule]]:
    """The `Piece` records of a profile of ``model`` and the piece modules (see `Selection`)."""
    s = select(model, example, pieces)
    return s.pieces, s.modules()


def piece_costs(model: Any, example: Any, pieces: int = 10) -> tuple[tuple[Piece, ...], list[tuple[LayerCost, ...]]]:
    """The `Piece` records of a profile of ``model`` and the `LayerCost` of each piece's layers."""
    s = select(model, example, pieces)
    return s.pieces, s.costs()


def _op_name(node: fx.Node) -> str:
    """The name of the op ``node`` runs, without namespace or overload: ``aten.conv2d.default`` ->
    ``"conv2d"``, ``aten.sym_size.int`` -> ``"sym_size"``, ``operator.getitem`` -> ``"getitem"``."""
    target = node.target
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", None) or str(target)


def _tensor_bytes(value: Any) -> int:
    """Bytes of a tensor (or of the tensors in a tuple or list) at the example's sizes."""
    if isinstance(value, torch.Tensor):
        return math.prod(int(hint(d)) for d in value.shape) * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _launches_nothing(op: str, node: fx.Node) -> bool:
    if op in VIEW_OPS:
        return True
    if op in DROPOUT_OPS:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
        return train is False
    return False


def layer_cost(a: Analysis, node: fx.Node) -> LayerCost:
    """The `LayerCost` of one node of an analysed graph (see the module docstring)."""
    facts = a.facts[node]
    op = _op_name(node)
    flops = int(facts.flops_per_row)
    if node.op != "call_function" or not facts.depends_on_input:
        return LayerCost(node.name, op, "memory", 0, flops, 0, 0, 0)
    kind = "conv" if op in CONV_OPS else "matmul" if op in MATMUL_OPS or flops else "memory"
    if _launches_nothing(op, node) or not facts.is_tensor and facts.kind is not Kind.ROWS:
        return LayerCost(node.name, op, kind, 0, flops, 0, 0, 0)
    weights = sum(_tensor_bytes(a.facts[i].value) for i in node.all_input_nodes if a.facts[i].kind is Kind.CONST)
    reads = sum(a.facts[i].bytes_per_row for i in node.all_input_nodes if a.facts[i].kind is Kind.ROWS)
    writes = facts.bytes_per_row if facts.kind is Kind.ROWS else _tensor_bytes(facts.value)
    return LayerCost(node.name, op, kind, 1, flops, weights, reads, writes)
